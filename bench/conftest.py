"""Benchmarks refuse a debug build: its figures would say nothing about the release wheel."""

import sys
from pathlib import Path

import sse_fast._core as core

# The pure-Python references in tests/reference are the baselines.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def pytest_configure(config: object) -> None:
    if core.build_profile != "release":
        raise SystemExit(f"bench/ needs a release build of sse_fast._core (this one is {core.build_profile!r})")
