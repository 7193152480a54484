"""The app the scheduler's end-to-end tests serve: the demo handlers, plus a few that only the tests need.

Run with ``granian --interface rsgi _task_app:app`` (``start_server(..., command="granian", app="_task_app:app")``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from sse_fast import PermanentError, Scheduler, TaskContext, create_app, demo

scheduler: Scheduler = demo.scheduler(retry_base=0.05, cancel_grace=2.0)
_running: Counter[str] = Counter()
_peaks: Counter[str] = Counter()


async def _probe(ctx: TaskContext, name: str, hold: float) -> dict[str, int]:
    keys = ("all", f"client:{ctx.client_id}", f"handler:{name}")
    for key in keys:
        _running[key] += 1
        _peaks[key] = max(_peaks[key], _running[key])
    try:
        await asyncio.sleep(hold)  # ok-sleep: the task's simulated work
        return dict(_peaks)  # the peaks seen so far, by this process itself
    finally:
        for key in keys:
            _running[key] -= 1


@scheduler.task("probe")
async def probe(ctx: TaskContext, hold: float = 0.05) -> dict[str, int]:
    """Hold a slot for ``hold`` seconds; the result is the peak of running tasks (all, per client, per handler)."""
    return await _probe(ctx, "probe", hold)


@scheduler.task("probe-narrow", concurrency=1)
async def probe_narrow(ctx: TaskContext, hold: float = 0.05) -> dict[str, int]:
    """``probe`` under a handler limit of 1."""
    return await _probe(ctx, "probe-narrow", hold)


@scheduler.task("mark")
async def mark(ctx: TaskContext, label: str) -> str:
    """Return ``label`` at once (its task_started shows the order tasks ran in)."""
    return label


@scheduler.task("crunch", run_in="thread")
async def crunch(ctx: TaskContext, rounds: int, seconds: float) -> int:
    """Block its thread ``seconds`` per round, with a checkpoint and progress between rounds."""
    for i in range(rounds):
        await ctx.checkpoint()
        time.sleep(seconds)  # ok-sleep: the point: blocking work in a thread handler
        await ctx.progress(100 * (i + 1) / rounds)
    return rounds


@scheduler.task("permanent", max_retries=5)
async def permanent(ctx: TaskContext) -> None:
    """Fail without retries."""
    raise PermanentError("permanently broken")


app = create_app(scheduler=scheduler)
