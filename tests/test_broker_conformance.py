"""Broker conformance, rule by rule (issue 12, step 6): every test runs on the memory broker and on the Redis broker
and asserts the same observable behaviour (frames on streams, ``connect`` details, publish and ack answers, ack
statuses), one test per rule of docs/protocol.md sections 1, 2 and 5, named after what it guards.

The hypothesis state machine of tests/test_conformance_model.py drives both brokers through random sequences; this
module pins each rule by itself, with a readable failure. Where a regression test there guards exactly the same
thing, it is referenced at the place the rule would be tested here, not repeated.

Streams are opened in process (``app.handshake.open`` with a decoding sink, tests/_brokers.py); with Redis the
frames still travel through the log and the node's reader, and every step waits for :func:`settle` (a condition
with a deadline) before it looks. Time-driven rules (ack deadlines) are driven by ``tick(app, now)`` with a clock
the test chooses, never by sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from _brokers import (
    Received,
    StreamSink,
    close_stream,
    envelope,
    open_stream,
    payloads,
    running_app,
    settle,
    tick,
)
from _redis import RedisServer, running_redis
from sse_fast.errors import HttpError
from sse_fast.server.app import App

BROKERS = ["memory", pytest.param("redis", marks=pytest.mark.redis)]

UNKNOWN_CURSOR = "unknown_cursor"
EXPIRED = "expired"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server for the module (started only when a Redis test runs)."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> str | None:
    """The broker a test runs on: None for the memory broker, else the URL of an empty Redis (FLUSHALL)."""
    if request.param == "memory":
        return None
    server: RedisServer = request.getfixturevalue("redis_server")
    with server.client() as client:
        client.flushall()
    return server.url


@pytest.fixture(autouse=True)
def _no_problems_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A warning the server logs (a stream that could not open, a failed tick) fails the test: "never a crash"."""
    yield
    problems = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.split(".")[0] in ("sse_fast", "asyncio")
    ]
    assert not problems, problems


# -- helpers ---------------------------------------------------------------------------------------------------


def opened(sink: StreamSink) -> tuple[bool, int, str | None]:
    """``(resumed, missed, reason)`` of the stream's ``connect`` frame."""
    detail = sink.connect
    assert detail is not None, f"no connect frame: {bytes(sink.data)[:300]!r}"
    assert not sink.closed, sink.frames[-1:]
    return detail["resumed"], detail["missed"], detail.get("reason")


def seq(frame: Received) -> int:
    """The position a frame's cursor names (cursors are ``<epoch>-<seq>`` on both brokers)."""
    return int(frame.cursor.rpartition("-")[2])


async def status(app: App, message_id: str) -> tuple[str, str, list[str]] | None:
    return await app.broker.message_status(message_id)


async def publish(app: App, payload: Any, *, exclude: str | None = None, **fields: Any) -> Any:
    """Publish and wait until every stream has what the publish caused. An ``id`` given here is the client's own (as
    when the route finds one in the body): only such ids are deduped."""
    accepted = await app.broker.publish(envelope(payload, **fields), exclude=exclude, chosen_id="id" in fields)
    await settle(app)
    return accepted


async def refused(app: App, payload: Any, **fields: Any) -> tuple[int, str]:
    """The ``(status, code)`` a publish is refused with (it must be refused)."""
    with pytest.raises(HttpError) as err:
        await app.broker.publish(envelope(payload, **fields), chosen_id="id" in fields)
    await settle(app)
    return err.value.status, err.value.code


# -- routing ---------------------------------------------------------------------------------------------------


async def test_a_targeted_message_reaches_every_connection_of_its_target_and_nobody_else(broker: str | None) -> None:
    async with running_app(broker) as app:
        tab1 = await open_stream(app, "alice")
        tab2 = await open_stream(app, "alice", topics=("news.>",))
        bob = await open_stream(app, "bob")
        carol = await open_stream(app, "carol", topics=("news.>",))
        accepted = await publish(app, "for alice", target="alice")
        assert not accepted.queued
        assert payloads(tab1) == payloads(tab2) == ["for alice"]
        assert payloads(bob) == payloads(carol) == []


