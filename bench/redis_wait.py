"""The cost of SSE_FAST_REDIS_WAIT_REPLICAS=1 per publish: a Redis primary and one replica, one sse-fast node.

Runs the same sequential ``POST /api/messages`` (one at a time, one client, topic messages nobody subscribes to)
against a node without the wait and a node with ``WAIT 1``, alternating rounds so that both see the same machine
state, and reports the median and p99 latency of each and their ratio. Each answer is checked before its time counts:
202, and ``replicated: true`` with the wait (false would mean the replica did not keep up, not the cost of a wait).
Numbers depend on the machine: read the ratio, not the absolute times. ``make``-less: ``.venv/bin/python
bench/redis_wait.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout:.0f}s")
        time.sleep(0.05)  # ok-sleep: polling a starting process


@contextlib.contextmanager
def redis_pair(directory: str) -> Iterator[int]:
    """A primary and its replica (no persistence, never port 6379); yields the primary's port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("this benchmark needs redis-server")
    primary, replica = free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory, "--loglevel", "warning"]
    procs = [subprocess.Popen([binary, "--port", str(primary), *common])]
    try:
        wait_until(lambda: redis.Redis(port=primary).ping(), "the primary did not start")
        procs.append(
            subprocess.Popen([binary, "--port", str(replica), *common, "--replicaof", "127.0.0.1", str(primary)])
        )
        link = lambda: redis.Redis(port=replica).info("replication")["master_link_status"] == "up"  # noqa: E731
        wait_until(link, "the replica did not link")
        yield primary
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def node(redis_port: int, wait: int) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_FAST_")}
    env |= {"SSE_FAST_BROKER": f"redis://127.0.0.1:{redis_port}/0", "SSE_FAST_LOG_LEVEL": "warning"}
    env |= {"SSE_FAST_REDIS_WAIT_REPLICAS": str(wait), "SSE_FAST_PUBLISH_RATE": "1000000"}
    env |= {"SSE_FAST_PUBLISH_BURST": "1000000"}
    proc = subprocess.Popen([str(BIN / "sse-fast"), "serve", "--port", str(port)], env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/readyz", timeout=1).status_code == 200, "the server did not start")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the server and its granian workers (its own process group)
        proc.wait()


def round_of(http: httpx.Client, url: str, n: int, waited: bool) -> list[float]:
    times = []
    for i in range(n):
        body = {"type": "json", "topic": "bench.wait", "payload": i}
        started = time.perf_counter()
        answer = http.post(f"{url}/api/messages", json=body)
        elapsed = time.perf_counter() - started
        if answer.status_code != 202 or answer.json().get("replicated", None) is not (True if waited else None):
            raise RuntimeError(f"unexpected answer: {answer.status_code} {answer.text}")
        times.append(elapsed)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publishes", type=int, default=2000, help="per variant, after the warm-up")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "redis-wait.json")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"no wait": [], "WAIT 1": []}
    with contextlib.ExitStack() as stack:
        primary = stack.enter_context(redis_pair(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-"))))
        plain, waits = stack.enter_context(node(primary, 0)), stack.enter_context(node(primary, 1))
        http = stack.enter_context(httpx.Client(timeout=10))
        round_of(http, plain, args.warmup, False)
        round_of(http, waits, args.warmup, True)
        per_round = args.publishes // args.rounds
        for _ in range(args.rounds):
            times["no wait"] += round_of(http, plain, per_round, False)
            times["WAIT 1"] += round_of(http, waits, per_round, True)
    result = {}
    for name, samples in times.items():
        samples.sort()
        result[name] = {
            "median_ms": round(statistics.median(samples) * 1000, 3),
            "p99_ms": round(samples[int(len(samples) * 0.99) - 1] * 1000, 3),
            "n": len(samples),
        }
    ratio = result["WAIT 1"]["median_ms"] / result["no wait"]["median_ms"]
    report = {
        "machine": os.uname().machine,
        "cpus": os.cpu_count(),
        "variants": result,
        "median_ratio": round(ratio, 3),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
