"""What the Redis broker's collaborators (presence, pub/sub) need of the broker that owns them, and a text helper.

The collaborators never import :mod:`~sse_fast.broker.redis.broker` (that would close an import cycle): the broker
hands itself to them as a :class:`Host`.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

import redis.asyncio as aioredis

from sse_fast.settings import Settings
from sse_fast.streams import Streams

__all__ = ["Host", "text"]

_T = TypeVar("_T")


def text(value: Any) -> str:
    """A Redis reply (bytes) or a value as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


class Host(Protocol):
    """The broker, as its collaborators see it (:class:`~sse_fast.broker.redis.RedisBroker` is one)."""

    @property
    def node_id(self) -> str:
        """This node's id: the first part of its presence members, the name of its heartbeat and rows, the node
        that controls name, and the author of its own ephemeral messages (routed already)."""

    @property
    def settings(self) -> Settings:
        """The worker's settings."""

    @property
    def streams(self) -> Streams | None:
        """This worker's streams, once attached."""

    @property
    def redis(self) -> aioredis.Redis:
        """The client for commands (never the reader's or the listener's connection)."""

    async def call(self, awaitable: Awaitable[_T]) -> _T:
        """One Redis call that fails fast (503 when Redis is unreachable)."""

    async def change_stream_topics(
        self, connection_id: str, *, add: tuple[str, ...], remove: frozenset[str]
    ) -> tuple[str, ...] | None:
        """Change a live stream's patterns (:meth:`~sse_fast.broker.Broker.change_stream_topics`)."""
