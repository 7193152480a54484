"""The connection: one ``GET /sse`` stream, reconnected with backoff and resumed with ``Last-Event-ID``.

The connection manager (:meth:`Client._run`) moves through the states ``disconnected``, ``connecting``,
``connected``, ``reconnecting`` and ``error``, and reconnects with exponential backoff and full jitter
(:func:`backoff_delay`), sending ``Last-Event-ID`` so that the server replays what the client missed; a ``retry:``
field, a ``Retry-After`` or a ``maintenance`` event sets the least it waits. The watchdog is the stream's read
timeout: a stream silent for ``read_timeout`` (by default ``2.5 * min(KEEPALIVE, heartbeat_interval)``) is dead.

The reader never runs user code: it decodes with the Rust :class:`~sse_fast._core.Decoder`, keeps the resume
cursor, deduplicates by message id and hands messages to the dispatcher (:mod:`sse_fast.client.dispatch`).
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Callable
from typing import Any, Final, Literal

import httpx
import msgspec

from sse_fast._core import Decoder
from sse_fast.client._base import _MAX_ERROR_BODY, _answer_error, _ClientBase, _error_fields, _retry_after, log
from sse_fast.client.dispatch import Subscription
from sse_fast.errors import AuthError, ConnectionLostError, FrameError
from sse_fast.models import Envelope, SubscriptionsAnswer

__all__ = ["KEEPALIVE", "State", "backoff_delay"]

State = Literal["disconnected", "connecting", "connected", "reconnecting", "error"]
"""The connection manager's state."""

KEEPALIVE: Final = 15.0
"""The server's default keepalive period (``SSE_FAST_KEEPALIVE``): the stream's watchdog is based on it."""

# Bounds. A line or event past these is a broken stream (the server's body limit is 1 MiB): reconnect.
_MAX_LINE: Final = 2 << 20
_MAX_EVENT: Final = 4 << 20
_MAX_EXPONENT: Final = 32

_envelope_decoder = msgspec.json.Decoder(Envelope)
_subscriptions_decoder = msgspec.json.Decoder(SubscriptionsAnswer)
_RETOPIC_ATTEMPTS: Final = 3


def _changed(topics: tuple[str, ...], add: tuple[str, ...], remove: tuple[str, ...]) -> tuple[str, ...]:
    """The server's rule for a change, applied locally: ``remove`` first, then ``add``, repeats once, order kept."""
    kept = tuple(t for t in topics if t not in remove)
    return kept + tuple(dict.fromkeys(t for t in add if t not in kept))


def backoff_delay(
    attempt: int, *, base: float, cap: float, floor: float = 0.0, rng: random.Random | None = None
) -> float:
    """Seconds to wait before reconnect ``attempt`` (1 for the first): exponential backoff with full jitter.

    Uniform in ``[0, min(cap, base * 2 ** (attempt - 1))]``, plus ``floor``: the server's ``retry:`` (or a
    ``Retry-After``), which the client never undercuts.
    """
    ceiling = min(cap, base * 2.0 ** min(max(attempt, 1) - 1, _MAX_EXPONENT))
    return floor + (rng or random).uniform(0.0, ceiling)


class _Stop(Exception):
    """The server answered 204: stop reconnecting."""


class _Lost(Exception):
    """This connection attempt ended; reconnect after at least ``floor`` seconds."""

    def __init__(self, reason: str, *, floor: float = 0.0) -> None:
        super().__init__(reason)
        self.floor = floor


def _valid_cursor(value: str) -> str | None:
    # A cursor goes back in a header: keep only what a header can carry (a garbage stream may set anything).
    if 0 < len(value) <= 256 and value.isascii() and value.isprintable():
        return value
    return None


