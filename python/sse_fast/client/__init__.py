"""The Python client: :class:`Client`, reconnecting, prioritised and acknowledging, on httpx and the Rust decoder.

One module per part, put together by :class:`Client` (``_client``):

- :mod:`~sse_fast.client.connection`, the **connection manager**, holds one ``GET /sse`` stream, moves through the
  states ``disconnected``, ``connecting``, ``connected``, ``reconnecting`` and ``error``, and reconnects with
  exponential backoff and full jitter, sending ``Last-Event-ID`` so that the server replays what the client missed;
- :mod:`~sse_fast.client.outbox`, the **outbound queue**, holds messages in the bounded Rust
  :class:`~sse_fast._core.PriorityQueue` while the client is disconnected or the server answers 429/503, and
  retries them after :data:`RETRY_DELAYS`;
- :mod:`~sse_fast.client.dispatch`, the **dispatcher**, runs handlers, highest priority first, feeds
  :meth:`Client.messages` iterators and acknowledges ``requireAck`` messages once the handlers returned;
- :mod:`~sse_fast.client.tasks` sends commands and follows tasks (:meth:`Client.run_task`);
- :mod:`~sse_fast.client.answers`, what the calls answer (:class:`PublishAnswer`, :class:`CommandAnswer`,
  :class:`PresenceAnswer`...) and :class:`Priority`;
- :mod:`~sse_fast.client.sync`, :class:`SyncClient`: the same client, blocking, run on a thread of its own.

The reader never runs user code: it decodes, deduplicates by message id, resolves task waiters and hands messages
to the dispatcher through a bounded queue, so a slow handler slows the stream down (and the server, past its own
queue, closes it as a slow consumer and the client resumes) instead of growing memory. Every buffer, set and
history here is bounded.

The client imports nothing from the server: only :mod:`sse_fast._core`, :mod:`sse_fast.errors` and
:mod:`sse_fast.models`.
"""

from sse_fast.client._base import Message, Token
from sse_fast.client._client import Client, ClientStats
from sse_fast.client.answers import (
    AckAnswer,
    CommandAnswer,
    PresenceAnswer,
    PresenceClient,
    Priority,
    PublishAnswer,
    TaskRecord,
    TasksAnswer,
)
from sse_fast.client.connection import KEEPALIVE, State, backoff_delay
from sse_fast.client.dispatch import Handler, Subscription
from sse_fast.client.outbox import RETRY_DELAYS, Answer
from sse_fast.client.sync import SyncClient

__all__ = [
    "KEEPALIVE",
    "RETRY_DELAYS",
    "AckAnswer",
    "Answer",
    "Client",
    "ClientStats",
    "CommandAnswer",
    "Handler",
    "Message",
    "PresenceAnswer",
    "PresenceClient",
    "Priority",
    "PublishAnswer",
    "State",
    "Subscription",
    "SyncClient",
    "TaskRecord",
    "TasksAnswer",
    "Token",
    "backoff_delay",
]
