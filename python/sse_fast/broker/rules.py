"""The rules of delivery, written once: every broker decides with these, and stores what they decide.

A broker is storage and transport (:mod:`~sse_fast.broker.memory` in this process, :mod:`~sse_fast.broker.redis`
shared by a cluster); what it must decide is decided here, so that both behave alike:

- **routing**: who sees a frame (target, else topic pattern, else broadcast minus ``exclude``): the Rust core's
  :func:`~sse_fast._core.route_admits`, the same rule the hub and the memory log apply;
- **idempotency**: which publishes are remembered (:func:`dedupes`: only ids their client chose), under which key
  (:func:`dedupe_key`);
- **requireAck**: an id held by another source's open message is refused (:func:`id_in_use`), who may ack
  (:func:`may_ack`, with the acker's topic grants as the server's auth decides them: :class:`Acker`), what an ack
  changes (:func:`ack_step`), when a message is redelivered and when it expires (:func:`redelivery_step`), and the
  notice its source gets (:func:`ack_notice`);
- **resume**: which mailbox entries the opening re-issues (:func:`mailbox_seam`) and what a stream opens with
  (:func:`opening`); cursors themselves are the core's one ``Cursor`` rule;
- **presence**: who receives a topic now (:func:`presence`: the connections whose patterns admit it, by the same
  :func:`~sse_fast._core.route_admits`, grouped by client and bounded);
- **mailboxes**: the oldest entry is dropped first while a client's mailbox is past its message count or byte bound
  (:func:`mailbox_overflow`); the least recently filled mailbox while all of them are past theirs
  (:func:`mailboxes_overflow`).

Where Redis must decide inside a Lua script for atomicity, the script's function has the name of the rule it
repeats (``id_in_use``, ``may_ack``, ``ack_step``, ``redelivery_step``, ``mailbox_overflow``,
``mailboxes_overflow``), and the conformance model test (``tests/test_conformance_model.py``) keeps the two equal.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

from sse_fast._core import Frame, format_cursor, route_admits
from sse_fast.errors import ValidationFailure
from sse_fast.models import (
    ConnectionInfo,
    Envelope,
    PresenceAnswer,
    PresenceClient,
    PresenceScope,
    new_message_id,
)

__all__ = [
    "MAX_ACKERS",
    "OPEN",
    "RESERVED_SOURCES",
    "Accepted",
    "AckStatus",
    "Acker",
    "Mail",
    "Opening",
    "ack_notice",
    "ack_step",
    "dedupe_key",
    "dedupes",
    "duplicate",
    "id_in_use",
    "mailbox_overflow",
    "mailbox_seam",
    "mailboxes_overflow",
    "may_ack",
    "opening",
    "presence",
    "redelivery_step",
    "refuse_id_in_use",
]

#: ackedBy names at most this many clients (a broadcast may be acked by every one); later ackers still count.
MAX_ACKERS: Final = 1000
#: Sources that are not clients: nobody to notify of an ack.
RESERVED_SOURCES: Final = frozenset({"server", "anonymous", "scheduler"})

AckStatus = Literal["pending", "delivered", "acked", "expired"]
#: The statuses of a message still waiting for its ack (and holding its id against other sources).
OPEN: Final = frozenset({"pending", "delivered"})


@dataclass(slots=True)
class Accepted:
    """What a publish did: ``delivered`` connections on this node, ``queued`` in an offline mailbox; ``replicated``
    whether the replicas a Redis broker waits for confirmed it (None: it does not wait)."""

    message_id: str
    delivered: int
    queued: bool
    duplicate: bool = False
    replicated: bool | None = None


@dataclass(frozen=True, slots=True)
class Mail:
    """A mailbox entry: what a re-issue needs (the envelope's bytes, event and priority) and ``seq``, the log
    position of the message it holds (which decides the seam with the replay)."""

    seq: int
    event: str
    priority: int
    data: bytes


@dataclass(slots=True)
class Opening:
    """What a new stream starts with: its first cursor, and the frames to write before going live."""

    cursor: str
    #: The log position every resumable frame up to which this stream has been given (its first low-water mark).
    watermark: int
    resumed: bool
    gap: str | None
    frames: list[Frame]
    #: Mailbox entries the replay does not cover, which the broker re-issues into the log right after ``head``
    #: (:func:`mailbox_seam`): they reach the stream as live frames, each with its own cursor.
    mailbox: list[Mail] = field(default_factory=list)

    @property
    def missed(self) -> int:
        """Frames delivered before live, or re-issued for it: replay plus mailbox."""
        return len(self.frames) + len(self.mailbox)


# -- idempotency -------------------------------------------------------------------------------------------------


def dedupes(*, chosen_id: bool) -> bool:
    """Whether a publish takes a dedupe entry: only when its client chose the id. An id the server assigned is new
    by construction, and remembering it too would push clients' ids out of the window early under load."""
    return chosen_id


def dedupe_key(source: str, message_id: str) -> str:
    """The idempotency key of ``(source, id)``: length-prefixed, so no two pairs share one (``a`` + ``b:X`` and
    ``a:b`` + ``X`` differ), whatever ``:`` the parts contain."""
    return f"{len(source)}:{source}:{message_id}"


def duplicate(envelope: Envelope) -> Accepted:
    """The answer to a repeat of ``(source, id)`` within the dedupe window: accepted once, never delivered again."""
    return Accepted(envelope.id or "", 0, False, duplicate=True)


# -- requireAck --------------------------------------------------------------------------------------------------


def id_in_use(held_source: str | None, held_status: str | None, source: str) -> bool:
    """Whether a requireAck publish must be refused: another source's open requireAck message holds its id. Ids are
    per source; the holder releases its id when its message is finished (acked or expired), so that another source
    is not blocked from it until the message's record is evicted."""
    return held_source is not None and held_status in OPEN and held_source != source


def refuse_id_in_use() -> ValidationFailure:
    """The 409 for :func:`id_in_use` (raised before anything is written)."""
    return ValidationFailure(409, "message_id_in_use", "another source's requireAck message has this id")


@dataclass(frozen=True, slots=True)
class Acker:
    """Who acks, as far as :func:`may_ack` needs to know: its clientId, whether it may ack anything (an admin), and
    whether its topic grants cover a topic (``receives``; the server's auth decides it, None: every topic, as under
    ``auth = none`` where anybody may subscribe to anything)."""

    client_id: str
    admin: bool = False
    receives: Callable[[str], bool] | None = None

    def receives_topic(self, topic: str) -> bool:
        """Whether this acker could receive a message on ``topic``."""
        return self.receives is None or self.receives(topic)


def may_ack(target: str | None, topic: str | None, exclude: str | None, acker: Acker) -> bool:
    """Whether ``acker`` may ack a message routed to ``target``, else ``topic``, else everyone but ``exclude``: only
    a client that could have received it (its target; a subscriber its grants allow; anyone not excluded from a
    broadcast), or an admin. Any other ack is not counted, so that nobody can stop the redelivery to the real
    recipients (nor learn that the message exists)."""
    if acker.admin:
        return True
    if target is not None:
        return target == acker.client_id
    if topic is not None:
        return acker.receives_topic(topic)
    return exclude != acker.client_id


def ack_step(status: AckStatus, acked_by: list[str], client_id: str) -> tuple[bool, AckStatus]:
    """What an allowed ack by ``client_id`` does: ``(new, status)``. A client acks once (``new`` is False for its
    repeat); the first ack finishes an open message; an expired message stays expired (the ack still counts)."""
    if client_id in acked_by:
        return False, status
    return True, "acked" if status in ("pending", "delivered") else status


def redelivery_step(attempts: int, retries: int) -> Literal["redeliver", "expire"]:
    """At an open message's deadline: redelivered while it has had at most ``retries`` redeliveries. A redelivery
    goes to the live connections only: an offline target still has the message in its mailbox."""
    return "expire" if attempts > retries else "redeliver"


def ack_notice(envelope: Envelope, acked_by: str) -> Envelope | None:
    """The ``ack`` event that tells a message's source who acked it (PROTOCOL.md section 5); None when the source
    is not a client (the server, an anonymous caller, the scheduler)."""
    source = envelope.source
    if not source or source in RESERVED_SOURCES:
        return None
    return Envelope(
        id=new_message_id(),
        type="ack",
        priority=envelope.priority,
        timestamp=int(time.time() * 1000),
        source="server",
        target=source,
        payload={"messageId": envelope.id, "clientId": acked_by},
        correlation_id=envelope.id,
    )


# -- presence ----------------------------------------------------------------------------------------------------


def presence(rows: Iterable[ConnectionInfo], topic: str, *, scope: PresenceScope, limit: int) -> PresenceAnswer:
    """Who receives a message published on ``topic`` now: the connections among ``rows`` whose subscription patterns
    admit it (the hub's own rule, :func:`~sse_fast._core.route_admits`: a subscriber to ``orders.*`` counts for
    ``orders.eu``), grouped by client. The counts are exact; ``clients`` lists the first ``limit`` clientIds in
    order (0: the counts only), and ``truncated`` says whether any were left out."""
    per_client = Counter(row.client_id for row in rows if route_admits(row.client_id, row.topics, topic=topic))
    listed = heapq.nsmallest(limit, per_client)
    return PresenceAnswer(
        topic=topic,
        scope=scope,
        count=len(per_client),
        connections=per_client.total(),
        clients=[PresenceClient(client_id=client, connections=per_client[client]) for client in listed],
        truncated=len(per_client) > len(listed),
        limit=limit,
    )


# -- resume ------------------------------------------------------------------------------------------------------
#
# A mailbox entry holds a message that was appended to the log while its target had no connection, so its log
# position lies at or below the head of the stream that later opens. Written at that position it would break the
# cursor order (the ``connect`` frame's cursor is the head), and a cursor taken after it would resume from before
# the head. So the opening re-issues it: the broker appends it to the log again, targeted at the client, right after
# ``head``, and it reaches the stream (and the client's other streams) as a live frame with a cursor of its own.
# A resume taken anywhere in the mailbox is then an ordinary resume: the replay after that cursor holds exactly the
# rest, each once, or the cursor is ``expired`` when the log no longer covers it.


def mailbox_overflow(count: int, nbytes: int, *, size: int, max_bytes: int) -> bool:
    """Whether a client's mailbox must drop its oldest entry: it holds more than ``size`` messages
    (``SSE_FAST_MAILBOX_SIZE``) or more than ``max_bytes`` bytes of them (``SSE_FAST_QUEUE_BYTES``: an opening
    re-issues the whole mailbox into one connection's queue, so it is held to that queue's bound)."""
    return count > size or nbytes > max_bytes


def mailboxes_overflow(clients: int, nbytes: int, *, max_clients: int, max_bytes: int) -> bool:
    """Whether the mailboxes of all clients must drop a whole mailbox (the least recently filled one): more than
    ``max_clients`` clients hold one (``SSE_FAST_MAILBOX_CLIENTS``), or more than ``max_bytes`` bytes in all
    (``SSE_FAST_REPLAY_BYTES``)."""
    return clients > max_clients or nbytes > max_bytes


def mailbox_seam(mailbox: Iterable[Mail], covered: int) -> list[Mail]:
    """The mailbox entries an opening re-issues: those at or below ``covered`` (the cursor when resumed, else the
    log position the stream goes live from), which the replay does not hold. Later ones reach the stream through
    the replay or live, never twice. The opening takes the whole mailbox either way."""
    return [mail for mail in mailbox if mail.seq <= covered]


def opening(
    *,
    epoch: str,
    cursor: str | None,
    since: int | None,
    head: int,
    gap: str | None,
    replay: list[Frame],
    mailbox: Iterable[Mail],
) -> Opening:
    """What a stream opens with, from what the broker found: ``since`` (the cursor's seq), ``head`` (the log
    position after which the stream is fed live), ``gap`` (why the cursor cannot be resumed from, if so) and
    ``replay`` (the frames in ``(since, head]`` it may see).

    Resumed: it starts from the client's own cursor (which may be ahead of ``head``: the live frames up to it are
    then refused as duplicates), with the replay, and the mailbox at or below the cursor re-issued. Not resumed: it
    starts from the head, with the mailbox at or below the head re-issued; a cursor it could not use never moves its
    watermark. The re-issued entries follow in cursor order: ``connect``, the replay, then the re-issued entries
    (after ``head``), then live.
    """
    if cursor is not None and gap is None and since is not None:
        watermark = max(head, since)
        return Opening(cursor, watermark, True, None, replay, mailbox_seam(mailbox, since))
    return Opening(format_cursor(epoch, head), head, False, gap, [], mailbox_seam(mailbox, head))
