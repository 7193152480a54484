"""The replay log: `since` against the model in tests/reference/hub.py, gaps, TTL and the count and byte bounds."""

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.hub import EXPIRED, UNKNOWN_CURSOR, ReplayModel, Route, frame_size
from sse_fast._core import Frame, ReplayLog, ReplayResult

CLIENTS = st.sampled_from(["alice", "bob", "carol"])
TOPICS = st.sampled_from(["a", "a.b", "b.c"])
PATTERNS = st.lists(st.sampled_from(["a", "a.*", "a.>", "b.*", ">", "*"]), max_size=3)
ROUTES = st.one_of(
    st.builds(lambda client: {"target": client}, CLIENTS),
    st.builds(lambda topic: {"topic": topic}, TOPICS),
    st.builds(lambda client: {} if client is None else {"exclude": client}, st.one_of(st.none(), CLIENTS)),
)
APPEND = st.tuples(st.just("append"), st.binary(max_size=30).map(bytes.hex), ROUTES)
SINCE = st.tuples(st.just("since"), st.integers(-2, 30), CLIENTS, PATTERNS)
EXPIRE = st.tuples(st.just("expire"))
OPERATIONS = st.lists(st.tuples(st.integers(0, 20), st.one_of(APPEND, APPEND, SINCE, EXPIRE)), max_size=40)


def new_log(max_frames: int = 100, max_bytes: int = 1 << 20, ttl_ms: int = 1000) -> ReplayLog:
    return ReplayLog(epoch="ep7", max_frames=max_frames, max_bytes=max_bytes, ttl_ms=ttl_ms)


def cursor_of(log: ReplayLog, n: int) -> str:
    """A cursor for seq ``n``, or for the negative ``n``: one of another epoch, or not a cursor at all."""
    return {-1: "other-1", -2: "garbage"}.get(n) or log.cursor(n)


@settings(max_examples=300)
@given(
    max_frames=st.integers(1, 6),
    max_bytes=st.integers(20, 200),
    ttl_ms=st.integers(1, 60),
    operations=OPERATIONS,
)
def test_since_agrees_with_the_model(
    max_frames: int, max_bytes: int, ttl_ms: int, operations: list[tuple[int, tuple[Any, ...]]]
) -> None:
    log = new_log(max_frames, max_bytes, ttl_ms)
    model = ReplayModel("ep7", max_frames, max_bytes, ttl_ms)
    now = 0
    for step, operation in operations:
        now += step
        match operation:
            case ("append", text, route):
                data = f'"{text}"'.encode()
                frame = log.append(data, event="json", now_ms=now, **route)
                assert frame.seq == model.append(frame_size(data, "json"), Route.of(**route), now)
                assert len(frame) == frame_size(data, "json")
            case ("since", n, client, patterns):
                result = log.since(cursor_of(log, n), client_id=client, topics=patterns, now_ms=now)
                expected = model.since(cursor_of(log, n), client, patterns, now)
                assert (result.gap, [f.seq for f in result.frames]) == (
                    (expected, []) if isinstance(expected, str) else (None, expected)
                )
            case _:
                assert log.expire(now) == model.expire(now)
        assert (log.head, len(log), log.nbytes) == (model.head, len(model.entries), model.nbytes)
        assert log.counters() == model.all_counters()


def test_a_new_log_starts_at_zero_and_replays_nothing_from_its_head() -> None:
    log = new_log()
    assert (log.epoch, log.head, len(log), log.nbytes) == ("ep7", 0, 0, 0)
    result = log.since("ep7-0", client_id="a", topics=[], now_ms=0)
    assert isinstance(result, ReplayResult)
    assert (result.frames, result.gap) == ([], None)


def test_append_returns_the_resumable_frame() -> None:
    log = new_log()
    frame = log.append(b'{"n":1}', event="json", priority=2, topic="a.b", now_ms=5)
    assert isinstance(frame, Frame)
    assert (frame.seq, frame.priority, frame.event, frame.body) == (1, 2, "json", b'event: json\ndata: {"n":1}\n\n')
    assert log.head == 1


def test_replay_filters_by_route_oldest_first() -> None:
    log = new_log()
    log.append(b"1", event="json", now_ms=0)
    log.append(b"2", event="json", target="bob", now_ms=0)
    log.append(b"3", event="json", topic="news.eu", now_ms=0)
    log.append(b"4", event="json", exclude="alice", now_ms=0)
    alice = log.since("ep7-0", client_id="alice", topics=["news.>"], now_ms=0)
    bob = log.since("ep7-1", client_id="bob", topics=[], now_ms=0)
    assert [f.seq for f in alice.frames] == [1, 3]
    assert [f.seq for f in bob.frames] == [2, 4]


