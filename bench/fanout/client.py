"""The lean load client of ``bench/fanout`` (and ``loadtest/hold.py``): thousands of SSE streams on one core.

Each stream is a bare :class:`asyncio.Protocol` on uvloop: no HTTP library, no per-frame Python objects. A read is
cut at its last complete frame (``\\n\\n``); the sequence numbers the benchmark put in the payloads are pulled out of
the whole read by one compiled regex and compared, as a list, with the numbers this stream must see next. Only a
mismatch (a loss, a duplicate, or neighbours swapped across two reads by concurrent publishers) takes the slow
path, which accepts each number once in any order. Chunked transfer framing needs no decoding: servers write
whole frames, so chunk-size lines only ever sit between frames, where the regex does not look.

The publisher is a raw HTTP/1.1 keep-alive connection that sends one request at a time and reads the status and
``content-length`` of each answer.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "EXPECTED",
    "Monitor",
    "Publisher",
    "Subscriber",
    "open_streams",
    "payload",
]

_SEQ = re.compile(rb'"bseq":(\d+)')
_TS = re.compile(rb'"bseq":\d+,"t":(\d+)')
_HEAD_END = b"\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
#: ``EXPECTED[i]`` is how sequence number ``i`` looks on the wire.
EXPECTED = [b"%d" % i for i in range(200_000)]


def payload(seq: int, size: int = 100, *, t_ns: int | None = None) -> bytes:
    """A JSON payload of about ``size`` bytes carrying ``bseq`` and the send time ``t`` (ns since the epoch)."""
    head = b'{"bseq":%d,"t":%d,"pad":"' % (seq, time.time_ns() if t_ns is None else t_ns)
    return head + b"x" * max(0, size - len(head) - 2) + b'"}'


class Monitor:
    """What every stream received in the current phase, checked against what each one must receive."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.next = [0] * n
        self.expected = [0] * n
        self.received = 0
        self.reads = 0
        self.duplicates = 0
        self.ahead: dict[int, set[int]] = {}
        self.closed = 0
        self.errors: list[str] = []
        self.latencies: list[int] | None = None
        self._target = -1
        self._waiter: asyncio.Future[float] | None = None
        self.last_at = 0.0

    def reset(self, expected: list[int], *, latency: bool) -> None:
        """Start a phase: stream ``i`` must now receive sequence numbers ``0 .. expected[i] - 1``, in order."""
        self.next = [0] * self.n
        self.expected = expected
        self.ahead: dict[int, set[int]] = {}
        self.received = self.reads = self.duplicates = 0
        self.latencies = [] if latency else None
        self._target, self._waiter = -1, None

    def wait_for(self, total: int) -> asyncio.Future[float]:
        """A future that resolves (to the time of that read) once ``total`` frames were received in this phase."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if self.received >= total:
            fut.set_result(time.perf_counter())
        else:
            self._target, self._waiter = total, fut
        return fut

    def got(self, idx: int, data: bytes, end: int) -> None:
        seqs = _SEQ.findall(data, 0, end)
        if not seqs:
            return
        n = len(seqs)
        start = self.next[idx]
        want = EXPECTED[start : start + n]
        # Concurrent publishers may reorder neighbours: in order within one read is the common case.
        if (seqs == want or sorted(seqs, key=int) == want) and idx not in self.ahead:
            self.next[idx] = start + n
        else:
            self._slow(idx, seqs)
        self.received += n
        self.reads += 1
        if self.latencies is not None:
            now = time.time_ns()
            self.latencies.extend(now - int(t) for t in _TS.findall(data, 0, end))
        if self.received >= self._target and self._waiter is not None:
            self.last_at = time.perf_counter()
            if not self._waiter.done():
                self._waiter.set_result(self.last_at)
            self._waiter = None

    def _slow(self, idx: int, seqs: list[bytes]) -> None:
        """Each number once, in any order: ``next`` is the lowest not yet seen, ``ahead`` those seen above it."""
        nxt = self.next[idx]
        ahead = self.ahead.get(idx, set())
        for raw in seqs:
            seq = int(raw)
            if seq < nxt or seq in ahead:
                self.duplicates += 1
            elif seq == nxt:
                nxt += 1
                while nxt in ahead:
                    ahead.remove(nxt)
                    nxt += 1
            else:
                ahead.add(seq)
        self.next[idx] = nxt
        if ahead:
            self.ahead[idx] = ahead
        else:
            self.ahead.pop(idx, None)

    def verdict(self) -> dict[str, int]:
        """Frames lost (never seen) and duplicated (seen twice, or beyond what was due) in this phase."""
        lost = extra = 0
        for idx, (due, nxt) in enumerate(zip(self.expected, self.next, strict=True)):
            seen = {s for s in self.ahead.get(idx, ()) if s < due}
            got = min(nxt, due) + len(seen)
            lost += due - got
            extra += max(0, nxt - due) + len(self.ahead.get(idx, ())) - len(seen)
        return {"lost": lost, "duplicated": self.duplicates + extra, "closed": self.closed}


class Subscriber(asyncio.Protocol):
    """One stream. Ready once a 200 and its first complete frame arrived, whatever that frame is: sse-fast's
    ``connect`` event (and the Python peers' copies of it), or the ``: hi`` comment nchan opens a stream with."""

    __slots__ = ("idx", "mon", "ready", "request", "status_ok", "tail", "transport")

    def __init__(self, idx: int, mon: Monitor, request: bytes, ready: asyncio.Future[None]) -> None:
        self.idx, self.mon, self.request, self.ready = idx, mon, request, ready
        self.tail = b""
        self.status_ok = False
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.tail:
            data = self.tail + data
        cut = data.rfind(b"\n\n")
        if cut < 0:
            self.tail = data
            return
        self.tail = data[cut + 2 :]
        if not self.status_ok:
            if not data.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                self._fail(data[: data.find(b"\r\n")].decode(errors="replace"))
                return
            self.status_ok = True
            if not self.ready.done():
                self.ready.set_result(None)
        self.mon.got(self.idx, data, cut)

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"stream {self.idx}: {why}"))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"stream {self.idx} closed before its first frame: {exc}"))
        else:
            self.mon.closed += 1

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_streams(
    host: str,
    port: int,
    indices: range,
    mon: Monitor,
    *,
    path: Callable[[int], str],
    sources: int = 4,
    concurrency: int = 256,
) -> list[Subscriber]:
    """Open one stream per index, ``concurrency`` at a time, from ``127.0.0.2 .. 127.0.0.(1+sources)``."""
    loop = asyncio.get_running_loop()
    subs: list[Subscriber] = []
    sem = asyncio.Semaphore(concurrency)

    async def one(idx: int) -> None:
        async with sem:
            ready: asyncio.Future[None] = loop.create_future()
            request = b"GET %s HTTP/1.1\r\nhost: %s:%d\r\naccept: text/event-stream\r\n\r\n" % (
                path(idx).encode(),
                host.encode(),
                port,
            )
            source = f"127.0.0.{2 + idx % sources}" if host.startswith("127.") else None
            _, sub = await loop.create_connection(
                lambda: Subscriber(idx, mon, request, ready),
                host,
                port,
                local_addr=(source, 0) if source else None,
            )
            subs.append(sub)
            await asyncio.wait_for(ready, 30)

    await asyncio.gather(*(one(i) for i in indices))
    return subs


