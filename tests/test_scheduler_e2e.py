"""The scheduler end to end: a real server (granian, tests/_task_app.py), real HTTP, real streams."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from _servers import Server, Stream, open_stream, start_server

pytestmark = pytest.mark.e2e

APP = "_task_app:app"
SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def serve(tmp_path: Path, interface: str = "rsgi", **env: str) -> Server:
    return start_server(tmp_path, command="granian", app=APP, env=env, interface=interface)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The shared server: the default limits (5 at once, 2 per client)."""
    running = serve(tmp_path_factory.mktemp("sched"), SSE_FAST_SCHEDULER_CONCURRENCY="5")
    yield running
    running.kill()


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One task at a time, a short queue: for priority order and the queue bound."""
    running = serve(
        tmp_path_factory.mktemp("single"),
        SSE_FAST_SCHEDULER_CONCURRENCY="1",
        SSE_FAST_SCHEDULER_CLIENT_CONCURRENCY="10",
        SSE_FAST_SCHEDULER_QUEUE_SIZE="5",
        SSE_FAST_SCHEDULER_CLIENT_QUEUE_SHARE="1",  # one client fills the whole queue here (tests/test_fairness.py)
    )
    yield running
    running.kill()


async def command(
    http: httpx.AsyncClient, url: str, client: str, action: str, *, priority: int | None = None, **payload: Any
) -> httpx.Response:
    body: dict[str, Any] = {
        "type": "command",
        "payload": {"commandId": f"cmd-{time.monotonic_ns()}", "action": action, **payload},
    }
    if priority is not None:
        body["priority"] = priority
    return await http.post(f"{url}/api/commands", json=body, headers={"x-client-id": client})


async def execute(http: httpx.AsyncClient, url: str, client: str, task: str, **payload: Any) -> str:
    answer = await command(http, url, client, "execute", task=task, **payload)
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["success"] is True
    assert body["status"] == "pending"
    return str(body["taskId"])


def task_events(stream: Stream, task_id: str) -> list[dict[str, Any]]:
    """The envelopes about one task, in arrival order: its events, its progress, its handler's messages."""
    out = []
    for envelope in stream.envelopes():
        payload = envelope.get("payload")
        if isinstance(payload, dict) and payload.get("taskId") == task_id:
            out.append(envelope)
    return out


def lifecycle(stream: Stream, task_id: str) -> list[str]:
    return [e["payload"]["event"] for e in task_events(stream, task_id) if e["type"] == "command"]


async def until_event(stream: Stream, task_id: str, event: str, count: int = 1, within: float = 10.0) -> None:
    await stream.wait_for(lambda s: lifecycle(s, task_id).count(event) >= count, within)


async def finished(stream: Stream, task_id: str, within: float = 10.0) -> str:
    ends = {"task_completed", "task_cancelled", "task_timed_out"}

    def ended(s: Stream) -> bool:
        events = [e["payload"] for e in task_events(s, task_id) if e["type"] == "command"]
        return any(e["event"] in ends or (e["event"] == "task_failed" and not e["willRetry"]) for e in events)

    await stream.wait_for(ended, within)
    return lifecycle(stream, task_id)[-1]


# -- the life of a task --------------------------------------------------------------------------------------


async def test_a_task_that_reports_progress_and_completes(server: Server) -> None:
    async with open_stream(server.url, client_id="alice") as stream, httpx.AsyncClient() as http:
        body = {
            "type": "command",
            "payload": {"commandId": "life-1", "action": "execute", "task": "count",
                        "params": {"to": 3, "interval": 0.15}, "requireAck": True},
        }  # fmt: skip
        answer = await http.post(f"{server.url}/api/commands", json=body, headers={"x-client-id": "alice"})
        assert answer.status_code == 202
        task_id = answer.json()["taskId"]
        await stream.wait_for(lambda s: any(e["type"] == "ack" for e in s.envelopes()))
        mine = [e for e in stream.envelopes() if e.get("correlationId") == "life-1"]
        kinds = [e["payload"].get("event", e["type"]) if e["type"] == "command" else e["type"] for e in mine]
        assert kinds == [
            "task_submitted", "task_started",
            "json", "progress", "json", "progress", "json", "progress",
            "task_completed", "ack",
        ]  # fmt: skip
        assert all(e["source"] == "scheduler" and e["target"] == "alice" for e in mine)
        progress = [e for e in mine if e["type"] == "progress"]
        assert [round(p["payload"]["progress"]) for p in progress] == [33, 67, 100]
        assert [bool(p.get("ephemeral")) for p in progress] == [True, True, False]
        assert mine[-2]["payload"] == {"event": "task_completed", "taskId": task_id, "status": "completed",
                                       "result": {"counted": 3}}  # fmt: skip
        assert mine[-1]["payload"] == {"commandId": "life-1", "success": True}
        record = (await http.get(f"{server.url}/api/tasks/{task_id}", headers={"x-client-id": "alice"})).json()
        assert record["status"] == "completed"
        assert record["attempts"] == 1
        assert record["progress"] == 100
        assert record["result"] == {"counted": 3}
        assert record["params"] == {"to": 3, "interval": 0.15}
        assert record["startedAt"] >= record["createdAt"]
        assert record["completedAt"] >= record["startedAt"]


