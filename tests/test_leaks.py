"""Leak checks (issue 14, item 4): the scheduler's tables after 10,000 tasks, and the binding's reference counts.

The scheduler runs in-process with its own API; afterwards every table it keeps (counters per client and handler,
the queue, parked and resuming tasks, runners, timers, the outbox, records and the command index) must be back at
its baseline: empty, or for finished records at most ``retention_count``. The binding's operations run in a loop
and Python's object counts, the reference counts of the objects handed in, and traced memory must come back to
where they were. Each check is shown to fail on a deliberate leak, so that a pass means something.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from sse_fast import (
    NORMAL,
    Decoder,
    PriorityQueue,
    Scheduler,
    TaskContext,
    _core,
    encode_comment,
    encode_event,
)
from sse_fast._core import (
    Frame,
    FrameQueue,
    Hub,
    ReplayLog,
    encode_json_frame,
    encode_replay,
    format_cursor,
    parse_cursor,
)
from sse_fast.models import Envelope, TaskRecord
from sse_fast.scheduler import core

TASKS = 10_000


class Sink:
    """A publisher that counts what it is given and keeps nothing (a recorder would itself be the leak)."""

    def __init__(self) -> None:
        self.count = 0

    async def publish(self, envelope: Envelope, *, exclude: str | None = None) -> None:
        self.count += 1

    def publish_now(self, envelope: Envelope) -> None:
        self.count += 1


def leftovers(scheduler: Scheduler) -> dict[str, int]:
    """Every table of the scheduler that is not at its baseline, with its size (empty: no leak)."""
    s: Any = scheduler  # the private tables are the point here
    sizes = {
        "running": s._running,
        "waiting": s._waiting,
        "queue": len(s._queue),
        "per_client": len(s._per_client),
        "per_handler": sum(map(bool, s._per_handler.values())),  # keyed by handler name: bounded, zeros may stay
        "client_waiting": len(s._client_waiting),
        "client_paused": len(s._client_paused),
        "parked": len(s._parked),
        "resuming": len(s._resuming),
        "runners": len(s._runners),
        "outbox": len(s._outbox),
        "live_tasks": sum(t.state != "done" for t in s._tasks.values()),
        "armed_timers": sum(t.timer is not None or t.pause_timer is not None for t in s._tasks.values()),
        "kept_kwargs": sum(bool(t.kwargs) for t in s._tasks.values()),
        "records_over_retention": max(0, len(s._tasks) - scheduler.retention_count),
        "finished_vs_records": abs(len(s._finished) - len(s._tasks)),
        "command_index_vs_records": abs(len(s._by_command) - len(s._tasks)),
        "task_objects_alive": max(0, _alive(core._Task) - scheduler.retention_count),
    }
    return {name: size for name, size in sizes.items() if size}


def _alive(kind: type) -> int:
    gc.collect()
    return sum(type(o) is kind for o in gc.get_objects())


def _scheduler() -> Scheduler:
    scheduler = Scheduler(
        concurrency=64,
        client_concurrency=64,
        queue_size=TASKS,
        retention_count=50,
        retry_base=0.001,
        retry_max=0.002,
        cancel_grace=1.0,
        client_queue_share=1.0,
    )
    scheduler.bind(Sink())
    attempts: Counter[str] = Counter()

    @scheduler.task("ok")
    async def ok(ctx: TaskContext, n: int = 0) -> dict[str, int]:
        await ctx.progress(50)
        return {"n": n}

    @scheduler.task("flaky", max_retries=2)
    async def flaky(ctx: TaskContext, n: int = 0) -> int:
        attempts[ctx.task_id] += 1
        if attempts[ctx.task_id] < 2:
            raise RuntimeError("first attempt fails")
        del attempts[ctx.task_id]
        return n

    @scheduler.task("stuck")
    async def stuck(ctx: TaskContext, n: int = 0) -> None:
        await asyncio.Event().wait()

    @scheduler.task("slow", timeout=0.002)
    async def slow(ctx: TaskContext, n: int = 0) -> None:
        await asyncio.sleep(1)

    return scheduler


async def _run_batch(scheduler: Scheduler, start: int, count: int) -> None:
    """``count`` tasks from 16 clients: a quarter each completed, cancelled, timed out, and failed once then retried
    to completion."""
    ids, cancels = [], []
    kinds = ("ok", "stuck", "slow", "flaky")
    for n in range(start, start + count):
        kind = kinds[n % 4]
        record, _ = scheduler.submit(f"client-{n % 16}", kind, {"n": n}, priority=n % 4)
        ids.append(record.task_id)
        if kind == "stuck":
            cancels.append(record.task_id)
    # Half the cancels hit a waiting task, half a running one.
    for task_id in cancels[::2]:
        await scheduler.cancel(task_id)
    await asyncio.sleep(0)  # ok-sleep: one loop turn, so that some stuck tasks start before they are cancelled
    for task_id in cancels[1::2]:
        if scheduler.get(task_id).status not in ("cancelled",):
            await scheduler.cancel(task_id)
    records = await asyncio.gather(*(_final(scheduler, task_id) for task_id in ids))
    statuses = Counter(r.status for r in records if r is not None)
    assert set(statuses) <= {"completed", "cancelled", "timed_out"}, statuses


async def _final(scheduler: Scheduler, task_id: str) -> TaskRecord | None:
    """The task's final record, or None when it ended and left retention before this wait began: gather starts its
    waits one loop step apart, and tasks finishing in between may push earlier ones out of retention_count."""
    return await scheduler.wait(task_id) if scheduler.has(task_id) else None


async def _drained(scheduler: Scheduler) -> None:
    """Wait (10 s at most) for the runners to exit and the outbox to be published."""
    s: Any = scheduler
    for _ in range(3):
        pending = [*s._runners, *([s._pump] if s._pump is not None else [])]
        if pending:
            await asyncio.wait(pending, timeout=10)


async def test_ten_thousand_tasks_leave_the_scheduler_tables_at_baseline() -> None:
    scheduler = _scheduler()
    baseline = _alive(core._Task)
    for start in range(0, TASKS, 1000):
        await _run_batch(scheduler, start, 1000)
    await _drained(scheduler)
    scheduler.tick()
    counts = scheduler.counts
    assert counts["submitted"] == TASKS
    assert counts["cancelled"] == TASKS // 4
    assert counts["completed"] == TASKS // 2  # ok and flaky (after one retry)
    assert counts["timed_out"] == TASKS // 4
    assert leftovers(scheduler) == {}
    assert _alive(core._Task) - baseline <= scheduler.retention_count
    await scheduler.close()


async def test_a_task_cancelled_before_its_first_step_has_its_handler_cancelled() -> None:
    """Regression (found by the check above): a task cancelled after dispatch but before its runner's first step had
    no handler to cancel yet; the handler then ran on, abandoned after cancel_grace, and leaked for ever."""
    scheduler = _scheduler()
    started = asyncio.Event()

    @scheduler.task("waits")
    async def waits(ctx: TaskContext) -> None:
        started.set()
        await asyncio.Event().wait()

    record, _ = scheduler.submit("alice", "waits")
    assert scheduler.get(record.task_id).status == "running"  # dispatched at once; its runner has not run yet
    began = asyncio.get_running_loop().time()
    cancelled = await scheduler.cancel(record.task_id)  # awaited in this task: the runner has not stepped yet
    assert cancelled.status == "cancelled"
    assert asyncio.get_running_loop().time() - began < 0.5  # not abandoned after cancel_grace (1 s)
    await _drained(scheduler)
    handlers = [t for t in asyncio.all_tasks() if t.get_name().startswith("sse-fast handler waits")]
    assert handlers == []
    await scheduler.close()


async def test_the_scheduler_check_catches_a_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    """With retention disabled (records never dropped), the same check reports the leak."""
    monkeypatch.setattr(Scheduler, "_expire", lambda self: None)
    scheduler = _scheduler()
    await _run_batch(scheduler, 0, 200)
    await _drained(scheduler)
    found = leftovers(scheduler)
    assert found["records_over_retention"] == 150
    assert found["task_objects_alive"] >= 150
    await scheduler.close()


# -- the binding ---------------------------------------------------------------------------------------------


CORE_TYPES = [getattr(_core, name) for name in dir(_core) if isinstance(getattr(_core, name), type)]


def _objects() -> int:
    """Python objects the collector tracks. The binding's instances are not tracked (no references to traverse):
    tracemalloc sees them (PyO3 allocates them with the Python allocator), and the resident size their Rust
    parts."""
    gc.collect()
    return len(gc.get_objects())


def _rss() -> int:
    """Resident memory in bytes: what Rust allocates (frame bodies, queues) is not seen by tracemalloc."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def _measure(operation: Callable[[], None], rounds: int) -> tuple[int, int, int]:
    """Run ``operation`` ``rounds`` times after a warm-up; returns the growth of (tracked objects, traced bytes,
    resident bytes)."""
    for _ in range(50):
        operation()
    objects, (before, _), rss = _objects(), tracemalloc.get_traced_memory(), _rss()
    for _ in range(rounds):
        operation()
    gc.collect()
    after, _ = tracemalloc.get_traced_memory()
    return _objects() - objects, after - before, _rss() - rss


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def _hub_round(data: bytes, kept: list[Any] | None = None) -> None:
    """Frames shared between queues: one publish to three connections (a large one releases the GIL), drains that
    hand bytes to Python, a push, then every connection removed with frames still queued."""
    hub = Hub(queue_frames=64, queue_bytes=1 << 20, id_prefix="ep-")
    conns = [hub.add("alice", ["a.*"]), hub.add("bob", ["a.>"]), hub.add("carol", [])]
    for seq in range(1, 6):
        frame = Frame(data, event="message", priority=seq % 4, seq=seq)
        hub.publish(frame, topic="a.b")
        hub.publish(frame, exclude="alice")
        hub.push(conns[2], frame)
        if kept is not None:
            kept.append(frame)
    hub.push_all(b": keepalive\n\n")
    out = hub.drain(conns[0], 200)
    assert out
    hub.set_watermark(conns[1], 3)
    for conn in conns:
        hub.remove(conn)


