"""The command scheduler: named task handlers run as asyncio tasks, driven by clients (PROTOCOL.md section 4).

Register handlers on a :class:`Scheduler`, hand it to :func:`sse_fast.create_app`, and clients run them with
``execute`` commands::

    scheduler = Scheduler()

    @scheduler.task("resize", timeout=30, max_retries=2, concurrency=4)
    async def resize(ctx: TaskContext, url: str, width: int = 640) -> dict[str, Any]:
        for step in range(10):
            await ctx.checkpoint()  # pause and cancel take effect here
            ...
            await ctx.progress(10 * (step + 1))
        return {"url": url}  # the task's result

    app = create_app(scheduler=scheduler)

How a task lives::

    submit ─► pending ─► running ─► completed | failed | cancelled | timed_out
                 │  ▲        │  ▲
                 │  │        ▼  │ (a failed attempt with retries left waits its backoff as pending)
                 └► paused ◄─┘  (pause: at once when pending, at the next checkpoint when running)

- **Slots.** A task runs when a slot is free under three limits: the global one (``SSE_FAST_SCHEDULER_CONCURRENCY``),
  the client's (``SSE_FAST_SCHEDULER_CLIENT_CONCURRENCY``, so that one client cannot starve the others) and the
  handler's (``concurrency=``).
- **The queue.** Waiting tasks sit in the Rust :class:`~sse_fast._core.PriorityQueue`: higher priority first, FIFO
  within a priority, aged so that LOW work is never starved. A task popped while its client or handler is at its
  limit is *parked* under that limit (in pop order) and pushed back, at its aged priority, when the limit frees up.
  Tasks waiting for a slot (queued, parked, in retry backoff, paused) are bounded by ``SSE_FAST_SCHEDULER_QUEUE_SIZE``;
  past it, a submit is refused (429 ``queue_full``).
- **Fair shares.** One client may not take the queue from the others: its waiting tasks are bounded by a share of the
  queue (``SSE_FAST_SCHEDULER_CLIENT_QUEUE_SHARE``, 429 ``client_queue_full``), its paused tasks by
  ``SSE_FAST_SCHEDULER_CLIENT_PAUSED`` (a pause past it is 429 ``too_many_paused``), and a task paused for longer than
  ``SSE_FAST_SCHEDULER_PAUSE_TIMEOUT`` is cancelled (``task_cancelled``, reason ``pause_timeout``; its record's
  ``error`` says so). Admins and API keys get no exemption: the queue is one per worker, whoever fills it.
- **Cancellation is real.** Cancel, timeout and shutdown cancel the handler's coroutine: ``CancelledError`` is raised
  at its current ``await``, its ``finally`` blocks run, and the task ends once they have (``cancel_grace`` at most;
  a handler that swallows the cancellation and keeps going is abandoned, logged, and its slot freed).
  :meth:`TaskContext.checkpoint` raises ``CancelledError`` again for a handler that caught the first one.
- **Pause releases the slot.** A paused task gives its slot back at the checkpoint where it stops, so that paused
  work can never block the pool (a client could otherwise stall the server by pausing its tasks). On resume it
  takes the next free slot before any pending task (it holds state in memory, pending work holds none), and its
  timeout clock, stopped while paused, runs on from where it stopped.
- **Retries.** An attempt that raises is retried up to ``max_retries`` times after an exponential backoff with
  jitter; :class:`PermanentError` ends the task at once, and so do timeouts.
- **Events.** Every transition is published, in order, to the submitting client (``type: command``,
  ``source: scheduler``, resumable). Progress is ``type: progress``: at most ``progress_rate`` per second per task,
  ephemeral, with the latest value always delivered (trailing edge); the last progress of a task (100, or its last
  value when it ends) is resumable, so a client that reconnects sees where it ended.
- **Threads.** A handler registered with ``run_in="thread"`` runs its coroutine on its own event loop in a worker
  thread, so that CPU-bound or blocking code between its awaits never delays the streams; its ``ctx`` works the
  same (the calls hop to the server's loop).

Every store is bounded: live tasks by the slots plus the queue bound, finished records by
``SSE_FAST_SCHEDULER_RETENTION`` (seconds) and ``SSE_FAST_SCHEDULER_RETENTION_COUNT``, and the outbox of events
by back-pressure on the handlers that publish into it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import inspect
import logging
import random
import re
import threading
import time
import typing
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, TypeVar

import msgspec

from sse_fast._core import CRITICAL, NORMAL, PriorityQueue, validate_topic
from sse_fast.errors import PermanentError, SchedulerError
from sse_fast.models import CLIENT_ID_PATTERN, TYPE_PATTERN, Envelope, TaskRecord, new_message_id
from sse_fast.settings import Settings

__all__ = [
    "PermanentError",
    "Publisher",
    "Scheduler",
    "SchedulerError",
    "TaskContext",
    "TaskStatus",
]

log = logging.getLogger("sse_fast.scheduler")

TaskStatus = Literal["pending", "running", "paused", "completed", "failed", "cancelled", "timed_out"]
RunIn = Literal["loop", "thread"]
Handler = Callable[..., Coroutine[Any, Any, Any]]
F = TypeVar("F", bound=Handler)

SOURCE: Final = "scheduler"
_NAME = re.compile(TYPE_PATTERN)
_CLIENT_ID = re.compile(CLIENT_ID_PATTERN)
_FINISHED: Final = frozenset({"completed", "failed", "cancelled", "timed_out"})
# A handler's publishes wait while more events than this are waiting to go out (back-pressure), until half drained.
_OUTBOX_HIGH = 1024
_MAX_ERROR = 1000
_CANCELLED = object()


class Publisher(Protocol):
    """Where the scheduler's events go: the app's broker (or a test double)."""

    async def publish(self, envelope: Envelope, *, exclude: str | None = None) -> Any:
        """Deliver one envelope."""
        ...

    def publish_now(self, envelope: Envelope) -> None:
        """Deliver without awaiting: the shutdown path runs in a signal handler."""
        ...


def _now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Spec:
    """A registered handler."""

    name: str
    fn: Handler
    timeout: float | None
    max_retries: int
    concurrency: int | None
    run_in: RunIn
    params: type[msgspec.Struct]
    extra_params: bool  # the handler takes **kwargs: unknown params are passed through

    def bind(self, params: dict[str, Any]) -> dict[str, Any]:
        """Validate ``params`` against the handler's signature; the keyword arguments to call it with."""
        try:
            value = msgspec.convert(params, self.params)
        except msgspec.ValidationError as exc:
            raise SchedulerError(
                422,
                "invalid_params",
                f"invalid params for task {self.name!r}: {exc}",
                {"task": self.name, "params": msgspec.json.schema(self.params)},
            ) from None
        kwargs = {name: getattr(value, name) for name in self.params.__struct_fields__}
        if self.extra_params:
            kwargs.update({k: v for k, v in params.items() if k not in kwargs})
        return kwargs


