"""The writer and the broker in one process: priority overtaking in a backed-up queue, and resume across it."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from sse_fast import Decoder
from sse_fast.broker.memory import MemoryBroker
from sse_fast.errors import HttpError
from sse_fast.models import Envelope, new_message_id
from sse_fast.settings import Settings
from sse_fast.streams import Streams, parse_public_id


class RecordingSink:
    """A sink that records what it is given."""

    def __init__(self) -> None:
        self.data = bytearray()

    direct = None  # written through write() only

    def wrote(self, size: int) -> None:
        raise AssertionError("only a direct sink is told what the hub wrote")

    def write(self, data: bytes) -> bool:
        self.data += data
        return True

    def close(self) -> None:
        pass


def envelope(payload: int, priority: int, target: str) -> Envelope:
    return Envelope(id=new_message_id(), type="json", priority=priority, payload=payload, target=target, source="t")


async def test_overtaking_frames_carry_no_id_and_a_resume_replays_from_the_low_water_mark() -> None:
    settings = Settings()
    broker = MemoryBroker(settings)
    streams = Streams(settings, id_prefix=f"{broker.epoch}-", node_id="n", new_id=new_message_id)
    broker.attach(streams)
    streams._loop = asyncio.get_running_loop()
    sink = RecordingSink()
    conn = streams.open("reader", (), sink)
    streams.hub.set_watermark(conn.id, broker.log.head)

    conn.blocked = True  # the connection is backed up (a full ASGI channel): frames wait in its Rust queue
    for n, priority in [(1, 0), (2, 0), (3, 3)]:  # two LOW, then one CRITICAL that will overtake them
        await broker.publish(envelope(n, priority, "reader"))
    streams.unblock(conn.id)
    await asyncio.sleep(0)  # ok-sleep: one loop turn for the writer

    events = Decoder().feed(bytes(sink.data))
    order = [(msgspec.json.decode(e.data)["payload"], e.id) for e in events]
    epoch = broker.epoch
    # The CRITICAL frame goes first and carries no id (two LOW frames before it are still queued); the last LOW
    # frame carries the cursor that covers all three.
    assert [payload for payload, _ in order] == [3, 1, 2]
    assert order[0][1] is None
    assert order[2][1] == f"{epoch}-3"

    # A client cut right after the overtaking frame resumes from the mark before it: everything is replayed, and
    # the overtaking frame comes again (the SDK drops it by message id).
    replay = await broker.open_stream("reader", (), f"{epoch}-0")
    assert replay.resumed
    assert [msgspec.json.decode(f.body.split(b"data: ")[1])["payload"] for f in replay.frames] == [1, 2, 3]
    # A client that saw the final id resumes with nothing missing and nothing repeated.
    after = await broker.open_stream("reader", (), f"{epoch}-3")
    assert after.resumed
    assert after.frames == []


async def test_a_failing_tick_job_stops_neither_the_ticker_nor_the_other_jobs(caplog: Any) -> None:
    streams = Streams(Settings(keepalive=0.05, heartbeat=0.05), id_prefix="e-", node_id="n", new_id=new_message_id)
    ran: list[float] = []

    def broken(now: float) -> None:
        raise RuntimeError("a bug in one job")

    streams.add_tick_job(broken)
    streams.add_tick_job(ran.append)
    streams.start(asyncio.get_running_loop())
    try:
        deadline = asyncio.get_running_loop().time() + 5
        while len(ran) < 2:
            assert asyncio.get_running_loop().time() < deadline, "the ticker stopped"
            await asyncio.sleep(0.02)  # ok-sleep: polling for the ticker, with a deadline
    finally:
        streams.stop()
    assert "a bug in one job" in caplog.text


def test_public_connection_ids_are_read_back_by_one_parser() -> None:
    streams = Streams(Settings(), id_prefix="e-", node_id="a1b2.c3", new_id=new_message_id)
    assert parse_public_id(streams.public_id(42)) == ("a1b2.c3", 42)  # the node id may hold dots: the last one splits
    assert parse_public_id("n." + "9" * 19) == ("n", int("9" * 19))
    for malformed in ("", "7", ".7", "n.", "n.x1", "n.-1", "n.+1", "n.١", "n." + "9" * 20, "x" * 65 + ".1"):
        assert parse_public_id(malformed) is None, malformed
    assert parse_public_id("x" * 64 + ".1") == ("x" * 64, 1)


async def test_a_live_change_keeps_within_the_streams_own_grants_and_skips_no_ops() -> None:
    settings = Settings()
    streams = Streams(settings, id_prefix="e-", node_id="n", new_id=new_message_id)
    streams._loop = asyncio.get_running_loop()
    sink = RecordingSink()
    conn = streams.open("alice", ("news.eu",), sink, grants=lambda pattern: pattern.startswith("news."))
    with pytest.raises(HttpError) as refused:
        streams.change_topics(conn.id, add=("secret.x",), remove=frozenset())
    assert (refused.value.status, refused.value.code, refused.value.detail) == (
        403,
        "topic_not_granted",
        {"topic": "secret.x"},
    )
    assert streams.change_topics(conn.id, add=("news.eu",), remove=frozenset({"never.had"})) == ("news.eu",)
    assert streams.change_topics(conn.id, add=("news.eu",), remove=frozenset({"news.eu"})) == ("news.eu",)
    assert streams.change_topics(conn.id, add=("news.uk",), remove=frozenset({"news.eu"})) == ("news.uk",)
    assert streams.change_topics(conn.id + 1, add=("news.uk",), remove=frozenset()) is None
    await asyncio.sleep(0)  # ok-sleep: one loop turn, for the writer to flush the queued frame
    assert sink.data.count(b'"subscribed"') == 1