async def test_topic_patterns_reach_their_subscribers(broker: str | None) -> None:
    """``*`` matches one segment, a final ``>`` one or more; ``/`` and ``:`` are ordinary characters."""
    subscribers = {
        "one": ("news.*",),
        "more": ("news.>",),
        "exact": ("news.eu",),
        "sport": ("sport.*",),
        "odd": ("a/b:c.*",),
        "none": (),
    }
    published = ["news", "news.eu", "news.eu.fr", "sport.eu", "newsy.eu", "a/b:c.x", "a/b.c.x"]
    want = {
        "one": ["news.eu"],
        "more": ["news.eu", "news.eu.fr"],
        "exact": ["news.eu"],
        "sport": ["sport.eu"],
        "odd": ["a/b:c.x"],
        "none": [],
    }
    async with running_app(broker) as app:
        sinks = {name: await open_stream(app, name, topics=patterns) for name, patterns in subscribers.items()}
        for topic in published:
            await publish(app, topic, topic=topic)
        assert {name: payloads(sink) for name, sink in sinks.items()} == want


async def test_a_broadcast_reaches_everyone_but_the_excluded_client(broker: str | None) -> None:
    async with running_app(broker) as app:
        alice1, alice2 = await open_stream(app, "alice"), await open_stream(app, "alice")
        bob = await open_stream(app, "bob")
        carol = await open_stream(app, "carol", topics=("news.*",))
        await publish(app, "not bob", exclude="bob")
        await publish(app, "everyone")
        assert payloads(alice1) == payloads(alice2) == payloads(carol) == ["not bob", "everyone"]
        assert payloads(bob) == ["everyone"]


# -- dedupe ----------------------------------------------------------------------------------------------------
# Sources and ids containing ``:`` do not collide: test_conformance_model.py,
# test_dedupe_keys_of_sources_and_ids_with_colons_do_not_collide (both brokers).


async def test_the_same_source_and_id_twice_is_one_delivery_and_a_duplicate_answer(broker: str | None) -> None:
    async with running_app(broker) as app:
        t = await open_stream(app, "t")
        first = await publish(app, 1, id="order-1", source="s", target="t")
        again = await publish(app, 2, id="order-1", source="s", target="t")
        assert not first.duplicate
        assert (again.duplicate, again.message_id, again.delivered, again.queued) == (True, "order-1", 0, False)
        assert payloads(t) == [1]
        # Offline: the repeat is not mailboxed a second time either.
        assert (await publish(app, 3, id="order-2", source="s", target="u")).queued
        assert (await publish(app, 4, id="order-2", source="s", target="u")).duplicate
        assert payloads(await open_stream(app, "u")) == [3]


async def test_the_same_id_from_another_source_is_not_a_duplicate(broker: str | None) -> None:
    async with running_app(broker) as app:
        t = await open_stream(app, "t")
        first = await publish(app, 1, id="order-1", source="s1", target="t")
        second = await publish(app, 2, id="order-1", source="s2", target="t")
        assert (first.duplicate, second.duplicate) == (False, False)
        assert payloads(t) == [1, 2]


# -- acks and redelivery ---------------------------------------------------------------------------------------
# An ack after expiry leaves the message expired (and the source still hears of it): test_conformance_model.py,
# test_a_late_ack_after_expiry_leaves_the_message_expired. A redelivery to an offline target is not mailboxed
# again: test_a_redelivery_to_an_offline_target_is_not_mailboxed_again (both brokers).


async def test_require_ack_status_goes_pending_delivered_acked(broker: str | None) -> None:
    async with running_app(broker, ack_timeout=1.0, ack_retries=3) as app:
        start = time.time()
        await publish(app, "job", id="order-1", source="s", target="t", require_ack=True)
        assert await status(app, "order-1") == ("s", "pending", [])  # nobody online: it waits in the mailbox
        t = await open_stream(app, "t")
        assert payloads(t) == ["job"]
        await tick(app, start + 2)  # past the deadline: redelivered to t's live connection
        assert payloads(t) == ["job", "job"]
        assert await status(app, "order-1") == ("s", "delivered", [])
        assert await app.broker.ack("t", ["order-1"], admin=False) == 1
        assert await status(app, "order-1") == ("s", "acked", ["t"])
        assert await app.broker.ack("t", ["order-1"], admin=False) == 1  # a repeat counts, and changes nothing
        assert await status(app, "order-1") == ("s", "acked", ["t"])
        await tick(app, start + 10)
        assert payloads(t) == ["job", "job"], "an acked message is never redelivered"
        # A message whose target is online is delivered at once.
        await publish(app, "job 2", id="order-2", source="s", target="t", require_ack=True)
        assert await status(app, "order-2") == ("s", "delivered", [])


