"""Small scripted HTTP servers on loopback, for the client's tests: each request runs a test-supplied script.

A script is ``async def script(request, reply)``: it reads the parsed :class:`Request` and answers through
:class:`Reply` (``reply.json(...)``, or ``reply.start_stream()`` then ``reply.event(...)``, ``reply.raw(...)``,
``reply.hold()``). The connection is closed when the script returns. Every request is recorded in
``server.requests``, so a test can assert what the client sent (``Last-Event-ID``, acks, bodies).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msgspec

_ids = itertools.count(1)


@dataclass
class Request:
    """One request as the scripted server read it; header names lower-cased."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        """The body, decoded."""
        return msgspec.json.decode(self.body)


class Reply:
    """The answer side of one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def raw(self, data: bytes) -> None:
        """Write bytes as they are."""
        self.writer.write(data)
        await self.writer.drain()

    async def json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        """A complete JSON answer."""
        payload = msgspec.json.encode(body)
        head = [f"HTTP/1.1 {status} X", "content-type: application/json", f"content-length: {len(payload)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        await self.raw(("\r\n".join([*head, "connection: close", "", ""])).encode() + payload)

    async def empty(self, status: int) -> None:
        """An answer without a body (204)."""
        await self.raw(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode())

    async def start_stream(self, *, retry: int | None = None, content_type: str = "text/event-stream") -> None:
        """The head of an event stream (close-delimited body), and a ``retry:`` block if asked."""
        await self.raw(f"HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\nconnection: close\r\n\r\n".encode())
        if retry is not None:
            await self.raw(b"retry: %d\n\n" % retry)

    async def event(self, envelope: dict[str, Any], *, id: str | None = None, retry: int | None = None) -> None:
        """One frame: ``id:`` (when given), ``event:`` (the envelope's type) and the envelope as ``data:``."""
        lines = [] if retry is None else [b"retry: %d" % retry]
        if id is not None:
            lines.append(b"id: " + id.encode())
        lines.append(b"event: " + envelope["type"].encode())
        lines.append(b"data: " + msgspec.json.encode(envelope))
        await self.raw(b"\n".join(lines) + b"\n\n")

    async def connect(self, cursor: str = "e-0", *, resumed: bool = False, **detail: Any) -> None:
        """The ``connect`` system frame a real server opens every stream with."""
        body = {"clientId": "c1", "connectionId": "n.1", "resumed": resumed, "missed": 0, "serverTime": 0, **detail}
        await self.event(envelope("system", {"event": "connect", "detail": body}), id=cursor)

    async def hold(self, timeout: float = 30.0) -> None:
        """Keep the stream open until the client goes away (or ``timeout``)."""
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(timeout):
                while await self.reader.read(1024):
                    pass


def envelope(type: str, payload: Any, *, id: str | None = None, **fields: Any) -> dict[str, Any]:
    """An envelope as a server would send it (with an id, a timestamp and a source)."""
    return {
        "id": id or f"m{next(_ids)}",
        "type": type,
        "timestamp": 1,
        "source": "server",
        "payload": payload,
        **fields,
    }


Script = Callable[[Request, Reply], Awaitable[None]]


class ScriptedServer:
    """A raw asyncio HTTP/1.1 server on loopback running ``script`` for each request."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[Request] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    def of(self, path: str) -> list[Request]:
        """The requests made to ``path`` so far."""
        return [r for r in self.requests if r.path == path]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds (checked on every request and every 50 ms), or fail."""
        await until(predicate, timeout, self._changed)

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            request = await self._read(reader)
            if request is None:
                return
            self.requests.append(request)
            self._changed.set()
            await self.script(request, Reply(reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the server stops: end quietly (asyncio's stream callback logs a handler task that ends cancelled)
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        first, *lines = head.decode("latin-1").split("\r\n")
        method, target, _ = first.split(" ", 2)
        headers = {}
        for line in lines:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        parts = urlsplit(target)
        return Request(method, parts.path, dict(parse_qsl(parts.query)), headers, body, time.monotonic())


@contextlib.asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[ScriptedServer]:
    """``async with scripted(script) as server:`` a running :class:`ScriptedServer`."""
    async with ScriptedServer(script) as server:
        yield server


async def until(
    predicate: Callable[[], bool],
    timeout: float = 10.0,
    changed: asyncio.Event | None = None,
) -> None:
    """Wait until ``predicate()`` holds, re-checking every 20-50 ms (or when ``changed`` is set); fail after
    ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"condition not met within {timeout}s")
        if changed is not None:
            changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, 0.05))
        else:
            await asyncio.sleep(min(remaining, 0.02))  # ok-sleep: polling a condition with a deadline
