"""A private ``redis-server`` for tests: its own free port (never 6379), no persistence unless asked, killable."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from _servers import free_port


@dataclass
class RedisServer:
    """One ``redis-server`` process; :meth:`kill` and :meth:`start` again on the same port (a restart)."""

    directory: Path
    port: int = field(default_factory=free_port)
    persistent: bool = False
    #: The port of the primary this server replicates (a replica), else None.
    replica_of: int | None = None
    #: Run as a Redis Cluster node (``--cluster-enabled yes``): what sse-fast refuses at start.
    cluster: bool = False
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart) the server and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: the Redis tests need it (.ci/run installs it)")
        assert self.port != 6379, "never touch the shared Redis"
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence]
        args += ["--dir", str(self.directory), "--daemonize", "no", "--loglevel", "warning"]
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        if self.cluster:
            # The cluster bus port defaults to port + 10000, past 65535 for most free ports: choose one too.
            args += ["--cluster-enabled", "yes", "--cluster-port", str(free_port())]
            args += ["--cluster-config-file", f"nodes-{self.port}.conf"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError), redis.Redis(port=self.port, socket_timeout=1) as client:
                if client.ping():
                    return
            time.sleep(0.05)  # ok-sleep: polling a starting process
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        """SIGKILL: Redis vanishes at once (without persistence, with everything it held)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def client(self) -> redis.Redis:
        """A plain client on this server (for assertions on its keys)."""
        return redis.Redis(port=self.port, socket_timeout=3)


@contextlib.contextmanager
def running_redis(directory: Path, *, persistent: bool = False) -> Iterator[RedisServer]:
    """A started server, killed on exit."""
    server = RedisServer(directory, persistent=persistent)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@dataclass
class Sentinel:
    """One ``redis-server --sentinel`` watching ``service`` (its config file is its own: Sentinel rewrites it)."""

    directory: Path
    primary: int
    service: str = "sse"
    down_after_ms: int = 1000
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: the Redis tests need it (.ci/run installs it)")
        assert self.port != 6379
        config = self.directory / f"sentinel-{self.port}.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.primary} 2\n"
            f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.service} 10000\n"
        )
        args = [binary, str(config), "--sentinel", "--daemonize", "no", "--loglevel", "warning"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def primary_port(self) -> int | None:
        """The port of the primary this sentinel names now (None while it does not answer)."""
        with contextlib.suppress(redis.RedisError), redis.Redis(port=self.port, socket_timeout=1) as client:
            address = client.execute_command("SENTINEL", "get-master-addr-by-name", self.service)
            return int(address[1]) if address else None
        return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class SentinelGroup:
    """A primary, one replica and three sentinels (quorum 2), all on free ports."""

    primary: RedisServer
    replica: RedisServer
    sentinels: list[Sentinel]

    @property
    def url(self) -> str:
        """The ``SSE_FAST_BROKER`` URL of this group."""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.sentinels[0].service}"

    def primary_port(self) -> int | None:
        """The primary the sentinels agree on (a majority of them), else None."""
        named = [s.primary_port() for s in self.sentinels]
        port = max(set(named), key=named.count)
        return port if port is not None and named.count(port) >= 2 else None

    def replicated(self) -> bool:
        """Whether the replica is linked to the primary (``master_link_status:up``)."""
        with contextlib.suppress(redis.RedisError), self.replica.client() as client:
            return client.info("replication").get("master_link_status") == "up"
        return False


@contextlib.contextmanager
def running_sentinels(directory: Path, *, down_after_ms: int = 1000) -> Iterator[SentinelGroup]:
    """A started primary, replica and three sentinels that know both; all killed on exit."""
    primary = RedisServer(directory)
    primary.start()
    replica = RedisServer(directory, replica_of=primary.port)
    sentinels = [Sentinel(directory, primary.port, down_after_ms=down_after_ms) for _ in range(3)]
    group = SentinelGroup(primary, replica, sentinels)
    try:
        replica.start()
        for sentinel in sentinels:
            sentinel.start()
        deadline = time.monotonic() + 30
        while not (group.replicated() and group.primary_port() == primary.port and _sentinels_see(group)):
            assert time.monotonic() < deadline, "the sentinels did not find the replica and each other"
            time.sleep(0.1)  # ok-sleep: polling starting processes
        yield group
    finally:
        for process in (*sentinels, replica, primary):
            process.kill()


def _sentinels_see(group: SentinelGroup) -> bool:
    """Every sentinel knows the replica and the two other sentinels (else a failover could not be voted)."""
    for sentinel in group.sentinels:
        with contextlib.suppress(redis.RedisError), redis.Redis(port=sentinel.port, socket_timeout=1) as client:
            state = client.sentinel_master(sentinel.service)
            if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < 2:
                return False
            continue
        return False
    return True
