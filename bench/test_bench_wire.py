"""The wire format: the Rust encoder and decoder against the pure-Python reference, on 1,000 typical envelopes.

Each case checks its output before its time counts. Run with ``make bench`` (release build only).
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import sse_fast

# The reference lives with the tests (tests/reference), whose conftest puts tests/ on sys.path; bench/ does the same.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
reference = importlib.import_module("reference.wire")

N = 1_000
CHUNK = 4 * 1024
CONTENDERS = {"rust": sse_fast, "python": reference}


def _envelope(i: int) -> dict[str, Any]:
    return {
        "id": f"msg-{i:06d}",
        "type": "json",
        "priority": 1,
        "timestamp": 1_732_530_000_000 + i,
        "source": "server",
        "payload": {"n": i, "text": "hello"},
    }


ENVELOPES = [json.dumps(_envelope(i), separators=(",", ":")) for i in range(N)]
ENVELOPE_BYTES = [text.encode() for text in ENVELOPES]
IDS = [f"e1-{i}" for i in range(N)]
STREAM = b"".join(f"id: {id}\nevent: json\ndata: {text}\n\n".encode() for id, text in zip(IDS, ENVELOPES, strict=True))
CHUNKS = [STREAM[start : start + CHUNK] for start in range(0, len(STREAM), CHUNK)]


def _check_and_run(benchmark: Any, run: Callable[[], Any], check: Callable[[Any], None]) -> None:
    check(run())
    check(benchmark(run))


def _check_stream(frames: list[bytes]) -> None:
    assert b"".join(frames) == STREAM


@pytest.mark.benchmark(group="wire-encode-json")
@pytest.mark.parametrize("impl", CONTENDERS.values(), ids=CONTENDERS.keys())
def test_encode_json_frame(benchmark: Any, impl: ModuleType) -> None:
    encode = impl.encode_json_frame

    def run() -> list[bytes]:
        return [encode(data, event="json", id=id) for data, id in zip(ENVELOPE_BYTES, IDS, strict=True)]

    _check_and_run(benchmark, run, _check_stream)


@pytest.mark.benchmark(group="wire-encode-event")
@pytest.mark.parametrize("impl", CONTENDERS.values(), ids=CONTENDERS.keys())
def test_encode_event(benchmark: Any, impl: ModuleType) -> None:
    encode = impl.encode_event

    def run() -> list[bytes]:
        return [encode(text, event="json", id=id) for text, id in zip(ENVELOPES, IDS, strict=True)]

    _check_and_run(benchmark, run, _check_stream)


def _check_events(events: list[Any]) -> None:
    assert len(events) == N
    for event, text, id in ((events[0], ENVELOPES[0], IDS[0]), (events[-1], ENVELOPES[-1], IDS[-1])):
        assert (event.event, event.data, event.id, event.retry) == ("json", text, id, None)
    assert [event.data for event in events] == ENVELOPES


@pytest.mark.benchmark(group="wire-decode")
@pytest.mark.parametrize("impl", CONTENDERS.values(), ids=CONTENDERS.keys())
def test_decode_4k_chunks(benchmark: Any, impl: ModuleType) -> None:
    def run() -> list[Any]:
        decoder = impl.Decoder()
        return [event for chunk in CHUNKS for event in decoder.feed(chunk)]

    _check_and_run(benchmark, run, _check_events)
