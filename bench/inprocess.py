"""sse-fast's own cost per delivery, off the network: its data path against the granian floor app's loop.

Both write to the same fake transport (``send_bytes`` returns an already-finished awaitable and does nothing
else), so what is measured is the work of each server's own code: for sse-fast a worker's ``Streams`` (the Rust
hub's routing and queues, the writer, the RSGI sinks and their byte counts), for the floor
``bench/peers/granian_rsgi_app.py``'s publish (encode once, ``send_bytes`` to every transport). Process CPU per
delivery, best of ``--repeat`` rounds each, alternating.

Run: ``python bench/inprocess.py --n 10000``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

import granian_rsgi_app as floor

from sse_fast._core import Frame
from sse_fast.server import rsgi
from sse_fast.server.backlog import BacklogWatch
from sse_fast.settings import Settings
from sse_fast.streams import Streams


class Transport:
    """granian's RSGI transport as far as a writer sees it, doing nothing."""

    __slots__ = ()

    def send_bytes(self, data: bytes) -> Any:
        return iter(())


class Loop:
    """The event loop as ``Streams`` uses it: ``call_soon`` callbacks, run by :meth:`run`."""

    def __init__(self) -> None:
        self.callbacks: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        self.callbacks.append((callback, args))

    def run(self) -> None:
        while self.callbacks:
            callbacks, self.callbacks = self.callbacks, []
            for callback, args in callbacks:
                callback(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=10_000, help="streams")
    parser.add_argument("--broadcasts", type=int, default=50, help="broadcasts per round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per contender")
    args = parser.parse_args()
    rsgi._queued = type(iter(()))  # what granian's finished awaitable is to the sink
    settings = Settings()
    streams = Streams(settings, id_prefix="bench", node_id="n1", new_id=lambda: "id")
    loop = Loop()
    streams._loop = loop  # type: ignore[assignment]
    watch = BacklogWatch(settings.queue_bytes, lambda conn, reason: None, keepalive=300)
    streams.hub.report_bytes = watch.step
    for i in range(args.n):
        sink = rsgi.RsgiSink(Transport(), watch, "127.0.0.1:8000", f"127.0.0.1:{10000 + i}")
        sink.conn_id = streams.open(f"c{i}", (), sink).id
        watch.watch(sink)
        floor.streams[i] = (f"c{i}", (), Transport())
    payload = {"bseq": 1, "t": 1796169747453094205, "pad": "x" * 57}
    data = floor.json.dumps({"id": "x", "type": "json", "priority": 1, "payload": payload}).encode()

    def sse_fast() -> None:
        streams.deliver(Frame(data, event="json", priority=1))
        loop.run()

    def granian_floor() -> None:
        floor._publish({"type": "json", "payload": payload})

    sse_fast()  # the first write of each stream attaches it to the hub's writer
    best: dict[str, float] = {}
    for _ in range(args.repeat):
        for name, publish in (("sse-fast", sse_fast), ("granian-rsgi floor", granian_floor)):
            gc.collect()
            started = time.process_time()
            for _ in range(args.broadcasts):
                publish()
            per = (time.process_time() - started) / (args.broadcasts * args.n) * 1e6
            best[name] = min(best.get(name, per), per)
    for name, per in best.items():
        print(f"{name:20s} {per:.2f} us per delivery (N = {args.n:,}, best of {args.repeat})")


if __name__ == "__main__":
    main()