async def test_only_the_target_or_an_admin_may_ack_a_targeted_message(broker: str | None) -> None:
    async with running_app(broker) as app:
        for n in (1, 2):
            await publish(app, n, id=f"order-{n}", source="s", target="t", require_ack=True)
        assert await app.broker.ack("mallory", ["order-1", "order-2"], admin=False) == 0
        assert await status(app, "order-1") == ("s", "pending", [])
        assert await app.broker.ack("s", ["order-1"], admin=False) == 0  # not even its source
        assert await app.broker.ack("ops", ["order-1"], admin=True) == 1
        assert await status(app, "order-1") == ("s", "acked", ["ops"])
        assert await app.broker.ack("t", ["order-2"], admin=False) == 1
        assert await status(app, "order-2") == ("s", "acked", ["t"])


async def test_anyone_may_ack_a_topic_or_broadcast_message(broker: str | None) -> None:
    async with running_app(broker) as app:
        await publish(app, 1, id="news-1", source="s", topic="news.eu", require_ack=True)
        await publish(app, 2, id="all-1", source="s", require_ack=True)
        assert await app.broker.ack("anyone", ["news-1"], admin=False) == 1
        assert await app.broker.ack("other", ["news-1"], admin=False) == 1  # every acker is listed
        assert await app.broker.ack("bob", ["all-1"], admin=False) == 1
        assert await status(app, "news-1") == ("s", "acked", ["anyone", "other"])
        assert await status(app, "all-1") == ("s", "acked", ["bob"])


async def test_an_unacked_message_is_redelivered_at_its_deadline_with_the_same_id(broker: str | None) -> None:
    async with running_app(broker, ack_timeout=1.0, ack_retries=2) as app:
        first = await open_stream(app, "t")
        start = time.time()
        await publish(app, "job", id="order-1", source="s", target="t", require_ack=True)
        await tick(app, start + 0.5)  # before the deadline: nothing
        assert payloads(first) == ["job"]
        second = await open_stream(app, "t")  # a connection opened since: it is live at the redelivery
        await tick(app, start + 2)
        original, again = first.messages()
        assert again.envelope == original.envelope  # the same message (same id), with a new cursor
        assert again.has_id
        assert seq(again) > seq(original)
        assert second.messages() == [again]


async def test_a_redelivery_follows_the_original_route(broker: str | None) -> None:
    """docs/protocol.md section 11: a broadcast's redelivery still excludes its excluded client, a topic message's
    reaches its subscribers only."""
    async with running_app(broker, ack_timeout=1.0, ack_retries=1) as app:
        alice = await open_stream(app, "alice")
        bob = await open_stream(app, "bob")
        carol = await open_stream(app, "carol", topics=("news.*",))
        start = time.time()
        await publish(app, "all", id="a-1", source="s", exclude="bob", require_ack=True)
        await publish(app, "news", id="n-1", source="s", topic="news.eu", require_ack=True)
        await tick(app, start + 2)
        assert payloads(alice) == ["all", "all"]
        assert payloads(bob) == []
        assert Counter(payloads(carol)) == Counter({"all": 2, "news": 2})


async def test_an_unacked_message_expires_after_ack_retries(broker: str | None) -> None:
    async with running_app(broker, ack_timeout=1.0, ack_retries=2) as app:
        t = await open_stream(app, "t")
        start = time.time()
        await publish(app, "job", id="order-1", source="s", target="t", require_ack=True)
        await tick(app, start + 2)
        await tick(app, start + 4)
        assert payloads(t) == ["job"] * 3  # two redeliveries: ack_retries + 1 deliveries in all
        assert await status(app, "order-1") == ("s", "delivered", [])
        await tick(app, start + 6)
        assert await status(app, "order-1") == ("s", "expired", [])
        await tick(app, start + 8)
        assert payloads(t) == ["job"] * 3


