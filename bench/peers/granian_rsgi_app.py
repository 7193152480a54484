"""The floor for ``bench/fanout``: the leanest pure-Python granian RSGI broadcast server (no Rust core, no checks).

Same routes, envelope and frames as sse-fast for what the benchmark sends. A stream is its RSGI transport kept in a
dict (no coroutine per stream, as in sse-fast): a publish encodes the envelope once and calls
``transport.send_bytes`` for every recipient, right away (no queue, no coalescing, no slow-consumer handling).
What sse-fast costs above this is the price of its features.

Run: ``python bench/peers/granian_rsgi_app.py --port 8002`` (``--runtime-threads 2``: granian's socket writes on two
Rust threads, as ``sse-fast serve --runtime-threads 2``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl

from granian.rsgi import ProtocolClosed

_ids = itertools.count(1)
_prefix = secrets.token_hex(4)
streams: dict[int, tuple[str, tuple[str, ...], Any]] = {}
_conn_ids = itertools.count(1)
JSON = [("content-type", "application/json")]
SSE = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")]


def _send(conn_id: int, transport: Any, data: bytes) -> bool:
    try:
        transport.send_bytes(data).__next__()
    except StopIteration:
        return True
    except ProtocolClosed:
        streams.pop(conn_id, None)
        return False
    return True


def _publish(message: dict[str, Any], *, target: str | None = None, topic: str | None = None) -> tuple[str, int]:
    envelope = {
        "id": f"{_prefix}-{next(_ids)}",
        "type": message["type"],
        "priority": message.get("priority", 1),
        "timestamp": int(time.time() * 1000),
        "source": "server",
        **{k: v for k, v in message.items() if k not in ("id", "type", "priority", "timestamp", "source")},
    }
    if target:
        envelope["target"] = target
    frame = b"id: %d\nevent: %s\ndata: %s\n\n" % (
        next(_ids),
        envelope["type"].encode(),
        json.dumps(envelope, separators=(",", ":")).encode(),
    )
    sent = 0
    for conn_id, (client_id, topics, transport) in list(streams.items()):
        if (target and client_id != target) or (topic and topic not in topics):
            continue
        sent += _send(conn_id, transport, frame)
    return envelope["id"], sent


async def _body(protocol: Any) -> Any:
    return json.loads(await protocol())


async def _stream(scope: Any, protocol: Any) -> None:
    query = dict(parse_qsl(scope.query_string))
    client_id = query.get("clientId") or f"anon-{secrets.token_hex(4)}"
    topics = tuple(t for t in query.get("topics", "").split(",") if t)
    conn_id = next(_conn_ids)
    transport = protocol.response_stream(200, SSE)
    streams[conn_id] = (client_id, topics, transport)
    detail = {"clientId": client_id, "connectionId": str(conn_id), "resumed": False, "missed": 0}
    connect = {"id": f"{_prefix}-{next(_ids)}", "type": "system", "priority": 3, "payload": {"event": "connect",
               "detail": detail}}  # fmt: skip
    _send(conn_id, transport, b"event: system\ndata: %s\n\n" % json.dumps(connect).encode())
    # No coroutine per stream: granian keeps the response open while the transport is referenced.
    waiter = protocol.client_disconnect()
    waiter.add_done_callback(lambda _: streams.pop(conn_id, None))


class App:
    """The RSGI application."""

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        path, method = scope.path, scope.method
        if path == "/sse":
            await _stream(scope, protocol)
            return
        if method == "POST" and path == "/api/broadcast":
            body = await _body(protocol)
            message_id, sent = _publish(body["message"])
            answer: dict[str, Any] = {"success": True, "sentCount": sent, "messageId": message_id}
        elif method == "POST" and path == "/api/messages":
            body = await _body(protocol)
            message_id, sent = _publish(body, target=body.get("target"), topic=body.get("topic"))
            answer = {"success": True, "messageId": message_id, "delivered": sent, "queued": False}
        elif method == "POST" and path.startswith("/api/direct/"):
            body = await _body(protocol)
            message_id, sent = _publish(body, target=path.rsplit("/", 1)[1])
            answer = {"success": True, "messageId": message_id, "delivered": sent, "queued": False}
        elif path == "/healthz":
            protocol.response_bytes(200, JSON, b'{"status":"ok"}')
            return
        else:
            protocol.response_bytes(404, JSON, b'{"error":"not found","code":"not_found"}')
            return
        protocol.response_bytes(202, JSON, json.dumps(answer).encode())


app = App()


def main() -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops, RuntimeModes
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--runtime-threads", type=int, default=1, help="granian runtime threads (Rust, socket I/O)")
    parser.add_argument("--runtime-mode", choices=["auto", "st", "mt"], default="auto", help="granian runtime mode")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    Granian(
        "granian_rsgi_app:app",
        address=args.host,
        port=args.port,
        interface=Interfaces.RSGI,
        workers=1,
        runtime_threads=args.runtime_threads,
        runtime_mode=RuntimeModes(args.runtime_mode),
        loop=Loops.uvloop,
        backlog=4096,
        backpressure=hard - 256,
        http1_settings=HTTP1Settings(max_buffer_size=8192),
        log_level=LogLevels.warning,
    ).serve()


if __name__ == "__main__":
    main()
