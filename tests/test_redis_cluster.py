"""Several real server processes on one private redis-server behave as one server (issue 7)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from _redis import RedisServer, running_redis
from _servers import Server, Stream, open_stream, running_server
from sse_fast import Decoder

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

FAST = {"SSE_FAST_KEEPALIVE": "0.5", "SSE_FAST_HEARTBEAT": "1"}


@contextlib.contextmanager
def nodes(tmp_path: Path, redis_url: str, n: int, **env: str) -> Iterator[list[Server]]:
    """``n`` server processes (different ports) on one Redis."""
    with contextlib.ExitStack() as stack:
        servers = [
            stack.enter_context(running_server(tmp_path, env={**FAST, "SSE_FAST_BROKER": redis_url, **env}))
            for _ in range(n)
        ]
        yield servers


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[list[Server]]:
    """Three nodes on one Redis, shared by the tests that do not kill anything."""
    with nodes(tmp_path_factory.mktemp("cluster"), redis_server.url, 3) as servers:
        yield servers


def post(server: Server, path: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=10)


def publish(server: Server, **envelope: Any) -> dict[str, Any]:
    envelope.setdefault("type", "json")
    response = post(server, "/api/messages", envelope)
    assert response.status_code in (200, 202), response.text
    return dict(response.json())


def payloads(stream: Stream) -> list[Any]:
    return [e["payload"] for e in stream.envelopes("json")]


async def connected(*streams: Stream) -> None:
    for stream in streams:
        await stream.wait_for(lambda s: bool(s.system("connect")))


async def test_broadcast_topic_and_direct_reach_every_node(cluster: list[Server]) -> None:
    a, b, c = cluster
    async with (
        open_stream(b.url, client_id="x-b", topics="orders.*") as on_b,
        open_stream(c.url, client_id="x-c", topics="orders.eu.>") as on_c,
        open_stream(a.url, client_id="x-a") as on_a,
    ):
        await connected(on_a, on_b, on_c)
        publish(a, topic="orders.us", payload=1)
        publish(c, topic="orders.eu.fr", payload=2)
        assert publish(b, target="x-c", payload=3)["queued"] is False
        answer = post(a, "/api/broadcast", {"message": {"type": "json", "payload": 4}, "excludeClientId": "x-b"})
        assert answer.status_code == 202
        # delivered counts the connections on the node that took the publish.
        assert answer.json()["sentCount"] == 1
        await on_b.wait_for(lambda s: payloads(s) == [1])
        await on_c.wait_for(lambda s: payloads(s) == [2, 3, 4])
        await on_a.wait_for(lambda s: payloads(s) == [4])
        publish(b, target="x-b", payload=5)
        await on_b.wait_for(lambda s: payloads(s) == [1, 5])
        assert payloads(on_c) == [2, 3, 4]
        assert payloads(on_a) == [4]


async def test_ephemeral_messages_cross_nodes_without_a_cursor(cluster: list[Server]) -> None:
    a, b, _ = cluster
    async with open_stream(b.url, client_id="eph") as stream:
        await connected(stream)
        cursor = stream.last_id
        publish(a, target="eph", payload="blink", ephemeral=True)
        await stream.wait_for(lambda s: payloads(s) == ["blink"])
        assert stream.last_id == cursor


async def test_resume_on_another_node_after_publishes_on_a_third(cluster: list[Server]) -> None:
    a, b, c = cluster
    async with open_stream(a.url, client_id="mover", topics="news") as first:
        await connected(first)
        publish(c, target="mover", payload="live")
        await first.wait_for(lambda s: payloads(s) == ["live"])
        cursor = first.last_id
    publish(c, target="mover", payload="m1")
    publish(c, topic="news", payload="m2")
    publish(c, topic="sport", payload="not-mine")
    publish(c, target="someone-else", payload="not-mine")
    publish(c, payload="m3")
    async with open_stream(b.url, client_id="mover", topics="news", headers={"Last-Event-ID": cursor}) as second:
        await connected(second)
        detail = second.system("connect")[0]["payload"]["detail"]
        assert detail["resumed"] is True
        assert detail["missed"] == 3
        await second.wait_for(lambda s: payloads(s) == ["m1", "m2", "m3"])
        publish(a, target="mover", payload="after")
        await second.wait_for(lambda s: payloads(s) == ["m1", "m2", "m3", "after"])
        # The cursors the resumed stream hands out are valid on a third node too.
        cursor = second.last_id
    publish(b, payload="m4")
    async with open_stream(c.url, client_id="mover", topics="news", headers={"Last-Event-ID": cursor}) as third:
        await third.wait_for(lambda s: payloads(s) == ["m4"])
        assert third.system("connect")[0]["payload"]["detail"]["resumed"] is True


async def test_cursors_of_another_epoch_or_never_issued_are_unknown(cluster: list[Server]) -> None:
    a, _, _ = cluster
    async with open_stream(a.url, client_id="lost", headers={"Last-Event-ID": "deadbeef-12"}) as stream:
        await connected(stream)
        detail = stream.system("connect")[0]["payload"]["detail"]
        assert (detail["resumed"], detail["reason"]) == (False, "unknown_cursor")
        epoch = stream.last_id.rpartition("-")[0]
    future = f"{epoch}-{(int(1e12) << 20) * 3}"  # a position no node can have issued
    async with open_stream(a.url, client_id="lost", headers={"Last-Event-ID": future}) as stream:
        await connected(stream)
        assert stream.system("connect")[0]["payload"]["detail"]["reason"] == "unknown_cursor"


async def test_mailbox_of_an_offline_client_is_delivered_on_any_node(cluster: list[Server]) -> None:
    a, b, _ = cluster
    assert publish(a, target="away", payload="while-away")["queued"] is True
    async with open_stream(b.url, client_id="away") as stream:
        await stream.wait_for(lambda s: payloads(s) == ["while-away"])
        assert stream.system("connect")[0]["payload"]["detail"]["missed"] == 1
    async with open_stream(a.url, client_id="away") as again:  # taken once
        await connected(again)
        publish(b, target="away", payload="live")
        await again.wait_for(lambda s: payloads(s) == ["live"])


async def test_acks_and_status_work_wherever_the_request_lands(cluster: list[Server]) -> None:
    a, b, c = cluster
    async with (
        open_stream(b.url, client_id="acker") as target,
        open_stream(c.url, client_id="sender") as source,
    ):
        await connected(target, source)
        answer = post(
            a,
            "/api/messages",
            {"type": "json", "target": "acker", "payload": 1, "requireAck": True},
            **{"X-Client-Id": "sender"},
        )
        assert answer.status_code == 202
        message_id = answer.json()["messageId"]
        await target.wait_for(lambda s: payloads(s) == [1])

        async def status(server: Server) -> str:
            response = httpx.get(f"{server.url}/api/messages/{message_id}", headers={"X-Client-Id": "sender"})
            assert response.status_code == 200, response.text
            return str(response.json()["status"])

        deadline = asyncio.get_running_loop().time() + 5
        while await status(c) != "delivered":
            assert asyncio.get_running_loop().time() < deadline, "never marked delivered"
            await asyncio.sleep(0.05)  # ok-sleep: polling another process's state with a deadline
        assert post(c, "/api/ack", {"messageIds": [message_id]}, **{"X-Client-Id": "acker"}).json() == {"acked": 1}
        assert await status(a) == "acked"
        await source.wait_for(lambda s: len(s.envelopes("ack")) == 1)
        assert source.envelopes("ack")[0]["payload"] == {"messageId": message_id, "clientId": "acker"}
        # Acks are idempotent on every node: counted, but the source is told once.
        assert post(b, "/api/ack", {"messageIds": [message_id]}, **{"X-Client-Id": "acker"}).json() == {"acked": 1}
        assert post(b, "/api/ack", {"messageIds": ["never-sent"]}, **{"X-Client-Id": "acker"}).json() == {"acked": 0}
        publish(b, target="sender", payload="marker")
        await source.wait_for(lambda s: payloads(s) == ["marker"])
        assert len(source.envelopes("ack")) == 1


async def test_dedupe_holds_across_nodes(cluster: list[Server]) -> None:
    a, b, _ = cluster
    first = post(a, "/api/messages", {"id": "once-1", "type": "json", "payload": 1}, **{"X-Client-Id": "dd"})
    again = post(b, "/api/messages", {"id": "once-1", "type": "json", "payload": 1}, **{"X-Client-Id": "dd"})
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["duplicate"] is True


async def test_exactly_once_per_connection_under_concurrent_publishes_from_every_node(cluster: list[Server]) -> None:
    per_node = 60
    async with contextlib.AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(open_stream(s.url, client_id=f"ex-{i}")) for i, s in enumerate(cluster)
        ]
        await connected(*streams)

        async def burst(server: Server, node: int) -> None:
            async with httpx.AsyncClient(timeout=10) as http:
                for i in range(per_node):
                    body = {"message": {"type": "json", "payload": f"{node}-{i}"}}
                    response = await http.post(f"{server.url}/api/broadcast", json=body)
                    assert response.status_code == 202

        await asyncio.gather(*(burst(s, n) for n, s in enumerate(cluster)))
        total = per_node * len(cluster)
        for stream in streams:
            await stream.wait_for(lambda s: len(payloads(s)) >= total, timeout=20)
        orders = [payloads(s) for s in streams]
        for order in orders:
            assert len(order) == total
            assert len(set(order)) == total
        # One log, one order: every connection on every node saw the same sequence.
        assert orders[0] == orders[1] == orders[2]


async def test_resume_on_another_node_while_publishing_has_no_gap_and_no_duplicate(cluster: list[Server]) -> None:
    a, b, c = cluster
    stop = asyncio.Event()
    sent: list[int] = []

    async def publisher() -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            i = 0
            while not stop.is_set():
                body = {"type": "json", "target": "seam", "payload": i}
                response = await http.post(f"{a.url}/api/messages", json=body)
                assert response.status_code == 202
                sent.append(i)
                i += 1

    task = asyncio.create_task(publisher())
    received: list[int] = []
    cursor: str | None = None
    try:
        for hop in range(6):
            node = (b, c)[hop % 2]
            headers = {"Last-Event-ID": cursor} if cursor else {}
            async with open_stream(node.url, client_id="seam", headers=headers) as stream:
                await connected(stream)
                if cursor:
                    assert stream.system("connect")[0]["payload"]["detail"]["resumed"] is True
                await stream.wait_for(lambda s: len(payloads(s)) >= 5)
                # What the stream covered: every frame up to its last id (the low-water mark).
                cursor = stream.last_id
                seen = payloads(stream)
                assert seen == sorted(set(seen)), "a duplicate within one stream"
                text = bytes(stream.raw).decode()
                mark = text.rindex(f"id: {cursor}\n")
                covered = text[: text.index("\n\n", mark) + 2]
                events = Decoder().feed(covered.encode())
                received += [msgspec.json.decode(e.data)["payload"] for e in events if e.event == "json"]
    finally:
        stop.set()
        await task
    assert received, "nothing received"
    assert received == list(range(received[0], received[0] + len(received))), "gap or duplicate at a seam"


def test_a_require_ack_id_cannot_be_taken_over_by_another_source(cluster: list[Server]) -> None:
    a, b, _ = cluster
    body = {"id": "order-x1", "type": "json", "payload": 1, "target": "bob-x", "requireAck": True}
    assert post(a, "/api/messages", body, **{"X-Client-Id": "alice"}).status_code == 202
    taken = post(b, "/api/messages", {**body, "target": "mallory"}, **{"X-Client-Id": "mallory"})
    assert taken.status_code == 409
    assert taken.json()["code"] == "message_id_in_use"
    status = httpx.get(f"{a.url}/api/messages/order-x1", headers={"X-Client-Id": "alice"}).json()
    assert status["ackedBy"] == []
