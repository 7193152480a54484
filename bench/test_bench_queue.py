"""The priority queues from Python: the Rust queue against the pure-Python model and ``heapq``.

Each contender's output is checked against the expected order before its time counts. These figures include the
Python call overhead of every push and pop; the Rust-internal cost (the hub pushing Rust-held frames) is lower and
is not measurable from here.
"""

from __future__ import annotations

import heapq
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sse_fast._core import Frame, FrameQueue, PriorityQueue

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from reference import queue as model

N = 10_000
_rng = random.Random(20240601)
PRIORITIES = [_rng.randrange(4) for _ in range(N)]
PUSH_POP_EXPECTED = sorted(range(N), key=lambda i: (-PRIORITIES[i], i))


def push_pop_rust() -> list[int]:
    q: PriorityQueue[int] = PriorityQueue(max_items=N)
    for item, priority in enumerate(PRIORITIES):
        q.push(item, priority)
    return list(iter(q.pop, None))


def push_pop_model() -> list[int]:
    q: model.PriorityQueue[int] = model.PriorityQueue(max_items=N)
    for item, priority in enumerate(PRIORITIES):
        q.push(item, priority)
    return list(iter(q.pop, None))


def push_pop_heapq() -> list[int]:
    heap: list[tuple[int, int]] = []
    for item, priority in enumerate(PRIORITIES):
        heapq.heappush(heap, (-priority, item))  # the item doubles as the FIFO tie-breaker
    return [heapq.heappop(heap)[1] for _ in range(len(heap))]


@pytest.mark.benchmark(group="queue push+pop 10k")
@pytest.mark.parametrize("run", [push_pop_rust, push_pop_model, push_pop_heapq], ids=["rust", "python", "heapq"])
def test_push_pop(benchmark: Any, run: Callable[[], list[int]]) -> None:
    assert run() == PUSH_POP_EXPECTED
    assert benchmark(run) == PUSH_POP_EXPECTED


# A mix a connection might see: two thirds resumable (increasing seqs), one third ephemeral, random priorities.
FRAMES = [
    Frame(b'{"n":%d,"payload":"%s"}' % (i, b"x" * 64), event="m", priority=p, seq=i + 1 if i % 3 else None)
    for i, p in enumerate(PRIORITIES)
]


def frames_rust() -> bytes:
    q = FrameQueue(max_frames=N, max_bytes=1 << 30, id_prefix="epoch-")
    for frame in FRAMES:
        q.push(frame)
    return q.drain()


def frames_model() -> bytes:
    q = model.FrameQueue(max_frames=N, max_bytes=1 << 30, id_prefix="epoch-")
    for frame in FRAMES:
        q.push(frame)
    return q.drain()


@pytest.fixture(scope="module")
def frames_expected() -> bytes:
    return frames_model()


@pytest.mark.benchmark(group="frame queue push+drain 10k")
@pytest.mark.parametrize("run", [frames_rust, frames_model], ids=["rust", "python"])
def test_frame_queue_push_drain(benchmark: Any, run: Callable[[], bytes], frames_expected: bytes) -> None:
    assert run() == frames_expected
    assert benchmark(run) == frames_expected
