"""End to end, issue 13 items 7, 11 and 19: who may ack, what another client's ids answer, requireAck ids per
source, dedupe of client ids only, and the Redis ack script (bounded ackers, one call per batch).

Every test starts real servers (``sse-fast serve`` on loopback) on the memory broker and on Redis (a private
``redis-server``), and talks to them over HTTP; redelivery and expiry are waited for with deadlines, never slept.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis

from _redis import RedisServer, running_redis
from _servers import Server, open_stream, running_server
from sse_fast.broker.redis import scripts
from sse_fast.broker.rules import MAX_ACKERS

pytestmark = pytest.mark.e2e

SECRET = "q" * 40
API_KEY = "k" * 24
BROKERS = [pytest.param("memory", id="memory"), pytest.param("redis", id="redis", marks=pytest.mark.redis)]
#: A short ack timeout and two retries: a message is redelivered within about a second, expired within a few.
ACKS = {"SSE_FAST_ACK_TIMEOUT": "1", "SSE_FAST_ACK_RETRIES": "2"}


def bearer(sub: str, **claims: Any) -> dict[str, str]:
    claims.setdefault("exp", int(time.time()) + 600)
    return {"Authorization": f"Bearer {jwt.encode({'sub': sub, **claims}, SECRET, algorithm='HS256')}"}


def as_client(client_id: str) -> dict[str, str]:
    """A caller under ``auth = none``."""
    return {"X-Client-Id": client_id}


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@contextlib.contextmanager
def serving(
    tmp_path: Path, broker: str, request: pytest.FixtureRequest, *, auth: str = "jwt", **settings: str
) -> Iterator[Server]:
    """A server on ``broker`` (Redis: the module's redis-server, emptied first) with short ack deadlines."""
    env = {**ACKS, **settings}
    if auth == "jwt":
        env.update({"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_SECRET": SECRET, "SSE_FAST_API_KEYS": API_KEY})
    if broker == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        with server.client() as client:
            client.flushall()
        env["SSE_FAST_BROKER"] = server.url
    with running_server(tmp_path, env=env) as srv:
        yield srv


def publish(url: str, body: dict[str, Any], headers: dict[str, str], path: str = "/api/messages") -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers=headers)


def ack(url: str, ids: list[str], headers: dict[str, str]) -> int:
    answer = httpx.post(f"{url}/api/ack", json={"messageIds": ids}, headers=headers)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["acked"])


