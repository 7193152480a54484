"""The admin's tail of the replay log (``GET /api/admin/recent``): one rule for both brokers.

A broker reads its log's newest entries, newest first, as ``(cursor, data)`` pairs (``data`` is the envelope's JSON
as every recipient got it) and hands them to :func:`recent_messages`, which decodes them and stops at ``limit``
entries or at :data:`RECENT_BYTES` of data, whichever comes first (the newest entry always counts): a tail of 200
messages of 1 MiB each must not become a 200 MiB answer.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from sse_fast.models import Envelope, RecentMessage

__all__ = ["RECENT_BYTES", "frame_data", "recent_messages"]

RECENT_BYTES = 4 * 1024 * 1024
"""The most envelope bytes one answer of ``GET /api/admin/recent`` carries (past the first message)."""

_decoder = msgspec.json.Decoder(Envelope)


def recent_messages(entries: Iterable[tuple[str, bytes]], limit: int) -> list[RecentMessage]:
    """The first ``limit`` of ``entries`` (newest first) as :class:`RecentMessage`, within :data:`RECENT_BYTES`."""
    out: list[RecentMessage] = []
    size = 0
    for cursor, data in entries:
        if len(out) >= limit or (out and size + len(data) > RECENT_BYTES):
            break
        size += len(data)
        out.append(RecentMessage(cursor=cursor, message=_decoder.decode(data)))
    return out


def frame_data(body: bytes) -> bytes:
    """The ``data:`` of a frame's body (``event: <type>\\ndata: <json>\\n\\n``; the JSON is one line)."""
    return body.split(b"\ndata: ", 1)[1].rstrip(b"\n")