def _replay_round(data: bytes) -> None:
    log = ReplayLog(epoch="ep", max_frames=8, max_bytes=1 << 20, ttl_ms=60_000)
    for n in range(12):
        log.append(data, event="message", priority=n % 4, topic="a.b" if n % 2 else None, now_ms=n)
    result = log.since("ep-3", client_id="alice", topics=["a.*"], now_ms=20)
    assert result.frames or result.gap
    cursor = log.cursor(log.head)
    assert log.parse(cursor) == log.head
    frames = log.since("ep-8", client_id="bob", topics=[], now_ms=21).frames
    assert encode_replay(frames, id_prefix="ep-", chunk_bytes=1 << 20)[1] == len(frames)


def _wire_round(data: bytes) -> None:
    text = data.decode()
    stream = encode_event(text, event="e", id="ep-1", retry=10) + encode_comment("c") + encode_json_frame(data)
    decoder = Decoder(max_line=1 << 20, max_event=1 << 22)
    events = decoder.feed(stream[:7]) + decoder.feed(stream[7:])
    assert [e.data for e in events] == [text, text]
    decoder.reset()
    assert parse_cursor(format_cursor("ep", 7), "ep") == 7


def _queue_round(item: object) -> None:
    queue: PriorityQueue[object] = PriorityQueue(max_items=4, max_bytes=100)
    handles = [queue.push(item, n % 4, size=10).handle for n in range(6)]
    queue.remove(handles[-1])
    queue.pop(aging_ms=1)
    queue.clear()
    frames = FrameQueue(max_frames=8, max_bytes=1 << 16, id_prefix="ep-")
    frames.push(Frame(b'{"a":1}', event="m", seq=1))
    frames.drain()


