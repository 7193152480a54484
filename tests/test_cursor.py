"""Cursors (`<epoch>-<seq>`), the Redis stream-id mapping and the `id:` lines of a replay, against a pure-Python
reference of the one cursor rule kept here as the oracle."""

from __future__ import annotations

import asyncio
import re
from collections import deque

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from sse_fast import Decoder
from sse_fast._core import Frame, encode_replay, format_cursor, parse_cursor, seq_stream_id, stream_id_seq
from sse_fast.models import new_message_id
from sse_fast.settings import Settings
from sse_fast.streams import Streams

U64 = st.integers(0, 2**64 - 1)
EPOCHS = st.from_regex(r"[A-Za-z0-9_.:@/+=-]{1,64}", fullmatch=True)
_EPOCH = re.compile(r"[A-Za-z0-9_.:@/+=-]{1,64}")
_SEQ = re.compile(r"0|[1-9][0-9]{0,19}")


def reference_parse(text: str, epoch: str) -> int | None:
    """The cursor rule in plain Python: split at the last '-', a valid epoch, a canonical ASCII seq that fits u64."""
    head, dash, seq = text.rpartition("-")
    if not dash or head != epoch or not _EPOCH.fullmatch(head) or not _SEQ.fullmatch(seq):
        return None
    value = int(seq)
    return value if value < 2**64 else None


def reference_replay(frames: list[Frame], prefix: str) -> bytes:
    """What `_write_replay` wrote before the core did it: each frame after its `id:` line."""
    return b"".join(b"id: %s%d\n%s" % (prefix.encode(), frame.seq or 0, frame.body) for frame in frames)


# -- cursors ---------------------------------------------------------------------------------------------------


@given(epoch=EPOCHS, seq=U64)
def test_a_formatted_cursor_parses_back(epoch: str, seq: int) -> None:
    text = format_cursor(epoch, seq)
    assert text == f"{epoch}-{seq}"
    assert parse_cursor(text, epoch) == seq


@given(text=st.text(max_size=100), epoch=st.sampled_from(["ep", "a-b", "ep-", "-", "x" * 64, ""]))
@example(text="ep-5", epoch="ep")
@example(text="a-b-5", epoch="a-b")
@example(text="ep--5", epoch="ep-")
@example(text="ep-\udcff", epoch="ep")  # a lone surrogate: not UTF-8, so not a cursor either
def test_parse_agrees_with_the_reference(text: str, epoch: str) -> None:
    assert parse_cursor(text, epoch) == reference_parse(text, epoch)


@given(epoch=EPOCHS, seq=st.text(st.characters(codec="utf-8"), max_size=24))
def test_parse_agrees_with_the_reference_on_any_seq_text(epoch: str, seq: str) -> None:
    assert parse_cursor(f"{epoch}-{seq}", epoch) == reference_parse(f"{epoch}-{seq}", epoch)


@pytest.mark.parametrize(
    "seq",
    [
        "007",
        "00",
        "²",  # SUPERSCRIPT TWO: str.isdigit() says yes, int() says no
        "٣",  # ARABIC-INDIC DIGIT THREE: int() reads it as 3
        "５",  # FULLWIDTH DIGIT FIVE
        "",
        "+5",
        "-5",
        " 5",
        "5 ",
        "\t5",
        "5\n",
        "1_000",
        "0x1",
        "1e3",
        "18446744073709551616",
        "9" * 21,
        "1" * 200,
    ],
)
def test_parse_refuses_what_is_not_a_canonical_seq(seq: str) -> None:
    assert parse_cursor(f"ep-{seq}", "ep") is None


@pytest.mark.parametrize(
    ("text", "epoch"),
    [("other-1", "ep"), ("ep-1", "other"), ("ep-1", "e"), ("xep-1", "ep"), ("ep-1", ""), ("-1", ""), ("", "")],
)
def test_parse_refuses_another_epoch(text: str, epoch: str) -> None:
    assert parse_cursor(text, epoch) is None


def test_parse_refuses_overlong_text() -> None:
    epoch = "e" * 64
    assert parse_cursor(f"{epoch}-{2**64 - 1}", epoch) == 2**64 - 1  # the longest cursor, 85 characters
    assert parse_cursor(f"e{epoch}-1", "e" + epoch) is None
    assert parse_cursor("ep-" + "1" * 10_000, "ep") is None


@pytest.mark.parametrize("epoch", ["", "a b", "a\nb", "é", "a,b", "e" * 65])
def test_format_refuses_an_epoch_that_could_break_a_cursor(epoch: str) -> None:
    with pytest.raises(ValueError, match="epoch"):
        format_cursor(epoch, 1)


def test_format_refuses_a_seq_outside_u64() -> None:
    for seq in (-1, 2**64):
        with pytest.raises(OverflowError):
            format_cursor("ep", seq)


# -- Redis stream ids ------------------------------------------------------------------------------------------


@given(seq=U64)
def test_a_stream_id_round_trips(seq: int) -> None:
    text = seq_stream_id(seq)
    assert text == f"{seq >> 20}-{seq & (2**20 - 1)}"
    assert stream_id_seq(text) == seq
    assert stream_id_seq(text.encode()) == seq


