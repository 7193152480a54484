"""The bounded priority queue and the per-connection frame queue, against the pure-Python model."""

from __future__ import annotations

import gc
import time
import weakref
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from reference import queue as model
from sse_fast._core import CRITICAL, HIGH, LOW, NORMAL, Frame, FrameQueue, PriorityQueue
from sse_fast.errors import FrameError

# Both implementations must pass the behaviour tests: the model is only an oracle if it is right too.
IMPLEMENTATIONS = pytest.mark.parametrize("impl", ["rust", "model"])


def make_queue(impl: str, **kwargs: Any) -> Any:
    return PriorityQueue(**kwargs) if impl == "rust" else model.PriorityQueue(**kwargs)


def make_frames(impl: str, **kwargs: Any) -> Any:
    return FrameQueue(**kwargs) if impl == "rust" else model.FrameQueue(**kwargs)


def drain_all(queue: Any) -> list[Any]:
    return list(iter(queue.pop, None))


# ---------------------------------------------------------------------------------------------------------------
# PriorityQueue
# ---------------------------------------------------------------------------------------------------------------


@IMPLEMENTATIONS
def test_fifo_within_a_level_and_higher_levels_first(impl: str) -> None:
    q = make_queue(impl, max_items=10)
    for item, priority in [("l1", LOW), ("c", CRITICAL), ("n", NORMAL), ("l2", LOW), ("h", HIGH), ("n2", NORMAL)]:
        assert q.push(item, priority).outcome == "accepted"
    assert q.depths() == [2, 2, 1, 1]
    assert q.peek() == "c"
    assert drain_all(q) == ["c", "h", "n", "n2", "l1", "l2"]
    assert q.peek() is None
    assert q.pop() is None


@IMPLEMENTATIONS
def test_defaults(impl: str) -> None:
    q = make_queue(impl, max_items=3)
    assert q.max_items == 3
    assert q.max_bytes == 2**63 - 1
    result = q.push("x")
    assert (result.outcome, result.handle, result.evicted) == ("accepted", 1, [])
    assert (len(q), q.nbytes, q.depths()) == (1, 1, [0, 1, 0, 0])


@IMPLEMENTATIONS
def test_item_bound_evicts_the_oldest_ephemeral_item(impl: str) -> None:
    q = make_queue(impl, max_items=2)
    q.push("a")
    q.push("b")
    result = q.push("c")
    assert (result.outcome, result.evicted) == ("accepted", ["a"])
    assert drain_all(q) == ["b", "c"]


@IMPLEMENTATIONS
def test_byte_bound_evicts_until_the_item_fits(impl: str) -> None:
    q = make_queue(impl, max_items=100, max_bytes=10)
    for i in range(5):
        q.push(i, LOW, size=2)
    assert q.push("big", LOW, size=5).evicted == [0, 1, 2]
    assert q.nbytes == 9
    assert drain_all(q) == [3, 4, "big"]
    assert q.nbytes == 0


@IMPLEMENTATIONS
def test_eviction_order_lowest_level_then_oldest_never_resumable(impl: str) -> None:
    q = make_queue(impl, max_items=6)
    q.push("n-old", NORMAL)
    q.push("l-resumable", LOW, resumable=True)
    q.push("l-1", LOW)
    q.push("h", HIGH)
    q.push("l-2", LOW)
    q.push("n-resumable", NORMAL, resumable=True)
    assert [q.push(x, NORMAL).evicted for x in "xyz"] == [["l-1"], ["l-2"], ["n-old"]]
    assert q.depths() == [1, 4, 1, 0]
    assert q.counters()["evicted"] == 3


@IMPLEMENTATIONS
def test_eviction_never_reaches_above_the_incoming_level(impl: str) -> None:
    q = make_queue(impl, max_items=2)
    q.push("h", HIGH)
    q.push("c", CRITICAL)
    assert q.push("l", LOW).outcome == "dropped"
    assert q.push("n", NORMAL, resumable=True).outcome == "overflow"
    assert q.push("c2", CRITICAL).evicted == ["h"]


