"""The task registry: where the commands endpoint finds task records and sends task controls (PROTOCOL.md section 4).

A :class:`~sse_fast.scheduler.Scheduler` runs the tasks submitted to its own worker; the registry answers for the
whole server. :func:`sse_fast.scheduler.task_registry` chooses it by the broker:

- :class:`LocalTaskRegistry` (the memory broker): the scheduler's own records, nothing more. One worker.
- :class:`~sse_fast.scheduler.redis_registry.RedisTaskRegistry` (the Redis broker): every node mirrors its tasks'
  records into Redis, so that any node can list and query them, and sends ``cancel``/``pause``/``resume`` to the
  node that runs the task and answers with that node's answer.

A task runs on the node that accepted its ``execute``, from submit to end (it is never moved or stolen).
"""

from __future__ import annotations

import abc
from typing import Any

from sse_fast._core import NORMAL
from sse_fast.models import TaskRecord
from sse_fast.scheduler.core import Scheduler

__all__ = ["LocalTaskRegistry", "TaskRegistry"]


class TaskRegistry(abc.ABC):
    """Task records and controls, wherever the task runs. Refusals raise :class:`~sse_fast.scheduler.SchedulerError`
    (``task_not_found`` 404, ``task_finished`` and ``not_paused`` 409, ...)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    async def submit(
        self,
        client_id: str,
        task: str,
        params: dict[str, Any] | None = None,
        *,
        priority: int = NORMAL,
        timeout_ms: int | None = None,
        command_id: str | None = None,
        require_ack: bool = False,
    ) -> tuple[TaskRecord, bool]:
        """Queue a task on this node's scheduler (:meth:`Scheduler.submit`): its record, and whether it is new (False:
        this client's ``command_id`` was submitted before, on this node or, with a shared registry, on any)."""
        return self.scheduler.submit(
            client_id,
            task,
            params,
            priority=priority,
            timeout_ms=timeout_ms,
            command_id=command_id,
            require_ack=require_ack,
        )

    @abc.abstractmethod
    async def get(self, task_id: str) -> TaskRecord:
        """The task's record."""

    @abc.abstractmethod
    async def tasks(self, client_id: str | None = None) -> list[TaskRecord]:
        """The tasks of ``client_id`` (every client's when None), oldest first."""

    @abc.abstractmethod
    async def cancel(self, task_id: str) -> TaskRecord:
        """Cancel the task; returns once its handler's cleanup has run (see :meth:`Scheduler.cancel`)."""

    @abc.abstractmethod
    async def pause(self, task_id: str) -> tuple[TaskRecord, bool]:
        """Pause the task; the record and whether the pause has taken effect already."""

    @abc.abstractmethod
    async def resume(self, task_id: str) -> TaskRecord:
        """Resume a paused task."""

    async def flush(self) -> None:  # noqa: B027 - optional hook; the local registry writes nothing
        """Wait until every change of this node's tasks is visible to the other nodes."""


class LocalTaskRegistry(TaskRegistry):
    """The scheduler's own tasks: what one worker on the memory broker has."""

    async def get(self, task_id: str) -> TaskRecord:
        return self.scheduler.get(task_id)

    async def tasks(self, client_id: str | None = None) -> list[TaskRecord]:
        return self.scheduler.tasks(client_id)

    async def cancel(self, task_id: str) -> TaskRecord:
        return await self.scheduler.cancel(task_id)

    async def pause(self, task_id: str) -> tuple[TaskRecord, bool]:
        return self.scheduler.pause(task_id)

    async def resume(self, task_id: str) -> TaskRecord:
        return self.scheduler.resume(task_id)
