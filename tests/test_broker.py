"""The memory broker and the writer in one process: the seams a review found, each pinned by a regression test."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest

from sse_fast import Decoder
from sse_fast.models import Envelope, ValidationFailure, new_message_id
from sse_fast.server.app import App
from sse_fast.settings import Settings


class PendingSink:
    """Like granian's ASGI channel: a write may be left pending, and while it is, further writes are refused."""

    def __init__(self, *, pending_first: bool = False, pending_every: int = 0) -> None:
        self.data = bytearray()
        self.pending = False
        self.writes = 0
        self._pending_first = pending_first
        self._pending_every = pending_every

    direct = None  # written through write() only

    def wrote(self, size: int) -> None:
        raise AssertionError("only a direct sink is told what the hub wrote")

    def write(self, data: bytes) -> bool:
        if self.pending:
            return False  # refused, not buffered: the caller must not have written
        self.data += data
        self.writes += 1
        if (self._pending_first and self.writes == 1) or (
            self._pending_every and self.writes % self._pending_every == 0
        ):
            self.pending = True
            return False
        return True

    def close(self) -> None:
        pass

    def payloads(self, event_type: str = "json") -> list[Any]:
        events = Decoder().feed(bytes(self.data))
        return [msgspec.json.decode(e.data)["payload"] for e in events if e.event == event_type]


def make_app(**settings: Any) -> App:
    app = App(Settings(**settings))
    app.streams._loop = asyncio.get_running_loop()  # what startup() does, without hooking the test's signals
    return app


def envelope(payload: Any, *, target: str | None = None, source: str = "pub", **kw: Any) -> Envelope:
    return Envelope(
        id=kw.pop("id", None) or new_message_id(), type="json", payload=payload, target=target, source=source, **kw
    )


async def turn() -> None:
    for _ in range(3):
        await asyncio.sleep(0)  # ok-sleep: a few loop turns for the writer


async def test_live_frames_wait_while_the_opening_write_is_pending() -> None:
    app = make_app()
    sink = PendingSink(pending_first=True)
    conn_id = await app.handshake.open("late", (), None, sink)
    for n in range(3):
        await app.broker.publish(envelope(n, target="late"))
    await turn()
    assert sink.payloads() == [], "nothing may be written while the opening send is pending"
    sink.pending = False
    app.streams.unblock(conn_id)  # what the ASGI sink does when its send completes
    await turn()
    assert sink.payloads() == [0, 1, 2]


async def test_a_long_replay_is_written_in_chunks_with_backpressure_then_live() -> None:
    app = make_app(queue_bytes=65536, max_body=4096)
    first = PendingSink()
    await app.handshake.open("reader", (), None, first)
    cursor = Decoder().feed(bytes(first.data))[-1].id
    for n in range(300):  # about 300 x 230 bytes: several chunks of 16 KiB
        await app.broker.publish(envelope(n, target="reader"))
    sink = PendingSink(pending_every=2)
    conn_id = await app.handshake.open("reader", (), cursor, sink)
    await app.broker.publish(envelope("live", target="reader"))
    for _ in range(50):
        await turn()
        if sink.pending:
            sink.pending = False
            app.streams.unblock(conn_id)
    assert sink.payloads() == [*range(300), "live"]
    assert sink.writes > 3, "the replay went out in several writes"


async def test_a_refused_message_leaves_no_dedupe_entry_behind() -> None:
    app = make_app(queue_bytes=2000, max_body=2000)
    too_big = envelope("x" * 1990, id="retry-me", target="nobody")
    with pytest.raises(ValidationFailure) as refused:
        await app.broker.publish(too_big, chosen_id=True)
    assert refused.value.status == 413
    accepted = await app.broker.publish(envelope("small", id="retry-me", target="nobody"), chosen_id=True)
    assert not accepted.duplicate


async def test_a_require_ack_id_cannot_be_taken_over_by_another_source() -> None:
    app = make_app()
    await app.broker.publish(envelope(1, id="order-1", target="bob", source="alice", require_ack=True))
    with pytest.raises(ValidationFailure) as taken:
        await app.broker.publish(envelope(2, id="order-1", target="mallory", source="mallory", require_ack=True))
    assert (taken.value.status, taken.value.code) == (409, "message_id_in_use")
    assert await app.broker.ack("mallory", ["order-1"], admin=False) == 0
    assert await app.broker.message_status("order-1") == ("alice", "pending", [])


async def test_mailboxes_are_bounded_in_bytes_per_client() -> None:
    app = make_app(queue_bytes=8192, max_body=4096)
    for n in range(20):
        await app.broker.publish(envelope({"n": n, "pad": "x" * 900}, target="offline"))
    counters = app.broker.counters()
    assert counters["mailbox_bytes"] <= 8192
    assert counters["mailbox_dropped"] > 0
    sink = PendingSink()
    await app.handshake.open("offline", (), None, sink)
    kept = [p["n"] for p in sink.payloads()]
    assert kept == list(range(20 - len(kept), 20)), "the newest are kept, oldest dropped"


async def test_finished_acks_do_not_keep_their_payload() -> None:
    app = make_app()
    await app.broker.publish(envelope("x" * 10_000, id="big", target="t", source="s", require_ack=True))
    assert app.broker.counters()["acks_bytes"] > 10_000
    assert await app.broker.ack("t", ["big"], admin=False) == 1
    assert app.broker.counters()["acks_bytes"] == 0
    assert await app.broker.message_status("big") == ("s", "acked", ["t"])


async def test_finished_ack_statuses_are_forgotten_after_their_ttl_not_kept_until_the_count_bound() -> None:
    # The soak (loadtest/soak.py) found acks_tracked growing for as long as requireAck traffic ran: an acked or
    # expired message's status stayed until SSE_FAST_MAX_PENDING_ACKS newer ones pushed it out.
    app = make_app(ack_timeout=1.0, ack_retries=0, ack_status_ttl=10.0)  # lifetime 1 x (0 + 2) + 10 = 12 s
    await app.broker.publish(envelope(1, id="done", target="t", source="s", require_ack=True))
    await app.broker.publish(envelope(2, id="unacked", target="gone", source="s", require_ack=True))
    assert await app.broker.ack("t", ["done"], admin=False) == 1
    now = time.time()
    app.broker.tick(now + 5)  # "unacked" expired (no retries), both statuses still queryable
    assert await app.broker.message_status("done") == ("s", "acked", ["t"])
    assert await app.broker.message_status("unacked") == ("s", "expired", [])
    assert app.broker.counters()["acks_tracked"] == 2
    app.broker.tick(now + 13)
    assert await app.broker.message_status("done") is None
    assert await app.broker.message_status("unacked") is None
    assert app.broker.counters()["acks_tracked"] == 0
    assert app.broker.counters()["acks_bytes"] == 0