async def test_the_source_gets_an_ack_notice(broker: str | None) -> None:
    async with running_app(broker) as app:
        s = await open_stream(app, "s")
        await publish(app, 1, id="order-1", source="s", target="t", require_ack=True)
        assert await app.broker.ack("t", ["order-1"], admin=False) == 1
        assert await app.broker.ack("t", ["order-1"], admin=False) == 1  # a repeat sends no second notice
        await settle(app)
        [notice] = s.messages()
        assert notice.event == "ack"
        assert notice.has_id
        env = notice.envelope
        assert (env["source"], env["target"], env.get("correlationId")) == ("server", "s", "order-1")
        assert env["payload"] == {"messageId": "order-1", "clientId": "t"}
        # An offline source finds it in its mailbox.
        await publish(app, 2, id="order-2", source="u", target="t", require_ack=True)
        assert await app.broker.ack("t", ["order-2"], admin=False) == 1
        await settle(app)
        u = await open_stream(app, "u")
        assert [(f.event, f.envelope["payload"]) for f in u.messages()] == [
            ("ack", {"messageId": "order-2", "clientId": "t"})
        ]


async def test_a_require_ack_id_held_by_another_source_is_409_message_id_in_use(broker: str | None) -> None:
    async with running_app(broker) as app:
        await publish(app, 1, id="order-1", source="s1", target="t", require_ack=True)
        assert await refused(app, 2, id="order-1", source="s2", target="t", require_ack=True) == (
            409,
            "message_id_in_use",
        )
        assert await status(app, "order-1") == ("s1", "pending", [])
        assert (await publish(app, 3, id="order-1", source="s1", target="t", require_ack=True)).duplicate
        assert payloads(await open_stream(app, "t")) == [1], "the refused message was never written"


# -- mailboxes -------------------------------------------------------------------------------------------------


async def test_a_message_to_an_offline_client_is_queued_and_delivered_when_it_connects(broker: str | None) -> None:
    async with running_app(broker) as app:
        for n in (1, 2):
            accepted = await publish(app, n, target="t")
            assert (accepted.queued, accepted.delivered) == (True, 0)
        t = await open_stream(app, "t")
        assert opened(t) == (False, 2, None)
        assert payloads(t) == [1, 2]
        # The connect frame's cursor is the log head; the mailbox is re-issued after it, each with its own cursor.
        head = seq(t.frames[0])
        assert [f.has_id for f in t.messages()] == [True, True]
        assert head < seq(t.messages()[0]) < seq(t.messages()[1])
        live = await publish(app, 3, target="t")
        assert not live.queued
        assert payloads(t) == [1, 2, 3]
        assert t.messages()[-1].has_id


async def test_a_full_mailbox_drops_its_oldest(broker: str | None) -> None:
    async with running_app(broker, mailbox_size=2) as app:
        for n in range(1, 5):
            assert (await publish(app, n, target="t")).queued
        t = await open_stream(app, "t")
        assert opened(t) == (False, 2, None)
        assert payloads(t) == [3, 4]


# -- resume and its seam ---------------------------------------------------------------------------------------
# A resume past a trim by count, and past the TTL (a tick far in the future), is ``expired``: test_conformance_model.py,
# test_a_resume_across_a_trim_is_expired (both brokers).


async def test_a_resume_delivers_everything_after_the_cursor_once_in_order_then_live(broker: str | None) -> None:
    async with running_app(broker) as app:
        gone = await open_stream(app, "alice", topics=("news.*",))
        await publish(app, "before")
        cursor = gone.cursor
        await close_stream(app, gone)
        await publish(app, "m1", topic="news.eu")
        await publish(app, "m2", target="alice")  # mailboxed as well: delivered once all the same
        await publish(app, "not subscribed", topic="sport.eu")
        await publish(app, "excluded", exclude="alice")
        await publish(app, "m3")
        await publish(app, "for bob", target="bob")
        # Publishes racing the opening (on Redis they run while the stream registers): each arrives once, live.
        tasks = [
            asyncio.create_task(app.broker.publish(envelope(p, **route)))
            for p, route in (("r1", {"target": "alice"}), ("r2", {"topic": "news.us"}), ("r3", {}))
        ]
        sink = StreamSink()
        await app.handshake.open("alice", ("news.*",), cursor, sink)
        await asyncio.gather(*tasks)
        await settle(app)
        assert opened(sink) == (True, 3, None)
        got = payloads(sink)
        assert got[:3] == ["m1", "m2", "m3"]
        assert Counter(got[3:]) == Counter({"r1": 1, "r2": 1, "r3": 1})
        frames = sink.messages()
        assert all(f.has_id for f in frames)
        assert [seq(f) for f in frames] == sorted({seq(f) for f in frames}), "in log order, none twice"
        await publish(app, "live")
        assert payloads(sink)[6:] == ["live"]