def _params_struct(name: str, fn: Handler) -> tuple[type[msgspec.Struct], bool]:
    """A msgspec Struct for the parameters of ``fn`` after its first (the context); and whether it takes **kwargs."""
    signature = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:  # an annotation that does not resolve: say so now, not at the first request
        raise TypeError(f"task handler {name!r}: cannot resolve its type hints: {exc}") from exc
    params = list(signature.parameters.values())
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        raise TypeError(f"task handler {name!r} must take the TaskContext as its first positional parameter")
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    extra = False
    for param in params[1:]:
        if param.kind is param.VAR_KEYWORD:
            extra = True
        elif param.kind in (param.POSITIONAL_ONLY, param.VAR_POSITIONAL):
            raise TypeError(f"task handler {name!r}: parameter {param.name!r} must be passable by keyword")
        elif param.default is param.empty:
            fields.append((param.name, hints.get(param.name, Any)))
        else:
            fields.append((param.name, hints.get(param.name, Any), _default(param.default)))
    struct = msgspec.defstruct(f"{name}_params", fields, kw_only=True, forbid_unknown_fields=not extra)
    try:
        msgspec.json.Decoder(struct)
    except TypeError as exc:
        raise TypeError(f"task handler {name!r}: its parameters must be JSON types: {exc}") from None
    return struct, extra


def _default(value: Any) -> Any:
    if isinstance(value, list | dict | set | bytearray):  # msgspec wants a factory for mutable defaults
        return msgspec.field(default_factory=lambda: copy.deepcopy(value))
    return value


# ---------------------------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------------------------

# Where a task is: in the queue, parked under a full limit, waiting out a retry backoff, paused before it ran
# ("held"); or with a live handler: running (holds a slot), paused at a checkpoint (holds none), resumed but
# waiting for a slot ("resuming"); or done.
_State = Literal["queued", "parked", "backoff", "held", "running", "paused", "resuming", "done"]
_ACTIVE: Final = frozenset({"running", "paused", "resuming"})


@dataclass(slots=True)
class _Progress:
    """Per-task progress rate limiting."""

    last_sent: float = -1e9
    last: dict[str, Any] | None = None
    last_resumable: bool = False
    pending: dict[str, Any] | None = None
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True, eq=False)
class _Task:
    """A task: its public record and the scheduler's bookkeeping."""

    id: str
    command_id: str
    client_id: str
    spec: _Spec
    params: dict[str, Any]
    kwargs: dict[str, Any]
    priority: int
    timeout: float | None
    require_ack: bool
    created_at: int
    status: TaskStatus = "pending"
    progress: float = 0.0
    attempts: int = 0
    started_at: int | None = None
    completed_at: int | None = None
    result: Any = None
    error: str | None = None
    # bookkeeping
    state: _State = "queued"
    waiting_since: float = 0.0  # loop time it started waiting for a slot (aging)
    handle: int = 0  # in the priority queue
    holds_slot: bool = False
    stop_reason: str | None = None
    stop_requested: asyncio.Future[None] | None = None
    stop_handler: Callable[[], object] | None = None
    pause_requested: bool = False
    resumed: asyncio.Future[None] | None = None
    deadline: float | None = None  # loop time the running attempt times out
    remaining: float | None = None  # timeout left while paused
    timer: asyncio.TimerHandle | None = None  # timeout or retry backoff
    done: asyncio.Future[None] | None = None
    prog: _Progress = field(default_factory=_Progress)
    counted_paused: bool = False  # in its client's count of paused tasks (paused, or a pause requested)
    pause_timer: asyncio.TimerHandle | None = None  # cancels it once paused for pause_timeout

    def record(self) -> TaskRecord:
        return TaskRecord(
            task_id=self.id,
            command_id=self.command_id,
            client_id=self.client_id,
            task=self.spec.name,
            params=self.params,
            priority=self.priority,
            status=self.status,
            progress=self.progress,
            attempts=self.attempts,
            created_at=self.created_at,
            started_at=self.started_at,
            completed_at=self.completed_at,
            result=self.result,
            error=self.error,
        )


class TaskContext:
    """What a handler gets as its first argument: who it runs for, and its ways to talk back.

    Every coroutine method works the same from a ``run_in="thread"`` handler (the call hops to the server's loop).
    """

    __slots__ = ("_scheduler", "_task", "attempt", "client_id", "command_id", "task", "task_id")

    def __init__(self, scheduler: Scheduler, task: _Task) -> None:
        self._scheduler = scheduler
        self._task = task
        self.task_id: str = task.id
        """The task's id."""
        self.command_id: str = task.command_id
        """The ``commandId`` of the ``execute`` command that submitted it."""
        self.client_id: str = task.client_id
        """The client that submitted it (its events go there)."""
        self.task: str = task.spec.name
        """The handler's name."""
        self.attempt: int = task.attempts
        """1 for the first attempt, 2 for the first retry, ..."""

    @property
    def cancelled(self) -> bool:
        """Whether the task is being stopped (cancelled, timed out, shut down): for ``finally`` blocks."""
        return self._task.stop_reason is not None

    async def progress(self, percent: float, description: str | None = None, eta_ms: int | None = None) -> None:
        """Report progress (0..100); rate-limited per task, the latest value is always delivered."""
        if not 0 <= percent <= 100:
            raise ValueError(f"progress must be within 0..100, not {percent}")
        if eta_ms is not None and eta_ms < 0:
            raise ValueError("eta_ms must be >= 0")
        await self._hop(self._scheduler._progress(self._task, float(percent), description, eta_ms))

    async def checkpoint(self) -> None:
        """Where pause and cancel take effect: a paused task waits here; a cancelled one raises CancelledError."""
        await self._hop(self._scheduler._checkpoint(self._task))

    async def publish(
        self,
        payload: Any,
        *,
        type: str = "json",
        target: str | None = None,
        topic: str | None = None,
        priority: int | None = None,
        ephemeral: bool = False,
    ) -> str:
        """Publish a message (to the submitting client unless ``target`` or ``topic`` says otherwise); its id."""
        return await self._hop(self._scheduler._publish(self._task, payload, type, target, topic, priority, ephemeral))

    async def _hop(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._scheduler.loop
        if asyncio.get_running_loop() is loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))