@pytest.mark.parametrize("cursor", ["ep7-5", "ep8-1", "ep7", "ep7-", "ep7-01", "ep7--1", "ep7-1.0", "", "ep7-１"])
def test_cursors_never_issued_are_unknown(cursor: str) -> None:
    log = new_log()
    for _ in range(4):
        log.append(b"{}", event="json", now_ms=0)
    result = log.since(cursor, client_id="a", topics=[], now_ms=0)
    assert (result.gap, result.frames) == (UNKNOWN_CURSOR, [])


def test_cursor_and_parse_round_trip() -> None:
    log = ReplayLog(epoch="a-b", max_frames=1, max_bytes=100, ttl_ms=1)
    assert log.cursor(42) == "a-b-42"
    assert log.parse("a-b-42") == 42
    assert log.parse("a-42") is None
    assert log.parse("a-b-042") is None


def test_count_bound_evicts_the_oldest_and_older_cursors_are_expired() -> None:
    log = new_log(max_frames=3)
    for _ in range(5):
        log.append(b"{}", event="json", now_ms=0)
    assert len(log) == 3
    assert log.since("ep7-1", client_id="a", topics=[], now_ms=0).gap == EXPIRED
    assert [f.seq for f in log.since("ep7-2", client_id="a", topics=[], now_ms=0).frames] == [3, 4, 5]
    assert log.counters() == {"appended": 5, "evicted": 2, "expired": 0, "frames": 3, "bytes": 66}


def test_byte_bound_evicts_and_an_oversized_frame_is_not_kept() -> None:
    log = new_log(max_bytes=50)
    log.append(b"{}", event="json", now_ms=0)
    log.append(b"{}", event="json", now_ms=0)
    log.append(b"{}", event="json", now_ms=0)
    assert (len(log), log.nbytes) == (2, 44)
    log.append(b"x" * 100, event="json", now_ms=0)
    assert (len(log), log.nbytes, log.head) == (0, 0, 4)
    assert log.since("ep7-3", client_id="a", topics=[], now_ms=0).gap == EXPIRED
    assert log.since("ep7-4", client_id="a", topics=[], now_ms=0).gap is None


def test_ttl_expires_by_age() -> None:
    log = new_log(ttl_ms=100)
    log.append(b"{}", event="json", now_ms=0)
    log.append(b"{}", event="json", now_ms=50)
    assert log.expire(100) == 0  # exactly the TTL old: still kept
    assert [f.seq for f in log.since("ep7-0", client_id="a", topics=[], now_ms=100).frames] == [1, 2]
    assert log.since("ep7-0", client_id="a", topics=[], now_ms=101).gap == EXPIRED
    assert [f.seq for f in log.since("ep7-1", client_id="a", topics=[], now_ms=101).frames] == [2]
    assert log.expire(1000) == 1
    assert log.counters()["expired"] == 2
    assert log.since("ep7-1", client_id="a", topics=[], now_ms=1000).gap == EXPIRED
    assert log.since("ep7-2", client_id="a", topics=[], now_ms=1000).gap is None


@pytest.mark.parametrize("route", [{"target": "a", "topic": "t"}, {"topic": "a.*"}, {"target": "a", "exclude": "b"}])
def test_bad_routes_are_refused(route: dict[str, str]) -> None:
    log = new_log()
    with pytest.raises(ValueError, match=r"topic|exclude"):
        log.append(b"{}", event="json", now_ms=0, **route)
    assert log.head == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epoch": "", "max_frames": 1, "max_bytes": 1, "ttl_ms": 1},
        {"epoch": "a\nid: b", "max_frames": 1, "max_bytes": 1, "ttl_ms": 1},
        {"epoch": "a", "max_frames": 0, "max_bytes": 1, "ttl_ms": 1},
        {"epoch": "a", "max_frames": 1, "max_bytes": 1, "ttl_ms": 0},
    ],
)
def test_bad_construction_is_a_value_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must"):
        ReplayLog(**kwargs)  # type: ignore[arg-type]


def test_a_bad_frame_takes_no_seq() -> None:
    log = new_log()
    with pytest.raises(ValueError, match="single line"):
        log.append(b"a\nb", event="json", now_ms=0)
    assert log.head == 0
