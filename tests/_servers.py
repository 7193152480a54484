"""Real servers for end-to-end tests: granian subprocesses on loopback, and a raw SSE reader for them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec

from sse_fast import Decoder, Event

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# One TLS context for every test client: building one loads the CA bundle (tens of ms), and some tests open
# thousands of streams (the servers are plain HTTP on loopback; the context is never used for a handshake).
TLS = ssl.create_default_context()


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running server process."""

    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """What the server printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the server and wait for it to exit; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"server did not exit within {timeout}s after {sig}:\n{self.log()}") from None
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL the server and every worker it started (they are in its own process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def start_server(
    tmp_path: Path,
    *,
    env: dict[str, str] | None = None,
    command: str = "serve",
    interface: str = "rsgi",
    extra_args: tuple[str, ...] = (),
    app: str = "sse_fast.app:app",
    host: str = "127.0.0.1",
    connect: str | None = None,
) -> Server:
    """Start ``sse-fast serve`` (or plain ``granian``) on a free port and wait until ``/healthz`` answers.

    ``app`` is the application granian runs (``command="granian"`` only); modules in ``tests/`` import as top-level.
    The server listens on ``host`` and ``url`` points at ``connect`` (default: ``host``; ``::`` is dual-stack, so
    ``connect="127.0.0.1"`` reaches it as an IPv4-mapped peer).
    """
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_FAST_")}
    full_env.update({"SSE_FAST_KEEPALIVE": "15", "PYTHONUNBUFFERED": "1"})
    full_env.update(env or {})
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    if command == "serve":
        assert app == "sse_fast.app:app", "sse-fast serve runs sse_fast.app:app; use command='granian' for another"
        args = [str(BIN / "sse-fast"), "serve", "--host", host, "--port", str(port), "--interface", interface]
    else:
        args = [
            str(BIN / "granian"),
            "--interface",
            interface,
            "--host",
            host,
            "--port",
            str(port),
            "--loop",
            "uvloop",
            app,
        ]
    log_path = tmp_path / f"server-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*args, *extra_args],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            start_new_session=True,  # its own process group, so that a kill reaches the workers too
        )
    target = connect or host
    server = Server(f"http://{f'[{target}]' if ':' in target else target}:{port}", port, proc, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{server.log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                return server
        time.sleep(0.05)  # ok-sleep: polling a starting process
    server.kill()
    raise AssertionError(f"server did not become healthy:\n{server.log()}")


@contextlib.contextmanager
def running_server(tmp_path: Path, **kwargs: Any) -> Iterator[Server]:
    """``start_server`` as a context manager that always stops the process."""
    server = start_server(tmp_path, **kwargs)
    try:
        yield server
    finally:
        server.kill()  # also reaps workers that outlived a parent stopped by the test


def kill_node(server: Server) -> None:
    """SIGKILL a node: the parent and its granian workers (they would outlive it), like a machine that dies."""
    server.kill()


@dataclass
class Stream:
    """An open ``GET /sse`` read in the background; events are decoded with the Rust decoder."""

    status: int
    headers: httpx.Headers
    events: list[Event] = field(default_factory=list)
    raw: bytearray = field(default_factory=bytearray)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    decoder: Decoder = field(default_factory=Decoder)
    _task: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def envelopes(self, event_type: str | None = None) -> list[dict[str, Any]]:
        """The decoded envelopes received so far (optionally of one type)."""
        out = []
        for event in self.events:
            if event_type is None or event.event == event_type:
                out.append(msgspec.json.decode(event.data))
        return out

    def system(self, name: str) -> list[dict[str, Any]]:
        """The ``system`` envelopes whose ``payload.event`` is ``name``."""
        return [e for e in self.envelopes("system") if e["payload"]["event"] == name]

    async def wait_for(self, predicate: Callable[[Stream], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate(self)`` holds, or fail after ``timeout`` seconds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate(self):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"condition not met in {timeout}s; got {[e.event for e in self.events]}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))

    async def count(self, event_type: str, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait for ``n`` events of ``event_type``; returns their envelopes."""
        await self.wait_for(lambda s: len(s.envelopes(event_type)) >= n, timeout)
        return self.envelopes(event_type)

    @property
    def last_id(self) -> str:
        """The last event id the stream set (what a browser would send as Last-Event-ID)."""
        return self.decoder.last_event_id


@contextlib.asynccontextmanager
async def open_stream(
    url: str, *, client_id: str = "c1", topics: str = "", headers: dict[str, str] | None = None, query: str = ""
) -> AsyncIterator[Stream]:
    """Open a stream and read it in the background until the block exits."""
    params = f"clientId={client_id}" if client_id else ""
    if topics:
        params += f"&topics={topics}"
    if query:
        params += f"&{query}"
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None), verify=TLS) as http:  # noqa: SIM117
        async with http.stream("GET", f"{url}/sse?{params}", headers=headers or {}) as response:
            stream = Stream(response.status_code, response.headers)

            async def pump() -> None:
                try:
                    async for chunk in response.aiter_raw():
                        stream.raw.extend(chunk)
                        stream.events.extend(stream.decoder.feed(chunk))
                        stream._changed.set()
                except httpx.HTTPError:
                    pass
                finally:
                    stream.closed.set()
                    stream._changed.set()

            if response.status_code == 200:
                stream._task = asyncio.create_task(pump())
            else:
                await response.aread()
                stream.raw.extend(response.content)
                stream.closed.set()
            try:
                yield stream
            finally:
                if stream._task is not None:
                    stream._task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await stream._task
