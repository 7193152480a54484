"""The scheduler core, without HTTP: a recording publisher stands in for the broker."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sse_fast import CRITICAL, HIGH, LOW, NORMAL, PermanentError, Scheduler, TaskContext
from sse_fast.models import Envelope
from sse_fast.scheduler.core import SchedulerError


class Recorder:
    """A publisher that keeps what it is given, and says whether it came through the synchronous path."""

    def __init__(self) -> None:
        self.sent: list[tuple[Envelope, bool]] = []
        self.changed = asyncio.Event()

    async def publish(self, envelope: Envelope, *, exclude: str | None = None) -> None:
        self.sent.append((envelope, False))
        self.changed.set()

    def publish_now(self, envelope: Envelope) -> None:
        self.sent.append((envelope, True))
        self.changed.set()

    def envelopes(self, task_id: str | None = None, type: str | None = None) -> list[Envelope]:
        out = []
        for envelope, _ in self.sent:
            payload = envelope.payload if isinstance(envelope.payload, dict) else {}
            if task_id is not None and payload.get("taskId") != task_id:
                continue
            if type is not None and envelope.type != type:
                continue
            out.append(envelope)
        return out

    def events(self, task_id: str) -> list[str]:
        return [e.payload["event"] for e in self.envelopes(task_id, "command")]

    def event(self, task_id: str, name: str) -> dict[str, Any]:
        found = [e.payload for e in self.envelopes(task_id, "command") if e.payload["event"] == name]
        assert found, f"no {name} for {task_id}: {self.events(task_id)}"
        return found[-1]  # type: ignore[no-any-return]

    async def wait_for(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        deadline = time.monotonic() + within
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"condition not met in {within}s; sent {[e.payload for e, _ in self.sent]}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.05))


@pytest.fixture
async def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def make(recorder: Recorder) -> AsyncIterator[Callable[..., Scheduler]]:
    made: list[Scheduler] = []

    def factory(**options: Any) -> Scheduler:
        options.setdefault("retry_base", 0.01)
        scheduler = Scheduler(**options)
        scheduler.bind(recorder)
        made.append(scheduler)
        return scheduler

    yield factory
    for scheduler in made:
        await scheduler.close()


class Gate:
    """A handler that runs until released, recording how it ended."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: list[str] = []
        self.cleaned: list[str] = []

    async def run(self, ctx: TaskContext) -> str:
        self.started.append(ctx.task_id)
        try:
            while not self.release.is_set():
                await ctx.checkpoint()
                await asyncio.sleep(0.005)  # ok-sleep: the task's simulated work
            return ctx.task_id
        finally:
            self.cleaned.append(ctx.task_id)


def gate_scheduler(make: Callable[..., Scheduler], **options: Any) -> tuple[Scheduler, Gate]:
    scheduler = make(**options)
    gate = Gate()
    scheduler.register("gate", gate.run)
    return scheduler, gate


# -- submitting ----------------------------------------------------------------------------------------------


async def test_a_task_runs_and_its_events_go_to_the_submitter_in_order(make: Any, recorder: Recorder) -> None:
    scheduler = make()

    @scheduler.task("add")
    async def add(ctx: TaskContext, a: int, b: int = 2) -> dict[str, int]:
        return {"sum": a + b, "attempt": ctx.attempt}

    record, new = scheduler.submit("alice", "add", {"a": 1}, command_id="cmd-1")
    assert new
    assert record.status == "pending"
    assert record.client_id == "alice"
    assert record.command_id == "cmd-1"
    final = await scheduler.wait(record.task_id)
    assert final.status == "completed"
    assert final.result == {"sum": 3, "attempt": 1}
    assert final.attempts == 1
    assert final.started_at is not None
    assert final.completed_at is not None
    assert final.completed_at >= final.created_at
    assert recorder.events(record.task_id) == ["task_submitted", "task_started", "task_completed"]
    for envelope in recorder.envelopes(record.task_id):
        assert envelope.target == "alice"
        assert envelope.source == "scheduler"
        assert envelope.correlation_id == "cmd-1"
        assert not envelope.ephemeral
    assert recorder.event(record.task_id, "task_completed")["result"] == {"sum": 3, "attempt": 1}
    assert len({e.id for e in recorder.envelopes()}) == len(recorder.envelopes())  # fresh ids: no dedupe hit


async def test_unknown_handler_is_400_without_the_known_ones(make: Any) -> None:
    scheduler, _ = gate_scheduler(make)
    with pytest.raises(SchedulerError) as err:
        scheduler.submit("alice", "nope")
    assert (err.value.status, err.value.code) == (400, "unknown_task")
    assert err.value.detail == {"task": "nope"}  # the handlers are not listed to every caller (issue 13)


