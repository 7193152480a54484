"""This worker's live streams: the Rust hub, one sink per connection, the writer and the ticker.

The data path ends here. A publish hands one :class:`~sse_fast._core.Frame` to :meth:`Streams.deliver`; the hub
pushes the shared frame into each recipient's bounded queue and notes the queues that went from empty to
non-empty. Those connections are written once per event-loop turn, however many frames reached them in that
turn: :meth:`Streams._flush` drains each queue into one buffer and hands it to the connection's sink.

A sink with a ``direct`` transport (RSGI) is attached to the hub once its opening and replay are written:
from then on the hub writes it itself (:meth:`~sse_fast._core.Hub.flush`, one call per loop turn for every ready
connection, no Python frame per write, and one shared ``bytes`` for the connections that get the same bytes).
The others (ASGI, a stream still replaying or blocked) are written here, one Python call each. Idle connections
cost no timer and no coroutine of their own: one ticker per worker sends keepalives, heartbeats and runs the
periodic jobs of the broker.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import msgspec

from sse_fast._core import CRITICAL, LOW, Delivery, Frame, Hub, encode_comment, encode_json_frame, encode_replay
from sse_fast.errors import HttpError, ValidationFailure
from sse_fast.models import ConnectionInfo, SubscribedDetail
from sse_fast.settings import Settings

__all__ = ["MAX_TOPICS", "Connection", "Reservation", "Sink", "Streams", "parse_public_id", "system_envelope"]

log = logging.getLogger("sse_fast.streams")

_KEEPALIVE = encode_comment("keepalive")
_json = msgspec.json.Encoder()
MAX_TOPICS = 64
"""The most topic patterns one stream holds."""


def parse_public_id(connection_id: str) -> tuple[str, int] | None:
    """``(node, conn)`` of a public connection id (``<node>.<n>``, :meth:`Streams.public_id`), else None: the one
    parser of these ids (a node id is 1 to 64 characters, ``n`` a decimal of at most 19 digits)."""
    node, _, number = connection_id.rpartition(".")
    if not 0 < len(node) <= 64 or not (number.isascii() and number.isdigit() and len(number) < 20):
        return None
    return node, int(number)


class Sink(Protocol):
    """Where a connection's bytes go: one per interface (RSGI transport, ASGI ``send``)."""

    @property
    def direct(self) -> Any:
        """A transport the hub may write itself (``send_bytes(data)`` returning a finished awaitable, as granian's
        RSGI transport does), or None: every write then goes through :meth:`write`."""
        ...

    def wrote(self, size: int) -> None:
        """``size`` more bytes were written through :attr:`direct` (reported in batches, see ``Hub.report_bytes``)."""
        ...

    def write(self, data: bytes) -> bool:
        """Hand ``data`` to the server; False when the connection cannot take more now (the caller waits)."""
        ...

    def close(self) -> None:
        """End the response; the socket closes once what was written is flushed."""
        ...


class Connection:
    """One live stream. Small on purpose: tens of thousands of these live in one worker."""

    __slots__ = ("blocked", "client_id", "connected_at", "grants", "id", "last_active", "replaying", "sink", "topics")

    def __init__(
        self,
        conn_id: int,
        client_id: str,
        topics: tuple[str, ...],
        sink: Sink,
        now: float,
        grants: Callable[[str], bool] | None = None,
    ) -> None:
        self.id = conn_id
        self.client_id = client_id
        self.topics = topics
        # Whether the identity the stream was opened with may subscribe to a pattern (None: to any): a live change
        # keeps within them, whoever asks for it, so that the owner's reconnect with the new set is not refused.
        self.grants = grants
        self.sink = sink
        self.connected_at = now
        self.last_active = now
        self.blocked = False
        # Replay frames not yet written (shared with the log, never copied): they go before any live frame.
        self.replaying: deque[Frame] | None = None


def system_envelope(event: str, detail: Any, *, message_id: str, priority: int = CRITICAL) -> bytes:
    """A ``system`` envelope (PROTOCOL.md section 2) as one line of JSON."""
    return _json.encode(
        {
            "id": message_id,
            "type": "system",
            "priority": priority,
            "timestamp": int(time.time() * 1000),
            "source": "server",
            "payload": {"event": event, "detail": detail},
        }
    )


