"""End to end: the streaming server as granian runs it, on loopback, with real HTTP clients."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from _servers import Server, open_stream, running_server

pytestmark = pytest.mark.e2e

FAST = {"SSE_FAST_KEEPALIVE": "0.5", "SSE_FAST_HEARTBEAT": "1"}


@pytest.fixture(scope="module", params=["rsgi", "asgi"])
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Server]:
    """One server per interface: every test that uses it runs under RSGI and under ASGI."""
    with running_server(tmp_path_factory.mktemp("server"), env=FAST, interface=request.param) as srv:
        yield srv


def post(server: Server, path: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=10)


def publish(server: Server, **envelope: Any) -> dict[str, Any]:
    envelope.setdefault("type", "json")
    response = post(server, "/api/messages", envelope)
    assert response.status_code in (200, 202), response.text
    return dict(response.json())


# -- the stream --------------------------------------------------------------------------------------------------


async def test_stream_opens_with_retry_then_connect_frame_carrying_a_cursor(server: Server) -> None:
    async with open_stream(server.url, client_id="opener") as stream:
        await stream.wait_for(lambda s: bool(s.system("connect")))
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert stream.headers["cache-control"] == "no-cache"
        assert stream.headers["x-accel-buffering"] == "no"
        assert bytes(stream.raw).startswith(b"retry: 3000\n\n")
        connect = stream.system("connect")[0]
        detail = connect["payload"]["detail"]
        assert detail["clientId"] == "opener"
        assert detail["resumed"] is False
        assert detail["missed"] == 0
        assert abs(detail["serverTime"] - connect["timestamp"]) < 5000
        assert connect["source"] == "server"
        assert re.fullmatch(r"[0-9a-f]+-\d+", stream.last_id), stream.last_id
        assert stream.decoder.retry == 3000


async def test_keepalive_comments_and_heartbeat_frames_without_ids(server: Server) -> None:
    async with open_stream(server.url, client_id="idle") as stream:
        await stream.wait_for(lambda s: b": keepalive\n\n" in s.raw and bool(s.envelopes("heartbeat")), timeout=5)
        cursor = stream.last_id
        heartbeat = stream.envelopes("heartbeat")[0]
        assert heartbeat["payload"]["serverTime"] > 0
        assert heartbeat["ephemeral"] is True
        # Neither a keepalive nor a heartbeat moves the resume cursor.
        assert b"id:" not in bytes(stream.raw).split(b"event: heartbeat")[1].split(b"\n\n")[0]
        assert stream.last_id == cursor


async def test_broadcast_topic_and_direct_routing(server: Server) -> None:
    async with (
        open_stream(server.url, client_id="r-a", topics="orders.*") as a,
        open_stream(server.url, client_id="r-b", topics="orders.eu.>") as b,
        open_stream(server.url, client_id="r-c") as c,
    ):
        for s in (a, b, c):
            await s.wait_for(lambda s: bool(s.system("connect")))
        publish(server, topic="orders.us", payload={"n": 1})
        publish(server, topic="orders.eu.fr", payload={"n": 2})
        publish(server, target="r-c", payload={"n": 3})
        answer = post(
            server, "/api/broadcast", {"message": {"type": "json", "payload": {"n": 4}}, "excludeClientId": "r-b"}
        )
        assert answer.status_code == 202
        assert answer.json()["sentCount"] >= 2
        await a.wait_for(lambda s: [e["payload"]["n"] for e in s.envelopes("json")] == [1, 4])
        await b.wait_for(lambda s: [e["payload"]["n"] for e in s.envelopes("json")] == [2])
        await c.wait_for(lambda s: [e["payload"]["n"] for e in s.envelopes("json")] == [3, 4])
        # Nothing else arrives late.
        publish(server, target="r-a", payload={"n": 5})
        await a.wait_for(lambda s: [e["payload"]["n"] for e in s.envelopes("json")] == [1, 4, 5])
        assert [e["payload"]["n"] for e in b.envelopes("json")] == [2]


async def test_every_connection_of_a_client_gets_its_targeted_messages(server: Server) -> None:
    async with open_stream(server.url, client_id="multi") as one, open_stream(server.url, client_id="multi") as two:
        for s in (one, two):
            await s.wait_for(lambda s: bool(s.system("connect")))
        answer = publish(server, target="multi", payload="both")
        assert answer["delivered"] == 2
        assert answer["queued"] is False
        for s in (one, two):
            await s.wait_for(lambda s: [e["payload"] for e in s.envelopes("json")] == ["both"])


async def test_past_the_per_client_limit_the_oldest_is_replaced(tmp_path: Path) -> None:
    with running_server(tmp_path, env={"SSE_FAST_MAX_CONNECTIONS_PER_CLIENT": "2"}) as srv:
        async with open_stream(srv.url, client_id="tabs") as first:
            await first.wait_for(lambda s: bool(s.system("connect")))
            async with open_stream(srv.url, client_id="tabs") as second:
                await second.wait_for(lambda s: bool(s.system("connect")))
                async with open_stream(srv.url, client_id="tabs") as third:
                    await third.wait_for(lambda s: bool(s.system("connect")))
                    await first.wait_for(lambda s: s.closed.is_set())
                    disconnect = first.system("disconnect")
                    assert disconnect
                    assert disconnect[0]["payload"]["detail"]["reason"] == "replaced"
                    assert not second.closed.is_set()
                    assert publish(srv, target="tabs", payload=1)["delivered"] == 2


# -- resume ------------------------------------------------------------------------------------------------------


async def test_resume_replays_what_was_missed_exactly_once_in_order(server: Server) -> None:
    async with open_stream(server.url, client_id="resumer", topics="feed") as stream:
        publish(server, topic="feed", payload=0)
        await stream.count("json", 1)
        cursor = stream.last_id
    for n in range(1, 6):
        publish(server, topic="feed", payload=n)
    publish(server, topic="other", payload="not mine")
    async with open_stream(server.url, client_id="resumer", topics="feed", headers={"Last-Event-ID": cursor}) as again:
        await again.count("json", 5)
        connect = again.system("connect")[0]["payload"]["detail"]
        assert connect["resumed"] is True
        assert connect["missed"] == 5
        publish(server, topic="feed", payload=6)
        await again.count("json", 6)
        assert [e["payload"] for e in again.envelopes("json")] == [1, 2, 3, 4, 5, 6]


async def test_resume_with_the_query_parameter_for_browsers(server: Server) -> None:
    async with open_stream(server.url, client_id="browser") as stream:
        await stream.wait_for(lambda s: bool(s.system("connect")))
        cursor = stream.last_id
    publish(server, target="browser", payload="while away")
    async with open_stream(server.url, client_id="browser", query=f"lastEventId={cursor}") as again:
        await again.count("json", 1)
        assert again.system("connect")[0]["payload"]["detail"]["resumed"] is True
        assert [e["payload"] for e in again.envelopes("json")] == ["while away"]


async def test_no_gap_and_no_duplicate_at_the_seam_under_continuous_publishing(server: Server) -> None:
    stop = asyncio.Event()

    async def publisher() -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            n = 0
            while not stop.is_set():
                response = await http.post(
                    f"{server.url}/api/messages", json={"type": "json", "topic": "seam", "payload": n}
                )
                assert response.status_code == 202
                n += 1

    task = asyncio.create_task(publisher())
    received: list[int] = []
    cursor = None
    for _ in range(5):
        headers = {"Last-Event-ID": cursor} if cursor else {}
        async with open_stream(server.url, client_id="seamer", topics="seam", headers=headers) as stream:
            await stream.wait_for(lambda s: len(s.envelopes("json")) >= 10)
            # Every frame here carries an id (one priority), so the cursor covers every dispatched event.
            received.extend(e["payload"] for e in stream.envelopes("json"))
            cursor = stream.last_id
    stop.set()
    await task
    first = received[0]
    assert received == list(range(first, first + len(received))), "gap or duplicate at a seam"


async def test_unknown_and_expired_cursors_say_resumed_false_with_the_reason(tmp_path: Path) -> None:
    with running_server(tmp_path, env={"SSE_FAST_REPLAY_SIZE": "3"}) as srv:
        async with open_stream(srv.url, client_id="gap", headers={"Last-Event-ID": "deadbeef-1"}) as stream:
            await stream.wait_for(lambda s: bool(s.system("connect")))
            detail = stream.system("connect")[0]["payload"]["detail"]
            assert (detail["resumed"], detail["reason"]) == (False, "unknown_cursor")
            cursor = stream.last_id
        for n in range(5):
            publish(srv, payload=n)
        async with open_stream(srv.url, client_id="gap", headers={"Last-Event-ID": cursor}) as stream:
            await stream.wait_for(lambda s: bool(s.system("connect")))
            detail = stream.system("connect")[0]["payload"]["detail"]
            assert (detail["resumed"], detail["reason"]) == (False, "expired")
            assert stream.envelopes("json") == []


# -- mailbox and acks --------------------------------------------------------------------------------------------


async def test_a_message_to_an_offline_client_waits_in_its_mailbox(server: Server) -> None:
    answer = publish(server, target="sleeper", payload="wake up")
    assert (answer["delivered"], answer["queued"]) == (0, True)
    async with open_stream(server.url, client_id="sleeper") as stream:
        await stream.count("json", 1)
        assert [e["payload"] for e in stream.envelopes("json")] == ["wake up"]
        assert stream.system("connect")[0]["payload"]["detail"]["missed"] == 1
    async with open_stream(server.url, client_id="sleeper") as stream:
        await stream.wait_for(lambda s: bool(s.system("connect")))
        publish(server, target="sleeper", payload="live")
        await stream.count("json", 1)
        assert [e["payload"] for e in stream.envelopes("json")] == ["live"], "the mailbox is delivered once"


async def test_require_ack_redelivers_until_acked_and_tells_the_source(tmp_path: Path) -> None:
    env = {"SSE_FAST_ACK_TIMEOUT": "0.5", "SSE_FAST_ACK_RETRIES": "5"}
    with running_server(tmp_path, env=env) as srv:
        async with open_stream(srv.url, client_id="acker") as target, open_stream(srv.url, client_id="sender") as src:
            for s in (target, src):
                await s.wait_for(lambda s: bool(s.system("connect")))
            body = {"type": "json", "target": "acker", "payload": "please ack", "requireAck": True}
            answer = post(srv, "/api/messages", body, **{"X-Client-Id": "sender"}).json()
            message_id = answer["messageId"]
            await target.count("json", 2, timeout=5)
            copies = target.envelopes("json")
            assert {e["id"] for e in copies} == {message_id}, "a redelivery keeps the message id"
            status = httpx.get(f"{srv.url}/api/messages/{message_id}", headers={"X-Client-Id": "sender"}).json()
            assert status == {"status": "delivered", "ackedBy": []}
            for _ in range(2):  # acks are idempotent
                acked = post(srv, "/api/ack", {"messageIds": [message_id, "unknown-id"]}, **{"X-Client-Id": "acker"})
                assert acked.json() == {"acked": 1}
            status = httpx.get(f"{srv.url}/api/messages/{message_id}", headers={"X-Client-Id": "sender"}).json()
            assert status == {"status": "acked", "ackedBy": ["acker"]}
            await src.count("ack", 1)
            assert src.envelopes("ack")[0]["payload"] == {"messageId": message_id, "clientId": "acker"}
            count = len(target.envelopes("json"))
            await asyncio.sleep(1.2)  # ok-sleep: proving that nothing more arrives after the ack
            assert len(target.envelopes("json")) == count


async def test_require_ack_expires_after_the_retry_limit(tmp_path: Path) -> None:
    env = {"SSE_FAST_ACK_TIMEOUT": "0.3", "SSE_FAST_ACK_RETRIES": "1"}
    with running_server(tmp_path, env=env) as srv:
        async with open_stream(srv.url, client_id="ignorer") as target:
            await target.wait_for(lambda s: bool(s.system("connect")))
            answer = publish(srv, target="ignorer", payload="x", requireAck=True)
            await target.count("json", 2, timeout=5)

            def expired() -> bool:
                status = httpx.get(f"{srv.url}/api/messages/{answer['messageId']}").json()
                return bool(status["status"] == "expired")

            deadline = asyncio.get_running_loop().time() + 5
            while not expired():
                assert asyncio.get_running_loop().time() < deadline, "never expired"
                await asyncio.sleep(0.1)  # ok-sleep: polling the status endpoint
            assert len(target.envelopes("json")) == 2, "one delivery plus ACK_RETRIES=1 redelivery"


async def test_idempotent_publish_with_a_client_set_id(server: Server) -> None:
    body = {"id": "order-42", "type": "json", "payload": 1, "target": "nobody-here"}
    first = post(server, "/api/messages", body, **{"X-Client-Id": "shop"})
    again = post(server, "/api/messages", body, **{"X-Client-Id": "shop"})
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json() == {"success": True, "messageId": "order-42", "duplicate": True, "delivered": 0}


# -- cleanup -----------------------------------------------------------------------------------------------------


async def test_disconnects_free_every_connection(tmp_path: Path) -> None:
    with running_server(tmp_path) as srv:

        async def cycle(i: int) -> None:
            async with open_stream(srv.url, client_id=f"cyc{i % 50}", topics=f"t{i % 7}") as stream:
                await stream.wait_for(lambda s: bool(s.system("connect")))

        for start in range(0, 2000, 100):
            await asyncio.gather(*(cycle(i) for i in range(start, start + 100)))

        deadline = asyncio.get_running_loop().time() + 10
        while True:
            rows = httpx.get(f"{srv.url}/api/connections").json()
            metrics = httpx.get(f"{srv.url}/metrics").text
            if rows == [] and "sse_fast_connections 0.0" in metrics:
                break
            assert asyncio.get_running_loop().time() < deadline, (len(rows), metrics)
            await asyncio.sleep(0.1)  # ok-sleep: polling until the last disconnects are seen
        assert "sse_fast_connections_opened_total 2000.0" in metrics
        assert "sse_fast_queued_frames 0.0" in metrics


# -- operations --------------------------------------------------------------------------------------------------


def test_health_readiness_and_metrics(server: Server) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    metrics = httpx.get(f"{server.url}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in (
        "sse_fast_connections",
        "sse_fast_delivered_total",
        "sse_fast_evicted_total",
        "sse_fast_slow_consumer_closes_total",
        "sse_fast_replayed_total",
        "sse_fast_acks_acked_total",
        "sse_fast_queued_frames",
        "sse_fast_published_total",
    ):
        assert f"\n{name} " in metrics.text, name


def test_openapi_lists_every_route_with_generated_schemas(server: Server) -> None:
    doc = httpx.get(f"{server.url}/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    paths = doc["paths"]
    for method, path in [
        ("get", "/sse"),
        ("post", "/api/messages"),
        ("post", "/api/direct/{clientId}"),
        ("post", "/api/broadcast"),
        ("post", "/api/commands"),
        ("post", "/api/ack"),
        ("get", "/api/messages/{id}"),
        ("get", "/api/connections"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
    ]:
        assert method in paths[path], (method, path)
    envelope = doc["components"]["schemas"]["Envelope"]
    assert envelope["properties"]["priority"]["maximum"] == 3
    assert envelope["additionalProperties"] is False


@pytest.mark.parametrize(("command", "interface"), [("serve", "rsgi"), ("granian", "rsgi"), ("granian", "asgi")])
def test_sigterm_sends_maintenance_and_exits_cleanly(tmp_path: Path, command: str, interface: str) -> None:
    async def scenario(srv: Server) -> tuple[list[dict[str, Any]], int | None]:
        async with open_stream(srv.url, client_id="leaving") as stream:
            await stream.wait_for(lambda s: bool(s.system("connect")))
            srv.proc.send_signal(15)
            await stream.wait_for(lambda s: s.closed.is_set(), timeout=15)
            return stream.system("maintenance"), stream.decoder.retry

    env = {"SSE_FAST_RETRY_SPREAD": "2"}
    with running_server(tmp_path, env=env, command=command, interface=interface) as srv:
        maintenance, retry = asyncio.run(scenario(srv))
        assert srv.proc.wait(20) == 0
    assert len(maintenance) == 1
    assert retry is not None
    assert 3000 <= retry <= 5000
    assert maintenance[0]["payload"]["detail"]["retryMs"] == retry


def test_serve_refuses_several_workers_on_the_memory_broker(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [str(Path(sys.executable).parent / "sse-fast"), "serve", "--workers", "2", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "SSE_FAST_KEEPALIVE": "abc"},
    )
    assert result.returncode == 2
    assert "redis://" in result.stderr
    assert "SSE_FAST_KEEPALIVE='abc'" in result.stderr, "every problem is reported at once"
