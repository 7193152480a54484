"""``make bench-ingest``: publish ingest, ``POST /api/messages`` requests per second per server core, with ``wrk``.

Each contender runs as a real server pinned to core 0, started by ``bench/fanout/run.py``'s ``Server`` from its
contender definitions (the same environment: sse-fast with the benchmark's API key, keepalive comments off):
sse-fast; sse-starlette on uvicorn (``bench/peers/sse_starlette_app.py``, which has the same route); and
``granian-rsgi`` (``bench/peers/granian_rsgi_app.py``), the leanest pure-Python granian RSGI app with that route
(one ``json.loads``, a scan of the streams, one ``send_bytes``): what granian itself costs per request, the floor of
any granian app.

This runner holds ``--streams`` SSE streams open with the fan-out client (stream ``i`` subscribes to topic
``room.<i>``) and runs ``wrk`` pinned to core 1, one thread, with ``bench/ingest.lua``: a topic message of about 100
bytes (``{"type":"json","topic":"room.<k>","payload":{...}}``) with ``X-API-Key``, ``k`` cycling over the topics, so
each publish is routed, logged and delivered to exactly one stream, and the per-client publish limits do not apply
(the publisher is a trusted back end). The runner and its streams share core 1 with wrk.

Per contender: a warm-up (not measured), then ``--seconds`` of wrk at each of ``--connections``. Server CPU comes
from ``/proc/<pid>/stat`` (user + system, every server process; and apart, the main threads', where a granian worker
runs its Python), read just before wrk starts and just after it exits; requests per core is wrk's completed requests
divided by those CPU seconds. wrk gives the latency percentiles. A run fails (and the exit status is 1) on any
answer outside 200-299 (counted by the script's ``response()``), any socket error, or fewer deliveries than requests
(or more than requests + connections: the ones in flight when wrk stopped). Output: ``bench/results/ingest.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench/fanout"))
from client import Monitor, Subscriber, open_streams  # noqa: E402

import run as fanout  # noqa: E402  (bench/fanout/run.py: the contenders, the Server, the machine)

LUA = ROOT / "bench/ingest.lua"
TARGET_PER_CORE = 20_000  # issue 17, item 5
CONTENDERS = ("sse-fast", "sse-starlette", "granian-rsgi")
PEERS = ("sse-starlette", "granian-rsgi")  # each compared with sse-fast in the ratio lines


class Deliveries(Monitor):
    """Counts the delivered ingest messages (the ``"ingest":`` key of their payload) on every stream."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.count = 0

    def got(self, idx: int, data: bytes, end: int) -> None:
        self.count += data.count(b'"ingest":', 0, end)

    async def settle(self, want: int, *, within: float = 10.0) -> int:
        """Wait until ``want`` were delivered and no more arrive for 0.3 s (or ``within`` s): the count then."""
        deadline = time.monotonic() + within
        last, still = -1, 0.0
        while time.monotonic() < deadline:
            if self.count == last and self.count >= want:
                still += 0.05
                if still >= 0.3:
                    break
            else:
                last, still = self.count, 0.0
            await asyncio.sleep(0.05)
        return self.count


