"""The scheduler: long tasks that clients start with commands, and where their records are found.

- :mod:`~sse_fast.scheduler.core`: :class:`Scheduler` and :class:`TaskContext`: named handlers run with
  concurrency limits, priorities, timeouts, retries, cancel, pause and resume, their progress published as
  messages;
- :mod:`~sse_fast.scheduler.registry`: task records and controls on one worker (:func:`task_registry` picks the
  registry for the broker);
- :mod:`~sse_fast.scheduler.redis_registry`: the same across a Redis cluster (records mirrored in Redis, controls
  relayed to the node that runs the task).
"""

from __future__ import annotations

from sse_fast.broker import Broker, MemoryBroker
from sse_fast.scheduler.core import PermanentError, Publisher, Scheduler, SchedulerError, TaskContext, TaskStatus
from sse_fast.scheduler.registry import LocalTaskRegistry, TaskRegistry

__all__ = [
    "PermanentError",
    "Publisher",
    "Scheduler",
    "SchedulerError",
    "TaskContext",
    "TaskRegistry",
    "TaskStatus",
    "task_registry",
]


def task_registry(scheduler: Scheduler, broker: Broker) -> TaskRegistry:
    """The registry for ``scheduler``'s tasks on this ``broker``: its own records on one worker (memory), or records
    shared through Redis, with controls relayed to the node that runs the task."""
    if isinstance(broker, MemoryBroker):
        return LocalTaskRegistry(scheduler)
    from sse_fast.broker.redis import RedisBroker  # redis-py is imported only when it is used
    from sse_fast.scheduler.redis_registry import RedisTaskRegistry

    if not isinstance(broker, RedisBroker):
        raise TypeError(f"no task registry for {type(broker).__name__}")
    return RedisTaskRegistry(scheduler, broker)
