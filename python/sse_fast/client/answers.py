"""What the client's calls answer: typed answers without sentinels, and the priorities as an :class:`~enum.IntEnum`.

The server's answer types (:mod:`sse_fast.models`) leave ``duplicate`` unset (omitted on the wire) unless the answer
is a repeat; the client reads them as these subclasses, in which ``duplicate`` is a plain ``bool`` (false unless the
server said so). Everything else is the model: the fields, their names and their checks.
"""

from __future__ import annotations

from enum import IntEnum

from sse_fast._core import CRITICAL, HIGH, LOW, NORMAL
from sse_fast.models import AckAnswer, PresenceAnswer, PresenceClient, TaskRecord, TasksAnswer
from sse_fast.models import CommandAnswer as _CommandAnswer
from sse_fast.models import PublishAnswer as _PublishAnswer

__all__ = [
    "AckAnswer",
    "CommandAnswer",
    "PresenceAnswer",
    "PresenceClient",
    "Priority",
    "PublishAnswer",
    "TaskRecord",
    "TasksAnswer",
]


class Priority(IntEnum):
    """A message's priority (PROTOCOL.md section 1): higher is delivered and sent first. Any ``int`` 0-3 works too."""

    LOW = LOW
    NORMAL = NORMAL
    HIGH = HIGH
    CRITICAL = CRITICAL


class PublishAnswer(_PublishAnswer):
    """The server's answer to a publish (``send``, ``send_text``, ``send_json``, a command relayed to a ``target``).

    ``message_id`` is the id the message was accepted under; ``delivered`` the connections written to (on the node
    that took it); ``queued`` whether it waits in an offline client's mailbox; ``duplicate`` whether the server had
    already accepted this id from this source (nothing was sent again); ``replicated``, when the server waits for
    Redis replicas (``SSE_FAST_REDIS_WAIT_REPLICAS``), whether they confirmed the write in time (``False``: retry with
    the same ``message_id`` if it matters; the repeat is deduplicated), else ``msgspec.UNSET``.
    """

    duplicate: bool = False


class CommandAnswer(_CommandAnswer):
    """The scheduler's answer to ``execute``, ``cancel``, ``pause`` and ``resume``: the task's id and its status;
    ``duplicate`` when an ``execute`` with this ``command_id`` was already taken."""

    duplicate: bool = False
