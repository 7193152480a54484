"""Clients for ``SSE_FAST_BROKER``: a plain Redis URL, or ``redis+sentinel://`` (the primary Sentinel names).

With Sentinel every client is redis-py's :meth:`~redis.asyncio.sentinel.Sentinel.master_for`: each new connection
asks the sentinels where the primary is, and a connection to a primary that was demoted fails (``READONLY`` becomes
a ``ConnectionError``), so the broker's usual "Redis went away" path (503, then the reader reconnects) follows a
failover without anything of its own. What a failover may have lost is the broker's business
(:mod:`~sse_fast.broker.redis.broker`, the ``failover`` reason).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.sentinel import Sentinel as SyncSentinel

from sse_fast.settings import SENTINEL_SCHEME, SentinelUrl, sentinel_url

__all__ = ["ClusterRefused", "async_client", "refuse_cluster", "sync_client"]

#: Timeouts for asking a sentinel (each one asked in turn until one names the primary).
_SENTINEL_KWARGS = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """A Sentinel pool that is bounded the way the plain one is: callers wait for a free connection."""


def async_client(url: str, *, pool_size: int | None = None, pool_wait: float | None = None, **options: Any) -> Any:
    """An asyncio client for ``url``; with ``pool_size``, its pool is bounded and callers wait up to ``pool_wait``."""
    if not url.startswith(SENTINEL_SCHEME):
        if pool_size is None:
            return aioredis.Redis.from_url(url, **options)
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=pool_size, timeout=pool_wait, **options)
        return aioredis.Redis.from_pool(pool)
    parts = sentinel_url(url)
    sentinel = Sentinel(list(parts.sentinels), sentinel_kwargs=dict(_SENTINEL_KWARGS))  # type: ignore[no-untyped-call]
    if pool_size is not None:
        options = {**options, "connection_pool_class": _BlockingSentinelPool}
        options |= {"max_connections": pool_size, "timeout": pool_wait}
    return sentinel.master_for(parts.service, redis_class=aioredis.Redis, **_auth(parts), **options)


def sync_client(url: str, **options: Any) -> redis.Redis:
    """A blocking client for ``url`` (the broker's bootstrap, before the event loop runs)."""
    if not url.startswith(SENTINEL_SCHEME):
        return redis.Redis.from_url(url, **options)
    parts = sentinel_url(url)
    sentinel = SyncSentinel(list(parts.sentinels), sentinel_kwargs=dict(_SENTINEL_KWARGS))  # type: ignore[no-untyped-call]
    client: redis.Redis = sentinel.master_for(parts.service, **_auth(parts), **options)  # type: ignore[no-untyped-call]
    return client


class ClusterRefused(RuntimeError):
    """The server at ``SSE_FAST_BROKER`` is a Redis Cluster node: sse-fast needs one Redis (with replicas, Sentinel)."""


def refuse_cluster(client: redis.Redis) -> None:
    """Raise :class:`ClusterRefused` when ``client``'s server runs in cluster mode (``INFO cluster``).

    The log is one Redis Stream that every publish appends to and every node reads, and the scripts touch keys of
    many families at once: a cluster would have to hold all of them in one hash slot, on one shard. Refused at
    start, with words, rather than failing later with ``CROSSSLOT`` or ``MOVED`` on the first publish.
    """
    if client.info("cluster").get("cluster_enabled") in (1, "1"):
        raise ClusterRefused(
            "the Redis at SSE_FAST_BROKER is a Redis Cluster node (cluster_enabled:1): sse-fast needs one Redis "
            "primary, optionally with replicas and Sentinel (redis+sentinel://); its log is one stream that cannot "
            "be sharded"
        )


def _auth(parts: SentinelUrl) -> dict[str, Any]:
    return {"db": parts.db, "username": parts.username, "password": parts.password}
