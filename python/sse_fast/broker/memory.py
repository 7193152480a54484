"""The broker: where published messages, the replay log, mailboxes, acks and idempotency live.

A broker turns an accepted envelope into frames on this worker's streams (:class:`~sse_fast.streams.Streams`)
and keeps what must outlive a connection. :class:`MemoryBroker` keeps it in this process (one worker, the
embedded default); a Redis broker shares it between workers and nodes behind the same interface, so that routes,
streams and clients never know which one runs.

Every store here is bounded (``SSE_FAST_*`` settings), and counted in :meth:`Broker.counters`.
"""

from __future__ import annotations

import heapq
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from sse_fast._core import Frame, ReplayLog
from sse_fast.broker import rules
from sse_fast.broker.base import Broker
from sse_fast.broker.rules import Accepted, AckStatus, Mail, Opening, ack_notice
from sse_fast.broker.tail import frame_data, recent_messages
from sse_fast.models import Envelope, RecentMessage
from sse_fast.settings import Settings

__all__ = ["MemoryBroker"]

_json = msgspec.json.Encoder()


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class _Tracked:
    """A ``requireAck`` message until it is acked or expires."""

    envelope: Envelope
    status: AckStatus
    deadline: float
    attempts: int = 1
    acked_by: list[str] = field(default_factory=list)
    exclude: str | None = None
    size: int = 0  # bytes of the envelope held for redelivery (0 once the message is finished)
    forget_at: float = 0.0  # when even its status is dropped (the Redis broker's ack key TTL)

    @property
    def open(self) -> bool:
        """Still waiting for an ack (and holding its envelope for redelivery)."""
        return self.status in ("pending", "delivered")


class _Mailboxes:
    """Offline messages per client. A client's oldest entry is dropped first past its message count or byte bound
    (:func:`~sse_fast.broker.rules.mailbox_overflow`); whole mailboxes, least recently filled first, past the number
    of clients or the bytes of all of them (:func:`~sse_fast.broker.rules.mailboxes_overflow`). The Redis broker's
    publish script applies the same two rules."""

    def __init__(self, *, size: int, ttl: float, clients: int, client_bytes: int, total_bytes: int) -> None:
        self._boxes: OrderedDict[str, deque[tuple[float, Mail]]] = OrderedDict()
        self._bytes: dict[str, int] = {}
        self._size, self._ttl, self._clients = size, ttl, clients
        self._client_bytes, self._total_bytes = client_bytes, total_bytes
        self.dropped = 0
        self.entries = 0
        self.nbytes = 0

    def put(self, client_id: str, mail: Mail, now: float) -> None:
        box = self._boxes.get(client_id)
        if box is None:
            box = self._boxes[client_id] = deque()  # bounded below: messages and bytes per client
            self._bytes[client_id] = 0
        self._boxes.move_to_end(client_id)  # least recently filled first, as Redis orders its mailbox index
        box.append((now + self._ttl, mail))
        self._bytes[client_id] += len(mail.data)
        self.entries += 1
        self.nbytes += len(mail.data)
        while rules.mailbox_overflow(len(box), self._bytes[client_id], size=self._size, max_bytes=self._client_bytes):
            self._pop_oldest(client_id, box)
            self.dropped += 1
        while rules.mailboxes_overflow(
            len(self._boxes), self.nbytes, max_clients=self._clients, max_bytes=self._total_bytes
        ):
            self._drop_client(next(iter(self._boxes)))

    def _pop_oldest(self, client_id: str, box: deque[tuple[float, Mail]]) -> None:
        _, mail = box.popleft()
        self._bytes[client_id] -= len(mail.data)
        self.entries -= 1
        self.nbytes -= len(mail.data)

    def _drop_client(self, client_id: str) -> None:
        box = self._boxes.pop(client_id)
        self.dropped += len(box)
        self.entries -= len(box)
        self.nbytes -= self._bytes.pop(client_id)

    def take(self, client_id: str, now: float) -> list[Mail]:
        box = self._boxes.pop(client_id, None)
        if box is None:
            return []
        self.entries -= len(box)
        self.nbytes -= self._bytes.pop(client_id)
        return [mail for expires, mail in box if expires > now]

    def expire(self, now: float) -> None:
        for client_id in [c for c, box in self._boxes.items() if box and box[0][0] <= now]:
            box = self._boxes[client_id]
            while box and box[0][0] <= now:
                self._pop_oldest(client_id, box)
            if not box:
                del self._boxes[client_id]
                del self._bytes[client_id]

    def __len__(self) -> int:
        return len(self._boxes)


