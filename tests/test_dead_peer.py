"""A client that vanishes without a FIN or RST is removed within a bounded time, and its messages go to its mailbox.

The client runs in its own network namespace behind a veth pair; its link is then blackholed: a ``pfifo`` qdisc of
length 0 on the client's side drops every packet it sends (``sch_netem`` is not available in this sandbox, nor
nftables or iptables; a qdisc on the server's side would make the server's own kernel drop its packets, which it
sees as a local error rather than a silent peer). From the server, this is a pulled cable: its keepalives go out,
and nothing ever comes back.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from _redis import running_redis
from _servers import Server, running_server

pytestmark = pytest.mark.e2e

KEEPALIVE = 1.0
BOUND = 2 * KEEPALIVE + 15  # issue 13, item 21: at most twice the keepalive plus 15 s


def ip(*args: str, netns: str | None = None) -> None:
    """``ip <args>`` (in ``netns`` when given)."""
    run("ip", *args, netns=netns)


def run(*command: str, netns: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=10)


@dataclass
class Veth:
    """A network namespace for the client, joined to this one by a veth pair (a /30 of its own)."""

    netns: str
    host_if: str
    client_if: str
    host_ip: str
    client_ip: str

    def blackhole(self) -> None:
        """From now on every packet the client sends is dropped: no ACK, no FIN, no RST reaches the server."""
        run("tc", "qdisc", "add", "dev", self.client_if, "root", "pfifo", "limit", "0", netns=self.netns)


def _free_subnet() -> int:
    routes = subprocess.run(["ip", "-4", "route", "show"], check=True, capture_output=True, text=True).stdout
    for _ in range(100):
        third = secrets.randbelow(256)
        if f"10.213.{third}." not in routes:
            return third
    raise AssertionError("no free 10.213.x.0/30")


@pytest.fixture
def veth() -> Iterator[Veth]:
    assert os.geteuid() == 0, "network namespaces and veth pairs need root (CAP_NET_ADMIN)"
    for tool in ("ip", "tc"):
        assert shutil.which(tool), f"{tool} is missing (iproute2; .ci/run installs it)"
    tag = secrets.token_hex(4)  # unique per run: parallel runs and leftovers of a killed run never collide
    third = _free_subnet()
    pair = Veth(f"sse-dp-{tag}", f"dph{tag}", f"dpc{tag}", f"10.213.{third}.1", f"10.213.{third}.2")
    try:
        ip("netns", "add", pair.netns)
        ip("link", "add", pair.host_if, "type", "veth", "peer", "name", pair.client_if)
        ip("link", "set", pair.client_if, "netns", pair.netns)
        ip("addr", "add", f"{pair.host_ip}/30", "dev", pair.host_if)
        ip("link", "set", pair.host_if, "up")
        ip("addr", "add", f"{pair.client_ip}/30", "dev", pair.client_if, netns=pair.netns)
        ip("link", "set", pair.client_if, "up", netns=pair.netns)
        ip("link", "set", "lo", "up", netns=pair.netns)
        yield pair
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            ip("link", "del", pair.host_if)  # takes its peer with it
        with contextlib.suppress(subprocess.CalledProcessError):
            ip("netns", "del", pair.netns)


# The client: a raw stream reader that reads for as long as it lives. It sees the server's reset in the end (only
# what it sends is dropped), but the server heard nothing from it by then.
READER = textwrap.dedent(
    """
    import socket, sys
    sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
    sock.sendall(b"GET /sse?clientId=ghost HTTP/1.1\\r\\nHost: x\\r\\nAccept: text/event-stream\\r\\n\\r\\n")
    while sock.recv(65536):
        pass
    """
)


@contextlib.contextmanager
def client_in(pair: Veth, server: Server) -> Iterator[subprocess.Popen[bytes]]:
    args = ["ip", "netns", "exec", pair.netns, sys.executable, "-c", READER, pair.host_ip, str(server.port)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def clients(http: httpx.Client) -> list[str]:
    return [row["clientId"] for row in http.get("/api/connections").json()]


@pytest.mark.parametrize(("interface", "broker"), [("rsgi", "memory"), ("asgi", "memory"), ("rsgi", "redis")])
def test_a_client_that_vanishes_is_removed_and_its_messages_go_to_its_mailbox(
    veth: Veth, tmp_path: Path, interface: str, broker: str
) -> None:
    env = {"SSE_FAST_KEEPALIVE": str(KEEPALIVE)}
    with contextlib.ExitStack() as stack:
        if broker == "redis":
            env["SSE_FAST_BROKER"] = stack.enter_context(running_redis(tmp_path)).url
        srv = stack.enter_context(running_server(tmp_path, env=env, interface=interface, host=veth.host_ip))
        http = stack.enter_context(httpx.Client(base_url=srv.url, timeout=10))
        reader = stack.enter_context(client_in(veth, srv))
        deadline = time.monotonic() + 10
        while "ghost" not in clients(http):
            assert reader.poll() is None, "the client in the namespace could not connect"
            assert time.monotonic() < deadline, "the client's stream never registered"
            time.sleep(0.05)  # ok-sleep: polling for the stream to register
        # Several keepalives go out and are acknowledged: a live peer on a quiet stream is never taken for dead.
        time.sleep(3 * KEEPALIVE)  # ok-sleep: the live period whose keepalives must not count against the peer
        assert "ghost" in clients(http)

        assert reader.poll() is None  # the client never closes: the server has to give up on it by itself
        veth.blackhole()
        vanished = time.monotonic()
        while "ghost" in clients(http):
            assert time.monotonic() - vanished < BOUND, f"the dead peer was still connected after {BOUND} s"
            time.sleep(0.2)  # ok-sleep: polling the connection list

        answer = http.post("/api/direct/ghost", json={"type": "json", "payload": {"after": "vanishing"}})
        metrics = http.get("/metrics").text
    assert answer.status_code == 202, answer.text
    assert answer.json()["queued"] is True
    assert answer.json()["delivered"] == 0
    assert "sse_fast_dead_peers_total 1.0" in metrics


def test_dead_peers_reads_live_and_unreadable_sockets_as_alive() -> None:
    """The core's sweep read (the namespace test above shows a real dead peer found): a connected socket whose peer
    acknowledges everything, a pipe, a closed descriptor and -1 are all alive; their positions are kept."""
    from sse_fast._core import dead_peers

    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        with client, server:
            server.sendall(b"x" * 1000)
            client.recv(1000)
            read_end, write_end = os.pipe()
            os.close(write_end)
            closed = os.dup(read_end)
            os.close(closed)
            try:
                assert dead_peers([server.fileno(), read_end, closed, -1], 0) == []
                assert dead_peers([], 0) == []
            finally:
                os.close(read_end)
