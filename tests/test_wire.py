"""The SSE wire format: the Rust encoder and decoder, checked against the pure-Python reference."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sse_fast
from reference import wire as ref
from sse_fast import Decoder, Event, FrameError, encode_comment, encode_event, encode_json_frame, encode_retry

BOM = b"\xef\xbb\xbf"

# --- strategies ---------------------------------------------------------------------------------------------------

field_text = st.text().filter(lambda s: "\r" not in s and "\n" not in s)
ids = field_text.filter(lambda s: "\0" not in s)
retries = st.integers(min_value=0, max_value=2**64 - 1)

# Pieces that make interesting streams: field names, separators, line ends, BOMs, broken UTF-8, retry variants.
PIECES = [
    b"data",
    b"data:",
    b"data: ",
    b"event: ",
    b"event:",
    b"id: ",
    b"id",
    b"retry: ",
    b"retry:",
    b"retry",
    b"Data: ",
    b"foo: ",
    b":",
    b": comment",
    b" ",
    b"\r",
    b"\n",
    b"\r\n",
    b"\n\n",
    b"\r\r",
    b"\0",
    BOM,
    b"\xef\xbb",
    b"\xef",
    b"\xff",
    b"\xc3",
    b"\xa9",
    b"\xe2\x82",
    b"\xed\xa0\x80",
    "é🦀".encode(),
    b"x",
    b"42",
    b"007",
    b"-1",
    b"99999999999999999999999",
    "١".encode(),  # an Arabic-Indic digit: not ASCII
]
pieces = st.one_of(st.sampled_from(PIECES), st.binary(max_size=8))
# Well-formed-ish streams: lines of "<field prefix><value>" ending in CR, LF or CRLF, with blank lines.
FIELDS = [b"data: ", b"data: ", b"data:", b"data", b"event: ", b"event", b"id: ", b"id:", b"id", b"retry: ", b"retry:"]
ODD_FIELDS = [b"Data: ", b"foo: ", b": ", b"", b"retry"]
VALUES = [b"", b"x", b" ", b"\0", b"42", b"007", b"-1", b"99999999999999999999999", "١".encode(), "é🦀".encode()]
VALUES += [b"\xff", b"\xc3", b"\xa9", b"\xe2\x82", b"\xed\xa0\x80", BOM, b"\xef\xbb", b":", b"a b"]
LINE_ENDS = [b"\n", b"\r", b"\r\n"]
values = st.one_of(
    st.lists(st.one_of(st.sampled_from(VALUES), st.binary(max_size=4)), max_size=3).map(b"".join),
    st.integers(0, 2**70).map(lambda n: str(n).encode()),
)
field_names = st.one_of(st.sampled_from(FIELDS), st.sampled_from(ODD_FIELDS))
lines = st.tuples(field_names, values, st.sampled_from(LINE_ENDS)).map(b"".join)
blocks = st.tuples(st.lists(lines, min_size=1, max_size=4).map(b"".join), st.sampled_from(LINE_ENDS)).map(b"".join)
starts = st.sampled_from([b"", b"", BOM, BOM + BOM, b"\xef\xbb", b"\xef", b"\xbb\xbf"])
structured = st.tuples(starts, st.lists(blocks, max_size=6).map(b"".join), values).map(b"".join)
garbage = st.one_of(st.lists(pieces, max_size=40).map(b"".join), st.binary(max_size=200))


@st.composite
def chunked(draw: st.DrawFn, stream: st.SearchStrategy[bytes] = structured) -> list[bytes]:
    """A stream cut at random points (empty chunks included)."""
    data = draw(stream)
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


def as_tuple(event: Any) -> tuple[str, str, str | None, int | None]:
    return (event.event, event.data, event.id, event.retry)


def feed_all(decoder: Any, chunks: list[bytes]) -> list[tuple[str, str, str | None, int | None]]:
    return [as_tuple(event) for chunk in chunks for event in decoder.feed(chunk)]


def outcome(decoder: Any, chunk: bytes) -> object:
    """What one feed did: the events, or "FrameError"; plus the decoder state it left."""
    try:
        result: object = [as_tuple(event) for event in decoder.feed(chunk)]
    except FrameError:
        result = "FrameError"
    return result, decoder.last_event_id, decoder.retry


def normalise(text: str) -> str:
    return re.sub(r"\r\n|\r", "\n", text)


# --- encoder ------------------------------------------------------------------------------------------------------


def test_encode_event_writes_fields_then_data_lines() -> None:
    frame = encode_event("a\r\nb\rc\nd", event="note", id="7", retry=3000)
    assert frame == b"id: 7\nevent: note\nretry: 3000\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
    assert encode_event("") == b"data: \n\n"


def test_encode_comment_retry_and_json_frame() -> None:
    assert encode_comment() == b":\n\n"
    assert encode_comment("keepalive") == b": keepalive\n\n"
    assert encode_comment("a\r\nb") == b": a\n: b\n\n"
    assert encode_retry(1500) == b"retry: 1500\n\n"
    assert encode_json_frame(b'{"a":1}', event="json", id="c-1") == b'id: c-1\nevent: json\ndata: {"a":1}\n\n'


@pytest.mark.parametrize(
    "kwargs",
    [
        {"event": "a\nb"},
        {"event": "a\rb"},
        {"event": "x\r\ndata: injected"},
        {"id": "1\n\ndata: injected"},
        {"id": "1\r"},
        {"id": "1\0"},
    ],
)
def test_injection_attempts_raise_frame_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(FrameError):
        encode_event("x", **kwargs)
    with pytest.raises(FrameError):
        encode_json_frame(b"{}", **kwargs)


@pytest.mark.parametrize("data", [b"{\n}", b"{\r}", b'{"a":1}\r\n'])
def test_json_frame_refuses_raw_line_breaks(data: bytes) -> None:
    with pytest.raises(FrameError):
        encode_json_frame(data)


def test_frame_error_is_a_value_error_and_an_sse_fast_error() -> None:
    with pytest.raises(FrameError) as info:
        encode_event("x", id="\n")
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, sse_fast.SseFastError)
    assert FrameError is sse_fast.errors.FrameError


@given(data=st.text(), event=st.none() | field_text, id=st.none() | ids, retry=st.none() | retries)
def test_encode_then_decode_round_trips(data: str, event: str | None, id: str | None, retry: int | None) -> None:
    [decoded] = Decoder().feed(encode_event(data, event=event, id=id, retry=retry))
    assert as_tuple(decoded) == (event or "message", normalise(data), id, retry)


@given(
    data=st.text().filter(lambda s: "\r" not in s and "\n" not in s), event=st.none() | field_text, id=st.none() | ids
)
def test_json_frame_round_trips(data: str, event: str | None, id: str | None) -> None:
    [decoded] = Decoder().feed(encode_json_frame(data.encode(), event=event, id=id))
    assert as_tuple(decoded) == (event or "message", data, id, None)


@given(text=st.text())
def test_comments_decode_to_nothing(text: str) -> None:
    decoder = Decoder()
    assert decoder.feed(encode_comment(text)) == []
    assert decoder.feed(b"data: after\n\n") == [Event("after")]


@given(data=st.text(), event=st.none() | st.text(), id=st.none() | st.text(), retry=st.none() | retries)
def test_encode_event_matches_reference(data: str, event: str | None, id: str | None, retry: int | None) -> None:
    try:
        expected: object = ref.encode_event(data, event=event, id=id, retry=retry)
    except FrameError:
        expected = FrameError
    try:
        actual: object = encode_event(data, event=event, id=id, retry=retry)
    except FrameError:
        actual = FrameError
    assert actual == expected


@given(data=st.binary(), event=st.none() | st.text(), id=st.none() | st.text())
def test_encode_json_frame_matches_reference(data: bytes, event: str | None, id: str | None) -> None:
    try:
        expected: object = ref.encode_json_frame(data, event=event, id=id)
    except FrameError:
        expected = FrameError
    try:
        actual: object = encode_json_frame(data, event=event, id=id)
    except FrameError:
        actual = FrameError
    assert actual == expected


@given(text=st.text(), ms=retries)
def test_encode_comment_and_retry_match_reference(text: str, ms: int) -> None:
    assert encode_comment(text) == ref.encode_comment(text)
    assert encode_retry(ms) == ref.encode_retry(ms)


# --- decoder against the reference ---------------------------------------------------------------------------------


@settings(max_examples=500)
@given(chunks=chunked())
def test_decoder_matches_reference(chunks: list[bytes]) -> None:
    rust, python = Decoder(), ref.Decoder()
    for chunk in chunks:
        assert outcome(rust, chunk) == outcome(python, chunk)


@settings(max_examples=500)
@given(chunks=chunked(garbage))
def test_decoder_matches_reference_on_garbage(chunks: list[bytes]) -> None:
    rust, python = Decoder(), ref.Decoder()
    for chunk in chunks:
        assert outcome(rust, chunk) == outcome(python, chunk)


@settings(max_examples=300)
@given(chunks=chunked(), max_line=st.integers(1, 24), max_event=st.integers(1, 8))
def test_decoder_matches_reference_at_small_limits(chunks: list[bytes], max_line: int, max_event: int) -> None:
    rust = Decoder(max_line=max_line, max_event=max_event)
    python = ref.Decoder(max_line=max_line, max_event=max_event)
    for chunk in chunks:
        assert outcome(rust, chunk) == outcome(python, chunk)


@settings(max_examples=300)
@given(chunks=chunked(), reset_after=st.integers(0, 12))
def test_decoder_matches_reference_across_reset(chunks: list[bytes], reset_after: int) -> None:
    rust, python = Decoder(), ref.Decoder()
    for index, chunk in enumerate(chunks):
        if index == reset_after:
            rust.reset()
            python.reset()
        assert outcome(rust, chunk) == outcome(python, chunk)


@settings(max_examples=300)
@given(chunks=chunked(st.one_of(structured, garbage)))
def test_chunking_does_not_change_the_events(chunks: list[bytes]) -> None:
    stream = b"".join(chunks)
    whole = feed_all(Decoder(), [stream])
    assert feed_all(Decoder(), chunks) == whole
    assert feed_all(Decoder(), [stream[i : i + 1] for i in range(len(stream))]) == whole


@given(events=st.lists(st.tuples(st.text(), st.none() | field_text, st.none() | ids), max_size=8), data=st.data())
def test_encoded_stream_decodes_the_same_in_any_chunking(
    events: list[tuple[str, str | None, str | None]], data: st.DataObject
) -> None:
    stream = b"".join(encode_event(text, event=event, id=id) for text, event, id in events)
    chunks = data.draw(chunked(st.just(stream)))
    assert len(feed_all(Decoder(), chunks)) == len(events)
    assert feed_all(Decoder(), chunks) == feed_all(Decoder(), [stream])


# --- decoder rules --------------------------------------------------------------------------------------------------


def test_decoder_follows_the_whatwg_rules() -> None:
    stream = (
        BOM + b": comment\r\nretry: 100\rid: a\nevent: e\ndata: x\xc3\xa9\r\ndata\r\n\r"
        b"id: b\0\ndata:  y\n\nid\ndata: z\r\r"
    )
    assert Decoder().feed(stream) == [
        Event("x\u00e9\n", "e", "a", 100),
        Event(" y", "message", "a"),
        Event("z", "message", ""),
    ]


def test_crlf_bom_and_utf8_split_across_chunks() -> None:
    decoder = Decoder()
    chunks = [b"\xef", b"\xbb", b"\xbfdata: \xc3", b"\xa9\r", b"\n", b"\r", b"\n"]
    assert [event for chunk in chunks for event in decoder.feed(chunk)] == [Event("\u00e9")]


def test_last_event_id_and_retry_properties() -> None:
    decoder = Decoder()
    assert (decoder.last_event_id, decoder.retry) == ("", None)
    assert decoder.feed(b"id: 5\nretry: 250\n") == []
    # retry takes effect at once; the id at the blank line.
    assert (decoder.last_event_id, decoder.retry) == ("", 250)
    assert decoder.feed(b"\n") == []
    assert (decoder.last_event_id, decoder.retry) == ("5", 250)
    assert decoder.feed(b"data: x\n\nretry: nope\ndata: y\n\n") == [Event("x", id="5"), Event("y", id="5")]
    assert decoder.retry == 250


def test_oversized_line_raises_and_the_decoder_still_works() -> None:
    decoder = Decoder(max_line=16)
    decoder.feed(b"id: 1\nretry: 7\ndata: ok\n\n")
    with pytest.raises(FrameError):
        decoder.feed(b"data: " + b"x" * 11)  # refused before its line end arrives
    assert (decoder.last_event_id, decoder.retry) == ("1", 7)
    assert decoder.feed(b"data: again\n\n") == [Event("again", id="1")]


def test_oversized_event_raises_and_the_decoder_still_works() -> None:
    decoder = Decoder(max_event=8)
    assert decoder.feed(b"data: 1234\ndata: 567\n\n") == [Event("1234\n567")]
    with pytest.raises(FrameError):
        decoder.feed(b"data: 1234\ndata: 5678\n")
    assert decoder.feed(b"data: small\n\n") == [Event("small")]


@pytest.mark.parametrize("kwargs", [{"max_line": 0}, {"max_event": 0}])
def test_decoder_refuses_zero_limits(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="positive"):
        Decoder(**kwargs)


def test_reset_forgets_input_but_keeps_id_and_retry() -> None:
    decoder = Decoder()
    decoder.feed(b"id: 1\ndata: a\n\nid: 2\nretry: 9\ndata: partial")
    decoder.reset()
    assert (decoder.last_event_id, decoder.retry) == ("1", 9)
    assert decoder.feed(BOM + b"data: b\n\n") == [Event("b", id="1")]


def test_large_chunks_decode_with_the_gil_released() -> None:
    stream = b"".join(encode_event(f"message {i}", id=str(i)) for i in range(20_000))
    assert len(stream) > 64 * 1024
    events = Decoder().feed(stream)
    assert len(events) == 20_000
    assert events[-1] == Event("message 19999", id="19999")


# --- Event ----------------------------------------------------------------------------------------------------------


def test_event_defaults_equality_hash_and_repr() -> None:
    event = Event("x")
    assert as_tuple(event) == ("message", "x", None, None)
    assert Event("x", "t", "1", 5) == Event(data="x", event="t", id="1", retry=5)
    assert Event("x") != Event("x", id="")
    assert Event("x") != ("message", "x", None, None)
    assert hash(Event("x", "t", "1", 5)) == hash(Event("x", "t", "1", 5))
    assert len({Event("x"), Event("x"), Event("y")}) == 2
    assert repr(Event("a'b", id="1")) == "Event(data=\"a'b\", event='message', id='1', retry=None)"


def test_event_is_frozen() -> None:
    event = Event("x")
    with pytest.raises(AttributeError):
        event.data = "y"
