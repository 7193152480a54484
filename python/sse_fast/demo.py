"""The demo task handlers that ``sse_fast.app:app`` registers (PROTOCOL.md section 10): ``sleep``, ``count``, ``fail``.

They are small on purpose, and show the handler API: progress, checkpoints (pause and cancel), publishing, the
``finally`` that runs on cancel and timeout, retries and :class:`~sse_fast.scheduler.PermanentError`.
"""

from __future__ import annotations

import asyncio
import math
from typing import Annotated, Any

from msgspec import Meta

from sse_fast.scheduler.core import PermanentError, Scheduler, TaskContext

__all__ = ["count", "fail", "register", "scheduler", "sleep"]

_STEP = 0.1  # seconds between the checkpoints of `sleep`


def scheduler(**options: Any) -> Scheduler:
    """A new :class:`Scheduler` (``options`` are its constructor's) with the demo handlers registered."""
    demo = Scheduler(**options)
    register(demo)
    return demo


def register(scheduler: Scheduler) -> None:
    """Register ``sleep``, ``count`` and ``fail`` on ``scheduler``."""
    scheduler.task("sleep", timeout=3600)(sleep)
    scheduler.task("count", timeout=3600)(count)
    scheduler.task("fail", max_retries=2)(fail)


async def sleep(ctx: TaskContext, seconds: Annotated[float, Meta(ge=0, le=3600)] = 1.0) -> dict[str, float]:
    """Sleep ``seconds``, with a checkpoint every 0.1 s and progress (and an ETA) as it goes."""
    steps = max(1, math.ceil(seconds / _STEP))
    for step in range(1, steps + 1):
        await ctx.checkpoint()
        await asyncio.sleep(seconds / steps)
        left_ms = int((steps - step) * seconds / steps * 1000)
        await ctx.progress(100 * step / steps, eta_ms=left_ms)
    return {"slept": seconds}


async def count(
    ctx: TaskContext,
    to: Annotated[int, Meta(ge=1, le=100_000)] = 10,
    interval: Annotated[float, Meta(ge=0, le=60)] = 0.5,
) -> dict[str, int]:
    """Publish ``{"taskId", "count": n}`` to the client for n = 1..``to``, ``interval`` seconds apart.

    Its ``finally`` shows cleanup on cancel and timeout: a stopped count publishes ``{"taskId", "stopped": n}``.
    """
    n = 0
    try:
        for n in range(1, to + 1):
            await ctx.checkpoint()
            await ctx.publish({"taskId": ctx.task_id, "count": n})
            await ctx.progress(100 * n / to, description=f"{n}/{to}")
            if n < to:
                await asyncio.sleep(interval)
        return {"counted": to}
    finally:
        if ctx.cancelled:
            await ctx.publish({"taskId": ctx.task_id, "stopped": n})


async def fail(ctx: TaskContext, message: str = "failed on purpose", permanent: bool = False) -> None:
    """Fail with ``message`` (retried twice); with ``permanent`` raise :class:`PermanentError` (never retried)."""
    await ctx.checkpoint()
    if permanent:
        raise PermanentError(message)
    raise RuntimeError(message)
