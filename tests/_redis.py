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
