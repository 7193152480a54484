"""Hold as many idle streams as the machine allows, check that each still receives, and weigh them on the server.

Streams are opened by several client processes (each under its own open-file limit), from several 127.0.0.x source
addresses (each has its own ephemeral ports). Once all are open, a broadcast is sent every ``--check-every``
seconds and every stream must receive each one, exactly once, in order; a stream that closes, a lost or a duplicated
frame is an error. At the end: server memory per stream (RSS growth / streams, when the server's pid is known).

    python loadtest/hold.py                                   # starts sse-fast serve itself: 18,000 streams, 10 min
    python loadtest/hold.py --streams 2000 --minutes 0.5      # a quick check
    python loadtest/hold.py --url http://127.0.0.1:8000 --pid 4242 --streams 36000

Target (issue 8): 18,000 streams on one worker (36,000 on two once the Redis broker exists), zero errors, 10 min.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "fanout"))
from client import Monitor, Publisher, descendants, open_streams, payload, rss_bytes  # noqa: E402

PER_PROCESS = 12_000


def _raise_nofile() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# -- a client process ------------------------------------------------------------------------------------------------


def _child(pipe: Connection, host: str, port: int, first: int, count: int, rounds: int, sources: int) -> None:
    import uvloop

    _raise_nofile()
    uvloop.run(_hold(pipe, host, port, first, count, rounds, sources))


async def _hold(pipe: Connection, host: str, port: int, first: int, count: int, rounds: int, sources: int) -> None:
    loop = asyncio.get_running_loop()
    mon = Monitor(first + count)
    mon.reset([rounds] * (first + count), latency=False)
    try:
        subs = await open_streams(
            host, port, range(first, first + count), mon, path=lambda i: f"/sse?clientId=hold-{i}", sources=sources
        )
    except Exception as err:
        pipe.send(("error", f"{type(err).__name__}: {err}"))
        return
    pipe.send(("ready", len(subs)))
    while True:
        command, arg = await loop.run_in_executor(None, pipe.recv)
        if command == "check":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(mon.wait_for(count * (arg + 1)), 60)
            pipe.send(("checked", mon.received, mon.closed))
        else:
            verdict = mon.verdict()
            # Streams of other processes are not ours to count.
            verdict["lost"] -= rounds * first
            pipe.send(("done", verdict))
            for sub in subs:
                sub.close()
            await asyncio.sleep(0.5)
            return


# -- the coordinator -------------------------------------------------------------------------------------------------


def _start_server() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SSE_FAST_LOG_LEVEL": "warning", "SSE_FAST_SHUTDOWN_GRACE": "1"}
    cmd = [str(Path(sys.executable).parent / "sse-fast"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the server did not start")


async def _broadcast(host: str, port: int, seq: int) -> int:
    pub = await Publisher.connect(host, port)
    try:
        status, _ = await pub.post("/api/broadcast", b'{"message":{"type":"json","payload":%s}}' % payload(seq))
        return status
    finally:
        pub.close()


def _rss(pid: int | None) -> int:
    return sum(rss_bytes(p) for p in descendants(pid)) if pid else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--url", help="the server (default: start sse-fast serve on a free port)")
    p.add_argument("--pid", type=int, help="the server's pid, to weigh its memory (known when started here)")
    p.add_argument("--streams", type=int, default=18_000)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--check-every", type=float, default=30.0, help="seconds between verifying broadcasts")
    p.add_argument("--sources", type=int, default=8, help="127.0.0.x source addresses to spread the streams over")
    args = p.parse_args()
    _raise_nofile()
    server = None
    url, pid = args.url, args.pid
    if url is None:
        server, url = _start_server()
        pid = server.pid
    split = urlsplit(url)
    host, port = split.hostname or "127.0.0.1", split.port or 80
    rounds = math.floor(args.minutes * 60 / args.check_every) + 1  # checks at 0, every, ..., the full duration
    procs = max(1, math.ceil(args.streams / PER_PROCESS))
    rss0 = _rss(pid)
    started = time.time()
    children: list[tuple[Any, Connection]] = []
    errors: list[str] = []
    try:
        for i in range(procs):
            first, last = args.streams * i // procs, args.streams * (i + 1) // procs
            parent, child = mp.Pipe()
            proc = mp.Process(target=_child, args=(child, host, port, first, last - first, rounds, args.sources))
            proc.start()
            children.append((proc, parent))
        held = 0
        for _, pipe in children:
            kind, value = pipe.recv()
            if kind == "error":
                errors.append(value)
            else:
                held += value
        opened = time.time() - started
        rss1 = _rss(pid)
        print(f"{held} streams open in {opened:.1f} s; server RSS {rss0 >> 20} -> {rss1 >> 20} MiB", flush=True)
        if errors:
            print("errors while opening:", *errors[:5], sep="\n  ")
            return 1
        for r in range(rounds):
            time.sleep(max(0.0, started + opened + r * args.check_every - time.time()))
            status = asyncio.run(_broadcast(host, port, r))
            for _, pipe in children:
                pipe.send(("check", r))
            replies = [pipe.recv() for _, pipe in children]
            received, closed = sum(x[1] for x in replies), sum(x[2] for x in replies)
            print(
                f"round {r + 1}/{rounds}: broadcast {status}, {received} frames received, {closed} closed", flush=True
            )
            if status != 202 or received != held * (r + 1) or closed:
                errors.append(f"round {r + 1}: status {status}, received {received} of {held * (r + 1)}")
        for _, pipe in children:
            pipe.send(("stop", 0))
        verdicts = [pipe.recv()[1] for _, pipe in children]
        lost = sum(v["lost"] for v in verdicts)
        dup = sum(v["duplicated"] for v in verdicts)
        closed = sum(v["closed"] for v in verdicts)
        per = (rss1 - rss0) / held / 1024 if pid and held else float("nan")
        print(
            f"\nhold: {held} streams for {(time.time() - started) / 60:.1f} min, {rounds} broadcasts: lost {lost}, "
            f"duplicated {dup}, closed {closed}, errors {len(errors)}; server memory {per:.2f} KiB per stream"
        )
        return 1 if errors or lost or dup or closed or held < args.streams else 0
    finally:
        for proc, _ in children:
            proc.join(10)
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(15)


if __name__ == "__main__":
    sys.exit(main())