DATA = b'{"payload":"' + b"x" * 40_000 + b'"}'  # over the hub's GIL-release threshold when fanned out

ROUNDS = [
    pytest.param(lambda: _hub_round(DATA), id="hub"),
    pytest.param(lambda: _replay_round(DATA), id="replay"),
    pytest.param(lambda: _wire_round(DATA), id="wire"),
    pytest.param(lambda: _queue_round(DATA), id="queue"),
]


@pytest.mark.parametrize("operation", ROUNDS)
def test_the_binding_returns_objects_and_memory_to_baseline(operation: Callable[[], None], traced: None) -> None:
    refs = sys.getrefcount(DATA)
    objects, memory, rss = _measure(operation, 500)
    assert sys.getrefcount(DATA) == refs, "a call kept a reference to the bytes it was given"
    assert objects <= 20, f"{objects} Python objects more after 500 rounds"
    assert memory < 256 * 1024, f"{memory} traced bytes more after 500 rounds (each round moves over 100 KB)"
    assert rss < 16 << 20, f"resident memory grew by {rss} bytes over 500 rounds"


def test_the_binding_check_catches_kept_frames(traced: None) -> None:
    """The same measure reports a deliberate leak: frames kept by the caller, five a round (their 40 KB bodies are
    Rust allocations, seen by the resident size only)."""
    kept: list[Any] = []
    _, memory, rss = _measure(lambda: _hub_round(DATA, kept), 500)
    assert memory > 5 * 500 * 32  # the Frame objects themselves
    assert rss > 16 << 20  # their bodies


@pytest.mark.xfail(strict=True, reason="PyO3 0.25 never releases an instance's reference to its type (PyO3 #6223)")
def test_instances_release_their_type() -> None:
    """Upstream bug, harmless here (a count, not memory: see docs/reliability.md). Strict: when a PyO3 upgrade
    fixes it, this passes and the xfail must go."""
    refs = {kind: sys.getrefcount(kind) for kind in CORE_TYPES}
    _hub_round(b"{}")
    gc.collect()
    assert {kind: sys.getrefcount(kind) for kind in CORE_TYPES} == refs


def test_a_kept_python_object_is_seen_by_its_refcount() -> None:
    """A PriorityQueue that is never cleared keeps its items: the refcount check sees it."""
    item = object()
    refs = sys.getrefcount(item)
    kept = []
    for _ in range(10):
        queue: PriorityQueue[object] = PriorityQueue(max_items=4)
        queue.push(item, NORMAL)
        kept.append(queue)
    assert sys.getrefcount(item) == refs + 10
    del queue
    kept.clear()
    assert sys.getrefcount(item) == refs
