"""The Python client: against small scripted servers (every branch of the protocol) and against the real server."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import sse_fast
from _scripted import Reply, Request, ScriptedServer, envelope, scripted, until
from sse_fast.client import Client, Message, Subscription, backoff_delay, dispatch, outbox
from sse_fast.errors import AuthError, ConnectionLostError, QueueFullError, ServerError, TaskError
from sse_fast.models import CommandAnswer, ProgressPayload, PublishAnswer

pytestmark = pytest.mark.timeout(60)


def fast_client(url: str, **options: Any) -> Client:
    """A client with tiny backoff delays, so that reconnects happen in milliseconds."""
    defaults: dict[str, Any] = {
        "client_id": "c1",
        "reconnect_base_delay": 0.01,
        "reconnect_max_delay": 0.05,
        "connection_timeout": 5.0,
    }
    return Client(url, **(defaults | options))


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox, "RETRY_DELAYS", (0.02, 0.02, 0.02, 0.02, 0.02))


async def stream_of(*frames: dict[str, Any], cursor: str = "e-0", hold: bool = True) -> Callable[..., Any]:
    """A script serving one stream: connect, the frames, then held open."""

    async def script(request: Request, reply: Reply) -> None:
        await reply.start_stream()
        await reply.connect(cursor)
        for frame in frames:
            await reply.event(frame)
        if hold:
            await reply.hold()

    return script


# ---------------------------------------------------------------------------------------------------------------
# API surface
# ---------------------------------------------------------------------------------------------------------------


def test_package_exports_the_client() -> None:
    for name in ("Client", "Subscription", "Message", "ConnectionLostError", "QueueFullError", "ServerError",
                 "TaskError", "AuthError"):  # fmt: skip
        assert name in sse_fast.__all__
        assert hasattr(sse_fast, name)
    assert sse_fast.Message is sse_fast.models.Envelope
    assert sse_fast.Client is Client


def test_backoff_is_full_jitter_under_a_cap_above_the_floor() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(30.0, 1.0 * 2 ** (attempt - 1))
        delays = [backoff_delay(attempt, base=1.0, cap=30.0, rng=rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # the whole range is used: full jitter, not equal jitter
        assert min(delays) < ceiling * 0.2
    assert all(3.0 <= backoff_delay(5, base=1.0, cap=30.0, floor=3.0, rng=rng) <= 33.0 for _ in range(100))
    assert backoff_delay(10_000, base=1.0, cap=30.0, rng=rng) <= 30.0


def test_options_have_the_original_defaults() -> None:
    client = Client("http://127.0.0.1:1/", client_id="c1")
    assert client.base_url == "http://127.0.0.1:1"
    assert client.max_reconnect_attempts == 10
    assert (client.reconnect_base_delay, client.reconnect_max_delay, client.connection_timeout) == (1.0, 30.0, 10.0)
    assert client.read_timeout == 2.5 * 15.0
    assert client.auto_ack
    assert client.auto_connect
    assert client.state == "disconnected"
    assert client.last_event_id is None
    with pytest.raises(TypeError):
        Client("http://x", "c1")  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------------------------
# Receiving and dispatching
# ---------------------------------------------------------------------------------------------------------------


async def test_handlers_run_highest_priority_first_sync_and_async() -> None:
    text1 = envelope("text", "one")
    text2 = envelope("text", "two")
    data = envelope("json", {"k": 1})
    calls: list[str] = []
    async with scripted(await stream_of(text1, data, text2)) as server:
        client = fast_client(server.url)

        async def async_low(m: Message) -> None:
            await asyncio.sleep(0)  # ok-sleep: one loop turn, to let other tasks run
            calls.append(f"low:{m.payload}")

        client.subscribe("text", async_low, priority=0)
        client.subscribe("text", lambda m: calls.append(f"high:{m.payload}"), priority=5)
        client.subscribe("*", lambda m: calls.append(f"any:{m.type}"), priority=1)
        once = client.once("text", lambda m: calls.append(f"once:{m.payload}"), priority=9)
        system: list[Message] = []
        client.subscribe("system", system.append)
        async with client:
            await until(lambda: len(calls) >= 8)
            assert not once.active
        assert calls == [
            "once:one", "high:one", "any:text", "low:one",
            "any:json",
            "high:two", "any:text", "low:two",
        ]  # fmt: skip
        assert [m.payload["event"] for m in system] == ["connect"]
        assert [m.payload for m in client.history()] == ["one", {"k": 1}, "two"]
        assert [m.payload for m in client.history(1)] == ["two"]
        stats = client.stats()
        assert stats.received == 4
        assert stats.by_type == {"system": 1, "text": 2, "json": 1}


async def test_unsubscribe_stops_a_handler() -> None:
    release = asyncio.Event()

    async def script(request: Request, reply: Reply) -> None:
        await reply.start_stream()
        await reply.connect()
        await reply.event(envelope("text", "a"))
        await release.wait()
        await reply.event(envelope("text", "b"))
        await reply.hold()

    async with scripted(script) as server:
        client = fast_client(server.url)
        first: list[Any] = []
        all_: list[Any] = []
        subscription = client.subscribe("text", lambda m: first.append(m.payload))
        assert isinstance(subscription, Subscription)
        client.subscribe("text", lambda m: all_.append(m.payload))
        await client.connect()
        await until(lambda: first == ["a"])
        subscription.unsubscribe()
        subscription.unsubscribe()  # idempotent
        release.set()
        await until(lambda: all_ == ["a", "b"])
        assert first == ["a"]
        await client.close()


async def test_a_raising_handler_is_logged_counted_and_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with scripted(await stream_of(envelope("text", "x"), envelope("text", "y"))) as server:
        seen: list[Any] = []

        def boom(m: Message) -> None:
            raise RuntimeError("handler bug")

        client = fast_client(server.url)
        client.subscribe("text", boom, priority=10)
        client.subscribe("text", lambda m: seen.append(m.payload))
        async with client:
            await until(lambda: seen == ["x", "y"])
            assert client.stats().handler_errors == 2
            assert client.state == "connected"
        assert "handler bug" in caplog.text


async def test_messages_iterator_skips_system_and_heartbeats_unless_asked() -> None:
    frames = (envelope("heartbeat", {"serverTime": 1}, ephemeral=True), envelope("text", "hi"), envelope("ack", {}))
    async with scripted(await stream_of(*frames)) as server:
        client = fast_client(server.url)
        plain = client.messages()
        everything = client.messages(system=True, heartbeats=True)
        got: list[str] = []
        got_all: list[str] = []

        async def read(iterator: AsyncIterator[Message], into: list[str], n: int) -> None:
            async for message in iterator:
                into.append(message.type)
                if len(into) == n:
                    return

        readers = [asyncio.create_task(read(plain, got, 2)), asyncio.create_task(read(everything, got_all, 4))]
        await asyncio.sleep(0)  # ok-sleep: let both iterators register before the stream starts
        async with client:
            await asyncio.wait_for(asyncio.gather(*readers), 10)
        assert got == ["text", "ack"]
        assert got_all == ["system", "heartbeat", "text", "ack"]
        assert client.stats().heartbeats == 1


async def test_messages_that_arrive_before_any_consumer_are_held_for_the_first() -> None:
    async with scripted(await stream_of(envelope("text", "early"))) as server, fast_client(server.url) as client:
        await until(lambda: len(client._inbound) == 2)  # connect and "early", read before anyone listens
        iterator = client.messages(system=True)
        assert (await anext(iterator)).payload["event"] == "connect"
        assert (await anext(iterator)).payload == "early"


async def test_with_no_consumer_the_held_messages_are_bounded() -> None:
    frames = [envelope("text", i) for i in range(5)]
    async with scripted(await stream_of(*frames)) as server, fast_client(server.url, queue_size=2) as client:
        await until(lambda: client.stats().dropped == 4)  # connect + 5 texts, 2 held
        assert [m.payload for m in list(client._inbound)] == [3, 4]
        iterator = client.messages()
        assert [(await anext(iterator)).payload, (await anext(iterator)).payload] == [3, 4]


async def test_messages_iterator_ends_on_close() -> None:
    async with scripted(await stream_of()) as server:
        client = fast_client(server.url)
        await client.connect()
        iterator = client.messages()
        reader = asyncio.create_task(anext(iterator, None))
        await asyncio.sleep(0)  # ok-sleep: one loop turn, to let other tasks run
        await client.close()
        assert await asyncio.wait_for(reader, 5) is None


# ---------------------------------------------------------------------------------------------------------------
# Reconnecting
# ---------------------------------------------------------------------------------------------------------------


async def test_reconnects_with_last_event_id_and_drops_replayed_messages() -> None:
    m1 = envelope("text", "one")
    m2 = envelope("text", "two (overtook, no id: line)")
    m3 = envelope("text", "three")

    async def script(request: Request, reply: Reply) -> None:
        await reply.start_stream()
        if len(server.of("/sse")) == 1:
            await reply.connect("e-1")
            await reply.event(m1, id="e-2")
            await reply.event(m2)  # overtook something: no id, so the cursor stays e-2
            return  # the connection drops
        await reply.connect("e-2", resumed=True)
        await reply.event(m2)  # the replay from the watermark repeats it
        await reply.event(m3, id="e-3")
        await reply.hold()

    async with scripted(script) as server:
        client = fast_client(server.url)
        got: list[str] = []
        client.subscribe("text", lambda m: got.append(m.payload))
        async with client:
            await until(lambda: len(got) == 3)
            assert got == [m1["payload"], m2["payload"], m3["payload"]]
            first, second = server.of("/sse")
            assert "last-event-id" not in first.headers
            assert second.headers["last-event-id"] == "e-2"
            assert first.query == {"clientId": "c1"}
            assert client.last_event_id == "e-3"
            stats = client.stats()
            assert stats.duplicates == 1
            assert stats.reconnects == 1
            assert stats.received == 5


async def test_state_changes_are_reported_in_order() -> None:
    async def script(request: Request, reply: Reply) -> None:
        if len(server.of("/sse")) == 1:
            await reply.json(500, {"error": "boom", "code": "internal_error"})
            return
        await reply.start_stream()
        await reply.connect()
        await reply.hold()

    async with scripted(script) as server:
        client = fast_client(server.url)
        changes: list[tuple[str, str]] = []
        client.on_state_change(lambda old, new: changes.append((old, new)))
        async with client:
            assert client.state == "connected"
        assert changes == [
            ("disconnected", "connecting"),
            ("connecting", "reconnecting"),
            ("reconnecting", "connected"),
            ("connected", "disconnected"),
        ]


@pytest.mark.parametrize("status", [500, 404, 429, 503, 200])
async def test_other_statuses_and_non_streams_reconnect(status: int) -> None:
    async def script(request: Request, reply: Reply) -> None:
        if len(server.of("/sse")) <= 2:
            await reply.json(status, {"error": "no", "code": "nope"}, headers={"retry-after": "0"})
            return
        await reply.start_stream()
        await reply.connect()
        await reply.hold()

    async with scripted(script) as server, fast_client(server.url) as client:
        assert client.state == "connected"
        assert len(server.of("/sse")) == 3
        assert client.stats().reconnects == 2


async def test_retry_after_on_the_stream_is_honoured() -> None:
    async def script(request: Request, reply: Reply) -> None:
        if len(server.of("/sse")) == 1:
            await reply.json(503, {"error": "full", "code": "server_full"}, headers={"retry-after": "1"})
            return
        await reply.start_stream()
        await reply.connect()
        await reply.hold()

    async with scripted(script) as server, fast_client(server.url):
        first, second = server.of("/sse")
        assert second.at - first.at >= 1.0


async def test_the_servers_retry_is_a_floor_for_the_backoff() -> None:
    async def script(request: Request, reply: Reply) -> None:
        await reply.start_stream(retry=400)
        await reply.connect()
        if len(server.of("/sse")) >= 3:
            await reply.hold()

    async with scripted(script) as server, fast_client(server.url):
        await server.wait_for(lambda: len(server.of("/sse")) == 3)
        times = [r.at for r in server.of("/sse")]
        assert times[1] - times[0] >= 0.4
        assert times[2] - times[1] >= 0.4


async def test_204_stops_reconnecting() -> None:
    async def script(request: Request, reply: Reply) -> None:
        await reply.empty(204)

    async with scripted(script) as server:
        client = fast_client(server.url)
        await client.connect()  # returns: the server said stop
        assert client.state == "disconnected"
        assert client._runner is not None
        assert client._runner.done()
        assert len(server.of("/sse")) == 1
        assert [m async for m in client.messages()] == []
        await client.close()


@pytest.mark.parametrize("status", [401, 403])
async def test_401_and_403_stop_with_error_state_and_auth_error(status: int) -> None:
    async def script(request: Request, reply: Reply) -> None:
        await reply.json(status, {"error": "bad token", "code": "invalid_token"})

    async with scripted(script) as server:
        client = fast_client(server.url, token="t0k")
        with pytest.raises(AuthError) as caught:
            await client.connect()
        assert (caught.value.status, caught.value.code, str(caught.value)) == (status, "invalid_token", "bad token")
        assert client.state == "error"
        assert len(server.of("/sse")) == 1
        assert server.of("/sse")[0].headers["authorization"] == "Bearer t0k"
        assert "x-client-id" not in server.of("/sse")[0].headers  # the token names the client
        with pytest.raises(AuthError):
            await anext(client.messages())
        with pytest.raises(AuthError):
            await client.send_text("x")
        await client.close()


async def test_async_with_raises_auth_error_and_closes() -> None:
    async def script(request: Request, reply: Reply) -> None:
        await reply.json(401, {"error": "expired", "code": "token_expired"})

    async with scripted(script) as server:
        client = fast_client(server.url)
        with pytest.raises(AuthError):
            async with client:
                pytest.fail("must not enter")
        assert client._closed


async def test_gives_up_after_max_reconnect_attempts() -> None:
    async def script(request: Request, reply: Reply) -> None:
        await reply.json(500, {"error": "down", "code": "internal_error"})

    async with scripted(script) as server:
        client = fast_client(server.url, max_reconnect_attempts=2)
        with pytest.raises(ConnectionLostError, match="gave up after 2"):
            await client.connect()
        assert client.state == "error"
        assert len(server.of("/sse")) == 3  # the first attempt and two reconnects
        await client.close()


async def test_a_silent_stream_is_abandoned_after_read_timeout() -> None:
    async def script(request: Request, reply: Reply) -> None:
        await reply.start_stream()
        await reply.connect()
        await reply.hold()  # then nothing, not even a keepalive

    async with scripted(script) as server, fast_client(server.url, read_timeout=0.3) as client:
        await server.wait_for(lambda: len(server.of("/sse")) >= 2)
        first, second = server.of("/sse")[:2]
        assert second.at - first.at >= 0.3
        assert client.stats().reconnects >= 1


async def test_keepalives_and_heartbeats_feed_the_watchdog_and_reach_no_handler() -> None:
    async def script(request: Request, reply: Reply) -> None:
        await reply.start_stream()
        await reply.connect()
        for i in range(12):
            if i % 2:
                await reply.raw(b": keepalive\n\n")
            else:
                await reply.event(envelope("heartbeat", {"serverTime": i}, ephemeral=True))
            await asyncio.sleep(0.1)  # ok-sleep: the server's pace, well under the client's read_timeout
        await reply.event(envelope("text", "done"))
        await reply.hold()

    async with scripted(script) as server:
        client = fast_client(server.url, read_timeout=0.5)
        anything: list[str] = []
        beats: list[Any] = []
        client.subscribe("*", lambda m: anything.append(m.type))
        client.subscribe("heartbeat", lambda m: beats.append(m.payload["serverTime"]))
        async with client:
            await until(lambda: anything == ["text"])
            assert beats == [0, 2, 4, 6, 8, 10]
            assert len(server.of("/sse")) == 1  # 1.2 s of keepalives with a 0.5 s watchdog: no reconnect
            assert client.history()
            assert all(m.type != "heartbeat" for m in client.history())


async def test_maintenance_is_honoured_instead_of_the_backoff() -> None:
    async def script(request: Request, reply: Reply) -> None:
        await reply.start_stream()
        await reply.connect()
        if len(server.of("/sse")) == 1:
            maintenance = envelope("system", {"event": "maintenance", "detail": {"retryMs": 300}})
            await reply.event(maintenance, retry=300)
            return
        await reply.hold()

    async with scripted(script) as server:
        # A 60 s backoff: only the maintenance retry can bring the client back within the deadline.
        client = fast_client(server.url, reconnect_base_delay=60.0, reconnect_max_delay=60.0)
        async with client:
            await server.wait_for(lambda: len(server.of("/sse")) == 2, timeout=5)
            first, second = server.of("/sse")
            assert 0.3 <= second.at - first.at < 5


async def test_garbage_and_oversized_lines_make_it_reconnect_not_crash_or_grow() -> None:
    rng = random.Random(1234)
    written: dict[int, int] = {}
    total = 24 << 20

    async def script(request: Request, reply: Reply) -> None:
        attempt = len(server.of("/sse"))
        await reply.start_stream()
        if attempt == 1:
            await reply.raw(rng.randbytes(256 << 10))  # random bytes, newlines and all
            return
        if attempt == 2:
            written[2] = 0
            chunk = b"data: " + b"x" * (64 << 10)
            try:
                while written[2] < total:  # one endless line: the client must hang up long before the end
                    await reply.raw(chunk)
                    written[2] += len(chunk)
            except ConnectionError:
                pass
            return
        await reply.connect()
        await reply.event(envelope("text", "sane again"))
        await reply.hold()

    async with scripted(script) as server:
        client = fast_client(server.url)
        got: list[Any] = []
        client.subscribe("text", lambda m: got.append(m.payload))
        async with client:
            await until(lambda: got == ["sane again"], timeout=20)
            assert written[2] < total
            stats = client.stats()
            assert stats.invalid >= 1
            assert stats.reconnects == 2
            assert client.state == "connected"
            assert len(client._seen) <= 10_000
            assert len(client._inbound) <= 100


async def test_a_garbage_cursor_is_not_sent_back() -> None:
    async def script(request: Request, reply: Reply) -> None:
        await reply.start_stream()
        if len(server.of("/sse")) == 1:
            await reply.raw("id: caf\u00e9\x01\ndata: x\n\n".encode())
            return
        await reply.connect()
        await reply.hold()

    async with scripted(script) as server, fast_client(server.url):
        assert "last-event-id" not in server.of("/sse")[1].headers


async def test_dedupe_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "_SEEN_IDS", 5)
    frames = [envelope("text", i, id=f"id{i}") for i in range(20)]
    async with scripted(await stream_of(*frames)) as server:
        client = fast_client(server.url)
        got: list[Any] = []
        client.subscribe("text", lambda m: got.append(m.payload))
        async with client:
            await until(lambda: len(got) == 20)
            assert len(client._seen) == 5
            assert list(client._seen) == [f"id{i}" for i in range(15, 20)]


# ---------------------------------------------------------------------------------------------------------------
# Acks
# ---------------------------------------------------------------------------------------------------------------


async def test_auto_ack_after_the_handler_returns_and_not_when_it_raises(quick_retries: None) -> None:
    events: list[str] = []
    good, bad = envelope("text", "ok", requireAck=True), envelope("text", "fail", requireAck=True)
    later = envelope("text", "later", requireAck=True)

    async def script(request: Request, reply: Reply) -> None:
        if request.path == "/api/ack":
            events.append(f"ack:{request.json()['messageIds'][0]}")
            await reply.json(200, {"acked": 1})
            return
        await reply.start_stream()
        await reply.connect()
        for frame in (good, bad, later):
            await reply.event(frame)
        await reply.hold()

    async def handler(message: Message) -> None:
        await asyncio.sleep(0.05)  # ok-sleep: a slow handler; the ack must still come after it
        if message.payload == "fail":
            raise ValueError("cannot handle")
        events.append(f"handled:{message.id}")

    async with scripted(script) as server:
        client = fast_client(server.url)
        client.subscribe("text", handler)
        async with client:
            await until(lambda: f"ack:{later['id']}" in events)
            assert events.index(f"handled:{good['id']}") < events.index(f"ack:{good['id']}")
            assert f"ack:{bad['id']}" not in events  # acks go out in order: the later one came, this one never will
            assert bad["id"] not in client._seen  # so the server's redelivery runs the handlers again


async def test_a_redelivered_message_is_acked_again_but_not_handled_again(quick_retries: None) -> None:
    message = envelope("text", "once", requireAck=True)
    acks: list[str] = []

    async def script(request: Request, reply: Reply) -> None:
        if request.path == "/api/ack":
            acks.extend(request.json()["messageIds"])
            await reply.json(200, {"acked": 1})
            return
        await reply.start_stream()
        await reply.connect()
        await reply.event(message)
        await server.wait_for(lambda: len(acks) == 1)
        await reply.event(message)  # the redelivery: our first ack was "lost"
        await reply.hold()

    async with scripted(script) as server:
        client = fast_client(server.url)
        handled: list[Any] = []
        client.subscribe("text", lambda m: handled.append(m.payload))
        async with client:
            await until(lambda: len(acks) == 2)
            assert acks == [message["id"], message["id"]]
            assert handled == ["once"]


async def test_auto_ack_can_be_turned_off() -> None:
    message = envelope("text", "manual", requireAck=True)

    async def script(request: Request, reply: Reply) -> None:
        if request.path == "/api/ack":
            await reply.json(200, {"acked": 1})
            return
        await reply.start_stream()
        await reply.connect()
        await reply.event(message)
        await reply.hold()

    async with scripted(script) as server:
        client = fast_client(server.url, auto_ack=False)
        got: list[Message] = []
        client.subscribe("text", got.append)
        async with client:
            await until(lambda: len(got) == 1)
            answer = await client.ack(got[0].id or "")
            assert answer.acked == 1  # type: ignore[union-attr]
            assert [r.json() for r in server.of("/api/ack")] == [{"messageIds": [message["id"]]}]


# ---------------------------------------------------------------------------------------------------------------
# Sending
# ---------------------------------------------------------------------------------------------------------------


def publish_answer(request: Request) -> dict[str, Any]:
    return {"success": True, "messageId": request.json()["id"], "delivered": 1, "queued": False}


async def test_send_text_posts_the_envelope_and_returns_the_answer() -> None:
    async def script(request: Request, reply: Reply) -> None:
        await reply.json(202, publish_answer(request))

    async with scripted(script) as server, fast_client(server.url, auto_connect=False) as client:
        answer = await client.send_text("hi", target="bob", priority=2, require_ack=True)
        assert isinstance(answer, PublishAnswer)
        assert answer.delivered == 1
        (post,) = server.of("/api/messages")
        body = post.json()
        assert body == {"id": answer.message_id, "type": "text", "priority": 2, "target": "bob", "payload": "hi",
                        "requireAck": True}  # fmt: skip
        assert post.headers["content-type"] == "application/json"
        assert post.headers["x-client-id"] == "c1"
        answer = await client.send_json({"a": [1]}, topic="orders.eu")
        assert server.of("/api/messages")[1].json()["payload"] == {"a": [1]}
        assert server.of("/api/messages")[1].json()["topic"] == "orders.eu"
        assert not server.of("/sse")
        assert client.stats().sent == 2


async def test_send_retries_on_503_honouring_retry_after_with_the_same_id(quick_retries: None) -> None:
    async def script(request: Request, reply: Reply) -> None:
        if len(server.of("/api/messages")) == 1:
            await reply.json(503, {"error": "busy", "code": "overloaded"}, headers={"retry-after": "1"})
            return
        await reply.json(202, publish_answer(request))

    async with scripted(script) as server, fast_client(server.url, auto_connect=False) as client:
        answer = await client.send_text("again")
        first, second = server.of("/api/messages")
        assert second.at - first.at >= 1.0  # Retry-After: 1 beats the 0.02 s retry delay
        assert first.json()["id"] == second.json()["id"] == answer.message_id  # type: ignore[union-attr]


async def test_send_fails_with_server_error_after_the_retries(quick_retries: None) -> None:
    async def script(request: Request, reply: Reply) -> None:
        await reply.json(429, {"error": "slow down", "code": "rate_limited"})

    async with scripted(script) as server, fast_client(server.url, auto_connect=False) as client:
        with pytest.raises(ServerError) as caught:
            await client.send_text("x")
        assert (caught.value.status, caught.value.code) == (429, "rate_limited")
        assert len(server.of("/api/messages")) == 1 + len(outbox.RETRY_DELAYS)


async def test_network_errors_are_retried_then_fail_with_connection_lost(quick_retries: None) -> None:
    async with scripted(await stream_of()) as server:
        url = server.url
    async with fast_client(url, auto_connect=False) as client:  # nobody listens there any more
        with pytest.raises(ConnectionLostError):
            await client.send_text("x")


@pytest.mark.parametrize(("status", "error"), [(422, ServerError), (400, ServerError), (403, AuthError)])
async def test_client_errors_fail_at_once(status: int, error: type[Exception]) -> None:
    async def script(request: Request, reply: Reply) -> None:
        await reply.json(status, {"error": "invalid message", "code": "invalid_message", "detail": {"path": "$"}})

    async with scripted(script) as server, fast_client(server.url, auto_connect=False) as client:
        with pytest.raises(error) as caught:
            await client.send_text("x")
        assert caught.value.code == "invalid_message"  # type: ignore[attr-defined]
        assert len(server.of("/api/messages")) == 1


async def test_sends_wait_while_the_stream_is_down_then_go() -> None:
    connected_at: list[float] = []

    async def script(request: Request, reply: Reply) -> None:
        if request.path == "/api/messages":
            await reply.json(202, publish_answer(request))
            return
        if len(server.of("/sse")) < 4:
            await reply.json(502, {"error": "gateway", "code": "bad_gateway"})
            return
        connected_at.append(time.monotonic())
        await reply.start_stream()
        await reply.connect()
        await reply.hold()

    async with scripted(script) as server:
        client = fast_client(server.url, reconnect_base_delay=0.1, reconnect_max_delay=0.1)
        connecting = asyncio.create_task(client.connect())
        await until(lambda: client.state in ("connecting", "reconnecting"))
        answer = await client.send_text("queued while down")
        assert isinstance(answer, PublishAnswer)
        (post,) = server.of("/api/messages")
        assert post.at >= connected_at[0]
        await connecting
        await client.close()


async def test_a_full_queue_evicts_lower_priorities_and_refuses_when_it_cannot() -> None:
    async def script(request: Request, reply: Reply) -> None:
        await reply.json(500, {"error": "down", "code": "internal_error"})  # the stream never comes up

    async with scripted(script) as server:
        client = fast_client(server.url, queue_size=2, max_reconnect_attempts=None, reconnect_base_delay=0.2)
        connecting = asyncio.create_task(client.connect())
        await until(lambda: client.state != "disconnected")
        a = asyncio.create_task(client.send_text("a", priority=0))
        await until(lambda: client._in_flight is not None)  # the sender holds `a`, waiting for the stream
        b = asyncio.create_task(client.send_text("b", priority=0))
        c = asyncio.create_task(client.send_text("c", priority=0))
        await until(lambda: client.stats().queued == 3)
        d = asyncio.create_task(client.send_text("d", priority=2))
        with pytest.raises(QueueFullError, match="evicted"):
            await b
        with pytest.raises(QueueFullError, match="full"):
            await client.send_text("e", priority=0)  # only priority >= 0 waits: nothing to evict
        assert client.stats().dropped == 2
        assert client.stats().queued == 3
        await client.close()
        for task in (a, c, d):
            with pytest.raises(ConnectionLostError, match="closed"):
                await task
        with pytest.raises(ConnectionLostError):
            await connecting
        assert not server.of("/api/messages")


async def test_close_is_idempotent_and_stops_everything() -> None:
    async with scripted(await stream_of()) as server:
        client = fast_client(server.url)
        await client.connect()
        tasks = [t for t in (client._runner, client._sender, client._dispatcher) if t is not None]
        assert len(tasks) == 3
        await client.close()
        await client.close()
        assert all(t.done() for t in tasks)
        assert client.state == "disconnected"
        with pytest.raises(ConnectionLostError):
            await client.send_text("after close")
        with pytest.raises(ConnectionLostError):
            await client.connect()


async def test_close_from_a_handler_ends_the_dispatcher() -> None:
    async with scripted(await stream_of(envelope("text", "bye"))) as server:
        client = fast_client(server.url)
        closed: list[str] = []

        async def handler(message: Message) -> None:
            await client.close()
            closed.append(client.state)

        client.subscribe("text", handler)
        await client.connect()
        dispatcher = client._dispatcher
        assert dispatcher is not None
        await until(dispatcher.done)
        assert closed == ["disconnected"]
        assert all(t.done() for t in (client._runner, client._sender) if t is not None)


async def test_an_unusable_url_stops_with_the_error() -> None:
    client = fast_client("ftp://127.0.0.1:1")
    with pytest.raises(httpx.UnsupportedProtocol):
        await client.connect()
    assert client.state == "error"
    await client.close()
    client = fast_client("http://[::1")
    with pytest.raises(httpx.InvalidURL):
        await client.connect()
    await client.close()


async def test_a_shared_http_client_is_not_closed() -> None:
    async with scripted(await stream_of()) as server, httpx.AsyncClient() as http:
        async with fast_client(server.url, http_client=http) as client:
            assert client.state == "connected"
        assert not http.is_closed


# ---------------------------------------------------------------------------------------------------------------
# Commands and tasks
# ---------------------------------------------------------------------------------------------------------------


def task_script(
    server_box: list[ScriptedServer], outcome: list[dict[str, Any]], *, events_first: bool = False
) -> Callable[..., Any]:
    """A scheduler stand-in: POST /api/commands answers task t1; the stream then carries ``outcome``."""
    submitted = asyncio.Event()
    emitted = asyncio.Event()

    async def script(request: Request, reply: Reply) -> None:
        if request.path == "/api/commands":
            submitted.set()
            if events_first:
                await emitted.wait()
            await reply.json(202, {"success": True, "taskId": "t1", "status": "pending"})
            return
        await reply.start_stream()
        await reply.connect()
        await submitted.wait()
        for event in outcome:
            await reply.event(event)
        emitted.set()
        await reply.hold()

    return script


def task_event(event: str, **payload: Any) -> dict[str, Any]:
    return envelope("command", {"event": event, "taskId": "t1", **payload}, source="scheduler")


def progress(value: float) -> dict[str, Any]:
    return envelope("progress", {"taskId": "t1", "progress": value, "description": f"{value}%"}, source="scheduler")


@pytest.mark.parametrize("events_first", [False, True])
async def test_run_task_reports_progress_and_returns_the_result(events_first: bool) -> None:
    outcome = [
        task_event("task_submitted"),
        task_event("task_started"),
        progress(10),
        envelope("progress", {"taskId": "other", "progress": 99}),
        progress(50.5),
        task_event("task_completed", result={"sum": 3}),
    ]
    box: list[ScriptedServer] = []
    async with scripted(task_script(box, outcome, events_first=events_first)) as server:
        async with fast_client(server.url) as client:
            seen: list[ProgressPayload] = []

            async def on_progress(p: ProgressPayload) -> None:
                seen.append(p)

            result = await client.run_task("add", {"a": 1, "b": 2}, on_progress=on_progress, timeout=5)
        assert result == {"sum": 3}
        assert [(p.task_id, p.progress, p.description) for p in seen] == [("t1", 10, "10%"), ("t1", 50.5, "50.5%")]
        (command,) = server.of("/api/commands")
        body = command.json()
        assert body["type"] == "command"
        assert body["priority"] == 2
        payload = body["payload"]
        assert payload["action"] == "execute"
        assert payload["task"] == "add"
        assert payload["params"] == {"a": 1, "b": 2}
        assert payload["timeout"] == 5000
        assert payload["commandId"]


@pytest.mark.parametrize(
    ("event", "status"), [("task_failed", "failed"), ("task_cancelled", "cancelled"), ("task_timed_out", "timed_out")]
)
async def test_run_task_raises_on_failure_cancel_and_timeout(event: str, status: str) -> None:
    outcome = [task_event("task_failed", error="first try", willRetry=True), task_event(event, error="final")]
    async with scripted(task_script([], outcome)) as server, fast_client(server.url) as client:
        with pytest.raises(TaskError) as caught:
            await client.run_task("flaky")
        assert (caught.value.task_id, caught.value.status, caught.value.error) == ("t1", status, "final")


async def test_run_task_fails_when_the_client_closes() -> None:
    async with scripted(task_script([], [])) as server:
        client = fast_client(server.url)
        await client.connect()
        running = asyncio.create_task(client.run_task("forever"))
        await server.wait_for(lambda: bool(server.of("/api/commands")))
        await until(lambda: any(w.task_id == "t1" for w in client._task_waiters.values()))
        await client.close()
        with pytest.raises(ConnectionLostError):
            await running


@pytest.mark.parametrize("action", ["cancel", "pause", "resume"])
async def test_task_control_commands(action: str) -> None:
    async def script(request: Request, reply: Reply) -> None:
        await reply.json(202, {"success": True, "taskId": "t9", "status": "cancelled"})

    async with scripted(script) as server, fast_client(server.url, auto_connect=False) as client:
        answer = await getattr(client, f"{action}_task")("t9")
        assert isinstance(answer, CommandAnswer)
        assert answer.task_id == "t9"
        payload = server.of("/api/commands")[0].json()["payload"]
        assert payload["action"] == action
        assert payload["taskId"] == "t9"


async def test_query_progress_reads_the_task_record() -> None:
    record = {"taskId": "t9", "commandId": "c9", "clientId": "c1", "task": "sleep", "params": {}, "priority": 1,
              "status": "running", "progress": 42.0, "attempts": 1, "createdAt": 1}  # fmt: skip

    async def script(request: Request, reply: Reply) -> None:
        if request.path == "/api/tasks/t9":
            await reply.json(200, record)
        else:
            await reply.json(404, {"error": "no such task", "code": "unknown_task"})

    async with scripted(script) as server, fast_client(server.url, auto_connect=False) as client:
        task = await client.query_progress("t9")
        assert (task.status, task.progress) == ("running", 42.0)
        with pytest.raises(ServerError, match="no such task"):
            await client.query_progress("nope")


# ---------------------------------------------------------------------------------------------------------------
# Against the real server
# ---------------------------------------------------------------------------------------------------------------

REAL_ENV = {"SSE_FAST_RETRY": "100", "SSE_FAST_RETRY_SPREAD": "0", "SSE_FAST_SHUTDOWN_GRACE": "1"}


def real_client(url: str, client_id: str, **options: Any) -> Client:
    return fast_client(url, client_id=client_id, **options)


@pytest.mark.e2e
async def test_real_send_receive_and_auto_ack(tmp_path: Path) -> None:
    from _servers import running_server

    with running_server(tmp_path, env=REAL_ENV) as server:
        async with real_client(server.url, "alice") as alice, real_client(server.url, "bob") as bob:
            got: list[Message] = []
            alice.subscribe("text", got.append)
            acked: list[Message] = []
            bob.subscribe("ack", acked.append)
            answer = await bob.send_text("hi alice", target="alice", require_ack=True)
            assert isinstance(answer, PublishAnswer)
            assert answer.delivered == 1
            await until(lambda: len(got) == 1)
            assert (got[0].payload, got[0].source, got[0].id) == ("hi alice", "bob", answer.message_id)
            await until(lambda: len(acked) == 1)
            assert acked[0].payload == {"messageId": answer.message_id, "clientId": "alice"}
            async with httpx.AsyncClient() as http:
                url = f"{server.url}/api/messages/{answer.message_id}"
                status = await http.get(url, headers={"X-Client-Id": "bob"})
            assert status.json() == {"status": "acked", "ackedBy": ["alice"]}
            assert alice.connection_info["clientId"] == "alice"
            assert alice.last_event_id is not None


@pytest.mark.e2e
async def test_real_topics_and_broadcast(tmp_path: Path) -> None:
    from _servers import running_server

    with running_server(tmp_path, env=REAL_ENV) as server:
        async with real_client(server.url, "sub", topics=["orders.*"]) as sub, real_client(server.url, "pub") as pub:
            got: list[Any] = []
            sub.subscribe("*", lambda m: got.append(m.payload))
            await pub.send_json({"n": 1}, topic="orders.eu")
            await pub.send_json({"n": 2}, topic="invoices.eu")
            await pub.send_text("all")
            await until(lambda: got == [{"n": 1}, "all"])


@pytest.mark.e2e
async def test_real_resume_replays_what_was_missed_exactly_once(tmp_path: Path) -> None:
    from _servers import open_stream, running_server

    env = REAL_ENV | {"SSE_FAST_MAX_CONNECTIONS_PER_CLIENT": "1"}
    with running_server(tmp_path, env=env) as server:
        async with real_client(server.url, "alice", reconnect_base_delay=0.3) as alice, \
                real_client(server.url, "bob") as bob:  # fmt: skip
            got: list[Any] = []
            alice.subscribe("text", lambda m: got.append(m.payload))
            await bob.send_text("before", target="alice")
            await until(lambda: got == ["before"])
            # Another connection as alice replaces hers (limit 1): she reconnects with Last-Event-ID and her
            # reconnect replaces the intruder in turn. What was published meanwhile must arrive, once.
            async with open_stream(server.url, client_id="alice") as intruder:
                await intruder.wait_for(lambda s: bool(s.system("connect")))
                for i in range(5):
                    await bob.send_text(f"during {i}", target="alice")
                await intruder.closed.wait()
            await bob.send_text("after", target="alice")
            await until(lambda: got[-1:] == ["after"])
            assert got == ["before", *(f"during {i}" for i in range(5)), "after"]
            assert alice.connection_info["resumed"] is True
            assert alice.stats().reconnects >= 1


@pytest.mark.e2e
async def test_real_survives_a_server_restart_and_delivers_queued_sends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import _servers

    server = _servers.start_server(tmp_path, env=REAL_ENV)
    try:
        async with real_client(server.url, "alice", max_reconnect_attempts=None) as alice:
            got: list[Any] = []
            alice.subscribe("text", lambda m: got.append(m.payload))
            await alice.send_text("first", target="alice")
            await until(lambda: got == ["first"])
            states: list[str] = []
            alice.on_state_change(lambda old, new: states.append(new))
            assert server.stop(signal.SIGTERM) == 0
            await until(lambda: alice.state != "connected")
            queued = asyncio.create_task(alice.send_text("sent while down", target="alice"))
            monkeypatch.setattr(_servers, "free_port", lambda: server.port)
            server = _servers.start_server(tmp_path, env=REAL_ENV)
            answer = await asyncio.wait_for(queued, 20)
            assert isinstance(answer, PublishAnswer)
            await until(lambda: got == ["first", "sent while down"], timeout=20)
            assert "reconnecting" in states
            assert states[-1] == "connected"
            assert alice.connection_info["reason"] == "unknown_cursor"  # a new process is a new epoch
            assert alice.stats().gaps == 1
    finally:
        server.kill()


@pytest.mark.e2e
async def test_real_heartbeats_reach_no_handler(tmp_path: Path) -> None:
    from _servers import running_server

    with running_server(tmp_path, env=REAL_ENV | {"SSE_FAST_HEARTBEAT": "0.2", "SSE_FAST_KEEPALIVE": "0.1"}) as server:
        async with real_client(server.url, "alice", read_timeout=0.5) as alice:
            anything: list[str] = []
            alice.subscribe("*", lambda m: anything.append(m.type))
            await until(lambda: alice.stats().heartbeats >= 3)
            assert anything == []
            assert alice.stats().reconnects == 0


@pytest.mark.e2e
async def test_real_bad_token_raises_auth_error(tmp_path: Path) -> None:
    from _servers import running_server

    env = REAL_ENV | {"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_SECRET": "s" * 32}
    with running_server(tmp_path, env=env) as server:
        client = real_client(server.url, "alice", token="not-a-jwt")
        with pytest.raises(AuthError) as caught:
            await client.connect()
        assert caught.value.status == 401
        assert client.state == "error"
        await client.close()


@pytest.mark.e2e
async def test_real_run_task_reports_progress_and_returns_the_result(tmp_path: Path) -> None:
    from _servers import running_server

    with running_server(tmp_path, env=REAL_ENV) as server:
        async with real_client(server.url, "alice") as alice:
            seen: list[float] = []
            counts: list[Any] = []
            alice.subscribe("json", lambda m: counts.append(m.payload["count"]))
            result = await alice.run_task(
                "count", {"to": 3, "interval": 0.01}, on_progress=lambda p: seen.append(p.progress)
            )
            assert result == {"counted": 3}
            assert seen[-1] == 100
            assert seen == sorted(seen)
            await until(lambda: counts == [1, 2, 3])


@pytest.mark.e2e
async def test_real_run_task_failures_cancel_and_query(tmp_path: Path) -> None:
    from _servers import running_server

    with running_server(tmp_path, env=REAL_ENV) as server:
        async with real_client(server.url, "alice") as alice:
            with pytest.raises(TaskError) as caught:
                await alice.run_task("fail", {"message": "nope", "permanent": True})
            assert caught.value.status == "failed"
            assert "nope" in str(caught.value.error)
            with pytest.raises(ServerError) as unknown:
                await alice.run_task("no-such-task")
            assert unknown.value.status == 400
            running = asyncio.create_task(alice.run_task("sleep", {"seconds": 30}))
            await until(lambda: any(w.task_id for w in alice._task_waiters.values()))
            (task_id,) = [w.task_id for w in alice._task_waiters.values() if w.task_id]
            assert task_id is not None
            record = await alice.query_progress(task_id)
            assert record.task == "sleep"
            assert record.status in ("pending", "running")
            answer = await alice.cancel_task(task_id)
            assert isinstance(answer, CommandAnswer)
            with pytest.raises(TaskError) as cancelled:
                await running
            assert cancelled.value.status == "cancelled"
            assert (await alice.query_progress(task_id)).status == "cancelled"


@pytest.mark.e2e
async def test_the_documented_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from _servers import ROOT, running_server

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The Python client", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
    with running_server(tmp_path, env=REAL_ENV) as server:
        code = code.replace("http://127.0.0.1:8000", server.url).replace("asyncio.run(main())", "")
        namespace: dict[str, Any] = {}
        exec(compile(code, "README.md", "exec"), namespace)
        await namespace["main"]()
    out = capsys.readouterr().out
    assert "100.0%" in out
    assert "result: {'counted': 3}" in out


@pytest.mark.e2e
async def test_real_the_first_iterator_gets_what_arrived_before_it_and_acks_it(tmp_path: Path) -> None:
    from _servers import running_server

    with running_server(tmp_path, env=REAL_ENV) as server:
        async with real_client(server.url, "alice", queue_size=2) as alice, real_client(server.url, "bob") as bob:
            handled: list[Message] = []
            alice.subscribe("text", handled.append)
            text = await bob.send_text("handled", target="alice", require_ack=True)
            first = await bob.send_json({"n": 1}, target="alice", require_ack=True)  # no handler takes json
            second = await bob.send_json({"n": 2}, target="alice")
            await until(lambda: alice.stats().received >= 4)  # connect, text, json, json
            assert [m.payload for m in handled] == ["handled"]
            # The held buffer is bounded (queue_size 2): the oldest (the connect event, the text) were dropped, counted.
            assert alice.stats().unclaimed == 2

            async def status(message_id: str) -> str:
                async with httpx.AsyncClient() as http:
                    url = f"{server.url}/api/messages/{message_id}"
                    answer = await http.get(url, headers={"X-Client-Id": "bob"})
                return str(answer.json()["status"])

            await until(lambda: alice.stats().sent == 1)  # the handled text's ack
            assert await status(text.message_id) == "acked"
            assert await status(first.message_id) == "delivered"  # written to the stream, seen by nobody: not acked
            got: list[Message] = []
            async for message in alice.messages():
                got.append(message)
                if len(got) == 2:
                    break
            assert [(m.id, m.payload) for m in got] == [(first.message_id, {"n": 1}), (second.message_id, {"n": 2})]
            await until(lambda: alice.stats().sent == 2)
            assert await status(first.message_id) == "acked"


@pytest.mark.e2e
async def test_real_an_async_token_function_is_called_again_on_a_401_send(tmp_path: Path) -> None:
    import jwt

    from _servers import running_server

    secret = "s" * 32
    env = REAL_ENV | {"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_SECRET": secret}
    calls: list[int] = []

    async def token() -> str:
        calls.append(1)
        return "expired" if len(calls) == 1 else jwt.encode({"sub": "alice"}, secret, algorithm="HS256")

    with running_server(tmp_path, env=env) as server:
        async with real_client(server.url, "alice", token=token, auto_connect=False) as alice:
            answer = await alice.send_text("to myself", target="alice")
            assert (answer.delivered, answer.queued, answer.duplicate) == (0, True, False)
            assert len(calls) == 2
        stale = real_client(server.url, "alice", token=lambda: "never-valid", auto_connect=False)
        with pytest.raises(AuthError) as caught:
            await stale.send_text("x", target="alice")
        assert caught.value.status == 401
        await stale.close()


def test_send_refuses_a_scheduler_command() -> None:
    client = Client("http://127.0.0.1:1", client_id="c1")
    with pytest.raises(ValueError, match="send_command"):
        asyncio.run(client.send(sse_fast.Message(type="command", payload={})))