@pytest.mark.parametrize(
    "params",
    [{}, {"a": "one"}, {"a": 1, "c": 3}, {"a": 1.5}],
    ids=["missing", "wrong-type", "unknown", "float-for-int"],
)
async def test_params_are_checked_against_the_signature(make: Any, params: dict[str, Any]) -> None:
    scheduler = make()

    @scheduler.task("add")
    async def add(ctx: TaskContext, a: int, b: int = 2) -> int:
        return a + b

    with pytest.raises(SchedulerError) as err:
        scheduler.submit("alice", "add", params)
    assert (err.value.status, err.value.code) == (422, "invalid_params")
    schema = err.value.detail["params"]  # the handler's parameters as JSON Schema
    props = schema["$defs"][schema["$ref"].rsplit("/", 1)[-1]]["properties"]
    assert props == {"a": {"type": "integer"}, "b": {"type": "integer", "default": 2}}
    assert scheduler.tasks() == []  # nothing left behind


async def test_params_are_bounded_in_size(make: Any) -> None:
    scheduler = make(max_params_bytes=100)

    @scheduler.task("echo")
    async def echo(ctx: TaskContext, text: str) -> str:
        return text

    assert scheduler.submit("alice", "echo", {"text": "x" * 50})[0].status == "pending"
    with pytest.raises(SchedulerError) as err:
        scheduler.submit("alice", "echo", {"text": "x" * 100})
    assert (err.value.status, err.value.code) == (422, "invalid_params")


async def test_var_keyword_handlers_take_any_params(make: Any) -> None:
    scheduler = make()

    @scheduler.task("echo")
    async def echo(ctx: TaskContext, a: int = 0, **rest: Any) -> dict[str, Any]:
        return {"a": a, **rest}

    record, _ = scheduler.submit("alice", "echo", {"x": [1], "a": 5})
    assert (await scheduler.wait(record.task_id)).result == {"a": 5, "x": [1]}


async def test_registration_refuses_what_cannot_run(make: Any) -> None:
    scheduler = make()

    def sync(ctx: TaskContext) -> None: ...

    async def ok(ctx: TaskContext) -> None: ...

    async def no_ctx() -> None: ...

    async def star(ctx: TaskContext, *args: int) -> None: ...

    with pytest.raises(TypeError, match="async def"):
        scheduler.register("sync", sync)
    with pytest.raises(ValueError, match="must match"):
        scheduler.register("bad name", ok)
    with pytest.raises(TypeError, match="TaskContext"):
        scheduler.register("no-ctx", no_ctx)
    with pytest.raises(TypeError, match="by keyword"):
        scheduler.register("star", star)
    with pytest.raises(ValueError, match="timeout"):
        scheduler.register("t", ok, timeout=0)
    scheduler.register("ok", ok)
    with pytest.raises(ValueError, match="already"):
        scheduler.register("ok", ok)
    assert scheduler.handlers == ["ok"]


async def test_a_repeated_command_id_is_the_same_task(make: Any, recorder: Recorder) -> None:
    scheduler, gate = gate_scheduler(make)
    first, new = scheduler.submit("alice", "gate", command_id="c1")
    again, again_new = scheduler.submit("alice", "gate", command_id="c1")
    other, other_new = scheduler.submit("bob", "gate", command_id="c1")
    assert new
    assert not again_new
    assert again.task_id == first.task_id
    assert other_new
    assert other.task_id != first.task_id
    gate.release.set()
    await scheduler.wait(other.task_id)
    assert recorder.events(first.task_id).count("task_submitted") == 1


async def test_the_queue_is_bounded(make: Any) -> None:
    scheduler, gate = gate_scheduler(make, concurrency=1, queue_size=2, client_queue_share=1.0)
    for _ in range(3):  # one runs, two wait (alice may take the whole queue here)
        scheduler.submit("alice", "gate")
    await asyncio.sleep(0)  # ok-sleep: one loop turn, to let other tasks run
    with pytest.raises(SchedulerError) as err:
        scheduler.submit("bob", "gate")
    assert (err.value.status, err.value.code) == (429, "queue_full")
    assert err.value.retry_after >= 1
    gate.release.set()


