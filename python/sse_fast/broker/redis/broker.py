"""The Redis broker: many workers and many nodes behave as one server (``SSE_FAST_BROKER=redis://...``).

One Redis Stream, ``sse:log``, is both the replay log and the fan-out. A publish is one ``XADD`` (a Lua script that
also dedupes, tracks the ack, and fills the target's mailbox when the target has no connection anywhere); every
node runs one ``XREAD BLOCK`` loop from the last id it saw and hands each entry to its own Rust hub. So a publish
costs one Redis message per node, never one per recipient, and every node sees the entries in the same order.

A Redis stream id ``<ms>-<n>`` becomes the u64 seq of the Rust queues as ``ms << 20 | n``: ids stay ordered, and a
seq fits in 61 bits until the year 38000. The bound: at most 2**20 entries within one millisecond (Redis does far
fewer). The cursor is ``<epoch>-<seq>``, the epoch a random token kept in Redis (``sse:epoch``), so cursors are
valid on every node and across node restarts. ``sse:floor`` is the seq the log starts from: when Redis comes back
without its data, the first node to notice writes a new floor, and every cursor below it is ``expired``.

:class:`RedisBroker` owns the log and what hangs on it: publish, the reader loop, resume, acks and their
redelivery, the periodic work, and Redis being up or down. Two collaborators hold the rest, each given what it needs
of the broker (its command client, its fail-fast call, its streams, its node id, its settings):
:class:`~sse_fast.broker.redis.presence.Presence` (who is connected where in the cluster: presence, the per-client
limit across nodes, the node heartbeat, the connection rows) and :class:`~sse_fast.broker.redis.pubsub.PubSub`
(ephemeral messages and controls between nodes, over pub/sub).

Every structure is bounded: the log by count, bytes and age (one trim script, which records the newest id it
removed in ``sse:log:trimmed``: a resume whose cursor is below that mark is ``expired``), mailboxes by the memory
broker's bounds (messages and bytes per client, clients, bytes in all: ``scripts._MAILBOX``) and ``EXPIRE``,
presence, dedupe, ack keys and connection rows by ``EXPIRE``, the ack deadline set by a cap on its size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from sse_fast._core import Frame, parse_cursor, route_admits, seq_stream_id, stream_id_seq
from sse_fast.broker import rules as rules
from sse_fast.broker.base import Broker
from sse_fast.broker.redis import keys as keys
from sse_fast.broker.redis import scripts as scripts
from sse_fast.broker.redis.connection import async_client, refuse_cluster, sync_client
from sse_fast.broker.redis.host import text as _text
from sse_fast.broker.redis.presence import CONNECTIONS_REFRESH, NODE_TTL, PRESENCE_TTL, Presence
from sse_fast.broker.redis.pubsub import PubSub
from sse_fast.broker.rules import Accepted, Mail, Opening, ack_notice
from sse_fast.broker.tail import RECENT_BYTES, recent_messages
from sse_fast.errors import BrokerUnavailable, HttpError
from sse_fast.models import ConnectionInfo, Envelope, RecentMessage, encode_delivered
from sse_fast.settings import Settings
from sse_fast.streams import Streams, parse_public_id

__all__ = ["RedisBroker", "cursor_seq", "stream_id"]

log = logging.getLogger("sse_fast.redis")

_T = TypeVar("_T")
_json = msgspec.json.Encoder()

#: How long a publish waits for this node's reader to route its entry (to count ``delivered``).
DELIVERY_WAIT = 1.0
#: Seconds a client waits before retrying a publish refused while Redis is unreachable.
RETRY_AFTER = 2
#: Connections of a worker's command client. More concurrent calls wait for one (redis-py's plain pool would fail
#: them with ``Too many connections`` past its default of 100, which read as "Redis is down").
POOL_SIZE = 64
#: Seconds a call waits for a free pooled connection before it counts as Redis being unreachable.
POOL_WAIT = 10.0
#: Stream openings registered in Redis by one pipeline at most (concurrent openings share a round trip).
CONNECT_BATCH = 512
#: Seconds a live topic change waits for the node that holds the stream.
TOPICS_WAIT = 5.0
_SEQ_BITS = 20
_INIT_KEYS = (keys.EPOCH, keys.FLOOR, keys.PRIMARY, keys.FAILOVER)


def cursor_seq(entry_id: bytes | str) -> int:
    """The u64 seq of a Redis stream id ``<ms>-<n>`` (``ms << 20 | n``; the rule is the core's)."""
    seq = stream_id_seq(entry_id)
    if seq is None:
        raise ValueError(f"not a Redis stream id: {entry_id!r}")
    return seq


#: The Redis stream id of a seq (the inverse of :func:`cursor_seq`).
stream_id = seq_stream_id


def _dedupe_key(envelope: Envelope) -> str:
    return keys.dedupe(envelope.source or "", envelope.id or "")


def _sees(fields: dict[bytes, bytes], client_id: str, topics: tuple[str, ...]) -> bool:
    """Whether a subscriber may see a log entry: the core's routing rule, the one the hub applies live."""
    return route_admits(
        client_id, topics, target=_field(fields, b"t"), topic=_field(fields, b"o"), exclude=_field(fields, b"x")
    )


def _field(fields: dict[bytes, bytes], name: bytes) -> str | None:
    value = fields.get(name)
    return None if value is None else value.decode()


class RedisBroker(Broker):
    """A broker whose log, mailboxes, acks, dedupe and presence live in Redis, shared by every worker and node."""

    def __init__(self, settings: Settings, *, node_id: str | None = None) -> None:
        super().__init__(settings)
        self.url = settings.broker
        self.node_id = node_id or secrets.token_hex(3)
        self.epoch, self._floor, self._failover, self._last_id = self._bootstrap()
        self._last_seq = max(cursor_seq(self._last_id), self._floor)
        options: dict[str, Any] = {
            "socket_connect_timeout": 2.0,
            # Commands fail fast instead of hanging; the reader's XREAD BLOCK stays below its own timeout.
            "socket_timeout": 3.0,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 5,
        }
        # Bounded, and callers wait for a free connection: a burst of calls neither opens a connection each nor
        # fails with ``Too many connections`` (which would read as Redis being down and refuse every stream).
        self._redis: aioredis.Redis = async_client(self.url, pool_size=POOL_SIZE, pool_wait=POOL_WAIT, **options)
        self._reader: aioredis.Redis = async_client(self.url, **options)
        self._pubsub_client: aioredis.Redis = async_client(self.url, **{**options, "socket_timeout": None})
        # The collaborators read this broker's node id and streams when they use them: attach() sets both later.
        self._presence = Presence(self)
        self._pubsub = PubSub(self, self._pubsub_client, down=self._down)
        self._scripts = {
            name: self._redis.register_script(src)
            for name, src in (
                ("init", scripts.INIT),
                ("publish", scripts.PUBLISH),
                ("connect", scripts.CONNECT),
                ("ack", scripts.ACK),
                ("due", scripts.DUE),
                ("mark", scripts.MARK_DELIVERED),
                ("trim", scripts.TRIM_LOG),
                ("reissue", scripts.REISSUE),
            )
        }
        self._up = True
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._tick_task: asyncio.Task[None] | None = None
        # This node's publishes whose entry the reader has routed: entry id -> connections written to.
        self._routed: OrderedDict[bytes, int] = OrderedDict()
        self._waiters: dict[bytes, asyncio.Future[int]] = {}
        # Stream openings waiting for their Redis round trip: (connect keys, args, connection row, answer).
        self._connects: list[tuple[list[Any], list[Any], tuple[str, bytes] | None, asyncio.Future[Any]]] = []
        self._connect_task: asyncio.Task[None] | None = None
        self._marks: list[str] = []
        self._last_refresh = 0.0
        self._last_rows = 0.0
        self.mailbox_dropped = 0
        self.resets = 0
        self.unreplicated = 0
        self.failovers = 0
        self.reconnects = 0
        self.lagged = 0

    # -- lifecycle -------------------------------------------------------------------------------------------

    def _bootstrap(self) -> tuple[str, int, int, bytes]:
        """The epoch, the floor, the last failover's floor and the log's last id, read once at construction (blocking,
        retried for 10 s).

        The epoch must be known before the first stream: it is the prefix of every ``id:`` line the hub writes.
        """
        deadline = time.monotonic() + 10
        while True:
            try:
                with sync_client(self.url, socket_timeout=3, socket_connect_timeout=2) as client:
                    refuse_cluster(client)
                    epoch, floor, failover = client.eval(scripts.INIT, 4, *_INIT_KEYS, secrets.token_hex(4))
                    try:
                        last = client.xinfo_stream(keys.LOG)["last-generated-id"]
                    except ResponseError:  # no log yet
                        last = b"0-0"
                    last = last if isinstance(last, bytes) else last.encode()
                    return _text(epoch), int(floor) << _SEQ_BITS, int(failover or 0) << _SEQ_BITS, last
            except redis.ConnectionError as err:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cannot reach Redis at {self.url}: {err}") from err
                time.sleep(0.5)  # the worker cannot serve without its epoch: wait for Redis a little

    def attach(self, streams: Streams) -> None:
        """Bind to this worker's streams; presence follows every connection that closes."""
        super().attach(streams)
        self.node_id = streams.node_id
        streams.add_remove_hook(self._presence.removed)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the reader and the pub/sub listener on ``loop`` (which may not be running yet)."""
        if self._tasks:
            return
        self._tasks = [loop.create_task(self._read_loop()), loop.create_task(self._pubsub.listen())]

    def _ensure_started(self) -> None:
        if not self._tasks:
            self.start(asyncio.get_running_loop())

    def ready(self) -> bool:
        """False while Redis is unreachable (``/readyz`` answers 503)."""
        return self._up and not self._closing

    async def close(self) -> None:
        """Stop the loops, withdraw this node's presence (best effort) and close the Redis connections."""
        if self._up:
            await self.run_close_hooks()
        self._closing = True
        self._pubsub.stop()
        for task in [*self._tasks, *(t for t in (self._tick_task, self._connect_task) if t is not None)]:
            task.cancel()
        pending, self._connects = self._connects, []
        for *_, answer in pending:
            if not answer.done():
                answer.set_exception(RuntimeError("the broker is closing"))
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        await self._presence.withdraw()
        for client in (self._redis, self._reader, self._pubsub_client):
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    # -- Redis calls that fail fast ----------------------------------------------------------------------------

    async def _call(self, awaitable: Awaitable[_T]) -> _T:
        """Run one Redis call; an unreachable Redis is a 503 with ``Retry-After``, never a hang."""
        try:
            return await awaitable
        except (RedisError, OSError) as err:
            if isinstance(err, ResponseError):
                raise
            self._down(err)
            raise BrokerUnavailable(retry_after=RETRY_AFTER) from None

    async def call(self, awaitable: Awaitable[_T]) -> _T:
        """One Redis call for a collaborator of this broker (the task registry): 503 when Redis is unreachable."""
        return await self._call(awaitable)

    @property
    def redis(self) -> aioredis.Redis:
        """The client for commands (not the reader's, not pub/sub's)."""
        return self._redis

    def _down(self, err: BaseException) -> None:
        if self._up:
            log.warning("Redis unreachable (%s); publishes answer 503 until it is back", err)
        self._up = False

    def _refuse_if_down(self) -> None:
        if not self._up:
            raise BrokerUnavailable(retry_after=RETRY_AFTER)

    # -- publishing ------------------------------------------------------------------------------------------

    async def publish(self, envelope: Envelope, *, exclude: str | None = None, chosen_id: bool = False) -> Accepted:
        self._ensure_started()
        self._refuse_if_down()
        data = self.encode(envelope)
        dedupe = rules.dedupes(chosen_id=chosen_id)
        if envelope.ephemeral:
            return await self._publish_ephemeral(envelope, data, exclude, dedupe=dedupe)
        waits = self.settings.redis_wait_replicas > 0
        entry_id, queued, replicated = await self._append(
            envelope, data, exclude=exclude, dedupe=dedupe, track=True, wait=waits
        )
        if not entry_id:
            self.duplicates += 1
            return rules.duplicate(envelope)
        return Accepted(envelope.id or "", await self._delivered(entry_id), queued, replicated=replicated)

    async def _append(
        self,
        envelope: Envelope,
        data: bytes,
        *,
        exclude: str | None,
        dedupe: bool,
        track: bool,
        mailbox: bool = True,
        wait: bool = False,
    ) -> tuple[bytes, bool, bool | None]:
        """XADD one envelope (with dedupe, mailbox and ack tracking); ``b""`` as the id when it is a duplicate.

        With ``wait``, the script and a ``WAIT`` for ``SSE_FAST_REDIS_WAIT_REPLICAS`` go in one pipeline, on one
        connection (``WAIT`` waits for that connection's writes): the third value says whether the replicas
        confirmed the write in time (None without ``wait``).
        """
        message_id = envelope.id or ""
        target = envelope.target
        fields: list[Any] = [b"d", data, b"e", envelope.type, b"p", envelope.priority, b"n", self.node_id]
        if target is not None:
            fields += [b"t", target]
        elif envelope.topic is not None:
            fields += [b"o", envelope.topic]
        elif exclude is not None:
            fields += [b"x", exclude]
        if envelope.require_ack:
            fields += [b"a", message_id]
        s = self.settings
        names = [
            keys.LOG,
            _dedupe_key(envelope),
            keys.presence(target or ""),
            keys.mailbox(target or ""),
            keys.ack(message_id),
            keys.ACK_DUE,
            keys.TRIMMED,
            keys.LOG_BYTES,
            keys.MAILBOX_INDEX,
            keys.MAILBOX_SIZES,
            keys.MAILBOX_BYTES,
        ]
        args: list[Any] = [
            s.replay_size,
            int(s.dedupe_window) if dedupe and s.dedupe_window >= 1 else 0,
            "1" if target is not None and mailbox else "0",
            keys.NODE_PREFIX,
            s.mailbox_size,
            int(s.mailbox_ttl) or 1,
            "1" if envelope.require_ack and track else "0",
            int((time.time() + s.ack_timeout) * 1000),
            int(s.ack_timeout * (s.ack_retries + 2) + s.ack_status_ttl),
            s.max_pending_acks,
            data,
            envelope.type,
            envelope.priority,
            exclude or "",
            s.replay_bytes,
            keys.MAILBOX_PREFIX,
            s.queue_bytes,  # what an opening re-issues into one connection's queue (rules.mailbox_overflow)
            s.mailbox_clients,
            s.replay_bytes,  # the bytes of all mailboxes, as the memory broker bounds them
            *fields,
        ]
        replicated: bool | None = None
        if wait:
            pipe = self._redis.pipeline(transaction=False)
            await self._scripts["publish"](keys=names, args=args, client=pipe)
            pipe.wait(s.redis_wait_replicas, max(1, int(s.redis_wait_timeout * 1000)))
            (entry_id, queued, dropped), confirmed = await self._call(pipe.execute())
            replicated = int(confirmed) >= s.redis_wait_replicas
            self.unreplicated += not replicated and entry_id not in (b"", b"in_use")
        else:
            entry_id, queued, dropped = await self._call(self._scripts["publish"](keys=names, args=args))
        if entry_id == b"in_use":
            raise rules.refuse_id_in_use()
        self.published += 1
        self.mailbox_dropped += int(dropped)
        return (entry_id if isinstance(entry_id, bytes) else str(entry_id).encode()), bool(queued), replicated

    async def _delivered(self, entry_id: bytes) -> int:
        """Connections on this node that the entry reached, once this node's reader has routed it."""
        if entry_id in self._routed:
            return self._routed.pop(entry_id)
        waiter = self._waiters[entry_id] = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(waiter, DELIVERY_WAIT)
        except TimeoutError:
            return 0  # accepted (it is in the log): the reader is slow or Redis just went away
        finally:
            self._waiters.pop(entry_id, None)
            self._routed.pop(entry_id, None)

    async def _publish_ephemeral(
        self, envelope: Envelope, data: bytes, exclude: str | None, *, dedupe: bool
    ) -> Accepted:
        if dedupe and self.settings.dedupe_window >= 1:
            key = _dedupe_key(envelope)
            if not await self._call(self._redis.set(key, b"1", nx=True, ex=int(self.settings.dedupe_window))):
                self.duplicates += 1
                return rules.duplicate(envelope)
        route = await self._pubsub.publish_ephemeral(envelope, data, exclude)
        self.published += 1
        return Accepted(envelope.id or "", self._pubsub.route_ephemeral(route), False)

    # -- the reader: the log is the fan-out --------------------------------------------------------------------

    async def _read_loop(self) -> None:
        backoff = 0.05
        synced = False
        while not self._closing:
            try:
                if not synced or not self._up:
                    await self._reconnect()
                    synced = True
                reply: Any = await self._reader.xread({keys.LOG: self._last_id}, count=1000, block=1000)
                backoff = 0.05
                for _, entries in reply or []:
                    for entry_id, fields in entries:
                        self._route(entry_id, fields)
                self._flush_marks()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as err:
                self._down(err)
                await asyncio.sleep(backoff)
                # Capped low: the reader's reconnect is what ends the 503s, and after a Sentinel failover the new
                # primary should be found within a fraction of a second of its promotion.
                backoff = min(backoff * 2, 0.25)
            except Exception:  # a bug in routing one entry must not stop the node's fan-out
                log.exception("the Redis reader failed; continuing")
                await asyncio.sleep(backoff)

    async def _reconnect(self) -> None:
        """Redis answers again: check the epoch and the floor; a new floor means Redis lost its data, or a replica
        took over (a failover: :data:`scripts.INIT` raised the floor and says so)."""
        epoch, floor, failover = await self._redis.eval(scripts.INIT, 4, *_INIT_KEYS, self.epoch)
        self.reconnects += not self._up
        if _text(epoch) != self.epoch:
            log.error("Redis holds epoch %s, this worker %s: restart the worker", _text(epoch), self.epoch)
        new_floor = int(floor) << _SEQ_BITS
        self._failover = int(failover or 0) << _SEQ_BITS
        if new_floor != self._floor:
            self._reset(new_floor, "failover" if new_floor == self._failover else "broker_reset")
        await self._heartbeat()
        if not self._up:
            log.warning("Redis reachable again; resuming from log id %s", _text(self._last_id))
        self._up = True

    def _reset(self, floor: int, reason: str) -> None:
        """Redis came back without its data, or a replica that may lack the last writes took over (``reason``
        ``failover``): this node's streams may have missed entries that were appended before. Close them, so that
        each client resumes from its cursor and is told ``expired`` or ``failover`` (it may have lost messages)
        instead of silently missing them."""
        self.resets += 1
        self.failovers += reason == "failover"
        self._floor = floor
        self._last_seq = max(self._last_seq, floor)
        assert self.streams is not None
        log.error("Redis: new log floor (%s); closing %d stream(s) so that they resume", reason, len(self.streams))
        for conn in self.streams.connections():
            self.streams.close(conn.id, reason)

    def _route(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        assert self.streams is not None
        seq = cursor_seq(entry_id)
        self._last_id, self._last_seq = entry_id, max(seq, self._last_seq)
        frame = Frame(fields[b"d"], event=fields[b"e"].decode(), priority=int(fields[b"p"]), seq=seq)
        delivery = self.streams.deliver(
            frame, target=_field(fields, b"t"), topic=_field(fields, b"o"), exclude=_field(fields, b"x")
        )
        ack = fields.get(b"a")
        if ack is not None and delivery.delivered:
            self._marks.append(ack.decode())
        if fields.get(b"n", b"").decode() == self.node_id:
            waiter = self._waiters.get(entry_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(delivery.delivered)
            elif waiter is None:
                self._routed[entry_id] = delivery.delivered
                while len(self._routed) > 10_000:
                    self._routed.popitem(last=False)

    def _flush_marks(self) -> None:
        if not self._marks:
            return
        marks, self._marks = self._marks, []

        async def flush() -> None:
            with contextlib.suppress(RedisError, OSError):
                for message_id in marks:
                    await self._scripts["mark"](keys=[keys.ack(message_id)])

        asyncio.get_running_loop().create_task(flush())

    # -- between nodes: liveness and controls (for the task registry) ------------------------------------------

    async def node_alive(self, node: str) -> bool:
        """Whether ``node``'s heartbeat key exists (a dead node's expires within 15 s)."""
        return await self._presence.node_alive(node)

    def on_control(self, op: str, handler: Callable[[dict[str, Any]], None]) -> None:
        """Call ``handler(body)`` (on the loop; it must not block) for ``sse:control`` messages of ``op`` that name
        this node (``body["node"]``)."""
        self._pubsub.on_control(op, handler)

    async def send_control(self, body: dict[str, Any]) -> None:
        """Publish a control message; the node named ``body["node"]`` acts on it."""
        await self._pubsub.send_control(body)

    # -- live topic changes: the stream may be on another node --------------------------------------------------

    def _remote(self, connection_id: str) -> tuple[str, int] | None:
        """``(node, conn)`` of a public connection id naming another node (``<node>.<n>``), else None."""
        parsed = parse_public_id(connection_id)
        return None if parsed is None or parsed[0] == self.node_id else parsed

    async def stream_owner(self, connection_id: str) -> str | None:
        """This node's stream's owner, else another live node's as its row in Redis says (a stream's owner never
        changes, so the row cannot be stale about it)."""
        owner = await super().stream_owner(connection_id)
        remote = self._remote(connection_id) if owner is None else None
        if remote is None:
            return owner
        row = await self._presence.row(*remote)
        return None if row is None else row.client_id

    async def change_stream_topics(
        self, connection_id: str, *, add: tuple[str, ...], remove: frozenset[str]
    ) -> tuple[str, ...] | None:
        """Change this node's stream and its row at once, or send ``{add, remove}`` to the node that holds it (over
        ``sse:control``), which applies them by this same method and answers the new set or the refusal: the change
        is computed from the stream's own patterns, never from a row that may be stale. A node that does not answer
        within :data:`TOPICS_WAIT` seconds is 504 ``node_timeout``."""
        conn = self.local_stream(connection_id)
        if conn is not None:
            before = conn.topics
            topics = await super().change_stream_topics(connection_id, add=add, remove=remove)
            if topics is not None and topics is not before:  # unchanged, it is the stream's own tuple
                await self._presence.write_row(conn.id)
            return topics
        remote = self._remote(connection_id)
        if remote is None or not await self._presence.node_alive(remote[0]):
            return None
        try:
            return await self._pubsub.retopic(*remote, add=add, remove=remove, wait=TOPICS_WAIT)
        except TimeoutError:
            message = f"the node that holds stream {connection_id} did not answer within {TOPICS_WAIT:.0f}s"
            raise HttpError(504, "node_timeout", message) from None

    # -- opening a stream ------------------------------------------------------------------------------------

    async def open_stream(
        self, client_id: str, topics: tuple[str, ...], cursor: str | None, *, conn_id: int | None = None
    ) -> Opening:
        """Register the stream's presence, take its mailbox, and replay the log after ``cursor``.

        The seam is exact without waiting: the stream joined the hub before this call, when this node's reader had
        routed every entry up to ``head``; the reader gives it every entry after ``head`` live, and the replay
        covers ``(cursor, head]``. A cursor ahead of ``head`` (from a node whose reader was further) becomes the
        queue's floor at once, so that the live entries up to it are refused as duplicates.
        """
        self._ensure_started()
        head = self._last_seq
        since = self._parse(cursor)
        floor = max(head, since or 0)
        if conn_id is not None:
            assert self.streams is not None
            self.streams.hub.set_watermark(conn_id, floor)
            self._presence.add(conn_id, client_id)
        member = self._presence.member(conn_id if conn_id is not None else 0)
        names = [
            keys.presence(client_id),
            keys.mailbox(client_id),
            keys.EPOCH,
            keys.FLOOR,
            keys.MAILBOX_INDEX,
            keys.MAILBOX_SIZES,
            keys.MAILBOX_BYTES,
        ]
        args: list[Any] = [member, int(time.time() * 1000), keys.NODE_PREFIX, PRESENCE_TTL, client_id]
        conn = self.streams.get(conn_id) if self.streams is not None and conn_id is not None else None
        row = (str(conn.id), _json.encode(self.streams.info(conn))) if conn is not None and self.streams else None
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._connects.append((names, args, row, answer))
        if self._connect_task is None or self._connect_task.done():
            self._connect_task = asyncio.get_running_loop().create_task(self._register_connects())
        reply, info = await answer
        epoch, log_floor, members, mail = reply
        gap = self._gap(cursor, since, _text(epoch), int(log_floor) << _SEQ_BITS, info)
        self._presence.enforce_limit(client_id, [_text(m) for m in members])
        frames: list[Frame] = []
        if cursor is not None and gap is None and since is not None and since < head:
            frames, gap = await self._replay(since, head, client_id, topics)
        opened = rules.opening(
            epoch=self.epoch, cursor=cursor, since=since, head=head, gap=gap, replay=frames, mailbox=self._mailbox(mail)
        )
        if conn_id is not None and self.streams is not None and opened.mailbox:
            # Before the re-issued entries can reach the reader: a cursor ahead of ``head`` that did not resume must
            # not leave its floor in place, or they would be refused as duplicates.
            self.streams.hub.set_watermark(conn_id, opened.watermark)
        await self._reissue(client_id, opened.mailbox)
        return opened

    async def _reissue(self, client_id: str, mailbox: list[Mail]) -> None:
        """Append the opening's mailbox entries to the log again, after the head (one script): this node's reader
        routes them live to the client's connections, the opening one among them, each with its own cursor (see
        :mod:`~sse_fast.broker.rules`, resume). The connect script took the mailbox: if Redis fails in between, the
        opening fails (the stream closes) and those entries are lost, as a message published then would be."""
        if not mailbox:
            return
        s = self.settings
        args: list[Any] = [s.replay_size, s.replay_bytes, client_id]
        for mail in mailbox:
            args += [mail.data, mail.event, mail.priority]
        await self._call(self._scripts["reissue"](keys=[keys.LOG, keys.TRIMMED, keys.LOG_BYTES], args=args))

    async def _register_connects(self) -> None:
        """Register the waiting stream openings in Redis, many per pipeline (one round trip for a burst of them).

        Each opening gets its connect script's reply and the log's ``XINFO STREAM``, read after its connect (one
        read per pipeline serves them all: the log info only needs to be as of after the connect).
        """
        while self._connects:
            batch, self._connects = self._connects[:CONNECT_BATCH], self._connects[CONNECT_BATCH:]
            batch = [item for item in batch if not item[3].done()]  # an opening whose client left meanwhile
            if not batch:
                continue
            try:
                pipe = self._redis.pipeline(transaction=False)
                rows: dict[str, bytes] = {}
                for names, args, row, _ in batch:
                    await self._scripts["connect"](keys=names, args=args, client=pipe)
                    if row is not None:
                        rows[row[0]] = row[1]
                pipe.xinfo_stream(keys.LOG)
                if rows:
                    pipe.hset(keys.rows(self.node_id), mapping=rows)  # type: ignore[arg-type]
                    pipe.expire(keys.rows(self.node_id), NODE_TTL)
                replies: list[Any] = await self._call(pipe.execute(raise_on_error=False))
            except BaseException as err:  # the openings fail (503, then closed); a cancel (close()) still ends them
                failure = err if isinstance(err, Exception) else RuntimeError("the broker is closing")
                for *_, answer in batch:
                    if not answer.done():
                        answer.set_exception(failure)
                if not isinstance(err, Exception):
                    raise
                continue
            info = replies[len(batch)]
            for (*_, answer), reply in zip(batch, replies, strict=False):
                if answer.done():
                    continue
                if isinstance(reply, BaseException):
                    answer.set_exception(reply)
                else:
                    answer.set_result((reply, info))

    def _parse(self, cursor: str | None) -> int | None:
        """The seq of a cursor of this epoch (the core's one cursor rule), unless it lies in the future."""
        value = None if cursor is None else parse_cursor(cursor, self.epoch)
        if value is None or value >> _SEQ_BITS > (time.time() + 60) * 1000:
            return None
        return value

    def _gap(self, cursor: str | None, since: int | None, epoch: str, floor: int, info: Any) -> str | None:
        """Why ``cursor`` cannot be resumed from, as far as the epoch and the floor tell: ``unknown_cursor`` or
        ``expired`` (None: it may be; whether the log still holds all after it is decided by :meth:`_replay`)."""
        if cursor is None:
            return None
        if epoch != self.epoch:  # Redis lost its data since this node last looked
            self._schedule_reset_check()
            return "expired" if since is not None else "unknown_cursor"
        if since is None:
            return "unknown_cursor"
        if since < floor:
            return "failover" if floor == self._failover else "expired"
        if isinstance(info, BaseException):  # no log yet: nothing was ever issued after the floor
            return None if since == floor else "unknown_cursor"
        last = cursor_seq(info.get("last-generated-id", b"0-0"))
        return "unknown_cursor" if since > max(last, floor) else None

    def _schedule_reset_check(self) -> None:
        if self._up:
            self._down(RuntimeError("the epoch changed in Redis"))

    async def _replay(
        self, since: int, head: int, client_id: str, topics: tuple[str, ...]
    ) -> tuple[list[Frame], str | None]:
        """The entries in ``(since, head]`` this subscriber may see, or ``expired`` when the log no longer holds all
        of them: the read and the coverage mark are taken in one transaction, so no trim can fall between them."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.xrange(keys.LOG, f"({stream_id(since)}", stream_id(head))
        pipe.get(keys.TRIMMED)
        entries, mark = await self._call(pipe.execute())
        if mark is not None and cursor_seq(mark) > since:
            return [], "expired"
        frames = [
            Frame(f[b"d"], event=f[b"e"].decode(), priority=int(f[b"p"]), seq=cursor_seq(entry_id))
            for entry_id, f in entries
            if _sees(f, client_id, topics)
        ]
        return frames, None

    def _mailbox(self, mail: list[bytes]) -> list[Mail]:
        """The mailbox entries (newest first in Redis) still within the mailbox TTL, oldest first."""
        limit = (time.time() - self.settings.mailbox_ttl) * 1000
        entries = []
        for raw in reversed(mail):
            entry_id, priority, event, data = raw.split(b"\n", 3)
            seq = cursor_seq(entry_id)
            if seq >> _SEQ_BITS >= limit:
                entries.append(Mail(seq, event.decode(), int(priority), data))
        return entries

    # -- acks ------------------------------------------------------------------------------------------------

    async def ack(
        self, client_id: str, message_ids: list[str], *, admin: bool, receives: Callable[[str], bool] | None = None
    ) -> int:
        """One script call for the whole batch (:data:`scripts.ACK`, the rules ``may_ack`` and ``ack_step``); a
        second one only for the topic messages whose topic the acker's grants (``receives``) turn out to cover."""
        self._refuse_if_down()
        acker = rules.Acker(client_id, admin, receives)
        head = [client_id, "1" if admin else "0", "1" if receives is None else "0", rules.MAX_ACKERS]
        replies = await self._ack_batch(message_ids, head, [""] * len(message_ids))
        asked = {i: _text(value) for i, (state, value) in enumerate(replies) if state == -1}
        granted = {i: topic for i, topic in asked.items() if acker.receives_topic(topic)}
        if granted:
            again = await self._ack_batch([message_ids[i] for i in granted], head, list(granted.values()))
            for i, reply in zip(granted, again, strict=True):
                replies[i] = reply
        known = 0
        for state, value in replies:
            if state <= 0:
                continue
            known += 1
            if state == 1:
                continue
            self.acked += state == 3
            await self._notify_source(msgspec.json.decode(value, type=Envelope), client_id)
        return known

    async def _ack_batch(self, message_ids: list[str], head: list[Any], topics: list[str]) -> list[tuple[int, Any]]:
        if not message_ids:
            return []
        names = [keys.ack(message_id) for message_id in message_ids]
        replies = await self._call(self._scripts["ack"](keys=names, args=[*head, *topics]))
        return [(int(state), value) for state, value in replies]

    async def _notify_source(self, envelope: Envelope, acked_by: str) -> None:
        notice = ack_notice(envelope, acked_by)
        if notice is not None:
            await self._append(notice, encode_delivered(notice), exclude=None, dedupe=False, track=False)

    async def message_status(self, message_id: str) -> tuple[str, str, list[str]] | None:
        values = await self._call(self._redis.hmget(keys.ack(message_id), ["env", "status", "by"]))
        env, status, by = values
        if env is None:
            return None
        envelope = msgspec.json.decode(env, type=Envelope)
        return envelope.source or "", _text(status), [c for c in _text(by or b"").split(",") if c]

    async def recent(self, limit: int) -> list[RecentMessage]:
        """The log stream's newest entries (``XREVRANGE``), read in pages of at most 50 until ``limit`` entries or
        :data:`~sse_fast.broker.tail.RECENT_BYTES` of data: a tail of large messages is not read whole."""
        entries: list[tuple[str, bytes]] = []
        size, last = 0, "+"
        while len(entries) < limit and size <= RECENT_BYTES:
            want = min(50, limit - len(entries))
            reply: Any = await self._call(self._redis.xrevrange(keys.LOG, last, "-", count=want))
            page: list[Any] = reply or []
            for entry_id, fields in page:
                entries.append((f"{self.epoch}-{cursor_seq(entry_id)}", fields[b"d"]))
                size += len(fields[b"d"])
            if len(page) < want:
                break
            last = f"({_text(page[-1][0])}"
        return recent_messages(entries, limit)

    # -- periodic work ---------------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Once a second: node heartbeat, cluster counts, ack redelivery, log TTL (on a task; never blocks)."""
        if self._closing or (self._tick_task is not None and not self._tick_task.done()):
            return
        self._tick_task = asyncio.get_running_loop().create_task(self._tick(now))

    async def _tick(self, now: float) -> None:
        if not self._up:
            return
        try:
            self._presence.flush_gone()
            await self._heartbeat()
            if now - self._last_rows >= CONNECTIONS_REFRESH:
                self._last_rows = now
                await self._presence.write_rows()
            await self._redeliver(now)
            await self._trim_log(now)
            if now - self._last_refresh > 600:
                self._last_refresh = now
                await self._presence.refresh()
        except (RedisError, OSError) as err:
            self._down(err)
        except Exception:
            log.exception("Redis tick failed")

    async def _trim_log(self, now: float) -> None:
        """Trim the log by age (its TTL; count and bytes are trimmed on every publish), then check the mark.

        A node whose reader is behind the coverage mark can never read the entries up to it: they left the log
        unread (a reader that lagged more than the log holds). Its streams are closed (``lagged``), so that each
        client resumes from its cursor and is told ``expired`` instead of silently missing them.
        """
        s = self.settings
        names, min_ms = [keys.LOG, keys.TRIMMED, keys.LOG_BYTES], int((now - s.replay_ttl) * 1000)
        mark = await self._scripts["trim"](keys=names, args=[s.replay_size, s.replay_bytes, min_ms])
        if mark is not None and cursor_seq(mark) > self._last_seq:
            self._last_seq = cursor_seq(mark)
            self.lagged += 1
            assert self.streams is not None
            log.error("this node's reader fell behind the trimmed log; closing %d stream(s)", len(self.streams))
            for conn in self.streams.connections():
                self.streams.close(conn.id, "lagged")

    async def _heartbeat(self) -> None:
        """Keep this node alive in Redis and read the cluster's counts (:meth:`Presence.heartbeat`)."""
        if not await self._presence.heartbeat():  # Redis lost its data, our connections kept (FLUSHALL, failover)
            self._down(RuntimeError("the epoch is gone from Redis"))

    async def _redeliver(self, now: float) -> None:
        s = self.settings
        claimed = await self._scripts["due"](
            keys=[keys.ACK_DUE], args=[int(now * 1000), int(s.ack_timeout * 1000), s.ack_retries, 1000, keys.ACK_PREFIX]
        )
        for _message_id, env, exclude in claimed:
            if not env:
                self.acks_expired += 1
                continue
            envelope = msgspec.json.decode(env, type=Envelope)
            # To the live connections only (rules.redelivery_step): an offline target has it in its mailbox.
            await self._append(envelope, env, exclude=_text(exclude) or None, dedupe=False, track=False, mailbox=False)
            self.redelivered += 1

    # -- introspection ---------------------------------------------------------------------------------------

    async def connections(self) -> list[ConnectionInfo]:
        """Every live node's connections (:meth:`Presence.connections`)."""
        return await self._presence.connections()

    def counters(self) -> dict[str, int]:
        return {
            **self.delivery_counters(),
            "mailbox_dropped": self.mailbox_dropped,
            "cluster_connections": self._presence.cluster_connections,
            "cluster_nodes": self._presence.cluster_nodes,
            "broker_up": int(self._up),
            "broker_reconnects": self.reconnects,
            "broker_resets": self.resets,
            "broker_lagged": self.lagged,
            "broker_failovers": self.failovers,
            "publish_unreplicated": self.unreplicated,
        }
