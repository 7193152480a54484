"""``GET /metrics`` of real servers: Prometheus conventions, the README's table, and one scrape for several workers.

Each scrape is parsed with prometheus-client's own parser. Every family must be declared in
:data:`sse_fast.server.metrics.METRICS` with the type and HELP the scrape shows (so the README's table, generated
from it, cannot drift from the server), counters must be named ``..._total``, and a 2-worker server on Redis must
answer, from whichever worker takes the scrape, every worker's values with a ``worker`` label.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from _redis import running_redis
from _servers import ROOT, Server, running_server
from sse_fast.server.metrics import METRICS, Metrics, as_table, make_shared_dir

FAST = {"SSE_FAST_KEEPALIVE": "2"}
PUBLISHES = 12
TABLE = {doc.name: doc for doc in METRICS}


def scrape(server: Server) -> list[Metric]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return list(text_string_to_metric_families(text))


MADE: dict[int, int] = {}
"""Publishes made to each server (by port) in this module: what one scrape must add up to."""


def publish(server: Server, count: int) -> None:
    """``count`` publishes, each on a new connection (so that the kernel spreads them over the workers)."""
    MADE[server.port] = MADE.get(server.port, 0) + count
    for i in range(count):
        body = {"type": "text", "payload": f"m{i}", "topic": "news"}
        answer = httpx.post(f"{server.url}/api/messages", json=body, headers={"X-Client-Id": "publisher"}, timeout=10)
        assert answer.status_code == 202, answer.text


def exposed_name(family: Metric) -> str:
    """The family's name as the README lists it: counters with ``_total``."""
    return f"{family.name}_total" if family.type == "counter" else family.name


def workers_of(families: list[Metric]) -> set[str]:
    return {s.labels["worker"] for f in families for s in f.samples if s.name == "sse_fast_published_total"}


def total(families: list[Metric], sample_name: str) -> float:
    return sum(s.value for f in families for s in f.samples if s.name == sample_name)


def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not met in {timeout}s: {what}"
        time.sleep(0.1)  # ok-sleep: polling another process's state with a deadline


def check_conventions(families: list[Metric]) -> None:
    for family in families:
        name = exposed_name(family)
        assert name in TABLE, f"{name} is not in sse_fast.server.metrics.METRICS (nor in the README's table)"
        assert family.type == TABLE[name].kind, name
        assert family.documentation == TABLE[name].help, name
        assert family.documentation.strip(), name
        assert family.documentation not in (family.name, name), name
        if family.type == "counter":
            values = [s for s in family.samples if not s.name.endswith("_created")]
            assert values, name
            assert all(s.name.endswith("_total") for s in values), name
        else:
            assert not name.endswith("_total"), f"{name} ends in _total but is a {family.type}"


@pytest.fixture(scope="module")
def memory_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("metrics"), env=FAST) as srv:
        yield srv


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("metrics2")
    with (
        running_redis(tmp) as redis_server,
        running_server(tmp, env={**FAST, "SSE_FAST_BROKER": redis_server.url}, extra_args=("--workers", "2")) as srv,
    ):
        yield srv


def test_every_family_follows_the_conventions_and_the_histograms_fill(memory_server: Server) -> None:
    before = scrape(memory_server)
    publish(memory_server, 3)
    families = scrape(memory_server)
    check_conventions(families)
    names = {exposed_name(f) for f in families}
    assert {"process_resident_memory_bytes", "process_open_fds", "process_max_fds"} <= names
    assert total(families, "process_resident_memory_bytes") > 1_000_000
    assert total(families, "process_open_fds") > 0
    for histogram in ("sse_fast_publish_seconds", "sse_fast_fanout_seconds"):
        count = total(families, f"{histogram}_count")
        assert count - total(before, f"{histogram}_count") >= 3, histogram
        assert total(families, f"{histogram}_sum") > 0, histogram
        top = [s for f in families for s in f.samples if s.name == f"{histogram}_bucket" and s.labels["le"] == "+Inf"]
        assert [s.value for s in top] == [count], histogram
    assert total(families, "sse_fast_published_total") - total(before, "sse_fast_published_total") == 3


def test_the_readme_table_is_the_declared_one_and_both_brokers_show_all_of_it(
    memory_server: Server, two_workers: Server
) -> None:
    assert as_table() in (ROOT / "README.md").read_text(), "README's metrics table is stale: paste as_table()"
    publish(two_workers, 1)
    shown = {exposed_name(f) for f in scrape(memory_server)} | {exposed_name(f) for f in scrape(two_workers)}
    assert shown == set(TABLE), f"declared but never shown: {set(TABLE) - shown}"


