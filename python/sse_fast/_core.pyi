"""The compiled core of sse-fast (Rust, built by maturin): wire format, queues, fan-out hub, replay log, cursors.

Everything public here is re-exported from :mod:`sse_fast`; import it from there. Errors raised by this module
are the classes of :mod:`sse_fast.errors` (``FrameError`` and friends), never a bare ``RuntimeError``.
"""

from collections.abc import Iterable, Sequence
from typing import Any, Final, Generic, Literal, TypeVar, final

_T = TypeVar("_T")

__all__ = [
    "CRITICAL",
    "HIGH",
    "LOW",
    "NORMAL",
    "Decoder",
    "Delivery",
    "Event",
    "Frame",
    "FrameQueue",
    "Hub",
    "PriorityQueue",
    "PushResult",
    "ReplayLog",
    "ReplayResult",
    "__version__",
    "build_profile",
    "dead_peers",
    "encode_comment",
    "encode_event",
    "encode_json_frame",
    "encode_replay",
    "encode_retry",
    "format_cursor",
    "parse_cursor",
    "route_admits",
    "seq_stream_id",
    "stream_id_seq",
    "topic_matches",
    "validate_topic",
]

__version__: Final[str]
#: ``"release"`` or ``"debug"``: how the extension was compiled. Benchmarks refuse a debug build.
build_profile: Final[str]

#: Priority levels, lowest first. ``LOW`` 0, ``NORMAL`` 1, ``HIGH`` 2, ``CRITICAL`` 3.
LOW: Final[int]
NORMAL: Final[int]
HIGH: Final[int]
CRITICAL: Final[int]

# ---------------------------------------------------------------------------------------------------------------
# Wire format
# ---------------------------------------------------------------------------------------------------------------

def encode_event(data: str, *, event: str | None = None, id: str | None = None, retry: int | None = None) -> bytes:
    """Frame one SSE event.

    ``data`` may span several lines (CR, LF or CRLF); each becomes its own ``data:`` line, written with LF.
    ``event`` or ``id`` containing CR or LF, or ``id`` containing NUL, raise :class:`sse_fast.FrameError`,
    so no caller can inject a field or a frame. ``retry`` is written as ``retry: <ms>``.
    """

def encode_comment(text: str = "") -> bytes:
    """Frame a comment block (``: text``), one comment line per line of ``text``, ending with a blank line."""

def encode_retry(ms: int) -> bytes:
    """Frame a block that only sets the reconnection time: ``retry: <ms>`` and a blank line."""

def encode_json_frame(data: bytes, *, event: str | None = None, id: str | None = None) -> bytes:
    """Frame already-serialised single-line JSON without decoding it.

    ``data`` must not contain CR or LF (serialisers such as msgspec and orjson never emit them outside
    strings, where they are escaped); a raw line break raises :class:`sse_fast.FrameError`.
    """

@final
class Event:
    """One dispatched event, as the WHATWG "event stream interpretation" defines it."""

    event: str
    data: str
    id: str | None
    retry: int | None
    def __new__(cls, data: str, event: str = "message", id: str | None = None, retry: int | None = None) -> Event: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class Decoder:
    """Incremental SSE stream decoder.

    ``feed`` accepts bytes in chunks of any size (a CRLF or a UTF-8 sequence may be split between two chunks) and
    returns the events dispatched by them. A line longer than ``max_line`` bytes or an event whose data grows past
    ``max_event`` bytes raises :class:`sse_fast.FrameError` instead of growing memory; the decoder is then reset.
    """

    def __new__(cls, *, max_line: int = 1048576, max_event: int = 4194304) -> Decoder: ...
    def feed(self, chunk: bytes) -> list[Event]: ...
    def reset(self) -> None:
        """Forget buffered input (for a new connection); keeps ``last_event_id`` and ``retry`` as the spec asks."""
    @property
    def last_event_id(self) -> str:
        """The last event id set by the stream ("" before any), kept across events and resets."""
    @property
    def retry(self) -> int | None:
        """The reconnection time in effect (the last valid ``retry`` field), or None."""

