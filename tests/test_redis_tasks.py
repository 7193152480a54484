"""Tasks and the connection list across nodes on one Redis (issue 7): the shared task registry, task controls relayed
to the node that runs the task, and ``GET /api/connections`` for the whole cluster."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from _redis import RedisServer, running_redis
from _servers import Server, Stream, kill_node, open_stream, running_server

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

APP = "_task_app:app"
SECRET = "a-test-secret-that-is-long-enough-for-hs256"
FAST = {"SSE_FAST_KEEPALIVE": "0.5", "SSE_FAST_HEARTBEAT": "1"}


@contextlib.contextmanager
def nodes(tmp_path: Path, redis_url: str, n: int, **env: str) -> Iterator[list[Server]]:
    """``n`` processes of the task app on one Redis."""
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(
                running_server(tmp_path, command="granian", app=APP, env={**FAST, "SSE_FAST_BROKER": redis_url, **env})
            )
            for _ in range(n)
        ]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[list[Server]]:
    """Three nodes with JWT auth (so that owners and admins differ)."""
    env = {"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_SECRET": SECRET}
    with nodes(tmp_path_factory.mktemp("tasks"), redis_server.url, 3, **env) as servers:
        yield servers


def bearer(sub: str, **claims: Any) -> dict[str, str]:
    token = jwt.encode({"sub": sub, "exp": int(time.time()) + 600, **claims}, SECRET, algorithm="HS256")
    return {"authorization": f"Bearer {token}"}


def call(server: Server, method: str, path: str, who: str, body: Any = None, **claims: Any) -> httpx.Response:
    headers = {**bearer(who, **claims), "x-client-id": who}  # the token (JWT nodes) or the header (auth = none)
    return httpx.request(method, f"{server.url}{path}", json=body, headers=headers, timeout=30)


def command(server: Server, who: str, action: str, **payload: Any) -> httpx.Response:
    body = {"type": "command", "payload": {"commandId": f"c-{time.monotonic_ns()}", "action": action, **payload}}
    return call(server, "POST", "/api/commands", who, body)


def execute(server: Server, who: str, task: str, **params: Any) -> str:
    answer = command(server, who, "execute", task=task, params=params)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["taskId"])


def events(stream: Stream, task_id: str) -> list[str]:
    """The scheduler's events about one task, in arrival order."""
    return [
        e["payload"]["event"]
        for e in stream.envelopes("command")
        if e["source"] == "scheduler" and e["payload"].get("taskId") == task_id
    ]


def messages(stream: Stream, task_id: str) -> list[dict[str, Any]]:
    """What the task's handler published (``count``: ``{"count": n}``, then ``{"stopped": n}`` when cancelled)."""
    return [e["payload"] for e in stream.envelopes("json") if e["payload"].get("taskId") == task_id]


def status(server: Server, task_id: str, who: str) -> str:
    answer = call(server, "GET", f"/api/tasks/{task_id}", who)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["status"])


def error(answer: httpx.Response) -> tuple[int, str]:
    return answer.status_code, str(answer.json()["code"])


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)  # ok-sleep: polling another process's state with a deadline


async def test_a_task_submitted_on_a_is_listed_on_b_and_cancelled_from_c(cluster: list[Server]) -> None:
    a, b, c = cluster
    async with open_stream(b.url, client_id="", headers=bearer("alice")) as stream:
        await stream.wait_for(lambda s: bool(s.system("connect")))
        task_id = execute(a, "alice", "count", to=100_000, interval=0.05)
        # Visible on the other nodes as soon as the submit has answered.
        record = call(b, "GET", f"/api/tasks/{task_id}", "alice").json()
        assert (record["taskId"], record["clientId"], record["task"]) == (task_id, "alice", "count")
        assert task_id in [t["taskId"] for t in call(b, "GET", "/api/tasks", "alice").json()["tasks"]]
        assert task_id in [t["taskId"] for t in command(c, "alice", "sync").json()["tasks"]]
        await stream.wait_for(lambda s: len(messages(s, task_id)) >= 2)
        eventually(lambda: status(c, task_id, "alice") == "running")
        queried = command(b, "alice", "query", taskId=task_id)
        assert (queried.status_code, queried.json()["status"]) == (200, "running")
        # Another client sees none of it; an admin sees it anywhere.
        assert error(call(b, "GET", f"/api/tasks/{task_id}", "mallory")) == (404, "task_not_found")
        assert error(call(c, "POST", f"/api/tasks/{task_id}/cancel", "mallory")) == (404, "task_not_found")
        assert call(c, "GET", "/api/tasks", "mallory").json() == {"tasks": []}
        everyone = call(c, "GET", "/api/tasks?all=true", "root", admin=True).json()["tasks"]
        assert task_id in [t["taskId"] for t in everyone]
        # The cancel reaches node A; the answer comes once the handler's cleanup has run there.
        cancelled = call(c, "POST", f"/api/tasks/{task_id}/cancel", "alice")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        await stream.wait_for(lambda s: "task_cancelled" in events(s, task_id))
        stopped = [m for m in messages(stream, task_id) if "stopped" in m]
        assert len(stopped) == 1, messages(stream, task_id)  # the handler's `finally` ran, on node A
        assert stopped[0]["stopped"] == messages(stream, task_id)[-2]["count"]
        assert events(stream, task_id)[-1] == "task_cancelled"
        assert status(b, task_id, "alice") == "cancelled"
        assert status(c, task_id, "alice") == "cancelled"
        # The owner's answers, relayed: a finished task cannot be cancelled or paused again.
        assert error(call(b, "POST", f"/api/tasks/{task_id}/cancel", "alice")) == (409, "task_finished")
        assert error(command(c, "alice", "pause", taskId=task_id)) == (409, "task_finished")