def test_one_scrape_of_two_workers_counts_every_publish(two_workers: Server) -> None:
    families = scrape(two_workers)
    check_conventions(families)
    publish(two_workers, PUBLISHES)
    made = MADE[two_workers.port]

    def counted() -> bool:
        nonlocal families
        families = scrape(two_workers)  # whichever worker answers: its live values and the other's last ones
        # Each worker counts a publish before it times it (a snapshot may fall between the two): wait for both.
        counts = (total(families, "sse_fast_published_total"), total(families, "sse_fast_publish_seconds_count"))
        return counts == (made, made)

    eventually(counted, f"the publishes and their timings summed over one scrape equal the {made} publishes made")
    workers = workers_of(families)
    assert len(workers) == 2, workers
    rss = [s for f in families for s in f.samples if s.name == "process_resident_memory_bytes"]
    assert {s.labels["worker"] for s in rss} == workers


def test_no_worker_counter_goes_back_from_one_scrape_to_the_next(two_workers: Server) -> None:
    """Scrapes answered by either worker: each worker's series only grows (a fall would read as a counter reset)."""
    eventually(lambda: len(workers_of(scrape(two_workers))) == 2, "a scrape that shows both workers")
    seen: dict[tuple[str, str], float] = {}
    started, rounds = time.monotonic(), 0
    while rounds < 25 or time.monotonic() - started < 3:  # across several of the workers' once-a-second writes
        rounds += 1
        publish(two_workers, 1)
        for family in scrape(two_workers):
            if family.type != "counter":
                continue
            for sample in family.samples:
                key = (sample.name, str(sorted(sample.labels.items())))
                assert sample.value >= seen.get(key, 0.0), f"{key} went back from {seen[key]} to {sample.value}"
                seen[key] = sample.value
    assert len({labels for name, labels in seen if name == "sse_fast_published_total"}) == 2


