"""The Python client: :class:`Client`, reconnecting, prioritised and acknowledging, on httpx and the Rust decoder.

Three parts, as in the original SDK:

- the **connection manager** (:meth:`Client._run`) holds one ``GET /sse`` stream, moves through the states
  ``disconnected``, ``connecting``, ``connected``, ``reconnecting`` and ``error``, and reconnects with exponential
  backoff and full jitter, sending ``Last-Event-ID`` so that the server replays what the client missed;
- the **outbound queue** (:meth:`Client._send_loop`) holds messages in the bounded Rust
  :class:`~sse_fast._core.PriorityQueue` while the client is disconnected or the server answers 429/503, and
  retries them after :data:`RETRY_DELAYS`;
- the **dispatcher** (:meth:`Client._dispatch_loop`) runs handlers, highest priority first, feeds
  :meth:`Client.messages` iterators and acknowledges ``requireAck`` messages once the handlers returned.

The reader never runs user code: it decodes, deduplicates by message id, resolves task waiters and hands messages
to the dispatcher through a bounded queue, so a slow handler slows the stream down (and the server, past its own
queue, closes it as a slow consumer and the client resumes) instead of growing memory. Every buffer, set and
history here is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import sys
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

import httpx
import msgspec

from sse_fast._core import Decoder, PriorityQueue
from sse_fast.errors import AuthError, ConnectionLostError, FrameError, QueueFullError, ServerError, TaskError
from sse_fast.models import (
    AckAnswer,
    CommandAnswer,
    CommandPayload,
    Envelope,
    ProgressPayload,
    PublishAnswer,
    TaskRecord,
    new_message_id,
)

__all__ = [
    "KEEPALIVE",
    "RETRY_DELAYS",
    "Answer",
    "Client",
    "ClientStats",
    "Handler",
    "Message",
    "State",
    "Subscription",
    "backoff_delay",
    "run_listen",
    "run_publish",
]

log = logging.getLogger("sse_fast.client")

Message = Envelope
"""A message as the client receives and sends it: the protocol's envelope (:class:`sse_fast.models.Envelope`)."""

State = Literal["disconnected", "connecting", "connected", "reconnecting", "error"]
"""The connection manager's state."""

Handler = Callable[[Envelope], Any]
"""A message handler: a function or a coroutine function taking the :data:`Message`."""

Answer = PublishAnswer | CommandAnswer | AckAnswer
"""What the server answered a send."""

RETRY_DELAYS: Final[tuple[float, ...]] = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Seconds between the attempts of one send (429, 503, network errors); a ``Retry-After`` can only lengthen them."""

KEEPALIVE: Final = 15.0
"""The server's default keepalive period (``SSE_FAST_KEEPALIVE``): the stream's watchdog is based on it."""

_T = TypeVar("_T")

# Bounds. A line or event past these is a broken stream (the server's body limit is 1 MiB): reconnect.
_MAX_LINE: Final = 2 << 20
_MAX_EVENT: Final = 4 << 20
_MAX_ERROR_BODY: Final = 64 << 10
_SEEN_IDS: Final = 10_000  # message ids remembered for deduplication
_HISTORY: Final = 1_000
_TYPE_KEYS: Final = 256  # distinct message types counted in the stats; others count under "other"
_TASK_EVENTS: Final = 256  # recent task events kept for run_task's answer/event race
_WAITER_EVENTS: Final = 64
_MAX_RETRY_AFTER: Final = 3600.0
_MAX_EXPONENT: Final = 32
_ACK_PRIORITY: Final = 2

_TERMINAL: Final = {
    "task_completed": "completed",
    "task_failed": "failed",
    "task_cancelled": "cancelled",
    "task_timed_out": "timed_out",
}
_json = msgspec.json.Encoder()
_envelope_decoder = msgspec.json.Decoder(Envelope)


def backoff_delay(
    attempt: int, *, base: float, cap: float, floor: float = 0.0, rng: random.Random | None = None
) -> float:
    """Seconds to wait before reconnect ``attempt`` (1 for the first): exponential backoff with full jitter.

    Uniform in ``[0, min(cap, base * 2 ** (attempt - 1))]``, plus ``floor``: the server's ``retry:`` (or a
    ``Retry-After``), which the client never undercuts.
    """
    ceiling = min(cap, base * 2.0 ** min(max(attempt, 1) - 1, _MAX_EXPONENT))
    return floor + (rng or random).uniform(0.0, ceiling)


# ---------------------------------------------------------------------------------------------------------------
# Small parts
# ---------------------------------------------------------------------------------------------------------------


class Subscription:
    """A registered handler; :meth:`unsubscribe` removes it (idempotent)."""

    __slots__ = ("_remove",)

    def __init__(self, remove: Callable[[], None]) -> None:
        self._remove: Callable[[], None] | None = remove

    @property
    def active(self) -> bool:
        """Whether the handler is still registered (a ``once`` handler stops being so after its message)."""
        return self._remove is not None

    def unsubscribe(self) -> None:
        """Stop calling the handler."""
        remove, self._remove = self._remove, None
        if remove is not None:
            remove()


@dataclass(slots=True)
class _Handler:
    type: str
    fn: Handler
    priority: int
    order: int
    once: bool
    subscription: Subscription | None = None


@dataclass(slots=True)
class _Outgoing:
    path: str
    body: bytes
    priority: int
    future: asyncio.Future[Answer]
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class ClientStats:
    """A snapshot of a client's counters (:meth:`Client.stats`)."""

    state: State
    received: int
    """Messages handed to handlers and iterators (after deduplication, heartbeats excluded)."""
    sent: int
    """Sends the server accepted."""
    queued: int
    """Sends waiting now (in the queue or between attempts)."""
    dropped: int
    """Sends evicted or refused by the full queue, plus messages an iterator's full buffer dropped."""
    reconnects: int
    duplicates: int
    """Messages suppressed because their id was already seen (replays, redeliveries)."""
    invalid: int
    """Frames that were not a valid envelope, and streams broken by an oversized line."""
    handler_errors: int
    gaps: int
    """Resumes the server could not serve (``unknown_cursor``, ``expired``): messages may have been lost."""
    heartbeats: int
    by_type: dict[str, int]
    uptime: float
    """Seconds since the current connection was established (0.0 when not connected)."""