@IMPLEMENTATIONS
def test_eviction_is_all_or_nothing(impl: str) -> None:
    q = make_queue(impl, max_items=10, max_bytes=10)
    q.push("a", LOW, size=3)
    q.push("b", LOW, size=3, resumable=True)
    q.push("c", NORMAL, size=3)
    # Evicting both ephemeral items would free 6 of the 7 bytes needed: nothing is evicted.
    overflow = q.push("d", NORMAL, size=8, resumable=True)
    dropped = q.push("e", NORMAL, size=8)
    assert (overflow.outcome, overflow.handle, overflow.evicted) == ("overflow", 0, [])
    assert (dropped.outcome, dropped.handle, dropped.evicted) == ("dropped", 0, [])
    assert (len(q), q.nbytes) == (3, 9)
    assert q.counters() == {"pushed": 3, "popped": 0, "evicted": 0, "overflowed": 2, "removed": 0}
    assert q.push("f", NORMAL, size=7, resumable=True).evicted == ["a", "c"]


@IMPLEMENTATIONS
def test_an_item_larger_than_max_bytes_never_fits(impl: str) -> None:
    q = make_queue(impl, max_items=10, max_bytes=10)
    assert q.push("x", CRITICAL, size=11, resumable=True).outcome == "overflow"
    assert q.push("y", CRITICAL, size=11).outcome == "dropped"
    assert q.push("z", CRITICAL, size=10).outcome == "accepted"


@IMPLEMENTATIONS
def test_remove_by_handle(impl: str) -> None:
    q = make_queue(impl, max_items=10)
    a = q.push("a", LOW, size=2).handle
    b = q.push("b", HIGH, size=3).handle
    assert q.remove(a) == "a"
    assert q.remove(a) is None
    assert q.remove(12345) is None
    assert q.remove(-1) is None
    assert q.pop() == "b"
    assert q.remove(b) is None
    assert (len(q), q.nbytes, q.counters()["removed"]) == (0, 0, 1)


@IMPLEMENTATIONS
def test_clear_returns_items_in_pop_order(impl: str) -> None:
    q = make_queue(impl, max_items=10)
    for item, priority in [(1, LOW), (2, HIGH), (3, LOW), (4, CRITICAL)]:
        q.push(item, priority, size=5)
    assert q.clear() == [4, 2, 1, 3]
    assert (len(q), q.nbytes, q.depths(), q.counters()["removed"]) == (0, 0, [0, 0, 0, 0], 4)


@IMPLEMENTATIONS
def test_counters_balance_the_length(impl: str) -> None:
    q = make_queue(impl, max_items=3)
    for i in range(10):
        q.push(i, i % 4, resumable=i % 3 == 0)
        if i % 4 == 0:
            q.pop()
    q.remove(q.push(99, CRITICAL).handle)
    c = q.counters()
    assert c == {"pushed": 9, "popped": 3, "evicted": 3, "overflowed": 2, "removed": 1}
    assert c["pushed"] - c["popped"] - c["evicted"] - c["removed"] == len(q)


