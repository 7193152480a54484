"""A fixed, deterministic in-process fan-out on sse-fast's real data path, for instruction counts (issue 17).

What runs is the production code from :meth:`Streams.deliver` to the transport, wired by a real worker
:class:`~sse_fast.server.app.App` (memory broker, default settings, never started): the Rust hub routes and queues
each frame, the writer (:meth:`Streams._flush`, and whatever it hands to the hub) drains every woken queue into one
buffer per connection, and a real :class:`~sse_fast.server.rsgi.RsgiSink`, counted by the app's
:class:`~sse_fast.server.backlog.BacklogWatch`, hands it to the transport. Frames are built here from JSON encoded
beforehand, as a broker would have encoded it once (the broker's own work is not measured). Two things are
stand-ins:

- the transport: :class:`FakeTransport` behaves like granian's RSGI stream transport (``send_bytes`` takes the bytes
  and returns an already-finished awaitable whose ``__next__`` raises ``StopIteration``) and keeps what it is given,
  to be checked afterwards. Its ``send_bytes`` is a Python function: its call and body are counted with
  everything else (about 700 Ir per write, a third of a broadcast delivery, on 2026-12-01), a constant per write
  in place of granian's own Rust method;
- the event loop: :class:`SteppedLoop` only records what ``call_soon`` is given; the scenario runs it (the writer)
  after each turn's publishes, so nothing depends on timing. The ticker is scheduled and never run.

The streams: 1,000 connections of 500 clients (two each), each on one of 20 rooms (``room.<k>``) and every fourth
also on ``news.*``; every frame is resumable (it carries an ``id:`` line). After a warm-up turn of each kind (not
measured: CPython specialises its bytecode on first use, and a stream's first write opens it), four measured
phases, each one ``sys.call_tracing`` call:

    broadcast   100 turns of one broadcast, one flush each         100,000 deliveries, 100,000 writes
    topic        40 turns of one topic publish (30 rooms, 10 news)   4,000 deliveries
    direct      200 turns of one direct publish to a client             400 deliveries
    coalesced    25 turns of four broadcasts, one flush each        100,000 deliveries,  25,000 writes

``sys.call_tracing`` is only the marker: ``bench/callgrind/run.py`` has callgrind count instructions inside it
(``--toggle-collect``) and dump a profile after each phase, so start-up, imports, the setup and the check count for
nothing. Without a trace function set, it calls its argument like a plain call. ``--instrument`` loads callgrind's
client requests (``instrument.c``, built by run.py) to turn instrumentation on only around the phases.

Afterwards every sink's bytes are compared with what a model of the routing (written here, not asked of the hub)
says it must have received, frame by frame with its ``id:`` line, and its write count with the turns it had frames
in; any difference exits 1, so that the figures can never come from a run that measured nothing. The summary (phase
by phase: publishes, deliveries, writes, bytes) is printed as one JSON object.

    python bench/callgrind/scenario.py [--lose-write N] [--instrument LIBRARY]

``--lose-write N`` makes one transport drop the bytes of its N-th write, for the test that proves the check catches
it (tests/test_bench_callgrind.py).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import itertools
import json
import sys
from collections.abc import Callable
from typing import Any

import msgspec

from sse_fast._core import NORMAL, Frame
from sse_fast.server.app import App
from sse_fast.server.rsgi import RsgiSink
from sse_fast.settings import Settings
from sse_fast.streams import Streams

CONNECTIONS = 1000
STREAMS_PER_CLIENT = 2
ROOMS = 20
NEWS_EVERY = 4  # every fourth connection also subscribes to news.*
PAYLOAD_PAD = "x" * 100  # a 100-byte payload, as in bench/fanout
PHASES = ("broadcast", "topic", "direct", "coalesced")

# A publish: (seq, target, topic); a turn: the publishes one flush writes; a phase: its turns.
Publish = tuple[int, str | None, str | None]
Turn = list[Publish]
Prepared = list[list[tuple[bytes, int, str | None, str | None]]]  # a phase's turns with each publish's JSON


class _Queued:
    """granian's answer to a queued ``send_bytes``: an awaitable that is already finished."""

    __slots__ = ()

    def __await__(self) -> _Queued:
        return self

    def __iter__(self) -> _Queued:
        return self

    def __next__(self) -> None:
        raise StopIteration


_QUEUED = _Queued()


class FakeTransport:
    """An RSGI stream transport that keeps what it is sent, as granian's would hold it for the socket.

    It keeps the ``bytes`` objects themselves (a reference each, no copy): copying them into one growing buffer per
    connection cost more instructions than everything sse-fast does per delivery.
    """

    __slots__ = ("chunks",)

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def send_bytes(self, data: bytes) -> _Queued:
        self.chunks.append(data)
        return _QUEUED


