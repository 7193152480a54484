"""Tasks: commands to the server's scheduler, the events that follow a task, and what a task ended with.

:meth:`Client.run_task` submits an ``execute`` command and follows the task's events on the stream (the reader
routes them here before the dispatcher sees them) until it completes, or raises :class:`~sse_fast.errors.TaskError`
when it ends ``failed``, ``cancelled`` or ``timed_out``. The other commands and ``GET /api/tasks/{taskId}`` are here
too.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, TypedDict, Unpack, overload

import msgspec

from sse_fast.client._base import _answer_error, _call, _ClientBase, log
from sse_fast.client.answers import CommandAnswer, Priority, PublishAnswer, TaskRecord, TasksAnswer
from sse_fast.errors import TaskError
from sse_fast.models import CommandPayload, Envelope, ProgressPayload, new_message_id

__all__ = ["Action", "CommandAction", "CommandOptions"]

Action = Literal["execute", "cancel", "pause", "resume", "query", "sync"]
"""A command's action (PROTOCOL.md section 4)."""
CommandAction = Literal["execute", "cancel", "pause", "resume"]
"""The actions the scheduler answers with a :class:`~sse_fast.client.CommandAnswer`."""


class CommandOptions(TypedDict, total=False):
    """The options of :meth:`Client.send_command` besides ``action`` and ``target``."""

    task: str | None
    task_id: str | None
    params: Mapping[str, Any] | None
    timeout: float | None
    priority: int
    command_id: str | None


_ANSWERS: Final[dict[str, type[TaskRecord | TasksAnswer]]] = {"query": TaskRecord, "sync": TasksAnswer}

_TASK_EVENTS: Final = 256  # recent task events kept for run_task's answer/event race
_WAITER_EVENTS: Final = 64

_TERMINAL: Final = {
    "task_completed": "completed",
    "task_failed": "failed",
    "task_cancelled": "cancelled",
    "task_timed_out": "timed_out",
}


class _TaskWaiter:
    """The events of one task, for :meth:`Client.run_task`."""

    def __init__(self, command_id: str) -> None:
        self.command_id = command_id
        self.task_id: str | None = None
        self.events: deque[Envelope] = deque(maxlen=_WAITER_EVENTS)
        self.ready = asyncio.Event()
        self.error: BaseException | None = None

    def matches(self, message: Envelope) -> bool:
        payload = message.payload if isinstance(message.payload, dict) else {}
        if self.task_id is not None and payload.get("taskId") == self.task_id:
            return True
        return self.command_id in (payload.get("commandId"), message.correlation_id)

    def feed(self, message: Envelope) -> None:
        self.events.append(message)
        self.ready.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.ready.set()