def status(url: str, message_id: str, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(f"{url}/api/messages/{message_id}", headers=headers)


def eventually(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)  # ok-sleep: polling a server for a condition, with a deadline


# -- item 7: only a client that could receive a message may ack it ------------------------------------------------


@pytest.mark.parametrize("broker", BROKERS)
async def test_an_ack_without_the_topic_grant_does_not_stop_redelivery(
    tmp_path: Path, broker: str, request: pytest.FixtureRequest
) -> None:
    with serving(tmp_path, broker, request) as server:
        url = server.url
        sub = bearer("sub", topics=["news.>"])
        async with open_stream(url, client_id="sub", topics="news.eu", headers=sub) as stream:
            assert stream.status == 200
            body = {"type": "json", "payload": "breaking", "topic": "news.eu", "requireAck": True}
            sent = publish(url, body, bearer("pub", publish=["news.>"]))
            assert sent.status_code == 202, sent.text
            message_id = sent.json()["messageId"]
            await stream.count("json", 1)
            # No grant at all, or a grant for other topics: never a recipient, so the ack is not counted.
            assert ack(url, [message_id], bearer("mallory")) == 0
            assert ack(url, [message_id], bearer("sport-fan", topics=["sport.>"])) == 0
            await stream.count("json", 2, timeout=15)  # still redelivered to the real subscriber
            state = status(url, message_id, bearer("pub")).json()
            assert (state["status"], state["ackedBy"]) == ("delivered", [])
            # A client whose grant covers the topic could have received it: its ack counts.
            assert ack(url, [message_id], bearer("reader", topics=["news.*"])) == 1
            assert ack(url, [message_id], sub) == 1
            state = status(url, message_id, bearer("pub")).json()
            assert (state["status"], state["ackedBy"]) == ("acked", ["reader", "sub"])


@pytest.mark.parametrize("broker", BROKERS)
async def test_the_excluded_client_cannot_ack_a_broadcast(
    tmp_path: Path, broker: str, request: pytest.FixtureRequest
) -> None:
    with serving(tmp_path, broker, request) as server:
        url = server.url
        alice = bearer("alice")
        async with open_stream(url, client_id="alice", headers=alice) as stream:
            assert stream.status == 200
            body = {"message": {"type": "json", "payload": "all", "requireAck": True}, "excludeClientId": "bob"}
            sent = publish(url, body, {"X-API-Key": API_KEY}, path="/api/broadcast")
            assert sent.status_code == 202, sent.text
            message_id = sent.json()["messageId"]
            await stream.count("json", 1)
            assert ack(url, [message_id], bearer("bob")) == 0
            await stream.count("json", 2, timeout=15)  # bob's ack did not end it
            assert ack(url, [message_id], alice) == 1
            state = status(url, message_id, {"X-API-Key": API_KEY}).json()
            assert (state["status"], state["ackedBy"]) == ("acked", ["alice"])


@pytest.mark.parametrize("broker", BROKERS)
def test_under_auth_none_a_direct_message_is_acked_only_by_its_target(
    tmp_path: Path, broker: str, request: pytest.FixtureRequest
) -> None:
    with serving(tmp_path, broker, request, auth="none") as server:
        url = server.url
        body = {"type": "json", "payload": 1, "target": "bob", "requireAck": True}
        message_id = publish(url, body, as_client("alice")).json()["messageId"]
        topical = {"type": "json", "payload": 2, "topic": "news.eu", "requireAck": True}
        topic_id = publish(url, topical, as_client("alice")).json()["messageId"]
        assert ack(url, [message_id], as_client("mallory")) == 0
        assert ack(url, [topic_id], as_client("mallory")) == 1  # anybody may subscribe to anything here
        assert ack(url, [message_id], as_client("bob")) == 1
        assert status(url, message_id, as_client("alice")).json()["ackedBy"] == ["bob"]


# -- item 7: another client's message or task is unknown, not forbidden --------------------------------------------


def _same_refusal(mine: httpx.Response, unknown: httpx.Response, *, replace: tuple[str, str] | None = None) -> None:
    assert mine.status_code == unknown.status_code == 404
    body, other = mine.json(), unknown.json()
    if replace is not None:
        body["error"] = body["error"].replace(*replace)
    assert body == other


@pytest.mark.parametrize("broker", BROKERS)
def test_another_clients_message_status_is_as_unknown_as_an_unused_id(
    tmp_path: Path, broker: str, request: pytest.FixtureRequest
) -> None:
    with serving(tmp_path, broker, request) as server:
        url = server.url
        body = {"type": "json", "payload": 1, "target": "bob", "requireAck": True}
        sent = publish(url, body, bearer("alice", direct=True))
        message_id = sent.json()["messageId"]
        assert status(url, message_id, bearer("alice")).status_code == 200
        _same_refusal(status(url, message_id, bearer("mallory")), status(url, "never-used", bearer("mallory")))
        assert status(url, message_id, bearer("root", admin=True)).status_code == 200


@pytest.mark.parametrize("broker", BROKERS)
def test_another_clients_task_is_as_unknown_as_an_unused_id(
    tmp_path: Path, broker: str, request: pytest.FixtureRequest
) -> None:
    with serving(tmp_path, broker, request) as server:
        url = server.url
        command = {"commandId": "c1", "action": "execute", "task": "sleep", "params": {"seconds": 30}}
        sent = publish(url, {"type": "command", "payload": command}, bearer("alice"), path="/api/commands")
        assert sent.status_code == 202, sent.text
        task_id = sent.json()["taskId"]
        assert httpx.get(f"{url}/api/tasks/{task_id}", headers=bearer("alice")).status_code == 200
        mallory = bearer("mallory")
        for method, path in [("GET", ""), ("POST", "/cancel"), ("POST", "/pause"), ("POST", "/resume")]:
            theirs = httpx.request(method, f"{url}/api/tasks/{task_id}{path}", headers=mallory)
            unknown = httpx.request(method, f"{url}/api/tasks/no-such-task{path}", headers=mallory)
            _same_refusal(theirs, unknown, replace=(task_id, "no-such-task"))
        query = {"commandId": "c2", "action": "query", "taskId": task_id}
        theirs = publish(url, {"type": "command", "payload": query}, mallory, path="/api/commands")
        unknown = publish(url, {"type": "command", "payload": {**query, "taskId": "no-such-task"}}, mallory,
                          path="/api/commands")  # fmt: skip
        _same_refusal(theirs, unknown, replace=(task_id, "no-such-task"))
        record = httpx.get(f"{url}/api/tasks/{task_id}", headers=bearer("alice")).json()
        assert record["status"] in ("pending", "running"), "mallory's cancel did nothing"


def test_unknown_task_does_not_list_the_handlers(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    with serving(tmp_path, "memory", request) as server:
        command = {"commandId": "c1", "action": "execute", "task": "no-such-handler"}
        refused = publish(server.url, {"type": "command", "payload": command}, bearer("alice"), path="/api/commands")
        assert (refused.status_code, refused.json()["code"]) == (400, "unknown_task")
        assert refused.json().get("detail") == {"task": "no-such-handler"}
        for handler in ("sleep", "count", "fail"):
            assert f'"{handler}"' not in refused.text


# -- item 11: a requireAck id is released when its message is finished ---------------------------------------------


@pytest.mark.parametrize("broker", BROKERS)
def test_a_finished_require_ack_id_is_released_to_other_sources(
    tmp_path: Path, broker: str, request: pytest.FixtureRequest
) -> None:
    with serving(tmp_path, broker, request) as server:
        url = server.url
        alice, carol = bearer("alice", direct=True), bearer("carol", direct=True)

        def send(headers: dict[str, str], message_id: str, target: str) -> httpx.Response:
            body = {"id": message_id, "type": "json", "payload": 1, "target": target, "requireAck": True}
            return publish(url, body, headers)

        # Acked: the id is free again.
        assert send(alice, "order-1", "bob").status_code == 202
        assert (send(carol, "order-1", "bob").status_code, "while open") == (409, "while open")
        assert ack(url, ["order-1"], bearer("bob")) == 1
        taken = send(carol, "order-1", "bob")
        assert (taken.status_code, taken.json().get("duplicate")) == (202, None), taken.text
        assert status(url, "order-1", carol).json()["status"] in ("pending", "delivered")
        # Expired (nobody acks an offline client's message): the id is free again.
        assert send(alice, "order-2", "dave").status_code == 202
        assert send(carol, "order-2", "dave").status_code == 409
        eventually(lambda: status(url, "order-2", alice).json()["status"] == "expired")
        assert send(carol, "order-2", "dave").status_code == 202


# -- item 19: only client-chosen ids are deduped; the Redis ack script ---------------------------------------------


def _dedupe_entries(url: str, redis_server: RedisServer | None) -> int:
    if redis_server is not None:
        with redis_server.client() as client:
            return sum(1 for _ in client.scan_iter(match="sse:dd:*", count=1000))
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("sse_fast_dedupe_entries "):
            return int(float(line.split()[1]))
    raise AssertionError("no sse_fast_dedupe_entries in /metrics")


@pytest.mark.parametrize("broker", BROKERS)
@pytest.mark.parametrize("ephemeral", [False, True], ids=["resumable", "ephemeral"])
def test_a_server_assigned_id_takes_no_dedupe_entry(
    tmp_path: Path, broker: str, ephemeral: bool, request: pytest.FixtureRequest
) -> None:
    with serving(tmp_path, broker, request) as server:
        url = server.url
        redis_server = request.getfixturevalue("redis_server") if broker == "redis" else None
        alice = bearer("alice")
        before = _dedupe_entries(url, redis_server)
        for n in range(20):
            body = {"type": "json", "payload": n, "target": "alice", "ephemeral": ephemeral}
            assert publish(url, body, alice).status_code == 202
        assert _dedupe_entries(url, redis_server) == before
        chosen = {"id": "mine-1", "type": "json", "payload": 0, "target": "alice", "ephemeral": ephemeral}
        assert publish(url, chosen, alice).status_code == 202
        assert _dedupe_entries(url, redis_server) == before + 1
        again = publish(url, chosen, alice)
        assert (again.status_code, again.json()["duplicate"]) == (200, True)


@pytest.mark.redis
def test_the_redis_acked_by_list_stays_bounded(
    tmp_path: Path, redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    with serving(tmp_path, "redis", request, auth="none") as server:
        url = server.url
        body = {"id": "all-1", "type": "json", "payload": 1, "requireAck": True}
        assert publish(url, body, as_client("ops"), path="/api/messages").status_code == 202
        ackers = MAX_ACKERS + 20
        with httpx.Client(base_url=url) as http:
            for n in range(ackers):
                answer = http.post("/api/ack", json={"messageIds": ["all-1"]}, headers=as_client(f"c{n}"))
                assert answer.json()["acked"] == 1
            # A listed acker's repeat counts once and changes nothing.
            assert http.post("/api/ack", json={"messageIds": ["all-1"]}, headers=as_client("c0")).json()["acked"] == 1
            listed = http.get("/api/messages/all-1", headers=as_client("ops")).json()["ackedBy"]
        assert listed == [f"c{n}" for n in range(MAX_ACKERS)]
        with redis_server.client() as client:
            fields = client.hkeys("sse:ack:all-1")
            by = client.hget("sse:ack:all-1", "by") or b""
            assert int(client.hget("sse:ack:all-1", "n") or 0) == ackers
        assert len(by.split(b",")) == MAX_ACKERS
        assert len(fields) <= MAX_ACKERS + 10, "the ack record grows with the ackers past the bound"


class _Monitor:
    """Redis ``MONITOR`` in a thread: the commands the server sends while the block runs."""

    def __init__(self, server: RedisServer) -> None:
        self._server = server
        self.commands: list[str] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._marker = f"monitor-end-{time.monotonic_ns()}"

    def _run(self) -> None:
        with self._server.client() as client, client.monitor() as monitor:
            self._ready.set()
            for entry in monitor.listen():
                command = str(entry["command"])
                if self._marker in command:
                    return
                self.commands.append(command)

    def __enter__(self) -> _Monitor:
        self._thread.start()
        assert self._ready.wait(5)
        time.sleep(0.2)  # ok-sleep: MONITOR starts streaming just after its reply; nothing here measures time
        return self

    def __exit__(self, *exc: object) -> None:
        with self._server.client() as client:
            client.echo(self._marker)
        self._thread.join(10)
        assert not self._thread.is_alive()


@pytest.mark.redis
def test_a_batch_ack_is_one_script_call(
    tmp_path: Path, redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    with serving(tmp_path, "redis", request, SSE_FAST_ACK_TIMEOUT="300") as server:  # none expires meanwhile
        url = server.url
        bob = bearer("bob")
        ids = [f"batch-{n}" for n in range(20)]
        for message_id in ids:
            body = {"id": message_id, "type": "json", "payload": 1, "target": "bob", "requireAck": True}
            assert publish(url, body, bearer("alice", direct=True)).status_code == 202
        assert ack(url, ["warm-up"], bob) == 0  # the script is loaded into Redis before it is counted
        with _Monitor(redis_server) as monitor:
            assert ack(url, ids, bob) == len(ids)
        # The ack script's calls (the others seen meanwhile: redeliveries, ticks, presence).
        sha = hashlib.sha1(scripts.ACK.encode()).hexdigest()
        calls = [c for c in monitor.commands if c.startswith((f"EVALSHA {sha} ", "EVAL ")) and "sse:ack:" in c]
        assert len(calls) == 1, calls
        assert all(f"sse:ack:{message_id}" in calls[0] for message_id in ids)
        with redis.Redis(port=redis_server.port) as client:
            assert {client.hget(f"sse:ack:{message_id}", "status") for message_id in ids} == {b"acked"}


@pytest.mark.parametrize("broker", BROKERS)
def test_a_finished_messages_status_is_forgotten_after_ack_status_ttl(
    tmp_path: Path, broker: str, request: pytest.FixtureRequest
) -> None:
    # The soak (loadtest/soak.py) found the memory broker keeping every finished status until
    # SSE_FAST_MAX_PENDING_ACKS newer ones pushed it out (sse_fast_acks_tracked grew with the traffic); Redis expired
    # its ack key after a fixed hour. Both now keep it SSE_FAST_ACK_STATUS_TTL past the last redelivery.
    settings = {"SSE_FAST_ACK_TIMEOUT": "1", "SSE_FAST_ACK_RETRIES": "0", "SSE_FAST_ACK_STATUS_TTL": "5"}
    with serving(tmp_path, broker, request, auth="none", **settings) as server:
        url = server.url
        body = {"id": "kept-1", "type": "json", "payload": 1, "target": "bob", "requireAck": True}
        assert publish(url, body, as_client("alice")).status_code == 202
        assert ack(url, ["kept-1"], as_client("bob")) == 1
        answer = status(url, "kept-1", as_client("alice"))
        assert answer.status_code == 200
        assert answer.json()["status"] == "acked"
        eventually(lambda: status(url, "kept-1", as_client("alice")).status_code == 404)
        assert status(url, "kept-1", as_client("alice")).json()["code"] == "unknown_message"
