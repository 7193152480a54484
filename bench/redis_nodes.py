"""Redis's cost per publish as the number of nodes grows (issue 18, item 4: the projection in docs/scaling.md).

Starts a private ``redis-server`` (a free port, never 6379, no persistence) and K ``sse-fast serve`` nodes of one
worker each on it, then, for each K:

1. **idle**: Redis's command time per second with the nodes doing only their periodic work (heartbeats, ticks);
2. **sequential**: ``--publishes`` ``POST /api/messages`` (topic broadcasts), one at a time, spread over the nodes;
3. **concurrent**: the same number with ``--concurrency`` in flight at once.

Redis's cost is read from Redis itself, before and after each phase: ``INFO cpu`` (the process's CPU: commands,
networking, the event loop), the headline, net of the idle rate; and ``INFO commandstats``: the time of the
publish script (``evalsha``, with the commands it calls) and of the nodes' reads (``xread``), per publish. (The
commands a script calls are counted again under their own names, so the stats are not summed.) Every publish must
answer 202. With ``--streams``, that many streams are also opened and held: Redis's memory per stream. Usage::

    python bench/redis_nodes.py --nodes 1,2,4,8 --publishes 2000 --concurrency 16 --streams 4000 \
        --out bench/results/redis-nodes.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_until(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what}: not within {timeout:.0f} s")


def redis_cost(client: redis.Redis) -> tuple[float, float, int, int, dict[str, float]]:
    """(evalsha + xread microseconds, process CPU microseconds, evalsha calls, xread calls, microseconds by
    command)."""
    stats = client.info("commandstats")
    cpu = client.info("cpu")
    by_command = {k.removeprefix("cmdstat_"): float(v["usec"]) for k, v in stats.items()}
    calls = {k: int(v["calls"]) for k, v in stats.items()}
    process = (float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])) * 1e6
    top = by_command.get("evalsha", 0.0) + by_command.get("xread", 0.0)
    return top, process, calls.get("cmdstat_evalsha", 0), calls.get("cmdstat_xread", 0), by_command


async def publish(urls: list[str], count: int, concurrency: int) -> None:
    body = {"type": "json", "topic": "bench.redis", "payload": {"n": 0}}
    async with httpx.AsyncClient(timeout=30) as client:
        sent = 0

        async def worker() -> None:
            nonlocal sent
            while sent < count:
                i = sent
                sent += 1
                answer = await client.post(f"{urls[i % len(urls)]}/api/messages", json=body)
                if answer.status_code != 202:
                    raise RuntimeError(f"publish answered {answer.status_code}: {answer.text}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def hold_streams(
    urls: list[str], count: int, client: redis.Redis, idle: tuple[float, float], window: float
) -> dict[str, float]:
    """Open ``count`` streams (distinct clientIds, spread over the nodes, 64 at a time); Redis's memory with them
    all open, its CPU per open, and its CPU per second while they are held (``window`` seconds: the nodes rewrite
    their connection rows every 5 s), net of the idle rate; then close them."""
    memory_before, cost_before = int(client.info("memory")["used_memory"]), redis_cost(client)
    writers: list[asyncio.StreamWriter] = []
    gate = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        host, port = urls[i % len(urls)].removeprefix("http://").split(":")
        async with gate:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"GET /sse?clientId=hold-{i} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            seen = b""
            while b"connect" not in seen:  # the connect frame: its presence and row are in Redis
                chunk = await asyncio.wait_for(reader.read(4096), 30)
                if not chunk:
                    raise RuntimeError(f"stream {i} closed before its connect frame")
                seen += chunk
            writers.append(writer)

    started = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(count)))
    opened = time.monotonic() - started
    cost_open = redis_cost(client)
    await asyncio.sleep(6)  # ok-sleep: let the first connection-row rewrite (every 5 s) pass
    memory_open, held_from, t0 = int(client.info("memory")["used_memory"]), redis_cost(client), time.monotonic()
    await asyncio.sleep(window)  # ok-sleep: the measured window, streams held
    held_to, seconds = redis_cost(client), time.monotonic() - t0
    for writer in writers:
        writer.close()
    held_cpu = (held_to[1] - held_from[1]) / seconds - idle[1]
    return {
        "streams": count,
        "open_seconds": round(opened, 2),
        "redis_bytes_per_stream": round((memory_open - memory_before) / count, 1),
        "redis_cpu_us_per_open": round((cost_open[1] - cost_before[1] - idle[1] * opened) / count, 2),
        "held_redis_cpu_us_per_s_per_1000_streams": round(held_cpu / count * 1000, 1),
    }


def phase(client: redis.Redis, run: Any, idle_rate: tuple[float, float], publishes: int) -> dict[str, Any]:
    before, started = redis_cost(client), time.monotonic()
    run()
    after, seconds = redis_cost(client), time.monotonic() - started
    usec = after[0] - before[0] - idle_rate[0] * seconds
    process = after[1] - before[1] - idle_rate[1] * seconds
    return {
        "seconds": round(seconds, 2),
        "publishes_per_s": round(publishes / seconds, 1),
        "script_and_read_us_per_publish": round(usec / publishes, 2),
        "redis_cpu_us_per_publish": round(process / publishes, 2),
        "xread_per_publish": round((after[3] - before[3]) / publishes, 2),
        "us_per_publish_by_command": {  # not net of the idle rate; a script's commands are inside evalsha too
            name: round((usec - before[4].get(name, 0.0)) / publishes, 2)
            for name, usec in sorted(after[4].items(), key=lambda kv: before[4].get(kv[0], 0.0) - kv[1])[:5]
        },
    }


def measure(redis_url: str, client: redis.Redis, k: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    procs, urls = [], []
    try:
        for i in range(k):
            port = free_port()
            env = {**os.environ, "SSE_FAST_BROKER": redis_url, "SSE_FAST_LOG_LEVEL": "warning"}
            env |= {"SSE_FAST_PUBLISH_RATE": "0", "SSE_FAST_PUBLISH_BYTES_RATE": "0"}  # one bench client, no limit
            env |= {"SSE_FAST_REPLAY_SIZE": str(args.replay_size)}
            log = open(tmp / f"node-{k}-{i}.log", "wb")  # noqa: SIM115 - closed with the process
            cmd = [str(BIN / "sse-fast"), "serve", "--port", str(port), "--workers", "1"]
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
            urls.append(f"http://{HOST}:{port}")
        for url in urls:
            wait_until(lambda url=url: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, f"{url} ready")
        # Warm-up (connections, scripts loaded); with --full, until the log holds --replay-size entries, so that
        # every measured publish also trims one (a log at its bound: the steady state of a long-running server).
        asyncio.run(publish(urls, args.replay_size + 50 if args.full else 50, 4))
        before, started = redis_cost(client), time.monotonic()
        time.sleep(args.idle)  # the measured idle window
        after, seconds = redis_cost(client), time.monotonic() - started
        idle = ((after[0] - before[0]) / seconds, (after[1] - before[1]) / seconds)
        n = args.publishes
        return {
            "nodes": k,
            "idle_script_and_read_us_per_s": round(idle[0], 1),
            "idle_redis_cpu_us_per_s": round(idle[1], 1),
            **(
                {}
                if args.no_publish
                else {
                    "sequential": phase(client, lambda: asyncio.run(publish(urls, n, 1)), idle, n),
                    "concurrent": phase(client, lambda: asyncio.run(publish(urls, n, args.concurrency)), idle, n),
                }
            ),
            **({"held": asyncio.run(hold_streams(urls, args.streams, client, idle, 20.0))} if args.streams else {}),
        }
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="1,2,4,8", help="comma-separated node counts")
    parser.add_argument("--publishes", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of the idle window")
    parser.add_argument("--streams", type=int, default=0, help="also hold this many streams: Redis memory per stream")
    parser.add_argument("--replay-size", type=int, default=10000, help="the nodes' SSE_FAST_REPLAY_SIZE")
    parser.add_argument("--full", action="store_true", help="fill the log to --replay-size before measuring")
    parser.add_argument("--no-publish", action="store_true", help="skip the publish phases (with --streams)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is needed")
    results, version = [], ""
    for k in (int(x) for x in args.nodes.split(",")):  # a fresh Redis for each K: the same log to start from
        port = free_port()
        assert port != 6379, "never touch the shared Redis"
        with tempfile.TemporaryDirectory(prefix="redis-nodes-") as tmp:
            cmd = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no", "--dir", tmp]
            server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                client = redis.Redis(host=HOST, port=port, socket_timeout=5)
                wait_until(client.ping, "redis-server")
                version = client.info("server")["redis_version"]
                results.append(measure(f"redis://{HOST}:{port}/0", client, k, args, Path(tmp)))
                print(json.dumps(results[-1]), flush=True)
            finally:
                server.kill()
                server.wait(10)
    report = {"redis": version, **{k: v for k, v in vars(args).items() if k != "out"}, "results": results}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
