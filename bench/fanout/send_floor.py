"""The loopback ``send()`` floor of this machine: CPU per ``send()`` of one SSE-sized frame to one of N sockets.

The sender (core 0) holds N accepted loopback TCP connections and sends one ~230-byte frame to each in turn, with a
plain ``socket.send``; a reader process (core 1) drains them all with epoll, as a real client would. The sender's
CPU time (``os.times``: user and system) per send is the floor under any server's "CPU per delivery" when each
delivery is one write: on loopback the kernel charges the receiving side's TCP work (and the reader's wake-up) to
the sender. ``bench/fanout/run.py`` reports it next to the servers.

    python bench/fanout/send_floor.py --n 10000 --rounds 20
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import select
import socket
import sys
import time

FRAME = b"id: e-1\nevent: json\ndata: " + b'{"id":"x","type":"json","payload":{"pad":"' + b"x" * 170 + b'"}}\n\n'


def _reader(port: int, n: int, total: int, ready: int) -> None:
    os.sched_setaffinity(0, {1})
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    os.write(ready, b"1")
    ep = select.epoll()
    by_fd = {}
    for s in socks:
        s.setblocking(False)
        ep.register(s.fileno(), select.EPOLLIN)
        by_fd[s.fileno()] = s
    got = 0
    while got < total:
        for fd, _ in ep.poll(1):
            with contextlib.suppress(BlockingIOError):
                got += len(by_fd[fd].recv(65536))
    os._exit(0)


def measure(n: int, rounds: int) -> dict[str, float]:
    """CPU microseconds per ``send()`` (user, system, total) over ``rounds`` frames to each of ``n`` sockets."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    listener = socket.create_server(("127.0.0.1", 0), backlog=min(n, 65535))
    port = listener.getsockname()[1]
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        listener.close()
        _reader(port, n, (n * rounds + min(n, 1000)) * len(FRAME), ready_w)
    os.sched_setaffinity(0, {0})
    conns = [listener.accept()[0] for _ in range(n)]
    os.read(ready_r, 1)
    time.sleep(0.2)
    for c in conns[: min(n, 1000)]:  # warm-up
        c.send(FRAME)
    t0 = os.times()
    for _ in range(rounds):
        for c in conns:
            c.send(FRAME)
    t1 = os.times()
    os.waitpid(pid, 0)
    sends = n * rounds
    user, system = (t1.user - t0.user) * 1e6 / sends, (t1.system - t0.system) * 1e6 / sends
    for c in conns:
        c.close()
    return {"n": n, "sends": sends, "us_user": round(user, 2), "us_system": round(system, 2),
            "us_per_send": round(user + system, 2)}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    print(json.dumps(measure(args.n, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
