"""Pure-Python models of the Rust ``PriorityQueue`` and ``FrameQueue`` (``rust/core/src/queue.rs``).

Written for clarity, not speed: they are the oracles of ``tests/test_queue.py`` and the baselines of
``bench/test_bench_queue.py``. The low-water mark is computed differently from the Rust code (which looks at the
first resumable frame of each level): here every pending seq sits in one heap.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar

T = TypeVar("T")
Outcome = Literal["accepted", "overflow", "dropped", "duplicate"]

LEVELS = 4
CRITICAL = LEVELS - 1
MAX_BYTES = 2**63 - 1
COUNTERS = ("pushed", "popped", "evicted", "overflowed", "removed")


@dataclass(eq=False)
class _Entry(Generic[T]):
    handle: int
    level: int
    item: T
    size: int
    resumable: bool
    at_ns: int


@dataclass
class PushResult(Generic[T]):
    """What happened to one push; ``handle`` is 0 unless the item was accepted."""

    outcome: Outcome
    handle: int = 0
    evicted: list[T] = field(default_factory=list)


class PriorityQueue(Generic[T]):
    """A bounded four-level priority queue: highest level first, FIFO within a level (see ``_core.pyi``)."""

    def __init__(self, *, max_items: int, max_bytes: int = MAX_BYTES) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._levels: list[deque[_Entry[T]]] = [deque() for _ in range(LEVELS)]
        self._last_handle = 0
        self._counters = dict.fromkeys(COUNTERS, 0)

    def __len__(self) -> int:
        return sum(len(level) for level in self._levels)

    def _fits(self, count: int, nbytes: int, size: int) -> bool:
        return count < self.max_items and nbytes + size <= self.max_bytes

    def _victims(self, priority: int, size: int) -> list[_Entry[T]] | None:
        """The entries to evict so that ``size`` fits (oldest ephemeral of the lowest levels first), or None."""
        count, nbytes, victims = len(self), self.nbytes, []
        candidates = (e for level in self._levels[: priority + 1] for e in level if not e.resumable)
        for entry in candidates:
            if self._fits(count, nbytes, size):
                break
            victims.append(entry)
            count, nbytes = count - 1, nbytes - entry.size
        return victims if self._fits(count, nbytes, size) else None

    def push(
        self, item: T, priority: int = 1, *, size: int = 1, resumable: bool = False, now_ns: int | None = None
    ) -> PushResult[T]:
        victims = self._victims(priority, size)
        if victims is None:
            self._counters["overflowed"] += 1
            return PushResult("overflow" if resumable else "dropped")
        for victim in victims:
            self._levels[victim.level].remove(victim)
            self.nbytes -= victim.size
        self._counters["evicted"] += len(victims)
        self._last_handle += 1
        at_ns = time.monotonic_ns() if now_ns is None else now_ns
        self._levels[priority].append(_Entry(self._last_handle, priority, item, size, resumable, at_ns))
        self.nbytes += size
        self._counters["pushed"] += 1
        return PushResult("accepted", self._last_handle, [v.item for v in victims])

    def _take(self, entry: _Entry[T]) -> T:
        level = self._levels[entry.level]
        if level[0] is entry:
            level.popleft()
        else:
            level.remove(entry)
        self.nbytes -= entry.size
        return entry.item

    def _next(self, aging_ms: int | None, now_ns: int | None) -> _Entry[T] | None:
        heads = [(level, queue[0]) for level, queue in enumerate(self._levels) if queue]
        if not heads:
            return None
        if aging_ms is None:
            return heads[-1][1]
        now = time.monotonic_ns() if now_ns is None else now_ns
        aging_ns = aging_ms * 1_000_000

        def rank(head: tuple[int, _Entry[T]]) -> tuple[int, int]:
            level, entry = head
            return min(CRITICAL, level + (now - entry.at_ns) // aging_ns), -entry.handle

        return max(heads, key=rank)[1]

    def pop(self, *, aging_ms: int | None = None, now_ns: int | None = None) -> T | None:
        entry = self._next(aging_ms, now_ns)
        if entry is None:
            return None
        self._counters["popped"] += 1
        return self._take(entry)

    def peek(self) -> T | None:
        entry = self._next(None, None)
        return None if entry is None else entry.item

    def remove(self, handle: int) -> T | None:
        for entry in self._entries():
            if entry.handle == handle:
                self._counters["removed"] += 1
                return self._take(entry)
        return None

    def clear(self) -> list[T]:
        items = [entry.item for entry in self._entries()]
        self._levels = [deque() for _ in range(LEVELS)]
        self.nbytes = 0
        self._counters["removed"] += len(items)
        return items

    def _entries(self) -> Iterator[_Entry[T]]:
        """Every entry, in pop order."""
        for level in reversed(self._levels):
            yield from level

    def depths(self) -> list[int]:
        return [len(level) for level in self._levels]

    def counters(self) -> dict[str, int]:
        return dict(self._counters)


class FrameLike(Protocol):
    """What the model needs of a frame (``sse_fast._core.Frame`` has it)."""

    @property
    def body(self) -> bytes: ...
    @property
    def priority(self) -> int: ...
    @property
    def seq(self) -> int | None: ...
    def __len__(self) -> int: ...


class FrameQueue:
    """A connection's outbound queue with the low-water-mark ``id:`` rule (see ``_core.pyi``)."""

    def __init__(self, *, max_frames: int, max_bytes: int, id_prefix: str = "") -> None:
        self._queue: PriorityQueue[FrameLike] = PriorityQueue(max_items=max_frames, max_bytes=max_bytes)
        self._prefix = id_prefix.encode()
        self.watermark = 0
        self._written = 0  # the largest resumable seq written
        # Every resumable seq queued and not yet written, as a heap with lazy deletion (`_done`); a seq refused with
        # "overflow" joins it for ever.
        self._pending: list[int] = []
        self._done: set[int] = set()
        self._floor = 0  # resumable frames at or below it were written by a replay: refused as duplicates

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def nbytes(self) -> int:
        return self._queue.nbytes

    def counters(self) -> dict[str, int]:
        return self._queue.counters()

    def set_watermark(self, seq: int) -> None:
        self.watermark = self._written = self._floor = seq

    def push(self, frame: FrameLike) -> Outcome:
        if frame.seq is not None and frame.seq <= self._floor:
            return "duplicate"
        result = self._queue.push(frame, frame.priority, size=len(frame), resumable=frame.seq is not None)
        if frame.seq is not None and result.outcome != "dropped":
            heapq.heappush(self._pending, frame.seq)
        return result.outcome

    def drain(self, max_bytes: int = MAX_BYTES) -> bytes:
        out, used, count = bytearray(), 0, 0
        while (frame := self._queue.peek()) is not None:
            if count and used + len(frame) > max_bytes:
                break
            self._queue.pop()
            used, count = used + len(frame), count + 1
            if frame.seq is not None:
                out += self._id_line(frame.seq)
            out += frame.body
        return bytes(out)

    def _min_pending(self) -> int | None:
        while self._pending and self._pending[0] in self._done:
            self._done.remove(heapq.heappop(self._pending))
        return self._pending[0] if self._pending else None

    def _id_line(self, seq: int) -> bytes:
        """The ``id:`` line to write before the resumable frame ``seq`` (just popped), or nothing."""
        self._written = max(self._written, seq)
        self._done.add(seq)
        pending = self._min_pending()
        if pending is not None and pending < seq:
            return b""  # it overtook frames still queued
        mark = self._written if pending is None else min(self._written, pending - 1)
        if mark <= self.watermark:
            return b""
        self.watermark = mark
        return b"id: " + self._prefix + str(mark).encode() + b"\n"
