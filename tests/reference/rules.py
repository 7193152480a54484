"""A pure-Python model of the broker's protocol rules (docs/protocol.md sections 1, 2, 3 and 5): the oracle of
tests/test_conformance_model.py, which drives it in lockstep with the memory and the Redis broker.

It says, as plainly as possible, what a broker must do with publishes, streams, resumes, mailboxes, acks and
redeliveries; it knows nothing of Redis, the Rust hub or the wire format. Positions in the log are 1, 2, 3, ...
(a broker's cursors are strings; the test maps them onto these positions). What the model leaves out is listed in
:class:`BrokerModel`'s docstring.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from reference.hub import Route, matches

__all__ = ["EXPIRED", "NO_NOTICE", "UNKNOWN", "UNKNOWN_CURSOR", "Answer", "BrokerModel", "Message", "Notice", "Seen"]

UNKNOWN_CURSOR = "unknown_cursor"
EXPIRED = "expired"
#: A cursor the broker never issued (another epoch, not a cursor, far in the future): always ``unknown_cursor``.
UNKNOWN = "unknown"
#: Sources that are not clients: acking their messages sends no ``ack`` event (broker.ack_notice).
NO_NOTICE = frozenset({"server", "anonymous", "scheduler"})

Status = Literal["pending", "delivered", "acked", "expired"]


@dataclass(frozen=True)
class Message:
    """A published envelope, as the test stamped it (the server's id, source and timestamp already set)."""

    id: str
    source: str
    payload: Any
    target: str | None = None
    topic: str | None = None
    exclude: str | None = None  # broadcasts only (``excludeClientId``)
    require_ack: bool = False
    ephemeral: bool = False

    @property
    def route(self) -> Route:
        return Route.of(target=self.target, topic=self.topic, exclude=self.exclude)

    @property
    def key(self) -> tuple[Any, ...]:
        """What a subscriber can compare: the envelope's type, id, payload, source, route and flags."""
        return (
            "json",
            self.id,
            repr(self.payload),
            self.source,
            self.target,
            self.topic,
            self.require_ack,
            self.ephemeral,
        )


@dataclass(frozen=True)
class Notice:
    """The ``ack`` event that tells a message's source that ``acked_by`` acked ``message_id`` (its id is the
    server's own, so it is left out of the comparison)."""

    message_id: str
    acked_by: str
    target: str

    @property
    def route(self) -> Route:
        return Route.of(target=self.target)

    @property
    def key(self) -> tuple[Any, ...]:
        return ("ack", self.message_id, self.acked_by, "server", self.target, None, False, False)


Item = Message | Notice


@dataclass(frozen=True)
class Entry:
    """One position of the log."""

    pos: int
    item: Item


@dataclass(frozen=True)
class Seen:
    """One frame a stream receives: what it carries, whether it has its own ``id:`` line, and at which position."""

    key: tuple[Any, ...]
    has_id: bool
    pos: int | None  # the log position (None: an ephemeral frame)


@dataclass
class Conn:
    client: str
    topics: tuple[str, ...]
    frames: list[Seen] = field(default_factory=list)
    cursor: int = 0  # the position of the last ``id:`` this stream carried (its Last-Event-ID)


@dataclass
class Tracked:
    """A ``requireAck`` message until it is acked or expires."""

    message: Message
    status: Status
    attempts: int = 1
    acked_by: list[str] = field(default_factory=list)

    @property
    def open(self) -> bool:
        return self.status in ("pending", "delivered")


@dataclass(frozen=True)
class Answer:
    """A publish's answer: the connections written to, whether it waits in a mailbox, whether it was a repeat, or
    the refusal ``(status, code)``."""

    delivered: int = 0
    queued: bool = False
    duplicate: bool = False
    error: tuple[int, str] | None = None


@dataclass(frozen=True)
class Opening:
    """What the ``connect`` frame says."""

    resumed: bool
    missed: int
    reason: str | None
    cursor: int  # the position its ``id:`` names


@dataclass
class BrokerModel:
    """The rules, on one node, with every bound but the ones the test drives left out.

    - Routing: a targeted frame goes to every connection of its target; else a topic frame to every connection
      with a matching pattern; else (a broadcast) to every connection but the excluded client's.
    - Idempotency: ``(source, id)`` is accepted once when the client chose the id (the window and the size are never
      reached here); an id the server assigned is never remembered. A ``requireAck`` id held by another source's open
      message is refused 409 ``message_id_in_use`` before anything is remembered; once that message is acked or
      expired, the id is free for any source (whose message then replaces it).
    - The log: every resumable frame (a message, a redelivery, an ``ack`` event) takes the next position; the log
      keeps the newest ``replay_size``; ``expire_all`` (a tick far past the TTL) empties it. A cursor is covered when
      no position after it has left the log.
    - Mailboxes: a resumable targeted frame (not a redelivery) whose target has no connection waits in its mailbox,
      the newest ``mailbox_size`` kept; taken whole by the client's next stream.
    - Opening a stream: no cursor, or one that is unknown or not covered: ``resumed`` false (with the reason),
      nothing from the log, the cursor at the head, and the mailbox re-issued. A covered cursor: ``resumed`` true,
      every retained frame after it that the stream may see (the cursor stays the client's), and the mailbox entries
      at or below the cursor re-issued (the replay has the others). Re-issued: appended to the log again, after the
      head, in mailbox order, and routed live to every connection of the client (the opening one among them), each
      with its own position, so that a resume from inside the mailbox is an ordinary resume. ``missed`` counts the
      replay and the re-issued entries.
    - Acks: who could receive a message may ack it: the target a targeted message, a client whose topic grant
      matches a topic message, anyone but the excluded client a broadcast; an admin any. The first ack ends
      it (``acked``); each new acker sends its source an ``ack`` event (unless the source is not a client). A tick
      past the ack timeout redelivers every open message along its first route (no mailbox), at most
      ``ack_retries`` times, then marks it ``expired``; a delivery to a connection makes it ``delivered``.

    Left out: priorities (every frame here has one priority, so a connection's frames are in log order), byte
    bounds, TTLs but the one ``expire_all``, the dedupe window and size, the per-client connection limit, slow
    consumers, heartbeats, and delivery counts across nodes.
    """

    replay_size: int
    mailbox_size: int
    ack_retries: int
    head: int = 0
    trimmed: int = 0  # the newest position that left the log (the coverage mark)
    log: list[Entry] = field(default_factory=list)
    conns: dict[int, Conn] = field(default_factory=dict)
    mailboxes: dict[str, deque[Entry]] = field(default_factory=dict)
    dedupe: set[tuple[str, str]] = field(default_factory=set)
    acks: dict[str, Tracked] = field(default_factory=dict)  # in publish order (the order of first deadlines)

    # -- the log and routing ---------------------------------------------------------------------------------

    def _append(self, item: Item) -> Entry:
        self.head += 1
        entry = Entry(self.head, item)
        self.log.append(entry)
        self.trimmed = max(self.trimmed, self.head - self.replay_size)
        return entry

    def _route(self, item: Item, entry: Entry | None) -> int:
        """Write ``item`` to every connection its route reaches; returns how many."""
        delivered = 0
        for conn in self.conns.values():
            if item.route.admits(conn.client, list(conn.topics)):
                delivered += 1
                if entry is None:
                    conn.frames.append(Seen(item.key, has_id=False, pos=None))
                else:
                    conn.frames.append(Seen(item.key, has_id=True, pos=entry.pos))
                    conn.cursor = entry.pos
        return delivered

    def _resumable(self, item: Item, *, to_mailbox: bool = True) -> int:
        entry = self._append(item)
        delivered = self._route(item, entry)
        target = item.target
        if to_mailbox and target is not None and delivered == 0:
            box = self.mailboxes.setdefault(target, deque(maxlen=self.mailbox_size))
            box.append(entry)
        return delivered

    def visible(self, item: Item, client: str, topics: tuple[str, ...]) -> bool:
        return item.route.admits(client, list(topics))

    def after(self, pos: int, client: str, topics: tuple[str, ...]) -> list[Entry]:
        """Every log entry after ``pos`` a stream of ``client`` on ``topics`` may see (retained or not)."""
        return [e for e in self.log if e.pos > pos and self.visible(e.item, client, topics)]

    def covered(self, pos: int) -> bool:
        return self.trimmed <= pos <= self.head

    # -- publishing ------------------------------------------------------------------------------------------

    def publish(self, message: Message, *, chosen_id: bool = True) -> Answer:
        held = self.acks.get(message.id)
        if message.require_ack and held is not None and held.open and held.message.source != message.source:
            return Answer(error=(409, "message_id_in_use"))
        if chosen_id:
            if (message.source, message.id) in self.dedupe:
                return Answer(duplicate=True)
            self.dedupe.add((message.source, message.id))
        if message.ephemeral:
            return Answer(delivered=self._route(message, None))
        delivered = self._resumable(message)
        queued = message.target is not None and delivered == 0
        if message.require_ack:
            self.acks.pop(message.id, None)  # tracked again: it takes its place in deadline order anew
            self.acks[message.id] = Tracked(message, "delivered" if delivered else "pending")
        return Answer(delivered=delivered, queued=queued)

    # -- streams ---------------------------------------------------------------------------------------------

    def open(self, key: int, client: str, topics: tuple[str, ...], cursor: int | str | None) -> Opening:
        """A stream opens (``cursor``: a position, :data:`UNKNOWN`, or None for a fresh stream)."""
        conn = self.conns[key] = Conn(client, topics, cursor=self.head)
        mail = list(self.mailboxes.pop(client, ()))
        reason: str | None = None
        if cursor == UNKNOWN:
            reason = UNKNOWN_CURSOR
        elif isinstance(cursor, int) and not self.covered(cursor):
            reason = UNKNOWN_CURSOR if cursor > self.head else EXPIRED
        if cursor is None or reason is not None:
            opening = Opening(False, len(mail), reason, self.head)
        else:
            assert isinstance(cursor, int)
            replay = [Seen(e.item.key, has_id=True, pos=e.pos) for e in self.after(cursor, client, topics)]
            conn.frames = replay
            conn.cursor = replay[-1].pos if replay and replay[-1].pos is not None else cursor
            mail = [e for e in mail if e.pos <= cursor]
            opening = Opening(True, len(replay) + len(mail), None, cursor)
        for entry in mail:  # re-issued: after the head, live to every connection of the client
            self._resumable(entry.item, to_mailbox=False)
        return opening

    def close(self, key: int) -> None:
        del self.conns[key]

    def online(self, client: str) -> bool:
        return any(c.client == client for c in self.conns.values())

    # -- acks ------------------------------------------------------------------------------------------------

    def ack(self, client: str, message_ids: list[str], *, admin: bool, grant: str | None = None) -> int:
        """``grant``: the one topic pattern the client may subscribe to (None: every topic)."""
        known = 0
        for message_id in message_ids:
            tracked = self.acks.get(message_id)
            if tracked is None:
                continue
            message = tracked.message
            if message.target is not None:
                receives = message.target == client
            elif message.topic is not None:
                receives = grant is None or matches(grant, message.topic)
            else:
                receives = message.exclude != client
            if not (admin or receives):
                continue
            known += 1
            if client in tracked.acked_by:
                continue
            tracked.acked_by.append(client)
            if tracked.open:
                tracked.status = "acked"
            source = tracked.message.source
            if source not in NO_NOTICE:
                self._resumable(Notice(message_id, client, source))
        return known

    def status(self, message_id: str) -> tuple[str, str, list[str]] | None:
        tracked = self.acks.get(message_id)
        if tracked is None:
            return None
        return tracked.message.source, tracked.status, list(tracked.acked_by)

    def redelivered_now(self) -> list[Tracked]:
        """The open messages the next tick redelivers (not the ones it expires)."""
        return [t for t in self.acks.values() if t.open and t.attempts <= self.ack_retries]

    def tick(self) -> None:
        """A tick past every ack deadline: redeliver (first-deadline order) or expire every open message."""
        for tracked in self.acks.values():
            if not tracked.open:
                continue
            if tracked.attempts > self.ack_retries:
                tracked.status = "expired"
                continue
            tracked.attempts += 1
            if self._resumable(tracked.message, to_mailbox=False):
                tracked.status = "delivered"

    def expire_all(self) -> None:
        """A tick far past the replay TTL (and the dedupe window): the log empties, repeats are forgotten."""
        self.trimmed = self.head
        self.dedupe.clear()