async def test_a_client_is_held_to_its_share_of_the_queue(make: Any) -> None:
    scheduler, gate = gate_scheduler(make, concurrency=1, queue_size=8)  # a quarter of 8: two waiting per client
    scheduler.submit("alice", "gate")  # runs
    for _ in range(2):
        scheduler.submit("alice", "gate")
    with pytest.raises(SchedulerError) as err:
        scheduler.submit("alice", "gate")
    assert (err.value.status, err.value.code, err.value.detail) == (429, "client_queue_full", {"limit": 2})
    assert err.value.retry_after >= 1
    scheduler.submit("bob", "gate")  # the others still have room
    gate.release.set()


async def test_paused_tasks_are_limited_and_cancelled_past_the_pause_timeout(make: Any, recorder: Recorder) -> None:
    scheduler, gate = gate_scheduler(make, concurrency=1, client_paused=2, pause_timeout=0.2)
    a, _ = scheduler.submit("alice", "gate")
    b, _ = scheduler.submit("alice", "gate")
    c, _ = scheduler.submit("alice", "gate")
    await asyncio.sleep(0)  # ok-sleep: one loop turn, to let `a` start
    assert scheduler.pause(b.task_id)[1] is True  # waiting: held at once
    assert scheduler.pause(a.task_id)[1] is False  # running: at its next checkpoint, and counted already
    with pytest.raises(SchedulerError) as err:
        scheduler.pause(c.task_id)
    assert (err.value.status, err.value.code) == (429, "too_many_paused")
    for task in (a, b):  # both left paused: cancelled, with the reason in the event and the record
        record = await asyncio.wait_for(scheduler.wait(task.task_id), 5)
        assert (record.status, record.error) == ("cancelled", "pause_timeout: paused for longer than 0.2 s")
        ended = [e.payload for e in recorder.envelopes(task.task_id, type="command")]
        assert ended[-1] == {"event": "task_cancelled", "taskId": task.task_id, "status": "cancelled",
                             "reason": "pause_timeout"}  # fmt: skip
    assert a.task_id in gate.cleaned  # the paused handler was cancelled for real: its finally ran
    gate.release.set()
    assert (await asyncio.wait_for(scheduler.wait(c.task_id), 5)).status == "completed"
    assert scheduler.counters()["paused"] == 0
    assert scheduler.counters()["waiting"] == 0
    assert scheduler.counts["pause_timeout"] == 2


# -- cancel and timeout --------------------------------------------------------------------------------------


async def test_cancel_stops_the_running_handler_and_its_cleanup_runs(make: Any, recorder: Recorder) -> None:
    scheduler = make()
    ticks: list[int] = []
    cleaned = asyncio.Event()

    @scheduler.task("ticker")
    async def ticker(ctx: TaskContext) -> None:
        try:
            while True:
                ticks.append(len(ticks))
                await asyncio.sleep(0.005)  # ok-sleep: no checkpoint: the cancellation lands on this await
        finally:
            assert ctx.cancelled
            cleaned.set()

    record, _ = scheduler.submit("alice", "ticker")
    await recorder.wait_for(lambda: len(ticks) >= 3)
    final = await scheduler.cancel(record.task_id)
    assert final.status == "cancelled"
    assert cleaned.is_set()
    seen = len(ticks)
    other, _ = scheduler.submit("alice", "ticker")  # a later task runs a while on the same loop...
    await recorder.wait_for(lambda: len(ticks) >= seen + 3)
    await scheduler.cancel(other.task_id)
    assert recorder.events(record.task_id)[-1] == "task_cancelled"
    assert recorder.event(record.task_id, "task_cancelled")["reason"] == "requested"
    with pytest.raises(SchedulerError) as err:
        await scheduler.cancel(record.task_id)
    assert (err.value.status, err.value.code) == (409, "task_finished")
    with pytest.raises(SchedulerError) as unknown:
        await scheduler.cancel("no-such-task")
    assert (unknown.value.status, unknown.value.code) == (404, "task_not_found")


async def test_cancel_removes_a_pending_task(make: Any, recorder: Recorder) -> None:
    scheduler, gate = gate_scheduler(make, concurrency=1)
    running, _ = scheduler.submit("alice", "gate")
    pending, _ = scheduler.submit("alice", "gate")
    await recorder.wait_for(lambda: gate.started == [running.task_id])
    assert (await scheduler.cancel(pending.task_id)).status == "cancelled"
    gate.release.set()
    await scheduler.wait(running.task_id)
    assert gate.started == [running.task_id]
    assert recorder.events(pending.task_id) == ["task_submitted", "task_cancelled"]


