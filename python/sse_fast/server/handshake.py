"""Opening a stream: everything ``GET /sse`` does between its response headers and its first live frame.

The order is what makes a resume exact (PROTOCOL.md section 2):

1. the connection joins the hub first, so that every frame published from now on reaches it, and its live frames
   are held back (``blocked``) until the opening is written;
2. the broker finds what the cursor needs (:meth:`~sse_fast.broker.Broker.open_stream`; what it decides, it
   decides with :func:`sse_fast.broker.rules.opening`): resumed or not and why, the replay, the watermark; the
   mailbox entries the replay does not cover are re-issued into the log after the head, so they arrive as live
   frames with cursors of their own (a client that drops in the middle of its mailbox resumes like any other);
3. the opening goes out in one write: ``retry:`` and the ``connect`` frame with the cursor the stream starts from;
4. the queue's watermark is set, so that live frames the replay already holds are refused as duplicates;
5. the replay goes out through the writer (:meth:`~sse_fast.streams.Streams.replay`: in chunks, with the sink's
   backpressure, ``id:`` lines from the core), then the live frames that waited.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final, cast

from sse_fast._core import encode_json_frame, encode_retry
from sse_fast.broker import Broker, Opening
from sse_fast.models import ConnectDetail, GapReason, new_message_id
from sse_fast.server.metrics import Metrics
from sse_fast.settings import Settings
from sse_fast.streams import Sink, Streams, system_envelope

__all__ = ["MAX_CURSOR", "Handshake", "cursor_of"]

log = logging.getLogger("sse_fast.server.handshake")

#: The longest ``Last-Event-ID`` read as a cursor; a longer one (or one with control characters) is not a cursor
#: of this server, and is answered ``unknown_cursor`` like any other.
MAX_CURSOR: Final = 256


def cursor_of(header: str | None, query: str | None) -> str | None:
    """The resume cursor a request names (the ``Last-Event-ID`` header, else the ``lastEventId`` query)."""
    cursor = header or query or None
    if cursor is not None and (len(cursor) > MAX_CURSOR or not cursor.isprintable()):
        return "invalid"
    return cursor


class Handshake:
    """Opens this worker's streams (see the module docs for the order, and why)."""

    def __init__(self, settings: Settings, *, broker: Broker, streams: Streams, metrics: Metrics) -> None:
        self.settings = settings
        self.broker = broker
        self.streams = streams
        self.metrics = metrics

    async def open(
        self,
        client_id: str,
        topics: tuple[str, ...],
        cursor: str | None,
        sink: Sink,
        *,
        grants: Callable[[str], bool] | None = None,
    ) -> int:
        """Open a stream on ``sink`` for ``client_id`` (``grants``: the patterns its identity may subscribe to, which
        a live change keeps within; None: any); returns its connection id."""
        conn = self.streams.open(client_id, topics, sink, grants=grants)
        conn.blocked = True  # live frames routed to it while the broker answers wait until the opening is written
        try:
            opening = await self.broker.open_stream(client_id, topics, cursor, conn_id=conn.id)
        except Exception as err:  # the headers are out: end the stream; the client reconnects and resumes
            log.warning("could not open a stream for %s: %s", client_id, err)
            self.streams.close(conn.id, "broker_unavailable")
            return conn.id
        if self.streams.get(conn.id) is None:  # replaced or closed meanwhile
            return conn.id
        written = sink.write(self.opening_bytes(conn.id, client_id, opening))
        self.streams.hub.set_watermark(conn.id, opening.watermark)
        self.metrics.replayed += opening.missed
        self.streams.replay(conn, opening.frames)
        if written:
            self.streams.unblock(conn.id)
        # Otherwise the sink says when it can take more (ASGI: when its pending send completes).
        return conn.id

    def opening_bytes(self, conn_id: int, client_id: str, opening: Opening) -> bytes:
        """``retry:`` and the ``connect`` frame (its ``id:`` the cursor the stream starts from)."""
        detail = ConnectDetail(
            client_id=client_id,
            connection_id=self.streams.public_id(conn_id),
            resumed=opening.resumed,
            missed=opening.missed,
            server_time=int(time.time() * 1000),
            reason=cast(GapReason | None, opening.gap),
        )
        connect = system_envelope("connect", detail, message_id=new_message_id())
        return encode_retry(self.settings.retry) + encode_json_frame(connect, event="system", id=opening.cursor)
