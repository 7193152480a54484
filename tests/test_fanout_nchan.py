"""bench/fanout's nginx + nchan contenders, started by the runner's own Server and Session at a small N: every
stream opens (on nchan's ``: hi`` comment), every message of each phase reaches every stream it is due to, once,
and the server's CPU is read from nginx's worker."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "fanout"))
import run

pytestmark = pytest.mark.e2e

N = 50
BROADCAST = [("broadcast", "lockstep", 40), ("broadcast", "burst", 20)]


@pytest.mark.parametrize(
    ("name", "phases"),
    [
        ("nchan", BROADCAST),
        ("nchan-mux", [*BROADCAST, ("topic", "burst", 300), ("direct", "burst", 200)]),
    ],
)
async def test_nchan_contender_loses_nothing(name: str, phases: list[tuple[str, str, int]]) -> None:
    contender = run._contenders()[name]
    server = run.Server(contender)
    session = run.Session(server, N, run._parse(["--publishers", "8", "--timeout", "20"]))
    try:
        # nginx's master and its one worker: the runner reads CPU and memory from both.
        assert len(server.pids) == 2
        connect = await session.connect()
        assert connect["streams"] == N
        results = [await session.phase(kind, mode, count) for kind, mode, count in phases]
    finally:
        session.close()
        server.stop()
    for (kind, _mode, count), result in zip(phases, results, strict=True):
        expected = session._expected(kind, count)
        assert result["ok"], result
        assert (result["deliveries"], result["lost"], result["duplicated"]) == (sum(expected), 0, 0)
    # The master only waits: the CPU the phases took is the worker's, so the worker is counted.
    assert sum(r["server_cpu_s"] for r in results) > 0
