"""The Redis broker: many workers and many nodes behave as one server (``SSE_FAST_BROKER=redis://...``).

- :mod:`~sse_fast.broker.redis.broker`: :class:`RedisBroker`: publish, the reader loop (the log is the fan-out),
  resume, acks and the periodic work; it composes the two below;
- :mod:`~sse_fast.broker.redis.presence`: who is connected where in the cluster: presence, the per-client limit
  across nodes, the node heartbeat and cluster counts, the connection rows;
- :mod:`~sse_fast.broker.redis.pubsub`: the pub/sub listener, ephemeral messages and controls between nodes;
- :mod:`~sse_fast.broker.redis.host`: what those two need of the broker (a Protocol: they never import it);
- :mod:`~sse_fast.broker.redis.keys`: every key and channel, each family in its own namespace;
- :mod:`~sse_fast.broker.redis.scripts`: the Lua scripts, one atomic step each.
"""

from __future__ import annotations

from sse_fast.broker.redis.broker import RedisBroker

__all__ = ["RedisBroker"]
