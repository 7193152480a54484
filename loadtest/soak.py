"""Soak test: ``make soak`` (default 30 minutes, ``SOAK_MINUTES``) and ``make soak-smoke`` (40 s, in ``make test``).

Starts its own ``sse-fast serve`` (the memory broker, or with ``SOAK_BROKER=redis`` a ``redis-server`` it starts on
a free port) and applies a steady mixed load for the whole run:

- subscribers on topics that drop their stream every 10-40 s and resume with ``Last-Event-ID``, acking every
  ``requireAck`` message they receive;
- one publisher (an API key, so that the per-client publish limit does not throttle it): topic, direct, broadcast,
  direct ``requireAck``, and direct messages to offline clients;
- offline clients whose mailboxes fill (past ``SSE_FAST_MAILBOX_SIZE``) while they are away, and drain when they
  come back for a moment;
- task clients running the demo handlers through ``POST /api/commands``: tasks that complete, are cancelled, paused
  and resumed, count (publishing as they go) and fail.

Every ``--sample`` seconds it reads the worker's RSS and open file descriptors (``/proc/<pid>``), the gauges of
``/metrics`` (connections, live tasks, task records, mailbox messages, tracked acks) and, with Redis,
``INFO memory``'s ``used_memory``. After the warm-up (the first 20%) no series may trend upward: over the rest of the
run the least-squares slope times the duration (the drift the fit predicts) must stay within 5% of the series' mean,
and the end (median of the last tenth of the samples) within 5% of the start (median of the first tenth), or within
an absolute floor per series for small ones (see ``SERIES``), or for a count of what random traffic left in a
sliding window (records of the last minute) within its Poisson noise, 3 sqrt(mean). The samples go to
``samples.csv`` and ``soak.png`` in ``--out``; the exit status is 1 on a trend, a 5xx, a lost worker, or no traffic.

Bounded stores are sized so that they reach their bound during the warm-up (replay log, task record retention, the
status of finished ``requireAck`` messages): what the soak checks is that nothing grows once every bound is reached.

    python loadtest/soak.py                       # 30 minutes, memory broker
    SOAK_BROKER=redis SOAK_MINUTES=10 python loadtest/soak.py
    python loadtest/soak.py --smoke               # 40 s, 10 s warm-up, a sample every 2 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import math
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec

from sse_fast import Decoder

HERE = Path(__file__).resolve().parent
API_KEY = f"soak-{secrets.token_hex(16)}"
TOPICS = [f"soak.{i}" for i in range(8)]
TOLERANCE = 0.05  # drift and end-vs-start, as a share of the mean / the start

# name -> (label, absolute floor: a change this small is noise whatever the share, counts: whether the series counts
# what a random load put in a sliding window (records of the last minute, say), whose noise is Poisson: sqrt(n))
SERIES: dict[str, tuple[str, float, bool]] = {
    "rss_mib": ("worker RSS (MiB)", 3.0, False),
    "fds": ("worker open fds", 8.0, False),
    "connections": ("open SSE connections", 6.0, False),
    "tasks": ("live tasks (running+waiting+paused)", 6.0, True),
    "task_records": ("scheduler task records", 25.0, True),
    "mailbox_messages": ("mailbox messages", 50.0, True),
    "acks_tracked": ("requireAck messages tracked", 20.0, True),
    "redis_used_mib": ("Redis used_memory (MiB)", 0.25, False),
}
_GAUGES = {
    "connections": ("sse_fast_connections",),
    "tasks": ("sse_fast_scheduler_running", "sse_fast_scheduler_waiting", "sse_fast_scheduler_paused"),
    "task_records": ("sse_fast_scheduler_records",),
    "mailbox_messages": ("sse_fast_mailbox_messages",),
    "acks_tracked": ("sse_fast_acks_tracked",),
}


@dataclass
class Plan:
    """How long, how often, how hard."""

    seconds: float
    warmup: float
    sample: float
    rate: float = 40.0  # publishes per second
    subscribers: int = 16
    offline: int = 8
    taskers: int = 3


@dataclass
class Stats:
    """What the load did, for the report (and the sanity check that it did something)."""

    status: Counter[str] = field(default_factory=Counter)
    published: int = 0
    received: int = 0
    acked: int = 0
    drained: int = 0
    reconnects: int = 0
    tasks: Counter[str] = field(default_factory=Counter)
    transport_errors: int = 0

    def count(self, what: str, resp: httpx.Response) -> None:
        self.status[f"{what} {resp.status_code}"] += 1

    @property
    def server_errors(self) -> int:
        return sum(n for key, n in self.status.items() if key.rsplit(" ", 1)[1].startswith("5"))


# -- processes ---------------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now (never 6379: the kernel hands out ephemeral ports)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(check: Any, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)  # ok-sleep: polling a starting process
    raise SystemExit(f"{what} did not start within 30 s")


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[int]:
    """A private ``redis-server`` on a free port, no persistence; killed on exit."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("SOAK_BROKER=redis needs redis-server on PATH")
    port = free_port()
    assert port != 6379
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(directory), "--loglevel", "warning"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: redis.Redis(port=port, socket_timeout=1).ping(), "redis-server", proc)
        yield port
    finally:
        proc.kill()
        proc.wait(10)