class _Connection(_ClientBase):
    """The connection manager of :class:`~sse_fast.client.Client`: the stream, its state and its reader."""

    topics: tuple[str, ...]
    max_reconnect_attempts: int | None
    reconnect_base_delay: float
    reconnect_max_delay: float
    read_timeout: float

    def _init_connection(self) -> None:
        self._state: State = "disconnected"
        self._state_callbacks: list[Callable[[State, State], Any]] = []
        self._connected = asyncio.Event()
        self._connections = 0  # times the state became `connected`
        self._fatal = None
        self._stream_wanted = False
        self._stopped = False  # the server answered 204
        self._cursor: str | None = None
        self._connected_at: float | None = None
        self._connect_detail: dict[str, Any] = {}
        self._maintenance_floor: float | None = None
        self._decoder = Decoder(max_line=_MAX_LINE, max_event=_MAX_EVENT)
        self._delivered = False
        self._runner: asyncio.Task[None] | None = None
        self._opened_topics: tuple[str, ...] = ()  # what the current stream's request asked for
        self._topics_lock = asyncio.Lock()

    # -- connecting ------------------------------------------------------------------------------------------

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
        refreshed = False  # the token function was called again after a 401 and nothing connected since
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
                if err.status == 401 and not refreshed and await self._refresh_token():
                    refreshed = True
                    continue  # at once, with the new token
                self._finish(err)
                return
            except _Lost as err:
                reason, floor = str(err), err.floor
            except httpx.UnsupportedProtocol:
                raise  # a wrong URL does not get better by retrying
            except (httpx.HTTPError, FrameError, OSError) as err:
                reason = f"{type(err).__name__}: {err}"
            delivered = delivered or self._delivered
            refreshed = refreshed and not delivered
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
        await self._ensure_token()
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache", **self._headers}
        headers.pop("Content-Type", None)
        if self._cursor is not None:
            headers["Last-Event-ID"] = self._cursor
        params = {"clientId": self.client_id} if self.client_id else {}
        self._opened_topics = self.topics
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
            if self._opened_topics != self.topics:  # changed while this stream's request was on its way
                self._spawn(self._change_topics((), ()))
            reason = detail.get("reason")
            if reason is not None:
                self._counts["gaps"] += 1
                log.warning("resume of %s failed (%s): messages may have been lost", self.client_id, reason)
        elif event == "subscribed" and isinstance(detail, dict) and isinstance(detail.get("topics"), list):
            # The stream's patterns changed (by this client or an admin): reconnect and resume with them.
            self.topics = self._opened_topics = tuple(str(t) for t in detail["topics"])
        elif event == "maintenance":
            retry_ms = self._decoder.retry
            if isinstance(detail, dict) and isinstance(detail.get("retryMs"), int):
                retry_ms = detail["retryMs"]
            self._maintenance_floor = max(0, retry_ms or 0) / 1000
        elif event == "disconnect":
            log.info("server closed the stream of %s: %s", self.client_id, detail)

    # -- live topic changes ----------------------------------------------------------------------------------

    async def subscribe_topics(self, *patterns: str) -> tuple[str, ...]:
        """Add topic patterns to the live stream without reconnecting (``POST /api/subscriptions``); returns the
        stream's patterns from now on, which are also those the client reconnects (and resumes) with.

        Raises :class:`~sse_fast.errors.AuthError` for a pattern not granted (403) and
        :class:`~sse_fast.errors.ServerError` for an invalid one or past the stream's bounds (400). Without a live
        stream, the patterns are kept for the next connect (which the server checks then).
        """
        return await self._change_topics(tuple(patterns), ())

    async def unsubscribe_topics(self, *patterns: str) -> tuple[str, ...]:
        """Remove topic patterns from the live stream (and from those the client reconnects with); returns the
        stream's patterns from now on. Patterns the stream does not have are ignored."""
        return await self._change_topics((), tuple(patterns))

    async def _change_topics(self, add: tuple[str, ...], remove: tuple[str, ...]) -> tuple[str, ...]:
        """Apply a change to the live stream (again on a stream that replaced it meanwhile), then keep its set."""
        async with self._topics_lock:  # one change at a time: each starts from the set the last one left
            wanted = _changed(self.topics, add, remove)
            for _ in range(_RETOPIC_ATTEMPTS):
                conn_id = self._connect_detail.get("connectionId") if self._state == "connected" else None
                if not isinstance(conn_id, str):
                    break
                opened = self._opened_topics  # the live stream's set (the server's, when no change raced it)
                response = await self._post_subscriptions(conn_id, wanted, opened)
                if response.status_code == 200:
                    topics = tuple(_subscriptions_decoder.decode(response.content).topics)
                    if self._connect_detail.get("connectionId") == conn_id:
                        self.topics = self._opened_topics = topics
                        return topics
                    continue  # a new stream opened meanwhile, maybe with the old set: change it too
                if response.status_code != 404:
                    raise _answer_error(response.status_code, response.content)
                if self._connect_detail.get("connectionId") == conn_id:
                    break  # the stream is gone and no other yet: the next one asks for the new set
            self.topics = wanted
            return wanted

    async def _post_subscriptions(
        self, conn_id: str, wanted: tuple[str, ...], opened: tuple[str, ...]
    ) -> httpx.Response:
        body = {
            "connectionId": conn_id,
            "add": [t for t in wanted if t not in opened],
            "remove": [t for t in opened if t not in wanted],
        }
        await self._ensure_token()
        for attempt in range(2):
            response = await self._http.post(
                f"{self.base_url}/api/subscriptions", json=body, headers=self._headers, timeout=self.connection_timeout
            )
            if response.status_code != 401 or attempt or not await self._refresh_token():
                break
        return response