async def test_a_client_that_reconnects_sees_what_happened_meanwhile(server: Server) -> None:
    async with open_stream(server.url, client_id="roamer") as stream:
        await stream.wait_for(lambda s: bool(s.system("connect")))
        cursor = stream.last_id
    async with httpx.AsyncClient() as http:
        task_id = await execute(http, server.url, "roamer", "count", params={"to": 2, "interval": 0.01})
        deadline = time.monotonic() + 10
        while (await http.get(f"{server.url}/api/tasks/{task_id}")).json()["status"] != "completed":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)  # ok-sleep: polling the task record, with a deadline
    async with open_stream(server.url, client_id="roamer", headers={"last-event-id": cursor}) as stream:
        await stream.wait_for(lambda s: "task_completed" in lifecycle(s, task_id))
        assert stream.system("connect")[0]["payload"]["detail"]["resumed"] is True
        replayed = task_events(stream, task_id)
        kinds = [e["payload"]["event"] if e["type"] == "command" else e["type"] for e in replayed]
        assert kinds == ["task_submitted", "task_started", "json", "json", "progress", "task_completed"]
        assert replayed[-2]["payload"]["progress"] == 100  # the last progress is resumable; the others were not


async def test_sync_and_query(server: Server) -> None:
    async with httpx.AsyncClient() as http, open_stream(server.url, client_id="syncer") as stream:
        task_id = await execute(http, server.url, "syncer", "sleep", params={"seconds": 0})
        await finished(stream, task_id)
        synced = (await command(http, server.url, "syncer", "sync")).json()
        assert [t["taskId"] for t in synced["tasks"]] == [task_id]
        assert (await http.get(f"{server.url}/api/tasks", headers={"x-client-id": "syncer"})).json() == synced
        queried = await command(http, server.url, "syncer", "query", taskId=task_id)
        assert queried.status_code == 200
        assert queried.json()["status"] == "completed"
        everyone = (await http.get(f"{server.url}/api/tasks?all=true", headers={"x-client-id": "syncer"})).json()
        assert task_id in {t["taskId"] for t in everyone["tasks"]}  # auth=none: every caller is admin
        spec = (await http.get(f"{server.url}/openapi.json")).json()
        assert {"/api/tasks", "/api/tasks/{taskId}", "/api/tasks/{taskId}/cancel"} <= set(spec["paths"])


async def test_bad_commands(server: Server) -> None:
    url = server.url
    async with httpx.AsyncClient() as http:
        unknown = await command(http, url, "alice", "execute", task="nope")
        assert unknown.status_code == 400
        assert unknown.json()["code"] == "unknown_task"
        assert unknown.json()["detail"] == {"task": "nope"}
        for params in ({"seconds": "long"}, {"seconds": -1}, {"minutes": 1}):
            bad = await command(http, url, "alice", "execute", task="sleep", params=params)
            assert bad.status_code == 422, params
            assert bad.json()["code"] == "invalid_params"
        for payload in ({"action": "execute"}, {"action": "explode"}, {"action": "cancel"}):
            body = {"type": "command", "payload": {"commandId": "x", **payload}}
            assert (await http.post(f"{url}/api/commands", json=body)).status_code == 422, payload
        not_a_command = await http.post(f"{url}/api/commands", json={"type": "text", "payload": {}})
        assert not_a_command.status_code == 422
        missing = await command(http, url, "alice", "cancel", taskId="no-such-task")
        assert missing.status_code == 404
        assert missing.json()["code"] == "task_not_found"
        assert (await http.post(f"{url}/api/tasks/no-such-task/pause")).status_code == 404
        assert (await http.get(f"{url}/api/tasks/no-such-task")).status_code == 404
        assert (await http.get(f"{url}/api/tasks/x/cancel")).status_code == 405
        assert (await http.get(f"{url}/healthz")).status_code == 200  # and the server is fine


