"""One client cannot take a shared resource from the others (issue 13, items 15 and 16), on both brokers.

Item 15: the scheduler's queue. A client that queues and pauses long tasks is held to its share of the queue and to
its limit of paused tasks (429 with ``Retry-After``), so that another client's ``execute`` is still accepted; a task
left paused too long is cancelled with the reason ``pause_timeout`` in its record and in its ``task_cancelled``
event.

Item 16: the replay log. A client without grants sending large messages to itself fast is refused (429
``rate_limited`` with ``Retry-After``) before it can push everyone else's history out of the log, so another
client's resume still resumes; a trusted publisher (an API key, a JWT admin) sending the same is not slowed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from _redis import running_redis
from _servers import Server, Stream, open_stream, running_server

pytestmark = [pytest.mark.e2e]

BROKERS = [pytest.param("memory", id="memory"), pytest.param("redis", id="redis", marks=pytest.mark.redis)]
SECRET = "f" * 40
API_KEY = "fairness-publisher-key-0123"
# What the issue reproduced: a body of (nearly) 1 MiB, the default SSE_FAST_MAX_BODY, sent 70 times in a row; 70 MiB
# is more than the default replay log holds (SSE_FAST_REPLAY_BYTES, 64 MiB).
BIG = "x" * (1024 * 1024 - 200)
FLOOD = 70


@contextlib.contextmanager
def server_on(broker: str, tmp_path: Path, **env: str) -> Iterator[Server]:
    settings = dict(env)
    with contextlib.ExitStack() as stack:
        if broker == "redis":
            settings["SSE_FAST_BROKER"] = stack.enter_context(running_redis(tmp_path)).url
        yield stack.enter_context(running_server(tmp_path, env=settings))


def bearer(sub: str, **claims: Any) -> dict[str, str]:
    claims.setdefault("exp", int(time.time()) + 600)
    return {"Authorization": f"Bearer {jwt.encode({'sub': sub, **claims}, SECRET, algorithm='HS256')}"}


# -- item 15: the scheduler's queue ----------------------------------------------------------------------------------


async def command(http: httpx.AsyncClient, url: str, client: str, action: str, **payload: Any) -> httpx.Response:
    body = {"type": "command", "payload": {"commandId": f"{action}-{time.monotonic_ns()}", "action": action, **payload}}
    return await http.post(f"{url}/api/commands", json=body, headers={"x-client-id": client})


def events(stream: Stream, task_id: str) -> list[dict[str, Any]]:
    return [
        e["payload"] for e in stream.envelopes("command") if e["payload"].get("taskId") == task_id
    ]  # fmt: skip


async def paused(stream: Stream, task_id: str) -> None:
    await stream.wait_for(lambda s: any(e["event"] == "task_paused" for e in events(s, task_id)))


@pytest.mark.parametrize("broker", BROKERS)
async def test_a_client_that_queues_and_pauses_long_tasks_leaves_room_for_the_others(
    broker: str, tmp_path: Path
) -> None:
    # The scenario: a queue of 12, filled by one client's sleep(3600) tasks, each paused as it starts.
    with server_on(broker, tmp_path, SSE_FAST_SCHEDULER_QUEUE_SIZE="12") as server:
        async with httpx.AsyncClient(timeout=10) as http, open_stream(server.url, client_id="hog") as stream:
            await stream.wait_for(lambda s: bool(s.system("connect")))
            accepted: list[str] = []
            refused = None
            for _ in range(20):
                answer = await command(http, server.url, "hog", "execute", task="sleep", params={"seconds": 3600})
                if answer.status_code != 202:
                    refused = answer
                    break
                task_id = answer.json()["taskId"]
                accepted.append(task_id)
                pause = await command(http, server.url, "hog", "pause", taskId=task_id)
                assert pause.status_code in (200, 202), pause.text
                await paused(stream, task_id)
            assert refused is not None, "one client queued and paused 20 tasks in a queue of 12"
            assert refused.status_code == 429
            assert refused.json()["code"] == "client_queue_full", refused.text
            assert int(refused.headers["retry-after"]) >= 1
            assert len(accepted) <= 12 // 4  # its share: a quarter of the queue (SSE_FAST_SCHEDULER_CLIENT_QUEUE_SHARE)

            other = await command(http, server.url, "other", "execute", task="sleep", params={"seconds": 0.1})
            assert other.status_code == 202, other.text
            metrics = (await http.get(f"{server.url}/metrics")).text
    assert "sse_fast_scheduler_tasks_refused_client_queue_total 1.0" in metrics


@pytest.mark.parametrize("broker", BROKERS)
async def test_a_client_may_pause_only_so_many_tasks(broker: str, tmp_path: Path) -> None:
    limit = 8  # SSE_FAST_SCHEDULER_CLIENT_PAUSED's default
    with server_on(broker, tmp_path) as server:
        async with httpx.AsyncClient(timeout=10) as http, open_stream(server.url, client_id="pauser") as stream:
            await stream.wait_for(lambda s: bool(s.system("connect")))
            tasks = []
            for _ in range(limit + 1):
                answer = await command(http, server.url, "pauser", "execute", task="sleep", params={"seconds": 3600})
                assert answer.status_code == 202, answer.text
                tasks.append(answer.json()["taskId"])
            for task_id in tasks[:limit]:
                pause = await command(http, server.url, "pauser", "pause", taskId=task_id)
                assert pause.status_code in (200, 202), pause.text
            last = await http.post(f"{server.url}/api/tasks/{tasks[limit]}/pause", headers={"x-client-id": "pauser"})
            assert last.status_code == 429, last.text
            assert last.json()["code"] == "too_many_paused"
            assert int(last.headers["retry-after"]) >= 1
            record = await http.get(f"{server.url}/api/tasks/{tasks[limit]}", headers={"x-client-id": "pauser"})
            assert record.json()["status"] in ("pending", "running")  # the refused pause changed nothing
            # Room again once one of them is resumed.
            assert (await command(http, server.url, "pauser", "resume", taskId=tasks[0])).status_code == 200
            again = await command(http, server.url, "pauser", "pause", taskId=tasks[limit])
            assert again.status_code in (200, 202), again.text
            for task_id in tasks:
                await command(http, server.url, "pauser", "cancel", taskId=task_id)


@pytest.mark.parametrize("broker", BROKERS)
async def test_a_task_paused_past_the_limit_is_cancelled_with_the_reason(broker: str, tmp_path: Path) -> None:
    env = {"SSE_FAST_SCHEDULER_PAUSE_TIMEOUT": "1", "SSE_FAST_SCHEDULER_CLIENT_CONCURRENCY": "1"}
    with server_on(broker, tmp_path, **env) as server:
        async with httpx.AsyncClient(timeout=10) as http, open_stream(server.url, client_id="idler") as stream:
            await stream.wait_for(lambda s: bool(s.system("connect")))
            # One paused while it runs (at its checkpoint, its handler alive), one paused while it waits for a slot.
            running = await command(http, server.url, "idler", "execute", task="sleep", params={"seconds": 3600})
            waiting = await command(http, server.url, "idler", "execute", task="sleep", params={"seconds": 3600})
            ids = [running.json()["taskId"], waiting.json()["taskId"]]
            await stream.wait_for(lambda s: any(e["event"] == "task_started" for e in events(s, ids[0])))
            for task_id in reversed(ids):  # the waiting one first, before the other's pause frees the slot
                assert (await command(http, server.url, "idler", "pause", taskId=task_id)).status_code in (200, 202)
                await paused(stream, task_id)

            def both_cancelled(s: Stream) -> bool:
                return all(any(e["event"] == "task_cancelled" for e in events(s, i)) for i in ids)

            await stream.wait_for(both_cancelled, timeout=15)
            for task_id in ids:
                ended = [e for e in events(stream, task_id) if e["event"] == "task_cancelled"]
                assert ended == [{"event": "task_cancelled", "taskId": task_id, "status": "cancelled",
                                  "reason": "pause_timeout"}]  # fmt: skip
                record = (await http.get(f"{server.url}/api/tasks/{task_id}", headers={"x-client-id": "idler"})).json()
                assert record["status"] == "cancelled"
                assert record["error"].startswith("pause_timeout")
            # Its slot and its share are free again: the next task runs.
            fresh = await command(http, server.url, "idler", "execute", task="sleep", params={"seconds": 0.1})
            fresh_id = fresh.json()["taskId"]
            await stream.wait_for(lambda s: any(e["event"] == "task_completed" for e in events(s, fresh_id)))


# -- item 16: the replay log -----------------------------------------------------------------------------------------


async def flood(
    http: httpx.AsyncClient, url: str, target: str, headers: dict[str, str], n: int
) -> list[httpx.Response]:
    """``n`` messages of about 1 MiB to ``target``, back to back; stops at the first refusal."""
    answers = []
    for i in range(n):
        answer = await http.post(
            f"{url}/api/direct/{target}", json={"type": "json", "payload": {"i": i, "pad": BIG}}, headers=headers
        )
        answers.append(answer)
        if answer.status_code != 202:
            break
    return answers


@pytest.mark.parametrize("broker", BROKERS)
async def test_a_client_flooding_the_log_is_rate_limited_and_resumes_still_resume(broker: str, tmp_path: Path) -> None:
    env = {"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_SECRET": SECRET, "SSE_FAST_API_KEYS": API_KEY}
    with server_on(broker, tmp_path, **env) as server:
        url = server.url
        async with httpx.AsyncClient(timeout=30) as http:
            # The victim has a cursor, then goes away; a message for it waits in the log after that cursor.
            async with open_stream(url, client_id="", headers=bearer("victim")) as victim:
                await victim.wait_for(lambda s: bool(s.system("connect")))
                sent = await http.post(f"{url}/api/direct/victim", json={"type": "json", "payload": "before"},
                                       headers={"x-api-key": API_KEY})  # fmt: skip
                assert sent.status_code == 202
                await victim.wait_for(lambda s: any(e["payload"] == "before" for e in s.envelopes("json")))
                cursor = victim.last_id
            after = await http.post(f"{url}/api/direct/victim", json={"type": "json", "payload": "after"},
                                    headers={"x-api-key": API_KEY})  # fmt: skip
            assert after.status_code == 202

            # A client with no grants at all sends ~1 MiB messages to itself as fast as it can.
            answers = await flood(http, url, "flooder", bearer("flooder"), FLOOD)

            # The victim's history is still there (before the limits, the flood had emptied the log: `expired`).
            async with open_stream(url, client_id="", headers={**bearer("victim"), "Last-Event-ID": cursor}) as back:
                await back.wait_for(lambda s: bool(s.system("connect")))
                detail = back.system("connect")[0]["payload"]["detail"]
                assert detail["resumed"] is True, detail
                await back.wait_for(lambda s: any(e["payload"] == "after" for e in s.envelopes("json")))

            # Because the flooder was stopped at its burst (SSE_FAST_PUBLISH_BURST_BYTES, 2 MiB), not the log's 64 MiB.
            refused = answers[-1]
            assert refused.status_code == 429, f"all {len(answers)} messages of 1 MiB were accepted"
            assert refused.json()["code"] == "rate_limited"
            assert refused.headers["retry-after"].isdigit()
            assert int(refused.headers["retry-after"]) >= 1
            assert len(answers) - 1 <= 4

            # Trusted publishers sending the same are not slowed: an API key, and a JWT admin.
            for trusted in ({"x-api-key": API_KEY}, bearer("backend", admin=True)):
                answers = await flood(http, url, "flooder", trusted, 8)
                assert [a.status_code for a in answers] == [202] * 8, answers[-1].text
            metrics = (await http.get(f"{url}/metrics")).text
    assert "sse_fast_publish_rate_limited_total 1.0" in metrics