T = TypeVar("T")


class _ThreadRun:
    """A handler's coroutine on its own event loop in a worker thread, cancellable from the server's loop."""

    def __init__(self, make: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelled = False

    def __call__(self) -> Any:
        return asyncio.run(self._main())

    async def _main(self) -> Any:
        with self._lock:
            if self._cancelled:
                return _CANCELLED
            self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        try:
            return await self._make()
        except asyncio.CancelledError:
            if self._cancelled:
                return _CANCELLED  # a CancelledError cannot cross into the executor's future
            raise

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._loop is not None and self._task is not None:
                with contextlib.suppress(RuntimeError):  # its loop has closed: the handler is done
                    self._loop.call_soon_threadsafe(self._task.cancel)


# ---------------------------------------------------------------------------------------------------------------
# The scheduler
# ---------------------------------------------------------------------------------------------------------------


class Scheduler:
    """Named task handlers and the tasks clients run with them.

    Options left to None come from the app's settings (``SSE_FAST_SCHEDULER_*``) when :func:`sse_fast.create_app`
    binds the scheduler, and from their defaults otherwise. ``aging_ms``: a waiting task's priority rises one level
    per ``aging_ms`` waited. ``progress_rate``: progress events per second per task. Retry ``n`` waits
    ``min(retry_max, retry_base * 2**(n-1))`` seconds times a random factor in [0.5, 1]. ``cancel_grace``: how long
    a cancelled handler may take to clean up. ``max_result_bytes``: the largest JSON result kept (a larger one
    fails the task); ``max_params_bytes``: the largest JSON params accepted (records keep them).
    ``client_queue_share``, ``client_paused`` and ``pause_timeout``: a client's share of the queue, its paused tasks
    and how long one may stay paused (``SSE_FAST_SCHEDULER_CLIENT_QUEUE_SHARE`` and the next two).
    """

    def __init__(
        self,
        *,
        concurrency: int | None = None,
        client_concurrency: int | None = None,
        queue_size: int | None = None,
        retention: float | None = None,
        retention_count: int | None = None,
        aging_ms: int = 30_000,
        progress_rate: float = 10.0,
        retry_base: float = 0.5,
        retry_max: float = 30.0,
        cancel_grace: float = 5.0,
        max_result_bytes: int = 64 * 1024,
        max_params_bytes: int = 64 * 1024,
        client_queue_share: float | None = None,
        client_paused: int | None = None,
        pause_timeout: float | None = None,
    ) -> None:
        self._given = (concurrency, client_concurrency, queue_size, retention, retention_count)
        self._given_fair = (client_queue_share, client_paused, pause_timeout)
        self.aging_ms = aging_ms
        self.progress_interval = 1.0 / progress_rate
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.cancel_grace = cancel_grace
        self.max_result_bytes = max_result_bytes
        self.max_params_bytes = max_params_bytes
        self._specs: dict[str, _Spec] = {}
        self._publisher: Publisher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._closing = False
        self.configure(Settings())
        # Every task known: live ones (bounded by slots + queue_size) and finished ones (retention).
        self._tasks: dict[str, _Task] = {}
        self._by_command: dict[tuple[str, str], str] = {}
        self._finished: OrderedDict[str, float] = OrderedDict()  # task id -> loop time it finished
        self._waiting = 0  # live tasks that hold no slot: the queue bound applies to them
        self._running = 0
        self._per_client: Counter[str] = Counter()
        self._per_handler: Counter[str] = Counter()
        self._client_waiting: Counter[str] = Counter()  # _waiting, per client: live tasks only
        self._client_paused: Counter[str] = Counter()  # tasks paused or asked to pause, per client: live tasks only
        self._parked: dict[tuple[str, str], deque[_Task]] = {}
        self._resuming: deque[_Task] = deque()  # live tasks only: bounded by the queue size plus the pool
        self._runners: set[asyncio.Task[None]] = set()
        self._outbox: deque[Envelope] = deque()  # handler publishes wait past _OUTBOX_HIGH (_room); events: per task
        self._pump: asyncio.Task[None] | None = None
        self._drained: asyncio.Event | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._watchers: list[Callable[[TaskRecord], None]] = []
        # Counters for metrics and tests.
        self.peak_running = 0
        self.counts: Counter[str] = Counter()

    # -- configuration ---------------------------------------------------------------------------------------

    def configure(self, settings: Settings) -> None:
        """Take the limits not given to the constructor from ``settings`` (before the first task)."""
        if self._started:
            raise RuntimeError("the scheduler's limits cannot change once it has run a task")
        concurrency, client_concurrency, queue_size, retention, retention_count = self._given
        self.concurrency: int = concurrency or settings.scheduler_concurrency
        self.client_concurrency: int = client_concurrency or settings.scheduler_client_concurrency
        self.queue_size: int = queue_size or settings.scheduler_queue_size
        self.retention: float = retention or settings.scheduler_retention
        self.retention_count: int = retention_count or settings.scheduler_retention_count
        share, paused, pause_timeout = self._given_fair
        share = share or settings.scheduler_client_queue_share
        self.client_queue: int = max(1, int(share * self.queue_size))
        self.client_paused: int = paused or settings.scheduler_client_paused
        self.pause_timeout: float = pause_timeout or settings.scheduler_pause_timeout
        self._queue: PriorityQueue[_Task] = PriorityQueue(max_items=self.queue_size)

    def bind(self, publisher: Publisher, settings: Settings | None = None) -> None:
        """Send events through ``publisher`` (the app's broker), with limits from ``settings``."""
        if settings is not None:
            self.configure(settings)
        self._publisher = publisher

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run on ``loop`` (the worker's; it may not be running yet)."""
        self._loop = loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the scheduler runs on (the running one, if :meth:`start` was not called)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def task(
        self,
        name: str,
        *,
        timeout: float | None = None,
        max_retries: int = 0,
        concurrency: int | None = None,
        run_in: RunIn = "loop",
    ) -> Callable[[F], F]:
        """Register the decorated ``async def handler(ctx, **params)`` under ``name``.

        ``timeout`` (seconds) cancels an attempt that runs longer (a command's ``timeout`` may shorten it);
        ``max_retries`` retries a failed attempt; ``concurrency`` caps this handler's running tasks; ``run_in=
        "thread"`` runs it in a worker thread (for CPU-bound or blocking code).
        """

        def register(fn: F) -> F:
            self.register(name, fn, timeout=timeout, max_retries=max_retries, concurrency=concurrency, run_in=run_in)
            return fn

        return register

    def register(
        self,
        name: str,
        fn: Handler,
        *,
        timeout: float | None = None,
        max_retries: int = 0,
        concurrency: int | None = None,
        run_in: RunIn = "loop",
    ) -> None:
        """Register ``fn`` under ``name`` (:meth:`task` without the decorator)."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"task name {name!r} must match {TYPE_PATTERN}")
        if name in self._specs:
            raise ValueError(f"a task handler named {name!r} is registered already")
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"task handler {name!r} must be an `async def` function")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be > 0 seconds")
        if max_retries < 0 or (concurrency is not None and concurrency < 1):
            raise ValueError("max_retries must be >= 0 and concurrency >= 1")
        if run_in not in ("loop", "thread"):
            raise ValueError("run_in must be 'loop' or 'thread'")
        params, extra = _params_struct(name, fn)
        self._specs[name] = _Spec(name, fn, timeout, max_retries, concurrency, run_in, params, extra)

    def watch(self, fn: Callable[[TaskRecord], None]) -> None:
        """Call ``fn(record)`` whenever a task's record changes (a transition, a pause or resume, progress).

        A shared task registry mirrors this node's tasks this way; ``fn`` runs on the scheduler's loop and must not
        block (queue the record and write it later).
        """
        self._watchers.append(fn)

    @property
    def handlers(self) -> list[str]:
        """The registered handler names, sorted."""
        return sorted(self._specs)

    # -- the API the commands endpoint uses -------------------------------------------------------------------

    def submit(
        self,
        client_id: str,
        task: str,
        params: dict[str, Any] | None = None,
        *,
        priority: int = NORMAL,
        timeout_ms: int | None = None,
        command_id: str | None = None,
        require_ack: bool = False,
        task_id: str | None = None,
    ) -> tuple[TaskRecord, bool]:
        """Queue a task; returns its record as submitted and whether it is new (False: the same ``command_id``
        from the same client was submitted before, and this is that task). ``task_id``: the id the task gets (a
        shared registry chooses it before it claims the ``command_id`` across nodes); a new one when None.

        Raises :class:`SchedulerError`: ``unknown_task``, ``invalid_params``, ``queue_full``, ``client_queue_full``,
        ``shutting_down``.
        """
        if self._closing:
            raise SchedulerError(503, "shutting_down", "the server is shutting down", retry_after=5)
        command_id = command_id or new_message_id()
        known = self._by_command.get((client_id, command_id))
        if known is not None:
            return self._tasks[known].record(), False
        spec = self._specs.get(task)
        if spec is None:
            # The handlers are not listed: what a server runs is not for every caller to learn.
            raise SchedulerError(400, "unknown_task", f"no task handler named {task!r}", {"task": task})
        params = params or {}
        size = len(msgspec.json.encode(params))
        if size > self.max_params_bytes:
            message = f"params are {size} bytes of JSON, over {self.max_params_bytes}"
            raise SchedulerError(422, "invalid_params", message, {"task": task, "limit": self.max_params_bytes})
        kwargs = spec.bind(params)
        if self._waiting >= self.queue_size:
            raise SchedulerError(429, "queue_full", f"{self._waiting} tasks are waiting already", retry_after=1)
        if self._client_waiting[client_id] >= self.client_queue:
            self.counts["refused_client_queue"] += 1
            message = (
                f"this client has {self._client_waiting[client_id]} tasks waiting already (its share of the queue)"
            )
            raise SchedulerError(429, "client_queue_full", message, {"limit": self.client_queue}, retry_after=1)
        timeout = spec.timeout
        if timeout_ms is not None:
            timeout = timeout_ms / 1000 if timeout is None else min(timeout, timeout_ms / 1000)
        t = _Task(
            id=task_id or new_message_id(),
            command_id=command_id,
            client_id=client_id,
            spec=spec,
            params=params,
            kwargs=kwargs,
            priority=max(0, min(CRITICAL, priority)),
            timeout=timeout,
            require_ack=require_ack,
            created_at=_now_ms(),
        )
        self._started = True
        self._tasks[t.id] = t
        self._by_command[(client_id, command_id)] = t.id
        self._wait(t, 1)
        self.counts["submitted"] += 1
        self._event(t, "task_submitted", task=spec.name, priority=t.priority)
        record = t.record()
        self._enqueue(t)
        self._dispatch()
        return record, True

    def submitted(self, client_id: str, command_id: str) -> str | None:
        """The id of the task this scheduler holds for ``(client_id, command_id)``, if any."""
        return self._by_command.get((client_id, command_id))

    def lost(self, record: TaskRecord) -> None:
        """Tell the task's client that another node's task ended with its node (``task_failed``, ``worker_lost``):
        ``record`` is the final record, as the node that noticed the death wrote it."""
        fields = {"error": record.error, "reason": "worker_lost", "attempt": record.attempts, "willRetry": False}
        payload = {"event": "task_failed", "taskId": record.task_id, "status": record.status, **fields}
        self._send(self._envelope("command", record.client_id, payload, record.priority, record.command_id))

    def get(self, task_id: str) -> TaskRecord:
        """The record of a task (``task_not_found`` when unknown or dropped)."""
        return self._get(task_id).record()

    def tasks(self, client_id: str | None = None) -> list[TaskRecord]:
        """The tasks of ``client_id`` (every client's when None), oldest first."""
        self._expire()
        return [t.record() for t in self._tasks.values() if client_id is None or t.client_id == client_id]

    async def cancel(self, task_id: str, *, reason: str = "requested") -> TaskRecord:
        """Cancel a task: a waiting one at once, a running one by cancelling its handler (returns once its cleanup
        has run, ``cancel_grace`` at most). ``task_finished`` when it has ended already."""
        t = self._get(task_id)
        if t.state == "done":
            raise SchedulerError(409, "task_finished", f"task {task_id} has {t.status} already", {"status": t.status})
        if t.state in _ACTIVE:
            self._stop(t, reason)
            assert t.done is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(t.done), self.cancel_grace + 1)
        else:
            self._unqueue(t)
            self._finish(t, "cancelled", "task_cancelled", reason=reason)
        return t.record()

    def pause(self, task_id: str) -> tuple[TaskRecord, bool]:
        """Pause a task: a waiting one at once, a running one at its next checkpoint. Returns the record and whether
        the pause has taken effect already. ``task_finished`` when it has ended; ``too_many_paused`` when the client
        has its limit of paused tasks."""
        t = self._get(task_id)
        if t.state == "done":
            raise SchedulerError(409, "task_finished", f"task {task_id} has {t.status} already", {"status": t.status})
        if t.state in ("paused", "held"):
            return t.record(), True
        if not t.counted_paused and self._client_paused[t.client_id] >= self.client_paused:
            self.counts["refused_paused"] += 1
            message = f"this client has {self.client_paused} paused tasks already: resume or cancel one first"
            raise SchedulerError(429, "too_many_paused", message, {"limit": self.client_paused}, retry_after=1)
        if t.state == "resuming":  # resumed, not yet back to work: stay paused
            self._resuming.remove(t)
            t.state, t.status = "paused", "paused"
            self._changed(t)
            return t.record(), True
        if t.state == "running":
            t.pause_requested = True
            self._track_pause(t)
            return t.record(), False
        self._unqueue(t)
        t.state, t.status = "held", "paused"
        self._event(t, "task_paused")
        return t.record(), True

    def resume(self, task_id: str) -> TaskRecord:
        """Resume a paused task (``not_paused`` when it is not paused; a pending pause request is withdrawn)."""
        t = self._get(task_id)
        if t.state == "running" and t.pause_requested:
            t.pause_requested = False
            self._track_pause(t)
            return t.record()
        if t.state == "held":
            t.status = "pending"
            self._event(t, "task_resumed")
            self._enqueue(t)
            self._dispatch()
        elif t.state == "paused":
            t.state, t.status = "resuming", "pending"
            self._resuming.append(t)
            self._changed(t)
            self._dispatch()
        else:
            raise SchedulerError(409, "not_paused", f"task {task_id} is {t.status}, not paused", {"status": t.status})
        return t.record()

    def owner(self, task_id: str) -> str:
        """The client that submitted the task."""
        return self._get(task_id).client_id

    def has(self, task_id: str) -> bool:
        """Whether this scheduler holds the task (live, or finished and within retention)."""
        return task_id in self._tasks

    def live(self) -> list[TaskRecord]:
        """The records of the tasks that have not ended."""
        return [t.record() for t in self._tasks.values() if t.state != "done"]

    async def wait(self, task_id: str) -> TaskRecord:
        """Wait until the task has ended; its final record."""
        t = self._get(task_id)
        if t.state != "done":
            await asyncio.shield(self._done_future(t))
        return t.record()

    def ack(self, client_id: str, command_id: str, *, success: bool, priority: int = NORMAL) -> None:
        """Send ``client_id`` the ``ack`` event of a ``requireAck`` command."""
        payload = {"commandId": command_id, "success": success}
        self._send(self._envelope("ack", client_id, payload, priority, command_id))

    def tick(self, now: float | None = None) -> None:
        """Periodic work (the app calls it about once a second): drop finished records past their retention."""
        self._expire()

    def counters(self) -> dict[str, int]:
        """Gauges and counters for ``/metrics``."""
        return {
            "running": self._running,
            "waiting": self._waiting,
            "paused": sum(self._client_paused.values()),
            "records": len(self._tasks),
            "peak_running": self.peak_running,
            **{f"tasks_{k}": v for k, v in self.counts.items()},
        }

    # -- shutdown --------------------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Refuse new tasks, cancel every live one (``task_cancelled``, reason ``shutdown``) and deliver the events
        now. Synchronous: it runs from the SIGTERM handler, before the streams close. Handlers' cleanup runs later,
        on the loop (:meth:`close` waits for it)."""
        if self._closing:
            return
        self._closing = True
        for t in [t for t in self._tasks.values() if t.state != "done"]:
            if t.state in _ACTIVE:
                self._stop(t, "shutdown")
            else:
                self._unqueue(t)
            self._finish(t, "cancelled", "task_cancelled", reason="shutdown")
        self._flush_now()

    async def close(self) -> None:
        """:meth:`shutdown`, then wait (``cancel_grace`` at most) for the handlers' cleanup and the last events."""
        self.shutdown()
        if self._runners:
            await asyncio.wait(list(self._runners), timeout=self.cancel_grace)
        self._flush_now()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # -- queueing --------------------------------------------------------------------------------------------

    def _get(self, task_id: str) -> _Task:
        t = self._tasks.get(task_id)
        if t is None:
            raise SchedulerError.task_not_found(task_id)
        return t

    def _enqueue(self, t: _Task, *, keep_age: bool = False) -> None:
        """Push a waiting task, at its priority raised by the levels it has aged already when ``keep_age``."""
        now = self.loop.time()
        level = t.priority
        if keep_age:
            level = min(CRITICAL, level + int((now - t.waiting_since) * 1000) // self.aging_ms)
        else:
            t.waiting_since = now
        pushed = self._queue.push(t, level, resumable=True)
        assert pushed.outcome == "accepted", "the queue holds at most queue_size tasks, all waiting"
        t.state, t.handle = "queued", pushed.handle

    def _unqueue(self, t: _Task) -> None:
        """Take a waiting task out of wherever it waits."""
        if t.state == "queued":
            self._queue.remove(t.handle)
        elif t.state == "parked":
            for key in self._keys(t):
                parked = self._parked.get(key)
                if parked is not None and t in parked:
                    parked.remove(t)
                    if not parked:
                        del self._parked[key]
        elif t.state == "resuming":
            self._resuming.remove(t)
        if t.timer is not None and t.state == "backoff":
            t.timer.cancel()
            t.timer = None

    def _keys(self, t: _Task) -> tuple[tuple[str, str], tuple[str, str]]:
        return ("client", t.client_id), ("handler", t.spec.name)

    def _blocked(self, t: _Task) -> tuple[str, str] | None:
        """The limit that keeps ``t`` from running now, if any."""
        if self._per_client[t.client_id] >= self.client_concurrency:
            return ("client", t.client_id)
        limit = t.spec.concurrency
        if limit is not None and self._per_handler[t.spec.name] >= limit:
            return ("handler", t.spec.name)
        return None

    def _dispatch(self) -> None:
        """Start (or resume) tasks while there are free slots."""
        while not self._closing and self._running < self.concurrency:
            t = self._next_resuming() or self._next_queued()
            if t is None:
                return
            self._acquire(t)
            if t.state == "resuming":
                t.state, t.status = "running", "running"
                assert t.resumed is not None
                t.resumed.set_result(None)
            else:
                self._start(t)

    def _next_resuming(self) -> _Task | None:
        for t in self._resuming:
            if self._blocked(t) is None:
                self._resuming.remove(t)
                return t
        return None

    def _next_queued(self) -> _Task | None:
        while True:
            t = self._queue.pop(aging_ms=self.aging_ms)
            if t is None:
                return None
            key = self._blocked(t)
            if key is None:
                return t
            t.state = "parked"
            self._parked.setdefault(key, deque()).append(t)  # live tasks only: bounded by the queue size

    def _wait(self, t: _Task, delta: int) -> None:
        """Count ``t`` in (1) or out of (-1) the tasks waiting for a slot: overall, and for its client's share."""
        self._waiting += delta
        waiting = self._client_waiting[t.client_id] + delta
        if waiting:
            self._client_waiting[t.client_id] = waiting
        else:
            del self._client_waiting[t.client_id]

    def _acquire(self, t: _Task) -> None:
        self._running += 1
        self._wait(t, -1)
        self._per_client[t.client_id] += 1
        self._per_handler[t.spec.name] += 1
        t.holds_slot = True
        self.peak_running = max(self.peak_running, self._running)

    def _release(self, t: _Task, *, waiting: bool) -> None:
        """Give back ``t``'s slot (``waiting``: it goes on waiting for another), unpark what that frees, dispatch."""
        if not t.holds_slot:
            return
        t.holds_slot = False
        self._running -= 1
        if waiting:
            self._wait(t, 1)
        self._per_client[t.client_id] -= 1
        if not self._per_client[t.client_id]:
            del self._per_client[t.client_id]
        self._per_handler[t.spec.name] -= 1
        self._unpark(("client", t.client_id), self.client_concurrency - self._per_client[t.client_id])
        limit = t.spec.concurrency
        if limit is not None:
            self._unpark(("handler", t.spec.name), limit - self._per_handler[t.spec.name])
        self._dispatch()

    def _unpark(self, key: tuple[str, str], room: int) -> None:
        parked = self._parked.get(key)
        while parked and room > 0:
            self._enqueue(parked.popleft(), keep_age=True)
            room -= 1
        if parked is not None and not parked:
            del self._parked[key]

    # -- running ---------------------------------------------------------------------------------------------

    def _start(self, t: _Task) -> None:
        t.state, t.status = "running", "running"
        t.attempts += 1
        t.started_at = t.started_at or _now_ms()
        t.stop_reason, t.pause_requested = None, False
        t.prog = _Progress()
        if t.attempts > 1:
            t.progress = 0.0
        loop = self.loop
        t.stop_requested = loop.create_future()
        self._done_future(t)
        self._event(t, "task_started", task=t.spec.name, attempt=t.attempts)
        self._arm_timeout(t, t.timeout)
        runner = loop.create_task(self._run(t), name=f"sse-fast task {t.spec.name} {t.id}")
        self._runners.add(runner)
        runner.add_done_callback(self._runners.discard)

    async def _run(self, t: _Task) -> None:
        handler = self._start_handler(t)
        assert t.stop_requested is not None
        if t.stop_requested.done() and t.stop_handler is not None:
            t.stop_handler()  # stopped between dispatch and this first step, when there was no handler to cancel
        try:
            await asyncio.wait([handler, t.stop_requested], return_when=asyncio.FIRST_COMPLETED)
            if not handler.done():  # stopped: give its cleanup time to run
                await asyncio.wait([handler], timeout=self.cancel_grace)
        except asyncio.CancelledError:  # the loop is closing
            if t.stop_handler is not None:
                t.stop_handler()
            raise
        finally:
            self._disarm_timeout(t)
        if not handler.done():
            grace = self.cancel_grace
            log.warning("task %s (%s) ignored its cancellation for %.1fs: abandoned", t.id, t.spec.name, grace)
            handler.add_done_callback(_consume)
        self._settle(t, handler)

    def _start_handler(self, t: _Task) -> asyncio.Future[Any]:
        ctx = TaskContext(self, t)

        async def call() -> Any:
            try:
                return await t.spec.fn(ctx, **t.kwargs)
            except (SystemExit, KeyboardInterrupt) as exc:  # a handler must not end the worker
                raise PermanentError(f"{type(exc).__name__}: {exc}") from None

        if t.spec.run_in == "thread":
            run = _ThreadRun(call)
            t.stop_handler = run.cancel
            return self.loop.run_in_executor(self._threads(), run)
        handler = self.loop.create_task(call(), name=f"sse-fast handler {t.spec.name} {t.id}")
        t.stop_handler = handler.cancel
        return handler

    def _threads(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            # A thread per running or paused thread task at most: slots plus the waiting bound. Threads are made
            # on demand, so this is a ceiling, not a cost.
            workers = self.concurrency + self.queue_size
            self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="sse-fast-task")
        return self._pool

    def _settle(self, t: _Task, handler: asyncio.Future[Any]) -> None:
        """Turn the end of an attempt into the task's next state."""
        if t.state == "done":  # finished already (shutdown)
            self._release(t, waiting=False)
            return
        if t.stop_reason is not None or handler.cancelled():
            if handler.done() and not handler.cancelled() and handler.exception() is not None:
                log.warning("task %s (%s) raised while stopping: %r", t.id, t.spec.name, handler.exception())
            if t.stop_reason == "timed_out":
                self._finish(t, "timed_out", "task_timed_out", timeoutMs=int((t.timeout or 0) * 1000))
            else:
                self._finish(t, "cancelled", "task_cancelled", reason=t.stop_reason or "handler")
            return
        exc = handler.exception()
        if exc is None:
            self._complete(t, handler.result())
        elif isinstance(exc, PermanentError) or t.attempts > t.spec.max_retries:
            log.info("task %s (%s) failed: %r", t.id, t.spec.name, exc)
            self._fail(t, exc)
        else:
            self._retry(t, exc)

    def _complete(self, t: _Task, result: Any) -> None:
        if result is _CANCELLED:
            self._finish(t, "cancelled", "task_cancelled", reason="handler")
            return
        try:
            size = len(msgspec.json.encode(result))
        except (TypeError, ValueError, OverflowError) as exc:
            self._fail(t, PermanentError(f"the result is not JSON-serialisable: {exc}"))
            return
        if size > self.max_result_bytes:
            self._fail(t, PermanentError(f"the result is {size} bytes of JSON, over {self.max_result_bytes}"))
            return
        t.result = result
        self._finish(t, "completed", "task_completed", result=result)

    def _fail(self, t: _Task, exc: BaseException) -> None:
        t.error = _describe(exc)
        self._finish(t, "failed", "task_failed", error=t.error, attempt=t.attempts, willRetry=False)

    def _retry(self, t: _Task, exc: BaseException) -> None:
        delay = min(self.retry_max, self.retry_base * 2 ** (t.attempts - 1)) * random.uniform(0.5, 1.0)
        log.info("task %s (%s) attempt %d failed, retrying in %.2fs: %r", t.id, t.spec.name, t.attempts, delay, exc)
        t.error = _describe(exc)
        t.status, t.state = "pending", "backoff"
        self._flush_progress(t, final=False)
        self._event(t, "task_failed", error=t.error, attempt=t.attempts, willRetry=True, retryInMs=int(delay * 1000))
        t.timer = self.loop.call_later(delay, self._retry_now, t)
        self.counts["retried"] += 1
        self._release(t, waiting=True)

    def _retry_now(self, t: _Task) -> None:
        t.timer = None
        if t.state == "backoff" and not self._closing:
            self._enqueue(t)
            self._dispatch()

    def _finish(self, t: _Task, status: TaskStatus, event: str, **fields: Any) -> None:
        if t.state == "done":
            return
        if not t.holds_slot:
            self._wait(t, -1)  # a task that waited (queued, parked, held, in backoff, paused) ends
        t.status, t.state = status, "done"
        t.completed_at = _now_ms()
        if t.timer is not None:
            t.timer.cancel()
            t.timer = None
        self._flush_progress(t, final=True)
        self._event(t, event, **fields)
        if t.require_ack:
            self.ack(t.client_id, t.command_id, success=status == "completed", priority=t.priority)
        self.counts[status] += 1
        t.kwargs, t.stop_handler = {}, None
        if t.done is not None and not t.done.done():
            t.done.set_result(None)
        self._finished[t.id] = self.loop.time()
        self._expire()
        self._release(t, waiting=False)

    def _stop(self, t: _Task, reason: str) -> None:
        """Ask an active task's handler to stop (cancel it); the runner settles the task once it has."""
        if t.stop_reason is None:
            t.stop_reason = reason
        if t.state == "resuming":
            self._resuming.remove(t)
            t.state = "paused"
        if t.stop_handler is not None:
            t.stop_handler()
        if t.stop_requested is not None and not t.stop_requested.done():
            t.stop_requested.set_result(None)

    def _done_future(self, t: _Task) -> asyncio.Future[None]:
        if t.done is None:
            t.done = self.loop.create_future()
            if t.state == "done":
                t.done.set_result(None)
        return t.done

    # -- timeouts --------------------------------------------------------------------------------------------

    def _arm_timeout(self, t: _Task, seconds: float | None) -> None:
        if seconds is None:
            return
        t.deadline = self.loop.time() + seconds
        t.timer = self.loop.call_later(seconds, self._timed_out, t)

    def _disarm_timeout(self, t: _Task) -> None:
        if t.timer is not None and t.deadline is not None:
            t.remaining = max(0.0, t.deadline - self.loop.time())
            t.timer.cancel()
            t.timer, t.deadline = None, None

    def _timed_out(self, t: _Task) -> None:
        t.timer = None
        if t.state == "running":
            self._stop(t, "timed_out")

    # -- pauses ----------------------------------------------------------------------------------------------

    def _track_pause(self, t: _Task) -> None:
        """Keep the client's count of paused tasks and the task's pause deadline in step with its state (called on
        every change: there are many ways into and out of a pause, and one place to count them is safer)."""
        counted = t.state in ("held", "paused") or (t.state == "running" and t.pause_requested)
        if counted != t.counted_paused:
            t.counted_paused = counted
            paused = self._client_paused[t.client_id] + (1 if counted else -1)
            if paused:
                self._client_paused[t.client_id] = paused
            else:
                del self._client_paused[t.client_id]
        if t.status == "paused" and t.state != "done" and t.stop_reason is None:
            if t.pause_timer is None:
                t.pause_timer = self.loop.call_later(self.pause_timeout, self._pause_expired, t)
        elif t.pause_timer is not None:
            t.pause_timer.cancel()
            t.pause_timer = None

    def _pause_expired(self, t: _Task) -> None:
        """A task paused for ``pause_timeout``: cancel it (a paused task holds its client's share, and its handler's
        memory or thread, for as long as it stays paused)."""
        t.pause_timer = None
        if t.status != "paused" or t.state == "done":
            return
        log.info("task %s (%s) was paused for %.0fs: cancelled", t.id, t.spec.name, self.pause_timeout)
        t.error = f"pause_timeout: paused for longer than {self.pause_timeout:g} s"
        self.counts["pause_timeout"] += 1
        if t.state in _ACTIVE:
            self._stop(t, "pause_timeout")  # its runner settles it: task_cancelled, reason pause_timeout
        else:
            self._unqueue(t)
            self._finish(t, "cancelled", "task_cancelled", reason="pause_timeout")

    # -- what handlers call (on the scheduler's loop) ---------------------------------------------------------

    async def _checkpoint(self, t: _Task) -> None:
        await asyncio.sleep(0)  # a handler that only checkpoints still lets the loop (and a cancel) in
        if t.stop_reason is not None:
            raise asyncio.CancelledError(t.stop_reason)
        if t.pause_requested and t.state == "running":
            await self._pause_here(t)

    async def _pause_here(self, t: _Task) -> None:
        t.pause_requested = False
        self._disarm_timeout(t)
        t.state, t.status = "paused", "paused"
        t.resumed = self.loop.create_future()
        self._event(t, "task_paused")
        self._release(t, waiting=True)
        try:
            await t.resumed
        finally:
            t.resumed = None
        self._event(t, "task_resumed")
        self._arm_timeout(t, t.remaining if t.remaining is not None else t.timeout)
        t.remaining = None

    async def _progress(self, t: _Task, percent: float, description: str | None, eta_ms: int | None) -> None:
        if t.state == "done":
            return
        await self._room()
        t.progress = percent
        payload: dict[str, Any] = {"taskId": t.id, "progress": percent}
        if description is not None:
            payload["description"] = description
        if eta_ms is not None:
            payload["estimatedTimeRemaining"] = int(eta_ms)
        p = t.prog
        if percent >= 100:
            self._send_progress(t, payload, resumable=True)
        elif p.timer is None and self.loop.time() - p.last_sent >= self.progress_interval:
            self._send_progress(t, payload, resumable=False)
        else:
            p.pending = payload
            if p.timer is None:
                p.timer = self.loop.call_at(p.last_sent + self.progress_interval, self._trailing_progress, t)

    def _trailing_progress(self, t: _Task) -> None:
        t.prog.timer = None
        if t.prog.pending is not None and t.state != "done":
            self._send_progress(t, t.prog.pending, resumable=False)

    def _send_progress(self, t: _Task, payload: dict[str, Any], *, resumable: bool) -> None:
        p = t.prog
        if p.timer is not None:
            p.timer.cancel()
            p.timer = None
        p.pending, p.last, p.last_resumable = None, payload, resumable
        p.last_sent = self.loop.time()
        self._send(self._envelope("progress", t.client_id, payload, t.priority, t.command_id, ephemeral=not resumable))
        self._changed(t)

    def _flush_progress(self, t: _Task, *, final: bool) -> None:
        """At the end of an attempt: deliver the held-back value; at the end of the task, make the last resumable."""
        p = t.prog
        if p.pending is not None:
            self._send_progress(t, p.pending, resumable=final)
        elif final and p.last is not None and not p.last_resumable:
            self._send_progress(t, p.last, resumable=True)

    async def _publish(
        self,
        t: _Task,
        payload: Any,
        type: str,
        target: str | None,
        topic: str | None,
        priority: int | None,
        ephemeral: bool,
    ) -> str:
        if not _NAME.fullmatch(type):
            raise ValueError(f"message type {type!r} must match {TYPE_PATTERN}")
        if topic is not None:
            if target is not None:
                raise ValueError("publish to a target or to a topic, not both")
            validate_topic(topic)
        elif target is not None and not _CLIENT_ID.fullmatch(target):
            raise ValueError(f"target {target!r} is not a valid clientId")
        await self._room()
        target = None if topic is not None else (target or t.client_id)
        envelope = self._envelope(type, target, payload, t.priority if priority is None else priority, t.command_id)
        envelope = msgspec.structs.replace(envelope, topic=topic, ephemeral=ephemeral)
        self._send(envelope)
        return envelope.id or ""

    # -- events ----------------------------------------------------------------------------------------------

    def _event(self, t: _Task, event: str, **fields: Any) -> None:
        payload = {"event": event, "taskId": t.id, "status": t.status, **fields}
        self._send(self._envelope("command", t.client_id, payload, t.priority, t.command_id))
        self._changed(t)

    def _changed(self, t: _Task) -> None:
        self._track_pause(t)
        if self._watchers:
            record = t.record()
            for fn in self._watchers:
                try:
                    fn(record)
                except Exception:
                    log.exception("a task watcher failed")

    @staticmethod
    def _envelope(
        type: str,
        target: str | None,
        payload: Any,
        priority: int,
        correlation_id: str,
        *,
        ephemeral: bool = False,
    ) -> Envelope:
        return Envelope(
            id=new_message_id(),
            type=type,
            priority=priority,
            timestamp=_now_ms(),
            source=SOURCE,
            target=target,
            payload=payload,
            correlation_id=correlation_id,
            ephemeral=ephemeral,
        )

    def _send(self, envelope: Envelope) -> None:
        """Queue an event; one pump publishes them in order, whatever the broker awaits."""
        self._outbox.append(envelope)
        if self._closing:
            self._flush_now()
        elif self._pump is None:
            self._pump = self.loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._outbox:
                envelope = self._outbox.popleft()
                try:
                    await self._require_publisher().publish(envelope)
                except Exception:
                    log.exception("could not publish a scheduler event")
                if self._drained is not None and len(self._outbox) <= _OUTBOX_HIGH // 2:
                    self._drained.set()
        finally:
            self._pump = None

    def _flush_now(self) -> None:
        publisher = self._require_publisher()
        while self._outbox:
            try:
                publisher.publish_now(self._outbox.popleft())
            except Exception:
                log.exception("could not publish a scheduler event")

    async def _room(self) -> None:
        """Back-pressure: a handler that publishes faster than the broker takes waits here."""
        while len(self._outbox) > _OUTBOX_HIGH:
            if self._drained is None:
                self._drained = asyncio.Event()
            self._drained.clear()
            await self._drained.wait()

    def _require_publisher(self) -> Publisher:
        if self._publisher is None:
            raise RuntimeError("the scheduler is not bound to a publisher: use create_app(scheduler=...) or bind()")
        return self._publisher

    # -- retention -------------------------------------------------------------------------------------------

    def _expire(self) -> None:
        if not self._finished:
            return
        horizon = self.loop.time() - self.retention
        while self._finished:
            task_id, finished_at = next(iter(self._finished.items()))
            if finished_at > horizon and len(self._finished) <= self.retention_count:
                break
            del self._finished[task_id]
            t = self._tasks.pop(task_id)
            self._by_command.pop((t.client_id, t.command_id), None)


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, PermanentError):
        text = str(exc) or "PermanentError"
    return text[:_MAX_ERROR]


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned handler's outcome, so that asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()
