"""Redis going away and coming back; per-client limits, presence and workers across nodes (issue 7)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from _redis import running_redis
from _servers import Server, Stream, kill_node, open_stream, running_server

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

WORKERS = ("--workers", "2")
FAST = {"SSE_FAST_KEEPALIVE": "0.5", "SSE_FAST_HEARTBEAT": "1"}


@contextlib.contextmanager
def nodes(tmp_path: Path, redis_url: str, n: int, **env: str) -> Iterator[list[Server]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(running_server(tmp_path, env={**FAST, "SSE_FAST_BROKER": redis_url, **env}))
            for _ in range(n)
        ]


def post(server: Server, path: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=10)


def payloads(stream: Stream) -> list[Any]:
    return [e["payload"] for e in stream.envelopes("json")]


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)  # ok-sleep: polling another process's state with a deadline


def ready(server: Server) -> bool:
    return httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200


async def connected(*streams: Stream) -> None:
    for stream in streams:
        await stream.wait_for(lambda s: bool(s.system("connect")))


async def test_redis_killed_publishes_answer_503_streams_stay_open_and_the_cluster_recovers(tmp_path: Path) -> None:
    with running_redis(tmp_path) as redis_server, nodes(tmp_path, redis_server.url, 2) as (a, b):
        async with open_stream(b.url, client_id="steady") as stream:
            await connected(stream)
            assert post(a, "/api/direct/steady", {"type": "json", "payload": "before"}).status_code == 202
            await stream.wait_for(lambda s: payloads(s) == ["before"])
            redis_server.kill()
            started = time.monotonic()
            refused = post(a, "/api/direct/steady", {"type": "json", "payload": "during"})
            assert refused.status_code == 503, refused.text
            assert refused.json()["code"] == "broker_unavailable"
            assert refused.headers["retry-after"] == "2"
            assert time.monotonic() - started < 5, "a publish must not hang while Redis is down"
            eventually(lambda: not ready(a) and not ready(b))
            assert httpx.get(f"{a.url}/sse?clientId=new", timeout=5).status_code == 503
            assert not stream.closed.is_set(), "streams stay open while Redis is away"
            redis_server.start()  # no persistence: Redis comes back empty
            eventually(lambda: ready(a) and ready(b))
            # Redis lost the log: the streams are closed so that their clients resume and learn they may have
            # missed messages, instead of missing them silently.
            await stream.wait_for(lambda s: s.closed.is_set())
            assert stream.system("disconnect")[0]["payload"]["detail"]["reason"] == "broker_reset"
            cursor = stream.last_id
        async with open_stream(a.url, client_id="steady", headers={"Last-Event-ID": cursor}) as again:
            await connected(again)
            detail = again.system("connect")[0]["payload"]["detail"]
            assert (detail["resumed"], detail["reason"]) == (False, "expired")
            assert post(b, "/api/direct/steady", {"type": "json", "payload": "after"}).status_code == 202
            await again.wait_for(lambda s: payloads(s) == ["after"])


async def test_with_a_persistent_redis_nothing_accepted_is_lost_across_its_restart(tmp_path: Path) -> None:
    with running_redis(tmp_path, persistent=True) as redis_server, nodes(tmp_path, redis_server.url, 2) as (a, b):
        async with open_stream(a.url, client_id="durable") as live, open_stream(b.url, client_id="gone") as away:
            await connected(live, away)
            cursor = away.last_id
        async with open_stream(a.url, client_id="durable") as live:
            await connected(live)
            for i in range(3):
                assert post(a, "/api/messages", {"type": "json", "payload": i}).status_code == 202
            await live.wait_for(lambda s: payloads(s) == [0, 1, 2])
            redis_server.kill()
            eventually(lambda: not ready(a))
            redis_server.start()
            eventually(lambda: ready(a) and ready(b))
            assert post(b, "/api/messages", {"type": "json", "payload": 3}).status_code == 202
            await live.wait_for(lambda s: payloads(s) == [0, 1, 2, 3])
            assert not live.closed.is_set()
        # A client that left before the restart resumes on the other node and misses nothing.
        async with open_stream(b.url, client_id="gone", headers={"Last-Event-ID": cursor}) as back:
            await back.wait_for(lambda s: payloads(s) == [0, 1, 2, 3])
            assert back.system("connect")[0]["payload"]["detail"]["resumed"] is True


async def test_per_client_limit_holds_across_nodes(tmp_path: Path) -> None:
    with running_redis(tmp_path) as redis_server:
        env = {"SSE_FAST_MAX_CONNECTIONS_PER_CLIENT": "2"}
        with nodes(tmp_path, redis_server.url, 3, **env) as (a, b, c):
            async with open_stream(a.url, client_id="tabs") as first:
                await connected(first)
                async with open_stream(b.url, client_id="tabs") as second:
                    await connected(second)
                    async with open_stream(c.url, client_id="tabs") as third:
                        await connected(third)
                        await first.wait_for(lambda s: s.closed.is_set())
                        assert first.system("disconnect")[0]["payload"]["detail"]["reason"] == "replaced"
                        assert not second.closed.is_set()
                        answer = post(a, "/api/direct/tabs", {"type": "json", "payload": "x"})
                        assert answer.json()["queued"] is False
                        for s in (second, third):
                            await s.wait_for(lambda s: payloads(s) == ["x"])


def metric(server: Server, name: str) -> float:
    """A cluster-wide gauge: its first sample (with several workers each has a ``worker`` label and the same value)."""
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith((f"{name} ", f"{name}{{")):
            return float(line.rsplit(maxsplit=1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_metrics_count_the_connections_of_the_whole_cluster(tmp_path: Path) -> None:
    with running_redis(tmp_path) as redis_server, nodes(tmp_path, redis_server.url, 2) as (a, b):
        async with (
            open_stream(a.url, client_id="m1") as s1,
            open_stream(b.url, client_id="m2") as s2,
            open_stream(b.url, client_id="m3") as s3,
        ):
            await connected(s1, s2, s3)
            eventually(lambda: metric(a, "sse_fast_cluster_connections") == 3)
            assert metric(a, "sse_fast_connections") == 1
            assert metric(b, "sse_fast_cluster_nodes") == 2
        eventually(lambda: metric(b, "sse_fast_cluster_connections") == 0)
        # A node that dies stops counting, and its clients are offline again: their messages wait in the mailbox.
        async with open_stream(b.url, client_id="on-b") as s4:
            await connected(s4)
            assert post(a, "/api/direct/on-b", {"type": "json", "payload": 1}).json()["queued"] is False
            kill_node(b)
            eventually(lambda: metric(a, "sse_fast_cluster_nodes") == 1, timeout=25)
            assert post(a, "/api/direct/on-b", {"type": "json", "payload": 2}).json()["queued"] is True


async def test_several_workers_on_redis_serve_as_one(tmp_path: Path) -> None:
    with (
        running_redis(tmp_path) as redis_server,
        running_server(
            tmp_path, env={**FAST, "SSE_FAST_BROKER": redis_server.url}, extra_args=("--workers", "2")
        ) as srv,
    ):
        eventually(lambda: metric(srv, "sse_fast_cluster_nodes") == 2)
        async with contextlib.AsyncExitStack() as stack:
            streams = [await stack.enter_async_context(open_stream(srv.url, client_id=f"w{i}")) for i in range(6)]
            await connected(*streams)
            assert post(srv, "/api/broadcast", {"message": {"type": "json", "payload": "all"}}).status_code == 202
            for stream in streams:
                await stream.wait_for(lambda s: payloads(s) == ["all"])
            await asyncio.sleep(0)  # ok-sleep: one loop turn, to let other tasks run


async def test_unacked_messages_are_redelivered_by_the_cluster_then_expire(tmp_path: Path) -> None:
    env = {"SSE_FAST_ACK_TIMEOUT": "1", "SSE_FAST_ACK_RETRIES": "2"}
    with running_redis(tmp_path) as redis_server, nodes(tmp_path, redis_server.url, 2, **env) as (a, b):
        async with open_stream(b.url, client_id="slow-acker") as stream:
            await connected(stream)
            body = {"type": "json", "target": "slow-acker", "payload": "again", "requireAck": True}
            answer = post(a, "/api/messages", body)
            message_id = answer.json()["messageId"]
            # One delivery and two redeliveries (same message id, a new cursor each), then expired.
            await stream.wait_for(lambda s: len(payloads(s)) == 3, timeout=15)
            assert {e["id"] for e in stream.envelopes("json")} == {message_id}
            eventually(lambda: httpx.get(f"{b.url}/api/messages/{message_id}").json()["status"] == "expired")
            assert len(payloads(stream)) == 3