@given(ms=st.integers(0, 2**44 - 1), n=st.integers(0, 2**20 - 1))
def test_a_stream_id_maps_to_ms_and_n(ms: int, n: int) -> None:
    assert stream_id_seq(f"{ms}-{n}") == ms << 20 | n


@given(ms=st.integers(0, 2**44 - 1), n=st.integers(2**20, 10**8))
def test_a_stream_id_with_n_past_20_bits_is_refused(ms: int, n: int) -> None:
    assert stream_id_seq(f"{ms}-{n}") is None


@pytest.mark.parametrize(
    "text",
    ["", "5", "5-", "-5", "0-1048576", f"{2**44}-0", "01-1", "1-01", "+1-1", "1-+1", " 1-1", "1-1 ", "1-1-1", "²-1",
     "1-٣", "1.5-1", "9" * 30 + "-0"],
)  # fmt: skip
def test_what_is_not_a_stream_id_is_refused(text: str) -> None:
    assert stream_id_seq(text) is None
    assert stream_id_seq(text.encode()) is None


def test_a_stream_id_is_str_or_bytes() -> None:
    assert stream_id_seq(b"1-\xff") is None
    assert stream_id_seq("1-\udcff") is None
    with pytest.raises(TypeError):
        stream_id_seq(5)  # type: ignore[arg-type]


# -- the id: lines of a replay ---------------------------------------------------------------------------------


def frames_of(sizes: list[int], first_seq: int = 1) -> list[Frame]:
    return [Frame(b'"%s"' % (b"x" * size), event="json", seq=first_seq + i) for i, size in enumerate(sizes)]


@given(sizes=st.lists(st.integers(0, 300), max_size=30), chunk=st.integers(0, 2000), seq=U64)
def test_encode_replay_writes_the_reference_bytes_in_chunks(sizes: list[int], chunk: int, seq: int) -> None:
    frames = frames_of(sizes, first_seq=min(seq, 2**64 - 1 - len(sizes)))
    pending, done = deque(frames), 0
    while pending:
        data, taken = encode_replay(pending, id_prefix="ep-", chunk_bytes=chunk)
        assert 1 <= taken <= len(pending)
        for _ in range(taken):
            pending.popleft()
        assert data == reference_replay(frames[done : done + taken], "ep-")
        done += taken
        assert len(data) >= chunk or not pending  # a short chunk only at the end
        last = len(reference_replay(frames[done - 1 : done], "ep-"))
        assert len(data) - last < chunk or taken == 1  # it stops at the frame that reaches the chunk


def test_encode_replay_ids_are_the_frames_cursors() -> None:
    frames = frames_of([1, 2, 3], first_seq=41)
    data, taken = encode_replay(frames, id_prefix=format_cursor("ep", 0)[:-1], chunk_bytes=1 << 20)
    assert taken == 3
    assert [parse_cursor(event.id or "", "ep") for event in Decoder().feed(data)] == [41, 42, 43]


def test_encode_replay_of_nothing_is_empty() -> None:
    assert encode_replay([], id_prefix="ep-", chunk_bytes=0) == (b"", 0)


def test_encode_replay_refuses_a_bad_prefix_or_item() -> None:
    with pytest.raises(ValueError, match="id_prefix"):
        encode_replay(frames_of([1]), id_prefix="ep\n-", chunk_bytes=10)
    with pytest.raises(TypeError):
        encode_replay([*frames_of([1]), b"not a frame"], id_prefix="ep-", chunk_bytes=1 << 20)  # type: ignore[list-item]


class GatedSink:
    """Records each write; refuses more (returns False) once `open` is cleared, as a full ASGI channel does."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.open = True

    direct = None  # written through write() only

    def wrote(self, size: int) -> None:
        raise AssertionError("only a direct sink is told what the hub wrote")

    def write(self, data: bytes) -> bool:
        self.writes.append(data)
        return self.open

    def close(self) -> None:
        pass


async def test_a_replay_goes_out_with_its_cursors_in_chunks_and_waits_for_the_sink() -> None:
    settings = Settings()
    chunk = max(16384, settings.queue_bytes // 4)
    streams = Streams(settings, id_prefix="ep-", node_id="n", new_id=new_message_id)
    streams._loop = asyncio.get_running_loop()
    sink = GatedSink()
    conn = streams.open("reader", (), sink)
    frames = frames_of([10_000] * 60)
    sink.open = False
    conn.blocked = True
    streams.replay(conn, frames)
    streams.unblock(conn.id)
    await asyncio.sleep(0)  # ok-sleep: one loop turn for the writer
    assert len(sink.writes) == 1  # the sink took one chunk and asked to wait
    assert conn.blocked
    assert conn.replaying is not None
    assert len(conn.replaying) == 60 - len(Decoder().feed(sink.writes[0]))
    sink.open = True
    streams.unblock(conn.id)
    await asyncio.sleep(0)  # ok-sleep: one loop turn for the writer
    assert conn.replaying is None
    assert len(sink.writes) > 2
    assert all(len(write) >= chunk for write in sink.writes[:-1])
    assert b"".join(sink.writes) == reference_replay(frames, "ep-")
    events = Decoder().feed(b"".join(sink.writes))
    assert [parse_cursor(event.id or "", "ep") for event in events] == list(range(1, 61))