# ---------------------------------------------------------------------------------------------------------------
# Topics
# ---------------------------------------------------------------------------------------------------------------

def validate_topic(topic: str, *, pattern: bool = False) -> None:
    """Raise :class:`sse_fast.TopicError` unless ``topic`` is a valid topic (or, with ``pattern``, a pattern).

    Topics are ``.``-separated non-empty segments of ``[A-Za-z0-9_:/-]``, 128 characters at most. In a pattern a
    segment may be ``*`` (exactly one segment) and the last segment may be ``>`` (one or more segments).
    """

def topic_matches(pattern: str, topic: str) -> bool:
    """Whether the concrete ``topic`` matches ``pattern`` (NATS-style ``*`` and trailing ``>``)."""

# ---------------------------------------------------------------------------------------------------------------
# Priority queues
# ---------------------------------------------------------------------------------------------------------------

@final
class PushResult(Generic[_T]):
    """What happened to one push.

    ``outcome`` is ``"accepted"`` (queued; ``handle`` identifies it), ``"overflow"`` (a resumable item did not fit
    and nothing evictable made room: the caller must act), or ``"dropped"`` (an ephemeral item did not fit and was
    discarded). ``evicted`` lists the ephemeral items that made room for an accepted one.
    """

    @property
    def outcome(self) -> Literal["accepted", "overflow", "dropped"]: ...
    @property
    def handle(self) -> int: ...
    @property
    def evicted(self) -> list[_T]: ...