async def test_a_timeout_cancels_the_handler_for_real(make: Any, recorder: Recorder) -> None:
    scheduler = make()
    cleaned: list[str] = []

    @scheduler.task("forever", timeout=0.1, max_retries=3)
    async def forever(ctx: TaskContext) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(ctx.task_id)

    record, _ = scheduler.submit("alice", "forever")
    final = await scheduler.wait(record.task_id)
    assert final.status == "timed_out"
    assert cleaned == [record.task_id]
    assert final.attempts == 1
    assert recorder.events(record.task_id) == ["task_submitted", "task_started", "task_timed_out"]
    assert recorder.event(record.task_id, "task_timed_out")["timeoutMs"] == 100


async def test_a_command_timeout_shortens_the_handlers(make: Any) -> None:
    scheduler = make()

    @scheduler.task("forever", timeout=60)
    async def forever(ctx: TaskContext) -> None:
        await asyncio.Event().wait()

    started = time.monotonic()
    record, _ = scheduler.submit("alice", "forever", timeout_ms=50)
    assert (await scheduler.wait(record.task_id)).status == "timed_out"
    assert time.monotonic() - started < 5


async def test_a_handler_that_ignores_cancellation_is_abandoned(make: Any, recorder: Recorder) -> None:
    scheduler = make(concurrency=1, cancel_grace=0.1)
    stop = asyncio.Event()

    @scheduler.task("stubborn")
    async def stubborn(ctx: TaskContext) -> None:
        while not stop.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)  # ok-sleep: the task's simulated work

    @scheduler.task("quick")
    async def quick(ctx: TaskContext) -> str:
        return "ran"

    record, _ = scheduler.submit("alice", "stubborn")
    after, _ = scheduler.submit("alice", "quick")
    await recorder.wait_for(lambda: "task_started" in recorder.events(record.task_id))
    assert (await scheduler.cancel(record.task_id)).status == "cancelled"
    assert (await scheduler.wait(after.task_id)).result == "ran"  # its slot was freed
    stop.set()


# -- retries -------------------------------------------------------------------------------------------------