async def test_a_client_named_all_lists_only_its_own_tasks(cluster: list[Server]) -> None:
    """Issue 13, item 5: the per-client task index of a client named ``all`` was the index of every task."""
    a, b, _ = cluster
    theirs = execute(a, "bob-of-all", "sleep", seconds=0.01)
    mine = execute(a, "all", "sleep", seconds=0.01)
    listed = [t["taskId"] for t in call(b, "GET", "/api/tasks", "all").json()["tasks"]]
    assert mine in listed
    assert theirs not in listed


async def test_pause_and_resume_from_other_nodes(cluster: list[Server]) -> None:
    a, b, c = cluster
    async with open_stream(a.url, client_id="", headers=bearer("bob")) as stream:
        await stream.wait_for(lambda s: bool(s.system("connect")))
        task_id = execute(b, "bob", "count", to=100_000, interval=0.05)
        await stream.wait_for(lambda s: len(messages(s, task_id)) >= 1)
        paused = call(c, "POST", f"/api/tasks/{task_id}/pause", "bob")
        assert paused.status_code in (200, 202), paused.text  # 202: it pauses at its next checkpoint
        await stream.wait_for(lambda s: "task_paused" in events(s, task_id))
        assert status(a, task_id, "bob") == "paused"
        again = call(a, "POST", f"/api/tasks/{task_id}/pause", "bob")
        assert (again.status_code, again.json()["status"]) == (200, "paused")
        counted = len(messages(stream, task_id))
        assert error(command(a, "bob", "resume", taskId="no-such-task")) == (404, "task_not_found")
        resumed = command(a, "bob", "resume", taskId=task_id)
        assert resumed.status_code == 200, resumed.text
        await stream.wait_for(lambda s: "task_resumed" in events(s, task_id))
        await stream.wait_for(lambda s: len(messages(s, task_id)) > counted + 1)
        eventually(lambda: status(c, task_id, "bob") == "running")
        assert error(call(c, "POST", f"/api/tasks/{task_id}/resume", "bob")) == (409, "not_paused")
        assert call(a, "POST", f"/api/tasks/{task_id}/cancel", "root", admin=True).status_code == 200
        await stream.wait_for(lambda s: "task_cancelled" in events(s, task_id))
        assert events(stream, task_id) == [
            "task_submitted", "task_started", "task_paused", "task_resumed", "task_cancelled",
        ]  # fmt: skip


async def test_unknown_tasks_are_404_on_every_node(cluster: list[Server]) -> None:
    for server in cluster:
        assert error(call(server, "GET", "/api/tasks/nope", "alice")) == (404, "task_not_found")
        assert error(call(server, "POST", "/api/tasks/nope/cancel", "alice")) == (404, "task_not_found")


def connection_rows(server: Server) -> list[dict[str, Any]]:
    answer = httpx.get(f"{server.url}/api/connections", timeout=10)
    assert answer.status_code == 200, answer.text
    return list(answer.json())