# -- cancel, timeout, retries --------------------------------------------------------------------------------


async def test_cancel_stops_the_running_handler(server: Server) -> None:
    async with httpx.AsyncClient() as http, open_stream(server.url, client_id="canceller") as stream:
        task_id = await execute(http, server.url, "canceller", "count", params={"to": 10_000, "interval": 0.02})

        def counts(s: Stream) -> list[dict[str, Any]]:
            return [e["payload"] for e in task_events(s, task_id) if e["type"] == "json"]

        await stream.wait_for(lambda s: len(counts(s)) >= 3)
        answer = await http.post(f"{server.url}/api/tasks/{task_id}/cancel", headers={"x-client-id": "canceller"})
        assert answer.status_code == 200
        assert answer.json() == {"success": True, "taskId": task_id, "status": "cancelled"}
        await until_event(stream, task_id, "task_cancelled")
        cancelled = [e for e in task_events(stream, task_id) if e["type"] == "command"][-1]["payload"]
        assert cancelled["reason"] == "requested"
        stopped = [c for c in counts(stream) if "stopped" in c]
        assert len(stopped) == 1  # the handler's finally ran...
        # ...and its side effect stopped: nothing more while a later task runs to its end.
        sentinel = await execute(http, server.url, "canceller", "sleep", params={"seconds": 0.3})
        await finished(stream, sentinel)
        assert counts(stream)[-1] == stopped[0]
        assert stopped[0]["stopped"] == counts(stream)[-2]["count"]
        again = await command(http, server.url, "canceller", "cancel", taskId=task_id)
        assert again.status_code == 409
        assert again.json()["code"] == "task_finished"


async def test_cancel_removes_a_pending_task(single: Server) -> None:
    async with httpx.AsyncClient() as http, open_stream(single.url, client_id="alice") as stream:
        blocker = await execute(http, single.url, "alice", "sleep", params={"seconds": 30})
        pending = await execute(http, single.url, "alice", "mark", params={"label": "never"})
        await until_event(stream, blocker, "task_started")
        assert (await command(http, single.url, "alice", "cancel", taskId=pending)).json()["status"] == "cancelled"
        assert (await command(http, single.url, "alice", "cancel", taskId=blocker)).json()["status"] == "cancelled"
        await until_event(stream, pending, "task_cancelled")
        assert lifecycle(stream, pending) == ["task_submitted", "task_cancelled"]


async def test_a_timeout_cancels_the_handler(server: Server) -> None:
    async with httpx.AsyncClient() as http, open_stream(server.url, client_id="timer") as stream:
        task_id = await execute(
            http, server.url, "timer", "count", params={"to": 10_000, "interval": 0.02}, timeout=300
        )
        assert await finished(stream, task_id) == "task_timed_out"
        assert lifecycle(stream, task_id) == ["task_submitted", "task_started", "task_timed_out"]
        timed_out = [e for e in task_events(stream, task_id) if e["type"] == "command"][-1]["payload"]
        assert timed_out["timeoutMs"] == 300
        assert any("stopped" in e["payload"] for e in task_events(stream, task_id) if e["type"] == "json")
        record = (await http.get(f"{server.url}/api/tasks/{task_id}")).json()
        assert record["status"] == "timed_out"
        assert record["attempts"] == 1


async def test_failed_attempts_are_retried(server: Server) -> None:
    async with httpx.AsyncClient() as http, open_stream(server.url, client_id="retrier") as stream:
        task_id = await execute(http, server.url, "retrier", "fail", params={"message": "boom"})
        assert await finished(stream, task_id) == "task_failed"
        events = [e["payload"] for e in task_events(stream, task_id) if e["type"] == "command"]
        assert [(e["event"], e.get("attempt"), e.get("willRetry")) for e in events] == [
            ("task_submitted", None, None),
            ("task_started", 1, None),
            ("task_failed", 1, True),
            ("task_started", 2, None),
            ("task_failed", 2, True),
            ("task_started", 3, None),
            ("task_failed", 3, False),
        ]
        assert all(e["error"] == "RuntimeError: boom" for e in events if e["event"] == "task_failed")
        record = (await http.get(f"{server.url}/api/tasks/{task_id}")).json()
        assert (record["status"], record["attempts"], record["error"]) == ("failed", 3, "RuntimeError: boom")
        permanent = await execute(http, server.url, "retrier", "permanent")
        assert await finished(stream, permanent) == "task_failed"
        assert lifecycle(stream, permanent) == ["task_submitted", "task_started", "task_failed"]


