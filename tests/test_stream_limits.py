"""End to end, issue 13 items 9, 14 and 20: what one stream may hold of the server, and for how long.

A stream ends when its token does; its topic patterns cost a small fixed amount of memory; and however many streams
open at once, no more than ``SSE_FAST_MAX_CONNECTIONS`` are let in.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import msgspec
import pytest

from _brokers import wait_until
from _redis import running_redis
from _servers import Server, Stream, open_stream, running_server

pytestmark = pytest.mark.e2e

SECRET = "l" * 40
BROKERS = [pytest.param("memory", id="memory"), pytest.param("redis", id="redis", marks=pytest.mark.redis)]
JWT_ENV = {"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_SECRET": SECRET}


@contextlib.contextmanager
def server_on(broker: str, tmp_path: Path, **kwargs: Any) -> Iterator[Server]:
    env = dict(kwargs.pop("env", {}))
    with contextlib.ExitStack() as stack:
        if broker == "redis":
            env["SSE_FAST_BROKER"] = stack.enter_context(running_redis(tmp_path)).url
        yield stack.enter_context(running_server(tmp_path, env=env, **kwargs))


def bearer(sub: str, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {jwt.encode({'sub': sub, **claims}, SECRET, algorithm='HS256')}"}


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert {"error", "code"} <= set(body) <= {"error", "code", "detail"}, body
    return response.status_code, body["code"]


def metric(server: Server, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return -1.0  # a server without it


def connected(stream: Stream) -> bool:
    return bool(stream.system("connect"))


# -- item 9: a stream ends with its token ----------------------------------------------------------------------------

LEEWAY = 1


@pytest.mark.parametrize("broker", BROKERS)
async def test_a_stream_is_closed_when_its_token_expires(tmp_path: Path, broker: str) -> None:
    env = {**JWT_ENV, "SSE_FAST_JWT_LEEWAY": str(LEEWAY)}
    with server_on(broker, tmp_path, env=env) as server:
        exp = int(time.time()) + 3
        async with (
            open_stream(server.url, client_id="", headers=bearer("brief", exp=exp)) as brief,
            open_stream(server.url, client_id="", headers=bearer("steady", exp=exp + 600)) as steady,
        ):
            assert (brief.status, steady.status) == (200, 200)
            await brief.wait_for(connected)
            await steady.wait_for(connected)
            await brief.wait_for(lambda s: s.closed.is_set(), timeout=30)
            closed_at = time.time()
            assert [e["payload"]["detail"] for e in brief.system("disconnect")] == [{"reason": "token_expired"}]
            assert closed_at >= exp + LEEWAY  # never before exp plus the leeway
            # The other stream, whose token is still valid, stays open and keeps receiving.
            body = {"type": "text", "payload": "still here", "target": "steady"}
            answer = httpx.post(f"{server.url}/api/messages", json=body, headers=bearer("steady", exp=exp + 600))
            assert answer.status_code == 202, answer.text
            await steady.wait_for(lambda s: any(e["payload"] == "still here" for e in s.envelopes("text")))
            assert not steady.closed.is_set()
            assert not steady.system("disconnect")
        assert metric(server, "sse_fast_token_expired_closes_total") == 1
        # Its token cannot open it again.
        again = httpx.get(f"{server.url}/sse", headers=bearer("brief", exp=exp), timeout=5)
        assert error_of(again) == (401, "token_expired")


def test_a_token_without_exp_is_refused_when_exp_is_required(tmp_path: Path) -> None:
    with running_server(tmp_path, env={**JWT_ENV, "SSE_FAST_JWT_REQUIRE_EXP": "true"}) as server:
        forever = bearer("forever")
        assert error_of(httpx.get(f"{server.url}/sse", headers=forever, timeout=5)) == (401, "missing_exp")
        body = {"type": "text", "payload": "x", "target": "forever"}
        assert error_of(httpx.post(f"{server.url}/api/messages", json=body, headers=forever)) == (401, "missing_exp")
        expiring = bearer("forever", exp=int(time.time()) + 600)
        assert httpx.post(f"{server.url}/api/messages", json=body, headers=expiring).status_code == 202


# -- item 14: topic patterns cost a small fixed amount per stream ----------------------------------------------------

MAX_PATTERNS = 64  # too_many_topics past it (routes._MAX_TOPICS)
MAX_SEGMENTS = 16  # the defaults of SSE_FAST_MAX_TOPIC_SEGMENTS and SSE_FAST_MAX_TOPICS_BYTES
MAX_BYTES = 1024
# A pattern's segment is one node of the hub's topic trie when no other stream shares it: about 600 bytes measured;
# counted here as 1 KiB. A stream whose patterns are one-character segments holds at most (bytes + patterns) / 2.
NODE_BYTES = 1024
MAX_NODES = min(MAX_PATTERNS * MAX_SEGMENTS, (MAX_BYTES + MAX_PATTERNS) // 2)
STREAM_BYTES = 64 * 1024  # a stream without topics: granian's connection, the queue, Python's records, with room
CEILING = MAX_NODES * NODE_BYTES + STREAM_BYTES
STREAMS = 100


def worst_case_before(i: int) -> str:
    """What the issue measured: 64 patterns of about 116 characters (so that the request fits granian's 8 KiB head),
    every segment but the first a single character (~57 segments), none shared with another stream: about 2.2 MB of
    index per stream."""
    return ",".join(_chain(f"{i:x}p{j:02x}", 116) for j in range(MAX_PATTERNS))


def worst_case_now(i: int) -> str:
    """The most trie nodes the bounds let one stream hold: patterns of ``MAX_SEGMENTS`` segments, all unshared."""
    patterns: list[str] = []
    while len(patterns) < MAX_PATTERNS:
        pattern = _chain(f"{i:x}p{len(patterns):x}", MAX_BYTES, segments=MAX_SEGMENTS)
        if sum(map(len, patterns)) + len(pattern) > MAX_BYTES:
            break
        patterns.append(pattern)
    return ",".join(patterns)


def _chain(head: str, length: int, *, segments: int = 1000) -> str:
    """``head.a.a.a...``: a pattern of at most ``length`` characters and ``segments`` segments."""
    tail = min((length - len(head)) // 2, segments - 1)
    return head + ".a" * tail


def worker_rss(server: Server) -> int:
    """Resident bytes of the granian worker (the child of ``sse-fast serve``)."""
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    pid = int(children[0]) if children else server.proc.pid
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@contextlib.asynccontextmanager
async def greedy_stream(server: Server, i: int) -> AsyncIterator[Stream]:
    """The costliest stream the server lets client ``i`` open: the old worst case, else the worst the bounds allow."""
    async with open_stream(server.url, client_id=f"greedy{i}", topics=worst_case_before(i)) as stream:
        if stream.status == 200:
            yield stream
            return
        assert (stream.status, msgspec.json.decode(bytes(stream.raw))["code"]) == (400, "topic_too_deep")
    async with open_stream(server.url, client_id=f"greedy{i}", topics=worst_case_now(i)) as stream:
        assert stream.status == 200, bytes(stream.raw)
        yield stream


async def test_topic_patterns_cost_a_bounded_amount_of_memory_per_stream(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        async with contextlib.AsyncExitStack() as warm:  # the allocator's and granian's first growth is not topics
            for i in range(10):
                stream = await warm.enter_async_context(open_stream(server.url, client_id=f"warm{i}", topics="w.x"))
                await stream.wait_for(connected)
        before = worker_rss(server)
        async with contextlib.AsyncExitStack() as stack:
            streams = [await stack.enter_async_context(greedy_stream(server, i)) for i in range(STREAMS)]
            for stream in streams:
                await stream.wait_for(connected)
            grown = worker_rss(server) - before
        assert grown <= STREAMS * CEILING, f"{grown / STREAMS / 1024:.0f} KiB per stream (ceiling {CEILING // 1024})"


@pytest.mark.parametrize(
    ("topics", "code"),
    [
        pytest.param(worst_case_before(0), "topic_too_deep", id="old-worst-case"),
        pytest.param(_chain("a", 128, segments=MAX_SEGMENTS + 1), "topic_too_deep", id="one-segment-too-many"),
        pytest.param(",".join(f"t{j:03d}.{'x' * 40}" for j in range(25)), "topics_too_long", id="too-many-bytes"),
    ],
)
def test_topic_patterns_past_the_bounds_are_refused(open_server: Server, topics: str, code: str) -> None:
    refused = metric(open_server, "sse_fast_topics_refused_total")
    assert stream_status(open_server, topics) == (400, code)
    assert metric(open_server, "sse_fast_topics_refused_total") == refused + 1


def test_topic_patterns_within_the_bounds_open(open_server: Server) -> None:
    within = ",".join([_chain("a", 128, segments=MAX_SEGMENTS), *(f"t{j}.{'x' * 20}" for j in range(30))])
    assert sum(map(len, within.split(","))) <= MAX_BYTES
    assert stream_status(open_server, within) == (200, "")


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("open")) as server:
        yield server


def stream_status(server: Server, topics: str) -> tuple[int, str]:
    """The status of ``GET /sse`` with ``topics`` and, when refused, its code (an open stream is closed at once)."""
    params = {"clientId": "probe", "topics": topics}
    with httpx.stream("GET", f"{server.url}/sse", params=params, timeout=5) as answer:
        if answer.status_code == 200:
            return 200, ""
        answer.read()
        return error_of(answer)


# -- item 20: concurrent opens never pass SSE_FAST_MAX_CONNECTIONS -------------------------------------------------

LIMIT = 5
RUSH = 60


async def rush(server: Server, n: int) -> tuple[list[tuple[int, str]], int]:
    """Open ``n`` streams at once and hold the opened ones until every stream was answered; returns each stream's
    (status, code) and how many connections the server had open at that moment."""
    answered, hold = asyncio.Semaphore(0), asyncio.Event()
    async with httpx.AsyncClient(timeout=httpx.Timeout(20, read=None), limits=httpx.Limits(max_connections=n)) as http:

        async def one(i: int) -> tuple[int, str]:
            async with http.stream("GET", f"{server.url}/sse?clientId=rush{i}") as response:
                if response.status_code != 200:
                    await response.aread()
                    answered.release()
                    return response.status_code, response.json()["code"]
                chunks = response.aiter_raw()
                await anext(chunks)  # the opening: the stream is registered (leaving the loop would close it)
                answered.release()
                await hold.wait()
                await chunks.aclose()
                return 200, ""

        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        for _ in range(n):
            await asyncio.wait_for(answered.acquire(), 20)
        open_now = len(httpx.get(f"{server.url}/api/connections").json())
        hold.set()
        results = await asyncio.gather(*tasks)
    return results, open_now


@pytest.mark.parametrize("interface", ["asgi", "rsgi"])
async def test_concurrent_opens_never_pass_max_connections(tmp_path: Path, interface: str) -> None:
    env = {"SSE_FAST_MAX_CONNECTIONS": str(LIMIT)}
    with running_server(tmp_path, interface=interface, env=env) as server:
        results, open_now = await rush(server, RUSH)
        opened = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] != 200]
        assert len(opened) == LIMIT
        assert open_now == LIMIT
        assert set(refused) == {(503, "server_full")}
        # Every slot came back: once those streams are gone, LIMIT new ones open again.
        await wait_until(lambda: not httpx.get(f"{server.url}/api/connections").json(), "the streams to close")
        again, _ = await rush(server, LIMIT)
        assert [status for status, _ in again] == [200] * LIMIT
