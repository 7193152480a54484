"""The broker: where a published message goes after the routes accept it, and what outlives a connection.

- :mod:`~sse_fast.broker.base`: the :class:`Broker` interface;
- :mod:`~sse_fast.broker.rules`: the rules of delivery, written once, that every broker decides with;
- :mod:`~sse_fast.broker.memory`: the embedded broker (one process, the default);
- :mod:`~sse_fast.broker.redis`: the Redis broker (many workers and nodes as one server).
"""

from __future__ import annotations

from sse_fast.broker.base import Broker
from sse_fast.broker.memory import MemoryBroker
from sse_fast.broker.rules import Accepted, Opening
from sse_fast.settings import Settings

__all__ = ["Accepted", "Broker", "MemoryBroker", "Opening", "create_broker"]


def create_broker(settings: Settings) -> Broker:
    """The broker the settings name: ``memory`` (default) or a Redis URL."""
    if settings.broker == "memory":
        return MemoryBroker(settings)
    from sse_fast.broker.redis import RedisBroker  # redis-py is imported only when it is used

    return RedisBroker(settings)
