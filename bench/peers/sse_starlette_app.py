"""The peer of ``bench/fanout``: a minimal broadcast server on sse-starlette and uvicorn, the way its docs show.

Same routes, envelope and frames as sse-fast (PROTOCOL.md sections 2 and 3), without what the benchmark does not
exercise (auth, replay, mailboxes, acks): ``GET /sse?clientId=&topics=``, ``POST /api/broadcast``,
``POST /api/messages`` (``topic`` or ``target``), ``POST /api/direct/{clientId}``, ``GET /healthz``.

Each stream is an ``EventSourceResponse`` over an async generator that waits on its own ``asyncio.Queue``; a publish
encodes the envelope once and puts one shared ``ServerSentEvent`` into every recipient's queue (sse-starlette then
formats it per connection, as it must). Frames are ``id: <cursor>\\nevent: <type>\\ndata: <json>\\n\\n``.

Run: ``python bench/peers/sse_starlette_app.py --port 8001`` (uvicorn picks uvloop and httptools when installed, as
``uvicorn[standard]`` has them).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

_cursor = itertools.count(1)
_ids = itertools.count(1)
_prefix = secrets.token_hex(4)
settings = {"ping": 15}


class Subscriber:
    """One open stream: its queue and what it listens to."""

    __slots__ = ("client_id", "queue", "topics")

    def __init__(self, client_id: str, topics: tuple[str, ...]) -> None:
        self.client_id = client_id
        self.topics = topics
        self.queue: asyncio.Queue[ServerSentEvent] = asyncio.Queue()


subscribers: set[Subscriber] = set()
by_client: dict[str, set[Subscriber]] = {}
by_topic: dict[str, set[Subscriber]] = {}


def _add(sub: Subscriber) -> None:
    subscribers.add(sub)
    by_client.setdefault(sub.client_id, set()).add(sub)
    for topic in sub.topics:
        by_topic.setdefault(topic, set()).add(sub)


def _remove(sub: Subscriber) -> None:
    subscribers.discard(sub)
    for index, key in [(by_client, sub.client_id), *((by_topic, t) for t in sub.topics)]:
        members = index.get(key)
        if members is not None:
            members.discard(sub)
            if not members:
                del index[key]


def _envelope(message: dict[str, Any], **extra: Any) -> dict[str, Any]:
    if not isinstance(message, dict) or "type" not in message or "payload" not in message:
        raise ValueError("an envelope needs type and payload")
    return {
        "id": message.get("id") or f"{_prefix}-{next(_ids)}",
        "type": message["type"],
        "priority": message.get("priority", 1),
        "timestamp": int(time.time() * 1000),
        "source": "server",
        **{k: v for k, v in message.items() if k not in ("id", "type", "priority", "timestamp", "source")},
        **extra,
    }


def _deliver(envelope: dict[str, Any], recipients: Any, exclude: str | None = None) -> int:
    event = ServerSentEvent(
        json.dumps(envelope, separators=(",", ":")), event=envelope["type"], id=str(next(_cursor)), sep="\n"
    )
    sent = 0
    for sub in list(recipients):
        if sub.client_id != exclude:
            sub.queue.put_nowait(event)
            sent += 1
    return sent


async def sse(request: Request) -> EventSourceResponse:
    client_id = request.query_params.get("clientId") or f"anon-{secrets.token_hex(4)}"
    topics = tuple(t for t in request.query_params.get("topics", "").split(",") if t)
    sub = Subscriber(client_id, topics)
    _add(sub)

    async def events() -> AsyncIterator[ServerSentEvent]:
        try:
            detail = {"clientId": client_id, "connectionId": str(id(sub)), "resumed": False, "missed": 0}
            connect = _envelope({"type": "system", "priority": 3, "payload": {"event": "connect", "detail": detail}})
            yield ServerSentEvent(json.dumps(connect), event="system", id=str(next(_cursor)), sep="\n")
            while True:
                yield await sub.queue.get()
        finally:
            _remove(sub)

    return EventSourceResponse(events(), ping=settings["ping"], sep="\n")


async def broadcast(request: Request) -> JSONResponse:
    body = await request.json()
    envelope = _envelope(body["message"])
    sent = _deliver(envelope, subscribers, body.get("excludeClientId"))
    return JSONResponse({"success": True, "sentCount": sent, "messageId": envelope["id"]}, status_code=202)


async def messages(request: Request) -> JSONResponse:
    envelope = _envelope(await request.json())
    return _publish(envelope)


async def direct(request: Request) -> JSONResponse:
    envelope = _envelope(await request.json(), target=request.path_params["clientId"])
    return _publish(envelope)


def _publish(envelope: dict[str, Any]) -> JSONResponse:
    if envelope.get("target"):
        recipients: Any = by_client.get(envelope["target"], ())
    elif envelope.get("topic"):
        recipients = by_topic.get(envelope["topic"], ())
    else:
        recipients = subscribers
    delivered = _deliver(envelope, recipients)
    body = {"success": True, "messageId": envelope["id"], "delivered": delivered, "queued": False}
    return JSONResponse(body, status_code=202)


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "connections": len(subscribers)})


app = Starlette(
    routes=[
        Route("/sse", sse),
        Route("/api/broadcast", broadcast, methods=["POST"]),
        Route("/api/messages", messages, methods=["POST"]),
        Route("/api/direct/{clientId}", direct, methods=["POST"]),
        Route("/healthz", healthz),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--ping", type=int, default=settings["ping"], help="keepalive comment interval (s)")
    args = parser.parse_args()
    settings["ping"] = args.ping
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", backlog=4096)


if __name__ == "__main__":
    main()
