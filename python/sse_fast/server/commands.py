"""The HTTP face of the scheduler: ``POST /api/commands`` (PROTOCOL.md section 4) and ``/api/tasks``.

``execute`` goes to this worker's :class:`~sse_fast.scheduler.Scheduler`; everything else goes through the
:class:`~sse_fast.scheduler.registry.TaskRegistry` the broker chose, which finds tasks wherever they run (with Redis, on
any node). Refusals (:class:`~sse_fast.errors.SchedulerError` and the other :class:`~sse_fast.errors.HttpError`)
go up to the routes, which answer them; a command with ``requireAck`` gets its ``ack`` event either way.

=========================================  ============================  ============================================
request                                    answer                        notes
=========================================  ============================  ============================================
``execute``                                202 ``{success, taskId,        a repeated ``commandId`` (same client, any
                                           status: "pending"}``          node) answers 200 with ``duplicate: true``
``cancel`` / ``POST .../cancel``           200 ``{..., "cancelled"}``    after the handler's cleanup has run
``pause`` / ``POST .../pause``             200 paused, or 202 running    202: it pauses at its next checkpoint
``resume`` / ``POST .../resume``           200 ``{..., status}``         ``running``, or ``pending`` (waits a slot)
``query`` / ``GET /api/tasks/{taskId}``    200 task record
``sync`` / ``GET /api/tasks``              200 ``{"tasks": [...]}``      ``?all=true``: every client's (admin)
=========================================  ============================  ============================================
"""

from __future__ import annotations

from sse_fast.errors import ErrorBody, SchedulerError
from sse_fast.models import CommandAnswer, CommandPayload, Envelope, TaskRecord, TasksAnswer, convert
from sse_fast.scheduler.core import Scheduler
from sse_fast.scheduler.registry import LocalTaskRegistry, TaskRegistry
from sse_fast.server.auth import Authenticator, Identity
from sse_fast.server.http import HttpError, Request, Response, Route, api_route, json_response

__all__ = ["CommandService"]

_E = ErrorBody


class CommandService:
    """Routes commands and task requests to the scheduler (``execute``) and the task registry (the rest)."""

    def __init__(self, scheduler: Scheduler, registry: TaskRegistry | None = None, *, auth: Authenticator) -> None:
        self.scheduler = scheduler
        self.registry = registry or LocalTaskRegistry(scheduler)
        self.auth = auth

    def routes(self) -> list[Route]:
        """The ``/api/tasks`` endpoints."""
        control = {200: CommandAnswer, 404: _E, 409: _E, 503: _E, 504: _E}
        return [
            api_route("GET", "/api/tasks", self.list_tasks, "The caller's tasks (`?all=true`: everyone's, admin)", None,
                      {200: TasksAnswer, 503: _E}, query=(("all", "`true`: every client's tasks (admin)."),)),
            api_route("GET", "/api/tasks/{taskId}", self.get_task, "One task record", None,
                      {200: TaskRecord, 404: _E, 503: _E}),
            api_route("POST", "/api/tasks/{taskId}/cancel", self.cancel_task, "Cancel a task", None, control),
            api_route("POST", "/api/tasks/{taskId}/pause", self.pause_task,
                      "Pause a task (202: it pauses at its next checkpoint; 429: the client has its limit paused)",
                      None, control | {202: CommandAnswer, 429: _E}),
            api_route("POST", "/api/tasks/{taskId}/resume", self.resume_task, "Resume a paused task", None, control),
        ]  # fmt: skip

    # -- POST /api/commands ----------------------------------------------------------------------------------

    async def submit(self, caller: Identity, envelope: Envelope) -> Response:
        """Handle a command envelope sent by ``caller``."""
        command = convert(envelope.payload, CommandPayload)
        require_ack = command.require_ack or envelope.require_ack
        try:
            return await self._command(caller, command, envelope.priority, require_ack)
        except HttpError:  # a refusal (SchedulerError, AuthFailure, an unreachable broker...): answered by the routes
            if require_ack:
                self.scheduler.ack(caller.client_id, command.command_id, success=False, priority=envelope.priority)
            raise

    async def _command(self, caller: Identity, command: CommandPayload, priority: int, require_ack: bool) -> Response:
        if command.action == "execute":
            assert command.task is not None  # CommandPayload checks it
            record, new = await self.registry.submit(
                caller.client_id,
                command.task,
                command.params,
                priority=priority,
                timeout_ms=command.timeout,
                command_id=command.command_id,
                require_ack=require_ack,
            )
            if not new:
                return json_response(200, CommandAnswer(task_id=record.task_id, status=record.status, duplicate=True))
            await self.registry.flush()  # a query on another node right after this answer finds the task
            return _answer(202, record)
        if command.action == "sync":
            answer = await self._sync(caller)
        else:
            assert command.task_id is not None  # CommandPayload checks it
            answer = await self._act(caller, command.action, command.task_id)
        if require_ack:  # the outcome of an `execute` is its task's end; of anything else, the answer
            self.scheduler.ack(caller.client_id, command.command_id, success=True, priority=priority)
        return answer

    async def _act(self, caller: Identity, action: str, task_id: str) -> Response:
        registry = self.registry
        record = await self._owned(caller, task_id)
        if action == "query":
            return json_response(200, record)
        if action == "cancel":
            return _answer(200, await registry.cancel(task_id))
        if action == "pause":
            record, paused = await registry.pause(task_id)
            return _answer(200 if paused else 202, record)
        return _answer(200, await registry.resume(task_id))

    async def _owned(self, caller: Identity, task_id: str) -> TaskRecord:
        """The task's record, when the caller may see and steer it (its submitter, or an admin). To anyone else
        another client's task does not exist: the same 404 as an unknown id, so that no answer (to a read or to a
        cancel, pause or resume) tells a caller which task ids exist."""
        record = await self.registry.get(task_id)
        if not self.auth.owns(caller, record.client_id):
            raise SchedulerError.task_not_found(task_id)
        return record

    async def _sync(self, caller: Identity) -> Response:
        return json_response(200, TasksAnswer(tasks=await self.registry.tasks(caller.client_id)))

    # -- /api/tasks ------------------------------------------------------------------------------------------

    async def list_tasks(self, req: Request) -> Response:
        """``GET /api/tasks``: the caller's tasks; ``?all=true`` every client's (admin)."""
        caller = self.auth.caller(req)
        if req.query.get("all", "").lower() in ("1", "true", "yes"):
            if not caller.admin:
                raise HttpError(403, "admin_required", "listing every client's tasks needs admin rights")
            return json_response(200, TasksAnswer(tasks=await self.registry.tasks()))
        return await self._sync(caller)

    async def get_task(self, req: Request) -> Response:
        """``GET /api/tasks/{taskId}``."""
        return await self._path_action(req, "query")

    async def cancel_task(self, req: Request) -> Response:
        """``POST /api/tasks/{taskId}/cancel``."""
        return await self._path_action(req, "cancel")

    async def pause_task(self, req: Request) -> Response:
        """``POST /api/tasks/{taskId}/pause``."""
        return await self._path_action(req, "pause")

    async def resume_task(self, req: Request) -> Response:
        """``POST /api/tasks/{taskId}/resume``."""
        return await self._path_action(req, "resume")

    async def _path_action(self, req: Request, action: str) -> Response:
        caller = self.auth.caller(req)
        return await self._act(caller, action, req.path_params["taskId"])


def _answer(status: int, record: TaskRecord) -> Response:
    return json_response(status, CommandAnswer(task_id=record.task_id, status=record.status))