class _Listener:
    """The bounded buffer behind one :meth:`Client.messages` iterator; drops its oldest message when full."""

    def __init__(self, size: int, *, system: bool, heartbeats: bool) -> None:
        self.items: deque[Envelope] = deque(maxlen=size)
        self.system = system
        self.heartbeats = heartbeats
        self.ready = asyncio.Event()
        self.ended = False
        self.error: BaseException | None = None

    def wants(self, message: Envelope) -> bool:
        if message.type == "heartbeat":
            return self.heartbeats
        return self.system or message.type != "system"

    def put(self, message: Envelope) -> bool:
        full = len(self.items) == self.items.maxlen
        self.items.append(message)
        self.ready.set()
        return not full

    def end(self, error: BaseException | None) -> None:
        self.ended, self.error = True, error
        self.ready.set()


class _TaskWaiter:
    """The events of one task, for :meth:`Client.run_task`."""

    def __init__(self, command_id: str) -> None:
        self.command_id = command_id
        self.task_id: str | None = None
        self.events: deque[Envelope] = deque(maxlen=_WAITER_EVENTS)
        self.ready = asyncio.Event()
        self.error: BaseException | None = None

    def matches(self, message: Envelope) -> bool:
        payload = message.payload if isinstance(message.payload, dict) else {}
        if self.task_id is not None and payload.get("taskId") == self.task_id:
            return True
        return self.command_id in (payload.get("commandId"), message.correlation_id)

    def feed(self, message: Envelope) -> None:
        self.events.append(message)
        self.ready.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.ready.set()


class _Stop(Exception):
    """The server answered 204: stop reconnecting."""


class _Lost(Exception):
    """This connection attempt ended; reconnect after at least ``floor`` seconds."""

    def __init__(self, reason: str, *, floor: float = 0.0) -> None:
        super().__init__(reason)
        self.floor = floor


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return min(max(float(value), 0.0), _MAX_RETRY_AFTER)
    except ValueError:
        return None  # an HTTP date: rare from this server; the backoff applies instead