class Reservation:
    """One of the worker's ``SSE_FAST_MAX_CONNECTIONS`` slots, held by a stream between its capacity check and its
    registration: the response headers go out in between (under ASGI an ``await``), and without the slot every open
    in that window would pass the check. :meth:`release` is idempotent: the stream releases it as it registers, the
    adapter in any case once it is done, so that a stream that never opens gives its slot back."""

    __slots__ = ("_streams",)

    def __init__(self, streams: Streams) -> None:
        self._streams: Streams | None = streams

    def release(self) -> None:
        """Give the slot back (again is a no-op)."""
        if self._streams is not None:
            self._streams._reserved -= 1
            self._streams = None


class Streams:
    """The connections of this worker and the writer that feeds them."""

    def __init__(self, settings: Settings, *, id_prefix: str, node_id: str, new_id: Callable[[], str]) -> None:
        self.settings = settings
        self.node_id = node_id
        self.id_prefix = id_prefix
        self.hub = Hub(queue_frames=settings.queue_frames, queue_bytes=settings.queue_bytes, id_prefix=id_prefix)
        self._new_id = new_id
        self._conns: dict[int, Connection] = {}
        self._dirty: list[int] = []
        self._flush_pending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._tick_jobs: list[Callable[[float], None]] = []
        self._remove_hooks: list[Callable[[int, str], None]] = []
        self._next_keepalive = 0.0
        self._next_heartbeat = 0.0
        # (wall-clock deadline, conn id) of the streams whose credential expires; entries of closed streams stay
        # until their deadline or the next compaction, which keeps it within twice the open connections.
        self._expiries: list[tuple[float, int]] = []
        self._reserved = 0
        self.accepting = True
        # Counters read by the metrics collector at scrape time (never touched per delivery).
        self.closed_slow = 0
        self.closed_replaced = 0
        self.closed_expired = 0
        self.opened_total = 0
        self.closed_total = 0
        self.fanout_observer: Callable[[float], None] | None = None
        """Told how long each :meth:`deliver` took to route and queue its frame (the fan-out histogram)."""

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the ticker on ``loop`` (called once per worker, from the server's startup hook)."""
        self._loop = loop
        now = loop.time()
        self._next_keepalive = now + self.settings.keepalive
        self._next_heartbeat = now + self.settings.heartbeat
        self._ticker = loop.call_later(self._tick_interval(), self._tick)

    def add_tick_job(self, job: Callable[[float], None]) -> None:
        """Run ``job(wall_clock_seconds)`` on every tick (about once a second): ack timeouts, expiry, ..."""
        self._tick_jobs.append(job)

    def add_remove_hook(self, hook: Callable[[int, str], None]) -> None:
        """Call ``hook(conn_id, client_id)`` whenever a connection is removed (a broker's presence)."""
        self._remove_hooks.append(hook)

    def stop(self) -> None:
        """Stop the ticker."""
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    def _tick_interval(self) -> float:
        return min(1.0, self.settings.keepalive, self.settings.heartbeat)

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        self._ticker = loop.call_later(self._tick_interval(), self._tick)
        if now >= self._next_keepalive:
            self._next_keepalive = now + self.settings.keepalive
            self._run(lambda _: self._woken(self.hub.push_all(_KEEPALIVE)), now)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.settings.heartbeat
            self._run(lambda _: self.heartbeat(), now)
        wall = time.time()
        self._run(self._expire, wall)
        for job in self._tick_jobs:
            self._run(job, wall)

    @staticmethod
    def _run(job: Callable[[float], None], now: float) -> None:
        """Run one periodic job; its failure is logged and never stops the ticker or the other jobs."""
        try:
            job(now)
        except Exception:
            log.exception("tick job %r failed", job)

    def heartbeat(self) -> None:
        """Send a ``heartbeat`` frame (ephemeral, no id) to every connection."""
        if not self._conns:
            return
        data = _json.encode(
            {
                "id": self._new_id(),
                "type": "heartbeat",
                "priority": LOW,
                "timestamp": int(time.time() * 1000),
                "source": "server",
                "payload": {"serverTime": int(time.time() * 1000)},
                "ephemeral": True,
            }
        )
        self.deliver(Frame(data, event="heartbeat", priority=LOW))

    # -- connections -----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._conns)

    def get(self, conn_id: int) -> Connection | None:
        """The connection with this id, if it is still open."""
        return self._conns.get(conn_id)

    def connections(self) -> Iterable[Connection]:
        """Every open connection (a snapshot)."""
        return list(self._conns.values())

    def info(self, conn: Connection) -> ConnectionInfo:
        """One connection as a row of ``GET /api/connections``."""
        queued, queued_bytes, dropped = self.hub.queue_stats(conn.id)
        last_active = max(conn.last_active, self.hub.written_at(conn.id) or 0.0)
        return ConnectionInfo(
            client_id=conn.client_id,
            connection_id=self.public_id(conn.id),
            topics=list(conn.topics),
            connected_at=int(conn.connected_at * 1000),
            last_active_at=int(last_active * 1000),
            queued_frames=queued,
            dropped_frames=dropped,
            queued_bytes=queued_bytes,
            node=self.node_id,
        )

    def rows(self) -> list[ConnectionInfo]:
        """Every open connection of this worker as a row of ``GET /api/connections``."""
        return [self.info(conn) for conn in self._conns.values()]

    def reserve(self) -> Reservation | None:
        """A slot for a stream about to open, or None when open and reserved streams fill ``max_connections``."""
        if len(self._conns) + self._reserved >= self.settings.max_connections:
            return None
        self._reserved += 1
        return Reservation(self)

    def expire_at(self, conn_id: int, deadline: float) -> None:
        """Close the stream with ``disconnect`` reason ``token_expired`` once the wall clock passes ``deadline``.

        One heap for the worker, read by the ticker: a stream with a deadline costs one heap entry, no timer.
        """
        if conn_id in self._conns:
            heapq.heappush(self._expiries, (deadline, conn_id))

    def _expire(self, now: float) -> None:
        heap, conns = self._expiries, self._conns
        while heap and heap[0][0] <= now:
            _, conn_id = heapq.heappop(heap)
            if conn_id in conns:
                self.closed_expired += 1
                self.close(conn_id, "token_expired")
        if len(heap) > 2 * len(conns) + 64:  # closed streams' entries: drop them (conn ids are never reused)
            self._expiries = [entry for entry in heap if entry[1] in conns]
            heapq.heapify(self._expiries)

    def open(
        self, client_id: str, topics: tuple[str, ...], sink: Sink, *, grants: Callable[[str], bool] | None = None
    ) -> Connection:
        """Register a stream (``grants``: the patterns its identity may subscribe to, see :meth:`change_topics`).
        Past the per-client limit, the client's oldest stream is closed as ``replaced``."""
        existing = self.hub.connections_of(client_id)
        excess = len(existing) - self.settings.max_connections_per_client + 1
        for old in existing[: max(0, excess)]:
            self.closed_replaced += 1
            self.close(old, "replaced")
        conn_id = self.hub.add(client_id, topics)
        conn = Connection(conn_id, client_id, topics, sink, time.time(), grants)
        self._conns[conn_id] = conn
        self.opened_total += 1
        return conn

    def bound_topics(self, topics: tuple[str, ...]) -> None:
        """Refuse patterns whose index would cost more than a small fixed amount (400), for ``GET /sse?topics=`` and
        live changes alike.

        Every segment of a subscribed pattern is a node of the hub's topic trie (about 600 bytes when no other
        stream shares it), and the core only bounds a pattern's length (128 characters, up to 64 segments): 64 such
        patterns made one stream cost 2 MB. Segments per pattern and bytes of all patterns together bound it to
        about ``(max_topics_bytes + 64) / 2`` nodes.
        """
        if len(topics) > MAX_TOPICS:
            raise ValidationFailure(400, "too_many_topics", f"at most {MAX_TOPICS} topics per stream")
        limit = self.settings.max_topic_segments
        for topic in topics:
            if topic.count(".") >= limit:
                detail = {"topic": topic[:128]}
                raise ValidationFailure(400, "topic_too_deep", f"a topic pattern has at most {limit} segments", detail)
        size = sum(len(t) for t in topics)
        if size > self.settings.max_topics_bytes:
            detail_text = f"a stream's topic patterns total at most {self.settings.max_topics_bytes} characters"
            raise ValidationFailure(400, "topics_too_long", detail_text, {"length": size})

    def change_topics(self, conn_id: int, *, add: tuple[str, ...], remove: frozenset[str]) -> tuple[str, ...] | None:
        """Change a live stream's patterns (``POST /api/subscriptions``, whoever asked and wherever they asked):
        ``remove`` first, then ``add`` (valid patterns, the asker's grants already checked). Each added pattern must
        be one the stream's own identity may subscribe to (403 ``topic_not_granted``: else its owner's next
        reconnect, which sends the new set, would be refused), and the new set must keep :meth:`bound_topics`.
        Applied by :meth:`retopic` unless nothing changes. Answers the stream's patterns from now on; None when it
        is not open on this worker."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return None
        kept = tuple(t for t in conn.topics if t not in remove)
        added = tuple(t for t in add if t not in kept)
        for topic in added:
            if conn.grants is not None and topic not in conn.topics and not conn.grants(topic):
                message = f"the stream's owner {conn.client_id} is not allowed to subscribe to {topic}"
                raise HttpError(403, "topic_not_granted", message, {"topic": topic})
        topics = kept + added
        if frozenset(topics) == frozenset(conn.topics):
            return conn.topics  # nothing changes: no frame, and the stream keeps its order
        self.bound_topics(topics)
        return topics if self.retopic(conn_id, topics) else None

    def retopic(self, conn_id: int, topics: tuple[str, ...]) -> bool:
        """Replace a live stream's topic patterns (``POST /api/subscriptions``; checked by the caller) and tell the
        stream with a ``system`` ``subscribed`` frame. Frames already queued stay queued: the change applies to
        what is routed from now on. False for a connection that is not open on this worker."""
        conn = self._conns.get(conn_id)
        if conn is None or not self.hub.set_topics(conn_id, topics):
            return False
        old, conn.topics = conn.topics, topics
        detail = SubscribedDetail(
            topics=list(topics), added=[t for t in topics if t not in old], removed=[t for t in old if t not in topics]
        )
        data = system_envelope("subscribed", detail, message_id=self._new_id())
        self.push(conn_id, Frame(data, event="system", priority=CRITICAL))
        return True

    def public_id(self, conn_id: int) -> str:
        """The connection id shown to clients and admins: unique across the nodes of a cluster (read back by
        :func:`parse_public_id`)."""
        return f"{self.node_id}.{conn_id}"

    def remove(self, conn_id: int) -> None:
        """Forget a connection whose socket closed: frees its queue, its indexes and its sink."""
        conn = self._conns.pop(conn_id, None)
        if conn is not None:
            self.hub.remove(conn_id)
            self.closed_total += 1
            for hook in self._remove_hooks:
                hook(conn_id, conn.client_id)

    def close(self, conn_id: int, reason: str, *, retry_ms: int | None = None) -> None:
        """Close a stream with a last ``system`` ``disconnect`` frame (best effort: the socket may be full)."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        if reason == "slow_consumer":
            self.closed_slow += 1
        detail: dict[str, Any] = {"reason": reason}
        frame = encode_json_frame(system_envelope("disconnect", detail, message_id=self._new_id()), event="system")
        if retry_ms is not None:
            frame = b"retry: %d\n" % retry_ms + frame
        self.remove(conn_id)
        try:
            conn.sink.write(frame)
        finally:
            conn.sink.close()

    # -- the data path ---------------------------------------------------------------------------------------

    def deliver(
        self, frame: Frame, *, target: str | None = None, topic: str | None = None, exclude: str | None = None
    ) -> Delivery:
        """Route one frame to every matching connection of this worker; writes happen once per loop turn."""
        started = time.perf_counter()
        delivery = self.hub.publish(frame, target=target, topic=topic, exclude=exclude)
        if self.fanout_observer is not None:
            self.fanout_observer(time.perf_counter() - started)
        self._woken(delivery)
        for conn_id in delivery.overflowed:
            self.close(conn_id, "slow_consumer")
        return delivery

    def push(self, conn_id: int, frame: Frame) -> Delivery:
        """Queue a frame for one connection (a redelivery, a connection-specific system frame)."""
        delivery = self.hub.push(conn_id, frame)
        self._woken(delivery)
        for overflowed in delivery.overflowed:
            self.close(overflowed, "slow_consumer")
        return delivery

    def _woken(self, delivery: Delivery) -> None:
        """Schedule the writes a delivery calls for: the hub's attached writers, and the connections written here."""
        if delivery.woken:
            self._wake(delivery.woken)
        elif delivery.ready:
            self._schedule()

    def _wake(self, conn_ids: list[int]) -> None:
        self._dirty.extend(conn_ids)
        self._schedule()

    def _schedule(self) -> None:
        if not self._flush_pending and self._loop is not None:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def replay(self, conn: Connection, frames: list[Frame]) -> None:
        """Write ``frames`` (a resume's replay, oldest first) to ``conn`` before its live frames."""
        if frames:
            self._detach(conn)
            conn.replaying = deque(frames)

    def _detach(self, conn: Connection) -> None:
        """Write ``conn`` from here again (its bytes written by the hub so far are reported to its sink)."""
        unreported = self.hub.detach(conn.id)
        if unreported:
            conn.sink.wrote(unreported)

    def _write_replay(self, conn: Connection) -> bool:
        """Write the replay in chunks of a quarter of the queue bound; False when the sink took no more."""
        frames = conn.replaying
        assert frames is not None
        chunk = max(16384, self.settings.queue_bytes // 4)
        while frames:
            data, taken = encode_replay(frames, id_prefix=self.id_prefix, chunk_bytes=chunk)
            for _ in range(taken):
                frames.popleft()
            if not conn.sink.write(data):
                conn.blocked = True
                return False
        conn.replaying = None
        return True

    def _flush(self) -> None:
        self._flush_pending = False
        now = time.time()
        conns = self._conns
        if self.hub.pending:
            report = self.hub.flush(now)
            if report is not None:
                self._reported(*report)
        dirty, self._dirty = self._dirty, []
        hub = self.hub
        for conn_id in dirty:
            conn = conns.get(conn_id)
            if conn is None or conn.blocked:
                continue
            if conn.replaying is not None and not self._write_replay(conn):
                continue
            data = hub.drain(conn_id)
            if data:
                conn.last_active = now
                if not conn.sink.write(data):
                    conn.blocked = True
                    continue
            direct = conn.sink.direct
            if direct is not None:  # opened and replayed: the hub writes it from now on
                hub.attach(conn_id, direct)

    def _reported(self, closed: list[int], written: list[tuple[int, int]]) -> None:
        """What the hub's writers could not handle alone: streams found closed, and byte counts for the sinks."""
        conns = self._conns
        for conn_id in closed:
            conn = conns.get(conn_id)
            if conn is not None:
                conn.sink.close()  # the client is gone: the interface's disconnect callback removes the connection
        for conn_id, size in written:
            conn = conns.get(conn_id)
            if conn is not None:
                conn.sink.wrote(size)

    def unblock(self, conn_id: int) -> None:
        """The sink can take more again: write what queued up meanwhile."""
        conn = self._conns.get(conn_id)
        if conn is not None and conn.blocked:
            conn.blocked = False
            self._wake([conn_id])

    # -- shutdown --------------------------------------------------------------------------------------------

    def announce_maintenance(self) -> None:
        """Refuse new streams; send each open one ``maintenance`` with its own ``retry:``, then close it.

        The ``retry:`` is uniform in ``[retry, retry + spread]`` ms, so that the clients come back spread out
        (to another node, or to this one restarted) instead of all at once.
        """
        self.accepting = False
        base = self.settings.retry
        spread = int(self.settings.retry_spread * 1000)
        for conn in list(self._conns.values()):
            retry_ms = base + random.randint(0, spread)
            queued = b"" if conn.blocked else self.hub.drain(conn.id)  # frames of this loop turn go out first
            self.remove(conn.id)
            data = system_envelope("maintenance", {"retryMs": retry_ms}, message_id=self._new_id())
            try:
                conn.sink.write(queued + b"retry: %d\n" % retry_ms + encode_json_frame(data, event="system"))
            finally:
                conn.sink.close()
