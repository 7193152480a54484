"""Run the locust load test headless: ``make loadtest`` (minutes, CSV and HTML) and ``make loadtest-smoke`` (CI).

Without ``--host`` it starts its own ``sse-fast serve`` on a free port and stops it afterwards. The exit status is
locust's: non-zero on any failed request, lost or duplicated message (see ``loadtest/locustfile.py``).

    python loadtest/run.py --smoke                                   # 20 s, 36 users, a local server
    python loadtest/run.py --host http://10.0.0.5:8000 --users 500 --run-time 10m
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    cmd = [str(Path(sys.executable).parent / "sse-fast"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "SSE_FAST_LOG_LEVEL": "warning", "SSE_FAST_SHUTDOWN_GRACE": "1"}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1):
                return proc, url
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"sse-fast serve exited with {proc.returncode}") from None
            time.sleep(0.1)
    raise SystemExit("sse-fast serve did not become ready within 30 s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--host", help="the server's base URL (default: start a local sse-fast)")
    p.add_argument("--smoke", action="store_true", help="CI smoke: 20 s, 36 users, no reports")
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--spawn-rate", type=float, default=50)
    p.add_argument("--run-time", default="3m")
    p.add_argument("--out", default=str(HERE / "results" / "loadtest"), help="path stem of the CSV and HTML reports")
    args = p.parse_args()
    if args.smoke:
        args.users, args.spawn_rate, args.run_time = 36, 12, "20s"
    server = None
    host = args.host
    if host is None:
        server, host = _start_server()
    cmd = [
        str(Path(sys.executable).parent / "locust"),
        "-f",
        str(HERE / "locustfile.py"),
        "--headless",
        "--host",
        host,
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.spawn_rate),
        "--run-time",
        args.run_time,
        "--stop-timeout",
        "5",
        "--only-summary",
        "--loglevel",
        "WARNING",
    ]
    if not args.smoke:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        cmd += ["--csv", args.out, "--html", f"{args.out}.html"]
    try:
        return subprocess.call(cmd)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
