"""The callgrind guard's scenario (bench/callgrind/scenario.py), run natively: it still drives the current data path
and still checks what it drives. `make bench` runs it under valgrind; this keeps it from rotting in between."""

import json
import subprocess
import sys
from pathlib import Path

SCENARIO = Path(__file__).resolve().parent.parent / "bench" / "callgrind" / "scenario.py"


def scenario(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCENARIO), *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_callgrind_scenario_delivers_exactly_what_its_model_expects() -> None:
    done = scenario()
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["verified"] is True
    phases = summary["phases"]
    assert [phases[name]["deliveries"] for name in ("broadcast", "topic", "direct", "coalesced")] == [
        100_000,
        4_000,
        400,
        100_000,
    ]
    assert phases["broadcast"]["writes"] == 100_000  # one frame per write
    assert phases["coalesced"]["writes"] == 25_000  # four frames per write


def test_the_callgrind_scenario_fails_when_one_write_is_lost() -> None:
    done = scenario("--lose-write", "50")
    assert done.returncode == 1
    assert "connection 500:" in done.stderr
    assert done.stdout == ""