class _Tasks(_ClientBase):
    """The commands and task queries of :class:`~sse_fast.client.Client`."""

    def _init_tasks(self) -> None:
        self._task_waiters: dict[str, _TaskWaiter] = {}
        self._task_events: deque[Envelope] = deque(maxlen=_TASK_EVENTS)

    # -- tasks -----------------------------------------------------------------------------------------------

    def _route_task_event(self, message: Envelope) -> None:
        if message.type not in ("command", "progress") or not isinstance(message.payload, dict):
            return
        if message.type == "command" and "event" not in message.payload:
            return  # a command relayed to us, not a scheduler event
        self._task_events.append(message)
        for waiter in self._task_waiters.values():
            if waiter.matches(message):
                waiter.feed(message)

    async def run_task(
        self,
        task: str,
        params: Mapping[str, Any] | None = None,
        *,
        on_progress: Callable[[ProgressPayload], Any] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the scheduler's deadline for the task, not ours
        priority: int = Priority.HIGH,
    ) -> Any:
        """Submit ``task`` to the server's scheduler and wait for its result.

        ``on_progress(progress)`` (sync or async) is called with each :class:`~sse_fast.models.ProgressPayload`.
        Raises :class:`~sse_fast.errors.TaskError` when the task ends ``failed`` (without a retry to come),
        ``cancelled`` or ``timed_out``. ``timeout`` (seconds) is passed to the scheduler. The stream is opened if it
        is not, since the task's events arrive on it.
        """
        if not self._stream_wanted:
            await self.connect()
        command_id = new_message_id()
        waiter = _TaskWaiter(command_id)
        self._task_waiters[command_id] = waiter
        try:
            answer = await self.send_command(
                "execute", task=task, params=params, timeout=timeout, priority=priority, command_id=command_id
            )
            waiter.task_id = answer.task_id
            for message in list(self._task_events):
                if waiter.matches(message) and message not in waiter.events:
                    waiter.feed(message)
            return await self._follow_task(waiter, answer.task_id, on_progress)
        finally:
            self._task_waiters.pop(command_id, None)

    async def _follow_task(
        self, waiter: _TaskWaiter, task_id: str, on_progress: Callable[[ProgressPayload], Any] | None
    ) -> Any:
        while True:
            while not waiter.events:
                if waiter.error is not None:
                    raise waiter.error
                waiter.ready.clear()
                await waiter.ready.wait()
            message = waiter.events.popleft()
            payload: dict[str, Any] = message.payload
            if message.type == "progress":
                if on_progress is not None:
                    await self._report_progress(on_progress, payload)
                continue
            event = payload.get("event")
            if event == "task_completed":
                return payload.get("result")
            if event in _TERMINAL and not (event == "task_failed" and payload.get("willRetry")):
                status = _TERMINAL[str(event)]
                error = payload.get("error")
                raise TaskError(f"task {task_id} {status}" + (f": {error}" if error else ""), task_id=task_id,
                                status=status, error=error)  # fmt: skip

    async def _report_progress(self, on_progress: Callable[[ProgressPayload], Any], payload: dict[str, Any]) -> None:
        try:
            progress = msgspec.convert(payload, ProgressPayload)
        except msgspec.ValidationError:
            log.warning("ignoring a malformed progress event: %.200r", payload)
            return
        try:
            await _call(on_progress, progress)
        except Exception:
            self._counts["handler_errors"] += 1
            log.exception("on_progress callback failed")

    async def query_progress(self, task_id: str) -> TaskRecord:
        """The server's record of a task (``GET /api/tasks/{taskId}``): status, progress, result..."""
        response = await self._http.get(
            f"{self.base_url}/api/tasks/{task_id}", headers=self._headers, timeout=self.connection_timeout
        )
        if response.status_code != 200:
            raise _answer_error(response.status_code, response.content)
        return msgspec.json.decode(response.content, type=TaskRecord)

    async def cancel_task(self, task_id: str) -> CommandAnswer:
        """Send a ``cancel`` command for ``task_id``."""
        return await self.send_command("cancel", task_id=task_id)

    async def pause_task(self, task_id: str) -> CommandAnswer:
        """Send a ``pause`` command for ``task_id``."""
        return await self.send_command("pause", task_id=task_id)

    async def resume_task(self, task_id: str) -> CommandAnswer:
        """Send a ``resume`` command for ``task_id``."""
        return await self.send_command("resume", task_id=task_id)

    @overload
    async def send_command(
        self, action: CommandAction, *, target: None = None, **options: Unpack[CommandOptions]
    ) -> CommandAnswer: ...
    @overload
    async def send_command(
        self, action: Literal["query"], *, target: None = None, **options: Unpack[CommandOptions]
    ) -> TaskRecord: ...
    @overload
    async def send_command(
        self, action: Literal["sync"], *, target: None = None, **options: Unpack[CommandOptions]
    ) -> TasksAnswer: ...
    @overload
    async def send_command(
        self, action: Action, *, target: str, **options: Unpack[CommandOptions]
    ) -> PublishAnswer: ...

    async def send_command(
        self,
        action: Action,
        *,
        task: str | None = None,
        task_id: str | None = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the scheduler's deadline for the task, not ours
        priority: int = Priority.HIGH,
        target: str | None = None,
        command_id: str | None = None,
    ) -> CommandAnswer | TaskRecord | TasksAnswer | PublishAnswer:
        """Send a command (PROTOCOL.md section 4) to the scheduler, or to the client ``target``.

        ``timeout`` is in seconds (sent as milliseconds). The answer's type follows the action (typed by overloads):
        ``execute``, ``cancel``, ``pause`` and ``resume`` answer a :class:`~sse_fast.client.CommandAnswer`
        (``task_id``, ``status``); ``query`` the task's :class:`~sse_fast.models.TaskRecord`; ``sync`` the caller's
        tasks (:class:`~sse_fast.models.TasksAnswer`); a command relayed to a ``target`` client a
        :class:`~sse_fast.client.PublishAnswer`.
        """
        payload = CommandPayload(
            command_id=command_id or new_message_id(),
            action=action,
            task=task,
            task_id=task_id,
            params=dict(params) if params is not None else None,
            timeout=None if timeout is None else max(1, round(timeout * 1000)),
        )
        envelope = Envelope(type="command", payload=msgspec.to_builtins(payload), priority=priority, target=target)
        answer: type[CommandAnswer | TaskRecord | TasksAnswer | PublishAnswer] = (
            PublishAnswer if target is not None else _ANSWERS.get(action, CommandAnswer)
        )
        return await self._send_envelope(envelope, answer)
