"""The interface every broker implements: where published messages, the replay log, mailboxes, acks and
idempotency live.

A broker turns an accepted envelope into frames on this worker's streams (:class:`~sse_fast.streams.Streams`) and
keeps what must outlive a connection. It is storage and transport; what it decides, it decides with
:mod:`sse_fast.broker.rules`, so that the memory broker (:mod:`sse_fast.broker.memory`, one process) and the Redis
broker (:mod:`sse_fast.broker.redis`, a cluster) behave alike and routes, streams and clients never know which one
runs. Every store is bounded (``SSE_FAST_*`` settings) and counted in :meth:`Broker.counters`.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable

from sse_fast.broker import rules
from sse_fast.broker.rules import Accepted, Opening
from sse_fast.models import (
    ConnectionInfo,
    Envelope,
    PresenceAnswer,
    PresenceScope,
    RecentMessage,
    ValidationFailure,
    encode_delivered,
)
from sse_fast.settings import Settings
from sse_fast.streams import Connection, Streams, parse_public_id

__all__ = ["Broker"]

log = logging.getLogger("sse_fast.broker")


def _retrieve(scan: asyncio.Future[list[ConnectionInfo]]) -> None:
    """Mark a shared scan's failure as seen: its awaiters got it (or were cancelled and need none)."""
    if not scan.cancelled():
        scan.exception()


