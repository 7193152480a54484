"""A pure-Python model of topics, routing and the replay log: the oracle for the hub, topic and replay tests.

It says *who* receives a frame and *what* a resume replays, as plainly as possible; the Rust core says it fast.
"""

from __future__ import annotations

import string
from collections import deque
from dataclasses import dataclass, field

__all__ = ["EXPIRED", "UNKNOWN_CURSOR", "HubModel", "ReplayModel", "Route", "frame_size", "is_valid_topic", "matches"]

TOPIC_CHARS = frozenset(string.ascii_letters + string.digits + "_:/-")
MAX_TOPIC_LEN = 128
UNKNOWN_CURSOR = "unknown_cursor"
EXPIRED = "expired"


def is_valid_topic(topic: str, *, pattern: bool = False) -> bool:
    """Whether ``topic`` is a valid topic (or, with ``pattern``, a valid pattern)."""
    if not 1 <= len(topic) <= MAX_TOPIC_LEN:
        return False
    segments = topic.split(".")
    for i, segment in enumerate(segments):
        if pattern and (segment == "*" or (segment == ">" and i == len(segments) - 1)):
            continue
        if not segment or not set(segment) <= TOPIC_CHARS:
            return False
    return True


def matches(pattern: str, topic: str) -> bool:
    """NATS matching: ``*`` is one segment, a final ``>`` one or more, anything else itself."""
    if not pattern or not topic:
        return False
    wanted, given = pattern.split("."), topic.split(".")
    if wanted[-1] == ">":
        wanted = wanted[:-1]
        if len(given) <= len(wanted):
            return False
        given = given[: len(wanted)]
    return len(wanted) == len(given) and all(w in ("*", g) for w, g in zip(wanted, given, strict=True))


@dataclass(frozen=True)
class Route:
    """Where a frame goes: ``broadcast`` (``value`` = the excluded client or None), ``topic`` or ``client``."""

    kind: str
    value: str | None = None

    @classmethod
    def of(cls, *, target: str | None = None, topic: str | None = None, exclude: str | None = None) -> Route:
        """The route named by the keywords of ``Hub.publish`` and ``ReplayLog.append``."""
        if target is not None:
            return cls("client", target)
        if topic is not None:
            return cls("topic", topic)
        return cls("broadcast", exclude)

    def admits(self, client_id: str, patterns: list[str]) -> bool:
        """Whether a subscriber with this client id and these patterns receives what is sent on this route."""
        if self.kind == "broadcast":
            return self.value != client_id
        if self.kind == "client":
            return self.value == client_id
        assert self.value is not None
        return any(matches(p, self.value) for p in patterns)


@dataclass
class HubModel:
    """Connections as a plain dict: id -> (client id, patterns)."""

    conns: dict[int, tuple[str, list[str]]] = field(default_factory=dict)

    def add(self, conn: int, client_id: str, patterns: list[str]) -> None:
        self.conns[conn] = (client_id, list(dict.fromkeys(patterns)))

    def remove(self, conn: int) -> None:
        del self.conns[conn]

    def recipients(self, route: Route) -> set[int]:
        """Every connection the route reaches (each once, however many of its patterns match)."""
        return {conn for conn, (client, patterns) in self.conns.items() if route.admits(client, patterns)}

    def connections_of(self, client_id: str) -> list[int]:
        return [conn for conn, (client, _) in self.conns.items() if client == client_id]


def frame_size(data: bytes, event: str) -> int:
    """The length of ``event: <event>\\ndata: <data>\\n\\n``."""
    return len(b"event: \ndata: \n\n") + len(event.encode()) + len(data)


@dataclass
class _Entry:
    seq: int
    size: int
    route: Route
    at_ms: int


@dataclass
class ReplayModel:
    """The replay log as a list: seqs from 1, bounded by count, bytes and age (older than ``ttl_ms`` leaves)."""

    epoch: str
    max_frames: int
    max_bytes: int
    ttl_ms: int
    head: int = 0
    entries: deque[_Entry] = field(default_factory=deque)
    counters: dict[str, int] = field(default_factory=lambda: {"appended": 0, "evicted": 0, "expired": 0})

    def append(self, size: int, route: Route, now_ms: int) -> int:
        self.head += 1
        self.counters["appended"] += 1
        self.expire(now_ms)
        self.entries.append(_Entry(self.head, size, route, now_ms))
        while len(self.entries) > self.max_frames or self.nbytes > self.max_bytes:
            self.entries.popleft()
            self.counters["evicted"] += 1
        return self.head

    def expire(self, now_ms: int) -> int:
        dropped = 0
        while self.entries and now_ms - self.entries[0].at_ms > self.ttl_ms:
            self.entries.popleft()
            dropped += 1
        self.counters["expired"] += dropped
        return dropped

    @property
    def nbytes(self) -> int:
        return sum(e.size for e in self.entries)

    def parse(self, cursor: str) -> int | None:
        epoch, dash, digits = cursor.rpartition("-")
        if not dash or epoch != self.epoch or not digits.isascii() or not digits.isdigit():
            return None
        return int(digits) if str(int(digits)) == digits else None

    def since(self, cursor: str, client_id: str, patterns: list[str], now_ms: int) -> list[int] | str:
        """The seqs to replay after ``cursor``, or the gap's name."""
        seq = self.parse(cursor)
        if seq is None or seq > self.head:
            return UNKNOWN_CURSOR
        if seq == self.head:
            return []
        self.expire(now_ms)
        if not self.entries or seq < self.entries[0].seq - 1:
            return EXPIRED
        return [e.seq for e in self.entries if e.seq > seq and e.route.admits(client_id, patterns)]

    def all_counters(self) -> dict[str, int]:
        return {**self.counters, "frames": len(self.entries), "bytes": self.nbytes}