def test_plain_granian_with_two_workers_scrapes_as_one_and_cleans_up(tmp_path: Path) -> None:
    """``granian --workers 2`` with ``SSE_FAST_WORKERS=2``: the default directory, named after granian's pid under
    the temp directory, private, and gone once the workers stopped."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with running_redis(tmp_path) as redis_server:
        env = {**FAST, "SSE_FAST_BROKER": redis_server.url, "SSE_FAST_WORKERS": "2", "TMPDIR": str(scratch)}
        env["XDG_RUNTIME_DIR"] = ""  # else the directory goes there
        with running_server(tmp_path, command="granian", env=env, extra_args=("--workers", "2")) as srv:
            eventually(lambda: len(list(scratch.glob("sse-fast-metrics-*"))) == 1, "the workers' directory")
            (shared,) = scratch.glob("sse-fast-metrics-*")
            assert shared.stat().st_mode & 0o777 == 0o700
            eventually(lambda: len(list(shared.glob("*.prom"))) == 2, "both workers' files")
            publish(srv, PUBLISHES)
            eventually(
                lambda: total(scrape(srv), "sse_fast_published_total") == PUBLISHES,
                f"sse_fast_published_total summed over one scrape equals the {PUBLISHES} publishes made",
            )
            assert srv.stop() == 0
    assert not list(scratch.glob("sse-fast-metrics-*"))


def test_sse_fast_serve_removes_the_directory_it_made_and_those_of_killed_servers(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    killed = scratch / f"sse-fast-metrics-{os.getuid()}-{int(gone.stdout)}-x1"  # its server was SIGKILLed
    killed.mkdir()
    (killed / "123.prom").write_text("")
    alive = scratch / f"sse-fast-metrics-{os.getuid()}-{os.getpid()}-x2"  # a running server's
    alive.mkdir()
    with running_redis(tmp_path) as redis_server:
        env = {**FAST, "SSE_FAST_BROKER": redis_server.url, "TMPDIR": str(scratch), "XDG_RUNTIME_DIR": ""}
        with running_server(tmp_path, env=env, extra_args=("--workers", "2")) as srv:
            assert not killed.exists()
            (shared,) = set(scratch.glob("sse-fast-metrics-*")) - {alive}
            assert shared.name.startswith(f"sse-fast-metrics-{os.getuid()}-{srv.proc.pid}-")
            eventually(lambda: len(list(shared.glob("*.prom"))) == 2, "both workers' files")
            assert srv.stop() == 0
    assert set(scratch.glob("sse-fast-metrics-*")) == {alive}


def test_a_worker_that_stops_takes_its_file_with_it(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    with running_server(tmp_path, env={**FAST, "SSE_FAST_METRICS_DIR": str(shared)}) as srv:
        eventually(lambda: len(list(shared.glob("*.prom"))) == 1, "the worker's metrics file")
        families = scrape(srv)
        assert {s.labels["worker"] for f in families for s in f.samples} == {next(shared.glob("*.prom")).stem}
        assert srv.stop() == 0
    assert not shared.exists() or not list(shared.glob("*.prom"))


def gauge(families: list[Metric], name: str) -> list[float]:
    return [s.value for f in families for s in f.samples if s.name == name]


def test_tickets_held_is_never_counted_twice(two_workers: Server) -> None:
    """With Redis every worker sees the one ticket store: its gauge is a cluster gauge, which is not summed (the
    per-worker ``sse_fast_tickets_held``, summed, would count each ticket once per worker that issued one)."""

    def issue() -> None:
        answer = httpx.post(f"{two_workers.url}/api/tickets", headers={"X-Client-Id": "alice"}, timeout=10)
        assert answer.status_code == 200, answer.text

    issued = 0
    while True:  # until both workers issued some, each on a new connection (the kernel spreads them)
        issue()
        issued += 1
        families = scrape(two_workers)
        by = [s for f in families for s in f.samples if s.name == "sse_fast_tickets_issued_total" and s.value > 0]
        if len(by) == 2:
            break
        assert issued < 200, "every ticket went to one worker"
    # The worker that issued the last ticket shows them all; a scrape answered by the other one reads its file,
    # written once a second, so wait for that file to catch up.
    eventually(
        lambda: max(gauge(scrape(two_workers), "sse_fast_cluster_tickets_held")) == issued,
        "the cluster gauge shows every ticket",
        timeout=10,
    )
    assert sum(gauge(scrape(two_workers), "sse_fast_tickets_held")) <= issued  # the README's sum without (worker)


def test_nothing_planted_in_or_in_place_of_the_shared_directory_is_followed(tmp_path: Path) -> None:
    shared, moved, elsewhere = tmp_path / "shared", tmp_path / "moved", tmp_path / "elsewhere"
    forged = tmp_path / "forged.prom"
    forged.write_text("sse_fast_published_total 99\n")
    victim = tmp_path / "victim"
    victim.write_text("precious")
    metrics = Metrics(share=shared)
    metrics.tick(0)
    own = f"{os.getpid()}.prom"
    assert (shared / own).is_file()
    assert shared.stat().st_mode & 0o777 == 0o700
    (shared / f"{os.getppid()}.prom").symlink_to(forged)  # a live worker's name, pointing outside
    (shared / f"{os.getpid()}.tmp").symlink_to(victim)  # the name the old code wrote before renaming
    families = list(metrics.collect())
    assert {s.labels["worker"] for f in families for s in f.samples} == {str(os.getpid())}
    assert gauge(families, "sse_fast_metrics_shared") == [1]
    assert victim.read_text() == "precious"
    shared.rename(moved)  # the directory swapped for a symlink to another one after it was checked
    elsewhere.mkdir(mode=0o700)
    shared.symlink_to(elsewhere)
    metrics.tick(0)
    assert list(elsewhere.iterdir()) == []
    assert (moved / own).is_file()
    metrics.close()
    assert not (moved / own).exists()
    assert shared.is_symlink()  # what replaced the directory is not removed either
    assert elsewhere.is_dir()


def test_a_worker_that_cannot_share_shows_it_in_a_gauge(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)  # e.g. planted by another user at the predictable name
    with running_server(tmp_path, env={**FAST, "SSE_FAST_METRICS_DIR": str(link)}) as srv:
        assert gauge(scrape(srv), "sse_fast_metrics_shared") == [0]
        assert "not sharing metrics between workers" in srv.log()
    assert list(real.iterdir()) == []
    with running_server(tmp_path, env={**FAST, "SSE_FAST_METRICS_DIR": str(real)}) as srv:
        assert gauge(scrape(srv), "sse_fast_metrics_shared") == [1]


def test_the_default_directory_is_under_the_runtime_directory_when_there_is_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    made = make_shared_dir()
    assert made.parent == runtime
    made.rmdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "missing"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # tempfile caches $TMPDIR: read it again
    made = make_shared_dir()
    assert made.parent == tmp_path
