"""A small pure-Python SSE encoder and decoder with the semantics of the Rust core's ``wire`` module.

It is the oracle of the property tests (``tests/test_wire.py``) and the baseline of ``bench/test_bench_wire.py``,
so it favours being obviously right over being fast. The decoder follows the WHATWG HTML "event stream
interpretation"; the choices the standard leaves open are the core's:

- the last event id buffer survives ``reset()`` (it is set back to the last event id string, as browsers do);
- ``retry`` past 2**64 - 1 is ignored;
- ``max_event`` bounds the event's data in input bytes, the LFs between its lines included;
- after a ``FrameError`` the decoder is reset, and the events of the failing chunk are lost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sse_fast.errors import FrameError

__all__ = ["Decoder", "Event", "encode_comment", "encode_event", "encode_json_frame", "encode_retry"]

_BOM = b"\xef\xbb\xbf"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LINE_END = re.compile(rb"[\r\n]")
_MAX_RETRY = 2**64 - 1


def encode_event(data: str, *, event: str | None = None, id: str | None = None, retry: int | None = None) -> bytes:
    """Frame one event: ``id``, ``event``, ``retry``, then one ``data`` line per line of ``data``."""
    _check_event(event)
    _check_id(id)
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    if retry is not None:
        lines.append(f"retry: {retry}")
    lines.extend(f"data: {line}" for line in _LINE_BREAK.split(data))
    return ("\n".join(lines) + "\n\n").encode()


def encode_comment(text: str = "") -> bytes:
    """Frame a comment block: ``: line`` per line of ``text`` (a bare ``:`` for an empty line)."""
    lines = [f": {line}" if line else ":" for line in _LINE_BREAK.split(text)]
    return ("\n".join(lines) + "\n\n").encode()


def encode_retry(ms: int) -> bytes:
    """Frame a block that only sets the reconnection time."""
    return f"retry: {ms}\n\n".encode()


def encode_json_frame(data: bytes, *, event: str | None = None, id: str | None = None) -> bytes:
    """Frame single-line JSON bytes as they are."""
    _check_event(event)
    _check_id(id)
    if b"\r" in data or b"\n" in data:
        raise FrameError("JSON frame data must be a single line (no raw CR or LF)")
    head = (f"id: {id}\n" if id is not None else "") + (f"event: {event}\n" if event is not None else "")
    return head.encode() + b"data: " + data + b"\n\n"


def _check_event(event: str | None) -> None:
    if event is not None and ("\r" in event or "\n" in event):
        raise FrameError("event type must not contain CR or LF")


def _check_id(id: str | None) -> None:
    if id is not None and ("\r" in id or "\n" in id or "\0" in id):
        raise FrameError("event id must not contain CR, LF or NUL")


def _parse_retry(value: bytes) -> int | None:
    """ASCII digits only (``bytes.isdigit`` is ASCII-only), and at most 2**64 - 1."""
    if not value.isdigit():
        return None
    digits = value.lstrip(b"0") or b"0"  # int() refuses more than 4300 digits; leading zeros are fine
    return int(digits) if len(digits) <= 20 and int(digits) <= _MAX_RETRY else None


@dataclass(frozen=True)
class Event:
    """One dispatched event."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class Decoder:
    """Incremental SSE stream decoder: feed it bytes cut anywhere, get the events they complete."""

    def __init__(self, *, max_line: int = 1048576, max_event: int = 4194304) -> None:
        if max_line <= 0 or max_event <= 0:
            raise ValueError("max_line and max_event must be positive")
        self.max_line = max_line
        self.max_event = max_event
        self._last_event_id: str | None = None
        self.retry: int | None = None
        self.reset()

    @property
    def last_event_id(self) -> str:
        """The id in effect at the last blank line ("" before any)."""
        return self._last_event_id or ""

    def reset(self) -> None:
        """Forget buffered input and the BOM state; keep the last event id and retry."""
        self._line = bytearray()
        self._data: list[bytes] = []
        self._data_size = 0
        self._event_type = b""
        self._id_buffer = self._last_event_id
        self._block_retry: int | None = None
        self._pending_cr = False
        self._bom_pending = b""
        self._at_start = True

    def feed(self, chunk: bytes) -> list[Event]:
        """Decode one chunk and return the events it dispatched."""
        try:
            return self._feed(chunk)
        except FrameError:
            self.reset()
            raise

    def _feed(self, chunk: bytes) -> list[Event]:
        chunk = self._strip_bom(chunk)
        if self._pending_cr and chunk:
            self._pending_cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        events: list[Event] = []
        pos = 0
        while match := _LINE_END.search(chunk, pos):
            self._buffer(chunk[pos : match.start()])
            line, self._line = bytes(self._line), bytearray()
            pos = match.end()
            if chunk[match.start()] == 0x0D:  # CR: an LF right after it belongs to it, even in the next chunk
                if pos == len(chunk):
                    self._pending_cr = True
                elif chunk[pos] == 0x0A:
                    pos += 1
            event = self._process_line(line)
            if event is not None:
                events.append(event)
        self._buffer(chunk[pos:])
        return events

    def _strip_bom(self, chunk: bytes) -> bytes:
        if not self._at_start:
            return chunk
        held = self._bom_pending + chunk
        if len(held) < len(_BOM) and _BOM.startswith(held):
            self._bom_pending = held  # could still become a BOM: wait for more bytes
            return b""
        self._at_start = False
        self._bom_pending = b""
        return held.removeprefix(_BOM)

    def _buffer(self, data: bytes) -> None:
        if len(self._line) + len(data) > self.max_line:
            raise FrameError(f"SSE line longer than {self.max_line} bytes")
        self._line += data

    def _process_line(self, line: bytes) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(b":"):
            return None
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            if self._data_size + len(value) > self.max_event:
                raise FrameError(f"SSE event data larger than {self.max_event} bytes")
            self._data.append(value)
            self._data_size += len(value) + 1
        elif name == b"event":
            self._event_type = value
        elif name == b"id" and b"\0" not in value:
            self._id_buffer = value.decode("utf-8", "replace")
        elif name == b"retry" and (retry := _parse_retry(value)) is not None:
            self.retry = self._block_retry = retry
        return None

    def _dispatch(self) -> Event | None:
        self._last_event_id = self._id_buffer
        data, event_type, retry = self._data, self._event_type, self._block_retry
        self._data, self._data_size, self._event_type, self._block_retry = [], 0, b"", None
        if not data:
            return None
        return Event(
            data=b"\n".join(data).decode("utf-8", "replace"),
            event=event_type.decode("utf-8", "replace") or "message",
            id=self._last_event_id,
            retry=retry,
        )