class Broker(abc.ABC):
    """The interface every broker implements. All methods run on the worker's event loop."""

    epoch: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.streams: Streams | None = None
        self._close_hooks: list[Callable[[], Awaitable[None]]] = []
        # The scan of the cluster's connection rows that presence requests in flight share (see presence()).
        self._rows_scan: asyncio.Future[list[ConnectionInfo]] | None = None
        # What every broker counts the same way (the rest of counters() is its stores').
        self.published = 0
        self.duplicates = 0
        self.acked = 0
        self.redelivered = 0
        self.acks_expired = 0

    def attach(self, streams: Streams) -> None:
        """Bind the broker to this worker's streams (before the first request)."""
        self.streams = streams
        streams.add_tick_job(self.tick)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:  # noqa: B027 - optional hook
        """Start background work on the worker's loop (which may not be running yet)."""

    @abc.abstractmethod
    async def publish(self, envelope: Envelope, *, exclude: str | None = None, chosen_id: bool = False) -> Accepted:
        """Deliver an accepted, validated envelope (id, timestamp and source already set by the server).

        ``chosen_id``: the client chose the envelope's id (only such ids are deduped:
        :func:`~sse_fast.broker.rules.dedupes`).
        """

    @abc.abstractmethod
    async def open_stream(
        self, client_id: str, topics: tuple[str, ...], cursor: str | None, *, conn_id: int | None = None
    ) -> Opening:
        """What a stream that just registered with the hub (as ``conn_id``) must receive before its live frames."""

    @abc.abstractmethod
    async def ack(
        self, client_id: str, message_ids: list[str], *, admin: bool, receives: Callable[[str], bool] | None = None
    ) -> int:
        """Record acks; returns how many of the ids were known ``requireAck`` messages the caller may ack
        (:func:`~sse_fast.broker.rules.may_ack`; ``admin`` and ``receives`` as in
        :class:`~sse_fast.broker.rules.Acker`)."""

    @abc.abstractmethod
    async def message_status(self, message_id: str) -> tuple[str, str, list[str]] | None:
        """``(source, status, acked_by)`` of a ``requireAck`` message, or None when unknown."""

    @abc.abstractmethod
    async def recent(self, limit: int) -> list[RecentMessage]:
        """The newest messages of the replay log, newest first, whatever their route (the admin's tail,
        ``GET /api/admin/recent``): at most ``limit``, within :data:`~sse_fast.broker.tail.RECENT_BYTES`."""

    @abc.abstractmethod
    def tick(self, now: float) -> None:
        """Periodic work (about once a second): ack timeouts and redelivery, expiry."""

    def publish_now(self, envelope: Envelope) -> None:
        """Deliver without awaiting: for the synchronous shutdown path (it runs in the SIGTERM handler).

        A broker that must await I/O only schedules the publish on the running loop.
        """
        asyncio.get_running_loop().create_task(self.publish(envelope))

    # -- live topic changes (POST /api/subscriptions) ---------------------------------------------------------

    def local_stream(self, connection_id: str) -> Connection | None:
        """The open stream of this worker with this public id (``<node>.<n>``), else None."""
        assert self.streams is not None
        parsed = parse_public_id(connection_id)
        if parsed is None or parsed[0] != self.streams.node_id:
            return None
        return self.streams.get(parsed[1])

    async def stream_owner(self, connection_id: str) -> str | None:
        """The clientId of a live stream, or None when no such stream is open (a shared broker looks across the
        cluster)."""
        conn = self.local_stream(connection_id)
        return None if conn is None else conn.client_id

    async def change_stream_topics(
        self, connection_id: str, *, add: tuple[str, ...], remove: frozenset[str]
    ) -> tuple[str, ...] | None:
        """Change a live stream's patterns where it is held (:meth:`Streams.change_topics`: remove, then add, within
        its owner's grants and its bounds, raising their 400 and 403); the stream's patterns from now on, or None
        when it is not open (any more). A shared broker reaches the node that holds the stream, which applies the
        change by this same method."""
        conn = self.local_stream(connection_id)
        if conn is None:
            return None
        assert self.streams is not None
        return self.streams.change_topics(conn.id, add=add, remove=remove)

    def encode(self, envelope: Envelope) -> bytes:
        """The envelope as one line of JSON; 413 when its frame could never fit a connection's queue."""
        data = encode_delivered(envelope)
        if len(data) + len(envelope.type) + 16 > self.settings.queue_bytes:
            # Every recipient would overflow and be cut as a slow consumer: refuse it instead.
            raise ValidationFailure(
                413,
                "message_too_large",
                f"the framed message is larger than SSE_FAST_QUEUE_BYTES ({self.settings.queue_bytes})",
            )
        return data

    def ready(self) -> bool:
        """Whether the broker can take publishes now (``/readyz``)."""
        return True

    async def connections(self) -> list[ConnectionInfo]:
        """The rows of ``GET /api/connections``: this worker's streams (a shared broker lists the cluster's)."""
        assert self.streams is not None
        return self.streams.rows()

    async def presence(self, topic: str, *, scope: PresenceScope, limit: int) -> PresenceAnswer:
        """``GET /api/presence``: who receives ``topic`` now (:func:`~sse_fast.broker.rules.presence`), among this
        worker's streams (``node``) or the rows of :meth:`connections` (``cluster``: every live node's, with Redis;
        a dead node's stop counting when its heartbeat expires)."""
        assert self.streams is not None
        rows = self.streams.rows() if scope == "node" else await self._shared_rows()
        return rules.presence(rows, topic, scope=scope, limit=limit)

    async def _shared_rows(self) -> list[ConnectionInfo]:
        """:meth:`connections`, one scan at a time: the presence requests that arrive while a scan runs await that
        scan instead of starting their own. A client with a topic grant may ask for presence, and each scan holds
        every row of the cluster (with Redis, one ``HVALS`` per node): so that concurrent requests cannot multiply
        that memory, they share it. The rows a request gets are at most one scan older than the request."""
        scan = self._rows_scan
        if scan is None or scan.done():
            scan = self._rows_scan = asyncio.ensure_future(self.connections())
            scan.add_done_callback(_retrieve)
        return await asyncio.shield(scan)

    def add_close_hook(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Await ``hook()`` when the broker closes, while it can still write (a collaborator's last writes)."""
        self._close_hooks.append(hook)

    async def run_close_hooks(self) -> None:
        """Await every close hook, each bounded to 2 s and best effort: a shutdown must not hang on one."""
        for hook in self._close_hooks:
            try:
                await asyncio.wait_for(hook(), 2.0)
            except Exception as err:  # logged, never raised: the close goes on
                log.warning("a close hook of the broker failed: %r", err)

    async def close(self) -> None:
        """Release what the broker holds (connections to Redis, ...), after its close hooks."""
        await self.run_close_hooks()

    def delivery_counters(self) -> dict[str, int]:
        """The counters every broker keeps alike: publishes, duplicates, and the life of requireAck messages."""
        return {
            "published": self.published,
            "duplicates": self.duplicates,
            "acks_acked": self.acked,
            "acks_redelivered": self.redelivered,
            "acks_expired": self.acks_expired,
        }

    @abc.abstractmethod
    def counters(self) -> dict[str, int]:
        """Gauges and counters for ``/metrics``."""