def wait_until(deadline_s: float) -> None:
    """Let wall time pass: aging is about time waited, so there is no event to wait on instead."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        time.sleep(end - time.monotonic())  # ok-sleep: aging needs wall time to pass


def test_aging_lifts_an_item_that_waited() -> None:
    q: PriorityQueue[str] = PriorityQueue(max_items=10)
    q.push("old-low", LOW)
    wait_until(0.25)
    q.push("n1", NORMAL)
    q.push("n2", NORMAL)
    assert q.peek() == "n1"
    # "old-low" has waited >= 2.5 agings (LOW + 2 = HIGH at least); "n1" is NORMAL, or HIGH after a 100 ms stall,
    # and a tie goes to the item that has waited longest: "old-low" wins either way.
    assert q.pop(aging_ms=100) == "old-low"
    assert q.pop(aging_ms=100) == "n1"
    assert q.pop(aging_ms=100) == "n2"
    assert q.pop(aging_ms=100) is None


def test_slow_aging_keeps_priority_order() -> None:
    q: PriorityQueue[str] = PriorityQueue(max_items=10)
    q.push("low", LOW)
    q.push("high", HIGH)
    assert q.pop(aging_ms=10**9) == "high"
    assert q.counters()["popped"] == 1


def test_model_aging_with_an_injected_clock() -> None:
    q: model.PriorityQueue[str] = model.PriorityQueue(max_items=10)
    q.push("low", LOW, now_ns=0)
    q.push("high", HIGH, now_ns=3_000_000)
    assert q.pop(aging_ms=1, now_ns=3_000_000) == "low"  # LOW + 3 = CRITICAL beats HIGH
    q.push("low", LOW, now_ns=0)
    assert q.pop(aging_ms=3, now_ns=3_000_000) == "high"  # LOW + 1 = NORMAL


@pytest.mark.parametrize(
    "call",
    [
        lambda q: q.push("x", 4),
        lambda q: q.push("x", -1),
        lambda q: q.push("x", size=-1),
        lambda q: q.pop(aging_ms=0),
        lambda q: q.pop(aging_ms=-5),
        lambda q: PriorityQueue(max_items=0),
        lambda q: PriorityQueue(max_items=1, max_bytes=0),
        lambda q: PriorityQueue(max_items=-1),
    ],
)
def test_bad_arguments_raise_value_error(call: Any) -> None:
    q: PriorityQueue[str] = PriorityQueue(max_items=2)
    with pytest.raises(ValueError, match="must be"):
        call(q)
    assert len(q) == 0


def test_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        PriorityQueue(3)  # type: ignore[misc]
    q: PriorityQueue[str] = PriorityQueue(max_items=3)
    with pytest.raises(TypeError):
        q.push("x", 1, 5)  # type: ignore[misc]
    with pytest.raises(TypeError):
        q.pop(100)  # type: ignore[misc]


def test_items_are_the_same_objects() -> None:
    q: PriorityQueue[object] = PriorityQueue(max_items=1)
    a, b = object(), object()
    q.push(a)
    assert q.peek() is a
    assert q.push(b).evicted[0] is a
    assert q.pop() is b


def test_a_queue_in_a_reference_cycle_is_collected() -> None:
    class Holder:
        queue: PriorityQueue[Holder]

    holder = Holder()
    holder.queue = PriorityQueue(max_items=2)
    holder.queue.push(holder)
    ref = weakref.ref(holder)
    del holder
    gc.collect()
    assert ref() is None


# ---------------------------------------------------------------------------------------------------------------
# FrameQueue
# ---------------------------------------------------------------------------------------------------------------


def frame(priority: int, seq: int | None, pad: int = 0) -> Frame:
    return Frame(b'{"n":"' + b"x" * pad + b'"}', event="m", priority=priority, seq=seq)


def tokens(drained: bytes) -> list[str]:
    """Render drained bytes as ``<id>/<seq>`` tokens: ``-`` for no id, ``e`` for an ephemeral frame."""
    out = []
    for block in drained.decode().split("\n\n")[:-1]:
        lines = block.split("\n")
        id_ = lines[0].removeprefix("id: E-") if lines[0].startswith("id: ") else "-"
        out.append(f"{id_}/{lines[-1].removeprefix('data: ')}")
    return out


def seq_frames(impl: str, frames: list[tuple[int, int | None]], **kwargs: Any) -> Any:
    q = make_frames(impl, max_frames=kwargs.pop("max_frames", 20), max_bytes=10_000, id_prefix="E-", **kwargs)
    for priority, seq in frames:
        q.push(Frame(str(seq if seq is not None else "e").encode(), event="m", priority=priority, seq=seq))
    return q


@IMPLEMENTATIONS
def test_in_order_frames_carry_their_own_seq_and_ephemeral_ones_none(impl: str) -> None:
    q = seq_frames(impl, [(NORMAL, 1), (NORMAL, None), (NORMAL, 2)])
    assert tokens(q.drain()) == ["1/1", "-/e", "2/2"]
    assert q.watermark == 2


@IMPLEMENTATIONS
def test_an_overtaking_frame_gets_no_id_and_the_overtaken_one_carries_the_new_mark(impl: str) -> None:
    q = seq_frames(impl, [(LOW, 5), (HIGH, 10)])
    assert tokens(q.drain()) == ["-/10", "10/5"]
    assert q.watermark == 10


@IMPLEMENTATIONS
def test_the_mark_stops_below_frames_still_pending(impl: str) -> None:
    q = seq_frames(impl, [(LOW, 5), (HIGH, 6), (LOW, 7), (HIGH, 8)])
    assert tokens(q.drain()) == ["-/6", "-/8", "6/5", "8/7"]
    for priority, seq in [(LOW, 11), (LOW, 13), (HIGH, 20)]:
        q.push(Frame(str(seq).encode(), event="m", priority=priority, seq=seq))
    # 12 was never for this connection, but every frame at or below it has been written.
    assert tokens(q.drain()) == ["-/20", "12/11", "20/13"]


@IMPLEMENTATIONS
def test_the_mark_advances_across_drains(impl: str) -> None:
    q = seq_frames(impl, [(LOW, 1), (CRITICAL, 2)])
    assert tokens(q.drain(1)) == ["-/2"]
    assert q.watermark == 0
    q.push(Frame(b"3", event="m", priority=CRITICAL, seq=3))
    assert tokens(q.drain()) == ["-/3", "3/1"]


@IMPLEMENTATIONS
def test_set_watermark_starts_after_a_replay(impl: str) -> None:
    q = seq_frames(impl, [])
    q.set_watermark(40)
    assert q.watermark == 40
    assert q.push(Frame(b"38", event="m", priority=NORMAL, seq=38)) == "duplicate", "the replay wrote it"
    assert q.push(Frame(b"41", event="m", priority=NORMAL, seq=41)) == "accepted"
    assert tokens(q.drain()) == ["41/41"]


@IMPLEMENTATIONS
def test_the_mark_never_passes_an_overflowed_frame(impl: str) -> None:
    q = seq_frames(impl, [(LOW, 1), (LOW, 2)], max_frames=2)
    assert q.push(Frame(b"3", event="m", priority=LOW, seq=3)) == "overflow"
    assert tokens(q.drain()) == ["1/1", "2/2"]
    q.push(Frame(b"4", event="m", priority=LOW, seq=4))
    assert tokens(q.drain()) == ["-/4"]
    assert q.watermark == 2


@IMPLEMENTATIONS
def test_frame_push_outcomes(impl: str) -> None:
    size = len(frame(LOW, None))
    q = make_frames(impl, max_frames=2, max_bytes=2 * size)
    assert [q.push(frame(LOW, None)), q.push(frame(NORMAL, None))] == ["accepted", "accepted"]
    assert q.push(frame(NORMAL, 1)) == "accepted"  # evicts the LOW one
    assert q.push(frame(LOW, None)) == "dropped"
    assert q.push(frame(NORMAL, 2)) == "accepted"  # evicts the ephemeral NORMAL one
    assert q.push(frame(CRITICAL, 3)) == "overflow"
    assert q.push(frame(CRITICAL, None, pad=2 * size)) == "dropped"
    assert (len(q), q.nbytes) == (2, 2 * size)
    assert q.counters() == {"pushed": 4, "popped": 0, "evicted": 2, "overflowed": 3, "removed": 0}


@IMPLEMENTATIONS
def test_drain_stops_before_passing_max_bytes_but_writes_at_least_one_frame(impl: str) -> None:
    q = make_frames(impl, max_frames=10, max_bytes=10_000, id_prefix="p")
    for seq in (1, 2, 3):
        q.push(frame(NORMAL, seq))
    size = len(frame(NORMAL, 1))
    assert q.drain(1) == b"id: p1\n" + frame(NORMAL, 1).body
    assert q.drain(2 * size - 1).count(b"event:") == 1
    assert q.drain(2 * size).count(b"event:") == 1
    assert q.drain() == b""
    assert q.counters()["popped"] == 3


def test_drain_limit_counts_bodies_only() -> None:
    q = FrameQueue(max_frames=10, max_bytes=10_000, id_prefix="epoch-")
    for seq in (1, 2):
        q.push(frame(NORMAL, seq))
    out = q.drain(2 * len(frame(NORMAL, 1)))
    assert out.count(b"event:") == 2
    assert out.count(b"id: epoch-") == 2


def test_large_drain_releases_the_gil_and_stays_correct() -> None:
    q = FrameQueue(max_frames=1000, max_bytes=1 << 24, id_prefix="E-")
    reference = model.FrameQueue(max_frames=1000, max_bytes=1 << 24, id_prefix="E-")
    for i in range(1, 500):
        f = frame(i % 4, i if i % 3 else None, pad=300)
        assert q.push(f) == reference.push(f)
    assert q.nbytes > 64 * 1024
    assert q.drain() == reference.drain()
    assert q.watermark == reference.watermark


@pytest.mark.parametrize("prefix", ["a\nb", "a\rb", "a\0b"])
def test_id_prefix_cannot_inject_a_field(prefix: str) -> None:
    with pytest.raises(FrameError):
        FrameQueue(max_frames=1, max_bytes=1, id_prefix=prefix)


@pytest.mark.parametrize(
    "call",
    [
        lambda: FrameQueue(max_frames=0, max_bytes=10),
        lambda: FrameQueue(max_frames=1, max_bytes=0),
        lambda: FrameQueue(max_frames=1, max_bytes=10).drain(0),
        lambda: FrameQueue(max_frames=1, max_bytes=10).set_watermark(-1),
    ],
)
def test_bad_frame_queue_arguments_raise_value_error(call: Any) -> None:
    with pytest.raises(ValueError, match="must be"):
        call()


# ---------------------------------------------------------------------------------------------------------------
# Property tests: Rust against the model, step by step
# ---------------------------------------------------------------------------------------------------------------


class PriorityQueueMachine(RuleBasedStateMachine):
    """Random pushes, pops, removes and clears on both queues; every result and all state must agree."""

    handles = Bundle("handles")

    @initialize(max_items=st.integers(1, 8), max_bytes=st.integers(1, 64))
    def create(self, max_items: int, max_bytes: int) -> None:
        self.rust: PriorityQueue[int] = PriorityQueue(max_items=max_items, max_bytes=max_bytes)
        self.model: model.PriorityQueue[int] = model.PriorityQueue(max_items=max_items, max_bytes=max_bytes)
        self.next_item = 0

    @rule(target=handles, priority=st.integers(0, 3), size=st.integers(0, 24), resumable=st.booleans())
    def push(self, priority: int, size: int, resumable: bool) -> int:
        self.next_item += 1
        got = self.rust.push(self.next_item, priority, size=size, resumable=resumable)
        want = self.model.push(self.next_item, priority, size=size, resumable=resumable)
        assert (got.outcome, got.handle, got.evicted) == (want.outcome, want.handle, want.evicted)
        return got.handle

    @rule()
    def pop(self) -> None:
        assert self.rust.pop() == self.model.pop()

    @rule()
    def pop_with_slow_aging(self) -> None:
        # Nothing ages by a million seconds during a test: the aged path must give plain priority order.
        assert self.rust.pop(aging_ms=10**9) == self.model.pop(aging_ms=10**9)

    @rule()
    def peek(self) -> None:
        assert self.rust.peek() == self.model.peek()

    @rule(handle=handles)
    def remove(self, handle: int) -> None:
        assert self.rust.remove(handle) == self.model.remove(handle)

    @rule(handle=st.integers(-1, 40))
    def remove_any(self, handle: int) -> None:
        assert self.rust.remove(handle) == self.model.remove(handle)

    @rule()
    def clear(self) -> None:
        assert self.rust.clear() == self.model.clear()

    @invariant()
    def same_state(self) -> None:
        assert len(self.rust) == len(self.model)
        assert self.rust.nbytes == self.model.nbytes
        assert self.rust.depths() == self.model.depths()
        assert self.rust.counters() == self.model.counters()


class FrameQueueMachine(RuleBasedStateMachine):
    """Random frames (increasing seqs, random priorities) and drains; the drained bytes must agree, `id:` included."""

    @initialize(
        max_frames=st.integers(1, 8),
        max_bytes=st.integers(40, 300),
        watermark=st.integers(0, 3),
        prefix=st.sampled_from(["", "E-"]),
    )
    def create(self, max_frames: int, max_bytes: int, watermark: int, prefix: str) -> None:
        self.rust = FrameQueue(max_frames=max_frames, max_bytes=max_bytes, id_prefix=prefix)
        self.model = model.FrameQueue(max_frames=max_frames, max_bytes=max_bytes, id_prefix=prefix)
        if watermark:
            self.rust.set_watermark(watermark)
            self.model.set_watermark(watermark)
        self.seq = watermark

    @rule(priority=st.integers(0, 3), resumable=st.booleans(), gap=st.integers(1, 3), pad=st.integers(0, 40))
    def push(self, priority: int, resumable: bool, gap: int, pad: int) -> None:
        seq = None
        if resumable:
            self.seq += gap
            seq = self.seq
        f = frame(priority, seq, pad)
        assert self.rust.push(f) == self.model.push(f)

    @rule(max_bytes=st.none() | st.integers(1, 200))
    def drain(self, max_bytes: int | None) -> None:
        if max_bytes is None:
            assert self.rust.drain() == self.model.drain()
        else:
            assert self.rust.drain(max_bytes) == self.model.drain(max_bytes)

    @invariant()
    def same_state(self) -> None:
        assert len(self.rust) == len(self.model)
        assert self.rust.nbytes == self.model.nbytes
        assert self.rust.watermark == self.model.watermark
        assert self.rust.counters() == self.model.counters()


TestPriorityQueueMachine = PriorityQueueMachine.TestCase
TestPriorityQueueMachine.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
TestFrameQueueMachine = FrameQueueMachine.TestCase
TestFrameQueueMachine.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
