"""The blocking client (:class:`sse_fast.SyncClient`) against a real server: no event loop in the test's thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from _servers import running_server
from sse_fast import CommandAnswer, Priority, PublishAnswer, SyncClient
from sse_fast.errors import AuthError, TaskError
from sse_fast.models import Envelope, TaskRecord, TasksAnswer

pytestmark = [pytest.mark.timeout(60), pytest.mark.e2e]

REAL_ENV = {"SSE_FAST_RETRY": "100", "SSE_FAST_RETRY_SPREAD": "0", "SSE_FAST_SHUTDOWN_GRACE": "1"}


def sync_client(url: str, client_id: str, **options: Any) -> SyncClient:
    defaults: dict[str, Any] = {"reconnect_base_delay": 0.01, "reconnect_max_delay": 0.05, "connection_timeout": 5.0}
    return SyncClient(url, client_id=client_id, **(defaults | options))


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_publish_and_a_blocking_iterator_of_messages(tmp_path: Path) -> None:
    with running_server(tmp_path, env=REAL_ENV) as server:
        with sync_client(server.url, "alice") as alice, sync_client(server.url, "bob") as bob:
            assert alice.state == "connected"
            first = bob.send_text("one", target="alice", require_ack=True)
            second = bob.send_json({"n": 2}, target="alice", priority=Priority.HIGH)
            assert isinstance(first, PublishAnswer)
            assert (first.delivered, first.duplicate, second.duplicate) == (1, False, False)
            # Sent before the iterator started: held for it, in order.
            got: list[Envelope] = []
            for message in alice.messages():
                got.append(message)
                if len(got) == 2:
                    break
            assert [(m.type, m.payload, m.source) for m in got] == [("text", "one", "bob"), ("json", {"n": 2}, "bob")]
            assert got[1].priority == Priority.HIGH
            # The iterator took the requireAck message: the client acked it for alice.
            url = f"{server.url}/api/messages/{first.message_id}"
            wait_for(lambda: httpx.get(url, headers={"X-Client-Id": "bob"}).json()["status"] == "acked")
            again = bob.send(Envelope(id=first.message_id, type="text", payload="one", target="alice"))
            assert again.duplicate is True
            assert {k: alice.stats().by_type[k] for k in ("text", "json")} == {"text": 1, "json": 1}
            assert alice.history()[-1].payload == {"n": 2}
        assert alice.state == "disconnected"


def test_handlers_run_on_the_client_thread_and_the_iterator_ends_on_close(tmp_path: Path) -> None:
    with running_server(tmp_path, env=REAL_ENV) as server:
        alice = sync_client(server.url, "alice").__enter__()
        threads: list[str] = []
        alice.subscribe("text", lambda m: threads.append(threading.current_thread().name))
        with sync_client(server.url, "bob", auto_connect=False) as bob:
            bob.send_text("hi", target="alice")
        wait_for(lambda: threads == ["sse-fast sync client"])
        ended: list[bool] = []

        def iterate() -> None:
            for _ in alice.messages():
                pass
            ended.append(True)

        reader = threading.Thread(target=iterate, daemon=True)
        reader.start()
        wait_for(lambda: bool(alice._client._listeners))  # the iterator waits for a message
        alice.close()
        reader.join(10)
        assert ended == [True]
        alice.close()  # idempotent


def test_commands_and_tasks_have_typed_answers(tmp_path: Path) -> None:
    with running_server(tmp_path, env=REAL_ENV) as server, sync_client(server.url, "alice") as alice:
        progress: list[float] = []
        assert alice.run_task("count", {"to": 2, "interval": 0.01}, on_progress=lambda p: progress.append(p.progress))
        assert progress[-1] == 100
        with pytest.raises(TaskError) as failed:
            alice.run_task("fail", {"message": "nope", "permanent": True})
        assert failed.value.status == "failed"
        started = alice.send_command("execute", task="sleep", params={"seconds": 30})
        assert isinstance(started, CommandAnswer)
        assert started.duplicate is False
        record = alice.send_command("query", task_id=started.task_id)
        assert isinstance(record, TaskRecord)
        assert (record.task, record.client_id) == ("sleep", "alice")
        tasks = alice.send_command("sync")
        assert isinstance(tasks, TasksAnswer)
        assert started.task_id in {t.task_id for t in tasks.tasks}
        assert len(tasks.tasks) == 3
        cancelled = alice.cancel_task(started.task_id)
        assert isinstance(cancelled, CommandAnswer)
        assert alice.query_progress(started.task_id).status == "cancelled"


def test_a_token_function_is_called_again_on_401(tmp_path: Path) -> None:
    secret = "s" * 32
    env = REAL_ENV | {"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_SECRET": secret}
    calls: list[int] = []

    def token() -> str:  # the first token is stale; the next ones are good
        calls.append(1)
        return "stale" if len(calls) == 1 else jwt.encode({"sub": "alice"}, secret, algorithm="HS256")

    with running_server(tmp_path, env=env) as server:
        with sync_client(server.url, "alice", token=token) as alice:
            assert alice.state == "connected"
            assert len(calls) == 2
            assert alice.send_text("hi", target="alice").delivered == 1
        with pytest.raises(AuthError) as caught, sync_client(server.url, "alice", token=lambda: "never-good"):
            pass
        assert caught.value.status == 401