def server_env(plan: Plan, broker: str) -> dict[str, str]:
    """The server's settings: the API key, and the bounded stores sized to fill during the warm-up."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_FAST_")}
    env.update(
        {
            "SSE_FAST_API_KEYS": API_KEY,
            "SSE_FAST_BROKER": broker,
            "SSE_FAST_LOG_LEVEL": "warning",
            "SSE_FAST_SHUTDOWN_GRACE": "1",
            "SSE_FAST_REPLAY_SIZE": str(max(100, int(plan.rate * plan.warmup / 2))),
            "SSE_FAST_SCHEDULER_RETENTION": str(max(1.0, plan.warmup / 2)),
            "SSE_FAST_ACK_TIMEOUT": str(max(1.0, plan.warmup / 10)),
            "SSE_FAST_ACK_RETRIES": "1",
            "SSE_FAST_ACK_STATUS_TTL": str(max(1.0, plan.warmup / 4)),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@contextlib.contextmanager
def sse_server(env: dict[str, str], log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``sse-fast serve`` on a free port (its own process group), until exit."""
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "sse-fast"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx.get(f"{url}/readyz", timeout=1).status_code == 200, "sse-fast serve", proc)
        yield url, proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def worker_pid(parent: int) -> int:
    """The granian worker: the child of ``sse-fast serve`` that holds the most memory."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                    children.append(int(entry))
    if not children:
        raise SystemExit(f"sse-fast serve ({parent}) has no worker process")
    return max(children, key=_rss_mib)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- the load ----------------------------------------------------------------------------------------------------------


class Load:
    """The clients: every coroutine runs until ``stop`` is set."""

    def __init__(self, url: str, plan: Plan, stats: Stats) -> None:
        self.url, self.plan, self.stats = url, plan, stats
        self.stop = asyncio.Event()
        self.http = httpx.AsyncClient(base_url=url, timeout=10, limits=httpx.Limits(max_connections=200))
        self.online: set[str] = set()

    async def run(self) -> None:
        jobs = [self.publisher()]
        jobs += [self.subscriber(f"sub-{i}", random.sample(TOPICS, 2)) for i in range(self.plan.subscribers)]
        jobs += [self.offline_client(f"off-{i}") for i in range(self.plan.offline)]
        jobs += [self.tasker(f"task-{i}") for i in range(self.plan.taskers)]
        try:
            await asyncio.gather(*jobs)
        finally:
            await self.http.aclose()

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the run ends."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def post(self, what: str, path: str, body: Any, headers: dict[str, str]) -> httpx.Response | None:
        try:
            resp = await self.http.post(path, content=msgspec.json.encode(body), headers=headers)
        except httpx.HTTPError:
            self.stats.transport_errors += 1
            return None
        self.stats.count(what, resp)
        return resp

    # publishing

    async def publisher(self) -> None:
        headers = {"x-api-key": API_KEY, "content-type": "application/json"}
        kinds = ["topic", "direct", "broadcast", "requireAck", "offline"]
        weights = [4, 2, 1, 1, 2]
        started, n = time.monotonic(), 0
        while not self.stop.is_set():
            kind = random.choices(kinds, weights)[0]
            await self.publish(kind, headers)
            self.stats.published += 1
            n += 1
            late = time.monotonic() - (started + n / self.plan.rate)
            if late > 1.0:  # fell behind (a busy machine): a steady rate from here, not a burst to catch up
                started, n = time.monotonic(), 0
            await self.pause(max(0.0, -late))

    async def publish(self, kind: str, headers: dict[str, str]) -> None:
        envelope: dict[str, Any] = {
            "type": "soak",
            "priority": random.choice([0, 1, 1, 1, 2, 3]),
            "payload": {"kind": kind, "note": "x" * random.randint(10, 300)},
        }
        online = sorted(self.online)
        if kind == "topic":
            envelope["topic"] = random.choice(TOPICS)
        elif kind in ("direct", "requireAck") and online:
            envelope["target"] = random.choice(online)
            envelope["requireAck"] = kind == "requireAck"
        elif kind == "offline":
            envelope["target"] = f"off-{random.randrange(self.plan.offline)}"
        if kind == "broadcast" or ("target" not in envelope and "topic" not in envelope):
            await self.post("broadcast", "/api/broadcast", {"message": envelope}, headers)
        else:
            await self.post(kind, "/api/messages", envelope, headers)

    # streams

    async def stream(self, client_id: str, topics: list[str], seconds: float, cursor: str) -> str:
        """Hold one stream for ``seconds``; ack what asks for it; returns the cursor to resume from."""
        query = f"/sse?clientId={client_id}" + (f"&topics={','.join(topics)}" if topics else "")
        headers = {"last-event-id": cursor} if cursor else {}
        decoder = Decoder()
        with contextlib.suppress(TimeoutError, httpx.HTTPError):
            async with asyncio.timeout(seconds):
                async with self.http.stream("GET", query, headers=headers, timeout=None) as resp:
                    self.stats.count("stream", resp)
                    if resp.status_code != 200:
                        return cursor
                    self.online.add(client_id)
                    async for chunk in resp.aiter_bytes():
                        await self.frames(client_id, decoder.feed(chunk))
                        cursor = decoder.last_event_id or cursor
        self.online.discard(client_id)
        return cursor

    async def frames(self, client_id: str, events: list[Any]) -> None:
        for event in events:
            if event.event in ("system", "heartbeat", "command"):
                continue
            self.stats.received += 1
            if client_id.startswith("off-"):
                self.stats.drained += 1
            envelope = msgspec.json.decode(event.data)
            if envelope.get("requireAck"):
                body = {"messageIds": [envelope["id"]]}
                headers = {"x-client-id": client_id, "content-type": "application/json"}
                if await self.post("ack", "/api/ack", body, headers) is not None:
                    self.stats.acked += 1

    async def subscriber(self, client_id: str, topics: list[str]) -> None:
        cursor = ""
        while not self.stop.is_set():
            cursor = await self.stream(client_id, topics, random.uniform(10, 40), cursor)
            self.stats.reconnects += 1
            await self.pause(random.uniform(0.2, 2))

    async def offline_client(self, client_id: str) -> None:
        await self.pause(random.uniform(0, 10))
        cursor = ""
        while not self.stop.is_set():
            await self.pause(random.uniform(8, 25))  # away: its mailbox fills
            cursor = await self.stream(client_id, [], 2.0, cursor)  # back for a moment: it drains

    # tasks

    async def tasker(self, client_id: str) -> None:
        listener = asyncio.create_task(self.subscriber(client_id, []))
        headers = {"x-client-id": client_id, "content-type": "application/json"}
        scenarios = [self.task_complete, self.task_cancel, self.task_pause, self.task_count, self.task_fail]
        while not self.stop.is_set():
            await random.choice(scenarios)(headers)
            await self.pause(random.uniform(0.2, 0.8))
        await listener

    async def execute(self, headers: dict[str, str], task: str, params: dict[str, Any]) -> str | None:
        payload = {"commandId": f"c-{secrets.token_hex(6)}", "action": "execute", "task": task, "params": params}
        resp = await self.post("execute", "/api/commands", {"type": "command", "payload": payload}, headers)
        if resp is None or resp.status_code != 202:
            return None
        self.stats.tasks[task] += 1
        return str(resp.json()["taskId"])

    async def control(self, headers: dict[str, str], task_id: str, action: str) -> None:
        await self.post(action, f"/api/tasks/{task_id}/{action}", {}, headers)
        self.stats.tasks[action] += 1

    async def task_complete(self, headers: dict[str, str]) -> None:
        await self.execute(headers, "sleep", {"seconds": 0.2})

    async def task_cancel(self, headers: dict[str, str]) -> None:
        if task_id := await self.execute(headers, "sleep", {"seconds": 5}):
            await self.pause(0.5)
            await self.control(headers, task_id, "cancel")

    async def task_pause(self, headers: dict[str, str]) -> None:
        if task_id := await self.execute(headers, "sleep", {"seconds": 1}):
            await self.pause(0.3)
            await self.control(headers, task_id, "pause")
            await self.pause(0.5)
            await self.control(headers, task_id, "resume")

    async def task_count(self, headers: dict[str, str]) -> None:
        await self.execute(headers, "count", {"to": 5, "interval": 0.05})

    async def task_fail(self, headers: dict[str, str]) -> None:
        await self.execute(headers, "fail", {"permanent": True})


# -- sampling ----------------------------------------------------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, float]:
    """``name value`` lines of the Prometheus text (no labels needed here)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