async def test_a_cursor_from_the_mailbox_era_resumes_without_repeating_the_mailbox(broker: str | None) -> None:
    """A client that got its mailbox on a fresh connect holds the cursor of its last mailbox frame (each carries
    one, issue 13): resuming from it repeats none of them and misses nothing published since."""
    async with running_app(broker) as app:
        await publish(app, "m1", target="t")
        await publish(app, "m2", target="t")
        first = await open_stream(app, "t")
        assert payloads(first) == ["m1", "m2"]
        cursor = first.cursor
        await close_stream(app, first)
        await publish(app, "m3", target="t")
        await publish(app, "b1")
        again = await open_stream(app, "t", cursor)
        assert opened(again) == (True, 2, None)
        assert payloads(again) == ["m3", "b1"]
        assert all(f.has_id for f in again.messages())


async def test_mailbox_entries_at_or_below_the_resume_cursor_are_delivered_once_after_the_replay(
    broker: str | None,
) -> None:
    """docs/protocol.md section 2: on a resume, the mailbox entries the replay does not cover (at or below the
    cursor) are re-issued once, after the replay, with cursors of their own."""
    async with running_app(broker) as app:
        bob = await open_stream(app, "bob")
        await publish(app, "mail", target="t")
        await publish(app, "b1")
        cursor = bob.cursor  # after the mailbox entry
        await publish(app, "b2")
        t = await open_stream(app, "t", cursor)
        assert opened(t) == (True, 2, None)
        assert payloads(t) == ["b2", "mail"]
        assert [f.has_id for f in t.messages()] == [True, True]


async def test_an_expired_resume_still_delivers_the_mailbox(broker: str | None) -> None:
    async with running_app(broker, replay_size=2) as app:
        gone = await open_stream(app, "t")
        await publish(app, "b0")
        cursor = gone.cursor
        await close_stream(app, gone)
        await publish(app, "mail", target="t")
        for n in range(3):
            await publish(app, f"b{n + 1}")  # the log keeps 2: what followed the cursor is gone
        t = await open_stream(app, "t", cursor)
        assert opened(t) == (False, 1, EXPIRED)
        assert payloads(t) == ["mail"]
        await publish(app, "live")
        assert payloads(t) == ["mail", "live"]


# -- cursors ---------------------------------------------------------------------------------------------------
# ``<epoch>-٣``, a leading zero on the head's seq, ``+<head>``, ``<head>²`` and a cursor just ahead of the log are
# in test_conformance_model.py, test_a_cursor_the_log_never_wrote_is_unknown (both brokers).

#: Cursors no broker issued, from what the test knows: the epoch and the head's seq.
NEVER_ISSUED = {
    "leading_zeros": "{epoch}-007",
    "superscript_two": "{epoch}-²",
    "plus_sign": "{epoch}-+5",
    "negative": "{epoch}--1",
    "other_epoch": "x{epoch}-{head}",
    "garbage": "garbage",
    "empty": "",  # the route reads an empty Last-Event-ID as none (cursor_of); a broker given one must not resume
    "epoch_only": "{epoch}",
    "far_future": "{epoch}-{far}",
    "beyond_u64": "{epoch}-{huge}",
}


