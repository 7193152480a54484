"""The connection-level watch: RSGI slow consumers, and dead peers under either interface.

**Slow consumers (RSGI).** granian's RSGI ``send_bytes`` never blocks and never reports how much it holds: a client
that stops reading makes granian buffer everything written to it. The kernel knows how far the client got, so
sse-fast asks it, but only for *suspects*: a stream becomes one each time another half of ``SSE_FAST_QUEUE_BYTES``
has been written to it since it was last checked. For a suspect, the socket is found through ``/proc`` (its
addresses in ``/proc/net/tcp`` or ``/proc/net/tcp6``, IPv4-mapped peers of a dual-stack listener included, then
its descriptor in ``/proc/self/fd``) and

    held by granian  ~=  bytes written by sse-fast  -  tcpi_bytes_acked  -  bytes in the kernel send queue

(``TCP_INFO`` and ``SIOCOUTQ``; an underestimate, since acked bytes include HTTP chunk framing). Past
``SSE_FAST_QUEUE_BYTES`` the stream is a slow consumer: its socket is shut down, so that granian drops what it
holds, and the client resumes from the replay log when it comes back. A stream whose socket cannot be found (not
Linux, a unix-socket listener, a lookup that failed) counts everything written since it was last measured as held:
it is cut at the byte limit rather than never, since an unbounded buffer is the one outcome not allowed.
Idle and normal streams cost one addition per write.

**Dead peers (both interfaces).** A client that vanishes without a FIN or RST (cable pulled, a phone asleep) leaves
a socket the kernel retries for many minutes. The keepalive comment puts data on every stream at least every
``SSE_FAST_KEEPALIVE`` seconds, and a live peer acknowledges it within a round trip; so every few seconds each
stream's ``TCP_INFO`` is read, and one that has retransmitted (or probed) without receiving any ACK for longer
than the keepalive plus :data:`DEAD_PEER_MARGIN` is a dead peer: its socket is reset, the connection removed (its
later direct messages go to the mailbox) and counted. The bound from the last sign of life to the removal is
keepalive + margin + sweep period, at most twice the keepalive plus 15 s.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import socket
import stat
import struct
import sys
import termios
from collections.abc import Callable, Iterable, Iterator

from sse_fast._core import dead_peers

__all__ = ["DEAD_PEER_MARGIN", "SUPPORTED", "BacklogWatch", "Watched", "address"]

log = logging.getLogger("sse_fast.backlog")

SUPPORTED = sys.platform.startswith("linux") and os.path.exists("/proc/self/net/tcp")

#: Seconds past the keepalive that a peer may leave data unacknowledged before it is declared dead: room for a
#: slow round trip and a few lost segments, far below the minutes the kernel itself would wait.
DEAD_PEER_MARGIN = 10.0
_SWEEP_PERIOD = 5.0  # at most; never longer than the keepalive

_TCP_INFO_LEN = 232
_BYTES_ACKED = struct.Struct("=Q")  # tcpi_bytes_acked, at offset 120 of struct tcp_info (Linux >= 4.1)
_BYTES_ACKED_OFFSET = 120
_OUTQ = struct.Struct("=i")
_LINGER_RESET = struct.pack("ii", 1, 0)  # close() sends a RST and frees the socket at once
_TABLES = {"tcp": socket.AF_INET, "tcp6": socket.AF_INET6}

_MAPPED = b"\0" * 10 + b"\xff\xff"  # ::ffff:a.b.c.d, how a dual-stack socket sees an IPv4 peer
_WILDCARDS = (b"\0" * 16, _MAPPED + b"\0" * 4)  # a listener on :: or 0.0.0.0


def address(host: str, port: object) -> str:
    """An ASGI ``(host, port)`` in the form granian's RSGI scope uses (``'[::1]:80'``, ``'127.0.0.1:80'``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Watched:
    """What the watch keeps of one stream: its addresses, what was written, and its socket once found."""

    __slots__ = ("conn_id", "family", "fd", "inode", "left", "local", "mark", "peer", "sent", "shared")

    def __init__(self, conn_id: int, local: str, peer: str, *, shared: bool = False) -> None:
        self.conn_id = conn_id
        self.local = local
        self.peer = peer
        # HTTP/2: the socket carries other streams, so its TCP_INFO says nothing of this one, and shutting it down
        # would end them all. Such a stream is never measured through the socket nor cut by shutting it down.
        self.shared = shared
        self.sent = 0
        self.mark = 0
        self.left = 0  # bytes known to have left granian (acked or in the kernel) at the last measurement
        self.fd = -1
        self.family = socket.AF_INET
        self.inode = 0  # 0: not looked for yet; -1: looked for, not found