async def sample(http: httpx.AsyncClient, pid: int, redis_port: int | None) -> dict[str, float]:
    """One row: the worker's RSS and fds, the /metrics gauges, Redis memory."""
    row = {"rss_mib": _rss_mib(pid), "fds": float(len(os.listdir(f"/proc/{pid}/fd")))}
    metrics = parse_metrics((await http.get("/metrics")).text)
    for name, sources in _GAUGES.items():
        if all(s in metrics for s in sources):
            row[name] = sum(metrics[s] for s in sources)
    if redis_port is not None:
        import redis

        with redis.Redis(port=redis_port, socket_timeout=3) as client:
            row["redis_used_mib"] = int(client.info("memory")["used_memory"]) / 2**20
    return row


async def sampler(
    url: str, pid: int, redis_port: int | None, plan: Plan, stats: Stats, rows: list[dict[str, float]]
) -> None:
    """A row every ``plan.sample`` seconds; ``publish_rate`` (the load itself, not checked) shows it was steady."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        started = time.monotonic()
        n, last_at, last_published = 0, 0.0, 0
        while (at := time.monotonic() - started) <= plan.seconds:
            rate = (stats.published - last_published) / (at - last_at) if at > last_at else 0.0
            last_at, last_published = at, stats.published
            row = {"t": round(at, 2), "publish_rate": round(rate, 1), **await sample(http, pid, redis_port)}
            rows.append(row)
            print("  ".join(f"{k}={v:.1f}" for k, v in row.items()), flush=True)
            n += 1
            await asyncio.sleep(max(0.0, started + n * plan.sample - time.monotonic()))


# -- the verdict -------------------------------------------------------------------------------------------------------


@dataclass
class Trend:
    """One series after the warm-up: its fit and whether it passes."""

    name: str
    mean: float
    slope: float  # per second
    drift: float  # slope x duration
    start: float
    end: float
    limit: float

    @property
    def ok(self) -> bool:
        return self.drift <= self.limit and self.end - self.start <= self.limit

    def line(self) -> str:
        verdict = "ok" if self.ok else "TREND"
        return (
            f"{self.name:17} mean {self.mean:9.2f}  drift {self.drift:+8.2f} ({self.pct(self.drift):+6.1f}%)  "
            f"start {self.start:9.2f} end {self.end:9.2f} ({self.pct(self.end - self.start):+6.1f}%)  "
            f"limit {self.limit:.2f}  {verdict}"
        )

    def pct(self, value: float) -> float:
        return 100 * value / self.mean if self.mean else 0.0


def trend(name: str, ts: list[float], ys: list[float]) -> Trend:
    """Least squares over the post-warm-up samples; start and end are medians of the first and last tenth."""
    fit = statistics.linear_regression(ts, ys) if len(set(ys)) > 1 else statistics.LinearRegression(0.0, ys[0])
    k = max(3, len(ys) // 10)
    mean = statistics.fmean(ys)
    start, end = statistics.median(ys[:k]), statistics.median(ys[-k:])
    _, floor, counts = SERIES[name]
    limit = max(TOLERANCE * max(mean, start), floor, 3 * math.sqrt(mean) if counts else 0.0)
    return Trend(name, mean, fit.slope, fit.slope * (ts[-1] - ts[0]), start, end, limit)


def verdict(rows: list[dict[str, float]], warmup: float) -> list[Trend]:
    """A trend per series present in every post-warm-up row."""
    rest = [r for r in rows if r["t"] >= warmup]
    if len(rest) < 6:
        raise SystemExit(f"only {len(rest)} samples after the warm-up: run longer")
    names = [n for n in SERIES if all(n in r for r in rest)]
    return [trend(n, [r["t"] for r in rest], [r[n] for r in rest]) for n in names]


def write_csv(rows: list[dict[str, float]], path: Path) -> None:
    names = ["t", "publish_rate", *[n for n in SERIES if n in rows[0]]]
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, names, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict[str, float]], trends: list[Trend], warmup: float, title: str, path: Path) -> None:
    """One panel per series: the samples, the warm-up, the fitted line over the rest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 2
    nrows = (len(trends) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(10, 2.2 * nrows), sharex=True, squeeze=False)
    minutes = [r["t"] / 60 for r in rows]
    for ax, tr in zip(axes.flat, trends, strict=False):
        ax.plot(minutes, [r[tr.name] for r in rows], lw=1, color="tab:blue")
        rest = [r for r in rows if r["t"] >= warmup]
        t0 = rest[0]["t"]
        intercept = tr.mean - tr.slope * statistics.fmean(r["t"] for r in rest)
        xs = [t0, rest[-1]["t"]]
        ax.plot([x / 60 for x in xs], [intercept + tr.slope * x for x in xs], "--", color="tab:red", lw=1)
        ax.axvspan(0, warmup / 60, color="0.9")
        ax.set_title(f"{SERIES[tr.name][0]}: drift {tr.pct(tr.drift):+.1f}%", fontsize=9)
        ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(trends) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("minutes", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


# -- main --------------------------------------------------------------------------------------------------------------


async def soak(
    url: str, proc: subprocess.Popen[bytes], redis_port: int | None, plan: Plan
) -> tuple[list[dict[str, float]], Stats, int]:
    pid = worker_pid(proc.pid)
    stats = Stats()
    load = Load(url, plan, stats)
    rows: list[dict[str, float]] = []
    runner = asyncio.create_task(load.run())
    try:
        await sampler(url, pid, redis_port, plan, stats, rows)
    finally:
        load.stop.set()
        done, _ = await asyncio.wait([runner], timeout=1)
        if not done:
            runner.cancel()  # streams held for their full time would outlast the run
            with contextlib.suppress(asyncio.CancelledError):
                await runner
    return rows, stats, pid


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "30")))
    p.add_argument("--broker", choices=["memory", "redis"], default=os.environ.get("SOAK_BROKER", "memory"))
    p.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--warmup", type=float, default=0.2, help="share of the run that is warm-up")
    p.add_argument("--rate", type=float, default=40.0, help="publishes per second")
    p.add_argument("--smoke", action="store_true", help="CI: 40 s, 10 s warm-up, a sample every 2 s")
    p.add_argument("--out", type=Path, default=HERE / "results" / "soak")
    args = p.parse_args()
    seconds, warmup = args.minutes * 60, args.minutes * 60 * args.warmup
    if args.smoke:
        seconds, warmup, args.sample = 40.0, 10.0, 2.0
    plan = Plan(seconds, warmup, args.sample, rate=args.rate)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"soak: {seconds / 60:.1f} min, {args.broker} broker, warm-up {warmup:.0f} s, a sample every {plan.sample} s")
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        redis_port = stack.enter_context(redis_server(scratch)) if args.broker == "redis" else None
        broker = f"redis://127.0.0.1:{redis_port}/0" if redis_port else "memory"
        url, proc = stack.enter_context(sse_server(server_env(plan, broker), args.out / "server.log"))
        rows, stats, pid = asyncio.run(soak(url, proc, redis_port, plan))
        if proc.poll() is not None or not Path(f"/proc/{pid}").exists():
            raise SystemExit("the server or its worker died during the soak")
    return report(rows, stats, plan, args.broker, args.out)