class Publisher(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection for POSTs, one request in flight."""

    def __init__(self, host: str, port: int, *, api_key: str | None = None) -> None:
        self.host, self.port = host, port
        self.host_header = b"%s:%d" % (host.encode(), port)
        # sse-fast limits each client's publish rate, but not a back end with an API key (the peers ignore it).
        self.extra = b"x-api-key: %s\r\n" % api_key.encode() if api_key else b""
        self.buf = b""
        self.fut: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: Any = None

    @classmethod
    async def connect(cls, host: str, port: int, *, api_key: str | None = None) -> Publisher:
        loop = asyncio.get_running_loop()
        _, pub = await loop.create_connection(lambda: cls(host, port, api_key=api_key), host, port)
        return pub

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    async def ensure_open(self) -> None:
        """Reconnect when the server closed the idle connection (uvicorn's keep-alive timeout is 5 s)."""
        if self.transport is None or self.transport.is_closing():
            self.buf = b""
            await asyncio.get_running_loop().create_connection(lambda: self, self.host, self.port)

    def post(self, path: str, body: bytes) -> asyncio.Future[tuple[int, bytes]]:
        """Send one POST; the future gets ``(status, body)``."""
        self.fut = asyncio.get_running_loop().create_future()
        self.transport.write(
            b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
            % (path.encode(), self.host_header, len(body), self.extra, body)
        )
        return self.fut

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(_HEAD_END)
        if end < 0:
            return
        match = _CONTENT_LENGTH.search(self.buf, 0, end + 2)
        length = int(match.group(1)) if match else 0
        if len(self.buf) < end + 4 + length:
            return
        status = int(self.buf[9:12])
        body = self.buf[end + 4 : end + 4 + length]
        self.buf = self.buf[end + 4 + length :]
        if self.fut is not None and not self.fut.done():
            self.fut.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(ConnectionError(f"publisher connection lost: {exc}"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of ``pid`` (all its threads) in seconds, from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid``, from ``/proc/<pid>/status``."""
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except FileNotFoundError:
            continue
    return out
