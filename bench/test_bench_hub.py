"""Fan-out and replay: the Rust hub and log against plain-Python equivalents, in the same groups.

Run with ``make bench`` (or ``pytest bench/test_bench_hub.py --benchmark-only``). Each contender's output is checked
before its time counts. Target: one publish to 10,000 subscribers in at most 1 ms.
"""

import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sse_fast._core import Frame, Hub, ReplayLog

# The pure-Python models in tests/reference are the baselines (bench/conftest.py does not put tests/ on the path).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference.hub import ReplayModel, Route, frame_size

N = 10_000
ROOMS = 100  # topic publishes reach N / ROOMS = 1% of the connections
DATA = b'{"type":"json","payload":{"hello":"world"},"id":"m-1"}'

Bench = Any  # pytest-benchmark's fixture


class PyHub:
    """The obvious pure-Python hub: a dict of bounded deques, a client index and an exact-topic index."""

    def __init__(self, max_frames: int) -> None:
        self.max_frames = max_frames
        self.queues: dict[int, deque[bytes]] = {}
        self.client: dict[int, str] = {}
        self.by_topic: dict[str, list[int]] = {}

    def add(self, conn: int, client: str, topic: str) -> None:
        self.queues[conn], self.client[conn] = deque(), client
        self.by_topic.setdefault(topic, []).append(conn)

    def _push(self, conn: int, frame: bytes, woken: list[int], overflowed: list[int]) -> int:
        queue = self.queues[conn]
        if len(queue) >= self.max_frames:
            overflowed.append(conn)
            return 0
        if not queue:
            woken.append(conn)
        queue.append(frame)
        return 1

    def broadcast(self, frame: bytes, exclude: str | None = None) -> tuple[int, list[int], list[int]]:
        woken: list[int] = []
        overflowed: list[int] = []
        delivered = sum(self._push(c, frame, woken, overflowed) for c in self.queues if self.client[c] != exclude)
        return delivered, woken, overflowed

    def publish_topic(self, frame: bytes, topic: str) -> tuple[int, list[int], list[int]]:
        woken: list[int] = []
        overflowed: list[int] = []
        delivered = sum(self._push(c, frame, woken, overflowed) for c in self.by_topic.get(topic, ()))
        return delivered, woken, overflowed

    def drain_all(self) -> None:
        for queue in self.queues.values():
            queue.clear()


@pytest.fixture(scope="module")
def rust_hub() -> Hub:
    hub = Hub(queue_frames=1024, queue_bytes=1 << 20, id_prefix="e1-")
    for i in range(N):
        hub.add(f"client-{i}", [f"room.{i % ROOMS}"])
    return hub


@pytest.fixture(scope="module")
def py_hub() -> PyHub:
    hub = PyHub(max_frames=1024)
    for i in range(N):
        hub.add(i, f"client-{i}", f"room.{i % ROOMS}")
    return hub


def drainer(hub: Hub) -> Callable[[], None]:
    conns = list(range(1, N + 1))

    def drain_all() -> None:
        for conn in conns:
            hub.drain(conn)

    return drain_all


def test_broadcast_10k_rust(benchmark: Bench, rust_hub: Hub) -> None:
    benchmark.group = "publish: broadcast to 10,000 connections"
    frame = Frame(DATA, event="json", seq=1)
    delivery = benchmark.pedantic(rust_hub.publish, (frame,), setup=drainer(rust_hub), rounds=300, warmup_rounds=5)
    assert delivery.delivered == N
    assert len(delivery.woken) == N
    assert delivery.overflowed == []


def test_broadcast_10k_python(benchmark: Bench, py_hub: PyHub) -> None:
    benchmark.group = "publish: broadcast to 10,000 connections"
    frame = b"id: e1-1\nevent: json\ndata: " + DATA + b"\n\n"
    delivered, woken, overflowed = benchmark.pedantic(
        py_hub.broadcast, (frame,), setup=py_hub.drain_all, rounds=300, warmup_rounds=5
    )
    assert (delivered, len(woken), overflowed) == (N, N, [])


def test_topic_1pct_rust(benchmark: Bench, rust_hub: Hub) -> None:
    benchmark.group = "publish: topic reaching 1% of 10,000"
    frame = Frame(DATA, event="json", seq=1)
    delivery = benchmark.pedantic(
        rust_hub.publish, (frame,), {"topic": "room.7"}, setup=drainer(rust_hub), rounds=300, warmup_rounds=5
    )
    assert delivery.delivered == N // ROOMS
    assert sorted(delivery.woken) == list(range(8, N + 1, ROOMS))


def test_topic_1pct_python(benchmark: Bench, py_hub: PyHub) -> None:
    benchmark.group = "publish: topic reaching 1% of 10,000"
    frame = b"id: e1-1\nevent: json\ndata: " + DATA + b"\n\n"
    delivered, woken, _ = benchmark.pedantic(
        py_hub.publish_topic, (frame, "room.7"), setup=py_hub.drain_all, rounds=300, warmup_rounds=5
    )
    assert (delivered, len(woken)) == (N // ROOMS, N // ROOMS)


def routes(i: int) -> dict[str, str]:
    """A mix: broadcasts, topics and targeted messages, a third each."""
    return [{}, {"topic": f"room.{i % ROOMS}"}, {"target": f"client-{i % 50}"}][i % 3]


REPLAYER = ("client-7", ["room.7", "room.8"])
REPLAYED = [i + 1 for i in range(N) if Route.of(**routes(i)).admits(*REPLAYER)]


def test_replay_since_10k_rust(benchmark: Bench) -> None:
    benchmark.group = "replay: since on a 10,000-frame log"
    log = ReplayLog(epoch="e1", max_frames=N, max_bytes=1 << 30, ttl_ms=3_600_000)
    for i in range(N):
        log.append(DATA, event="json", now_ms=i, **routes(i))
    result = benchmark(log.since, "e1-0", client_id=REPLAYER[0], topics=REPLAYER[1], now_ms=N)
    assert result.gap is None
    assert [frame.seq for frame in result.frames] == REPLAYED


def test_replay_since_10k_python(benchmark: Bench) -> None:
    benchmark.group = "replay: since on a 10,000-frame log"
    log = ReplayModel("e1", max_frames=N, max_bytes=1 << 30, ttl_ms=3_600_000)
    for i in range(N):
        log.append(frame_size(DATA, "json"), Route.of(**routes(i)), i)
    seqs = benchmark(log.since, "e1-0", *REPLAYER, N)
    assert seqs == REPLAYED
