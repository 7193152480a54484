"""The rules of delivery, written once: every broker decides with these, and stores what they decide.

A broker is storage and transport (:mod:`~sse_fast.broker.memory` in this process, :mod:`~sse_fast.broker.redis`
shared by a cluster); what it must decide is decided here, so that both behave alike:

- **routing**: who sees a frame (target, else topic pattern, else broadcast minus ``exclude``): the Rust core's
  :func:`~sse_fast._core.route_admits`, the same rule the hub and the memory log apply;
- **idempotency**: which ``(source, id)`` pairs are remembered, under which key (:func:`dedupe_key`);
- **requireAck**: an id held by another source is refused (:func:`id_in_use`), who may ack (:func:`may_ack`), what
  an ack changes (:func:`ack_step`), when a message is redelivered and when it expires (:func:`redelivery_step`),
  and the notice its source gets (:func:`ack_notice`);
- **resume**: which mailbox entries the opening delivers (:func:`mailbox_seam`) and what a stream opens with
  (:func:`opening`); cursors themselves are the core's one ``Cursor`` rule.

Where Redis must decide inside a Lua script for atomicity, the script's function has the name of the rule it
repeats (``id_in_use``, ``may_ack``, ``ack_step``, ``redelivery_step``), and the conformance model test
(``tests/test_conformance_model.py``) keeps the two equal.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

from sse_fast._core import Frame, format_cursor
from sse_fast.errors import ValidationFailure
from sse_fast.models import Envelope, new_message_id

__all__ = [
    "MAX_ACKERS",
    "RESERVED_SOURCES",
    "Accepted",
    "AckStatus",
    "Opening",
    "ack_notice",
    "ack_step",
    "dedupe_key",
    "duplicate",
    "id_in_use",
    "mailbox_seam",
    "may_ack",
    "opening",
    "redelivery_step",
    "refuse_id_in_use",
]

#: ackedBy names at most this many clients (a broadcast may be acked by every one); later ackers still count.
MAX_ACKERS: Final = 1000
#: Sources that are not clients: nobody to notify of an ack.
RESERVED_SOURCES: Final = frozenset({"server", "anonymous", "scheduler"})

AckStatus = Literal["pending", "delivered", "acked", "expired"]


@dataclass(slots=True)
class Accepted:
    """What a publish did: ``delivered`` connections on this node, ``queued`` in an offline mailbox."""

    message_id: str
    delivered: int
    queued: bool
    duplicate: bool = False


@dataclass(slots=True)
class Opening:
    """What a new stream starts with: its first cursor, and the frames to write before going live."""

    cursor: str
    #: The log position every resumable frame up to which this stream has been given (its first low-water mark).
    watermark: int
    resumed: bool
    gap: str | None
    frames: list[Frame]
    #: Mailbox frames delivered before live that the replay does not cover (at or below the cursor).
    extra: list[Frame] = field(default_factory=list)

    @property
    def missed(self) -> int:
        """Frames delivered before live: replay plus mailbox."""
        return len(self.frames) + len(self.extra)


# -- idempotency -------------------------------------------------------------------------------------------------


def dedupe_key(source: str, message_id: str) -> str:
    """The idempotency key of ``(source, id)``: length-prefixed, so no two pairs share one (``a`` + ``b:X`` and
    ``a:b`` + ``X`` differ), whatever ``:`` the parts contain."""
    return f"{len(source)}:{source}:{message_id}"


def duplicate(envelope: Envelope) -> Accepted:
    """The answer to a repeat of ``(source, id)`` within the dedupe window: accepted once, never delivered again."""
    return Accepted(envelope.id or "", 0, False, duplicate=True)


# -- requireAck --------------------------------------------------------------------------------------------------


def id_in_use(held_source: str | None, source: str) -> bool:
    """Whether a requireAck publish must be refused: another source's requireAck message holds its id."""
    return held_source is not None and held_source != source


def refuse_id_in_use() -> ValidationFailure:
    """The 409 for :func:`id_in_use` (raised before anything is written)."""
    return ValidationFailure(409, "message_id_in_use", "another source's requireAck message has this id")


def may_ack(target: str | None, client_id: str, *, admin: bool) -> bool:
    """Whether ``client_id`` may ack a message sent to ``target`` (None: a topic or broadcast message)."""
    return admin or target is None or target == client_id


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


# -- resume ------------------------------------------------------------------------------------------------------


def mailbox_seam(mailbox: Iterable[Frame], covered: int) -> list[Frame]:
    """The mailbox frames an opening delivers: those at or below ``covered`` (the cursor when resumed, else the log
    position the stream goes live from). Later ones reach the stream through the replay or live, never twice."""
    return [frame for frame in mailbox if (frame.seq or 0) <= covered]


def opening(
    *,
    epoch: str,
    cursor: str | None,
    since: int | None,
    head: int,
    gap: str | None,
    replay: list[Frame],
    mailbox: Iterable[Frame],
) -> Opening:
    """What a stream opens with, from what the broker found: ``since`` (the cursor's seq), ``head`` (the log
    position after which the stream is fed live), ``gap`` (why the cursor cannot be resumed from, if so) and
    ``replay`` (the frames in ``(since, head]`` it may see).

    Resumed: it starts from the client's own cursor (which may be ahead of ``head``: the live frames up to it are
    then refused as duplicates), with the replay and the mailbox at or below the cursor. Not resumed: it starts
    from the head, with the mailbox at or below the head; a cursor it could not use never moves its watermark.
    """
    if cursor is not None and gap is None and since is not None:
        watermark = max(head, since)
        return Opening(cursor, watermark, True, None, replay, mailbox_seam(mailbox, since))
    return Opening(format_cursor(epoch, head), head, False, gap, [], mailbox_seam(mailbox, head))
