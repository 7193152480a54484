"""The dispatcher: handlers and iterators, deduplication by message id, and acks of handled messages.

The reader (:mod:`sse_fast.client.connection`) hands each message over through a bounded queue; the dispatcher
(:meth:`Client._dispatch_loop`) runs the handlers, highest priority first, feeds :meth:`Client.messages` iterators
and acknowledges ``requireAck`` messages once the handlers returned. A slow handler slows the stream down (and the
server, past its own queue, closes it as a slow consumer and the client resumes) instead of growing memory.
A message id is remembered ``pending`` until its handlers ran and ``done`` after, so that a replay or redelivery
runs no handler twice, and a redelivery of a handled message gets its lost ack again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, Final

from sse_fast.client._base import _call, _ClientBase, _json, log
from sse_fast.client.answers import AckAnswer
from sse_fast.models import Envelope

__all__ = ["Handler", "Subscription"]

Handler = Callable[[Envelope], Any]
"""A message handler: a function or a coroutine function taking the :data:`Message`."""

_SEEN_IDS: Final = 10_000  # message ids remembered for deduplication
_HISTORY: Final = 1_000
_TYPE_KEYS: Final = 256  # distinct message types counted in the stats; others count under "other"
_ACK_PRIORITY: Final = 2


class Subscription:
    """A registered handler; :meth:`unsubscribe` removes it (idempotent)."""

    __slots__ = ("_remove",)

    def __init__(self, remove: Callable[[], None]) -> None:
        self._remove: Callable[[], None] | None = remove

    @property
    def active(self) -> bool:
        """Whether the handler is still registered (a ``once`` handler stops being so after its message)."""
        return self._remove is not None

    def unsubscribe(self) -> None:
        """Stop calling the handler."""
        remove, self._remove = self._remove, None
        if remove is not None:
            remove()


@dataclass(slots=True)
class _Handler:
    type: str
    fn: Handler
    priority: int
    order: int
    once: bool
    subscription: Subscription | None = None


class _Listener:
    """The bounded buffer behind one :meth:`Client.messages` iterator; drops its oldest message when full."""

    def __init__(self, size: int, *, system: bool, heartbeats: bool) -> None:
        self.items: deque[Envelope] = deque(maxlen=size)
        self.system = system
        self.heartbeats = heartbeats
        self.ready = asyncio.Event()
        self.ended = False
        self.error: BaseException | None = None

    def wants(self, message: Envelope) -> bool:
        if message.type == "heartbeat":
            return self.heartbeats
        return self.system or message.type != "system"

    def put(self, message: Envelope) -> bool:
        full = len(self.items) == self.items.maxlen
        self.items.append(message)
        self.ready.set()
        return not full

    def end(self, error: BaseException | None) -> None:
        self.ended, self.error = True, error
        self.ready.set()


class _Dispatcher(_ClientBase):
    """The dispatcher of :class:`~sse_fast.client.Client`: the inbound queue, handlers, iterators and acks."""

    auto_ack: bool

    def _init_dispatch(self) -> None:
        # Reader -> dispatcher, bounded by queue_size: the reader waits for room while someone consumes, and drops
        # the oldest (counted) while nobody does, so that messages that arrive before the first handler or
        # iterator is registered (the ``connect`` event, a mailbox) are held for it rather than lost.
        self._inbound: deque[Envelope] = deque()  # bounded by queue_size (see above)
        self._inbound_ready = asyncio.Event()
        self._inbound_room = asyncio.Event()

        # Until the first messages() iterator: what was dispatched (to handlers, or to nobody) is held for it, bounded
        # by queue_size (the oldest dropped, counted in stats().unclaimed); an ack that no handler earned waits
        # until the iterator takes the message.
        self._iterated = False
        self._unclaimed: deque[Envelope] = deque()  # bounded by queue_size (see above)
        self._unacked: set[str] = set()  # ids in _unclaimed whose ack waits for the iterator

        self._handlers: list[_Handler] = []
        self._handler_order = 0
        self._listeners = set()
        self._history: deque[Envelope] = deque(maxlen=_HISTORY)
        # id -> "pending" (handlers not run yet), "done" (handled, acked if asked)
        self._seen: OrderedDict[str, str] = OrderedDict()
        self._by_type: dict[str, int] = {}

    # -- the inbound queue -----------------------------------------------------------------------------------

    async def _hand_over(self, message: Envelope) -> None:
        # Waits while the dispatcher is behind: the server's queue absorbs the rest, then resumes us.
        while len(self._inbound) >= self._queue_size:
            if not self._has_consumers():
                dropped = self._inbound.popleft()
                self._counts["dropped"] += 1
                if dropped.id is not None and self._seen.get(dropped.id) == "pending":
                    del self._seen[dropped.id]  # a replay or redelivery may bring it to a consumer later
                continue
            self._inbound_room.clear()
            await self._inbound_room.wait()
        self._inbound.append(message)
        self._inbound_ready.set()

    def _wants_heartbeats(self) -> bool:
        return any(h.type == "heartbeat" for h in self._handlers) or any(x.heartbeats for x in self._listeners)

    def _has_consumers(self) -> bool:
        return bool(self._handlers or self._listeners)

    def _consumers_changed(self) -> None:
        self._inbound_ready.set()
        self._inbound_room.set()

    def _is_duplicate(self, message: Envelope) -> bool:
        assert message.id is not None
        seen = self._seen.get(message.id)
        if seen is None:
            self._seen[message.id] = "pending"
            if len(self._seen) > _SEEN_IDS:
                self._seen.popitem(last=False)
            return False
        self._counts["duplicates"] += 1
        if seen == "done" and message.require_ack and self.auto_ack:
            self._queue_ack(message.id)  # a redelivery: our ack was lost, send it again
        return True

    # -- the dispatcher --------------------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            if not self._inbound or not self._has_consumers():
                self._inbound_ready.clear()
                await self._inbound_ready.wait()
                continue
            message = self._inbound.popleft()
            self._inbound_room.set()
            try:
                await self._dispatch(message)
            except Exception:  # a bug here must not stop the dispatcher
                log.exception("dispatching %s failed", message.id)

    async def _dispatch(self, message: Envelope) -> None:
        plain = message.type not in ("system", "heartbeat")
        if message.type != "heartbeat":
            self._counts["received"] += 1
            key = message.type if message.type in self._by_type or len(self._by_type) < _TYPE_KEYS else "other"
            self._by_type[key] = self._by_type.get(key, 0) + 1
        if plain:
            self._history.append(message)
        ran, failed = await self._run_handlers(message, plain)
        for listener in list(self._listeners):
            if listener.wants(message) and not listener.put(message):
                self._counts["dropped"] += 1
        held = not self._iterated and message.type != "heartbeat" and self._hold(message)
        if message.id is None or not plain:
            return
        if failed:
            self._seen.pop(message.id, None)  # let the server's redelivery run the handlers again
            return
        if held and not ran:
            self._unacked.add(message.id)  # nobody has seen it yet: the iterator that takes it earns the ack
            return
        self._handled(message)

    def _handled(self, message: Envelope) -> None:
        assert message.id is not None
        if message.id in self._seen:
            self._seen[message.id] = "done"
        if message.require_ack and self.auto_ack:
            self._queue_ack(message.id)

    def _hold(self, message: Envelope) -> bool:
        """Keep ``message`` for the first :meth:`messages` iterator (none has been attached yet)."""
        if len(self._unclaimed) >= self._queue_size:
            dropped = self._unclaimed.popleft()
            self._counts["unclaimed"] += 1
            if dropped.id is not None and dropped.id in self._unacked:
                self._unacked.discard(dropped.id)
                self._seen.pop(dropped.id, None)  # not acked: the server's redelivery brings it again
        self._unclaimed.append(message)
        return True

    def _claim(self, listener: _Listener) -> None:
        """The first iterator: hand it what was held for it, and ack what it is the first to take."""
        self._iterated = True
        held, self._unclaimed = self._unclaimed, deque(maxlen=self._queue_size)  # unused once iterated
        for message in held:
            if listener.wants(message) and not listener.put(message):
                self._counts["dropped"] += 1
            if message.id is not None and message.id in self._unacked:
                self._unacked.discard(message.id)
                self._handled(message)

    async def _run_handlers(self, message: Envelope, plain: bool) -> tuple[bool, bool]:
        """Run the handlers of ``message``: whether any ran, and whether any failed."""
        handlers = [h for h in self._handlers if h.type == message.type or (plain and h.type == "*")]
        handlers.sort(key=lambda h: (-h.priority, h.order))
        failed = False
        for handler in handlers:
            if handler.once and handler.subscription is not None:
                if not handler.subscription.active:
                    continue
                handler.subscription.unsubscribe()
            try:
                await _call(handler.fn, message)
            except Exception:
                failed = True
                self._counts["handler_errors"] += 1
                log.exception("handler %r failed on message %s (%s)", handler.fn, message.id, message.type)
        return bool(handlers), failed

    # -- receiving -------------------------------------------------------------------------------------------

    def subscribe(self, type: str, handler: Handler, *, priority: int = 0) -> Subscription:
        """Call ``handler(message)`` for every message of ``type``; higher ``priority`` handlers run first.

        ``"*"`` means every type but ``system`` and ``heartbeat``, which are only delivered to handlers that name
        them. A handler may be a coroutine function (awaited before the next handler runs); one that raises is
        logged and counted, and the other handlers still run.
        """
        return self._add_handler(type, handler, priority, once=False)

    def once(self, type: str, handler: Handler, *, priority: int = 0) -> Subscription:
        """Like :meth:`subscribe`, for the next message of ``type`` only."""
        return self._add_handler(type, handler, priority, once=True)

    def _add_handler(self, type: str, fn: Handler, priority: int, *, once: bool) -> Subscription:
        self._handler_order += 1
        handler = _Handler(type, fn, priority, self._handler_order, once)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._handlers.remove(handler)
            self._consumers_changed()

        handler.subscription = Subscription(remove)
        self._handlers.append(handler)
        self._consumers_changed()
        return handler.subscription

    async def messages(self, *, system: bool = False, heartbeats: bool = False) -> AsyncGenerator[Envelope, None]:
        """Iterate over the messages as they arrive (an alternative to handlers; both may be used at once).

        ``system`` and ``heartbeat`` messages only when asked. Each iterator buffers up to ``queue_size``
        messages and drops its oldest beyond (counted in ``stats().dropped``). The first iterator also gets what
        arrived before it (after ``async with``, or while only handlers listened): up to ``queue_size`` messages are
        held for it, the oldest dropped beyond (counted in ``stats().unclaimed``), and a ``requireAck`` message that
        no handler took is acknowledged when this iterator gets it, not before. The iteration ends when the client
        is closed or the server answered 204, and raises the error that stopped the stream
        (:class:`~sse_fast.errors.AuthError`, :class:`~sse_fast.errors.ConnectionLostError`).
        """
        listener = _Listener(self._queue_size, system=system, heartbeats=heartbeats)
        if self._fatal is not None:
            raise self._fatal
        if self._closed or self._stopped:
            return
        if not self._iterated:
            self._claim(listener)
        self._listeners.add(listener)
        self._consumers_changed()
        try:
            while True:
                while not listener.items:
                    if listener.ended:
                        if listener.error is not None:
                            raise listener.error
                        return
                    listener.ready.clear()
                    await listener.ready.wait()
                yield listener.items.popleft()
        finally:
            self._listeners.discard(listener)
            self._consumers_changed()

    def history(self, n: int | None = None) -> list[Envelope]:
        """The last ``n`` (default: all kept, at most 1,000) messages received, oldest first, heartbeats and system
        events excluded."""
        items = list(self._history)
        return items if n is None else items[-n:] if n > 0 else []

    # -- acknowledging ---------------------------------------------------------------------------------------

    async def ack(self, message_id: str) -> AckAnswer:
        """Acknowledge a ``requireAck`` message (what ``auto_ack`` does after the handlers returned)."""
        return await self._submit("/api/ack", _json.encode({"messageIds": [message_id]}), _ACK_PRIORITY, AckAnswer)

    def _queue_ack(self, message_id: str) -> None:
        async def ack() -> None:
            try:
                await self.ack(message_id)
            except Exception as err:
                log.warning("could not acknowledge %s: %s", message_id, err)

        if not self._closed:
            self._spawn(ack())
