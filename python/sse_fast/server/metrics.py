"""Prometheus metrics, read from the counters the hub, streams and broker already keep.

Nothing on the data path updates a Prometheus object: the collector reads the Rust hub's running totals and the
Python counters at scrape time, so a publish to 10,000 connections costs the metrics nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from sse_fast.broker import Broker
    from sse_fast.server.backlog import BacklogWatch
    from sse_fast.streams import Streams

__all__ = ["Metrics"]

# (name, help, kind, where the value comes from)
_HUB = [
    ("connections", "Open SSE connections on this worker", "gauge", "connections"),
    ("clients", "Distinct clients with an open connection on this worker", "gauge", "clients"),
    ("queued_frames", "Frames waiting in connection queues", "gauge", "queued_frames"),
    ("queued_bytes", "Bytes waiting in connection queues", "gauge", "queued_bytes"),
    ("delivered", "Frames pushed into connection queues", "counter", "delivered"),
    ("evicted", "Ephemeral frames evicted from full connection queues", "counter", "evicted"),
    ("overflowed", "Resumable frames that did not fit a connection queue", "counter", "overflowed"),
]


class Metrics(Collector):
    """The worker's registry; :meth:`render` answers ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.replayed = 0
        self.topics_refused = 0
        self.responses: Counter[int] = Counter()
        self._streams: Streams | None = None
        self._broker: Broker | None = None
        self._watch: BacklogWatch | None = None
        self._extra: list[Callable[[], dict[str, int]]] = []
        self.registry.register(self)

    def bind(self, streams: Streams, broker: Broker) -> None:
        """Read from these at scrape time."""
        self._streams, self._broker = streams, broker

    def bind_watch(self, watch: BacklogWatch) -> None:
        """Read the connection watch's counters (dead peers) at scrape time."""
        self._watch = watch

    def add_source(self, source: Callable[[], dict[str, int]]) -> None:
        """Another set of gauges (the scheduler's), exported as ``sse_fast_<name>``."""
        self._extra.append(source)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Called by prometheus-client on every scrape."""
        if self._streams is not None:
            hub = self._streams.hub.counters()
            for name, doc, kind, key in _HUB:
                yield _family(f"sse_fast_{name}", doc, kind, hub[key])
            streams = self._streams
            yield _family("sse_fast_connections_opened", "SSE connections opened", "counter", streams.opened_total)
            yield _family("sse_fast_connections_closed", "SSE connections closed", "counter", streams.closed_total)
            yield _family(
                "sse_fast_slow_consumer_closes", "Streams closed as slow consumers", "counter", streams.closed_slow
            )
            yield _family(
                "sse_fast_replaced_closes",
                "Streams closed past the per-client limit",
                "counter",
                streams.closed_replaced,
            )
            yield _family(
                "sse_fast_token_expired_closes",
                "Streams closed because their token expired",
                "counter",
                streams.closed_expired,
            )
        if self._watch is not None:
            yield _family(
                "sse_fast_dead_peers",
                "Streams closed because their peer stopped acknowledging (gone without FIN or RST)",
                "counter",
                self._watch.dead,
            )
        yield _family("sse_fast_replayed", "Frames delivered on connect before going live", "counter", self.replayed)
        yield _family(
            "sse_fast_topics_refused",
            "Streams refused for topic patterns past SSE_FAST_MAX_TOPIC_SEGMENTS or SSE_FAST_MAX_TOPICS_BYTES",
            "counter",
            self.topics_refused,
        )
        responses = CounterMetricFamily("sse_fast_http_responses", "HTTP answers by status", labels=["status"])
        for status, count in sorted(self.responses.items()):
            responses.add_metric([str(status)], count)
        yield responses
        sources = [self._broker.counters] if self._broker is not None else []
        for source in [*sources, *self._extra]:
            for name, value in source().items():
                yield _family(f"sse_fast_{name}", name.replace("_", " "), "gauge", value)


def _family(name: str, doc: str, kind: str, value: float) -> GaugeMetricFamily | CounterMetricFamily:
    if kind == "counter":
        return CounterMetricFamily(name, doc, value=value)
    return GaugeMetricFamily(name, doc, value=value)
