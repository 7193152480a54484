"""Mailbox frames carry cursors, and a client that drops in the middle of its mailbox resumes with exactly the rest
(issue 13, item 4); with Redis, mailboxes are held to the memory broker's byte bounds (issue 13, item 18).

Real servers (granian on loopback), on the memory broker and on Redis (a private ``redis-server``). The messages wait
in the mailbox of a client that has never connected; the client then opens ``GET /sse`` with a plain HTTP client and
reads the raw stream the way a browser's ``EventSource`` does.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import redis

from _redis import RedisServer, running_redis
from _servers import Server, open_stream, running_server
from sse_fast import Decoder

pytestmark = [pytest.mark.e2e]

BROKERS = [pytest.param("memory", id="memory"), pytest.param("redis", id="redis", marks=pytest.mark.redis)]
N = 12


@contextlib.contextmanager
def server_on(broker: str, tmp_path: Path, **env: str) -> Iterator[tuple[Server, RedisServer | None]]:
    with contextlib.ExitStack() as stack:
        store = None
        if broker == "redis":
            store = stack.enter_context(running_redis(tmp_path))
            env["SSE_FAST_BROKER"] = store.url
        yield stack.enter_context(running_server(tmp_path, env=env)), store


def send(server: Server, payload: Any, *, target: str) -> None:
    body = {"type": "json", "payload": payload, "target": target}
    answer = httpx.post(f"{server.url}/api/messages", json=body, timeout=10)
    assert answer.status_code == 202, answer.text
    assert answer.json()["queued"], answer.text  # the client is offline: it waits in the mailbox


def blocks(raw: bytes) -> list[dict[str, str]]:
    """The SSE blocks of a raw stream, each as its fields (``id``, ``event``, ``data``), comments left out."""
    out = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        fields: dict[str, str] = {}
        for line in block.decode().split("\n"):
            name, sep, value = line.partition(":")
            if sep and name:
                fields[name] = value.removeprefix(" ")
        if "data" in fields:
            out.append(fields)
    return out


async def read_until(server: Server, client: str, stop: int, *, cursor: str | None = None) -> tuple[list[Any], str]:
    """Open a stream, read the raw bytes until ``stop`` json messages arrived, and keep only the first ``stop``: what a
    client that dropped right after them saw. Returns their payloads and the Last-Event-ID it then holds."""
    headers = {"Last-Event-ID": cursor} if cursor is not None else {}
    async with open_stream(server.url, client_id=client, headers=headers) as stream:
        await stream.count("json", stop)
        raw = bytes(stream.raw)
    decoder, seen, last = Decoder(), [], ""
    for event in decoder.feed(raw):
        last = event.id or last
        if event.event == "json":
            seen.append(msgspec.json.decode(event.data)["payload"])
            if len(seen) == stop:
                break
    return seen, last


@pytest.mark.parametrize("broker", BROKERS)
async def test_every_mailbox_frame_at_connect_carries_its_own_cursor(broker: str, tmp_path: Path) -> None:
    with server_on(broker, tmp_path) as (server, _):
        for n in range(N):
            send(server, n, target="offline")
        async with open_stream(server.url, client_id="offline") as stream:
            await stream.count("json", N)
            frames = blocks(bytes(stream.raw))
        connect, mail = frames[0], [f for f in frames if f.get("event") == "json"]
        assert [msgspec.json.decode(f["data"])["payload"] for f in mail] == list(range(N))
        assert all("id" in f for f in mail), [f.get("id") for f in mail]
        seqs = [int(f["id"].rpartition("-")[2]) for f in [connect, *mail]]
        assert seqs == sorted(set(seqs)), "in cursor order after the connect frame, none twice"


@pytest.mark.parametrize("broker", BROKERS)
@pytest.mark.parametrize("read", [0, 1, 5, N - 1, N])
async def test_a_client_that_drops_in_its_mailbox_resumes_with_exactly_the_rest(
    broker: str, read: int, tmp_path: Path
) -> None:
    with server_on(broker, tmp_path) as (server, _):
        for n in range(N):
            send(server, n, target="offline")
        if read:
            seen, cursor = await read_until(server, "offline", read)
        else:  # dropped right after ``connect``: it holds that frame's cursor
            async with open_stream(server.url, client_id="offline") as stream:
                await stream.wait_for(lambda s: bool(s.system("connect")))
                seen, cursor = [], blocks(bytes(stream.raw))[0]["id"]
        assert seen == list(range(read))
        assert cursor
        async with open_stream(server.url, client_id="offline", headers={"Last-Event-ID": cursor}) as again:
            await again.wait_for(lambda s: bool(s.system("connect")))
            detail = again.system("connect")[0]["payload"]["detail"]
            assert (detail["resumed"], detail["missed"]) == (True, N - read), detail
            send_live = {"type": "json", "payload": "live", "target": "offline"}
            assert httpx.post(f"{server.url}/api/messages", json=send_live, timeout=10).status_code == 202
            await again.wait_for(lambda s: "live" in [e["payload"] for e in s.envelopes("json")])
            rest = [e["payload"] for e in again.envelopes("json")]
        assert rest == [*range(read, N), "live"], "the rest of the mailbox, each once, then live"


def _metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    match = re.search(rf"^{name}(?:_total)? (\S+)$", text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


@pytest.mark.redis
async def test_a_redis_mailbox_is_held_to_the_queue_bytes_and_so_is_what_a_connect_writes(tmp_path: Path) -> None:
    """Issue 13, item 18: 40 large messages to an offline client made its Redis mailbox 40 times the queue bound, all
    written at connect. It keeps the newest that fit in ``SSE_FAST_QUEUE_BYTES`` (the oldest dropped and counted)."""
    # 1.6 MB in all: within one client's publish burst (it is not the publish limits that are tested here).
    bound, size, count = 128 * 1024, 40_000, 40
    env = {"SSE_FAST_MAX_BODY": str(65536), "SSE_FAST_QUEUE_BYTES": str(bound)}
    with server_on("redis", tmp_path, **env) as (server, store):
        assert store is not None
        for n in range(count):
            send(server, {"n": n, "pad": "x" * size}, target="offline")
        with redis.Redis.from_url(store.url) as client:
            usage = client.memory_usage("sse:mbox:offline") or 0
            entries = client.lrange("sse:mbox:offline", 0, -1)
        held = sum(len(e) for e in entries)
        assert 0 < len(entries) < count
        assert held <= bound + 64 * len(entries), (held, len(entries))  # the data, and each entry's short header
        assert usage <= 2 * bound, usage  # was about count * size
        assert _metric(server, "sse_fast_mailbox_dropped_total") == count - len(entries)
        async with open_stream(server.url, client_id="offline") as stream:
            await stream.count("json", len(entries))
            got = [e["payload"]["n"] for e in stream.envelopes("json")]
            written = len(stream.raw)
        assert got == list(range(count - len(entries), count))
        assert written <= bound + 4096