def report(rows: list[dict[str, float]], stats: Stats, plan: Plan, broker: str, out: Path) -> int:
    trends = verdict(rows, plan.warmup)
    write_csv(rows, out / "samples.csv")
    title = f"sse-fast soak: {plan.seconds / 60:.0f} min, {broker} broker, warm-up {plan.warmup / 60:.1f} min shaded"
    plot(rows, trends, plan.warmup, title, out / "soak.png")
    print(f"\nsoak verdict ({len(rows)} samples, {out}/samples.csv, {out}/soak.png):")
    for tr in trends:
        print("  " + tr.line())
    print(f"  requests: {dict(sorted(stats.status.items()))}")
    print(f"  received {stats.received} (drained from mailboxes {stats.drained}), acked {stats.acked}, ")
    print(f"  reconnects {stats.reconnects}, tasks {dict(stats.tasks)}, transport errors {stats.transport_errors}")
    failed = [tr.name for tr in trends if not tr.ok]
    if failed:
        print(f"FAIL: upward trend in {', '.join(failed)}")
    if stats.server_errors:
        print(f"FAIL: {stats.server_errors} answers were 5xx")
    if not stats.received or not stats.acked or not stats.drained or not stats.tasks:
        print("FAIL: the load did not run (nothing received, acked, drained or no task)")
        return 1
    return 1 if failed or stats.server_errors else 0


if __name__ == "__main__":
    sys.exit(main())