class _Dedupe:
    """Recent ``(source, id)`` pairs: a repeat within the window is answered as a duplicate, not delivered."""

    def __init__(self, *, window: float, size: int) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._window, self._size = window, size

    def seen(self, source: str, message_id: str, now: float) -> bool:
        key = rules.dedupe_key(source, message_id)
        expires = self._seen.get(key)
        if expires is not None and expires > now:
            return True
        self._seen[key] = now + self._window
        self._seen.move_to_end(key)
        if len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return False

    def expire(self, now: float) -> None:
        while self._seen:
            key, expires = next(iter(self._seen.items()))
            if expires > now:
                break
            del self._seen[key]

    def __len__(self) -> int:
        return len(self._seen)


class MemoryBroker(Broker):
    """The embedded broker: everything in this process. One worker only (more would not share it)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.epoch = secrets.token_hex(4)
        self.log = ReplayLog(
            epoch=self.epoch,
            max_frames=settings.replay_size,
            max_bytes=settings.replay_bytes,
            ttl_ms=int(settings.replay_ttl * 1000),
        )
        self.mailboxes = _Mailboxes(
            size=settings.mailbox_size,
            ttl=settings.mailbox_ttl,
            clients=settings.mailbox_clients,
            client_bytes=settings.queue_bytes,
            total_bytes=settings.replay_bytes,
        )
        self.dedupe = _Dedupe(window=settings.dedupe_window, size=settings.dedupe_size)
        self._acks: OrderedDict[str, _Tracked] = OrderedDict()
        # (deadline, message id): entries whose message was acked or dropped are skipped when they come up.
        self._deadlines: list[tuple[float, str]] = []
        self._ack_bytes = 0
        # The log's newest frames, for the admin's tail (GET /api/admin/recent): the log's own frames (shared, not
        # copied), at most SSE_FAST_ADMIN_RECENT_MAX, and never one the log has let go (_trim_recent).
        self._recent: deque[Frame] = deque(maxlen=settings.admin_recent_max)

    # -- publishing ------------------------------------------------------------------------------------------

    async def publish(self, envelope: Envelope, *, exclude: str | None = None, chosen_id: bool = False) -> Accepted:
        now = time.time()
        data = self.encode(envelope)  # a refusal (413) must come before anything is remembered
        message_id, source = envelope.id or "", envelope.source or ""
        if envelope.require_ack:
            held = self._acks.get(message_id)
            if held is not None and rules.id_in_use(held.envelope.source, held.status, source):
                raise rules.refuse_id_in_use()
        if rules.dedupes(chosen_id=chosen_id) and self.dedupe.seen(source, message_id, now):
            self.duplicates += 1
            return rules.duplicate(envelope)
        accepted = self._deliver(envelope, exclude=exclude, to_mailbox=True, data=data)
        if envelope.require_ack:
            self._track(envelope, accepted, exclude, now, len(data))
        return accepted

    def publish_now(self, envelope: Envelope) -> None:
        self._deliver(envelope, exclude=None, to_mailbox=True)

    def _deliver(
        self, envelope: Envelope, *, exclude: str | None, to_mailbox: bool, data: bytes | None = None
    ) -> Accepted:
        assert self.streams is not None, "attach() the broker to the streams first"
        data = self.encode(envelope) if data is None else data
        priority = envelope.priority
        if envelope.ephemeral:
            frame = Frame(data, event=envelope.type, priority=priority)
        else:
            frame = self.log.append(
                data,
                event=envelope.type,
                priority=priority,
                target=envelope.target,
                topic=envelope.topic,
                exclude=exclude,
                now_ms=_now_ms(),
            )
            self._remember(frame)
        delivery = self.streams.deliver(frame, target=envelope.target, topic=envelope.topic, exclude=exclude)
        self.published += 1
        queued = False
        if to_mailbox and envelope.target and delivery.delivered == 0 and not envelope.ephemeral:
            mail = Mail(frame.seq or 0, envelope.type, priority, data)
            self.mailboxes.put(envelope.target, mail, time.time())
            queued = True
        return Accepted(envelope.id or "", delivery.delivered, queued)

    # -- opening a stream ------------------------------------------------------------------------------------

    async def open_stream(
        self, client_id: str, topics: tuple[str, ...], cursor: str | None, *, conn_id: int | None = None
    ) -> Opening:
        head = self.log.head
        mailbox = self.mailboxes.take(client_id, time.time())
        since = None if cursor is None else self.log.parse(cursor)
        replay, gap = [], None
        if cursor is not None:
            found = self.log.since(cursor, client_id=client_id, topics=topics, now_ms=_now_ms())
            replay, gap = found.frames, found.gap
        opened = rules.opening(
            epoch=self.epoch, cursor=cursor, since=since, head=head, gap=gap, replay=replay, mailbox=mailbox
        )
        self._reissue(client_id, opened.mailbox)
        return opened

    def _reissue(self, client_id: str, mailbox: list[Mail]) -> None:
        """Append the opening's mailbox entries to the log again, after the head, and route them live to the
        client's connections (the opening one among them): each gets its own cursor (see :mod:`~sse_fast.broker.rules`,
        resume). Never mailboxed again: the client is connected."""
        assert self.streams is not None
        for mail in mailbox:
            frame = self.log.append(
                mail.data, event=mail.event, priority=mail.priority, target=client_id, now_ms=_now_ms()
            )
            self._remember(frame)
            self.streams.deliver(frame, target=client_id)

    # -- acks ------------------------------------------------------------------------------------------------

    def _track(self, envelope: Envelope, accepted: Accepted, exclude: str | None, now: float, size: int) -> None:
        status: Literal["pending", "delivered"] = "delivered" if accepted.delivered else "pending"
        deadline = now + self.settings.ack_timeout
        # Tracked again: by its source past the dedupe window, or by another source once the holder's message ended.
        replaced = self._acks.pop(accepted.message_id, None)
        if replaced is not None:
            self._ack_bytes -= replaced.size
        forget_at = now + self._ack_lifetime()
        self._acks[accepted.message_id] = _Tracked(
            envelope, status, deadline, exclude=exclude, size=size, forget_at=forget_at
        )
        self._ack_bytes += size
        heapq.heappush(self._deadlines, (deadline, accepted.message_id))
        # Bounded by count and by the bytes held for redelivery (SSE_FAST_REPLAY_BYTES): oldest first.
        while len(self._acks) > self.settings.max_pending_acks or self._ack_bytes > self.settings.replay_bytes:
            _, dropped = self._acks.popitem(last=False)
            if dropped.open:
                self.acks_expired += 1
            self._ack_bytes -= dropped.size

    def _ack_lifetime(self) -> float:
        """Every delivery's wait, then SSE_FAST_ACK_STATUS_TTL: what the Redis broker gives its ack key."""
        s = self.settings
        return s.ack_timeout * (s.ack_retries + 2) + s.ack_status_ttl

    def _forget_acks(self, now: float) -> None:
        """Drop the records past their lifetime, oldest first: without this a finished message's status stayed
        until SSE_FAST_MAX_PENDING_ACKS newer ones pushed it out, so that steady requireAck traffic grew memory."""
        while self._acks:
            message_id, tracked = next(iter(self._acks.items()))
            if tracked.forget_at > now:
                return
            del self._acks[message_id]
            if tracked.open:
                self.acks_expired += 1
            self._ack_bytes -= tracked.size

    def _finish(self, tracked: _Tracked, status: Literal["acked", "expired"]) -> None:
        """The message is acked or expired: keep its status, not its payload."""
        tracked.status = status
        tracked.envelope = msgspec.structs.replace(tracked.envelope, payload=None, metadata=None)
        self._ack_bytes -= tracked.size
        tracked.size = 0

    async def ack(
        self, client_id: str, message_ids: list[str], *, admin: bool, receives: Callable[[str], bool] | None = None
    ) -> int:
        acker = rules.Acker(client_id, admin, receives)
        known = 0
        for message_id in message_ids:
            tracked = self._acks.get(message_id)
            if tracked is None:
                continue
            if not rules.may_ack(tracked.envelope.target, tracked.envelope.topic, tracked.exclude, acker):
                continue
            known += 1
            new, status = rules.ack_step(tracked.status, tracked.acked_by, client_id)
            if not new:
                continue
            if len(tracked.acked_by) < rules.MAX_ACKERS:
                tracked.acked_by.append(client_id)
            if status != tracked.status:
                self._finish(tracked, "acked")
                self.acked += 1
            self._notify_source(tracked.envelope, client_id)
        return known

    def _notify_source(self, envelope: Envelope, acked_by: str) -> None:
        notice = ack_notice(envelope, acked_by)
        if notice is not None:
            self._deliver(notice, exclude=None, to_mailbox=True)

    async def message_status(self, message_id: str) -> tuple[str, str, list[str]] | None:
        tracked = self._acks.get(message_id)
        if tracked is None:
            return None
        return tracked.envelope.source or "", tracked.status, list(tracked.acked_by)

    def tick(self, now: float) -> None:
        self.log.expire(int(now * 1000))
        self._trim_recent()
        self.mailboxes.expire(now)
        self.dedupe.expire(now)
        self._redeliver(now)
        self._forget_acks(now)

    def _redeliver(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, message_id = heapq.heappop(self._deadlines)
            tracked = self._acks.get(message_id)
            if tracked is None or tracked.deadline != deadline or not tracked.open:
                continue
            if rules.redelivery_step(tracked.attempts, self.settings.ack_retries) == "expire":
                self._finish(tracked, "expired")
                self.acks_expired += 1
                continue
            tracked.attempts += 1
            tracked.deadline = now + self.settings.ack_timeout
            heapq.heappush(self._deadlines, (tracked.deadline, message_id))
            accepted = self._deliver(tracked.envelope, exclude=tracked.exclude, to_mailbox=False)
            self.redelivered += 1
            if accepted.delivered:
                tracked.status = "delivered"

    # -- introspection ---------------------------------------------------------------------------------------

    def _remember(self, frame: Frame) -> None:
        self._recent.append(frame)
        self._trim_recent()

    def _trim_recent(self) -> None:
        """Forget the frames the log no longer holds (its seqs are consecutive: it holds ``head - len + 1`` on)."""
        oldest = self.log.head - len(self.log) + 1
        recent = self._recent
        while recent and (recent[0].seq or 0) < oldest:
            recent.popleft()

    async def recent(self, limit: int) -> list[RecentMessage]:
        self._trim_recent()
        entries = ((self.log.cursor(f.seq or 0), frame_data(f.body)) for f in reversed(self._recent))
        return recent_messages(entries, limit)

    def counters(self) -> dict[str, int]:
        log = self.log.counters()
        return {
            **self.delivery_counters(),
            "replay_frames": log["frames"],
            "replay_bytes": log["bytes"],
            "replay_evicted": log["evicted"] + log["expired"],
            "mailbox_clients": len(self.mailboxes),
            "mailbox_messages": self.mailboxes.entries,
            "mailbox_bytes": self.mailboxes.nbytes,
            "mailbox_dropped": self.mailboxes.dropped,
            "dedupe_entries": len(self.dedupe),
            "acks_tracked": len(self._acks),
            "acks_bytes": self._ack_bytes,
            "admin_recent_frames": len(self._recent),
        }
