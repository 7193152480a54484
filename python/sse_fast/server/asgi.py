"""The ASGI interface (``granian --interface asgi``): the twin of :mod:`sse_fast.server.rsgi`.

ASGI needs the request's coroutine to live as long as its response, so a stream keeps one coroutine that waits
for the client to leave. Writes still come from the worker's writer: ``send`` is called without awaiting when
the server returns a finished awaitable (granian does unless its bounded body channel is full); otherwise the
sink reports backpressure and resumes the connection once the pending send completes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from sse_fast.server.backlog import Watched, address
from sse_fast.server.http import Request, Response, parse_query

if TYPE_CHECKING:
    from sse_fast.server.app import App

__all__ = ["serve"]

_LAST_SEND = 5.0  # seconds for the response's end to be taken by granian after the stream closed

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


def _finished(awaitable: Any) -> bool:
    """Whether ``send``'s result already completed, without waiting on it.

    granian returns a ready-made awaitable without ``done`` when the chunk fit its bounded channel, and a future
    when the channel is full; other servers return a coroutine, which has not run yet.
    """
    if inspect.iscoroutine(awaitable):
        return False
    done = getattr(awaitable, "done", None)
    return not callable(done) or bool(done())


class AsgiSink:
    """A stream's ASGI ``send``."""

    __slots__ = ("conn_id", "done", "loop", "on_ready", "pending", "send")

    direct = None  # every write goes through send(): ASGI has no transport the hub could write itself

    def __init__(self, send: Send, loop: asyncio.AbstractEventLoop, on_ready: Callable[[int], None]) -> None:
        self.send: Send | None = send
        self.loop = loop
        self.done: asyncio.Future[None] = loop.create_future()
        self.pending: asyncio.Future[Any] | None = None
        self.on_ready = on_ready
        self.conn_id = 0

    def write(self, data: bytes) -> bool:
        send = self.send
        if send is None or self.pending is not None:
            return False
        try:
            result = send({"type": "http.response.body", "body": data, "more_body": True})
        except Exception:
            self.close()
            return False
        if _finished(result):
            return True
        self.pending = asyncio.ensure_future(result)
        self.pending.add_done_callback(self._sent)
        return False

    def _sent(self, future: asyncio.Future[Any]) -> None:
        self.pending = None
        if future.cancelled() or future.exception() is not None:
            self.close()
            return
        self.on_ready(self.conn_id)

    def wrote(self, size: int) -> None:
        """Never called: :attr:`direct` is None."""

    def close(self) -> None:
        self.send = None
        if not self.done.done():
            self.done.set_result(None)


async def _lifespan(app: App, receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            app.startup(asyncio.get_running_loop())
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await app.shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


def _split_path(scope: dict[str, Any]) -> tuple[str, str]:
    """The mount prefix and the path inside sse-fast. ASGI's ``path`` holds the whole path and ``root_path`` the
    prefix the app is mounted at (Starlette's ``Mount``, FastAPI's ``app.mount``): the routes see what follows it."""
    root_path: str = scope.get("root_path") or ""
    path: str = scope["path"]
    if root_path and path.startswith(root_path):
        return root_path, path[len(root_path) :] or "/"
    return root_path, path


async def serve(app: App, scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Handle one ASGI connection scope."""
    if scope["type"] == "lifespan":
        await _lifespan(app, receive, send)
        return
    if scope["type"] != "http":
        return
    app.startup(asyncio.get_running_loop())  # servers without lifespan support
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}

    async def chunks() -> AsyncIterator[bytes]:
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            yield message.get("body", b"")
            if not message.get("more_body", False):
                return

    client = scope.get("client") or ("", 0)
    query = parse_query(scope.get("query_string", b"").decode("latin-1"))
    root_path, path = _split_path(scope)
    req = Request(scope["method"], path, query, headers, f"{client[0]}:{client[1]}", chunks, root_path=root_path)
    answer = await app.api.handle(req)
    raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers]
    if isinstance(answer, Response):
        app.metrics.responses[answer.status] += 1
        await send({"type": "http.response.start", "status": answer.status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": answer.body})
        return
    app.metrics.responses[200] += 1
    sink = AsgiSink(send, asyncio.get_running_loop(), app.streams.unblock)
    try:  # the stream holds a connection slot until it registers: give it back if it never does
        await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
        sink.conn_id = await answer.open(sink)
    finally:
        answer.release()

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    # The dead-peer watch reads this stream's socket (ASGI's backpressure bounds a slow reader already).
    # Under HTTP/2 the socket is shared with other streams: the watch may reset it for a dead peer (the whole
    # connection is gone then), never for one stream.
    shared = scope.get("http_version") == "2"
    watched = Watched(sink.conn_id, address(*scope.get("server") or ("", "")), address(*client), shared=shared)
    app.backlog.watch(watched)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait([watcher, sink.done], return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        app.backlog.forget(watched)
        sink.close()
        answer.closed(sink.conn_id)
    # The client may be gone, or (a slow HTTP/2 stream) never read again: then its window stays shut and the last
    # send would wait for as long as the connection lives. Give up and let granian drop the stream.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(send({"type": "http.response.body", "body": b"", "more_body": False}), _LAST_SEND)
