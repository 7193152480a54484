"""Presence for the Redis broker: who is connected where in the cluster.

``sse:pres:<client>`` is a sorted set of ``<node>:<conn>`` by connect time; a node is alive while its
``sse:node:<node>`` key (refreshed every tick, 15 s TTL) exists, so the connections of a dead node stop counting
within 15 s. ``sse:conns:<node>`` is a hash of the node's connections (the rows of ``GET /api/connections``):
written when a stream opens, deleted when it closes, rewritten with fresh queue stats every
:data:`CONNECTIONS_REFRESH` seconds, and expiring with the node's heartbeat. This node's writes of its rows (the
refresh, one row's rewrite, the deletion of closed ones) go out one at a time, each taken from the streams as they
are when it goes out: pooled connections would let an older snapshot land after a newer write (a row showing old
topics, or a closed stream's row written back after its deletion).

A stream's member and row are written by the broker's connect pipeline (one round trip with the rest of the
opening, :meth:`~sse_fast.broker.redis.RedisBroker.open_stream`); :class:`Presence` keeps them alive, withdraws
them, enforces the per-client limit across nodes with what the connect script answered, and reads the cluster's
counts and rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import msgspec
from redis.exceptions import RedisError

from sse_fast.broker.redis import keys as keys
from sse_fast.broker.redis.host import Host
from sse_fast.broker.redis.host import text as _text
from sse_fast.models import ConnectionInfo

__all__ = ["CONNECTIONS_REFRESH", "NODE_TTL", "PRESENCE_TTL", "Presence"]

_json = msgspec.json.Encoder()
_row = msgspec.json.Decoder(ConnectionInfo)

#: Seconds a node's heartbeat key (and so its connections' presence and rows) outlives its last tick.
NODE_TTL = 15
#: Seconds a client's presence set lives past its last write (each node renews its clients' every 10 minutes).
PRESENCE_TTL = 24 * 3600
#: Seconds between the rewrites of a node's connection rows (``lastActiveAt`` and queue stats are as of then).
CONNECTIONS_REFRESH = 5


class Presence:
    """This node's connections as the cluster sees them, and the cluster's as this node reads them."""

    def __init__(self, host: Host) -> None:
        self._host = host
        self._members: dict[int, str] = {}  # conn id -> client id, for presence
        self._gone: list[tuple[int, str]] = []
        self._rows_lock = asyncio.Lock()  # this node's row writes, in order (see the module's docstring)
        self.cluster_connections = 0
        self.cluster_nodes = 0

    def member(self, conn_id: int) -> str:
        """The presence member of one of this node's connections: ``<node>:<conn>``."""
        return f"{self._host.node_id}:{conn_id}"

    def add(self, conn_id: int, client_id: str) -> None:
        """A stream of this node opened (its member is registered by the broker's connect pipeline)."""
        self._members[conn_id] = client_id

    def removed(self, conn_id: int, client_id: str) -> None:
        """A connection of this node closed: withdraw its presence soon (batched)."""
        if self._members.pop(conn_id, None) is None:
            return
        self._gone.append((conn_id, client_id))
        if len(self._gone) == 1:
            with contextlib.suppress(RuntimeError):  # no running loop: the next tick flushes it
                asyncio.get_running_loop().call_soon(self.flush_gone)

    def flush_gone(self) -> None:
        """Withdraw the members and rows of the connections closed since the last flush (on a task)."""
        gone, self._gone = self._gone, []
        if not gone:
            return

        async def flush() -> None:
            try:
                pipe = self._host.redis.pipeline(transaction=False)
                for conn_id, client_id in gone:
                    pipe.zrem(keys.presence(client_id), self.member(conn_id))
                pipe.hdel(keys.rows(self._host.node_id), *(str(conn_id) for conn_id, _ in gone))
                async with self._rows_lock:
                    await pipe.execute()
            except (RedisError, OSError):
                self._gone.extend(gone)  # retried on the next tick

        asyncio.get_running_loop().create_task(flush())

    async def withdraw(self) -> None:
        """Withdraw this node from the cluster: its members, heartbeat and rows (best effort: the node is closing)."""
        with contextlib.suppress(RedisError, OSError):
            node_id = self._host.node_id
            pipe = self._host.redis.pipeline(transaction=False)
            for conn_id, client_id in self._members.items():
                pipe.zrem(keys.presence(client_id), self.member(conn_id))
            pipe.delete(keys.node(node_id), keys.rows(node_id))
            pipe.zrem(keys.NODES, node_id)
            await pipe.execute()

    # -- the per-client limit across nodes ---------------------------------------------------------------------

    def enforce_limit(self, client_id: str, members: list[str]) -> None:
        """Past the per-client limit cluster-wide, the oldest connections are closed as ``replaced``."""
        excess = len(members) - self._host.settings.max_connections_per_client
        if excess <= 0:
            return
        streams = self._host.streams
        assert streams is not None
        for member in members[:excess]:
            node, _, conn = member.partition(":")
            if node == self._host.node_id:
                if streams.get(int(conn)) is not None:
                    streams.closed_replaced += 1
                    streams.close(int(conn), "replaced")
            else:
                notice = _json.encode({"op": "close", "node": node, "conn": int(conn), "reason": "replaced"})
                asyncio.get_running_loop().create_task(self._send_control(notice, client_id, member))

    async def _send_control(self, notice: bytes, client_id: str, member: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._host.redis.publish(keys.CONTROL, notice)
            await self._host.redis.zrem(keys.presence(client_id), member)

    # -- the node's heartbeat, its rows, the cluster's counts and rows -----------------------------------------

    async def heartbeat(self) -> bool:
        """Keep this node alive in Redis (its connections count while it is), and read the cluster's counts.

        False when the epoch is gone from Redis: it lost its data without dropping our connections (FLUSHALL,
        failover); the counts are left as they were.
        """
        streams = self._host.streams
        assert streams is not None
        node_id = self._host.node_id
        now = time.time()
        pipe = self._host.redis.pipeline(transaction=False)
        pipe.set(keys.node(node_id), len(streams), ex=NODE_TTL)
        pipe.zadd(keys.NODES, {node_id: now})
        pipe.zremrangebyscore(keys.NODES, "-inf", now - NODE_TTL)
        pipe.expire(keys.NODES, NODE_TTL * 4)
        pipe.zrange(keys.NODES, 0, -1)
        pipe.get(keys.EPOCH)
        pipe.expire(keys.rows(node_id), NODE_TTL)
        replies = await pipe.execute()
        nodes = replies[4]
        if replies[5] is None:
            return False
        counts = await self._host.redis.mget([keys.node(_text(n)) for n in nodes]) if nodes else []
        self.cluster_nodes = sum(1 for c in counts if c is not None)
        self.cluster_connections = sum(int(c) for c in counts if c is not None)
        return True

    async def write_rows(self) -> None:
        """Rewrite this node's connection rows, with their current queue stats (atomically: no empty moment)."""
        streams = self._host.streams
        assert streams is not None
        key = keys.rows(self._host.node_id)
        async with self._rows_lock:
            rows = {str(conn.id): _json.encode(streams.info(conn)) for conn in streams.connections()}
            pipe = self._host.redis.pipeline(transaction=True)
            pipe.delete(key)
            if rows:
                pipe.hset(key, mapping=rows)  # type: ignore[arg-type]
                pipe.expire(key, NODE_TTL)
            await pipe.execute()

    async def write_row(self, conn_id: int) -> None:
        """Rewrite one connection's row now (its topics changed), if it is still open."""
        streams = self._host.streams
        assert streams is not None
        async with self._rows_lock:
            conn = streams.get(conn_id)
            if conn is not None:
                row = _json.encode(streams.info(conn))
                await self._host.call(self._host.redis.hset(keys.rows(self._host.node_id), str(conn_id), row))

    async def row(self, node: str, conn_id: int) -> ConnectionInfo | None:
        """Another node's connection row, while that node is alive (its rows expire with its heartbeat)."""
        raw = await self._host.call(self._host.redis.hget(keys.rows(node), str(conn_id)))
        return None if raw is None else _row.decode(raw)

    async def refresh(self) -> None:
        """Renew the TTL of the presence set of every client with a connection on this node."""
        pipe = self._host.redis.pipeline(transaction=False)
        for client_id in set(self._members.values()):
            pipe.expire(keys.presence(client_id), PRESENCE_TTL)
        await pipe.execute()

    async def node_alive(self, node: str) -> bool:
        """Whether ``node``'s heartbeat key exists (a dead node's expires within 15 s)."""
        return bool(await self._host.call(self._host.redis.exists(keys.node(node))))

    async def connections(self) -> list[ConnectionInfo]:
        """Every live node's connections: this node's as they are now, the others' from their rows in Redis (their
        ``lastActiveAt`` and queue stats as of that node's last refresh, at most CONNECTIONS_REFRESH s old)."""
        host = self._host
        assert host.streams is not None
        nodes = [_text(n) for n in await host.call(host.redis.zrange(keys.NODES, 0, -1))]
        others = [n for n in nodes if n != host.node_id]
        rows = host.streams.rows()
        if others:
            alive = await host.call(host.redis.mget([keys.node(n) for n in others]))
            pipe = host.redis.pipeline(transaction=False)
            live = [n for n, beat in zip(others, alive, strict=True) if beat is not None]
            for node in live:
                pipe.hvals(keys.rows(node))
            for values in await host.call(pipe.execute()):
                rows += [_row.decode(value) for value in values]
        rows.sort(key=lambda r: (r.connected_at, r.connection_id))
        return rows