async def test_failed_attempts_are_retried_with_backoff(make: Any, recorder: Recorder) -> None:
    scheduler = make(retry_base=0.02)
    attempts: list[int] = []

    @scheduler.task("flaky", max_retries=3)
    async def flaky(ctx: TaskContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RuntimeError(f"attempt {ctx.attempt}")
        return "ok"

    record, _ = scheduler.submit("alice", "flaky")
    final = await scheduler.wait(record.task_id)
    assert final.status == "completed"
    assert final.attempts == 3
    assert attempts == [1, 2, 3]
    assert recorder.events(record.task_id) == [
        "task_submitted",
        *["task_started", "task_failed"] * 2,
        "task_started",
        "task_completed",
    ]
    failed = [e.payload for e in recorder.envelopes(record.task_id, "command") if e.payload["event"] == "task_failed"]
    assert [f["willRetry"] for f in failed] == [True, True]
    assert [f["error"] for f in failed] == ["RuntimeError: attempt 1", "RuntimeError: attempt 2"]
    assert 10 <= failed[0]["retryInMs"] <= 20
    assert 20 <= failed[1]["retryInMs"] <= 40
    commands = recorder.envelopes(record.task_id, "command")
    assert [e.payload["attempt"] for e in commands if e.payload["event"] == "task_started"] == [1, 2, 3]


async def test_retries_stop_at_max_retries(make: Any, recorder: Recorder) -> None:
    scheduler = make()

    @scheduler.task("broken", max_retries=2)
    async def broken(ctx: TaskContext) -> None:
        raise ValueError("nope")

    record, _ = scheduler.submit("alice", "broken")
    final = await scheduler.wait(record.task_id)
    assert final.status == "failed"
    assert final.attempts == 3
    assert final.error == "ValueError: nope"
    assert recorder.events(record.task_id).count("task_started") == 3
    assert recorder.event(record.task_id, "task_failed")["willRetry"] is False


async def test_a_permanent_error_is_not_retried(make: Any, recorder: Recorder) -> None:
    scheduler = make()

    @scheduler.task("bad-input", max_retries=5)
    async def bad_input(ctx: TaskContext) -> None:
        raise PermanentError("no such file")

    record, _ = scheduler.submit("alice", "bad-input")
    final = await scheduler.wait(record.task_id)
    assert (final.status, final.attempts, final.error) == ("failed", 1, "no such file")
    assert recorder.events(record.task_id) == ["task_submitted", "task_started", "task_failed"]


async def test_a_handler_that_exits_or_returns_junk_only_fails_its_task(make: Any) -> None:
    scheduler = make()

    @scheduler.task("exit", max_retries=3)
    async def exit_(ctx: TaskContext) -> None:
        raise SystemExit(3)

    @scheduler.task("junk")
    async def junk(ctx: TaskContext) -> object:
        return object()

    exited, _ = scheduler.submit("alice", "exit")
    final = await scheduler.wait(exited.task_id)
    assert (final.status, final.attempts, final.error) == ("failed", 1, "SystemExit: 3")
    returned, _ = scheduler.submit("alice", "junk")
    final = await scheduler.wait(returned.task_id)
    assert final.status == "failed"
    assert final.error is not None
    assert "not JSON-serialisable" in final.error


# -- pause and resume ----------------------------------------------------------------------------------------


async def test_pause_stops_at_a_checkpoint_releases_the_slot_and_resume_goes_on(make: Any, recorder: Recorder) -> None:
    scheduler = make(concurrency=1)
    steps: list[int] = []

    @scheduler.task("steps")
    async def stepper(ctx: TaskContext, n: int) -> int:
        for i in range(n):
            await ctx.checkpoint()
            steps.append(i)
            await asyncio.sleep(0.005)  # ok-sleep: the task's simulated work
        return len(steps)

    @scheduler.task("quick")
    async def quick(ctx: TaskContext) -> str:
        return "ran while the other was paused"

    record, _ = scheduler.submit("alice", "steps", {"n": 40})
    await recorder.wait_for(lambda: len(steps) >= 3)
    paused_record, took_effect = scheduler.pause(record.task_id)
    assert not took_effect
    assert paused_record.status == "running"
    await recorder.wait_for(lambda: "task_paused" in recorder.events(record.task_id))
    assert scheduler.get(record.task_id).status == "paused"
    at_pause = len(steps)
    other, _ = scheduler.submit("bob", "quick")  # the paused task gave its one slot back
    assert (await scheduler.wait(other.task_id)).status == "completed"
    assert len(steps) == at_pause  # nothing ran past the checkpoint meanwhile
    assert scheduler.resume(record.task_id).status in ("pending", "running")
    final = await scheduler.wait(record.task_id)
    assert final.status == "completed"
    assert final.result == 40
    assert recorder.events(record.task_id) == [
        "task_submitted",
        "task_started",
        "task_paused",
        "task_resumed",
        "task_completed",
    ]
    with pytest.raises(SchedulerError) as err:
        scheduler.resume(record.task_id)
    assert (err.value.status, err.value.code) == (409, "not_paused")


async def test_a_paused_pending_task_is_held_back(make: Any, recorder: Recorder) -> None:
    scheduler, gate = gate_scheduler(make, concurrency=1)
    first, _ = scheduler.submit("alice", "gate")
    held, _ = scheduler.submit("alice", "gate")
    third, _ = scheduler.submit("bob", "gate")
    record, took_effect = scheduler.pause(held.task_id)
    assert took_effect
    assert record.status == "paused"
    gate.release.set()
    await scheduler.wait(third.task_id)  # the third ran, the held one did not
    assert gate.started == [first.task_id, third.task_id]
    assert scheduler.get(held.task_id).status == "paused"
    scheduler.resume(held.task_id)
    assert (await scheduler.wait(held.task_id)).status == "completed"
    assert recorder.events(held.task_id) == [
        "task_submitted",
        "task_paused",
        "task_resumed",
        "task_started",
        "task_completed",
    ]


async def test_the_timeout_clock_stops_while_paused(make: Any, recorder: Recorder) -> None:
    scheduler = make()

    @scheduler.task("slow", timeout=0.3)
    async def slow(ctx: TaskContext) -> str:
        await ctx.checkpoint()
        await asyncio.sleep(0.1)  # ok-sleep: the task's simulated work
        await ctx.checkpoint()
        return "done"

    record, _ = scheduler.submit("alice", "slow")
    scheduler.pause(record.task_id)
    await recorder.wait_for(lambda: "task_paused" in recorder.events(record.task_id))
    await asyncio.sleep(0.4)  # ok-sleep: the pause outlasts the timeout
    assert scheduler.get(record.task_id).status == "paused"
    scheduler.resume(record.task_id)
    assert (await scheduler.wait(record.task_id)).status == "completed"


async def test_a_paused_task_can_be_cancelled(make: Any, recorder: Recorder) -> None:
    scheduler, gate = gate_scheduler(make)
    record, _ = scheduler.submit("alice", "gate")
    await recorder.wait_for(lambda: bool(gate.started))
    scheduler.pause(record.task_id)
    await recorder.wait_for(lambda: "task_paused" in recorder.events(record.task_id))
    assert (await scheduler.cancel(record.task_id)).status == "cancelled"
    assert gate.cleaned == [record.task_id]


# -- concurrency and priority --------------------------------------------------------------------------------


async def test_global_client_and_handler_limits_hold(make: Any) -> None:
    scheduler = make(concurrency=5, client_concurrency=2, queue_size=100)
    running: Counter[str] = Counter()
    peaks: Counter[str] = Counter()

    def enter(*keys: str) -> None:
        for key in keys:
            running[key] += 1
            peaks[key] = max(peaks[key], running[key])

    def leave(*keys: str) -> None:
        for key in keys:
            running[key] -= 1

    def handler(name: str) -> Any:
        async def work(ctx: TaskContext) -> None:
            keys = ("all", f"client:{ctx.client_id}", f"handler:{name}")
            enter(*keys)
            try:
                await asyncio.sleep(0.002 * (1 + hash(ctx.task_id) % 5))  # ok-sleep: the task's simulated work
            finally:
                leave(*keys)

        return work

    scheduler.register("narrow", handler("narrow"), concurrency=1)
    scheduler.register("wide", handler("wide"))
    ids = [
        scheduler.submit(f"client-{i % 5}", "narrow" if i % 4 == 0 else "wide", priority=i % 4)[0].task_id
        for i in range(60)
    ]
    finals = [await scheduler.wait(task_id) for task_id in ids]
    assert all(f.status == "completed" for f in finals)
    assert peaks["all"] == 5  # saturated, never above
    assert max(v for k, v in peaks.items() if k.startswith("client:")) == 2
    assert peaks["handler:narrow"] == 1
    assert scheduler.peak_running == 5
    assert scheduler.counters()["running"] == 0
    assert scheduler.counters()["waiting"] == 0


async def test_priority_order_when_the_pool_is_saturated(make: Any) -> None:
    scheduler, gate = gate_scheduler(make, concurrency=1, client_concurrency=10)
    order: list[str] = []

    @scheduler.task("mark")
    async def mark(ctx: TaskContext, label: str) -> None:
        order.append(label)

    scheduler.submit("alice", "gate")
    submitted = [("low", LOW), ("normal-1", NORMAL), ("high", HIGH), ("normal-2", NORMAL), ("crit", CRITICAL)]
    for label, priority in submitted:
        scheduler.submit("alice", "mark", {"label": label}, priority=priority)
    gate.release.set()
    last = scheduler.submit("alice", "mark", {"label": "last"}, priority=LOW)[0]
    await scheduler.wait(last.task_id)
    assert order == ["crit", "high", "normal-1", "normal-2", "low", "last"]


async def test_aging_lets_low_work_through(make: Any) -> None:
    scheduler, gate = gate_scheduler(make, concurrency=1, client_concurrency=10, aging_ms=40)
    order: list[str] = []

    @scheduler.task("mark")
    async def mark(ctx: TaskContext, label: str) -> None:
        order.append(label)

    scheduler.submit("alice", "gate")
    scheduler.submit("alice", "mark", {"label": "old-low"}, priority=LOW)
    await asyncio.sleep(0.2)  # ok-sleep: the LOW task waits long enough to age to the top
    last = scheduler.submit("alice", "mark", {"label": "new-high"}, priority=HIGH)[0]
    gate.release.set()
    await scheduler.wait(last.task_id)
    assert order == ["old-low", "new-high"]


async def test_a_client_at_its_limit_does_not_block_others(make: Any) -> None:
    scheduler, gate = gate_scheduler(make, concurrency=3, client_concurrency=1)
    order: list[str] = []

    @scheduler.task("mark")
    async def mark(ctx: TaskContext, label: str) -> None:
        order.append(label)

    scheduler.submit("hog", "gate")
    for i in range(3):
        scheduler.submit("hog", "mark", {"label": f"hog-{i}"}, priority=CRITICAL)
    other = scheduler.submit("bob", "mark", {"label": "bob"}, priority=LOW)[0]
    await scheduler.wait(other.task_id)  # runs although hog's CRITICAL work is queued ahead of it
    assert order == ["bob"]
    gate.release.set()
    for record in scheduler.tasks("hog"):
        await scheduler.wait(record.task_id)
    assert order == ["bob", "hog-0", "hog-1", "hog-2"]


# -- progress, publishing, acks ------------------------------------------------------------------------------


async def test_progress_is_rate_limited_and_the_last_value_is_resumable(make: Any, recorder: Recorder) -> None:
    scheduler = make(progress_rate=10)

    @scheduler.task("burst")
    async def burst(ctx: TaskContext) -> None:
        for i in range(1, 100):
            await ctx.progress(i, description=f"step {i}", eta_ms=100 - i)

    record, _ = scheduler.submit("alice", "burst")
    assert (await scheduler.wait(record.task_id)).progress == 99
    progress = recorder.envelopes(record.task_id, "progress")
    assert 1 <= len(progress) <= 3  # 99 reports in well under 0.1 s
    assert progress[0].payload == {"taskId": record.task_id, "progress": 1, "description": "step 1",
                                   "estimatedTimeRemaining": 99}  # fmt: skip
    assert progress[-1].payload["progress"] == 99
    assert not progress[-1].ephemeral
    assert all(p.ephemeral for p in progress[:-1])
    assert all(p.type == "progress" for p in progress)
    kinds = [e.type if e.type == "progress" else e.payload["event"] for e in recorder.envelopes(record.task_id)]
    assert kinds[-2:] == ["progress", "task_completed"]


async def test_the_held_back_progress_is_delivered_while_running(make: Any, recorder: Recorder) -> None:
    scheduler = make(progress_rate=20)
    go_on = asyncio.Event()

    @scheduler.task("two")
    async def two(ctx: TaskContext) -> None:
        await ctx.progress(10)
        await ctx.progress(20)  # within the interval: held back, then sent by the trailing edge
        await go_on.wait()
        await ctx.progress(100)

    record, _ = scheduler.submit("alice", "two")
    await recorder.wait_for(lambda: len(recorder.envelopes(record.task_id, "progress")) == 2)
    assert [p.payload["progress"] for p in recorder.envelopes(record.task_id, "progress")] == [10, 20]
    assert all(p.ephemeral for p in recorder.envelopes(record.task_id, "progress"))
    go_on.set()
    await scheduler.wait(record.task_id)
    last = recorder.envelopes(record.task_id, "progress")[-1]
    assert last.payload["progress"] == 100
    assert not last.ephemeral
    assert len(recorder.envelopes(record.task_id, "progress")) == 3  # 100 was sent resumable once, not twice


async def test_handlers_publish_to_their_client_or_a_topic(make: Any, recorder: Recorder) -> None:
    scheduler = make()

    @scheduler.task("talk")
    async def talk(ctx: TaskContext) -> list[str]:
        return [
            await ctx.publish({"hello": ctx.client_id}),
            await ctx.publish("news", type="text", topic="news.eu"),
        ]

    record, _ = scheduler.submit("alice", "talk", command_id="cmd-9")
    ids = (await scheduler.wait(record.task_id)).result
    published = {e.id: e for e, _ in recorder.sent if e.id in ids}
    direct, topical = published[ids[0]], published[ids[1]]
    assert (direct.target, direct.topic, direct.payload, direct.type) == ("alice", None, {"hello": "alice"}, "json")
    assert (topical.target, topical.topic, topical.type) == (None, "news.eu", "text")
    assert direct.correlation_id == "cmd-9"
    assert direct.source == "scheduler"


async def test_require_ack_sends_an_ack_after_the_outcome(make: Any, recorder: Recorder) -> None:
    scheduler = make()

    @scheduler.task("ok")
    async def ok(ctx: TaskContext) -> None: ...

    @scheduler.task("ko")
    async def ko(ctx: TaskContext) -> None:
        raise PermanentError("ko")

    good, _ = scheduler.submit("alice", "ok", command_id="good", require_ack=True)
    bad, _ = scheduler.submit("alice", "ko", command_id="bad", require_ack=True)
    await scheduler.wait(good.task_id)
    await scheduler.wait(bad.task_id)
    await recorder.wait_for(lambda: len([e for e, _ in recorder.sent if e.type == "ack"]) == 2)
    acks = {e.payload["commandId"]: e for e, _ in recorder.sent if e.type == "ack"}
    assert acks["good"].payload == {"commandId": "good", "success": True}
    assert acks["bad"].payload == {"commandId": "bad", "success": False}
    good_kinds = [e.type if e.type != "command" else e.payload["event"] for e, _ in recorder.sent
                  if e.correlation_id == "good"]  # fmt: skip
    assert good_kinds == ["task_submitted", "task_started", "task_completed", "ack"]


# -- threads -------------------------------------------------------------------------------------------------


async def test_a_thread_handler_blocks_its_thread_not_the_loop(make: Any, recorder: Recorder) -> None:
    scheduler = make()
    threads: list[str] = []
    cleaned = threading.Event()

    @scheduler.task("crunch", run_in="thread")
    async def crunch(ctx: TaskContext, rounds: int) -> int:
        threads.append(threading.current_thread().name)
        try:
            for i in range(rounds):
                await ctx.checkpoint()
                time.sleep(0.1)  # ok-sleep: blocking work: fine in a thread
                await ctx.progress(100 * (i + 1) / rounds)
            return rounds
        finally:
            cleaned.set()

    record, _ = scheduler.submit("alice", "crunch", {"rounds": 3})
    lags = []
    while scheduler.get(record.task_id).status in ("pending", "running"):
        before = time.monotonic()
        await asyncio.sleep(0.005)  # ok-sleep: measuring the loop's lag while a thread handler blocks
        lags.append(time.monotonic() - before)
    final = await scheduler.wait(record.task_id)
    assert final.status == "completed"
    assert final.result == 3
    assert final.progress == 100
    assert threads[0].startswith("sse-fast-task")
    assert max(lags) < 0.08  # a blocked loop would lag 0.1 s
    endless, _ = scheduler.submit("alice", "crunch", {"rounds": 10_000})
    await recorder.wait_for(lambda: scheduler.get(endless.task_id).progress > 0)
    cleaned.clear()
    assert (await scheduler.cancel(endless.task_id)).status == "cancelled"
    assert cleaned.is_set()
    paused, _ = scheduler.submit("alice", "crunch", {"rounds": 10_000})
    await recorder.wait_for(lambda: scheduler.get(paused.task_id).progress > 0)
    scheduler.pause(paused.task_id)
    await recorder.wait_for(lambda: "task_paused" in recorder.events(paused.task_id))
    scheduler.resume(paused.task_id)
    await recorder.wait_for(lambda: "task_resumed" in recorder.events(paused.task_id))
    await scheduler.cancel(paused.task_id)


# -- shutdown and retention ----------------------------------------------------------------------------------


async def test_shutdown_cancels_every_live_task_at_once(make: Any, recorder: Recorder) -> None:
    scheduler, gate = gate_scheduler(make, concurrency=1)
    running, _ = scheduler.submit("alice", "gate", require_ack=True, command_id="run")
    pending, _ = scheduler.submit("bob", "gate")
    await recorder.wait_for(lambda: bool(gate.started))
    count = len(recorder.sent)
    scheduler.shutdown()  # synchronous: the events are out when it returns
    now = recorder.sent[count:]
    assert all(synchronous for _, synchronous in now)
    cancelled = {e.payload["taskId"]: e.payload for e, _ in now if e.type == "command"}
    assert cancelled[running.task_id] == {"event": "task_cancelled", "taskId": running.task_id,
                                          "status": "cancelled", "reason": "shutdown"}  # fmt: skip
    assert cancelled[pending.task_id]["reason"] == "shutdown"
    assert [e.payload for e, _ in now if e.type == "ack"] == [{"commandId": "run", "success": False}]
    with pytest.raises(SchedulerError) as err:
        scheduler.submit("alice", "gate")
    assert (err.value.status, err.value.code) == (503, "shutting_down")
    await scheduler.close()
    assert gate.cleaned == [running.task_id]  # the handler's cleanup ran
    assert recorder.events(running.task_id).count("task_cancelled") == 1


async def test_finished_records_are_dropped_past_the_retention_count(make: Any) -> None:
    scheduler = make(retention_count=3)

    @scheduler.task("noop")
    async def noop(ctx: TaskContext) -> None: ...

    ids = [scheduler.submit("alice", "noop")[0].task_id for _ in range(5)]
    await scheduler.wait(ids[-1])
    assert [r.task_id for r in scheduler.tasks("alice")] == ids[2:]
    with pytest.raises(SchedulerError) as err:
        scheduler.get(ids[0])
    assert err.value.code == "task_not_found"


async def test_finished_records_are_dropped_past_the_retention_time(make: Any) -> None:
    scheduler = make(retention=0.05)

    @scheduler.task("noop")
    async def noop(ctx: TaskContext) -> None: ...

    record, _ = scheduler.submit("alice", "noop")
    await scheduler.wait(record.task_id)
    deadline = time.monotonic() + 5
    while scheduler.tasks():
        assert time.monotonic() < deadline, "the record was never dropped"
        scheduler.tick()
        await asyncio.sleep(0.01)  # ok-sleep: polling with a deadline
    assert scheduler.counters()["records"] == 0


async def test_tasks_lists_one_clients_tasks(make: Any) -> None:
    scheduler, gate = gate_scheduler(make)
    a = scheduler.submit("alice", "gate")[0].task_id
    b = scheduler.submit("bob", "gate")[0].task_id
    assert [r.task_id for r in scheduler.tasks("alice")] == [a]
    assert {r.task_id for r in scheduler.tasks()} == {a, b}
    gate.release.set()
