"""The task registry of the Redis broker: every node's task records in Redis, controls sent to the owning node.

Each node mirrors the records of the tasks it runs (:meth:`Scheduler.watch`): every transition, pause, resume and
progress event marks the record dirty, and one writer per node writes the latest version of each dirty record
(so a burst of progress costs one write). Any node then answers ``GET /api/tasks``, ``GET /api/tasks/{id}``,
``query`` and ``sync`` from Redis (its own tasks from memory, which is fresher).

``cancel``, ``pause`` and ``resume`` for a task of another node go over ``sse:control`` to that node, which acts on
its scheduler, waits until its record is written, and answers over the same channel; the HTTP answer is the
owner's (200, 202, 404, 409). The owner does not answer within the wait (it died, or Redis dropped the message):
504 ``task_node_timeout``; its heartbeat key is gone (dead for up to 15 s): 503 ``task_node_unavailable``. A
pending task stays pending on the node that accepted it: no node takes over another node's queue.

A node that dies takes its tasks with it: once its heartbeat key has expired (``NODE_TTL``, 15 s after its last
beat), the first surviving node to look (every :data:`LOST_CHECK` seconds) marks its live records ``failed`` with
the error ``worker_lost`` and sends their clients ``task_failed`` (reason ``worker_lost``). A script takes the dead
node's tasks atomically, so exactly one node does it, however many notice.

A ``commandId`` is one task in the cluster: ``execute`` claims ``(client, commandId)`` with ``SET NX`` before its
task exists, so a repeat on any node (or two nodes receiving it at once) answers the first one's task as a
duplicate. The claim lives as long as the task's record (it is rewritten with it) and is dropped when the submit is
refused (``queue_full``...), so that the client may retry it.

Keys, all bounded:

- ``sse:task:<id>``, a hash ``{rec: the TaskRecord as JSON, node: the node that runs it}``; ``EXPIRE`` the
  scheduler's retention once the task has ended, :data:`LIVE_TTL` while it lives (refreshed by its node every
  :data:`LIVE_REFRESH` seconds, so that the live records of a dead node vanish within :data:`LIVE_TTL`).
- ``sse:tasks:c:<client>`` and ``sse:tasks:all``, sorted sets of task ids by ``createdAt``, trimmed to the
  scheduler's ``retention_count`` newest and ``EXPIRE``d; the node that wrote a finished record drops its id
  from both when the record expires (the retention), and ids whose hash expired are dropped when read.
- ``sse:cmd:<client>:<commandId>``, the task id of that ``execute``; the same ``EXPIRE`` as the task's hash.
- ``sse:tasks:n:<node>``, the ids of a node's live tasks (a set, ``EXPIRE`` :data:`LIVE_TTL`), and
  ``sse:tasks:nodes``, the nodes that have such a set: where the tasks of a dead node are found. Bounded by the
  node's live tasks, and by the live nodes (a dead node leaves it when its tasks are taken).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any, Final

import msgspec
from redis.exceptions import RedisError

from sse_fast._core import NORMAL
from sse_fast.broker.redis import keys as keys
from sse_fast.broker.redis import scripts as scripts
from sse_fast.errors import HttpError
from sse_fast.models import TaskRecord, new_message_id
from sse_fast.scheduler.core import Scheduler, SchedulerError
from sse_fast.scheduler.registry import LocalTaskRegistry

if TYPE_CHECKING:
    from sse_fast.broker.redis.broker import RedisBroker

__all__ = ["LIVE_REFRESH", "LIVE_TTL", "LOST_CHECK", "RedisTaskRegistry"]

log = logging.getLogger("sse_fast.redis")

#: Seconds a live task's record outlives its node's last refresh.
LIVE_TTL: Final = 300
#: Seconds between a node's refreshes of its live tasks' records.
LIVE_REFRESH: Final = 60
#: Seconds a pause or resume waits for the owner's answer (a cancel waits ``cancel_grace`` more).
CONTROL_WAIT: Final = 5.0
#: Seconds between a node's looks for dead nodes' tasks (a dead node's tasks fail within NODE_TTL + this + 1 s).
LOST_CHECK: Final = 2.0
#: The error of a task whose node died (its record's ``error`` starts with it; the event's ``reason`` is it).
WORKER_LOST: Final = "worker_lost"
_FINISHED: Final = frozenset({"completed", "failed", "cancelled", "timed_out"})
_json = msgspec.json.Encoder()
_record = msgspec.json.Decoder(TaskRecord)


class RedisTaskRegistry(LocalTaskRegistry):
    """Task records shared through Redis; controls relayed to the node that runs the task."""

    def __init__(self, scheduler: Scheduler, broker: RedisBroker) -> None:
        super().__init__(scheduler)
        self.broker = broker
        self._dirty: dict[str, TaskRecord] = {}
        self._writing = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._serving: set[asyncio.Task[None]] = set()
        self._last_refresh = time.monotonic()
        # (when its record expires, task id, client id) of the finished records this node wrote, oldest first: the
        # ids leave the indexes then. Written every time, the indexes only shrank by retention_count under a steady
        # stream of tasks, so Redis memory grew for as long as tasks ran (found by loadtest/soak.py).
        # Bounded by the scheduler's retention_count: _pipeline stops adding at it (not a maxlen: the scheduler's
        # limits are read from the settings after this registry exists, and a maxlen would drop ids silently).
        self._expiring: collections.deque[tuple[float, str, str]] = collections.deque()  # bounded (see above)
        self._unindexing: asyncio.Task[None] | None = None
        self._reaping: asyncio.Task[None] | None = None
        self._last_reap = time.monotonic()
        self._release = broker.redis.register_script(scripts.RELEASE_COMMAND)
        self._take_lost = broker.redis.register_script(scripts.TAKE_LOST_TASKS)
        scheduler.watch(self._changed)
        broker.on_control("task", self._on_control)
        broker.on_control("task_reply", self._on_reply)
        broker.add_close_hook(self.flush)  # the last task events of a shutdown, while Redis is still there
        assert broker.streams is not None, "attach() the broker to the streams first"
        broker.streams.add_tick_job(self.tick)

    # -- writing this node's records ---------------------------------------------------------------------------

    def _changed(self, record: TaskRecord) -> None:
        self._dirty[record.task_id] = record
        if self._writer is None or self._writer.done():
            with contextlib.suppress(RuntimeError):  # no running loop (a signal handler): the next tick writes it
                self._writer = asyncio.get_running_loop().create_task(self._write_quietly())

    async def _write_quietly(self) -> None:
        try:
            await self._write()
        except (RedisError, OSError, HttpError) as err:
            log.warning("could not write task records to Redis (retried on the next tick): %s", err)

    async def flush(self) -> None:
        """Write every dirty record now; when Redis is unreachable, log it and leave them for the next tick (what
        was done to the task is done: the caller's answer should say so, not fail)."""
        await self._write_quietly()

    async def _write(self) -> None:
        async with self._writing:
            while self._dirty:
                batch, self._dirty = self._dirty, {}
                try:
                    await self.broker.call(self._pipeline(batch.values()).execute())
                except BaseException:
                    self._dirty = {**batch, **self._dirty}  # newer versions win
                    raise

    def _pipeline(self, records: Any) -> Any:
        s = self.scheduler
        index_ttl = int(max(s.retention, LIVE_TTL)) + LIVE_REFRESH
        pipe = self.broker.redis.pipeline(transaction=False)
        node = self.broker.node_id
        for record in records:
            key, finished = keys.task(record.task_id), record.status in _FINISHED
            ttl = max(1, int(s.retention)) if finished else LIVE_TTL
            pipe.hset(key, mapping={"rec": _json.encode(record), "node": node})
            pipe.expire(key, ttl)
            pipe.set(keys.command(record.client_id, record.command_id), record.task_id, ex=ttl)
            if finished:
                pipe.srem(keys.tasks_on(node), record.task_id)
            else:
                pipe.sadd(keys.tasks_on(node), record.task_id)
                pipe.expire(keys.tasks_on(node), LIVE_TTL)
                pipe.sadd(keys.TASK_NODES, node)
                pipe.expire(keys.TASK_NODES, index_ttl)
            if finished and len(self._expiring) < s.retention_count:  # past it: retention_count
                self._expiring.append((time.monotonic() + max(1, int(s.retention)), record.task_id, record.client_id))
            for index in (keys.tasks_of(record.client_id), keys.TASKS_ALL):
                pipe.zadd(index, {record.task_id: record.created_at})
                pipe.zremrangebyrank(index, 0, -(s.retention_count + 1))
                pipe.expire(index, index_ttl)
        return pipe

    def tick(self, now: float) -> None:
        """Write what could not be written, and keep this node's live records alive (every LIVE_REFRESH s)."""
        if time.monotonic() - self._last_refresh >= LIVE_REFRESH:
            self._last_refresh = time.monotonic()
            for record in self.scheduler.live():
                self._dirty.setdefault(record.task_id, record)
        if self._dirty and (self._writer is None or self._writer.done()) and self.broker.ready():
            self._writer = asyncio.get_running_loop().create_task(self._write_quietly())
        due = bool(self._expiring) and self._expiring[0][0] <= time.monotonic()
        if due and (self._unindexing is None or self._unindexing.done()) and self.broker.ready():
            self._unindexing = asyncio.get_running_loop().create_task(self._unindex())
        reap = time.monotonic() - self._last_reap >= LOST_CHECK and (self._reaping is None or self._reaping.done())
        if reap and self.broker.ready():
            self._last_reap = time.monotonic()
            self._reaping = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        """Fail the live tasks of the nodes whose heartbeat expired (``worker_lost``), and tell their clients."""
        prefixes = [keys.node(""), keys.tasks_on(""), keys.task("")]
        try:
            taken = await self.broker.call(self._take_lost(keys=[keys.TASK_NODES], args=prefixes))
        except (RedisError, OSError, HttpError) as err:
            log.warning("could not look for the tasks of dead nodes: %s", err)
            return
        lost = []
        for i in range(0, len(taken), 3):
            node, record = taken[i].decode(), _record.decode(taken[i + 2])
            if record.status in _FINISHED:
                continue
            error = f"{WORKER_LOST}: node {node} stopped (its heartbeat expired) while the task was {record.status}"
            lost.append(msgspec.structs.replace(record, status="failed", error=error, completed_at=_now_ms()))
        if not lost:
            return
        log.warning("marked %d task(s) of dead node(s) failed (%s)", len(lost), WORKER_LOST)
        for record in lost:
            self._dirty[record.task_id] = record
        await self.flush()
        for record in lost:
            self.scheduler.lost(record)

    async def _unindex(self) -> None:
        """Drop the ids of expired records from the indexes (best effort: a failure leaves them to the read path)."""
        now = time.monotonic()
        pipe = self.broker.redis.pipeline(transaction=False)
        while self._expiring and self._expiring[0][0] <= now:
            _, task_id, client_id = self._expiring.popleft()
            pipe.zrem(keys.tasks_of(client_id), task_id)
            pipe.zrem(keys.TASKS_ALL, task_id)
        try:
            await self.broker.call(pipe.execute())
        except (RedisError, OSError, HttpError) as err:
            log.warning("could not drop expired task ids from the indexes: %s", err)

    # -- submitting --------------------------------------------------------------------------------------------

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
        """Claim ``(client, commandId)`` in Redis, then queue the task here; a repeat (from any node) answers the
        claimed task as a duplicate."""
        options: dict[str, Any] = {"priority": priority, "timeout_ms": timeout_ms, "require_ack": require_ack}
        if command_id is None or self.scheduler.submitted(client_id, command_id) is not None:
            return self.scheduler.submit(client_id, task, params, command_id=command_id, **options)
        task_id, key = new_message_id(), keys.command(client_id, command_id)
        deadline = time.monotonic() + CONTROL_WAIT
        while not await self.broker.call(self.broker.redis.set(key, task_id, nx=True, ex=LIVE_TTL)):
            known = await self._claimed(key, deadline)
            if known is not None:
                return known, False
        try:
            return self.scheduler.submit(client_id, task, params, command_id=command_id, task_id=task_id, **options)
        except SchedulerError:
            await self.broker.call(self._release(keys=[key], args=[task_id]))  # refused: the client may retry it
            raise

    async def _claimed(self, key: str, deadline: float) -> TaskRecord | None:
        """The record of the task that claimed ``key``; None when the claim is gone (its submit was refused). The
        claimer writes the record right after its submit: until then, wait for it (up to ``deadline``)."""
        while True:
            claim = await self.broker.call(self.broker.redis.get(key))
            if claim is None:
                return None
            task_id = claim.decode() if isinstance(claim, bytes) else str(claim)
            if self.scheduler.has(task_id):
                return self.scheduler.get(task_id)
            rec = await self.broker.call(self.broker.redis.hget(keys.task(task_id), "rec"))
            if rec is not None:
                return _record.decode(rec)
            if time.monotonic() > deadline:
                message = "a task for this commandId is being submitted on another node"
                raise SchedulerError(503, "command_pending", message, {"taskId": task_id}, retry_after=1)
            await asyncio.sleep(0.02)  # ok-sleep: the claimer's record is one write away

    # -- reading -----------------------------------------------------------------------------------------------

    async def _lookup(self, task_id: str) -> tuple[TaskRecord, str]:
        rec, node = await self.broker.call(self.broker.redis.hmget(keys.task(task_id), ["rec", "node"]))
        if rec is None:
            raise SchedulerError.task_not_found(task_id)
        return _record.decode(rec), node.decode() if isinstance(node, bytes) else str(node)

    async def get(self, task_id: str) -> TaskRecord:
        if self.scheduler.has(task_id):
            return self.scheduler.get(task_id)
        record, _ = await self._lookup(task_id)
        return record

    async def tasks(self, client_id: str | None = None) -> list[TaskRecord]:
        index = keys.TASKS_ALL if client_id is None else keys.tasks_of(client_id)
        redis = self.broker.redis
        found_ids: list[Any] = await self.broker.call(redis.zrange(index, 0, -1))
        ids = [i.decode() for i in found_ids]
        local = {r.task_id: r for r in self.scheduler.tasks(client_id)}
        remote = [i for i in ids if i not in local]
        records = list(local.values())
        if remote:
            pipe = redis.pipeline(transaction=False)
            for task_id in remote:
                pipe.hget(keys.task(task_id), "rec")
            found = await self.broker.call(pipe.execute())
            gone = [task_id for task_id, rec in zip(remote, found, strict=True) if rec is None]
            # Filtered by owner after reading: an index names ids, and only the record says whose task it is.
            records += [r for r in map(_record.decode, filter(None, found)) if client_id in (None, r.client_id)]
            if gone:
                await self.broker.call(redis.zrem(index, *gone))
        records.sort(key=lambda r: (r.created_at, r.task_id))
        return records

    # -- controls ----------------------------------------------------------------------------------------------

    async def cancel(self, task_id: str) -> TaskRecord:
        if self.scheduler.has(task_id):
            record = await self.scheduler.cancel(task_id)
            await self.flush()
            return record
        record, _ = await self._relay(task_id, "cancel", CONTROL_WAIT + self.scheduler.cancel_grace)
        return record

    async def pause(self, task_id: str) -> tuple[TaskRecord, bool]:
        if self.scheduler.has(task_id):
            answer = self.scheduler.pause(task_id)
            await self.flush()
            return answer
        return await self._relay(task_id, "pause", CONTROL_WAIT)

    async def resume(self, task_id: str) -> TaskRecord:
        if self.scheduler.has(task_id):
            record = self.scheduler.resume(task_id)
            await self.flush()
            return record
        record, _ = await self._relay(task_id, "resume", CONTROL_WAIT)
        return record

    async def _relay(self, task_id: str, action: str, wait: float) -> tuple[TaskRecord, bool]:
        """Send ``action`` to the node that runs the task; its answer (or its refusal, raised)."""
        record, node = await self._lookup(task_id)
        if record.status in _FINISHED:  # ended (its node may be gone: worker_lost): nothing to relay
            message = f"task {task_id} has {record.status} already"
            raise SchedulerError(409, "task_finished", message, {"status": record.status})
        if node == self.broker.node_id:  # this node ran it, and has dropped it since
            raise SchedulerError(404, "task_not_found", f"no task {task_id!r} (dropped after retention)")
        if not await self.broker.node_alive(node):
            message = f"the node that runs task {task_id} ({node}) is not reachable"
            raise SchedulerError(503, "task_node_unavailable", message, {"status": record.status}, retry_after=5)
        token = secrets.token_hex(8)
        future = self._replies[token] = asyncio.get_running_loop().create_future()
        body = {"op": "task", "node": node, "from": self.broker.node_id, "reply": token}
        try:
            await self.broker.send_control({**body, "action": action, "taskId": task_id})
            answer = await asyncio.wait_for(future, wait)
        except TimeoutError:
            message = f"the node that runs task {task_id} ({node}) did not answer within {wait:.0f}s"
            raise SchedulerError(504, "task_node_timeout", message) from None
        finally:
            self._replies.pop(token, None)
        error = answer.get("error")
        if error is not None:
            status, code, message, detail, *rest = error  # rest: Retry-After (a 429 too_many_paused), if any
            retry_after = int(rest[0]) if rest and isinstance(rest[0], int) else 0
            raise SchedulerError(int(status), str(code), str(message), detail, retry_after=retry_after)
        return msgspec.convert(answer["record"], TaskRecord), bool(answer["done"])

    def _on_reply(self, body: dict[str, Any]) -> None:
        future = self._replies.get(str(body.get("reply")))
        if future is not None and not future.done():
            future.set_result(body)

    def _on_control(self, body: dict[str, Any]) -> None:
        serving = asyncio.get_running_loop().create_task(self._serve(body))
        self._serving.add(serving)
        serving.add_done_callback(self._serving.discard)

    async def _serve(self, body: dict[str, Any]) -> None:
        """Act on a control for one of this node's tasks, and answer the node that relayed it."""
        reply: dict[str, Any] = {"op": "task_reply", "node": body.get("from"), "reply": body.get("reply")}
        task_id, action = str(body.get("taskId")), body.get("action")
        try:
            if action == "cancel":
                record, done = await self.scheduler.cancel(task_id), True
            elif action == "pause":
                record, done = self.scheduler.pause(task_id)
            elif action == "resume":
                record, done = self.scheduler.resume(task_id), True
            else:
                raise SchedulerError(422, "unknown_action", f"unknown task action {action!r}")
            await self.flush()
            reply.update(record=msgspec.to_builtins(record), done=done)
        except SchedulerError as err:
            reply["error"] = [err.status, err.code, err.message, err.detail, err.retry_after]
        with contextlib.suppress(RedisError, OSError, HttpError):
            await self.broker.send_control(reply)


def _now_ms() -> int:
    return int(time.time() * 1000)
