"""Benchmarks refuse a debug build: its figures would say nothing about the release wheel."""

import sse_fast._core as core


def pytest_configure(config: object) -> None:
    if core.build_profile != "release":
        raise SystemExit(f"bench/ needs a release build of sse_fast._core (this one is {core.build_profile!r})")