class LosingTransport(FakeTransport):
    """A transport that silently drops the bytes of one write (``--lose-write``): the check must catch it."""

    __slots__ = ("lose_at",)

    def __init__(self, lose_at: int) -> None:
        super().__init__()
        self.lose_at = lose_at

    def send_bytes(self, data: bytes) -> _Queued:
        self.chunks.append(data if len(self.chunks) + 1 != self.lose_at else b"")
        return _QUEUED


class _Handle:
    def cancel(self) -> None:
        pass


class SteppedLoop:
    """What :class:`Streams` uses of an event loop, with the writer run by hand: :meth:`run_ready` is one loop turn."""

    def __init__(self) -> None:
        self.ready: list[Callable[[], object]] = []

    def time(self) -> float:
        return 0.0

    def call_later(self, delay: float, callback: Callable[[], object]) -> _Handle:
        return _Handle()  # the ticker: never due here

    def call_soon(self, callback: Callable[[], object]) -> None:
        self.ready.append(callback)

    def run_ready(self) -> None:
        ready, self.ready = self.ready, []
        for callback in ready:
            callback()


def client_of(conn: int) -> str:
    return f"u{conn // STREAMS_PER_CLIENT}"


def topics_of(conn: int) -> tuple[str, ...]:
    room = (f"room.{conn % ROOMS}",)
    return (*room, "news.*") if conn % NEWS_EVERY == 0 else room


def recipients(target: str | None, topic: str | None) -> range | list[int]:
    """The connections a publish must reach: the model the hub's routing is checked against."""
    if target is not None:
        first = int(target[1:]) * STREAMS_PER_CLIENT
        return range(first, first + STREAMS_PER_CLIENT)
    if topic is None:
        return range(CONNECTIONS)
    if topic.startswith("room."):
        return range(int(topic[5:]), CONNECTIONS, ROOMS)
    return range(0, CONNECTIONS, NEWS_EVERY)  # news.<anything> matches news.*


def plan() -> dict[str, list[Turn]]:
    """Every phase's turns, the frames' seqs counting from 1; the warm-up is one turn of each kind."""
    take = itertools.count(1).__next__
    clients = CONNECTIONS // STREAMS_PER_CLIENT
    news = ("sport", "weather", "tech", "arts", "local")
    topics = [f"news.{news[k % 5]}" if k % 4 == 3 else f"room.{(7 * k) % ROOMS}" for k in range(40)]  # 30 rooms
    phases: dict[str, list[Turn]] = {
        "warmup": [
            [(take(), None, None)],
            [(take(), None, "room.3")],
            [(take(), None, "news.sport")],
            [(take(), "u7", None)],
            [(take(), None, None) for _ in range(4)],
        ],
        "broadcast": [[(take(), None, None)] for _ in range(100)],
        "topic": [[(take(), None, topic)] for topic in topics],
        "direct": [[(take(), f"u{(37 * j) % clients}", None)] for j in range(200)],
        "coalesced": [[(take(), None, None) for _ in range(4)] for _ in range(25)],
    }
    return phases


def envelope(seq: int, target: str | None, topic: str | None) -> bytes:
    """The JSON a broker would have encoded once for this publish (fixed: no clock, no random id)."""
    return msgspec.json.encode(
        {
            "id": f"m{seq:08d}",
            "type": "json",
            "priority": NORMAL,
            "timestamp": 1_700_000_000_000 + seq,
            "source": "bench",
            "target": target,
            "topic": topic,
            "payload": {"n": seq, "text": PAYLOAD_PAD},
        }
    )


def run_phase(streams: Streams, loop: SteppedLoop, turns: Prepared) -> None:
    """The measured part: each turn's publishes, then one writer turn."""
    deliver, run_ready = streams.deliver, loop.run_ready
    for turn in turns:
        for data, seq, target, topic in turn:
            deliver(Frame(data, event="json", priority=NORMAL, seq=seq), target=target, topic=topic)
        run_ready()


def open_streams(lose_write: int | None) -> tuple[App, SteppedLoop, list[FakeTransport]]:
    """A worker's :class:`App` (memory broker, default settings; not started: no signal handler, no ticker run) with
    ``CONNECTIONS`` RSGI streams registered the way :func:`sse_fast.server.rsgi.serve` registers them."""
    app = App(Settings())
    loop = SteppedLoop()
    app.streams.start(loop)  # type: ignore[arg-type]  # only time, call_later and call_soon are used
    transports: list[FakeTransport] = []
    for conn in range(CONNECTIONS):
        lossy = lose_write is not None and conn == CONNECTIONS // 2
        transport = LosingTransport(lose_write or 0) if lossy else FakeTransport()
        sink = RsgiSink(transport, app.backlog, "127.0.0.1:8000", f"127.0.0.1:{20000 + conn}")
        sink.conn_id = app.streams.open(client_of(conn), topics_of(conn), sink).id
        app.backlog.watch(sink)
        transports.append(transport)
    return app, loop, transports


