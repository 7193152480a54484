"""The client: :class:`Client`, the facade that puts the connection, the outbox, the dispatcher and tasks together.

It owns what concerns them all: the options, the lifecycle (``async with``, :meth:`Client.close`), the background
tasks and the counters (:class:`ClientStats`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import msgspec

from sse_fast.client._base import Token, _answer_error, log
from sse_fast.client.answers import PresenceAnswer
from sse_fast.client.connection import KEEPALIVE, State, _Connection
from sse_fast.client.dispatch import _Dispatcher
from sse_fast.client.outbox import _Outbox
from sse_fast.client.tasks import _Tasks
from sse_fast.errors import ConnectionLostError

__all__ = ["Client", "ClientStats"]


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
    """Resumes the server could not serve (``unknown_cursor``, ``expired``, ``failover``): messages may be lost."""
    heartbeats: int
    unclaimed: int
    """Messages dropped from the buffer held for the first :meth:`Client.messages` iterator (``queue_size``) while
    none was attached yet."""
    by_type: dict[str, int]
    uptime: float
    """Seconds since the current connection was established (0.0 when not connected)."""


class Client(_Connection, _Outbox, _Dispatcher, _Tasks):
    """A client of an sse-fast server: one event stream in, HTTP publishes out.

    ::

        async with Client("http://127.0.0.1:8000", client_id="alice", topics=["orders.>"]) as client:
            client.subscribe("text", print)
            await client.send_text("hello", target="bob")

    ``async with`` (or :meth:`connect`) opens the stream and waits until it is connected; with
    ``auto_connect=False`` ``async with`` only prepares the client for sending. :meth:`close` ends everything and
    fails what is still queued with :class:`~sse_fast.errors.ConnectionLostError`.

    Options (keyword-only): ``token`` (sent as ``Authorization: Bearer``; or a function, sync or async, returning
    one: called before the first request and again on a 401, once, before the client gives up); ``topics`` to
    subscribe to;
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
        token: Token | None = None,
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
        self._token, self._token_ready = token, False
        if isinstance(token, str):
            self._headers["Authorization"] = f"Bearer {token}"
            self._token_ready = True
        elif token is None and client_id:  # with a token, the server takes the identity from it (X-Client-Id: 403)
            self._headers.setdefault("X-Client-Id", client_id)
        self._http = http_client or httpx.AsyncClient()
        self._own_http = http_client is None
        self._queue_size = queue_size

        self._closed = False
        self._init_connection()
        self._sender: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[Any]] = set()

        self._init_outbox()
        self._init_dispatch()
        self._init_tasks()

        self._counts = dict.fromkeys(
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
                "unclaimed",
            ),
            0,
        )

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

    def _spawn(self, awaitable: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await awaitable
            except Exception:
                log.exception("state callback failed")

        task = asyncio.create_task(run())
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def presence(
        self, topic: str, *, scope: Literal["cluster", "node"] = "cluster", limit: int | None = None
    ) -> PresenceAnswer:
        """Who receives ``topic`` now (``GET /api/presence``): the exact ``count`` of clients and ``connections``,
        and the first ``limit`` clients by clientId (server default 100, at most 1000; 0: the counts only).

        ``scope="node"`` counts only the node that answers. Needs admin or a ``topics`` grant covering ``topic``
        (else :class:`~sse_fast.errors.AuthError`); a pattern instead of a topic is a
        :class:`~sse_fast.errors.ServerError` 400 ``invalid_topic``.
        """
        params: dict[str, str | int] = {"topic": topic, "scope": scope}
        if limit is not None:
            params["limit"] = limit
        await self._ensure_token()
        for attempt in range(2):
            response = await self._http.get(
                f"{self.base_url}/api/presence", params=params, headers=self._headers, timeout=self.connection_timeout
            )
            if response.status_code != 401 or attempt or not await self._refresh_token():
                break
        if response.status_code != 200:
            raise _answer_error(response.status_code, response.content)
        return msgspec.json.decode(response.content, type=PresenceAnswer)

    def stats(self) -> ClientStats:
        """A snapshot of the counters."""
        uptime = 0.0 if self._connected_at is None else time.monotonic() - self._connected_at
        queued = len(self._outbox) + (self._in_flight is not None)
        return ClientStats(state=self._state, queued=queued, by_type=dict(self._by_type), uptime=uptime, **self._counts)
