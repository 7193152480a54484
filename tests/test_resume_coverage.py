"""A resume either delivers every message after its cursor or says that some were lost (issue 11), on both brokers.

Each case starts a real server on the memory broker and on Redis (a private ``redis-server``), lets a message fall
out of the replay log in one of the ways the log shrinks (count, bytes, age), and resumes from a cursor before,
at or just after what fell out. The message that fell out is asserted as either delivered or reported lost
(``resumed: false``, ``reason: expired``), never neither; where the case decides which, that is asserted too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from _redis import running_redis
from _servers import Server, Stream, open_stream, running_server

pytestmark = [pytest.mark.e2e]

BROKERS = [pytest.param("memory", id="memory"), pytest.param("redis", id="redis", marks=pytest.mark.redis)]
LOG_SIZE = 60


@contextlib.contextmanager
def server_on(broker: str, tmp_path: Path, **env: str) -> Iterator[Server]:
    settings = {"SSE_FAST_REPLAY_SIZE": str(LOG_SIZE), **env}
    with contextlib.ExitStack() as stack:
        if broker == "redis":
            settings["SSE_FAST_BROKER"] = stack.enter_context(running_redis(tmp_path)).url
        yield stack.enter_context(running_server(tmp_path, env=settings))


def publish(server: Server, payload: Any, *, target: str | None = None) -> None:
    body: dict[str, Any] = {"type": "json", "payload": payload}
    if target is not None:
        body["target"] = target
    answer = httpx.post(f"{server.url}/api/messages", json=body, timeout=10)
    assert answer.status_code == 202, answer.text


def fill(server: Server, n: int, *, size: int = 8) -> None:
    """``n`` direct messages to other clients: they take log entries the victim never sees."""
    for i in range(n):
        publish(server, "x" * size, target=f"other-{i % 7}")


async def cursor_after(server: Server, payload: str) -> str:
    """The victim's cursor once it received ``payload`` (then it disconnects)."""
    async with open_stream(server.url, client_id="victim") as stream:
        await stream.wait_for(lambda s: bool(s.system("connect")))
        publish(server, payload)
        await stream.wait_for(lambda s: payload in payloads(s))
        return stream.last_id


def payloads(stream: Stream) -> list[Any]:
    return [e["payload"] for e in stream.envelopes("json")]


async def resume(server: Server, cursor: str, *, expect: str) -> dict[str, Any]:
    """Resume as the victim; ``expect`` must then be delivered exactly once, or the connect frame reports a loss."""
    async with open_stream(server.url, client_id="victim", headers={"Last-Event-ID": cursor}) as stream:
        await stream.wait_for(lambda s: bool(s.system("connect")))
        detail: dict[str, Any] = stream.system("connect")[0]["payload"]["detail"]
        if detail["resumed"]:
            await stream.wait_for(lambda s: expect in payloads(s))
            assert payloads(stream).count(expect) == 1
            assert detail["missed"] >= 1
        else:
            assert detail["reason"] == "expired", detail
        return detail


@pytest.mark.parametrize("broker", BROKERS)
async def test_a_cursor_older_than_the_first_retained_entry_is_expired(broker: str, tmp_path: Path) -> None:
    """The issue's steps: the message after the cursor was pushed out by count: `resumed: false`, never `true`."""
    with server_on(broker, tmp_path) as server:
        cursor = await cursor_after(server, "seen")
        publish(server, "important")
        fill(server, 200)
        detail = await resume(server, cursor, expect="important")
        assert detail["resumed"] is False


@pytest.mark.parametrize("broker", BROKERS)
async def test_a_cursor_exactly_at_the_first_retained_entry_resumes_with_everything(
    broker: str, tmp_path: Path
) -> None:
    with server_on(broker, tmp_path) as server:
        cursor = await cursor_after(server, "seen")
        publish(server, "important")
        fill(server, LOG_SIZE - 2)  # the log holds "seen", "important" and the fill: exactly LOG_SIZE entries
        detail = await resume(server, cursor, expect="important")
        assert detail["resumed"] is True


@pytest.mark.parametrize("broker", BROKERS)
async def test_a_cursor_just_after_a_trim_resumes_with_everything(broker: str, tmp_path: Path) -> None:
    """The cursor's own entry was the last to leave the log; everything after it is still there."""
    with server_on(broker, tmp_path) as server:
        cursor = await cursor_after(server, "seen")
        publish(server, "important")
        fill(server, LOG_SIZE - 1)  # one more than fits: "seen" (the cursor) leaves, "important" stays
        detail = await resume(server, cursor, expect="important")
        assert detail["resumed"] is True


@pytest.mark.parametrize("broker", BROKERS)
async def test_a_message_pushed_out_by_the_byte_bound_is_reported_lost(broker: str, tmp_path: Path) -> None:
    env = {"SSE_FAST_MAX_BODY": "4096", "SSE_FAST_REPLAY_BYTES": "4096", "SSE_FAST_QUEUE_BYTES": "65536"}
    with server_on(broker, tmp_path, **env) as server:
        cursor = await cursor_after(server, "seen")
        publish(server, "important")
        fill(server, 12, size=1000)  # 12 KB of direct messages through a 4 KB log
        detail = await resume(server, cursor, expect="important")
        assert detail["resumed"] is False


@pytest.mark.parametrize("broker", BROKERS)
async def test_a_message_that_aged_out_of_the_log_is_reported_lost(broker: str, tmp_path: Path) -> None:
    with server_on(broker, tmp_path, SSE_FAST_REPLAY_TTL="1") as server:
        cursor = await cursor_after(server, "seen")
        publish(server, "important")
        await asyncio.sleep(3)  # ok-sleep: the log's TTL (1 s) must pass, and a tick (1/s) trim it, on both brokers
        detail = await resume(server, cursor, expect="important")
        assert detail["resumed"] is False


@pytest.mark.parametrize("broker", BROKERS)
async def test_a_resume_within_the_bounds_delivers_every_message_in_order(broker: str, tmp_path: Path) -> None:
    with server_on(broker, tmp_path) as server:
        cursor = await cursor_after(server, "seen")
        for n in range(10):
            publish(server, f"m{n}")
        async with open_stream(server.url, client_id="victim", headers={"Last-Event-ID": cursor}) as stream:
            await stream.wait_for(lambda s: len(payloads(s)) >= 10)
            assert stream.system("connect")[0]["payload"]["detail"]["resumed"] is True
            assert payloads(stream) == [f"m{n}" for n in range(10)]
