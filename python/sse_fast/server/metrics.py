"""Prometheus metrics, read from the counters the hub, streams and broker already keep.

Nothing on the data path updates a Prometheus object but two histograms (a publish's latency, once per publish,
and a fan-out's time, once per delivered frame): the collector reads the Rust hub's running totals and the Python
counters at scrape time, so a publish to 10,000 connections costs the metrics one observation.

Every family is declared once, in :data:`METRICS` (name, type, HELP); the README's table is
:func:`as_table`, and ``tests/test_metrics.py`` checks both against a real scrape. Monotonic counters are counters
(their samples end in ``_total``); levels are gauges. The process collector adds ``process_*`` (RSS, open and
maximum file descriptors: this worker's real limits).

Several workers: each worker leaves its own exposition in a directory they share (``SSE_FAST_METRICS_DIR``, by
default one per server under the temp directory) on every tick, and a scrape answers this worker's live values
and the others' last ones (at most about a second old), every sample labelled ``worker="<pid>"``: one scrape is
the whole server, and ``sum without (worker) (...)`` adds the workers up. The answering worker first writes what it
shows of itself, so a worker's counters never seem to go back from one scrape to the next, whoever answers.

The directory is opened once, without following a symlink, and must be a directory of this user that nobody else
may write to; every file in it is then written and read through that descriptor, never following a symlink, and
written to a fresh name first then renamed into place, so nothing planted in it or in place of it is followed.
The default directories are under ``$XDG_RUNTIME_DIR`` (private to the user) when it exists, else the temp directory.
A worker that cannot share (the directory refused, or a write failed) says so once in the log and shows
``sse_fast_metrics_shared 0``: its scrapes show it alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import stat
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, NamedTuple

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from sse_fast.broker import Broker
    from sse_fast.server.backlog import BacklogWatch
    from sse_fast.settings import Settings
    from sse_fast.streams import Streams

__all__ = ["METRICS", "MetricDoc", "Metrics", "as_table", "make_shared_dir", "shared_dir", "sweep_shared_dirs"]

log = logging.getLogger("sse_fast.metrics")

Kind = Literal["counter", "gauge", "histogram"]


class MetricDoc(NamedTuple):
    """One metric family as a scrape shows it: its sample name (counters end in ``_total``), type and HELP."""

    name: str
    kind: Kind
    help: str


def _c(name: str, doc: str) -> MetricDoc:
    return MetricDoc(f"sse_fast_{name}_total", "counter", doc)


def _g(name: str, doc: str) -> MetricDoc:
    return MetricDoc(f"sse_fast_{name}", "gauge", doc)


_MEMORY = " (memory broker)"
_REDIS = " (Redis broker)"

METRICS: Final[tuple[MetricDoc, ...]] = (
    # The hub and the streams of this worker
    _g("metrics_shared", "1 while this worker shares its metrics with the others (or runs alone), 0 when it cannot"),
    _g("connections", "Open SSE connections on this worker"),
    _g("clients", "Distinct clients with an open connection on this worker"),
    _g("queued_frames", "Frames waiting in this worker's connection queues"),
    _g("queued_bytes", "Bytes waiting in this worker's connection queues"),
    _c("delivered", "Frames pushed into connection queues"),
    _c("evicted", "Ephemeral frames evicted from full connection queues"),
    _c("overflowed", "Resumable frames that did not fit a connection queue (the stream is closed as slow)"),
    _c("connections_opened", "SSE connections opened"),
    _c("connections_closed", "SSE connections closed"),
    _c("slow_consumer_closes", "Streams closed as slow consumers (disconnect reason slow_consumer)"),
    _c("replaced_closes", "Streams closed past SSE_FAST_MAX_CONNECTIONS_PER_CLIENT (disconnect reason replaced)"),
    _c("token_expired_closes", "Streams closed because their token expired (disconnect reason token_expired)"),
    _c("dead_peers", "Streams closed because their peer stopped acknowledging (gone without FIN or RST)"),
    _c("replayed", "Frames delivered on connect before going live (replay and mailbox)"),
    _c("topics_refused", "Streams refused for topic patterns past SSE_FAST_MAX_TOPIC_SEGMENTS or MAX_TOPICS_BYTES"),
    _c("http_responses", "HTTP answers by status (label status); a stream counts once, as 200, when it opens"),
    _c("rsgi_backlog_checks", "Reads of a stream socket's unacknowledged bytes by the RSGI slow-reader watch"),
    MetricDoc(
        "sse_fast_publish_seconds",
        "histogram",
        "Time the broker took to accept a publish: log append, mailbox and local fan-out (with Redis, its round trip)",
    ),
    MetricDoc(
        "sse_fast_fanout_seconds",
        "histogram",
        "Time to route one frame to this worker's matching connections and queue it for each",
    ),
    # Every broker alike
    _c("published", "Messages the broker accepted (duplicates not counted)"),
    _c("duplicates", "Publishes answered as duplicates: a client-chosen id seen within SSE_FAST_DEDUPE_WINDOW"),
    _c("acks_acked", "requireAck messages acknowledged"),
    _c("acks_redelivered", "Redeliveries of unacknowledged requireAck messages"),
    _c("acks_expired", "requireAck messages that expired unacknowledged"),
    _c("mailbox_dropped", "Mailbox messages dropped past SSE_FAST_MAILBOX_SIZE, SSE_FAST_MAILBOX_CLIENTS or the bytes"),
    # The memory broker
    _g("replay_frames", "Frames held in the replay log" + _MEMORY),
    _g("replay_bytes", "Bytes held in the replay log" + _MEMORY),
    _c("replay_evicted", "Frames trimmed from the replay log by count, bytes or age" + _MEMORY),
    _g("mailbox_clients", "Offline clients holding a mailbox" + _MEMORY),
    _g("mailbox_messages", "Messages waiting in mailboxes" + _MEMORY),
    _g("mailbox_bytes", "Bytes waiting in mailboxes" + _MEMORY),
    _g("dedupe_entries", "Client-chosen message ids remembered for deduplication" + _MEMORY),
    _g("acks_tracked", "requireAck messages whose delivery status is held" + _MEMORY),
    _g("acks_bytes", "Bytes of the requireAck messages held for redelivery" + _MEMORY),
    _g("admin_recent_frames", "Frames held for the admin page's tail" + _MEMORY),
    # The Redis broker
    _g("cluster_connections", "Open SSE connections of the whole cluster, from every worker's heartbeat" + _REDIS),
    _g("cluster_nodes", "Workers of the cluster with a live heartbeat" + _REDIS),
    _g("broker_up", "1 while Redis answers, 0 while it is unreachable" + _REDIS),
    _c("broker_reconnects", "Times Redis answered again after being unreachable" + _REDIS),
    _c(
        "broker_resets",
        "Times Redis came back without its data or a replica took over (those also in broker_failovers): streams "
        "closed to resume (told expired or failover)" + _REDIS,
    ),
    _c("broker_lagged", "Times this worker's reader fell behind the trimmed log (disconnect reason lagged)" + _REDIS),
    _c("broker_failovers", "Sentinel failovers this worker saw: streams closed to resume (told failover)" + _REDIS),
    _c("publish_unreplicated", "Publishes answered replicated: false (SSE_FAST_REDIS_WAIT_REPLICAS)" + _REDIS),
    # Stream tickets and publish limits
    _g("tickets_held", "Stream tickets waiting to be used on this worker" + _MEMORY),
    _g("cluster_tickets_held", "Stream tickets waiting to be used in the cluster, as this worker last saw" + _REDIS),
    _c("tickets_issued", "Stream tickets issued"),
    _c("tickets_redeemed", "Stream tickets used to open a stream"),
    _c("tickets_refused", "Stream tickets refused because SSE_FAST_TICKETS_MAX were held (429 too_many_tickets)"),
    _c("publish_rate_limited", "Publishes refused by the per-client rate limits (429 rate_limited)"),
    _g("publish_limit_clients", "Per-client rate-limit buckets held"),
    _c("publish_limit_forgotten", "Rate-limit buckets forgotten past SSE_FAST_PUBLISH_LIMIT_CLIENTS"),
    _c("presence_rate_limited", "Presence requests refused by the per-client rate limit (429 rate_limited)"),
    _g("presence_limit_clients", "Per-client presence rate-limit buckets held"),
    # The scheduler
    _g("scheduler_running", "Tasks running"),
    _g("scheduler_waiting", "Tasks waiting for a slot"),
    _g("scheduler_paused", "Tasks paused"),
    _g("scheduler_records", "Task records held (live and finished, until SSE_FAST_SCHEDULER_RETENTION)"),
    _g("scheduler_peak_running", "Most tasks running at once since the worker started"),
    _c("scheduler_tasks_submitted", "Tasks submitted"),
    _c("scheduler_tasks_completed", "Tasks completed"),
    _c("scheduler_tasks_failed", "Tasks failed"),
    _c("scheduler_tasks_cancelled", "Tasks cancelled"),
    _c("scheduler_tasks_retried", "Task retries"),
    _c("scheduler_tasks_pause_timeout", "Tasks cancelled after SSE_FAST_SCHEDULER_PAUSE_TIMEOUT paused"),
    _c("scheduler_tasks_refused_client_queue", "Tasks refused: the client's share of the queue was full"),
    _c("scheduler_tasks_refused_paused", "Tasks refused: the client had SSE_FAST_SCHEDULER_CLIENT_PAUSED paused"),
    # prometheus-client's process collector
    MetricDoc("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds."),
    MetricDoc("process_open_fds", "gauge", "Number of open file descriptors."),
    MetricDoc("process_max_fds", "gauge", "Maximum number of open file descriptors."),
    MetricDoc("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes."),
    MetricDoc("process_resident_memory_bytes", "gauge", "Resident memory size in bytes."),
    MetricDoc("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds."),
)
"""Every metric family a scrape can show (some only with one broker)."""

_BY_KEY: Final = {
    doc.name.removeprefix("sse_fast_").removesuffix("_total"): doc for doc in METRICS if doc.kind != "histogram"
}
# The scheduler's counts exist from the first event of their kind: shown as 0 before it.
_SCHEDULER_COUNTS: Final = tuple(
    key.removeprefix("scheduler_tasks_") for key in _BY_KEY if key.startswith("scheduler_tasks_")
)
_HUB: Final = ("connections", "clients", "queued_frames", "queued_bytes", "delivered", "evicted", "overflowed")
_PUBLISH_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_FANOUT_BUCKETS: Final = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
_STALE_SECONDS: Final = 30.0  # a sibling's file not rewritten for this long is from a stuck worker: not shown


def as_table() -> str:
    """The README's table of every metric family (markdown)."""
    rows = [f"| `{doc.name}` | {doc.kind} | {doc.help} |" for doc in METRICS]
    return "\n".join(["| metric | type | help |", "|---|---|---|", *rows])