class BacklogWatch:
    """Cuts RSGI streams whose unread backlog in granian passed ``limit`` bytes, and streams whose peer is gone.

    ``on_cut(conn_id, reason)`` removes the connection (``slow_consumer`` or ``dead_peer``).
    """

    def __init__(self, limit: int, on_cut: Callable[[int, str], None], *, keepalive: float) -> None:
        self.limit = limit
        self.step = max(1, limit // 2)
        self.dead_after_ms = int((keepalive + DEAD_PEER_MARGIN) * 1000)
        self.sweep_period = min(_SWEEP_PERIOD, keepalive)
        self._on_cut = on_cut
        self._schedule: Callable[[Callable[[], None]], object] = lambda _: None  # until start()
        self._suspects: dict[int, Watched] = {}  # bounded by the open streams; emptied on every check
        self._streams: dict[int, Watched] = {}  # every open stream, for the dead-peer sweep
        self._pending = False
        self._next_sweep = 0.0
        self._warned_address = False
        self._warned_http2 = False
        self.checks = 0
        self.cut = 0
        self.dead = 0

    def start(self, schedule: Callable[[Callable[[], None]], object]) -> None:
        """Check suspects through ``schedule`` (the loop's ``call_soon``) from now on; warn if the watch is blind."""
        self._schedule = schedule
        if not SUPPORTED:
            log.warning(
                "the connection watch needs Linux (/proc/net/tcp): dead peers are not detected, and RSGI streams are"
                " cut as slow consumers once SSE_FAST_QUEUE_BYTES has been written to them (ASGI has backpressure)"
            )

    def watch(self, watched: Watched) -> None:
        """A stream opened: sweep it for a dead peer until :meth:`forget`."""
        if not SUPPORTED:
            return
        if _endpoint(watched.peer) is None:
            self._warn_address(watched)
            return
        self._streams[id(watched)] = watched

    def suspect(self, watched: Watched) -> None:
        """``watched.sent`` passed ``watched.mark + step``: check the stream soon (the writer counts ``sent``)."""
        self._suspects[id(watched)] = watched
        if not self._pending:
            self._pending = True
            self._schedule(self._check)

    def forget(self, watched: Watched) -> None:
        """The stream closed."""
        self._suspects.pop(id(watched), None)
        self._streams.pop(id(watched), None)

    def warn_rsgi_http2(self) -> None:
        """An RSGI stream arrived over HTTP/2: say once that it can only be bounded by cutting it (see the module)."""
        if not self._warned_http2:
            self._warned_http2 = True
            log.warning(
                "HTTP/2 under RSGI: granian tells nothing of what it holds for one stream of a shared connection, so"
                " each such stream is cut as a slow consumer once SSE_FAST_QUEUE_BYTES has been written to it (the"
                " client resumes); serve HTTP/2 with --interface asgi, which has per-stream backpressure"
            )

    def _warn_address(self, watched: Watched) -> None:
        if not self._warned_address:
            self._warned_address = True
            log.warning(
                "stream from %r on %r is not TCP (a unix socket?): dead peers on this listener are not detected, and"
                " RSGI streams are cut as slow consumers once SSE_FAST_QUEUE_BYTES has been written to them",
                watched.peer,
                watched.local,
            )

    def _check(self) -> None:
        self._pending = False
        suspects, self._suspects = list(self._suspects.values()), {}
        _locate_missing([w for w in suspects if not w.shared])
        for watched in suspects:
            self.checks += 1
            held = _held_by_server(watched)
            watched.mark = watched.sent
            if held > self.limit:
                self.cut += 1
                self.forget(watched)
                _shutdown(watched)
                self._on_cut(watched.conn_id, "slow_consumer")

    def sweep(self, now: float) -> None:
        """A tick: every ``sweep_period`` seconds, cut the streams whose peer stopped acknowledging anything."""
        if now < self._next_sweep or not self._streams:
            return
        self._next_sweep = now + self.sweep_period
        streams = list(self._streams.values())
        # Each socket is looked up once (it exists before its stream registers): a sweep pays no /proc scan for
        # the streams it already knows, nor a check of their descriptors but for the ones it is about to cut.
        _locate_missing([w for w in streams if w.fd < 0 and w.inode == 0], revalidate=False)
        located = [w for w in streams if w.fd >= 0]
        # The rule and every socket read are in the core: one call, no Python object per stream, no GIL held.
        for index in dead_peers([w.fd for w in located], self.dead_after_ms):
            watched = located[index]
            if _still_valid(watched):
                self.dead += 1
                self.forget(watched)
                _shutdown(watched, reset=True)
                self._on_cut(watched.conn_id, "dead_peer")


# -- finding a stream's socket --------------------------------------------------------------------------------------


def _endpoint(text: str) -> tuple[socket.AddressFamily, bytes, int] | None:
    """``'[::1]:80'`` or ``'10.0.0.1:80'`` as (family, 16-byte address, IPv4 as IPv4-mapped; port), None if not TCP."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    for family, prefix in ((socket.AF_INET, _MAPPED), (socket.AF_INET6, b"")):
        with contextlib.suppress(OSError):
            return family, prefix + socket.inet_pton(family, host), int(port)
    return None


_local_endpoint = functools.lru_cache(maxsize=64)(_endpoint)  # a listener's streams share their local address


def _proc_hex(packed: bytes, table: str) -> str | None:
    """An address as ``/proc/net/<table>`` writes it (32-bit words in host order), or None if it cannot be there."""
    if table == "tcp":
        return f"{int.from_bytes(packed[12:], sys.byteorder):08X}" if packed[:12] == _MAPPED else None
    return "".join(f"{int.from_bytes(packed[i : i + 4], sys.byteorder):08X}" for i in range(0, 16, 4))


def _wanted(watched: Iterable[Watched]) -> dict[tuple[str, str, str], tuple[str | None, list[Watched]]]:
    """(table, local port, peer) as ``/proc`` writes them -> (local address, None for a wildcard; the streams).

    Under HTTP/2 several streams share one socket, hence one key.

    The listener's address family picks the table: the sockets of an IPv6 listener are all in ``tcp6``, IPv4
    peers of a dual-stack one included (as ``::ffff:a.b.c.d``, however the peer address was written).
    """
    wanted: dict[tuple[str, str, str], tuple[str | None, list[Watched]]] = {}
    for w in watched:
        local, peer = _local_endpoint(w.local), _endpoint(w.peer)
        if local is None or peer is None:
            continue
        table = "tcp" if local[0] == socket.AF_INET else "tcp6"
        peer_hex = _proc_hex(peer[1], table)
        local_hex = None if local[1] in _WILDCARDS else _proc_hex(local[1], table)
        if peer_hex is not None:
            wanted.setdefault((table, f"{local[2]:04X}", f"{peer_hex}:{peer[2]:04X}"), (local_hex, []))[1].append(w)
    return wanted


def _locate_missing(watched: Iterable[Watched], *, revalidate: bool = True) -> None:
    """Find the socket of each stream that has none (or whose descriptor no longer is its socket), from ``/proc``.

    A stream whose socket is not found keeps ``fd = -1`` and an ``inode`` of -1.
    """
    missing = []
    for w in watched:
        if not revalidate or not _still_valid(w):
            w.fd, w.inode = -1, -1
            missing.append(w)
    if not SUPPORTED or not missing:
        return
    try:
        _locate(missing)
    except OSError as err:  # /proc unreadable: nothing to learn this time
        log.debug("the connection watch could not read /proc: %s", err)


def _locate(watched: Iterable[Watched]) -> None:
    wanted = _wanted(watched)
    inodes: dict[int, list[Watched]] = {}
    for table in {key[0] for key in wanted}:
        with open(f"/proc/self/net/{table}") as lines:
            next(lines)
            for line in lines:
                fields = line.split(None, 10)
                local = fields[1]
                match = wanted.get((table, local[-4:], fields[2]))
                if match is None or fields[9] == "0" or match[0] not in (None, local[:-5]):
                    continue  # not ours, or a TIME_WAIT remnant of an earlier connection
                for w in match[1]:
                    w.inode, w.family = int(fields[9]), _TABLES[table]
                inodes[int(fields[9])] = match[1]
    if inodes:
        _find_descriptors(inodes)


def _find_descriptors(inodes: dict[int, list[Watched]]) -> None:
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError, ValueError):
            fd = int(name)
            info = os.fstat(fd)  # cheaper than readlink: no path walk through /proc
            if info.st_ino in inodes and stat.S_ISSOCK(info.st_mode):
                for w in inodes[info.st_ino]:
                    w.fd = fd


def _still_valid(watched: Watched) -> bool:
    if watched.fd < 0:
        return False
    try:
        info = os.fstat(watched.fd)
    except OSError:
        return False
    return info.st_ino == watched.inode and stat.S_ISSOCK(info.st_mode)


# -- reading and cutting it -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _borrowed(watched: Watched) -> Iterator[socket.socket]:
    """granian's socket as a Python object that never closes it (no ``dup``, detached afterwards)."""
    sock = socket.socket(watched.family, socket.SOCK_STREAM, 0, watched.fd)
    try:
        yield sock
    finally:
        sock.detach()


def _tcp_info(watched: Watched) -> bytes | None:
    if watched.fd < 0:
        return None
    try:
        with _borrowed(watched) as sock:
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except OSError:
        return None


def _held_by_server(watched: Watched) -> int:
    """Bytes written to granian for this stream that have not reached the kernel yet (as far as is known).

    A stream that shares its socket (HTTP/2) is never measured: what left the socket belongs to every stream on it.
    """
    info = None if watched.shared else _tcp_info(watched)
    if info is not None and len(info) >= _BYTES_ACKED_OFFSET + _BYTES_ACKED.size:
        try:
            outq = _OUTQ.unpack(fcntl.ioctl(watched.fd, termios.TIOCOUTQ, b"\0" * _OUTQ.size))[0]
        except OSError:
            pass
        else:
            watched.left = _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_OFFSET)[0] + outq
    return watched.sent - watched.left


def _shutdown(watched: Watched, *, reset: bool = False) -> None:
    """Shut the socket down (both ways) without closing granian's descriptor: granian sees the error and drops it.

    With ``reset``, granian's close then sends a RST and frees the socket at once, instead of the kernel retrying
    the unacknowledged data to a peer that is gone.
    """
    if watched.fd < 0 or not _still_valid(watched) or (watched.shared and not reset):
        return  # a slow HTTP/2 stream ends alone (its transport is dropped); a dead peer takes the whole socket
    with contextlib.suppress(OSError), _borrowed(watched) as sock:
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        sock.shutdown(socket.SHUT_RDWR)