def _error_fields(body: bytes, status: int) -> tuple[str, str, Any]:
    """``(message, code, detail)`` of an error answer, whatever the body holds."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        data = None
    if isinstance(data, dict):
        message, code = data.get("error"), data.get("code")
        if isinstance(message, str) and isinstance(code, str):
            return message, code, data.get("detail")
    return f"HTTP {status}", f"http_{status}", None


def _valid_cursor(value: str) -> str | None:
    # A cursor goes back in a header: keep only what a header can carry (a garbage stream may set anything).
    if 0 < len(value) <= 256 and value.isascii() and value.isprintable():
        return value
    return None


async def _call(fn: Callable[..., Any], *args: Any) -> None:
    result = fn(*args)
    if inspect.isawaitable(result):
        await result


# ---------------------------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------------------------


class Client:
    """A client of an sse-fast server: one event stream in, HTTP publishes out.

    ::

        async with Client("http://127.0.0.1:8000", client_id="alice", topics=["orders.>"]) as client:
            client.subscribe("text", print)
            await client.send_text("hello", target="bob")

    ``async with`` (or :meth:`connect`) opens the stream and waits until it is connected; with
    ``auto_connect=False`` ``async with`` only prepares the client for sending. :meth:`close` ends everything and
    fails what is still queued with :class:`~sse_fast.errors.ConnectionLostError`.

    Options (keyword-only): ``token`` (sent as ``Authorization: Bearer``); ``topics`` to subscribe to;
    ``heartbeat_interval`` (the server's heartbeat period; with ``read_timeout`` unset, the stream is declared dead
    after ``2.5 * min(KEEPALIVE, heartbeat_interval)`` seconds without a byte); ``max_reconnect_attempts``
    consecutive failed attempts before giving up (None: forever); ``reconnect_base_delay`` and
    ``reconnect_max_delay`` for the backoff; ``connection_timeout`` for connecting and for each publish;
    ``headers`` added to every request; ``queue_size`` bounds the outbound queue, the inbound queue and each
    :meth:`messages` buffer; ``auto_ack`` acknowledges ``requireAck`` messages after the handlers returned;
    ``http_client`` to bring your own ``httpx.AsyncClient`` (not closed by :meth:`close`).
    """

    def __init__(
        self,
        base_url: str,
        *,
        client_id: str,
        token: str | None = None,
        topics: Iterable[str] = (),
        heartbeat_interval: float = 30.0,
        max_reconnect_attempts: int | None = 10,
        reconnect_base_delay: float = 1.0,
        reconnect_max_delay: float = 30.0,
        connection_timeout: float = 10.0,
        read_timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
        queue_size: int = 100,
        auto_connect: bool = True,
        auto_ack: bool = True,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.topics = tuple(topics)
        self.max_reconnect_attempts = max_reconnect_attempts
        self.reconnect_base_delay = reconnect_base_delay
        self.reconnect_max_delay = reconnect_max_delay
        self.connection_timeout = connection_timeout
        self.read_timeout = read_timeout if read_timeout is not None else 2.5 * min(KEEPALIVE, heartbeat_interval)
        self.auto_connect = auto_connect
        self.auto_ack = auto_ack
        self._headers = dict(headers or {})
        if token is not None:
            self._headers["Authorization"] = f"Bearer {token}"
        elif client_id:  # with a token the server takes the identity from it (a different X-Client-Id is 403)
            self._headers.setdefault("X-Client-Id", client_id)
        self._http = http_client or httpx.AsyncClient()
        self._own_http = http_client is None
        self._queue_size = queue_size

        self._state: State = "disconnected"
        self._state_callbacks: list[Callable[[State, State], Any]] = []
        self._connected = asyncio.Event()
        self._connections = 0  # times the state became `connected`
        self._closed = False
        self._fatal: BaseException | None = None
        self._stream_wanted = False
        self._stopped = False  # the server answered 204
        self._cursor: str | None = None
        self._connected_at: float | None = None
        self._connect_detail: dict[str, Any] = {}
        self._maintenance_floor: float | None = None
        self._decoder = Decoder(max_line=_MAX_LINE, max_event=_MAX_EVENT)
        self._delivered = False

        self._runner: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[Any]] = set()

        self._outbox: PriorityQueue[_Outgoing] = PriorityQueue(max_items=queue_size)
        self._outbox_ready = asyncio.Event()
        self._in_flight: _Outgoing | None = None
        # Reader -> dispatcher, bounded by queue_size: the reader waits for room while someone consumes, and drops
        # the oldest (counted) while nobody does, so that messages that arrive before the first handler or
        # iterator is registered (the ``connect`` event, a mailbox) are held for it rather than lost.
        self._inbound: deque[Envelope] = deque()
        self._inbound_ready = asyncio.Event()
        self._inbound_room = asyncio.Event()

        self._handlers: list[_Handler] = []
        self._handler_order = 0
        self._listeners: set[_Listener] = set()
        self._history: deque[Envelope] = deque(maxlen=_HISTORY)
        # id -> "pending" (handlers not run yet), "done" (handled, acked if asked)
        self._seen: OrderedDict[str, str] = OrderedDict()
        self._task_waiters: dict[str, _TaskWaiter] = {}
        self._task_events: deque[Envelope] = deque(maxlen=_TASK_EVENTS)

        self._counts: dict[str, int] = dict.fromkeys(
            (
                "received",
                "sent",
                "dropped",
                "reconnects",
                "duplicates",
                "invalid",
                "handler_errors",
                "gaps",
                "heartbeats",
            ),
            0,
        )
        self._by_type: dict[str, int] = {}

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        if self.auto_connect:
            try:
                await self.connect()
            except BaseException:
                await self.close()
                raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the stream (if it is not open) and wait until it is connected.

        Raises :class:`~sse_fast.errors.AuthError` on 401/403 (state ``error``) and
        :class:`~sse_fast.errors.ConnectionLostError` when ``max_reconnect_attempts`` consecutive attempts failed.
        Returns without error, in state ``disconnected``, when the server answered 204 (stop).
        """
        if self._closed:
            raise ConnectionLostError("the client is closed")
        self._stream_wanted = True
        if self._runner is None or self._runner.done():
            self._fatal, self._stopped = None, False
            self._runner = asyncio.create_task(self._run_guarded(), name=f"sse-fast client {self.client_id} stream")
        self._start_workers()
        connections = self._connections
        await self._until_connected()
        if self._closed and self._connections == connections:
            raise ConnectionLostError("the client was closed while connecting")
        if self._state != "connected" and self._fatal is not None:
            raise self._fatal

    async def _until_connected(self) -> None:
        """Wait until the stream is connected or its manager stopped (204, 401/403, attempts spent)."""
        runner = self._runner
        while runner is not None and not runner.done() and self._state != "connected":
            connected = asyncio.ensure_future(self._connected.wait())
            try:
                await asyncio.wait({runner, connected}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                connected.cancel()

    async def close(self) -> None:
        """Stop the stream and every task of the client, fail what is still queued, close owned sockets.

        Idempotent. Pending sends and :meth:`run_task` calls fail with
        :class:`~sse_fast.errors.ConnectionLostError`; :meth:`messages` iterators end.
        """
        if self._closed:
            return
        self._closed = True
        # Fail what waits before cancelling the tasks: the sender holds its current message while it waits.
        self._fail_pending(ConnectionLostError("the client was closed"), ended=True)
        current = asyncio.current_task()
        tasks = [t for t in (self._runner, self._sender, self._dispatcher, *self._side_tasks) if t is not None]
        for task in tasks:
            if task is not current:
                task.cancel()
        for task in tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._own_http:
            await self._http.aclose()
        self._set_state("disconnected")
        if current in tasks:  # closed from a handler: the dispatcher ends once that handler returns
            assert current is not None
            current.cancel()

    def _start_workers(self) -> None:
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_loop(), name=f"sse-fast client {self.client_id} sender")
        if self._dispatcher is None:
            name = f"sse-fast client {self.client_id} dispatcher"
            self._dispatcher = asyncio.create_task(self._dispatch_loop(), name=name)

    def _fail_pending(self, error: BaseException, *, ended: bool) -> None:
        """Fail queued sends and task waiters with ``error``; end the iterators (with the error unless ``ended``)."""
        items = self._outbox.clear()
        if self._in_flight is not None:
            items.append(self._in_flight)
            self._in_flight = None
        for item in items:
            if not item.future.done():
                item.future.set_exception(error)
        for waiter in self._task_waiters.values():
            waiter.fail(error)
        for listener in self._listeners:
            listener.end(None if ended else error)

    # -- state -----------------------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """``disconnected``, ``connecting``, ``connected``, ``reconnecting`` or ``error``."""
        return self._state

    @property
    def last_event_id(self) -> str | None:
        """The resume cursor the client holds (sent as ``Last-Event-ID`` on reconnect), or None before any."""
        return self._cursor

    @property
    def connection_info(self) -> dict[str, Any]:
        """``detail`` of the last ``connect`` event: ``connectionId``, ``resumed``, ``missed``, ``reason``..."""
        return dict(self._connect_detail)

    def on_state_change(self, callback: Callable[[State, State], Any]) -> Subscription:
        """Call ``callback(old, new)`` on every state change (a coroutine function is run as a task)."""
        self._state_callbacks.append(callback)
        return Subscription(lambda: self._state_callbacks.remove(callback))

    def _set_state(self, state: State) -> None:
        old = self._state
        if old == state:
            return
        self._state = state
        if state == "connected":
            self._connections += 1
            self._connected.set()
            self._connected_at = time.monotonic()
        else:
            self._connected.clear()
            self._connected_at = None
        for callback in list(self._state_callbacks):
            try:
                result = callback(old, state)
                if inspect.isawaitable(result):
                    self._spawn(result)
            except Exception:
                log.exception("state callback %r failed", callback)

    def _spawn(self, awaitable: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await awaitable
            except Exception:
                log.exception("state callback failed")

        task = asyncio.create_task(run())
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    def stats(self) -> ClientStats:
        """A snapshot of the counters."""
        uptime = 0.0 if self._connected_at is None else time.monotonic() - self._connected_at
        queued = len(self._outbox) + (self._in_flight is not None)
        return ClientStats(state=self._state, queued=queued, by_type=dict(self._by_type), uptime=uptime, **self._counts)

    def history(self, n: int | None = None) -> list[Envelope]:
        """The last ``n`` (default: all kept, at most 1,000) messages received, oldest first, heartbeats and system
        events excluded."""
        items = list(self._history)
        return items if n is None else items[-n:] if n > 0 else []

    # -- the connection manager ------------------------------------------------------------------------------

    async def _run_guarded(self) -> None:
        try:
            await self._run()
        except Exception as err:  # a bad URL or header, or a bug: stop in `error` rather than die silently
            log.exception("the stream of %s failed", self.client_id)
            self._finish(err)

    async def _run(self) -> None:
        failures = 0
        first = True
        while True:
            self._set_state("connecting" if first else "reconnecting")
            if not first:
                self._counts["reconnects"] += 1
            first = False
            self._maintenance_floor = None
            delivered = False
            floor = 0.0
            try:
                delivered = await self._attempt()
                reason = "the server closed the stream"
            except _Stop:
                self._finish(None)
                return
            except AuthError as err:
                self._finish(err)
                return
            except _Lost as err:
                reason, floor = str(err), err.floor
            except httpx.UnsupportedProtocol:
                raise  # a wrong URL does not get better by retrying
            except (httpx.HTTPError, FrameError, OSError) as err:
                reason = f"{type(err).__name__}: {err}"
            delivered = delivered or self._delivered
            if self._state == "connected":
                self._set_state("reconnecting")
            if self._maintenance_floor is not None:
                delay = self._maintenance_floor  # already spread at random by the server: no backoff on top
                failures = 0
            else:
                failures = 0 if delivered else failures + 1
                if self.max_reconnect_attempts is not None and failures > self.max_reconnect_attempts:
                    attempts = self.max_reconnect_attempts
                    self._finish(ConnectionLostError(f"gave up after {attempts} reconnect attempts: {reason}"))
                    return
                floor = max(floor, (self._decoder.retry or 0) / 1000)
                delay = backoff_delay(
                    max(failures, 1), base=self.reconnect_base_delay, cap=self.reconnect_max_delay, floor=floor
                )
            log.info("stream of %s lost (%s); reconnecting in %.2fs", self.client_id, reason, delay)
            await asyncio.sleep(delay)

    def _finish(self, error: BaseException | None) -> None:
        """The stream stops for good: 204 (``error`` None), 401/403 or the reconnect budget spent."""
        self._fatal, self._stopped = error, error is None
        self._set_state("disconnected" if error is None else "error")
        if error is None:
            for listener in self._listeners:
                listener.end(None)
        else:
            log.error("stream of %s stopped: %s", self.client_id, error)
            self._fail_pending(error, ended=False)

    async def _attempt(self) -> bool:
        """One connection: open the stream, read it until it ends; returns whether it delivered messages."""
        self._decoder.reset()
        self._delivered = False
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache", **self._headers}
        headers.pop("Content-Type", None)
        if self._cursor is not None:
            headers["Last-Event-ID"] = self._cursor
        params = {"clientId": self.client_id} if self.client_id else {}
        if self.topics:
            params["topics"] = ",".join(self.topics)
        timeout = httpx.Timeout(self.connection_timeout, read=self.read_timeout)
        request = self._http.build_request("GET", f"{self.base_url}/sse", params=params, headers=headers)
        request.extensions["timeout"] = timeout.as_dict()
        response = await self._http.send(request, stream=True)
        try:
            await self._check_stream_response(response)
            async for chunk in response.aiter_raw():
                await self._on_chunk(chunk)
        finally:
            await response.aclose()
        return self._delivered

    async def _check_stream_response(self, response: httpx.Response) -> None:
        status = response.status_code
        if status == 204:
            raise _Stop
        content_type = response.headers.get("content-type", "")
        if status == 200 and content_type.split(";")[0].strip().lower() == "text/event-stream":
            return
        body = await self._read_bounded(response)
        message, code, _ = _error_fields(body, status)
        if status in (401, 403):
            raise AuthError(message, status=status, code=code)
        if status == 200:
            raise _Lost(f"not an event stream (content-type {content_type!r})")
        raise _Lost(f"HTTP {status} {code}: {message}", floor=_retry_after(response.headers) or 0.0)

    @staticmethod
    async def _read_bounded(response: httpx.Response) -> bytes:
        data = bytearray()
        async for chunk in response.aiter_raw():
            data += chunk
            if len(data) >= _MAX_ERROR_BODY:
                break
        return bytes(data[:_MAX_ERROR_BODY])

    async def _on_chunk(self, chunk: bytes) -> None:
        decoder = self._decoder
        try:
            events = decoder.feed(chunk)
        except FrameError:
            self._counts["invalid"] += 1
            raise
        for event in events:
            message = self._on_event(event.data)
            if message is not None:
                await self._hand_over(message)
        cursor = decoder.last_event_id
        if cursor:
            self._cursor = _valid_cursor(cursor) or self._cursor

    async def _hand_over(self, message: Envelope) -> None:
        # Waits while the dispatcher is behind: the server's queue absorbs the rest, then resumes us.
        while len(self._inbound) >= self._queue_size:
            if not self._has_consumers():
                dropped = self._inbound.popleft()
                self._counts["dropped"] += 1
                if dropped.id is not None and self._seen.get(dropped.id) == "pending":
                    del self._seen[dropped.id]  # a replay or redelivery may bring it to a consumer later
                continue
            self._inbound_room.clear()
            await self._inbound_room.wait()
        self._inbound.append(message)
        self._inbound_ready.set()

    def _wants_heartbeats(self) -> bool:
        return any(h.type == "heartbeat" for h in self._handlers) or any(x.heartbeats for x in self._listeners)

    def _has_consumers(self) -> bool:
        return bool(self._handlers or self._listeners)

    def _consumers_changed(self) -> None:
        self._inbound_ready.set()
        self._inbound_room.set()

    def _on_event(self, data: str) -> Envelope | None:
        """Bookkeeping for one frame; returns the message to dispatch, if any."""
        try:
            message = _envelope_decoder.decode(data)
        except (msgspec.DecodeError, ValueError):
            self._counts["invalid"] += 1
            log.debug("ignoring a frame that is not an envelope: %.200r", data)
            return None
        self._delivered = True
        if self._state != "connected":
            self._set_state("connected")
        if message.type == "system":
            self._on_system(message)
        elif message.type == "heartbeat":
            self._counts["heartbeats"] += 1
            if not self._wants_heartbeats():
                return None  # it fed the watchdog; nobody asked to see it
        elif message.id is not None and self._is_duplicate(message):
            return None
        self._route_task_event(message)
        return message

    def _on_system(self, message: Envelope) -> None:
        payload = message.payload if isinstance(message.payload, dict) else {}
        event, detail = payload.get("event"), payload.get("detail")
        if event == "connect" and isinstance(detail, dict):
            self._connect_detail = detail
            reason = detail.get("reason")
            if reason is not None:
                self._counts["gaps"] += 1
                log.warning("resume of %s failed (%s): messages may have been lost", self.client_id, reason)
        elif event == "maintenance":
            retry_ms = self._decoder.retry
            if isinstance(detail, dict) and isinstance(detail.get("retryMs"), int):
                retry_ms = detail["retryMs"]
            self._maintenance_floor = max(0, retry_ms or 0) / 1000
        elif event == "disconnect":
            log.info("server closed the stream of %s: %s", self.client_id, detail)

    def _is_duplicate(self, message: Envelope) -> bool:
        assert message.id is not None
        seen = self._seen.get(message.id)
        if seen is None:
            self._seen[message.id] = "pending"
            if len(self._seen) > _SEEN_IDS:
                self._seen.popitem(last=False)
            return False
        self._counts["duplicates"] += 1
        if seen == "done" and message.require_ack and self.auto_ack:
            self._queue_ack(message.id)  # a redelivery: our ack was lost, send it again
        return True

    # -- the dispatcher --------------------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            if not self._inbound or not self._has_consumers():
                self._inbound_ready.clear()
                await self._inbound_ready.wait()
                continue
            message = self._inbound.popleft()
            self._inbound_room.set()
            try:
                await self._dispatch(message)
            except Exception:  # a bug here must not stop the dispatcher
                log.exception("dispatching %s failed", message.id)

    async def _dispatch(self, message: Envelope) -> None:
        plain = message.type not in ("system", "heartbeat")
        if message.type != "heartbeat":
            self._counts["received"] += 1
            key = message.type if message.type in self._by_type or len(self._by_type) < _TYPE_KEYS else "other"
            self._by_type[key] = self._by_type.get(key, 0) + 1
        if plain:
            self._history.append(message)
        failed = await self._run_handlers(message, plain)
        for listener in list(self._listeners):
            if listener.wants(message) and not listener.put(message):
                self._counts["dropped"] += 1
        if message.id is None or not plain:
            return
        if failed:
            self._seen.pop(message.id, None)  # let the server's redelivery run the handlers again
            return
        if message.id in self._seen:
            self._seen[message.id] = "done"
        if message.require_ack and self.auto_ack:
            self._queue_ack(message.id)

    async def _run_handlers(self, message: Envelope, plain: bool) -> bool:
        handlers = [h for h in self._handlers if h.type == message.type or (plain and h.type == "*")]
        handlers.sort(key=lambda h: (-h.priority, h.order))
        failed = False
        for handler in handlers:
            if handler.once and handler.subscription is not None:
                if not handler.subscription.active:
                    continue
                handler.subscription.unsubscribe()
            try:
                await _call(handler.fn, message)
            except Exception:
                failed = True
                self._counts["handler_errors"] += 1
                log.exception("handler %r failed on message %s (%s)", handler.fn, message.id, message.type)
        return failed

    # -- receiving -------------------------------------------------------------------------------------------

    def subscribe(self, type: str, handler: Handler, *, priority: int = 0) -> Subscription:
        """Call ``handler(message)`` for every message of ``type``; higher ``priority`` handlers run first.

        ``"*"`` means every type but ``system`` and ``heartbeat``, which are only delivered to handlers that name
        them. A handler may be a coroutine function (awaited before the next handler runs); one that raises is
        logged and counted, and the other handlers still run.
        """
        return self._add_handler(type, handler, priority, once=False)

    def once(self, type: str, handler: Handler, *, priority: int = 0) -> Subscription:
        """Like :meth:`subscribe`, for the next message of ``type`` only."""
        return self._add_handler(type, handler, priority, once=True)

    def _add_handler(self, type: str, fn: Handler, priority: int, *, once: bool) -> Subscription:
        self._handler_order += 1
        handler = _Handler(type, fn, priority, self._handler_order, once)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._handlers.remove(handler)
            self._consumers_changed()

        handler.subscription = Subscription(remove)
        self._handlers.append(handler)
        self._consumers_changed()
        return handler.subscription

    async def messages(self, *, system: bool = False, heartbeats: bool = False) -> AsyncIterator[Envelope]:
        """Iterate over the messages as they arrive (an alternative to handlers; both may be used at once).

        ``system`` and ``heartbeat`` messages only when asked. Each iterator buffers up to ``queue_size``
        messages and drops its oldest beyond (counted in ``stats().dropped``). The iteration ends when the client
        is closed or the server answered 204, and raises the error that stopped the stream
        (:class:`~sse_fast.errors.AuthError`, :class:`~sse_fast.errors.ConnectionLostError`).
        """
        listener = _Listener(self._queue_size, system=system, heartbeats=heartbeats)
        if self._fatal is not None:
            raise self._fatal
        if self._closed or self._stopped:
            return
        self._listeners.add(listener)
        self._consumers_changed()
        try:
            while True:
                while not listener.items:
                    if listener.ended:
                        if listener.error is not None:
                            raise listener.error
                        return
                    listener.ready.clear()
                    await listener.ready.wait()
                yield listener.items.popleft()
        finally:
            self._listeners.discard(listener)
            self._consumers_changed()

    # -- tasks -----------------------------------------------------------------------------------------------

    def _route_task_event(self, message: Envelope) -> None:
        if message.type not in ("command", "progress") or not isinstance(message.payload, dict):
            return
        if message.type == "command" and "event" not in message.payload:
            return  # a command relayed to us, not a scheduler event
        self._task_events.append(message)
        for waiter in self._task_waiters.values():
            if waiter.matches(message):
                waiter.feed(message)

    async def run_task(
        self,
        task: str,
        params: Mapping[str, Any] | None = None,
        *,
        on_progress: Callable[[ProgressPayload], Any] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the scheduler's deadline for the task, not ours
        priority: int = 2,
    ) -> Any:
        """Submit ``task`` to the server's scheduler and wait for its result.

        ``on_progress(progress)`` (sync or async) is called with each :class:`~sse_fast.models.ProgressPayload`.
        Raises :class:`~sse_fast.errors.TaskError` when the task ends ``failed`` (without a retry to come),
        ``cancelled`` or ``timed_out``. ``timeout`` (seconds) is passed to the scheduler. The stream is opened if it
        is not, since the task's events arrive on it.
        """
        if not self._stream_wanted:
            await self.connect()
        command_id = new_message_id()
        waiter = _TaskWaiter(command_id)
        self._task_waiters[command_id] = waiter
        try:
            answer = await self.send_command(
                "execute", task=task, params=params, timeout=timeout, priority=priority, command_id=command_id
            )
            if not isinstance(answer, CommandAnswer):
                raise ServerError("the server relayed the command instead of scheduling it", status=202, code="relayed")
            waiter.task_id = answer.task_id
            for message in list(self._task_events):
                if waiter.matches(message) and message not in waiter.events:
                    waiter.feed(message)
            return await self._follow_task(waiter, answer.task_id, on_progress)
        finally:
            self._task_waiters.pop(command_id, None)

    async def _follow_task(
        self, waiter: _TaskWaiter, task_id: str, on_progress: Callable[[ProgressPayload], Any] | None
    ) -> Any:
        while True:
            while not waiter.events:
                if waiter.error is not None:
                    raise waiter.error
                waiter.ready.clear()
                await waiter.ready.wait()
            message = waiter.events.popleft()
            payload: dict[str, Any] = message.payload
            if message.type == "progress":
                if on_progress is not None:
                    await self._report_progress(on_progress, payload)
                continue
            event = payload.get("event")
            if event == "task_completed":
                return payload.get("result")
            if event in _TERMINAL and not (event == "task_failed" and payload.get("willRetry")):
                status = _TERMINAL[str(event)]
                error = payload.get("error")
                raise TaskError(f"task {task_id} {status}" + (f": {error}" if error else ""), task_id=task_id,
                                status=status, error=error)  # fmt: skip

    async def _report_progress(self, on_progress: Callable[[ProgressPayload], Any], payload: dict[str, Any]) -> None:
        try:
            progress = msgspec.convert(payload, ProgressPayload)
        except msgspec.ValidationError:
            log.warning("ignoring a malformed progress event: %.200r", payload)
            return
        try:
            await _call(on_progress, progress)
        except Exception:
            self._counts["handler_errors"] += 1
            log.exception("on_progress callback failed")

    async def query_progress(self, task_id: str) -> TaskRecord:
        """The server's record of a task (``GET /api/tasks/{taskId}``): status, progress, result..."""
        response = await self._http.get(
            f"{self.base_url}/api/tasks/{task_id}", headers=self._headers, timeout=self.connection_timeout
        )
        if response.status_code != 200:
            raise self._answer_error(response.status_code, response.content)
        return msgspec.json.decode(response.content, type=TaskRecord)

    async def cancel_task(self, task_id: str) -> Answer:
        """Send a ``cancel`` command for ``task_id``."""
        return await self.send_command("cancel", task_id=task_id)

    async def pause_task(self, task_id: str) -> Answer:
        """Send a ``pause`` command for ``task_id``."""
        return await self.send_command("pause", task_id=task_id)

    async def resume_task(self, task_id: str) -> Answer:
        """Send a ``resume`` command for ``task_id``."""
        return await self.send_command("resume", task_id=task_id)

    # -- sending ---------------------------------------------------------------------------------------------

    async def send(self, message: Envelope) -> Answer:
        """Queue ``message`` and wait for the server's answer.

        The message gets an id when it has none, so a retried send is accepted once (the server deduplicates by
        id). It waits while the stream is (re)connecting and when the server answers 429/503, and is retried
        after :data:`RETRY_DELAYS` (a ``Retry-After`` lengthens a delay); then fails with
        :class:`~sse_fast.errors.ServerError` or :class:`~sse_fast.errors.ConnectionLostError`. Other errors
        fail at once (:class:`~sse_fast.errors.ServerError`, :class:`~sse_fast.errors.AuthError`). When the queue
        is full, the oldest message of a lower priority is evicted (its send fails with
        :class:`~sse_fast.errors.QueueFullError`), or, when there is none, this one is refused.
        """
        if message.id is None:
            message = msgspec.structs.replace(message, id=new_message_id())
        path = "/api/commands" if message.type == "command" and message.target is None else "/api/messages"
        return await self._submit(path, _json.encode(message), message.priority)

    async def send_text(
        self,
        text: str,
        *,
        target: str | None = None,
        topic: str | None = None,
        priority: int = 1,
        require_ack: bool = False,
    ) -> Answer:
        """Send a ``text`` message (``payload`` is ``text``); no ``target`` and no ``topic`` is a broadcast."""
        return await self.send(
            Envelope(type="text", payload=text, target=target, topic=topic, priority=priority, require_ack=require_ack)
        )

    async def send_json(
        self,
        obj: Any,
        *,
        target: str | None = None,
        topic: str | None = None,
        priority: int = 1,
        require_ack: bool = False,
    ) -> Answer:
        """Send a ``json`` message with ``obj`` as its payload."""
        return await self.send(
            Envelope(type="json", payload=obj, target=target, topic=topic, priority=priority, require_ack=require_ack)
        )

    async def send_command(
        self,
        action: Literal["execute", "cancel", "pause", "resume", "query", "sync"],
        *,
        task: str | None = None,
        task_id: str | None = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the scheduler's deadline for the task, not ours
        priority: int = 2,
        target: str | None = None,
        command_id: str | None = None,
    ) -> Answer:
        """Send a command (PROTOCOL.md section 4) to the scheduler, or to the client ``target``.

        ``timeout`` is in seconds (sent as milliseconds). The scheduler answers a
        :class:`~sse_fast.models.CommandAnswer` (``taskId``, ``status``).
        """
        payload = CommandPayload(
            command_id=command_id or new_message_id(),
            action=action,
            task=task,
            task_id=task_id,
            params=dict(params) if params is not None else None,
            timeout=None if timeout is None else max(1, round(timeout * 1000)),
        )
        envelope = Envelope(type="command", payload=msgspec.to_builtins(payload), priority=priority, target=target)
        return await self.send(envelope)

    async def ack(self, message_id: str) -> Answer:
        """Acknowledge a ``requireAck`` message (what ``auto_ack`` does after the handlers returned)."""
        return await self._submit("/api/ack", _json.encode({"messageIds": [message_id]}), _ACK_PRIORITY)

    def _queue_ack(self, message_id: str) -> None:
        async def ack() -> None:
            try:
                await self.ack(message_id)
            except Exception as err:
                log.warning("could not acknowledge %s: %s", message_id, err)

        if not self._closed:
            self._spawn(ack())

    async def _submit(self, path: str, body: bytes, priority: int) -> Answer:
        if self._closed:
            raise ConnectionLostError("the client is closed")
        if self._fatal is not None:
            raise self._fatal
        self._start_workers()
        item = _Outgoing(path, body, priority, asyncio.get_running_loop().create_future())
        self._enqueue(item)
        return await item.future

    def _enqueue(self, item: _Outgoing) -> None:
        queue = self._outbox
        if len(queue) >= queue.max_items and not any(queue.depths()[: item.priority]):
            self._counts["dropped"] += 1
            waiting = len(queue)
            item.future.set_exception(
                QueueFullError(f"the outbound queue is full ({waiting} messages of priority >= {item.priority} wait)")
            )
            return
        result = queue.push(item, item.priority, resumable=False)
        for evicted in result.evicted:
            self._counts["dropped"] += 1
            if not evicted.future.done():
                evicted.future.set_exception(
                    QueueFullError(f"evicted from the full outbound queue by a priority {item.priority} message")
                )
        if result.outcome != "accepted":
            self._counts["dropped"] += 1
            item.future.set_exception(QueueFullError("the outbound queue is full"))
            return
        self._outbox_ready.set()

    async def _send_loop(self) -> None:
        while True:
            item = self._outbox.pop()
            if item is None:
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
                continue
            if item.future.done():  # the caller gave up (cancelled)
                continue
            self._in_flight = item
            try:
                await self._deliver(item)
            finally:
                self._in_flight = None

    async def _deliver(self, item: _Outgoing) -> None:
        while not item.future.done():
            if self._stream_wanted:
                await self._until_connected()  # while the server is unreachable, wait for the stream to return
            error, floor = await self._post(item)
            if error is None:
                return
            item.attempts += 1
            if item.attempts > len(RETRY_DELAYS):
                if not item.future.done():
                    item.future.set_exception(error)
                return
            delay = max(RETRY_DELAYS[item.attempts - 1], floor or 0.0)
            log.info("send to %s failed (%s); retrying in %.1fs", item.path, error, delay)
            await asyncio.sleep(delay)

    async def _post(self, item: _Outgoing) -> tuple[BaseException | None, float | None]:
        """One attempt; resolves the future when done, else returns the retryable error and a Retry-After."""
        headers = {**self._headers, "Content-Type": "application/json"}
        try:
            response = await self._http.post(
                f"{self.base_url}{item.path}", content=item.body, headers=headers, timeout=self.connection_timeout
            )
        except httpx.HTTPError as err:
            return ConnectionLostError(f"{type(err).__name__}: {err}"), None
        status = response.status_code
        if status in (429, 503):
            return self._answer_error(status, response.content), _retry_after(response.headers)
        if item.future.done():
            return None, None
        if 200 <= status < 300:
            try:
                answer = self._decode_answer(item.path, response.content)
            except (msgspec.DecodeError, msgspec.ValidationError) as err:
                item.future.set_exception(ServerError(f"unexpected answer: {err}", status=status, code="bad_answer"))
                return None, None
            self._counts["sent"] += 1
            item.future.set_result(answer)
        else:
            item.future.set_exception(self._answer_error(status, response.content))
        return None, None

    @staticmethod
    def _decode_answer(path: str, body: bytes) -> Answer:
        data = msgspec.json.decode(body)
        if isinstance(data, dict) and "acked" in data:
            return msgspec.convert(data, AckAnswer)
        if path == "/api/commands" and isinstance(data, dict) and "taskId" in data:
            return msgspec.convert(data, CommandAnswer)
        return msgspec.convert(data, PublishAnswer)

    @staticmethod
    def _answer_error(status: int, body: bytes) -> ServerError | AuthError:
        message, code, detail = _error_fields(body[:_MAX_ERROR_BODY], status)
        if status in (401, 403):
            return AuthError(message, status=status, code=code)
        return ServerError(message, status=status, code=code, detail=detail)


# ---------------------------------------------------------------------------------------------------------------
# The command line: `sse-fast listen` and `sse-fast publish`
# ---------------------------------------------------------------------------------------------------------------


async def run_listen(
    url: str, *, client_id: str, topics: str = "", token: str | None = None, as_json: bool = False
) -> int:
    """``sse-fast listen``: print every message (heartbeats excepted) as it comes, reconnecting forever.

    With ``as_json`` each message is one JSON object per line on stdout; state changes go to stderr. Returns the
    exit code: 0 when the server said stop (204), 1 when it refused the credentials.
    """
    topic_list = [t.strip() for t in topics.split(",") if t.strip()]
    client = Client(url, client_id=client_id, topics=topic_list, token=token, max_reconnect_attempts=None)

    def show_state(old: State, new: State) -> None:
        print(f"sse-fast: {old} -> {new}", file=sys.stderr, flush=True)

    client.on_state_change(show_state)
    try:
        async with client:
            async for message in client.messages(system=True):
                print(_render(message, as_json), flush=True)
    except AuthError as err:
        print(f"sse-fast: refused ({err.status} {err.code}): {err}", file=sys.stderr)
        return 1
    return 0


def _render(message: Envelope, as_json: bool) -> str:
    if as_json:
        return _json.encode(message).decode()
    route = f" -> {message.target}" if message.target else f" #{message.topic}" if message.topic else ""
    payload = message.payload if isinstance(message.payload, str) else _json.encode(message.payload).decode()
    return f"[{message.type}] {message.source or '?'}{route}: {payload}"


async def run_publish(
    url: str,
    data: str,
    *,
    target: str | None = None,
    topic: str | None = None,
    broadcast: bool = False,
    type: str | None = None,
    priority: int = 1,
    token: str | None = None,
    api_key: str | None = None,
    client_id: str | None = None,
) -> int:
    """``sse-fast publish``: send one message and print the server's answer as JSON; returns the exit code.

    ``data`` is sent as JSON when it parses as JSON (type ``json``), else as a string (type ``text``). Without
    ``target`` and ``topic`` the message is a broadcast (``broadcast`` only makes that explicit).
    """
    try:
        payload: Any = msgspec.json.decode(data)
        default_type = "json"
    except msgspec.DecodeError:
        payload, default_type = data, "text"
    headers = {"X-API-Key": api_key} if api_key else None
    try:
        envelope = Envelope(type=type or default_type, payload=payload, target=target, topic=topic, priority=priority)
        async with Client(url, client_id=client_id or "", token=token, headers=headers, auto_connect=False) as client:
            answer = await client.send(envelope)
    except (ServerError, AuthError) as err:
        print(f"sse-fast: {err.status} {err.code}: {err}", file=sys.stderr)
        return 1
    except (ConnectionLostError, QueueFullError, ValueError) as err:
        print(f"sse-fast: {err}", file=sys.stderr)
        return 1
    print(_json.encode(answer).decode(), flush=True)
    return 0
