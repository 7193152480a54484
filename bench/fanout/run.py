"""``make bench-fanout``: sse-fast against its peers, each a real server pinned to one core.

The peers: ``granian-rsgi``, the leanest pure-Python granian RSGI app (``bench/peers/granian_rsgi_app.py``, the
floor); ``nchan``, nginx with the nchan module, a native C SSE server; ``sse-starlette`` on uvicorn. Each report
gives every peer's figures and its ratios to sse-fast's, measured in the same run.

Each contender runs as its own process pinned to core 0 (``taskset``); this runner, the load client, pins itself to
core 1. For every subscriber count N it starts the server afresh and measures, in order:

0. **send() floor**: ``send_floor.py`` measures the CPU of a plain ``socket.send`` of one frame to each of N
   loopback sockets (read by an epoll client on the other core): no server can write a frame for less.
1. **connect**: N streams opened in ten steps; server RSS after each step (slope by least squares, first step
   left out) and the kernel's socket memory (``/proc/net/sockstat`` TCP pages, ``Slab`` from ``/proc/meminfo``;
   both ends of each loopback connection).
2. **warm-up**: a few broadcasts, not measured.
3. **broadcast, one frame per write**: each broadcast is sent once every stream got the previous one (lockstep),
   so each write holds one frame: server CPU per delivery (``/proc/<pid>/stat``), deliveries/s.
4. **broadcast, burst**: broadcasts sent back to back from ``--publishers`` connections, so frames pile up per stream
   (coalesced writes): deliveries/s, CPU per delivery, frames per client read.
5. **broadcast, paced** at each of ``--rates`` broadcasts/s for ``--paced-seconds``: publish -> receive latency
   p50/p99/max (the send time is the *scheduled* time, stamped in the payload and checked at the client).
6. **topic** (1% of the streams per topic) and **direct** (one client per message): a burst and a paced phase each.

Every phase checks that each stream received exactly its sequence numbers, each once (concurrent publishers may
swap neighbours): a phase with a lost, duplicated or closed stream is reported as FAILED, not as a figure.
Output: ``bench/results/fanout.{json,md}``.

**nginx + nchan** (contender ``nchan``): Debian's nginx and ``libnginx-mod-nchan``, installed by the runner with
``apt-get`` (as root) when either is missing; ``bench/peers/nchan.conf`` filled in with the port and a private
directory, one worker process (``worker_processes 1``, ``daemon off``), connections up to the open-file limit, no
EventSource pings. Each stream (the same ``GET /sse?clientId=c<i>&topics=room.<i % 100>``) subscribes to channel
``all``, and each broadcast is a ``POST /pub?channel=all`` whose body, the payload itself, nchan sends as the
event's ``data:`` (``nchan_route``). Its stream opens with a ``: hi`` comment instead of sse-fast's ``connect``
event; the client takes either as the first frame. Messages stay in nchan's shared memory (1,000 per channel, 10
minutes: no burst outgrows it). Server CPU and memory are those of nginx's master and worker (the master's are
constant, so the slopes are the worker's). ``nchan`` runs the broadcast phases only (``BROADCAST_PHASES``): topics
and direct messages need each stream on three channels at once (nchan's multiplexing: ``all``, ``topic.room.<t>``,
``client.c<i>``), which makes every broadcast delivery dearer (here, N = 1,000: 13.3 KiB per connection instead of
10.0, about 1.4x the CPU per delivery), and the sessions cannot change a stream's channels between phases. That
configuration is contender ``nchan-mux`` (every phase, not in the default list): its topic and direct figures are
comparable with sse-fast's, its broadcast figures are not nchan at its best.

**Two workers on Redis** (contender ``sse-fast-redis-2w``, issue 7): the runner starts its own ``redis-server`` on a
free port (never 6379; ``--save "" --appendonly no``) and ``sse-fast serve --workers 2`` with
``SSE_FAST_BROKER=redis://127.0.0.1:<port>/0``. Two workers need two cores, so the workers and Redis are pinned to
cores 0 and 1, and the load client (pinned to core 1) shares a core with them: the report gives the client's CPU
and Redis's CPU next to the workers'. The kernel spreads the streams over the workers (``SO_REUSEPORT``); the report
gives each worker's share (its open sockets, from ``/proc``) and ``sse_fast_cluster_connections``. This contender
runs only the broadcast lockstep, burst and paced phases (``REDIS_PHASES``) to keep it short.

**Cost of a publish** (``--publish-cost``, when a Redis contender is selected): with one subscriber on a fresh
server, ``--publish-cost`` sequential ``POST /api/messages`` (a broadcast), one at a time, on the memory broker (one
worker), Redis with one worker (the hop alone) and Redis with two workers: the request time p50/p99 seen by the
publisher, the publish -> receive latency, and server and Redis CPU per publish.

**granian's runtime threads** (contenders ``sse-fast-rt2`` and ``granian-rsgi-rt2``, issue 17): one worker on two
cores. A granian worker runs its Python on its main thread and its socket I/O on runtime threads (Rust), even with
one of them: ``-rt2`` is ``--runtime-threads 2 --runtime-mode mt`` (one runtime over both), ``-rt2-st`` the same with
``--runtime-mode st`` (a single-threaded runtime per thread, each with its share of the connections), ``-rt1-2c``
one runtime thread (``st``) on two cores. Pinned to cores 0 and 1 like ``sse-fast-redis-2w``, so they share core 1
with the load client: the report gives the client's CPU, and the server CPU spent on the main threads (the
worker's Python). Only the broadcast lockstep, burst and paced phases (``REDIS_PHASES``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import gc
import importlib.metadata
import json
import os
import platform
import pwd
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from client import Monitor, Publisher, Subscriber, cpu_seconds, descendants, open_streams, payload, rss_bytes

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
TOPICS = 100  # each topic reaches 1% of the streams
SERVER_CORE, CLIENT_CORE = 0, 1
# The publishers are a back end: with an API key, sse-fast's per-client publish limits leave them alone.
API_KEY = "fanout-bench-key-0123456789"

# Targets of issue 17, at 10,000 subscribers: ratios against contenders of the same run (see ``_verdict``).
TARGETS = {
    "cpu_vs_floor": 1.05,  # server CPU per delivery, one frame per write, against granian-rsgi
    "cpu_vs_nchan": 1.0,  # ... and below nchan
    "p99_vs_floor": 1.05,  # p99 at 5 broadcasts/s against granian-rsgi, one core each
    "p99_rt2_vs_nchan": 1.0,  # sse-fast-rt2's p99 at 5/s below nchan's single-core one
    "kib_over_floor": 0.3,  # memory per connection, KiB above granian-rsgi's
    "burst_frames_per_s": 1_000_000,
}


#: The contenders sse-fast is compared with in the ratio lines, in the report's order.
PEERS = ("granian-rsgi", "nchan", "nchan-mux", "sse-starlette")

#: The broadcast phases alone: what nchan runs with one channel per stream.
BROADCAST_PHASES = frozenset({"broadcast-lockstep", "broadcast-burst", "broadcast-paced"})
#: The phases a Redis contender runs (burst deliveries/s and paced latency, against the single worker).
REDIS_PHASES = BROADCAST_PHASES


def sse_fast_route(kind: str, key: int, data: bytes) -> tuple[str, bytes]:
    """sse-fast's publish API (the Python peers copy it): message ``data`` to everyone, topic ``room.<key>`` or
    client ``c<key>``, as (path, body)."""
    if kind == "broadcast":
        return "/api/broadcast", b'{"message":{"type":"json","payload":%s}}' % data
    if kind == "topic":
        return "/api/messages", b'{"type":"json","topic":"room.%d","payload":%s}' % (key, data)
    return f"/api/direct/c{key}", b'{"type":"json","payload":%s}' % data


def nchan_route(kind: str, key: int, data: bytes) -> tuple[str, bytes]:
    """The same publishes on nchan (``bench/peers/nchan.conf``): ``data`` itself, to the channel every stream, the
    topic's streams or the client's stream subscribed to."""
    channel = "all" if kind == "broadcast" else f"topic.room.{key}" if kind == "topic" else f"client.c{key}"
    return f"/pub?channel={channel}", data


@dataclass
class Contender:
    name: str
    # The server's command line, given its port and a private directory (removed when the server stops).
    command: Callable[[int, Path], list[str]]
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    core_count: int = 0  # cores the server is pinned to; 0: one per worker
    redis: bool = False
    phases: frozenset[str] = frozenset()  # empty: every phase
    # Streams opened at once. The Redis contenders use 32: before branch `fix`, the Redis broker failed opens past
    # ~100 concurrent ones (redis-py's pool limit read as "Redis down": 503 / broker_unavailable closes). Fixed in
    # the server (tests/test_redis_connect.py); 32 is kept only so that the recorded results stay comparable.
    connect_concurrency: int = 256
    route: Callable[[str, int, bytes], tuple[str, bytes]] = sse_fast_route
    install: Callable[[], None] | None = None  # called before each start: installs what the server needs

    @property
    def cores(self) -> str:
        """The cores the server is pinned to: core 0, or cores 0 .. (``core_count`` or ``workers``) - 1."""
        return ",".join(str(SERVER_CORE + i) for i in range(self.core_count or self.workers))


#: The variants of one worker on cores 0 and 1: name suffix -> granian's runtime threads and mode.
RUNTIME_VARIANTS = {"-rt2": (2, "mt"), "-rt2-st": (2, "st"), "-rt1-2c": (1, "st")}


def _runtime_variants(contenders: dict[str, Contender]) -> dict[str, Contender]:
    """``contenders`` and, for sse-fast and granian-rsgi, each of ``RUNTIME_VARIANTS``: their command with
    ``--runtime-threads <threads> --runtime-mode <mode>``, pinned to two cores."""
    out = dict(contenders)
    for base in ("sse-fast", "granian-rsgi"):
        for suffix, (threads, mode) in RUNTIME_VARIANTS.items():
            c = contenders[base]
            flags = ("--runtime-threads", str(threads), "--runtime-mode", mode)
            command = lambda *a, cmd=c.command, f=flags: [*cmd(*a), *f]  # noqa: E731
            out[base + suffix] = replace(c, name=base + suffix, command=command, core_count=2, phases=REDIS_PHASES)
    return out


def _contenders() -> dict[str, Contender]:
    bindir = Path(sys.executable).parent
    fast_env = {
        "SSE_FAST_KEEPALIVE": "300",
        "SSE_FAST_HEARTBEAT": "600",
        "SSE_FAST_LOG_LEVEL": "warning",
        "SSE_FAST_SHUTDOWN_GRACE": "1",
        "SSE_FAST_API_KEYS": API_KEY,
    }

    def fast(workers: int) -> Callable[[int, Path], list[str]]:
        return lambda port, _dir: [
            *(str(bindir / "sse-fast"), "serve", "--host", HOST, "--port", str(port)),
            *(("--workers", str(workers)) if workers > 1 else ()),
        ]

    return {
        "sse-fast": Contender("sse-fast", fast(1), fast_env),
        "sse-fast-redis-2w": Contender(
            "sse-fast-redis-2w", fast(2), fast_env, workers=2, redis=True, phases=REDIS_PHASES, connect_concurrency=32
        ),
        # Only for --publish-cost: the Redis hop without the second worker.
        "sse-fast-redis-1w": Contender(
            "sse-fast-redis-1w", fast(1), fast_env, workers=1, redis=True, phases=REDIS_PHASES, connect_concurrency=32
        ),
        "sse-starlette": Contender(
            "sse-starlette",
            lambda port, _dir: (
                [sys.executable, str(ROOT / "bench/peers/sse_starlette_app.py"), "--port", str(port), "--ping", "300"]
            ),
        ),
        "granian-rsgi": Contender(
            "granian-rsgi",
            lambda port, _dir: [sys.executable, str(ROOT / "bench/peers/granian_rsgi_app.py"), "--port", str(port)],
            {"PYTHONPATH": str(ROOT / "bench/peers")},
        ),
        # One channel per stream, nchan's leanest broadcast: the broadcast phases only.
        "nchan": Contender(
            "nchan",
            functools.partial(_nginx_command, channels="all"),
            route=nchan_route,
            install=_install_nchan,
            phases=BROADCAST_PHASES,
        ),
        # Three channels per stream (nchan's multiplexing), as an sse-fast stream hears all, its topic and its id.
        "nchan-mux": Contender(
            "nchan-mux",
            functools.partial(_nginx_command, channels=NCHAN_MUX),
            route=nchan_route,
            install=_install_nchan,
        ),
    }


# -- nginx + nchan -----------------------------------------------------------------------------------------------

NCHAN_PACKAGES = ("nginx-light", "libnginx-mod-nchan")
#: The channels of a stream of nchan-mux: everyone, its topic, its client id (``nchan_route`` publishes to one).
NCHAN_MUX = "all topic.$arg_topics client.$arg_clientId"
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")  # where libnginx-mod-nchan puts it (dpkg -L)


def _nginx() -> str | None:
    return shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))


def _install_nchan() -> None:
    """Debian's nginx and nchan module, installed with apt-get (as root) when either is missing."""
    if _nginx() is not None and NCHAN_MODULE.exists():
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"nchan needs nginx and {NCHAN_MODULE}: apt-get install {' '.join(NCHAN_PACKAGES)} as root")
    print(f"installing {' '.join(NCHAN_PACKAGES)} (apt-get)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *NCHAN_PACKAGES]
    try:
        if subprocess.run(install, env=env, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, check=False)  # a stale package index: 404s
            subprocess.run(install, env=env, check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        raise RuntimeError(f"apt-get install {' '.join(NCHAN_PACKAGES)} failed: {err}") from err
    if _nginx() is None or not NCHAN_MODULE.exists():
        raise RuntimeError(f"nginx or {NCHAN_MODULE} still missing after apt-get install")


def _nginx_command(port: int, workdir: Path, *, channels: str) -> list[str]:
    """``bench/peers/nchan.conf`` filled in under ``workdir`` (with its pid file and temp paths), each stream
    subscribed to ``channels``; errors to stderr."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fields = {
        "MODULE": str(NCHAN_MODULE),
        "PORT": str(port),
        "CHANNELS": channels,
        "PREFIX": str(workdir),
        "NOFILE": str(hard),
        "USER": pwd.getpwuid(os.geteuid()).pw_name,
    }
    conf = (ROOT / "bench/peers/nchan.conf").read_text()
    for key, value in fields.items():
        conf = conf.replace(f"@{key}@", value)
    (workdir / "nginx.conf").write_text(conf)
    nginx = _nginx() or "nginx"
    return [nginx, "-p", str(workdir), "-e", "stderr", "-c", str(workdir / "nginx.conf")]


# -- the server process ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` for one session: a free port (never 6379), no persistence, pinned like the server."""

    def __init__(self, cores: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("the Redis contender needs redis-server")
        self.port = _free_port()
        assert self.port != 6379, "never touch the shared Redis"
        self.dir = tempfile.TemporaryDirectory(prefix="fanout-redis-")
        args = [binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        args += ["--dir", self.dir.name, "--daemonize", "no", "--loglevel", "warning"]
        self.proc = subprocess.Popen(
            ["taskset", "-c", cores, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not answer PING within 10 s")

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def cpu(self) -> float:
        user, system = cpu_seconds(self.proc.pid)
        return user + system

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.dir.cleanup()


def _sockets(pid: int) -> int:
    """Open sockets of ``pid`` (from ``/proc/<pid>/fd``)."""
    count = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


class Server:
    """A contender's process, pinned to ``SERVER_CORE`` (or cores 0 .. workers - 1), and its Redis if it has one."""

    def __init__(self, contender: Contender) -> None:
        self.contender = contender
        if contender.install is not None:
            contender.install()
        self.port = _free_port()
        self.dir = tempfile.TemporaryDirectory(prefix=f"fanout-{contender.name}-")
        self.redis = RedisServer(contender.cores) if contender.redis else None
        env = {**os.environ, **contender.env}
        if self.redis is not None:
            env["SSE_FAST_BROKER"] = self.redis.url
        cmd = ["taskset", "-c", contender.cores, *contender.command(self.port, Path(self.dir.name))]
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, start_new_session=True)
        try:
            self._wait_ready()
            self.pids = self._wait_workers()
        except RuntimeError:
            self.stop()
            raise

    def _wait_workers(self) -> list[int]:
        """With several workers: every worker process is up and answers (granian's main process is one more)."""
        deadline = time.monotonic() + 30
        while True:
            pids = descendants(self.proc.pid)
            if self.contender.workers == 1 or len(pids) > self.contender.workers:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.contender.name}: {len(pids)} processes, not {self.contender.workers + 1}")
            time.sleep(0.1)
        time.sleep(0.5 if self.contender.workers > 1 else 0)
        return pids

    def split(self) -> dict[str, int]:
        """Open sockets per server process (streams, publishers, listener and Redis connections)."""
        return {str(p): _sockets(p) for p in self.pids}

    def redis_cpu(self) -> float:
        return self.redis.cpu() if self.redis is not None else 0.0

    def metric(self, name: str) -> float | None:
        """One gauge from ``/metrics``: its first sample (with several workers each has a ``worker`` label, and a
        cluster-wide gauge reads the same in every worker)."""
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith((name + " ", name + "{")):
                return float(line.rsplit(maxsplit=1)[1])
        return None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.contender.name} exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.contender.name} did not answer /healthz within 30 s")

    def main_thread_cpu(self) -> float:
        """CPU seconds of the main threads of the server's processes: a granian worker runs its Python there, and its
        socket I/O on its runtime threads (the others)."""
        total = 0.0
        for pid in self.pids:
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def switches(self) -> tuple[int, int]:
        """(voluntary, involuntary) context switches of every thread of the server's processes, so far: a thread that
        sleeps and is woken for each write shows up here before it shows up anywhere else."""
        voluntary = involuntary = 0
        for pid in self.pids:
            with contextlib.suppress(OSError):
                for tid in os.listdir(f"/proc/{pid}/task"):
                    with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/status") as f:
                        for line in f:
                            if line.startswith("voluntary_ctxt_switches:"):
                                voluntary += int(line.split()[1])
                            elif line.startswith("nonvoluntary_ctxt_switches:"):
                                involuntary += int(line.split()[1])
        return voluntary, involuntary

    def cpu(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the server's processes."""
        times = [cpu_seconds(p) for p in self.pids]
        return sum(u for u, _ in times), sum(s for _, s in times)

    def rss(self) -> int:
        return sum(rss_bytes(p) for p in self.pids)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self.redis is not None:
            self.redis.stop()
        self.dir.cleanup()


# -- kernel memory -----------------------------------------------------------------------------------------------


def _kernel() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            if key in ("Slab", "SUnreclaim", "MemAvailable"):
                out[key] = int(value.split()[0]) * 1024
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()
                out["tcp_mem"] = int(parts[parts.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE")
    return out


def _slope(xs: list[int], ys: list[int]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


# -- one benchmark session ---------------------------------------------------------------------------------------


class Session:
    """N streams held against one server, and the phases run over them."""

    def __init__(self, server: Server, n: int, args: argparse.Namespace) -> None:
        self.server, self.n, self.args = server, n, args
        self.mon = Monitor(n)
        self.subs: list[Subscriber] = []
        self.pubs: list[Publisher] = []
        self.retries = 0

    def _path(self, idx: int) -> str:
        return f"/sse?clientId=c{idx}&topics=room.{idx % TOPICS}"

    async def connect(self) -> dict[str, Any]:
        steps = 10
        counts, rss = [0], [self.server.rss()]
        kernel0 = _kernel()
        t0 = time.perf_counter()
        for step in range(steps):
            lo, hi = self.n * step // steps, self.n * (step + 1) // steps
            self.subs += await open_streams(
                HOST,
                self.server.port,
                range(lo, hi),
                self.mon,
                path=self._path,
                concurrency=self.server.contender.connect_concurrency,
            )
            await asyncio.sleep(0.3)
            counts.append(hi)
            rss.append(self.server.rss())
        elapsed = time.perf_counter() - t0
        kernel1 = _kernel()
        self.pubs = [
            await Publisher.connect(HOST, self.server.port, api_key=API_KEY) for _ in range(self.args.publishers)
        ]
        slope = _slope(counts[1:], rss[1:])
        return {
            "streams": self.n,
            "seconds": round(elapsed, 2),
            "rss_bytes_per_connection": round(slope),
            "kib_per_connection": round(slope / 1024, 2),
            "rss_before": rss[0],
            "rss_after": rss[-1],
            "kernel_tcp_mem_bytes_per_connection": round((kernel1["tcp_mem"] - kernel0["tcp_mem"]) / self.n),
            "kernel_slab_bytes_per_connection": round((kernel1["Slab"] - kernel0["Slab"]) / self.n),
            "kernel_note": "both ends of each loopback connection (client and server sockets); machine-wide",
            "samples": list(zip(counts, rss, strict=True)),
            **(await self._split() if self.server.contender.workers > 1 else {}),
        }

    async def _split(self) -> dict[str, Any]:
        """How the kernel spread the streams over the workers, and what the cluster count says."""
        await asyncio.sleep(2.5)  # the cluster count is refreshed once a second, from each worker's heartbeat
        return {
            "sockets_per_process": self.server.split(),
            "split_note": "open sockets per server process: streams + publishers + listener + Redis connections",
            "cluster_connections": self.server.metric("sse_fast_cluster_connections"),
            "cluster_nodes": self.server.metric("sse_fast_cluster_nodes"),
        }

    # -- what each phase sends, and what each stream must then receive ---------------------------------------------

    def _message(self, kind: str, j: int, t_ns: int | None = None) -> tuple[str, bytes, int]:
        """Message ``j`` of a phase, in the contender's publish API: (path, body, deliveries)."""
        if kind == "broadcast":
            seq, key, reach = j, 0, self.n
        elif kind == "topic":
            seq, key = j // TOPICS, j % TOPICS
            reach = len(range(key, self.n, TOPICS))
        else:
            seq, key, reach = j // self.n, j % self.n, 1
        path, body = self.server.contender.route(kind, key, payload(seq, t_ns=t_ns))
        return path, body, reach

    def _expected(self, kind: str, count: int) -> list[int]:
        if kind == "broadcast":
            return [count] * self.n
        if kind == "topic":
            return [len(range(i % TOPICS, count, TOPICS)) for i in range(self.n)]
        return [len(range(i, count, self.n)) for i in range(self.n)]

    async def _post(self, pub: Publisher, path: str, body: bytes, errors: list[str]) -> None:
        for attempt in (1, 2):
            await pub.ensure_open()
            try:
                status, answer = await pub.post(path, body)
                break
            except ConnectionError as err:
                # An idle keep-alive connection the server closed as we wrote: the request was not read. Were it
                # read after all, the repeat would show as a duplicate, and the phase would fail.
                if attempt == 2:
                    errors.append(f"{path}: {err}")
                    return
                self.retries += 1
        if not 200 <= status < 300:  # nchan answers 201 (published to subscribers) or 202 (none)
            errors.append(f"{path}: {status} {answer[:200]!r}")

    async def phase(
        self, kind: str, mode: str, count: int, *, rate: float = 0.0, measure: bool = True
    ) -> dict[str, Any]:
        """Send ``count`` messages of ``kind`` (lockstep, burst or paced) and check what every stream received."""
        expected = self._expected(kind, count)
        total = sum(expected)
        self.mon.reset(expected, latency=mode == "paced")
        self.retries = 0
        errors: list[str] = []
        gc.collect()
        gc.disable()
        cpu0, me0, t0 = self.server.cpu(), os.times(), time.perf_counter()
        redis0, main0, switches0 = self.server.redis_cpu(), self.server.main_thread_cpu(), self.server.switches()
        if mode == "lockstep":
            due = 0
            for j in range(count):
                path, body, reach = self._message(kind, j)
                due += reach
                await self._post(self.pubs[0], path, body, errors)
                await asyncio.wait_for(self.mon.wait_for(due), self.args.timeout)
        elif mode == "burst":
            await self._burst(kind, count, errors)
        else:
            await self._paced(kind, count, rate, errors)
        sent_at = time.perf_counter()
        timed_out = False
        try:
            done_at = await asyncio.wait_for(self.mon.wait_for(total), self.args.timeout)
        except TimeoutError:
            timed_out, done_at = True, time.perf_counter()
        cpu1, me1 = self.server.cpu(), os.times()
        redis_cpu, main_cpu = self.server.redis_cpu() - redis0, self.server.main_thread_cpu() - main0
        switches = [after - before for after, before in zip(self.server.switches(), switches0, strict=True)]
        await asyncio.sleep(0.3)  # late duplicates would show up here
        gc.enable()
        verdict = self.mon.verdict()
        elapsed = done_at - t0
        server_user, server_sys = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        server_cpu = server_user + server_sys
        client_cpu = (me1.user - me0.user) + (me1.system - me0.system)
        ok = not errors and not timed_out and not any(verdict.values())
        result: dict[str, Any] = {
            "kind": kind,
            "mode": mode,
            "messages": count,
            "deliveries": total,
            "ok": ok,
            **verdict,
            "http_errors": errors[:5],
            "timed_out": timed_out,
            "publish_retries": self.retries,
            "seconds": round(elapsed, 3),
            "send_seconds": round(sent_at - t0, 3),
            "server_cpu_s": round(server_cpu, 3),
            "server_system_share": round(server_sys / server_cpu, 2) if server_cpu else None,
            "client_cpu_s": round(client_cpu, 3),
            "deliveries_per_s": round(total / elapsed) if elapsed > 0 else None,
            "server_cpu_us_per_delivery": round(server_cpu * 1e6 / total, 2) if total else None,
            "server_main_thread_us_per_delivery": round(main_cpu * 1e6 / total, 2) if total else None,
            "client_cpu_us_per_delivery": round(client_cpu * 1e6 / total, 2) if total else None,
            "server_switches_per_delivery": [round(n / total, 3) for n in switches] if total else None,
            "frames_per_read": round(self.mon.received / self.mon.reads, 2) if self.mon.reads else None,
        }
        if self.server.redis is not None:
            result["redis_cpu_s"] = round(redis_cpu, 3)
            result["redis_cpu_us_per_delivery"] = round(redis_cpu * 1e6 / total, 2) if total else None
        if rate:
            result["rate_per_s"] = rate
        if self.mon.latencies:
            lat = sorted(self.mon.latencies)
            result["latency_ms"] = {
                "p50": round(lat[len(lat) // 2] / 1e6, 2),
                "p99": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1e6, 2),
                "max": round(lat[-1] / 1e6, 2),
                "samples": len(lat),
            }
        return result

    async def _burst(self, kind: str, count: int, errors: list[str]) -> None:
        queue = iter(range(count))

        async def worker(pub: Publisher) -> None:
            for j in queue:
                path, body, _ = self._message(kind, j)
                await self._post(pub, path, body, errors)

        await asyncio.gather(*(worker(p) for p in self.pubs))

    async def _paced(self, kind: str, count: int, rate: float, errors: list[str]) -> None:
        free: asyncio.Queue[Publisher] = asyncio.Queue()
        for pub in self.pubs:
            free.put_nowait(pub)
        start_ns = time.time_ns()
        start = time.perf_counter()
        tasks = []

        async def send(j: int) -> None:
            # Stamp the scheduled time, not the actual one: a server that answers late is charged for it.
            path, body, _ = self._message(kind, j, t_ns=start_ns + int(j * 1e9 / rate))
            pub = await free.get()
            try:
                await self._post(pub, path, body, errors)
            finally:
                free.put_nowait(pub)

        for j in range(count):
            delay = start + j / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(j)))
        await asyncio.gather(*tasks)

    def close(self) -> None:
        for sub in self.subs:
            sub.close()
        for pub in self.pubs:
            pub.close()


# -- the plan ----------------------------------------------------------------------------------------------------


def _counts(n: int, args: argparse.Namespace) -> dict[str, int]:
    return {
        "lockstep": max(10, min(200, args.deliveries // n)),
        "burst": max(16, min(200, 8 * args.deliveries // n // 8)),
        "topic_burst": max(TOPICS, args.deliveries // max(1, n // TOPICS)),
        "direct_burst": args.direct,
    }


async def run_session(contender: Contender, n: int, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"contender": contender.name, "n": n, "phases": []}
    try:
        server = Server(contender)
    except RuntimeError as err:
        out["error"] = str(err)
        return out
    session = Session(server, n, args)
    try:
        print(f"[{contender.name} N={n}] connecting", flush=True)
        out["connect"] = await session.connect()
        print(f"  {out['connect']['kib_per_connection']} KiB/connection", flush=True)
        await session.phase("broadcast", "lockstep", 5, measure=False)
        counts = _counts(n, args)
        plan: list[tuple[str, str, int, float]] = [
            ("broadcast", "lockstep", counts["lockstep"], 0.0),
            ("broadcast", "burst", counts["burst"], 0.0),
            *(("broadcast", "paced", max(1, round(rate * args.paced_seconds)), rate) for rate in args.rates),
            ("topic", "burst", counts["topic_burst"], 0.0),
            ("topic", "paced", round(args.topic_rate * args.paced_seconds), args.topic_rate),
            ("direct", "burst", counts["direct_burst"], 0.0),
            ("direct", "paced", round(args.direct_rate * args.paced_seconds), args.direct_rate),
        ]
        for kind, mode, count, rate in plan:
            if args.phases and f"{kind}-{mode}" not in args.phases:
                continue
            if contender.phases and f"{kind}-{mode}" not in contender.phases:
                continue
            profiler = _profiler(server, f"{contender.name}-{n}-{kind}-{mode}", args) if mode != "paced" else None
            result = await session.phase(kind, mode, count, rate=rate)
            if profiler is not None:
                result["profile"] = _stop_profiler(profiler)
            out["phases"].append(result)
            print(f"  {_summary(result)}", flush=True)
    except Exception as err:
        out["error"] = f"{type(err).__name__}: {err}"
        print(f"  ERROR {out['error']}", flush=True)
    finally:
        session.close()
        await asyncio.sleep(0.5)
        server.stop()
    return out


async def publish_cost(contender: Contender, args: argparse.Namespace) -> dict[str, Any]:
    """``args.publish_cost`` sequential ``POST /api/messages`` (broadcasts) to one subscriber: a publish's cost."""
    out: dict[str, Any] = {"contender": contender.name, "workers": contender.workers, "redis": contender.redis}
    try:
        server = Server(contender)
    except RuntimeError as err:
        out["error"] = str(err)
        return out
    mon = Monitor(1)
    subs: list[Subscriber] = []
    pub: Publisher | None = None
    try:
        subs = await open_streams(HOST, server.port, range(1), mon, path=lambda i: f"/sse?clientId=c{i}")
        pub = await Publisher.connect(HOST, server.port, api_key=API_KEY)
        if contender.workers > 1:
            out["sockets_per_process"] = server.split()

        async def run(count: int) -> dict[str, Any]:
            mon.reset([count], latency=True)
            times: list[int] = []
            errors: list[str] = []
            gc.collect()
            gc.disable()
            cpu0, redis0 = sum(server.cpu()), server.redis_cpu()
            for j in range(count):
                body = b'{"type":"json","payload":%s}' % payload(j)
                t = time.perf_counter_ns()
                status, answer = await pub.post("/api/messages", body)
                times.append(time.perf_counter_ns() - t)
                if status not in (200, 202):
                    errors.append(f"{status} {answer[:200]!r}")
            timed_out = False
            try:
                await asyncio.wait_for(mon.wait_for(count), args.timeout)
            except TimeoutError:
                timed_out = True
            cpu, redis_cpu = sum(server.cpu()) - cpu0, server.redis_cpu() - redis0
            await asyncio.sleep(0.3)
            gc.enable()
            verdict = mon.verdict()
            times.sort()
            lat = sorted(mon.latencies or [0])
            q = lambda xs, f: round(xs[min(len(xs) - 1, int(len(xs) * f))] / 1e3)  # noqa: E731
            return {
                "publishes": count,
                "ok": not errors and not timed_out and not any(verdict.values()),
                **verdict,
                "http_errors": errors[:5],
                "timed_out": timed_out,
                "request_us": {"p50": q(times, 0.5), "p99": q(times, 0.99), "max": round(times[-1] / 1e3)},
                "publish_to_receive_us": {"p50": q(lat, 0.5), "p99": q(lat, 0.99), "max": round(lat[-1] / 1e3)},
                "server_cpu_us_per_publish": round(cpu * 1e6 / count, 1),
                **({"redis_cpu_us_per_publish": round(redis_cpu * 1e6 / count, 1)} if server.redis else {}),
            }

        await run(50)  # warm-up
        out.update(await run(args.publish_cost))
    except Exception as err:
        out["error"] = f"{type(err).__name__}: {err}"
    finally:
        for sub in subs:
            sub.close()
        if pub is not None:
            pub.close()
        await asyncio.sleep(0.3)
        server.stop()
    if "error" in out:
        print(f"[publish cost {contender.name}] ERROR {out['error']}", flush=True)
    else:
        print(
            f"[publish cost {contender.name}] ok={out['ok']} request p50 {out['request_us']['p50']} us"
            f" p99 {out['request_us']['p99']} us; publish->receive p50 {out['publish_to_receive_us']['p50']} us"
            f" p99 {out['publish_to_receive_us']['p99']} us; server {out['server_cpu_us_per_publish']} us CPU"
            + (f", redis {out['redis_cpu_us_per_publish']} us" if "redis_cpu_us_per_publish" in out else ""),
            flush=True,
        )
    return out


def _profiler(server: Server, name: str, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], Path] | None:
    """py-spy (with native frames) on the server's busiest process, for the length of one phase."""
    if not args.profile:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("  --profile needs py-spy (pip install py-spy)", flush=True)
        return None
    worker = max(server.pids, key=lambda p: sum(cpu_seconds(p)))
    out = Path(args.profile) / f"{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    # --native and --nonblocking exclude each other (py-spy 0.4): sampling pauses the worker briefly.
    cmd = [spy, "record", "--native", "--pid", str(worker), "--format", "raw", "-r", "100"]
    proc = subprocess.Popen([*cmd, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # let it attach before the phase starts
    return proc, out


def _stop_profiler(profiler: tuple[subprocess.Popen[bytes], Path]) -> str:
    proc, out = profiler
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    return str(out)


def _summary(r: dict[str, Any]) -> str:
    head = f"{r['kind']:9} {r['mode']:8}" + (f" {r['rate_per_s']}/s" if "rate_per_s" in r else "")
    if not r["ok"]:
        return f"{head} FAILED lost={r['lost']} dup={r['duplicated']} closed={r['closed']} " + (
            f"timeout={r['timed_out']} errors={r['http_errors']}"
        )
    text = (
        f"{head} {r['deliveries']} deliveries in {r['seconds']} s: {r['deliveries_per_s']}/s, "
        f"server {r['server_cpu_us_per_delivery']} us/delivery ({r['server_system_share']} in kernel), "
        f"client {r['client_cpu_us_per_delivery']} us, {r['frames_per_read']} frames/read"
    )
    if "latency_ms" in r:
        lat = r["latency_ms"]
        text += f", latency p50 {lat['p50']} p99 {lat['p99']} max {lat['max']} ms"
    return text


# -- the report --------------------------------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    versions: dict[str, str | None] = {}
    for dist in ("sse-fast", "granian", "uvloop", "msgspec", "sse-starlette", "starlette", "uvicorn", "httptools"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    for package in ("nginx", "libnginx-mod-nchan"):
        versions[package] = _debian_version(package)
    load = os.getloadavg()
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout
    except OSError:
        commit = ""
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in load],
        "versions": versions,
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit.strip(),
    }


def _debian_version(package: str) -> str | None:
    """An installed Debian package's version (nginx and nchan are not Python distributions)."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() or None


def _phase(sess: dict[str, Any], kind: str, mode: str, rate: float | None = None) -> dict[str, Any] | None:
    for p in sess.get("phases", []):
        if p["kind"] == kind and p["mode"] == mode and (rate is None or p.get("rate_per_s") == rate):
            return p
    return None


def _cell(p: dict[str, Any] | None, get: Callable[[dict[str, Any]], Any]) -> str:
    if p is None:
        return "n/a"
    if not p["ok"]:
        return f"FAILED (lost {p['lost']}, dup {p['duplicated']}, closed {p['closed']}, timeout {p['timed_out']})"
    value = get(p)
    return "n/a" if value is None else f"{value:,}" if isinstance(value, int) else f"{value}"


def _rows(args: argparse.Namespace) -> list[tuple[str, Callable[[dict[str, Any]], str], str]]:
    rows: list[tuple[str, Callable[[dict[str, Any]], str], str]] = [
        (
            "memory per connection, KiB (RSS slope)",
            lambda s: str(s.get("connect", {}).get("kib_per_connection")),
            "<= the floor's + 0.3",
        ),
        (
            "kernel memory per connection, KiB (Slab slope, both ends, machine-wide)",
            lambda s: str(round(s.get("connect", {}).get("kernel_slab_bytes_per_connection", 0) / 1024, 2)),
            "",
        ),
    ]
    metrics: list[tuple[str, str, float | None, str, Callable[[dict[str, Any]], Any], str]] = [
        (
            "broadcast",
            "lockstep",
            None,
            "server CPU us/delivery, broadcast, 1 frame/write",
            lambda p: p["server_cpu_us_per_delivery"],
            "<= 1.05x the floor's, < nchan's",
        ),
        (
            "broadcast",
            "lockstep",
            None,
            "client CPU us/delivery (same phase)",
            lambda p: p["client_cpu_us_per_delivery"],
            "",
        ),
        (
            "broadcast",
            "lockstep",
            None,
            "server context switches per delivery, voluntary / involuntary (same phase)",
            lambda p: (
                " / ".join(map(str, p["server_switches_per_delivery"])) if "server_switches_per_delivery" in p else None
            ),
            "",
        ),
        (
            "broadcast",
            "burst",
            None,
            f"deliveries/s, broadcast burst ({args.publishers} publishers)",
            lambda p: p["deliveries_per_s"],
            ">= 1,000,000",
        ),
        (
            "broadcast",
            "burst",
            None,
            "server CPU us/delivery, broadcast burst",
            lambda p: p["server_cpu_us_per_delivery"],
            "",
        ),
        ("broadcast", "burst", None, "frames per client read, broadcast burst", lambda p: p["frames_per_read"], ""),
    ]
    for rate in args.rates:
        target = "<= 1.05x the floor's" if rate == 5 else ""
        metrics.append(
            (
                "broadcast",
                "paced",
                rate,
                f"latency p50 / p99 / max ms, broadcast {rate:g}/s",
                lambda p: "{p50} / {p99} / {max}".format(**p["latency_ms"]),
                target + (" (p99)" if target else ""),
            )
        )
    metrics += [
        (
            "topic",
            "burst",
            None,
            "server CPU us/delivery, topic (1%) burst",
            lambda p: p["server_cpu_us_per_delivery"],
            "",
        ),
        ("topic", "burst", None, "deliveries/s, topic burst", lambda p: p["deliveries_per_s"], ""),
        (
            "topic",
            "paced",
            None,
            f"latency p50 / p99 / max ms, topic {args.topic_rate:g}/s",
            lambda p: "{p50} / {p99} / {max}".format(**p["latency_ms"]),
            "",
        ),
        (
            "direct",
            "burst",
            None,
            "server CPU us/delivery, direct burst",
            lambda p: p["server_cpu_us_per_delivery"],
            "",
        ),
        ("direct", "burst", None, "deliveries/s, direct burst", lambda p: p["deliveries_per_s"], ""),
        (
            "direct",
            "paced",
            None,
            f"latency p50 / p99 / max ms, direct {args.direct_rate:g}/s",
            lambda p: "{p50} / {p99} / {max}".format(**p["latency_ms"]),
            "",
        ),
    ]
    for kind, mode, rate, label, get, target in metrics:
        rows.append((label, lambda s, k=kind, m=mode, r=rate, g=get: _cell(_phase(s, k, m, r), g), target))
    return rows


def _peer_ratios(sessions: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, dict[str, float | None]]:
    """``_ratios`` of each peer in ``PEERS`` that ran next to sse-fast in ``sessions`` (one N)."""
    fast = sessions.get("sse-fast")
    if fast is None:
        return {}
    return {peer: _ratios(fast, sessions[peer], args) for peer in PEERS if peer in sessions}


def _ratios(fast: dict[str, Any], peer: dict[str, Any], args: argparse.Namespace) -> dict[str, float | None]:
    """peer / sse-fast for CPU per delivery, memory per connection, burst time and paced p99: above 1, sse-fast
    spends less."""

    def ratio(get: Callable[[dict[str, Any]], float | None]) -> float | None:
        try:
            a, b = get(fast), get(peer)
        except (KeyError, TypeError):
            return None
        return round(b / a, 2) if a and b else None

    def ok(p: dict[str, Any] | None) -> dict[str, Any]:
        if p is None or not p["ok"]:
            raise KeyError("failed phase")
        return p

    out = {
        "cpu_per_delivery": ratio(lambda s: ok(_phase(s, "broadcast", "lockstep"))["server_cpu_us_per_delivery"]),
        "memory_per_connection": ratio(lambda s: s["connect"]["rss_bytes_per_connection"]),
        "burst_throughput": ratio(lambda s: 1 / ok(_phase(s, "broadcast", "burst"))["deliveries_per_s"]),
    }
    for rate in args.rates:
        out[f"p99_broadcast_{rate:g}_per_s"] = ratio(
            lambda s, r=rate: ok(_phase(s, "broadcast", "paced", r))["latency_ms"]["p99"]
        )
    return out


def render(report: dict[str, Any], args: argparse.Namespace) -> str:
    m = report["machine"]
    lines = [
        "# bench/fanout: sse-fast against the granian floor, nginx + nchan and sse-starlette",
        "",
        "Numbers depend on the machine, and on what else runs on it: read the ratios (every contender measured in",
        "the same run, on the same core) before the absolute figures.",
        "",
        f"- date {m['date']}, commit {m.get('commit') or 'unknown'}; {m['cpu']}, {m['cores']} cores,"
        f" Linux {m['kernel']}, Python {m['python']};"
        f" load average at start {m['loadavg_at_start']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"- server pinned to core {SERVER_CORE}, load client (this runner, asyncio + uvloop, raw sockets) to core"
        f" {CLIENT_CORE}; payload about 100 bytes; keepalive comments off (300 s or more) in every server",
        "- granian-rsgi (the floor) keeps no index: its topic and direct figures scan every stream per message",
        "- nchan: nginx with one worker process (`bench/peers/nchan.conf`), each stream on one channel, broadcast"
        " phases only (nchan-mux: three channels per stream, everyone, its topic, its client id, and every phase);"
        " a frame is nchan's `id:` line and the bare payload (131 bytes; sse-fast's, with its envelope and chunk"
        " framing, 258); server CPU and memory are nginx's master's and worker's (the master's are constant)",
        f"- command: `{report['command']}`",
    ]
    if report.get("note"):
        lines.append(f"- conditions: {report['note']}")
    lines.append("")
    for n in report["ns"]:
        sessions = {s["contender"]: s for s in report["sessions"] if s["n"] == n}
        names = [c for c in report["contenders"] if c in sessions]
        lines += [f"## N = {n:,} subscribers", ""]
        floor = report.get("send_floor", {}).get(str(n), {})
        if "us_per_send" in floor:
            lines += [
                f"Loopback `send()` floor on this machine at N = {n:,}: {floor['us_per_send']} us of CPU per send"
                f" ({floor['us_system']} us in the kernel), plain `socket.send` of one frame to each socket in turn"
                " (`bench/fanout/send_floor.py`).",
                "",
            ]
        lines.append("| metric | " + " | ".join(names) + " | target (sse-fast, N = 10,000, issue 17) |")
        lines.append("|---|" + "---|" * len(names) + "---|")
        for label, get, target in _rows(args):
            lines.append(f"| {label} | " + " | ".join(get(sessions[c]) for c in names) + f" | {target} |")
        for c in names:
            if "error" in sessions[c]:
                lines.append(f"\n**{c}: run aborted: {sessions[c]['error']}**")
        ratios = _peer_ratios(sessions, args)
        if ratios:
            lines += ["", "Each peer / sse-fast in this run (higher is better for sse-fast):", ""]
            lines += [f"- {peer}: " + ", ".join(f"{k} {v}x" for k, v in r.items()) for peer, r in ratios.items()]
            lines.append("")
        lines.append("")
    lines += _redis_section(report, args)
    lines += _runtime_section(report, args)
    lines += _verdict(report, args)
    return "\n".join(lines) + "\n"


def _redis_section(report: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Two workers on Redis against one worker on the memory broker, and the cost of a publish."""
    lines: list[str] = []
    redis = [c for c in report["contenders"] if c.startswith("sse-fast-redis")]
    if redis:
        lines += [
            "## Two workers on Redis against one worker on the memory broker",
            "",
            "sse-fast-redis-2w: `sse-fast serve --workers 2` with `SSE_FAST_BROKER=redis://127.0.0.1:<free port>/0`, a"
            ' private `redis-server --save "" --appendonly no`; the workers and Redis are pinned to cores 0 and 1, so'
            " they share core 1 with the load client (sse-fast, one worker, keeps core 0 to itself). Server CPU is the"
            " workers' (and granian's main process); Redis CPU is given apart.",
            "",
        ]
    for n in report["ns"]:
        sessions = {s["contender"]: s for s in report["sessions"] if s["n"] == n}
        names = [c for c in ("sse-fast", *redis) if c in sessions]
        if not redis or not any(c in sessions for c in redis):
            continue
        rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
            ("server sockets per process (granian main, workers)", lambda s: _split_cell(s)),
            ("sse_fast_cluster_connections", lambda s: str(s.get("connect", {}).get("cluster_connections", "n/a"))),
        ]
        for label, kind_mode, get in (
            ("deliveries/s, broadcast burst", "burst", lambda p: p["deliveries_per_s"]),
            ("server CPU us/delivery, broadcast burst", "burst", lambda p: p["server_cpu_us_per_delivery"]),
            ("Redis CPU us/delivery, broadcast burst", "burst", lambda p: p.get("redis_cpu_us_per_delivery")),
            ("client CPU us/delivery, broadcast burst", "burst", lambda p: p["client_cpu_us_per_delivery"]),
            ("frames per client read, broadcast burst", "burst", lambda p: p["frames_per_read"]),
            ("deliveries/s, broadcast lockstep (1 frame/write)", "lockstep", lambda p: p["deliveries_per_s"]),
            ("server CPU us/delivery, lockstep", "lockstep", lambda p: p["server_cpu_us_per_delivery"]),
        ):
            rows.append((label, lambda s, m=kind_mode, g=get: _cell(_phase(s, "broadcast", m), g)))
        for rate in args.rates:
            rows.append(
                (
                    f"latency p50 / p99 / max ms, broadcast {rate:g}/s",
                    lambda s, r=rate: _cell(
                        _phase(s, "broadcast", "paced", r), lambda p: "{p50} / {p99} / {max}".format(**p["latency_ms"])
                    ),
                )
            )
        rows.append(
            (
                "zero loss, zero duplicates, every phase run",
                lambda s: "yes" if "error" not in s and all(p["ok"] for p in s.get("phases", [])) else "NO",
            )
        )
        lines += [f"### N = {n:,}", "", "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for label, get in rows:
            lines.append(f"| {label} | " + " | ".join(get(sessions[c]) for c in names) + " |")
        one, two = sessions.get("sse-fast"), sessions.get("sse-fast-redis-2w")
        if one and two:
            ratio = []
            a, b = _phase(one, "broadcast", "burst"), _phase(two, "broadcast", "burst")
            if a and b and a["ok"] and b["ok"]:
                ratio.append(f"burst deliveries/s {b['deliveries_per_s'] / a['deliveries_per_s']:.2f}x")
            for rate in args.rates:
                a, b = _phase(one, "broadcast", "paced", rate), _phase(two, "broadcast", "paced", rate)
                if a and b and a["ok"] and b["ok"]:
                    ratio.append(f"p99 at {rate:g}/s {b['latency_ms']['p99'] / a['latency_ms']['p99']:.2f}x")
            if ratio:
                lines += ["", "two workers on Redis / one worker on memory: " + ", ".join(ratio)]
        lines.append("")
    cost = report.get("publish_cost")
    if cost:
        lines += [
            "### Cost of a publish",
            "",
            f"One subscriber; {args.publish_cost} sequential `POST /api/messages` (a broadcast, about 100 bytes), one"
            " request in flight, after 50 not measured. Request time as the publisher sees it (on loopback; with Redis"
            " the answer waits until the worker's reader has routed the entry). CPU from `/proc`, 10 ms ticks.",
            "",
            "| broker | request p50 / p99 / max us | publish -> receive p50 / p99 us | server CPU us/publish |"
            " Redis CPU us/publish | ok |",
            "|---|---|---|---|---|---|",
        ]
        for c in cost:
            if "error" in c:
                lines.append(f"| {c['contender']} | error: {c['error']} | | | | NO |")
                continue
            r, t = c["request_us"], c["publish_to_receive_us"]
            lines.append(
                f"| {c['contender']} | {r['p50']} / {r['p99']} / {r['max']} | {t['p50']} / {t['p99']} |"
                f" {c['server_cpu_us_per_publish']} | {c.get('redis_cpu_us_per_publish', '-')} |"
                f" {'yes' if c['ok'] else 'NO'} |"
            )
        by = {c["contender"]: c for c in cost if "error" not in c}
        mem = by.get("sse-fast")
        for name in ("sse-fast-redis-1w", "sse-fast-redis-2w"):
            if mem and name in by:
                d50 = by[name]["request_us"]["p50"] - mem["request_us"]["p50"]
                d99 = by[name]["request_us"]["p99"] - mem["request_us"]["p99"]
                lines.append(f"\n{name} - memory: request p50 {d50:+} us, p99 {d99:+} us")
        lines.append("")
    return lines


def _runtime_section(report: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """One worker on two cores (``RUNTIME_VARIANTS``) against the same on one core, with one runtime thread."""
    bases = ("sse-fast", "granian-rsgi")
    variants = [b + s for b in bases for s in RUNTIME_VARIANTS if b + s in report["contenders"]]
    if not variants:
        return []
    lines = [
        "## One worker on two cores: granian's runtime threads",
        "",
        "`-rt2`: `--runtime-threads 2 --runtime-mode mt`, `-rt2-st`: `--runtime-threads 2 --runtime-mode st`,"
        " `-rt1-2c`: `--runtime-threads 1 --runtime-mode st`; pinned to cores 0 and 1, so they share core 1 with the"
        " load client (the others keep core 0 to themselves, with one runtime thread). Server CPU counts every thread"
        " of the worker; the main thread's share is its Python (the runtime threads do the socket I/O).",
        "",
    ]
    get_rows: list[tuple[str, str, float | None, Callable[[dict[str, Any]], Any]]] = [
        (
            "server CPU us/delivery, lockstep (1 frame/write)",
            "lockstep",
            None,
            lambda p: p["server_cpu_us_per_delivery"],
        ),
        (
            "of which main thread (Python), lockstep",
            "lockstep",
            None,
            lambda p: p.get("server_main_thread_us_per_delivery"),
        ),
        ("client CPU us/delivery, lockstep", "lockstep", None, lambda p: p["client_cpu_us_per_delivery"]),
        ("deliveries/s, lockstep", "lockstep", None, lambda p: p["deliveries_per_s"]),
        ("deliveries/s, broadcast burst", "burst", None, lambda p: p["deliveries_per_s"]),
        ("server CPU us/delivery, burst", "burst", None, lambda p: p["server_cpu_us_per_delivery"]),
        ("of which main thread (Python), burst", "burst", None, lambda p: p.get("server_main_thread_us_per_delivery")),
        ("client CPU us/delivery, burst", "burst", None, lambda p: p["client_cpu_us_per_delivery"]),
        ("frames per client read, burst", "burst", None, lambda p: p["frames_per_read"]),
        *(
            (
                f"latency p50 / p99 / max ms, broadcast {r:g}/s",
                "paced",
                r,
                lambda p: "{p50} / {p99} / {max}".format(**p["latency_ms"]),
            )
            for r in args.rates
        ),
    ]
    for n in report["ns"]:
        sessions = {s["contender"]: s for s in report["sessions"] if s["n"] == n}
        names = [c for c in report["contenders"] if c in sessions and c.startswith(bases) and "redis" not in c]
        if not any(c in sessions for c in variants):
            continue
        lines += [f"### N = {n:,}", "", "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for label, mode, rate, get in get_rows:
            cells = [_cell(_phase(sessions[c], "broadcast", mode, rate), get) for c in names]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines += ["", *_runtime_ratios(sessions, bases, args), ""]
    return lines


def _runtime_ratios(sessions: dict[str, dict[str, Any]], bases: tuple[str, ...], args: argparse.Namespace) -> list[str]:
    """Each variant / its base on one core: burst deliveries/s, lockstep CPU per delivery and p99 at each rate."""
    lines = []
    for base in bases:
        for suffix in RUNTIME_VARIANTS:
            one, two = sessions.get(base), sessions.get(base + suffix)
            if one is None or two is None:
                continue
            parts = []
            for label, mode, rate, get in (
                ("burst deliveries/s", "burst", None, lambda p: p["deliveries_per_s"]),
                ("lockstep CPU/delivery", "lockstep", None, lambda p: p["server_cpu_us_per_delivery"]),
                *((f"p99 at {r:g}/s", "paced", r, lambda p: p["latency_ms"]["p99"]) for r in args.rates),
            ):
                a, b = _phase(one, "broadcast", mode, rate), _phase(two, "broadcast", mode, rate)
                if a and b and a["ok"] and b["ok"] and get(a):
                    parts.append(f"{label} {get(b) / get(a):.2f}x")
            if parts:
                lines.append(f"- {base}{suffix} / {base}: " + ", ".join(parts))
    return lines


def _split_cell(sess: dict[str, Any]) -> str:
    split = sess.get("connect", {}).get("sockets_per_process")
    return " / ".join(str(v) for v in split.values()) if split else "1 process"


def _verdict(report: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Issue 17's targets, each a ratio against a contender of the same run (``TARGETS``): the granian floor,
    nchan, and sse-fast with granian's runtime threads on two cores."""
    at = {s["contender"]: s for s in report["sessions"] if s["n"] == 10_000}
    fast = at.get("sse-fast")
    if fast is None:
        return ["(no N = 10,000 run of sse-fast: targets not assessed)"]
    send = report.get("send_floor", {}).get("10000", {}).get("us_per_send", "n/a")
    lines = [
        "## Targets (sse-fast, N = 10,000, one server core)",
        "",
        "Each a ratio against a contender of this run: granian-rsgi is the floor (the leanest pure-Python granian",
        "RSGI server, `bench/peers/granian_rsgi_app.py`), nchan the native C server.",
        f"Loopback `send()` here: {send} us.",
        "",
        "| target | sse-fast | against | ratio or difference | met |",
        "|---|---|---|---|---|",
    ]

    def value(name: str, kind: str, mode: str, rate: float | None, get: Callable[[dict[str, Any]], Any]) -> Any:
        p = _phase(at[name], kind, mode, rate) if name in at else None
        return get(p) if p and p["ok"] else None

    def compare(target: str, mine: Any, peer: str, theirs: Any, bound: float, *, diff: bool = False) -> None:
        if mine is None or theirs is None:
            lines.append(f"| {target} | {mine} | {peer}: {theirs} | n/a | NO |")
            return
        measured = mine - theirs if diff else mine / theirs
        shown = f"{measured:+.2f}" if diff else f"{measured:.2f}x"
        met = "yes" if measured <= bound else "NO"
        lines.append(f"| {target} | {mine} | {peer}: {theirs} | {shown} | {met} |")

    cpu = lambda p: p["server_cpu_us_per_delivery"]  # noqa: E731
    p99 = lambda p: p["latency_ms"]["p99"]  # noqa: E731
    mine_cpu = value("sse-fast", "broadcast", "lockstep", None, cpu)
    for peer, bound in (("granian-rsgi", TARGETS["cpu_vs_floor"]), ("nchan", TARGETS["cpu_vs_nchan"])):
        target = f"CPU us/delivery, 1 frame/write, <= {bound}x {peer}"
        compare(target, mine_cpu, peer, value(peer, "broadcast", "lockstep", None, cpu), bound)
    bound = TARGETS["p99_vs_floor"]
    compare(
        f"p99 ms at 5/s, <= {bound}x the floor's",
        value("sse-fast", "broadcast", "paced", 5, p99),
        "granian-rsgi",
        value("granian-rsgi", "broadcast", "paced", 5, p99),
        bound,
    )
    bound = TARGETS["p99_rt2_vs_nchan"]
    compare(
        "p99 ms at 5/s, two runtime threads on two cores (sse-fast-rt2), below nchan's on one",
        value("sse-fast-rt2", "broadcast", "paced", 5, p99),
        "nchan",
        value("nchan", "broadcast", "paced", 5, p99),
        bound,
    )
    kib = lambda name: at.get(name, {}).get("connect", {}).get("kib_per_connection")  # noqa: E731
    bound = TARGETS["kib_over_floor"]
    compare(f"KiB/connection, <= the floor's + {bound}", kib("sse-fast"), "granian-rsgi", kib("granian-rsgi"), bound,
            diff=True)  # fmt: skip
    burst = value("sse-fast", "broadcast", "burst", None, lambda p: p["deliveries_per_s"])
    want = TARGETS["burst_frames_per_s"]
    met = "yes" if burst is not None and burst >= want else "NO"
    lines.append(f"| coalesced burst (32 publishers), frames/s >= {want:,} | {burst} | | | {met} |")
    ok_all = all(p["ok"] for p in fast.get("phases", [])) and "error" not in fast
    lines.append(
        f"| no loss, no duplicate, every phase | {'yes' if ok_all else 'NO'} | | | {'yes' if ok_all else 'NO'} |"
    )
    return [*lines, ""]


# -- main --------------------------------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--n", default="1000,10000", help="subscriber counts, comma-separated (20000 needs the fd limit)")
    p.add_argument(
        "--contenders",
        default="sse-fast,granian-rsgi,nchan,sse-starlette,sse-fast-rt2,sse-fast-redis-2w",
        help="sse-fast-redis-2w (two workers on a private redis-server) is skipped when redis-server is missing;"
        " nchan installs nginx-light and libnginx-mod-nchan (apt-get, as root) when missing",
    )
    p.add_argument("--deliveries", type=int, default=500_000, help="deliveries per burst or lockstep phase")
    p.add_argument("--publishers", type=int, default=32, help="publisher connections in burst and paced phases")
    p.add_argument("--direct", type=int, default=5_000, help="direct messages in the direct burst")
    p.add_argument("--rates", default="2,5", help="paced broadcast rates (per s), comma-separated")
    p.add_argument("--topic-rate", type=float, default=100.0)
    p.add_argument("--direct-rate", type=float, default=200.0)
    p.add_argument("--paced-seconds", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=120.0, help="longest wait for a phase's deliveries")
    p.add_argument(
        "--publish-cost",
        type=int,
        default=500,
        help="sequential publishes per broker when a Redis contender runs (memory, Redis 1 worker, 2 workers); 0: off",
    )
    p.add_argument("--phases", default="", help="only these phases, e.g. broadcast-lockstep,topic-burst")
    p.add_argument("--profile", default="", help="a directory: py-spy every burst and lockstep phase into it")
    p.add_argument("--out", default=str(ROOT / "bench/results/fanout"), help="path stem of the .json and .md")
    p.add_argument("--note", default="", help="conditions of this run, copied into the report")
    p.add_argument("--render", default="", help="only rewrite the markdown of this saved JSON report")
    args = p.parse_args(argv)
    args.ns = [int(x) for x in args.n.split(",") if x]
    args.rates = [float(x) for x in args.rates.split(",") if x]
    args.names = [x for x in args.contenders.split(",") if x]
    args.phases = {x for x in args.phases.split(",") if x}
    return args


def _limits(ns: list[int]) -> list[int]:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    usable = [n for n in ns if n + 200 <= hard]
    for n in set(ns) - set(usable):
        print(f"skipping N={n}: the open-file limit is {hard} (the client and each server hold one fd per stream)")
    return usable


def _send_floor(n: int) -> dict[str, Any]:
    """``send_floor.py`` in its own process (it pins itself and forks a reader)."""
    cmd = [sys.executable, str(Path(__file__).with_name("send_floor.py")), "--n", str(n)]
    cmd += ["--rounds", str(max(5, 200_000 // n))]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
        return dict(json.loads(out.strip().splitlines()[-1]))
    except (subprocess.SubprocessError, ValueError, IndexError) as err:
        return {"error": str(err)}


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    contenders = _runtime_variants(_contenders())
    unknown = [name for name in args.names if name not in contenders]
    if unknown:
        raise SystemExit(f"unknown contenders {unknown}; known: {sorted(contenders)}")
    if shutil.which("redis-server") is None and any(contenders[c].redis for c in args.names):
        print("skipping the Redis contenders: redis-server is not installed", flush=True)
        args.names = [c for c in args.names if not contenders[c].redis]
    report: dict[str, Any] = {
        "machine": _machine(),
        "command": " ".join(["python", "bench/fanout/run.py", *(shlex.quote(a) for a in sys.argv[1:])]),
        "argv": sys.argv[1:],
        "note": args.note,
        "ns": args.ns,
        "contenders": args.names,
        "sessions": [],
        "ratios": {},
        "send_floor": {},
        "method": __doc__,
    }
    for n in args.ns:
        report["send_floor"][str(n)] = _send_floor(n)
        print(f"[loopback send() floor, N={n}] {report['send_floor'][str(n)]}", flush=True)
        for name in args.names:
            report["sessions"].append(await run_session(contenders[name], n, args))
        by = {s["contender"]: s for s in report["sessions"] if s["n"] == n}
        report["ratios"][str(n)] = _peer_ratios(by, args)
    if args.publish_cost > 0 and any(contenders[c].redis for c in args.names):
        brokers = ("sse-fast", "sse-fast-redis-1w", "sse-fast-redis-2w")
        report["publish_cost"] = [await publish_cost(contenders[name], args) for name in brokers]
    return report


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.render:
        saved = Path(args.render)
        report = json.loads(saved.read_text())
        args = _parse([*report.get("argv", []), "--render", args.render])
        saved.with_suffix(".md").write_text(render(report, args))
        return 0
    if shutil.which("taskset") is None:
        print("bench-fanout needs taskset (util-linux)", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        print("bench-fanout needs two cores: one for the server, one for the load client", file=sys.stderr)
        return 2
    import uvloop

    os.sched_setaffinity(0, {CLIENT_CORE})
    args.ns = _limits(args.ns)
    report = uvloop.run(_main(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(render(report, args))
    print(f"\nwrote {out.with_suffix('.json')} and {out.with_suffix('.md')}\n")
    print(render(report, args))
    failed = any("error" in s or not all(p["ok"] for p in s["phases"]) for s in report["sessions"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
