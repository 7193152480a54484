"""A client that stops reading fills only its own bounded queue, is cut as a slow consumer, and hurts nobody else."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from _servers import BIN, Server, open_stream, running_server

pytestmark = pytest.mark.e2e

PAYLOAD = "x" * 60_000
MESSAGES = 500  # 30 MB in all: what an unbounded server would end up holding for the stalled reader
# The bursts come from a trusted publisher (an API key): per-client publish limits would otherwise slow them.
BURST_KEY = "burst-publisher-key-0123456789"


def worker_rss_kib(server: Server) -> int:
    """Resident memory of the granian worker (the child of ``sse-fast serve``)."""
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()
    pid = int(children[0]) if children else server.proc.pid
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def stalled_reader(server: Server) -> socket.socket:
    """A stream whose client never reads a byte, with small socket buffers so that the stall shows early."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET /sse?clientId=stalled HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    return sock


def connected_clients(server: Server) -> list[str]:
    return [row["clientId"] for row in httpx.get(f"{server.url}/api/connections").json()]


async def burst(server: Server, first: int) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        for n in range(first, first + MESSAGES):
            body = {"message": {"type": "json", "payload": {"n": n, "pad": PAYLOAD}}}
            answer = await http.post(f"{server.url}/api/broadcast", json=body, headers={"x-api-key": BURST_KEY})
            assert answer.status_code == 202, answer.text


@pytest.mark.parametrize("interface", ["rsgi", "asgi"])
async def test_a_stalled_reader_is_cut_and_the_others_get_everything(tmp_path: Path, interface: str) -> None:
    # A small replay log too: otherwise what it retains (by design) would hide what a stalled stream holds.
    env = {"SSE_FAST_QUEUE_BYTES": "262144", "SSE_FAST_MAX_BODY": "65536", "SSE_FAST_REPLAY_BYTES": "1048576"}
    env["SSE_FAST_API_KEYS"] = BURST_KEY
    with running_server(tmp_path, env=env, interface=interface) as srv:
        stalled = stalled_reader(srv)
        try:
            async with open_stream(srv.url, client_id="healthy") as healthy:
                await healthy.wait_for(lambda s: bool(s.system("connect")))
                deadline = asyncio.get_running_loop().time() + 5
                while "stalled" not in connected_clients(srv):
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.05)  # ok-sleep: polling for the raw stream to register
                await burst(srv, 0)
                await healthy.wait_for(lambda s: len(s.envelopes("json")) == MESSAGES, timeout=60)
                deadline = asyncio.get_running_loop().time() + 10
                while "stalled" in connected_clients(srv):
                    assert asyncio.get_running_loop().time() < deadline, "the stalled reader was never cut"
                    await asyncio.sleep(0.1)  # ok-sleep: polling the connection list
                # The allocator keeps what passed through; a second burst shows whether anything is still held.
                before = worker_rss_kib(srv)
                await burst(srv, MESSAGES)
                await healthy.wait_for(lambda s: len(s.envelopes("json")) == 2 * MESSAGES, timeout=60)
                grown = worker_rss_kib(srv) - before
                assert [e["payload"]["n"] for e in healthy.envelopes("json")] == list(range(2 * MESSAGES))
                metrics = httpx.get(f"{srv.url}/metrics").text
        finally:
            stalled.close()
    assert "sse_fast_slow_consumer_closes_total 1.0" in metrics
    # Another 30 MB went to the stalled client's address: none of it may stay in the server.
    assert grown < 8 * 1024, f"worker grew by {grown} KiB"


# -- issue 13, item 13: the watch finds the socket on every kind of listener, or cuts at the byte limit ----------

WATCH_ENV = {
    "SSE_FAST_QUEUE_BYTES": "262144",
    "SSE_FAST_MAX_BODY": "65536",
    "SSE_FAST_REPLAY_BYTES": "1048576",
    "SSE_FAST_API_KEYS": BURST_KEY,
}


def raw_stalled_reader(family: socket.AddressFamily, address: Any) -> socket.socket:
    """A stream opened over ``family`` whose client never reads a byte, with a small receive buffer."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(address)
    sock.sendall(b"GET /sse?clientId=stalled HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
    return sock


def stall_and_flood(http: httpx.Client) -> str:
    """Wait for the stalled stream, broadcast 150 x 60 KB, wait until it is gone; the metrics text afterwards."""
    deadline = time.monotonic() + 10
    while "stalled" not in [row["clientId"] for row in http.get("/api/connections").json()]:
        assert time.monotonic() < deadline, "the stalled stream never registered"
        time.sleep(0.05)  # ok-sleep: polling for the raw stream to register
    for n in range(150):
        body = {"message": {"type": "json", "payload": {"n": n, "pad": PAYLOAD}}}
        assert http.post("/api/broadcast", json=body, headers={"x-api-key": BURST_KEY}).status_code == 202
    deadline = time.monotonic() + 15
    while "stalled" in [row["clientId"] for row in http.get("/api/connections").json()]:
        assert time.monotonic() < deadline, "the stalled reader was never cut"
        time.sleep(0.1)  # ok-sleep: polling the connection list
    return http.get("/metrics").text


@pytest.mark.parametrize(
    ("host", "connect", "family"),
    [("::1", "::1", socket.AF_INET6), ("::", "127.0.0.1", socket.AF_INET), ("::", "::1", socket.AF_INET6)],
    ids=["ipv6", "dual-stack-ipv4-mapped", "dual-stack-ipv6"],
)
def test_a_stalled_reader_is_cut_on_an_ipv6_or_dual_stack_listener(
    tmp_path: Path, host: str, connect: str, family: socket.AddressFamily
) -> None:
    with running_server(tmp_path, env=WATCH_ENV, host=host, connect=connect) as srv:
        stalled = raw_stalled_reader(family, (connect, srv.port))
        try:
            with httpx.Client(base_url=srv.url, timeout=10) as http:
                metrics = stall_and_flood(http)
        finally:
            stalled.close()
    assert "sse_fast_slow_consumer_closes_total 1.0" in metrics


def test_a_stalled_reader_on_a_unix_socket_is_cut_at_the_byte_limit(tmp_path: Path) -> None:
    # No TCP socket to ask the kernel about: the watch cannot tell what reached the client, so it cuts at the limit
    # (and says at start that it cannot work there) instead of letting granian buffer without end.
    path = tmp_path / "sse.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_FAST_")}
    env.update(WATCH_ENV, PYTHONUNBUFFERED="1")
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "granian"), "--interface", "rsgi", "--uds", str(path), "sse_fast.app:app"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while not _listening(path):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the server never listened"
            time.sleep(0.05)  # ok-sleep: polling a starting process
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(path)), base_url="http://sse", timeout=10) as http:
            assert http.get("/healthz").status_code == 200
            stalled = raw_stalled_reader(socket.AF_UNIX, str(path))
            try:
                metrics = stall_and_flood(http)
            finally:
                stalled.close()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert "sse_fast_slow_consumer_closes_total 1.0" in metrics
    assert "is not TCP (a unix socket?)" in log_path.read_text()


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True