def shared_dir(settings: Settings) -> Path | None:
    """Where the workers of one server leave their metrics for each other, or None with a single worker.

    ``SSE_FAST_METRICS_DIR`` when set (``sse-fast serve`` sets it to :func:`make_shared_dir`); else, under plain
    granian, a private directory named after the parent process (granian's), which all its workers share, under
    :func:`_base_dir`.
    """
    if settings.metrics_dir:
        return Path(settings.metrics_dir)
    if settings.workers <= 1:
        return None
    sweep_shared_dirs()
    return _base_dir() / f"{_dir_prefix()}{os.getppid()}"


def make_shared_dir() -> Path:
    """A fresh private directory for the workers of the server this process runs (``sse-fast serve``), named
    after this process; the ones of servers killed before they could remove theirs are removed first."""
    sweep_shared_dirs()
    return Path(tempfile.mkdtemp(prefix=f"{_dir_prefix()}{os.getpid()}-", dir=_base_dir()))


def sweep_shared_dirs() -> None:
    """Remove this user's shared directories whose server process is gone (it was killed before it cleaned up)."""
    prefix = _dir_prefix()
    for path in _base_dir().glob(f"{prefix}*"):
        pid = path.name.removeprefix(prefix).split("-")[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            info = path.lstat()
            if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid():
                shutil.rmtree(path, ignore_errors=True)


def _dir_prefix() -> str:
    return f"sse-fast-metrics-{os.getuid()}-"


def _base_dir() -> Path:
    """Where the default directories go: ``$XDG_RUNTIME_DIR`` when it is a directory of this user (no other user can
    create names in it), else the temp directory (``$TMPDIR``, ``/tmp``), where :class:`_Share` refuses a name that
    another user took first."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        with contextlib.suppress(OSError):
            info = os.stat(runtime)
            if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid():
                return Path(runtime)
    return Path(tempfile.gettempdir())


class Metrics(Collector):
    """The worker's registry; :meth:`render` answers ``GET /metrics``."""

    def __init__(self, *, share: Path | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.replayed = 0
        self.topics_refused = 0
        self.responses: Counter[int] = Counter()
        self.publish_seconds = Histogram(
            "sse_fast_publish_seconds", _help("sse_fast_publish_seconds"), buckets=_PUBLISH_BUCKETS, registry=None
        )
        self.fanout_seconds = Histogram(
            "sse_fast_fanout_seconds", _help("sse_fast_fanout_seconds"), buckets=_FANOUT_BUCKETS, registry=None
        )
        self._process = ProcessCollector(registry=None)
        self._streams: Streams | None = None
        self._broker: Broker | None = None
        self._watch: BacklogWatch | None = None
        self._extra: list[Callable[[], dict[str, int]]] = []
        self._share = _Share(share) if share is not None else None
        self.registry.register(self)

    def bind(self, streams: Streams, broker: Broker) -> None:
        """Read from these at scrape time."""
        self._streams, self._broker = streams, broker

    def bind_watch(self, watch: BacklogWatch) -> None:
        """Read the connection watch's counters (dead peers) at scrape time."""
        self._watch = watch

    def add_source(self, source: Callable[[], dict[str, int]]) -> None:
        """Another set of values (the scheduler's), exported as ``sse_fast_<name>`` as :data:`METRICS` says."""
        self._extra.append(source)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def tick(self, _now: float) -> None:
        """Leave this worker's values for the others (several workers; on the streams' tick)."""
        if self._share is not None:
            self._share.write(generate_latest(_Families(list(self.own()))))

    def close(self) -> None:
        """Take this worker's values out of the shared directory (it stops)."""
        if self._share is not None:
            self._share.remove()

    def collect(self) -> Iterator[Metric]:
        """Called by prometheus-client on every scrape."""
        if self._share is None:
            yield from self.own()
            return
        # What this scrape shows of this worker is what it leaves for the others, written first: whichever worker
        # answers the next scrape shows this one's values at least as new, so no counter ever seems to go back.
        own = list(self.own())
        self._share.write(generate_latest(_Families(own)))
        yield from _merge([(str(os.getpid()), own), *self._share.siblings()])

    def own(self) -> Iterator[Metric]:
        """This worker's families."""
        yield from self._counters()
        for family in [*self.publish_seconds.collect(), *self.fanout_seconds.collect()]:
            # The text format shows a histogram's _created as a separate gauge family: noise for a server's metrics.
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family
        yield from self._process.collect()

    def _counters(self) -> Iterator[Metric]:
        values: dict[str, float] = {}
        if self._streams is not None:
            streams = self._streams
            hub = streams.hub.counters()
            values.update({key: hub[key] for key in _HUB})
            values.update(
                connections_opened=streams.opened_total,
                connections_closed=streams.closed_total,
                slow_consumer_closes=streams.closed_slow,
                replaced_closes=streams.closed_replaced,
                token_expired_closes=streams.closed_expired,
            )
        if self._watch is not None:
            values["dead_peers"] = self._watch.dead
        values.update(replayed=self.replayed, topics_refused=self.topics_refused)
        values["metrics_shared"] = 1 if self._share is None or self._share.working else 0
        values.update({f"scheduler_tasks_{key}": 0 for key in _SCHEDULER_COUNTS})
        for source in [self._broker.counters] if self._broker is not None else []:
            values.update(source())
        for source in self._extra:
            values.update(source())
        for key, value in values.items():
            yield _family(key, value)
        responses = CounterMetricFamily(
            "sse_fast_http_responses", _help("sse_fast_http_responses_total"), labels=["status"]
        )
        for status, count in sorted(self.responses.items()):
            responses.add_metric([str(status)], count)
        yield responses


class _Families:
    """Families already collected, as a registry for ``generate_latest`` (the file the other workers read)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _help(name: str) -> str:
    return next(doc.help for doc in METRICS if doc.name == name)


def _family(key: str, value: float) -> Metric:
    doc = _BY_KEY.get(key)
    if doc is None:  # a new counter without a row in METRICS: shown, and tests/test_metrics.py fails on it
        return GaugeMetricFamily(f"sse_fast_{key}", "undocumented", value=value)
    if doc.kind == "counter":
        return CounterMetricFamily(doc.name, doc.help, value=value)
    return GaugeMetricFamily(doc.name, doc.help, value=value)


def _merge(workers: Iterable[tuple[str, Iterable[Metric]]]) -> Iterator[Metric]:
    """The families of several workers as one, every sample labelled with its worker."""
    merged: dict[str, Metric] = {}
    for worker, families in workers:
        for family in families:
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                into.add_sample(sample.name, {**sample.labels, "worker": worker}, sample.value, sample.timestamp)
    yield from merged.values()


class _Share:
    """The directory where the workers of one server leave their expositions: ``<pid>.prom`` each.

    It is opened once (:meth:`_prepare`) and then used only through its descriptor: a name planted in it, or the
    directory replaced by another one or by a symlink after the check, is never followed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._name = f"{os.getpid()}.prom"
        self._fd: int | None = None
        self._refused = False
        self._failed = False

    @property
    def working(self) -> bool:
        """False when the directory is refused, and while writes fail."""
        return self._prepare() is not None and not self._failed

    def _prepare(self) -> int | None:
        """The directory's descriptor: made private to this user when missing, refused (None, said once) when it is
        a symlink, not a directory, another user's, or writable by others."""
        if self._fd is not None or self._refused:
            return self._fd
        try:
            with contextlib.suppress(FileExistsError):
                self.path.mkdir(mode=0o700, parents=True)
            fd: int | None = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:  # not allowed, a symlink (ELOOP), not a directory (ENOTDIR), or gone
            fd = None
        if fd is not None:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022:
                self._fd = fd
                return fd
            os.close(fd)
        self._refused = True
        log.warning("not sharing metrics between workers: %s is not a private directory of this user", self.path)
        return None

    def write(self, text: bytes) -> None:
        """Leave ``text`` as this worker's file: written under a fresh name (``O_EXCL``), then renamed over it."""
        try:
            fd = self._prepare()
            if fd is None:
                return
            partial = f".{os.getpid()}-{secrets.token_hex(6)}.tmp"
            out = os.open(
                partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd
            )
            try:
                with os.fdopen(out, "wb") as file:
                    file.write(text)
                os.replace(partial, self._name, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(partial, dir_fd=fd)
                raise
        except OSError as err:  # a full disk must not stop the worker's tick
            if not self._failed:
                log.warning("could not write this worker's metrics to %s: %s", self.path, err)
            self._failed = True
            return
        self._failed = False

    def remove(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self._name, dir_fd=fd)
        with contextlib.suppress(OSError):
            # The last worker out takes the directory (others' files keep it otherwise), if it is still the one opened.
            if os.lstat(self.path).st_ino == os.fstat(fd).st_ino:
                self.path.rmdir()
        os.close(fd)

    def siblings(self) -> Iterator[tuple[str, list[Metric]]]:
        """The other live workers' last values."""
        fd = self._fd
        if fd is None:
            return
        now = time.time()
        for name in sorted(os.listdir(fd)):
            stem, dot, suffix = name.removeprefix(".").partition(".")
            pid = stem.split("-")[0]
            if name == self._name or dot != "." or suffix not in ("prom", "tmp") or not pid.isdigit():
                continue
            if not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=fd)  # a worker that died without cleaning up (or while writing)
                continue
            if suffix == "tmp" or not stem.isdigit():
                continue
            text = _read(fd, name, now)
            if text is not None:
                yield stem, list(text_string_to_metric_families(text))


def _read(dir_fd: int, name: str, now: float) -> str | None:
    """The regular file ``name`` in ``dir_fd`` (never through a symlink), unless rewritten more than
    :data:`_STALE_SECONDS` ago; None when it is not there (its worker stopped between the listing and the read)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
        with os.fdopen(fd, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode) or now - info.st_mtime > _STALE_SECONDS:
                return None
            return file.read().decode(errors="replace")
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