# -- pause and resume ----------------------------------------------------------------------------------------


async def test_pause_at_a_checkpoint_and_resume(server: Server) -> None:
    async with httpx.AsyncClient() as http, open_stream(server.url, client_id="pauser") as stream:
        task_id = await execute(http, server.url, "pauser", "count", params={"to": 10_000, "interval": 0.02})

        def counted(s: Stream) -> list[int]:
            return [e["payload"]["count"] for e in task_events(s, task_id) if "count" in e["payload"]]

        await stream.wait_for(lambda s: len(counted(s)) >= 2)
        paused = await command(http, server.url, "pauser", "pause", taskId=task_id)
        assert paused.status_code == 202  # it pauses at its next checkpoint
        await until_event(stream, task_id, "task_paused")
        assert (await http.get(f"{server.url}/api/tasks/{task_id}")).json()["status"] == "paused"
        at_pause = len(counted(stream))
        sentinel = await execute(http, server.url, "pauser", "sleep", params={"seconds": 0.3})
        await finished(stream, sentinel)
        assert len(counted(stream)) == at_pause  # nothing ran past the checkpoint
        resumed = await http.post(f"{server.url}/api/tasks/{task_id}/resume", headers={"x-client-id": "pauser"})
        assert resumed.status_code == 200
        await until_event(stream, task_id, "task_resumed")
        await stream.wait_for(lambda s: len(counted(s)) >= at_pause + 2)
        assert counted(stream)[: at_pause + 2] == list(range(1, at_pause + 3))  # it went on where it stopped
        await command(http, server.url, "pauser", "cancel", taskId=task_id)
        assert lifecycle(stream, task_id) == [
            "task_submitted", "task_started", "task_paused", "task_resumed", "task_cancelled",
        ]  # fmt: skip


# -- concurrency, priority, the queue bound ------------------------------------------------------------------


async def test_limits_hold_under_50_concurrent_submissions_from_5_clients(server: Server) -> None:
    clients = [f"load-{i}" for i in range(5)]
    async with httpx.AsyncClient(timeout=30) as http:
        streams = [open_stream(server.url, client_id=c) for c in clients]
        opened = [await s.__aenter__() for s in streams]
        try:
            submissions = [
                execute(http, server.url, clients[i % 5], "probe-narrow" if i % 7 == 0 else "probe",
                        params={"hold": 0.3}, priority=i % 4)
                for i in range(50)
            ]  # fmt: skip
            task_ids = await asyncio.gather(*submissions)
            by_client = {c: [t for i, t in enumerate(task_ids) if i % 5 == n] for n, c in enumerate(clients)}
            for client, stream in zip(clients, opened, strict=True):
                for task_id in by_client[client]:
                    assert await finished(stream, task_id, within=60) == "task_completed"
        finally:
            for s in streams:
                await s.__aexit__(None, None, None)
        peaks: dict[str, int] = {}
        for task_id in task_ids:
            record = (await http.get(f"{server.url}/api/tasks/{task_id}")).json()
            assert record["status"] == "completed"
            for key, value in record["result"].items():
                peaks[key] = max(peaks.get(key, 0), value)
    # Never over a limit. (How close to them the pool got depends on how fast the submissions arrive: on a loaded
    # machine they trickle in, so only "more than one at a time" is asserted for the pool as a whole.)
    assert 2 <= peaks["all"] <= 5
    assert max(v for k, v in peaks.items() if k.startswith("client:")) <= 2
    assert peaks["handler:probe-narrow"] == 1


async def test_priority_order_when_the_pool_is_saturated(single: Server) -> None:
    async with httpx.AsyncClient() as http, open_stream(single.url, client_id="ranker") as stream:
        blocker = await execute(http, single.url, "ranker", "sleep", params={"seconds": 30})
        await until_event(stream, blocker, "task_started")
        labels = {}
        for label, priority in [("low", 0), ("normal-1", 1), ("high", 2), ("normal-2", 1), ("critical", 3)]:
            labels[await execute(http, single.url, "ranker", "mark", params={"label": label}, priority=priority)] = (
                label
            )
        full = await command(http, single.url, "ranker", "execute", task="mark", params={"label": "late"})
        assert full.status_code == 429  # five wait already: the queue is full
        assert full.json()["code"] == "queue_full"
        assert int(full.headers["retry-after"]) >= 1
        await command(http, single.url, "ranker", "cancel", taskId=blocker)
        for task_id in labels:
            assert await finished(stream, task_id) == "task_completed"
        started = [
            labels[e["payload"]["taskId"]]
            for e in stream.envelopes("command")
            if e["payload"]["event"] == "task_started" and e["payload"]["taskId"] in labels
        ]
        assert started == ["critical", "high", "normal-1", "normal-2", "low"]