async def test_connections_list_the_whole_cluster_and_forget_a_dead_node(tmp_path: Path) -> None:
    with running_redis(tmp_path) as redis_server, nodes(tmp_path, redis_server.url, 3) as (a, b, c):
        async with (
            open_stream(b.url, client_id="on-b", topics="orders.*") as on_b,
            open_stream(c.url, client_id="on-c") as on_c,
            open_stream(a.url, client_id="on-a") as on_a,
        ):
            for stream in (on_a, on_b, on_c):
                await stream.wait_for(lambda s: bool(s.system("connect")))
            ids = {s.system("connect")[0]["payload"]["detail"]["connectionId"]: s for s in (on_a, on_b, on_c)}
            rows = {r["connectionId"]: r for r in connection_rows(a)}
            assert set(rows) == set(ids)
            row = next(r for r in rows.values() if r["clientId"] == "on-b")
            assert row["topics"] == ["orders.*"]
            assert abs(row["connectedAt"] - time.time() * 1000) < 30_000
            assert {"lastActiveAt", "queuedFrames", "droppedFrames"} <= set(row)
            assert {r["clientId"] for r in connection_rows(c)} == {"on-a", "on-b", "on-c"}
            # A task left running on C: once C is dead, controls for it say so instead of hanging.
            task_id = execute(c, "someone", "sleep", seconds=600)
            kill_node(c)
            eventually(lambda: {r["clientId"] for r in connection_rows(a)} == {"on-a", "on-b"}, timeout=25)
            assert {r["clientId"] for r in connection_rows(b)} == {"on-a", "on-b"}
            refused = call(a, "POST", f"/api/tasks/{task_id}/cancel", "someone")
            if error(refused) == (503, "task_node_unavailable"):
                assert refused.headers["retry-after"] == "5"
            else:  # a survivor has marked C's tasks failed already (worker_lost, within 2 s of the heartbeat's end)
                assert error(refused) == (409, "task_finished")
                assert call(a, "GET", f"/api/tasks/{task_id}", "someone").json()["error"].startswith("worker_lost")
        # Streams that close leave the list at once.
        eventually(lambda: connection_rows(a) == [] and connection_rows(b) == [], timeout=5)


async def test_task_records_in_redis_are_bounded_by_the_retention_settings(tmp_path: Path) -> None:
    env = {"SSE_FAST_SCHEDULER_RETENTION": "120", "SSE_FAST_SCHEDULER_RETENTION_COUNT": "3"}
    with running_redis(tmp_path) as redis_server, nodes(tmp_path, redis_server.url, 2, **env) as (a, b):
        ids = [execute(a, "carol", "mark", label=str(i)) for i in range(5)]
        eventually(lambda: all(status(b, task_id, "carol") == "completed" for task_id in ids[-3:]))
        listed = [t["taskId"] for t in call(b, "GET", "/api/tasks", "carol").json()["tasks"]]
        assert listed == ids[-3:]  # oldest first; the index keeps the newest retention_count
        with redis_server.client() as client:
            assert client.zcard("sse:tasks:c:carol") == 3
            assert client.zcard("sse:tasks:all") == 3
            assert 0 < client.ttl("sse:tasks:c:carol") <= 120 + 300 + 60
            for task_id in ids:
                assert 0 < client.ttl(f"sse:task:{task_id}") <= 120  # finished: the retention
            running = execute(a, "carol", "sleep", seconds=600)
            eventually(lambda: status(b, running, "carol") == "running")
            assert 120 < client.ttl(f"sse:task:{running}") <= 300  # live: refreshed by its node
            for key in client.scan_iter("sse:conns:*"):
                assert 0 < client.ttl(key) <= 15


async def test_the_task_indexes_drop_ids_when_their_records_expire(tmp_path: Path) -> None:
    # The soak (loadtest/soak.py, SOAK_BROKER=redis) found used_memory growing with every task: the indexes were
    # trimmed only to retention_count, so ids of records long expired stayed in sse:tasks:all and sse:tasks:c:*.
    env = {"SSE_FAST_SCHEDULER_RETENTION": "6"}  # long enough to see all five indexed on a busy machine
    with running_redis(tmp_path) as redis_server, nodes(tmp_path, redis_server.url, 1, **env) as (a,):
        ids = [execute(a, "dora", "mark", label=str(i)) for i in range(5)]
        with redis_server.client() as client:
            eventually(lambda: client.zcard("sse:tasks:all") == 5)
            assert client.zcard("sse:tasks:c:dora") == 5
            eventually(lambda: not any(client.exists(f"sse:task:{task_id}") for task_id in ids))
            eventually(lambda: client.zcard("sse:tasks:all") == 0 and client.zcard("sse:tasks:c:dora") == 0)


def execute_as(server: Server, who: str, command_id: str, task: str, **params: Any) -> httpx.Response:
    body = {
        "type": "command",
        "payload": {"commandId": command_id, "action": "execute", "task": task, "params": params},
    }
    return call(server, "POST", "/api/commands", who, body)