@final
class PriorityQueue(Generic[_T]):
    """A bounded four-level priority queue of Python objects: higher level first, FIFO within a level.

    Bounded by item count and by the sum of the sizes given on push. When full, a push evicts the oldest ephemeral
    items of the lowest levels at or below its own until it fits; a resumable item is never evicted: a push that
    cannot fit reports ``"overflow"`` (resumable) or ``"dropped"`` (ephemeral) and changes nothing.
    """

    def __new__(cls, *, max_items: int, max_bytes: int = 9223372036854775807) -> PriorityQueue[_T]: ...
    def push(self, item: _T, priority: int = 1, *, size: int = 1, resumable: bool = False) -> PushResult[_T]: ...
    def pop(self, *, aging_ms: int | None = None) -> _T | None:
        """Pop the next item, or None when empty.

        With ``aging_ms``, an item's effective level rises by one for every ``aging_ms`` it has waited (capped at
        CRITICAL), so that low-priority work is never starved; ties go to the item that has waited longest.
        """
    def peek(self) -> _T | None: ...
    def remove(self, handle: int) -> _T | None:
        """Remove the queued item with this handle; None if it is no longer queued."""
    def clear(self) -> list[_T]: ...
    def __len__(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def max_items(self) -> int: ...
    @property
    def max_bytes(self) -> int: ...
    def depths(self) -> list[int]:
        """Items queued per level, LOW first."""
    def counters(self) -> dict[str, int]:
        """``pushed``, ``popped``, ``evicted``, ``overflowed`` (overflow and dropped pushes), ``removed``."""

# ---------------------------------------------------------------------------------------------------------------
# Frames, the per-connection frame queue, the fan-out hub and the replay log
# ---------------------------------------------------------------------------------------------------------------

@final
class Frame:
    """One framed message: ``event: <event>`` and ``data: <json>`` lines, built once, shared by every recipient.

    ``seq`` is the replay-log position of a resumable frame (None for an ephemeral one); the ``id:`` line is not
    part of the frame: each connection's queue writes it when the frame is its low-water mark.
    """

    def __new__(cls, data: bytes, *, event: str, priority: int = 1, seq: int | None = None) -> Frame: ...
    @property
    def seq(self) -> int | None: ...
    @property
    def priority(self) -> int: ...
    @property
    def event(self) -> str: ...
    @property
    def body(self) -> bytes:
        """The frame's bytes without an ``id:`` line (a copy; for tests and debugging)."""
    def __len__(self) -> int: ...

@final
class FrameQueue:
    """A per-connection outbound queue of frames (the hub owns one per connection; exposed for tests).

    ``drain`` pops frames in priority order into one buffer. A resumable frame carries an ``id: <prefix><seq>`` line
    only when it advances the connection's low-water mark: the highest seq such that every resumable frame at or
    below it has been written. A frame that overtook lower-priority resumable frames is written without ``id:``.
    """

    def __new__(cls, *, max_frames: int, max_bytes: int, id_prefix: str = "") -> FrameQueue: ...
    def push(self, frame: Frame) -> Literal["accepted", "overflow", "dropped", "duplicate"]:
        """Queue a frame; ``"duplicate"``: a resumable frame at or below ``set_watermark``'s seq, not queued."""
    def drain(self, max_bytes: int = 9223372036854775807) -> bytes: ...
    @property
    def watermark(self) -> int:
        """The last seq written as an ``id:`` (0 before any)."""
    def set_watermark(self, seq: int) -> None:
        """Start from this low-water mark (after a replay written outside the queue)."""
    def __len__(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def counters(self) -> dict[str, int]: ...

@final
class Delivery:
    """The result of :meth:`Hub.publish`.

    ``delivered``: connections whose queue accepted the frame. ``woken``: connection ids whose queue went from empty
    to non-empty and have no attached writer (the writers to wake; see :meth:`Hub.attach` for ``ready``).
    ``overflowed``: connection ids that could not take a resumable frame (close them as slow consumers).
    ``dropped``: connections where an ephemeral frame was dropped or evicted others.
    """

    @property
    def delivered(self) -> int: ...
    @property
    def woken(self) -> list[int]: ...
    @property
    def ready(self) -> int:
        """Recipients that went from empty to non-empty and have an attached writer: :meth:`Hub.flush` writes them."""
    @property
    def overflowed(self) -> list[int]: ...
    @property
    def dropped(self) -> int: ...

@final
class Hub:
    """The fan-out registry: connection id -> (client id, topic patterns, frame queue), indexed by client and topic.

    Routing costs O(recipients). ``publish`` pushes the same shared frame into every recipient's queue; large
    publishes release the GIL. Removing a connection frees everything it held.
    """

    def __new__(cls, *, queue_frames: int, queue_bytes: int, id_prefix: str) -> Hub: ...
    def add(self, client_id: str, topics: Sequence[str] = ()) -> int:
        """Register a connection; returns its id. Raises :class:`sse_fast.TopicError` for an invalid pattern."""
    def remove(self, conn: int) -> bool: ...
    def set_topics(self, conn: int, topics: Sequence[str]) -> bool:
        """Replace a connection's patterns (live topic changes); False for an unknown connection. Raises
        :class:`sse_fast.TopicError` for an invalid pattern, and then changes nothing."""
    def publish(
        self,
        frame: Frame,
        *,
        target: str | None = None,
        topic: str | None = None,
        exclude: str | None = None,
    ) -> Delivery:
        """Route ``frame``: to ``target``'s connections, to subscribers of ``topic``, or to all but ``exclude``."""
    def push(self, conn: int, frame: Frame) -> Delivery:
        """Push a frame to one connection (system frames, redeliveries)."""
    def push_all(self, data: bytes) -> Delivery:
        """Queue raw bytes (a keepalive comment) as an ephemeral LOW item on every connection (only ``woken`` and
        ``ready`` are set)."""
    def drain(self, conn: int, max_bytes: int = 9223372036854775807) -> bytes:
        """Pop what is pending for ``conn`` into one buffer (b"" when nothing is, or the connection is unknown)."""
    def attach(self, conn: int, transport: Any) -> bool:
        """Let :meth:`flush` write ``conn`` itself from now on, through ``transport.send_bytes(data)``, which must
        queue the bytes and return an already-finished awaitable (granian's RSGI transport): stepping it raises
        ``StopIteration`` when they were taken, anything else when the stream is closed. The connection's wakes then
        count in :attr:`Delivery.ready` instead of :attr:`Delivery.woken`. False for an unknown connection; removing
        the connection detaches it."""
    def detach(self, conn: int) -> int | None:
        """Stop writing ``conn`` in :meth:`flush`; the bytes written since its last report (None: not attached)."""
    def attached(self, conn: int) -> bool: ...
    def written_at(self, conn: int) -> float | None:
        """The ``now`` of the last :meth:`flush` that wrote ``conn`` (None: not attached; 0.0: not written yet)."""
    report_bytes: int
    """:meth:`flush` reports an attached connection once this many bytes were written to it since its last report
    (0, the default: never)."""
    @property
    def pending(self) -> int:
        """Attached connections with frames waiting for :meth:`flush`."""
    def flush(self, now: float) -> tuple[list[int], list[tuple[int, int]]] | None:
        """Drain every attached connection that has frames into one ``bytes`` and hand it to its transport (the
        connections that get the same bytes share one object). None when every write went through; else
        ``(closed, reports)``: the connections whose stream was found closed (now detached), and
        ``(conn, bytes written since the last report)`` for those past :attr:`report_bytes`."""
    def set_watermark(self, conn: int, seq: int) -> None: ...
    def watermark(self, conn: int) -> int: ...
    def connections_of(self, client_id: str) -> list[int]:
        """The client's connection ids, oldest first."""
    def client_of(self, conn: int) -> str | None: ...
    def topics_of(self, conn: int) -> list[str]: ...
    def queue_stats(self, conn: int) -> tuple[int, int, int]:
        """``(queued_frames, queued_bytes, dropped_frames)`` of one connection."""
    def __len__(self) -> int: ...
    def __contains__(self, conn: object, /) -> bool: ...
    def counters(self) -> dict[str, int]:
        """``connections``, ``clients``, ``published``, ``delivered``, ``evicted``, ``overflowed``,
        ``queued_frames``, ``queued_bytes``."""

def dead_peers(fds: Sequence[int], dead_after_ms: int) -> list[int]:
    """The positions in ``fds`` of the TCP sockets whose peer is dead: the kernel retransmitted, or sent more than
    one zero-window probe, without any acknowledgement for more than ``dead_after_ms`` (``TCP_INFO``; a peer that
    only stopped reading still answers probes). A socket that cannot be read (closed, not TCP, not Linux) reads as
    alive. One call for every stream of a sweep, without the GIL."""

def route_admits(
    client_id: str,
    patterns: Sequence[str],
    *,
    target: str | None = None,
    topic: str | None = None,
    exclude: str | None = None,
) -> bool:
    """Whether a subscriber with this client id and these patterns receives what is sent on the route named by
    ``target``, ``topic`` and ``exclude``: the routing rule of :meth:`Hub.publish` and :meth:`ReplayLog.since`, for
    a broker that keeps its log elsewhere.

    ``target`` admits exactly that client id; ``topic``, a subscriber with a pattern that matches it
    (:func:`topic_matches`); neither, every client id but ``exclude``. The keywords are those of
    :meth:`Hub.publish`: ``target`` with ``topic``, or ``exclude`` with either, raise ``ValueError``. Nothing is
    validated (it is a predicate: validate at the edge with :func:`validate_topic`): an empty topic or pattern
    matches nothing, and ``""`` is compared like any other client id.
    """

@final
class ReplayResult:
    """Frames to replay after a cursor, oldest first, or a gap (``"unknown_cursor"`` or ``"expired"``)."""

    @property
    def frames(self) -> list[Frame]: ...
    @property
    def gap(self) -> str | None: ...

@final
class ReplayLog:
    """A ring of recent resumable frames, bounded by count, bytes and age, each with a cursor ``<epoch>-<seq>``."""

    def __new__(cls, *, epoch: str, max_frames: int, max_bytes: int, ttl_ms: int) -> ReplayLog: ...
    @property
    def epoch(self) -> str: ...
    @property
    def head(self) -> int:
        """The seq of the newest frame ever appended (0 before any)."""
    def cursor(self, seq: int) -> str:
        """The cursor string for ``seq``: ``f"{epoch}-{seq}"``."""
    def parse(self, cursor: str) -> int | None:
        """The seq of a cursor of this log's epoch, or None (another epoch, or not a cursor)."""
    def append(
        self,
        data: bytes,
        *,
        event: str,
        priority: int = 1,
        target: str | None = None,
        topic: str | None = None,
        exclude: str | None = None,
        now_ms: int,
    ) -> Frame:
        """Frame ``data`` as the next resumable frame, remember it with its route, and return it (``seq`` set)."""
    def since(self, cursor: str, *, client_id: str, topics: Sequence[str], now_ms: int) -> ReplayResult:
        """The retained frames after ``cursor`` that a subscriber with this client id and these patterns may see."""
    def expire(self, now_ms: int) -> int:
        """Drop frames older than the TTL; returns how many were dropped."""
    def __len__(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def counters(self) -> dict[str, int]:
        """``appended``, ``evicted`` (by count or bytes), ``expired`` (by age), ``frames``, ``bytes``."""

def encode_replay(frames: Iterable[Frame], *, id_prefix: str, chunk_bytes: int) -> tuple[bytes, int]:
    """Write the next chunk of a replay (oldest first): each resumable frame after its ``id: <id_prefix><seq>`` line.

    With ``id_prefix`` ``f"{epoch}-"`` each ``id:`` is the frame's cursor (:func:`format_cursor`). A frame without a
    seq is written as it is, without ``id:``. Takes frames from ``frames`` until the chunk holds at least
    ``chunk_bytes`` bytes (the last frame may pass it; at least one frame) or ``frames`` runs out, and returns the
    chunk and how many frames it took; it pulls from the iterable no frame it does not write, so the caller removes
    exactly that many from the front of its deque. An ``id_prefix`` that could break the line raises ``ValueError``;
    an item that is not a :class:`Frame`, ``TypeError``.
    """

# ---------------------------------------------------------------------------------------------------------------
# Cursors: ``<epoch>-<seq>``, the ``id:`` of resumable frames and the ``Last-Event-ID`` of a resume
# ---------------------------------------------------------------------------------------------------------------

def parse_cursor(text: str, epoch: str) -> int | None:
    """The seq of ``text`` if it is a cursor of exactly this ``epoch``, else None; never raises.

    The one rule of every broker: ``<epoch>-<seq>`` split at the last ``-``; the epoch 1 to 64 characters of
    ``[A-Za-z0-9_.:@/+=-]``; the seq ASCII digits in canonical form (``0``, or no leading zero) that fit in 64 bits
    (so ``"007"``, ``"+5"``, ``" 5"``, ``"²"``, ``"٣"`` and 20-digit values above 2**64 - 1 are all None). Text longer
    than 85 characters is None without being scanned.
    """

def format_cursor(epoch: str, seq: int) -> str:
    """The cursor ``f"{epoch}-{seq}"``, which :func:`parse_cursor` reads back as ``seq``.

    An epoch that :func:`parse_cursor` would not accept raises ``ValueError``; a ``seq`` outside 0 to 2**64 - 1,
    ``OverflowError``.
    """

def stream_id_seq(text: str | bytes) -> int | None:
    """The seq ``ms << 20 | n`` of a Redis stream id ``<ms>-<n>``, else None.

    Both parts canonical ASCII decimal (as Redis writes them), ``n`` below 2**20 and ``ms`` below 2**44 so that the
    seq fits in 64 bits. Anything else but ``str`` or ``bytes`` raises ``TypeError``.
    """

def seq_stream_id(seq: int) -> str:
    """The Redis stream id ``<ms>-<n>`` of a seq: the inverse of :func:`stream_id_seq`."""