# -- isolation -----------------------------------------------------------------------------------------------


async def test_a_blocking_thread_handler_does_not_delay_streams(server: Server) -> None:
    async with httpx.AsyncClient() as http, open_stream(server.url, client_id="watcher") as stream:
        task_id = await execute(http, server.url, "watcher", "crunch", params={"rounds": 3, "seconds": 0.5})
        await until_event(stream, task_id, "task_started")
        latencies = []
        for i in range(5):
            sent = time.monotonic()
            body = {"type": "text", "payload": f"ping-{i}"}
            await http.post(f"{server.url}/api/direct/watcher", json=body)
            await stream.wait_for(lambda s, i=i: any(e["payload"] == f"ping-{i}" for e in s.envelopes("text")))
            latencies.append(time.monotonic() - sent)
            await asyncio.sleep(0.1)  # ok-sleep: spread the pings over the blocking rounds
        assert max(latencies) < 0.3  # a blocked loop would hold them up to 0.5 s
        assert await finished(stream, task_id) == "task_completed"


async def test_another_clients_task_is_403_unless_admin(tmp_path: Path) -> None:
    server = serve(tmp_path, SSE_FAST_AUTH="jwt", SSE_FAST_JWT_SECRET=SECRET)
    try:

        def bearer(sub: str, **claims: Any) -> dict[str, str]:
            token = jwt.encode({"sub": sub, "exp": int(time.time()) + 600, **claims}, SECRET, algorithm="HS256")
            return {"authorization": f"Bearer {token}"}

        async with httpx.AsyncClient(base_url=server.url) as http:
            body = {"type": "command", "payload": {"commandId": "mine", "action": "execute", "task": "sleep",
                                                    "params": {"seconds": 30}}}  # fmt: skip
            answer = await http.post("/api/commands", json=body, headers=bearer("alice"))
            assert answer.status_code == 202
            task_id = answer.json()["taskId"]
            for method, path in [("GET", ""), ("POST", "/cancel"), ("POST", "/pause"), ("POST", "/resume")]:
                refused = await http.request(method, f"/api/tasks/{task_id}{path}", headers=bearer("mallory"))
                assert (refused.status_code, refused.json()["code"]) == (404, "task_not_found"), path
            assert (await http.get("/api/tasks?all=true", headers=bearer("mallory"))).status_code == 403
            assert (await http.get("/api/tasks", headers=bearer("mallory"))).json() == {"tasks": []}
            cancelled = await http.post(f"/api/tasks/{task_id}/cancel", headers=bearer("root", admin=True))
            assert cancelled.status_code == 200
            assert cancelled.json()["status"] == "cancelled"
    finally:
        server.kill()


@pytest.mark.parametrize("interface", ["rsgi", "asgi"])
async def test_shutdown_cancels_running_tasks_before_the_streams_close(tmp_path: Path, interface: str) -> None:
    server = serve(tmp_path, interface)
    try:
        async with httpx.AsyncClient() as http, open_stream(server.url, client_id="last") as stream:
            task_id = await execute(http, server.url, "last", "count", params={"to": 10_000, "interval": 0.02})
            await until_event(stream, task_id, "task_started")
            server.proc.send_signal(signal.SIGTERM)
            await stream.wait_for(lambda s: bool(s.system("maintenance")))
            kinds = [e["payload"].get("event") for e in stream.envelopes() if e["type"] in ("command", "system")]
            assert kinds.index("task_cancelled") < kinds.index("maintenance")
            cancelled = [e for e in task_events(stream, task_id) if e["type"] == "command"][-1]["payload"]
            assert cancelled == {"event": "task_cancelled", "taskId": task_id, "status": "cancelled",
                                 "reason": "shutdown"}  # fmt: skip
        # SIGTERM was sent once: wait for the exit (a second SIGTERM would force it, and be a race with the first).
        assert server.proc.wait(timeout=20) == 0, server.log()
    finally:
        server.kill()