@pytest.mark.parametrize("case", list(NEVER_ISSUED))
async def test_a_cursor_never_issued_is_unknown_and_goes_live_from_the_head(broker: str | None, case: str) -> None:
    async with running_app(broker) as app:
        alice = await open_stream(app, "alice")
        for n in range(8):  # seqs 5 and 7 exist on the memory broker: a lenient parse would resume from them
            await publish(app, n)
        head = alice.cursor
        epoch, _, head_seq = head.rpartition("-")
        cursor = NEVER_ISSUED[case].format(epoch=epoch, head=head_seq, far=2**62, huge=2**64 + 7)
        bob = await open_stream(app, "bob", cursor)
        assert opened(bob) == (False, 0, UNKNOWN_CURSOR)
        assert bob.frames[0].cursor == head  # not resumed: it starts from the head
        assert payloads(bob) == []
        await publish(app, "live", target="bob")
        assert payloads(bob) == ["live"]


async def test_the_head_cursor_resumes_with_nothing_missed(broker: str | None) -> None:
    async with running_app(broker) as app:
        alice = await open_stream(app, "alice")
        for n in range(3):
            await publish(app, n)
        head = alice.cursor
        bob = await open_stream(app, "bob", head)
        assert opened(bob) == (True, 0, None)
        assert bob.frames[0].cursor == head
        assert payloads(bob) == []
        await publish(app, "live")
        assert payloads(bob) == ["live"]
        assert bob.cursor == alice.cursor  # the same frame, the same cursor


# -- limits ----------------------------------------------------------------------------------------------------


async def test_a_message_larger_than_queue_bytes_is_413_message_too_large(broker: str | None) -> None:
    async with running_app(broker, max_body=1024, queue_bytes=2048) as app:
        t = await open_stream(app, "t")
        big = "x" * 2100
        too_large = (413, "message_too_large")
        assert await refused(app, big, id="big", source="s", target="t", require_ack=True) == too_large
        assert await refused(app, big, id="big-eph", source="s", target="t", ephemeral=True) == too_large
        assert await refused(app, big, id="big-off", source="s", target="u") == too_large
        assert await status(app, "big") is None  # refused before anything was remembered
        assert not (await publish(app, "small", id="big", source="s", target="t")).duplicate
        assert payloads(t) == ["small"]
        assert opened(await open_stream(app, "u")) == (False, 0, None)  # nothing mailboxed


# -- ephemeral -------------------------------------------------------------------------------------------------
# ``requireAck`` with ``ephemeral`` is refused at decode (422), before any broker: test_conformance_model.py,
# test_require_ack_on_an_ephemeral_message_is_refused.


def _block_of(sink: StreamSink, message_id: str) -> list[bytes]:
    """The lines of the SSE block that carried ``message_id``."""
    [block] = [b for b in bytes(sink.data).split(b"\n\n") if f'"id":"{message_id}"'.encode() in b]
    return block.split(b"\n")


async def test_an_ephemeral_frame_carries_no_id_line(broker: str | None) -> None:
    async with running_app(broker) as app:
        alice = await open_stream(app, "alice")
        await publish(app, "p1", id="p1")
        await publish(app, "e1", id="e1", ephemeral=True)
        await publish(app, "e2", id="e2", target="alice", ephemeral=True)
        await publish(app, "p2", id="p2")
        assert payloads(alice) == ["p1", "e1", "e2", "p2"]
        assert [f.has_id for f in alice.messages()] == [True, False, False, True]
        for message_id in ("e1", "e2"):
            assert not any(line.startswith(b"id:") for line in _block_of(alice, message_id))
        assert any(line.startswith(b"id:") for line in _block_of(alice, "p1"))


async def test_an_ephemeral_message_is_never_mailboxed(broker: str | None) -> None:
    async with running_app(broker) as app:
        accepted = await publish(app, "e", target="t", ephemeral=True)
        assert (accepted.queued, accepted.delivered) == (False, 0)
        t = await open_stream(app, "t")
        assert opened(t) == (False, 0, None)
        assert payloads(t) == []


async def test_an_ephemeral_message_is_never_replayed(broker: str | None) -> None:
    async with running_app(broker) as app:
        gone = await open_stream(app, "alice")
        await publish(app, "before")
        cursor = gone.cursor
        await close_stream(app, gone)
        await publish(app, "p1")
        await publish(app, "e1", ephemeral=True)
        await publish(app, "e2", target="alice", ephemeral=True)
        await publish(app, "p2")
        alice = await open_stream(app, "alice", cursor)
        assert opened(alice) == (True, 2, None)
        assert payloads(alice) == ["p1", "p2"]