async def wrk(port: int, connections: int, seconds: int, topics: int) -> dict[str, Any]:
    """One wrk run pinned to the client core: the JSON line of ``bench/ingest.lua``'s ``done()``."""
    cmd = ["taskset", "-c", str(fanout.CLIENT_CORE), "wrk", "-t", "1", "-c", str(connections)]
    cmd += ["-d", f"{seconds}s", "--timeout", "10s", "-s", str(LUA), f"http://{fanout.HOST}:{port}/"]
    cmd += ["--", str(topics), fanout.API_KEY]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    line = next((x for x in out.decode().splitlines() if x.startswith("INGEST ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk exited with {proc.returncode}: {(out + err).decode()[-500:]}")
    return dict(json.loads(line.removeprefix("INGEST ")))


async def measure(server: fanout.Server, mon: Deliveries, connections: int, args: argparse.Namespace) -> dict[str, Any]:
    """wrk for ``args.seconds`` at ``connections``: throughput, server CPU, latency, and the checks."""
    mon.count = 0
    cpu0, main0 = server.cpu(), server.main_thread_cpu()
    w = await wrk(server.port, connections, args.seconds, args.streams)
    cpu1, main = server.cpu(), server.main_thread_cpu() - main0
    user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    requests, seconds = w["requests"], w["duration_us"] / 1e6
    delivered = await mon.settle(requests)
    socket_errors = {k: w[k] for k in ("connect", "read", "write", "timeout")}
    cpu = user + system
    ok = w["non_2xx"] == 0 and not any(socket_errors.values()) and requests <= delivered <= requests + connections
    return {
        "connections": connections,
        "seconds": round(seconds, 3),
        "requests": requests,
        "non_2xx": w["non_2xx"],
        "socket_errors": socket_errors,
        "delivered": delivered,
        "ok": ok,
        "requests_per_s": round(requests / seconds) if seconds else None,
        "server_cpu_s": round(cpu, 2),
        "server_system_share": round(system / cpu, 2) if cpu else None,
        "server_cores": round(cpu / seconds, 2) if seconds else None,
        "requests_per_core_s": round(requests / cpu) if cpu else None,
        "server_cpu_us_per_request": round(cpu * 1e6 / requests, 1) if requests else None,
        "server_main_thread_us_per_request": round(main * 1e6 / requests, 1) if requests else None,
        "latency_ms": {k: round(w[f"{k}_us"] / 1e3, 2) for k in ("p50", "p90", "p99", "max")},
    }


async def run_contender(contender: fanout.Contender, args: argparse.Namespace) -> dict[str, Any]:
    """Start the server, hold the streams, warm up, then measure each connection count."""
    out: dict[str, Any] = {"contender": contender.name, "streams": args.streams, "runs": []}
    try:
        server = fanout.Server(contender)
    except RuntimeError as err:
        out["error"] = str(err)
        return out
    mon = Deliveries(args.streams)
    subs: list[Subscriber] = []
    try:
        path = lambda i: f"/sse?clientId=c{i}&topics=room.{i}"  # noqa: E731
        subs = await open_streams(fanout.HOST, server.port, range(args.streams), mon, path=path)
        if args.warmup > 0:
            mon.count = 0
            warm = await wrk(server.port, max(args.connections), args.warmup, args.streams)
            await mon.settle(warm["requests"])
            print(f"[{contender.name}] warm-up: {warm['requests']} requests, {warm['non_2xx']} not 2xx", flush=True)
        for connections in args.connections:
            result = await measure(server, mon, connections, args)
            out["runs"].append(result)
            print(f"[{contender.name}] {_summary(result)}", flush=True)
        out["closed_streams"] = mon.closed
        if mon.closed:
            out["error"] = f"{mon.closed} stream(s) closed during the run"
    except Exception as err:
        out["error"] = f"{type(err).__name__}: {err}"
        print(f"[{contender.name}] ERROR {out['error']}", flush=True)
    finally:
        for sub in subs:
            sub.close()
        await asyncio.sleep(0.2)
        server.stop()
    return out


def _summary(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    return (
        f"c={r['connections']}: {r['requests']} requests in {r['seconds']} s, {r['requests_per_s']}/s,"
        f" server {r['server_cores']} cores ({r['server_system_share']} in kernel), {r['requests_per_core_s']}/s per"
        f" core, {r['server_cpu_us_per_request']} us/request ({r['server_main_thread_us_per_request']} main thread),"
        f" p50 {lat['p50']} p99 {lat['p99']} ms, not 2xx {r['non_2xx']}, socket errors {r['socket_errors']},"
        f" delivered {r['delivered']}{'' if r['ok'] else ' FAILED'}"
    )


def _ratios(report: dict[str, Any]) -> dict[str, dict[str, dict[str, float | None]]]:
    """sse-fast / each peer, per connection count: requests per core and requests per second."""
    by = {c["contender"]: {r["connections"]: r for r in c["runs"] if r["ok"]} for c in report["contenders"]}
    fast = by.get("sse-fast", {})
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for name in PEERS:
        peer = by.get(name, {})
        for conns in sorted(set(fast) & set(peer)):
            a, b = fast[conns], peer[conns]
            out.setdefault(name, {})[str(conns)] = {
                key: round(a[key] / b[key], 2) if a[key] and b[key] else None
                for key in ("requests_per_core_s", "requests_per_s")
            }
    return out


def render(report: dict[str, Any]) -> str:
    """The markdown report."""
    m = report["machine"]
    names = [c["contender"] for c in report["contenders"]]
    lines = [
        "# bench/ingest: publish ingest, `POST /api/messages` per server core",
        "",
        "Numbers depend on the machine, and on what else runs on it: read the ratios (all contenders measured in",
        "the same run, on the same core) before the absolute figures.",
        "",
        f"- date {m['date']}, commit {m.get('commit') or 'unknown'}; {m['cpu']}, {m['cores']} cores,"
        f" Linux {m['kernel']}, Python {m['python']}; load average at start {m['loadavg_at_start']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f", wrk {report['wrk']}",
        f"- server pinned to core {fanout.SERVER_CORE}; `wrk -t 1` pinned to core {fanout.CLIENT_CORE} with"
        f" `bench/ingest.lua`, sharing it with this runner, which holds {report['streams']} SSE streams (stream i"
        " subscribes to `room.<i>`)",
        "- each request: a topic message of about 100 bytes to `room.<k>`, k cycling over the streams' topics (every"
        " publish delivered to one stream), with `X-API-Key` (a trusted publisher: no per-client publish limit)",
        "- granian-rsgi is the floor: the leanest pure-Python granian RSGI app with this route"
        " (`bench/peers/granian_rsgi_app.py`), what granian itself costs per request",
        f"- warm-up {report['warmup']:g} s (not measured), then {report['seconds']:g} s per connection count; server"
        " CPU (user + system) from `/proc/<pid>/stat` around each wrk run; per core = requests / server CPU seconds;"
        " the main thread is where a granian worker runs its Python (its runtime thread does the socket I/O)",
        f"- command: `{report['command']}`",
    ]
    if report.get("note"):
        lines.append(f"- conditions: {report['note']}")
    lines += ["", "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    conns = sorted({r["connections"] for c in report["contenders"] for r in c["runs"]})
    cells = {c["contender"]: {r["connections"]: r for r in c["runs"]} for c in report["contenders"]}

    def row(label: str, get: Any, *, checks: bool = False) -> None:
        for n in conns:
            values = []
            for name in names:
                r = cells[name].get(n)
                values.append("n/a" if r is None else get(r) if r["ok"] or checks else "FAILED")
            lines.append(f"| {label}, {n} connections | " + " | ".join(values) + " |")

    row("requests/s per server core", lambda r: f"{r['requests_per_core_s']:,}")
    row("requests/s", lambda r: f"{r['requests_per_s']:,}")
    row("server CPU cores used", lambda r: f"{r['server_cores']}")
    row("server CPU us/request", lambda r: f"{r['server_cpu_us_per_request']}")
    row("of which main thread (Python) us/request", lambda r: f"{r['server_main_thread_us_per_request']}")
    row("latency p50 / p99 ms", lambda r: f"{r['latency_ms']['p50']} / {r['latency_ms']['p99']}")
    row("answers not 2xx, socket errors, deliveries / requests", _checks, checks=True)
    for c in report["contenders"]:
        if "error" in c:
            lines.append(f"\n**{c['contender']}: run aborted: {c['error']}**")
    for peer, by_conns in report["ratios"].items():
        lines += ["", f"sse-fast / {peer} in this run (higher is better for sse-fast):"]
        for n, r in by_conns.items():
            lines.append(
                f"- {n} connections: requests/s per core {r['requests_per_core_s']}x, requests/s {r['requests_per_s']}x"
            )
    return "\n".join([*lines, *_target(cells.get("sse-fast", {}), conns)]) + "\n"


def _target(fast: dict[int, dict[str, Any]], conns: list[int]) -> list[str]:
    lines = ["", "## Target (issue 17, item 5)", ""]
    for n in conns:
        r = fast.get(n)
        value = r["requests_per_core_s"] if r and r["ok"] else None
        met = value is not None and value >= TARGET_PER_CORE
        shown = "n/a" if value is None else f"{value:,}"
        lines.append(
            f"- sse-fast, {n} connections: {shown} requests/s per core (target >= {TARGET_PER_CORE:,}):"
            f" {'met' if met else 'NOT met'}"
        )
    return lines


def _checks(r: dict[str, Any]) -> str:
    errors = sum(r["socket_errors"].values())
    return f"{r['non_2xx']}, {errors}, {r['delivered']:,} / {r['requests']:,}{'' if r['ok'] else ' FAILED'}"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated, of: " + ", ".join(CONTENDERS))
    p.add_argument("--connections", default="8,64", help="wrk connection counts, comma-separated")
    p.add_argument("--seconds", type=int, default=10, help="measured seconds per connection count (whole: wrk's -d)")
    p.add_argument("--warmup", type=int, default=3, help="seconds of wrk before measuring (0: none)")
    p.add_argument("--streams", type=int, default=100, help="SSE streams held open, one topic each")
    p.add_argument("--out", default=str(ROOT / "bench/results/ingest"), help="path stem of the .json and .md")
    p.add_argument("--note", default="", help="conditions of this run, copied into the report")
    p.add_argument("--render", default="", help="only rewrite the markdown of this saved JSON report")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    args.names = [x for x in args.contenders.split(",") if x]
    args.connections = [int(x) for x in args.connections.split(",") if x]
    return args


def _wrk_version() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    return out.split()[1] if out.startswith("wrk ") else "unknown"


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Every contender of ``args.names``, one after the other: the report."""
    contenders = fanout._contenders()
    unknown = [name for name in args.names if name not in contenders]
    if unknown:
        raise SystemExit(f"unknown contenders {unknown}; known: {sorted(contenders)}")
    report: dict[str, Any] = {
        "machine": fanout._machine(),
        "wrk": _wrk_version(),
        "command": " ".join(["python", "bench/ingest.py", *(shlex.quote(a) for a in args.argv)]),
        "argv": args.argv,
        "note": args.note,
        "streams": args.streams,
        "warmup": args.warmup,
        "seconds": args.seconds,
        "contenders": [],
        "method": __doc__,
    }
    for name in args.names:
        report["contenders"].append(await run_contender(contenders[name], args))
    report["ratios"] = _ratios(report)
    return report


def failed(report: dict[str, Any]) -> bool:
    """A contender that errored, or a run with an answer not 2xx, a socket error or a missing delivery."""
    return any("error" in c or not c["runs"] or not all(r["ok"] for r in c["runs"]) for c in report["contenders"])


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.render:
        saved = Path(args.render)
        saved.with_suffix(".md").write_text(render(json.loads(saved.read_text())))
        return 0
    for tool, package in (("taskset", "util-linux"), ("wrk", "wrk")):
        if shutil.which(tool) is None:
            print(f"bench-ingest needs {tool} (Debian package {package})", file=sys.stderr)
            return 2
    if (os.cpu_count() or 1) < 2:
        print("bench-ingest needs two cores: one for the server, one for wrk", file=sys.stderr)
        return 2
    import uvloop

    os.sched_setaffinity(0, {fanout.CLIENT_CORE})
    report = uvloop.run(bench(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(render(report))
    print(f"\nwrote {out.with_suffix('.json')} and {out.with_suffix('.md')}\n")
    print(render(report))
    return 1 if failed(report) else 0


if __name__ == "__main__":
    sys.exit(main())
