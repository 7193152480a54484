"""The ``sse-fast`` command line: ``serve``, and ``listen`` and ``publish`` on the client."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import sys
from collections.abc import Sequence
from typing import Any

import msgspec

from sse_fast.client import Client, State
from sse_fast.errors import AuthError, ConnectionLostError, QueueFullError, ServerError
from sse_fast.models import Envelope

__all__ = ["main", "raise_open_file_limit", "run_listen", "run_publish", "serve_options"]

log = logging.getLogger("sse_fast.cli")

_json = msgspec.json.Encoder()

# Each stream holds one socket; keep some descriptors for the listener, Redis, logs and outgoing calls.
_RESERVED_FDS = 256


def raise_open_file_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as err:  # a container may refuse; run with what we have
            log.warning("could not raise the open-file limit to %d: %s", hard, err)
    return soft


def serve_options(nofile: int, workers: int) -> dict[str, int]:
    """granian's ``backlog`` and per-worker ``backpressure`` sized for long-lived streams.

    granian admits ``backpressure`` concurrent requests per worker (default ``backlog / workers``, 1024): every
    open stream is one, so the default silently stalls the 1,025th stream. Size it by the descriptors a worker has:
    the open-file limit is per process, so each worker can hold ``nofile`` minus a reserve, whatever their number.
    """
    per_worker = max(1024, nofile - _RESERVED_FDS)
    return {"backlog": min(65535, max(2048, per_worker * max(1, workers))), "backpressure": per_worker}


def _serve(args: argparse.Namespace) -> int:
    from sse_fast.settings import Settings, SettingsError

    overrides = {
        "SSE_FAST_HOST": args.host,
        "SSE_FAST_PORT": None if args.port is None else str(args.port),
        "SSE_FAST_WORKERS": None if args.workers is None else str(args.workers),
        "SSE_FAST_INTERFACE": args.interface,
        "SSE_FAST_BROKER": args.broker,
    }
    # Workers are separate processes that read their settings from the environment: put the CLI's there.
    os.environ.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = Settings.from_env()
    except SettingsError as err:
        print(f"sse-fast: {err}", file=sys.stderr)
        return 2
    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.http import HTTP1Settings

    nofile = raise_open_file_limit()
    sizing = serve_options(nofile, settings.workers)
    log.info(
        "serving on http://%s:%d, %d worker(s), %s; open-file limit %d: up to %d streams per worker",
        settings.host,
        settings.port,
        settings.workers,
        settings.interface,
        nofile,
        sizing["backpressure"],
    )
    server = Granian(
        "sse_fast.app:app",
        address=settings.host,
        port=settings.port,
        interface=Interfaces(settings.interface),
        workers=settings.workers,
        loop=Loops.uvloop,
        backlog=sizing["backlog"],
        backpressure=sizing["backpressure"],
        # Small per-connection read buffers: SSE requests are tiny, and each idle stream keeps its buffer.
        http1_settings=HTTP1Settings(max_buffer_size=8192),
        log_level=_granian_log_level(settings.log_level),
        workers_kill_timeout=int(settings.shutdown_grace) + 5,
    )
    server.serve()
    return 0


def _granian_log_level(level: str) -> Any:
    from granian.log import LogLevels

    return LogLevels(level.lower())


# ---------------------------------------------------------------------------------------------------------------
# `sse-fast listen` and `sse-fast publish`: the client's runners
# ---------------------------------------------------------------------------------------------------------------


async def run_listen(
    url: str, *, client_id: str, topics: str = "", token: str | None = None, as_json: bool = False
) -> int:
    """``sse-fast listen``: print every message (heartbeats excepted) as it comes, reconnecting forever.

    With ``as_json`` each message is one JSON object per line on stdout; state changes go to stderr. Returns the
    exit code: 0 when the server said stop (204), 1 when it refused the credentials.
    """
    topic_list = [t.strip() for t in topics.split(",") if t.strip()]
    client = Client(url, client_id=client_id, topics=topic_list, token=token, max_reconnect_attempts=None)

    def show_state(old: State, new: State) -> None:
        print(f"sse-fast: {old} -> {new}", file=sys.stderr, flush=True)

    client.on_state_change(show_state)
    try:
        async with client:
            async for message in client.messages(system=True):
                print(_render(message, as_json), flush=True)
    except AuthError as err:
        print(f"sse-fast: refused ({err.status} {err.code}): {err}", file=sys.stderr)
        return 1
    return 0


def _render(message: Envelope, as_json: bool) -> str:
    if as_json:
        return _json.encode(message).decode()
    route = f" -> {message.target}" if message.target else f" #{message.topic}" if message.topic else ""
    payload = message.payload if isinstance(message.payload, str) else _json.encode(message.payload).decode()
    return f"[{message.type}] {message.source or '?'}{route}: {payload}"


async def run_publish(
    url: str,
    data: str,
    *,
    target: str | None = None,
    topic: str | None = None,
    broadcast: bool = False,
    type: str | None = None,
    priority: int = 1,
    token: str | None = None,
    api_key: str | None = None,
    client_id: str | None = None,
) -> int:
    """``sse-fast publish``: send one message and print the server's answer as JSON; returns the exit code.

    ``data`` is sent as JSON when it parses as JSON (type ``json``), else as a string (type ``text``). Without
    ``target`` and ``topic`` the message is a broadcast (``broadcast`` only makes that explicit).
    """
    try:
        payload: Any = msgspec.json.decode(data)
        default_type = "json"
    except msgspec.DecodeError:
        payload, default_type = data, "text"
    headers = {"X-API-Key": api_key} if api_key else None
    try:
        envelope = Envelope(type=type or default_type, payload=payload, target=target, topic=topic, priority=priority)
        async with Client(url, client_id=client_id or "", token=token, headers=headers, auto_connect=False) as client:
            answer = await client.send(envelope)
    except (ServerError, AuthError) as err:
        print(f"sse-fast: {err.status} {err.code}: {err}", file=sys.stderr)
        return 1
    except (ConnectionLostError, QueueFullError, ValueError) as err:
        print(f"sse-fast: {err}", file=sys.stderr)
        return 1
    print(_json.encode(answer).decode(), flush=True)
    return 0


def _listen(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(
            run_listen(args.url, client_id=args.client_id, topics=args.topics, token=args.token, as_json=args.json)
        )
    except KeyboardInterrupt:  # Ctrl-C is how one stops listening
        return 0


def _publish(args: argparse.Namespace) -> int:
    return asyncio.run(
        run_publish(
            args.url,
            args.data,
            target=args.target,
            topic=args.topic,
            broadcast=args.broadcast,
            type=args.type,
            priority=args.priority,
            token=args.token,
            api_key=args.api_key,
            client_id=args.client_id,
        )
    )


def _parser() -> argparse.ArgumentParser:
    from sse_fast import __version__

    parser = argparse.ArgumentParser(prog="sse-fast", description="A fast, reliable SSE notification server.")
    parser.add_argument("--version", action="version", version=f"sse-fast {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("SSE_FAST_LOG_LEVEL", "info"))
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server (granian, sized for long-lived streams)")
    serve.add_argument("--host", help="address to bind (SSE_FAST_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (SSE_FAST_PORT, default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (SSE_FAST_WORKERS; >1 needs Redis)")
    serve.add_argument("--interface", choices=["rsgi", "asgi"], help="granian interface (default rsgi)")
    serve.add_argument("--broker", help="memory (default) or a redis:// URL (SSE_FAST_BROKER)")
    serve.set_defaults(func=_serve)

    listen = sub.add_parser("listen", help="print the events of a stream, reconnecting")
    listen.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:8000")
    listen.add_argument("--client-id", required=True)
    listen.add_argument("--topics", default="", help="comma-separated topic patterns")
    listen.add_argument("--token", help="a JWT (sent as Authorization: Bearer)")
    listen.add_argument("--json", action="store_true", help="one JSON object per line")
    listen.set_defaults(func=_listen)

    publish = sub.add_parser("publish", help="publish one message")
    publish.add_argument("url", help="the server's base URL")
    publish.add_argument("data", help="the payload: JSON if it parses as JSON, else a string")
    route = publish.add_mutually_exclusive_group()
    route.add_argument("--target", help="a clientId")
    route.add_argument("--topic", help="a topic")
    route.add_argument("--broadcast", action="store_true", help="everyone (the default)")
    publish.add_argument("--type", default=None, help="message type (default: json for JSON data, else text)")
    publish.add_argument("--priority", type=int, default=1, choices=[0, 1, 2, 3])
    publish.add_argument("--token", help="a JWT")
    publish.add_argument("--api-key", help="an admin API key (X-API-Key)")
    publish.add_argument("--client-id", help="X-Client-Id (auth=none)")
    publish.set_defaults(func=_publish)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``sse-fast`` entry point."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
