"""Slow-consumer detection under RSGI, where granian buffers outgoing bytes without limit and says nothing.

granian's RSGI ``send_bytes`` never blocks and never reports how much it holds: a client that stops reading makes
granian buffer everything written to it. The kernel knows how far the client got, so sse-fast asks it, but only
for *suspects*: a stream becomes one each time another half of ``SSE_FAST_QUEUE_BYTES`` has been written to it
since it was last checked. For a suspect, the socket is found through ``/proc`` (its peer address in
``/proc/net/tcp*``, then its descriptor in ``/proc/self/fd``) and

    held by granian  ~=  bytes written by sse-fast  -  tcpi_bytes_acked  -  bytes in the kernel send queue

(``TCP_INFO`` and ``SIOCOUTQ``; an underestimate, since acked bytes include HTTP chunk framing). Past
``SSE_FAST_QUEUE_BYTES`` the stream is a slow consumer: its socket is shut down, so that granian drops what it
holds, and the client resumes from the replay log when it comes back. Linux only; elsewhere the watch is off and
the README says so. Idle and normal streams cost one addition per write.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import struct
import sys
import termios
from collections.abc import Callable, Iterable

__all__ = ["SUPPORTED", "BacklogWatch", "Watched"]

log = logging.getLogger("sse_fast.backlog")

SUPPORTED = sys.platform.startswith("linux") and os.path.exists("/proc/self/net/tcp")
_TCP_INFO_LEN = 232
_BYTES_ACKED = struct.Struct("=Q")  # tcpi_bytes_acked, at offset 120 of struct tcp_info (Linux >= 4.1)
_BYTES_ACKED_OFFSET = 120
_OUTQ = struct.Struct("=i")


class Watched:
    """What the watch keeps of one stream: its addresses, what was written, and its socket once found."""

    __slots__ = ("conn_id", "fd", "inode", "local", "mark", "peer", "sent")

    def __init__(self, conn_id: int, local: str, peer: str) -> None:
        self.conn_id = conn_id
        self.local = local
        self.peer = peer
        self.sent = 0
        self.mark = 0
        self.fd = -1
        self.inode = ""


class BacklogWatch:
    """Finds RSGI streams whose unread backlog in granian passed ``limit`` bytes, and cuts them."""

    def __init__(self, limit: int, on_slow: Callable[[int], None], schedule: Callable[[Callable[[], None]], object]):
        self.limit = limit
        self.step = max(1, limit // 2)
        self._on_slow = on_slow
        self._schedule = schedule
        self._suspects: dict[int, Watched] = {}  # bounded by the open streams; emptied on every check
        self._pending = False
        self.checks = 0
        self.cut = 0

    def suspect(self, watched: Watched) -> None:
        """``watched.sent`` passed ``watched.mark + step``: check the stream soon (the writer counts ``sent``)."""
        if not SUPPORTED:
            watched.mark = watched.sent
            return
        self._suspects[id(watched)] = watched
        if not self._pending:
            self._pending = True
            self._schedule(self._check)

    def forget(self, watched: Watched) -> None:
        """The stream closed."""
        self._suspects.pop(id(watched), None)

    def _check(self) -> None:
        self._pending = False
        suspects, self._suspects = list(self._suspects.values()), {}
        try:
            _locate([w for w in suspects if not _still_valid(w)])
        except OSError as err:  # /proc unreadable: nothing to learn this time
            log.debug("backlog watch could not read /proc: %s", err)
        for watched in suspects:
            self.checks += 1
            held = _held_by_server(watched)
            watched.mark = watched.sent
            if held is not None and held > self.limit:
                self.cut += 1
                _shutdown(watched.fd)
                self._on_slow(watched.conn_id)


def _still_valid(watched: Watched) -> bool:
    if watched.fd < 0:
        return False
    try:
        return os.readlink(f"/proc/self/fd/{watched.fd}") == f"socket:[{watched.inode}]"
    except OSError:
        return False


def _hex_address(address: str) -> tuple[str, str] | None:
    """``'127.0.0.1:5000'`` as ``/proc/net/tcp`` writes it (``'0100007F:1388'``), IPv4 only; else None."""
    host, _, port = address.rpartition(":")
    try:
        packed = socket.inet_aton(host)
    except OSError:
        return None
    return f"{int.from_bytes(packed, 'little'):08X}:{int(port):04X}", host


def _locate(watched: Iterable[Watched]) -> None:
    """Fill in the socket inode and descriptor of each stream, from ``/proc``."""
    wanted: dict[tuple[str, str], Watched] = {}
    for w in watched:
        local, peer = _hex_address(w.local), _hex_address(w.peer)
        if local is not None and peer is not None:
            wanted[(local[0], peer[0])] = w
    if not wanted:
        return
    inodes: dict[str, Watched] = {}
    with open("/proc/self/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split(None, 10)
            match = wanted.get((fields[1], fields[2]))
            if match is not None:
                match.inode = fields[9]
                inodes[fields[9]] = match
    if not inodes:
        return
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{name}")
            if link.startswith("socket:[") and link[8:-1] in inodes:
                inodes[link[8:-1]].fd = int(name)


def _held_by_server(watched: Watched) -> int | None:
    """Bytes written to granian for this stream that have not reached the kernel yet; None when unknown."""
    if watched.fd < 0:
        return None
    try:
        with socket.fromfd(watched.fd, socket.AF_INET, socket.SOCK_STREAM) as sock:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
            outq = _OUTQ.unpack(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * _OUTQ.size))[0]
    except OSError:
        return None
    if len(info) < _BYTES_ACKED_OFFSET + _BYTES_ACKED.size:
        return None
    (acked,) = _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_OFFSET)
    return int(watched.sent - acked - outq)


def _shutdown(fd: int) -> None:
    """Shut the socket down (both ways) without closing granian's descriptor: granian sees the error and drops it."""
    with contextlib.suppress(OSError), socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.shutdown(socket.SHUT_RDWR)