async def test_a_repeated_command_id_is_one_task_on_every_node(cluster: list[Server]) -> None:
    """Issue 18, item 3: the dedupe of ``commandId`` was per worker, so a retry that reached another node ran twice."""
    a, b, c = cluster
    first = execute_as(a, "erin", "cmd-once", "sleep", seconds=0.01)
    assert first.status_code == 202, first.text
    task_id = first.json()["taskId"]
    for server in (b, c, a):
        again = execute_as(server, "erin", "cmd-once", "sleep", seconds=0.01)
        assert again.status_code == 200, again.text
        assert (again.json()["taskId"], again.json()["duplicate"]) == (task_id, True)
    # Another client's commandId is its own.
    assert execute_as(b, "frank", "cmd-once", "sleep", seconds=0.01).status_code == 202
    # Two nodes receiving the same commandId at once create one task.
    for round_ in range(5):
        command_id = f"cmd-race-{round_}"
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            send = functools.partial(execute_as, who="erin", command_id=command_id, task="sleep", seconds=0.01)
            answers = list(pool.map(send, cluster))
        assert sorted(r.status_code for r in answers) == [200, 200, 202], [r.text for r in answers]
        assert len({r.json()["taskId"] for r in answers}) == 1
    listed = call(c, "GET", "/api/tasks", "erin").json()["tasks"]
    assert sorted(t["commandId"] for t in listed) == ["cmd-once", *(f"cmd-race-{i}" for i in range(5))]


async def test_a_refused_execute_leaves_its_command_id_free_for_a_retry(cluster: list[Server]) -> None:
    a, b, _ = cluster
    refused = execute_as(a, "gina", "cmd-retry", "no-such-handler")
    assert error(refused) == (400, "unknown_task")
    retried = execute_as(b, "gina", "cmd-retry", "sleep", seconds=0.01)
    assert retried.status_code == 202, retried.text


async def test_the_tasks_of_a_dead_node_fail_with_worker_lost(tmp_path: Path) -> None:
    """Issue 18, item 3: the records of a SIGKILLed node's tasks said ``running`` until they expired (300 s)."""
    env = {"SSE_FAST_SCHEDULER_RETENTION": "120"}
    with running_redis(tmp_path) as redis_server, nodes(tmp_path, redis_server.url, 3, **env) as (a, b, c):
        async with open_stream(a.url, client_id="hal") as stream:
            await stream.wait_for(lambda s: bool(s.system("connect")))
            running = execute(c, "hal", "probe-narrow", hold=600)
            waiting = execute(c, "hal", "probe-narrow", hold=600)  # concurrency=1: pending behind the first
            survivor = execute(b, "hal", "sleep", seconds=600)
            eventually(lambda: status(a, running, "hal") == "running")
            assert status(a, waiting, "hal") == "pending"
            killed = time.monotonic()
            kill_node(c)
            # NODE_TTL (15 s) for the heartbeat to expire, then LOST_CHECK (2 s) and a tick: 25 s is generous.
            eventually(lambda: status(b, running, "hal") == status(b, waiting, "hal") == "failed", timeout=40)
            took = time.monotonic() - killed
            for task_id in (running, waiting):
                record = call(a, "GET", f"/api/tasks/{task_id}", "hal").json()
                assert record["error"].startswith("worker_lost: node "), record
                assert record["completedAt"] is not None
                assert error(call(b, "POST", f"/api/tasks/{task_id}/cancel", "hal")) == (409, "task_finished")
            await stream.wait_for(lambda s: all("task_failed" in events(s, t) for t in (running, waiting)), timeout=10)
            failed = [e["payload"] for e in stream.envelopes("command") if e["payload"].get("event") == "task_failed"]
            assert {p["taskId"] for p in failed} == {running, waiting}
            assert all(p["reason"] == "worker_lost" and p["willRetry"] is False for p in failed)
            assert status(a, survivor, "hal") == "running"  # the live node's task is left alone
            with redis_server.client() as client:
                assert 0 < client.ttl(f"sse:task:{running}") <= 120  # finished: the retention
                assert client.scard("sse:tasks:nodes") == 1  # B's (C's left with its tasks)
            # Exactly one node took them: still one event per task once both survivors have looked again (every 2 s).
            eventually(lambda: time.monotonic() - killed > took + 5, timeout=10)
            failed_again = [e for e in stream.envelopes("command") if e["payload"].get("event") == "task_failed"]
            assert len(failed_again) == 2, failed_again
            assert call(a, "POST", f"/api/tasks/{survivor}/cancel", "hal").status_code == 200
