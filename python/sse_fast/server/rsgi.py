"""granian's RSGI interface (its default): requests, answers and streams.

A stream costs no coroutine: the handler registers the connection, writes its opening bytes and returns.
granian keeps the response open for as long as the transport is referenced (by the connection's sink), and
calls back when the client goes away. Writes are ``transport.send_bytes`` calls made by the worker's writer
(once the stream is open, by the Rust hub itself: :attr:`RsgiSink.direct`): granian queues the bytes and returns
an already-finished awaitable, which the writer steps once to learn whether the stream is still open. Dropping
the transport ends the response cleanly.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from granian._granian import RSGIProtocolClosed as ProtocolClosed

from sse_fast.server.backlog import BacklogWatch, Watched
from sse_fast.server.http import Request, Response, parse_query

if TYPE_CHECKING:
    from sse_fast.server.app import App

__all__ = ["RsgiSink", "serve"]


# The class of the finished awaitable granian returns for a queued write, learned from the first one (granian does
# not export it). Comparing classes on the hot path spares raising and catching StopIteration on every write.
_queued: type | None = None


def _accepted(result: Any) -> bool:
    """Step a ``send_bytes`` result once: True when the bytes were queued, False when the stream is closed."""
    global _queued
    try:
        result.__next__()
    except StopIteration:
        _queued = type(result)
        return True
    except ProtocolClosed:
        return False
    return True


class RsgiSink(Watched):
    """A stream's RSGI transport, counted by the backlog watch (granian itself buffers without limit).

    The sink is also the callback of granian's disconnect waiter (:meth:`__call__`): no closure or partial per
    stream, since tens of thousands live in one worker.
    """

    __slots__ = ("closed", "transport", "watch")

    def __init__(
        self,
        transport: Any,
        watch: BacklogWatch,
        local: str,
        peer: str,
        *,
        shared: bool = False,
        closed: Callable[[int], None] = lambda _: None,
    ) -> None:
        super().__init__(0, local, peer, shared=shared)
        self.transport: Any = transport
        self.watch = watch
        self.closed = closed  # told the connection id once the client is gone

    def __call__(self, _waiter: object = None) -> None:
        """The client went away: forget the transport and the connection."""
        self.close()  # the watch forgets it
        self.closed(self.conn_id)

    @property
    def direct(self) -> Any:
        """The transport, for the hub to write itself once the stream is open (None once closed)."""
        return self.transport

    def wrote(self, size: int) -> None:
        sent = self.sent + size
        self.sent = sent
        if sent - self.mark >= self.watch.step:
            self.watch.suspect(self)

    def write(self, data: bytes) -> bool:
        transport = self.transport
        if transport is None:
            return False
        result = transport.send_bytes(data)
        if type(result) is not _queued and not _accepted(result):
            self.close()  # the client is gone; granian's disconnect callback removes the connection
            return False
        self.wrote(len(data))
        return True

    def close(self) -> None:
        self.transport = None
        self.watch.forget(self)


def _request(scope: Any, protocol: Any) -> Request:
    # granian's names are lower-case already (hyper's HeaderMap keeps them so; HTTP/2 forbids others).
    headers = dict(scope.headers.items())

    async def chunks() -> AsyncIterator[bytes]:
        # granian ends the body with an empty chunk; asking for more after it is a protocol error.
        async for chunk in protocol:
            if not chunk:
                return
            yield chunk

    query = parse_query(scope.query_string)
    return Request(scope.method, scope.path, query, headers, scope.client, chunks, whole=protocol)


def _on_disconnect(protocol: Any, sink: RsgiSink) -> None:
    waiter = protocol.client_disconnect()
    if hasattr(waiter, "add_done_callback"):
        waiter.add_done_callback(sink)
    else:  # the client left already
        sink()


async def serve(app: App, scope: Any, protocol: Any) -> None:
    """Handle one RSGI request."""
    if scope.proto != "http":
        return
    answer = await app.api.handle(_request(scope, protocol))
    app.metrics.responses[answer.status if isinstance(answer, Response) else 200] += 1
    if isinstance(answer, Response):
        protocol.response_bytes(answer.status, answer.headers, answer.body)
        return
    # Every stream of a listener has the same local address: one shared string, not one per stream.
    try:  # the stream holds a connection slot until it registers: give it back if it never does
        transport = protocol.response_stream(200, answer.headers)
        http2 = scope.http_version == "2"
        if http2:
            app.backlog.warn_rsgi_http2()
        sink = RsgiSink(
            transport, app.backlog, sys.intern(scope.server), scope.client, shared=http2, closed=answer.closed
        )
        sink.conn_id = await answer.open(sink)
    finally:
        answer.release()
    if sink.transport is not None:  # not closed while it opened
        app.backlog.watch(sink)
    _on_disconnect(protocol, sink)