def expected(phases: dict[str, list[Turn]], id_prefix: str) -> tuple[list[bytearray], list[int]]:
    """Every connection's bytes and write count, from the model."""
    data = [bytearray() for _ in range(CONNECTIONS)]
    writes = [0] * CONNECTIONS
    for turns in phases.values():
        for turn in turns:
            touched: set[int] = set()
            for seq, target, topic in turn:
                frame = Frame(envelope(seq, target, topic), event="json", priority=NORMAL, seq=seq)
                wire = b"id: %s%d\n" % (id_prefix.encode(), seq) + frame.body
                for conn in recipients(target, topic):
                    data[conn] += wire
                    touched.add(conn)
            for conn in touched:
                writes[conn] += 1
    return data, writes


def check(phases: dict[str, list[Turn]], transports: list[FakeTransport], streams: Streams) -> list[str]:
    """What differs from the model (empty when every sink got exactly what it should)."""
    want_data, want_writes = expected(phases, streams.id_prefix)
    problems = []
    for conn, transport in enumerate(transports):
        got = b"".join(transport.chunks)
        if got != want_data[conn] or len(transport.chunks) != want_writes[conn]:
            problems.append(
                f"connection {conn}: {len(got)} bytes in {len(transport.chunks)} writes,"
                f" expected {len(want_data[conn])} bytes in {want_writes[conn]} writes"
            )
    counters = streams.hub.counters()
    if counters["queued_frames"] or counters["dropped"] or counters["overflowed"] or counters["evicted"]:
        problems.append(f"the hub did not end empty and lossless: {counters}")
    return problems


def summary(phases: dict[str, list[Turn]], id_prefix: str) -> dict[str, Any]:
    """Per measured phase: publishes, turns, deliveries, writes and bytes, from the model."""
    out: dict[str, Any] = {}
    for name in PHASES:
        publishes = deliveries = writes = nbytes = 0
        for turn in phases[name]:
            touched: set[int] = set()
            for seq, target, topic in turn:
                reached = recipients(target, topic)
                size = len(b"id: %s%d\n" % (id_prefix.encode(), seq)) + len(
                    Frame(envelope(seq, target, topic), event="json", seq=seq).body
                )
                publishes += 1
                deliveries += len(reached)
                nbytes += size * len(reached)
                touched.update(reached)
            writes += len(touched)
        out[name] = {
            "turns": len(phases[name]),
            "publishes": publishes,
            "deliveries": deliveries,
            "writes": writes,
            "bytes": nbytes,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--lose-write", type=int, default=None, help="drop this write of one transport (a self-test)")
    parser.add_argument("--instrument", help="callgrind's instrumentation helper (a shared library built by run.py)")
    args = parser.parse_args(argv)

    phases = plan()
    app, loop, transports = open_streams(args.lose_write)
    streams, watch = app.streams, app.backlog
    prepared = {
        name: [[(envelope(seq, target, topic), seq, target, topic) for seq, target, topic in turn] for turn in turns]
        for name, turns in phases.items()
    }
    run_phase(streams, loop, prepared["warmup"])
    gc.collect()
    gc.freeze()  # what the setup allocated is not the measured part's to collect
    helper = ctypes.CDLL(args.instrument) if args.instrument else None
    if helper is not None:
        helper.start_instrumentation()
    for name in PHASES:
        sys.call_tracing(run_phase, (streams, loop, prepared[name]))
    if helper is not None:
        helper.stop_instrumentation()
    gc.unfreeze()

    problems = check(phases, transports, streams)
    if watch.checks or watch.cut:
        problems.append(f"the backlog watch checked {watch.checks} streams and cut {watch.cut}: none should be")
    if problems:
        print(f"scenario: {len(problems)} difference(s) from the model; the first ones:", file=sys.stderr)
        for line in problems[:5]:
            print("  " + line, file=sys.stderr)
        return 1
    phase_totals = summary(phases, streams.id_prefix)
    total = {key: sum(p[key] for p in phase_totals.values()) for key in ("publishes", "deliveries", "writes", "bytes")}
    result = {"connections": CONNECTIONS, "phases": phase_totals, "total": total, "verified": True}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
