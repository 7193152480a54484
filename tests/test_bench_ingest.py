"""bench/ingest.py's machinery for real, briefly: sse-fast pinned to core 0 with ten streams, wrk with
bench/ingest.lua pinned to core 1 for two seconds; every request answered 2xx, counted, delivered once, and the
report rendered. The full comparison is ``make bench-ingest``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import ingest

pytestmark = pytest.mark.e2e


async def test_ingest_counts_every_request_and_delivery() -> None:
    argv = ["--contenders", "sse-fast", "--connections", "8", "--seconds", "2", "--warmup", "1", "--streams", "10"]
    report = await ingest.bench(ingest._parse(argv))
    (fast,) = report["contenders"]
    assert "error" not in fast, fast
    (run,) = fast["runs"]
    assert run["ok"], run
    assert run["requests"] > 100
    assert run["non_2xx"] == 0
    assert not any(run["socket_errors"].values())
    # Every request was published and delivered once; those still in flight when wrk stopped come on top.
    assert run["requests"] <= run["delivered"] <= run["requests"] + 8
    assert run["server_cpu_s"] > 0
    assert 0 < run["server_main_thread_us_per_request"] <= run["server_cpu_us_per_request"]
    assert not ingest.failed(report)
    text = ingest.render(report)
    assert "requests/s per server core, 8 connections" in text
    assert "sse-fast, 8 connections:" in text
