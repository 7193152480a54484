"""The ``sse-fast`` command line: ``serve``, and ``listen`` and ``publish`` on the client."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import logging
import logging.config
import os
import re
import resource
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec

from sse_fast import logs
from sse_fast._core import validate_topic
from sse_fast.client import Client, State
from sse_fast.errors import AuthError, ErrorBody, TopicError
from sse_fast.models import CLIENT_ID_PATTERN, CLIENT_ID_RULE, Envelope

__all__ = [
    "LOG_LEVELS",
    "ExitCode",
    "main",
    "raise_open_file_limit",
    "run_listen",
    "run_publish",
    "runtime_options",
    "serve_options",
    "serves_http2",
]

log = logging.getLogger("sse_fast.cli")

_json = msgspec.json.Encoder()


class ExitCode(enum.IntEnum):
    """The exit codes of ``sse-fast``, one per kind of failure, so that scripts can tell them apart."""

    OK = 0
    """Done (``listen``: stopped with Ctrl-C or by the server's 204)."""
    USAGE = 2
    """Bad arguments or settings: nothing was sent."""
    NETWORK = 3
    """The server could not be reached, or did not answer within ``--timeout``."""
    AUTH = 4
    """The server refused the credentials (401, 403)."""
    REFUSED = 5
    """The server refused the request (any other error answer: 400, 413, 422, 429, 503...)."""
    BROKER = 6
    """``serve``: the Redis at ``SSE_FAST_BROKER`` cannot be used (a Redis Cluster node)."""


_EXIT_DOC = {
    ExitCode.OK: "success",
    ExitCode.USAGE: "usage: bad arguments or settings",
    ExitCode.NETWORK: "network: server unreachable or no answer within --timeout",
    ExitCode.AUTH: "auth: credentials refused (401, 403)",
    ExitCode.REFUSED: "refused: any other error answer (400, 422, 429, 503...)",
    ExitCode.BROKER: "broker: serve's Redis cannot be used (a Redis Cluster node)",
}

LOG_LEVELS: Final = ("critical", "error", "warning", "info", "debug")
"""The values of ``--log-level`` (and of ``SSE_FAST_LOG_LEVEL``)."""

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


# The default of SSE_FAST_RUNTIME_THREADS (0). A granian worker runs its Python on its main thread and its socket I/O
# on its runtime threads, which carry most of its CPU: 70-85% of the CPU per delivery at N = 10,000 (bench/fanout,
# the "main thread" rows of issue 17's runs). With cores to spare per worker, more runtime threads spread the writes
# over them. 2 is as far as it was measured (a 2-core machine): raise it after measuring on more cores.
RUNTIME_THREADS_MAX: Final = 2
"""The most runtime threads ``sse-fast serve`` gives a worker when ``SSE_FAST_RUNTIME_THREADS`` is 0."""


def runtime_options(
    cpus: int, workers: int, *, interface: str = "rsgi", http: str = "auto", threads: int = 0, mode: str = "auto"
) -> dict[str, Any]:
    """granian's ``runtime_threads`` and ``runtime_mode`` for ``workers`` on ``cpus`` usable cores.

    Given ``threads`` and ``mode`` win. ``threads`` 0 means "chosen for the machine": the cores each worker has, at
    least 1 and at most :data:`RUNTIME_THREADS_MAX`. ``mode`` ``auto`` is ``mt`` (one runtime over the threads)
    with more than one thread; with one, granian's own choice: ``st`` for RSGI unless only HTTP/2 is served.
    """
    if threads == 0:
        threads = max(1, min(RUNTIME_THREADS_MAX, cpus // max(1, workers)))
    if mode == "auto":
        mode = "st" if threads == 1 and interface == "rsgi" and http != "2" else "mt"
    return {"runtime_threads": threads, "runtime_mode": mode}


def _serve(args: argparse.Namespace) -> int:
    from sse_fast.settings import Settings, SettingsError

    overrides = {
        "SSE_FAST_HOST": args.host,
        "SSE_FAST_PORT": None if args.port is None else str(args.port),
        "SSE_FAST_WORKERS": None if args.workers is None else str(args.workers),
        "SSE_FAST_RUNTIME_THREADS": None if args.runtime_threads is None else str(args.runtime_threads),
        "SSE_FAST_RUNTIME_MODE": args.runtime_mode,
        "SSE_FAST_INTERFACE": args.interface,
        "SSE_FAST_BROKER": args.broker,
        "SSE_FAST_LOG_LEVEL": args.log_level,
        "SSE_FAST_SSL_CERTFILE": args.ssl_certfile,
        "SSE_FAST_SSL_KEYFILE": args.ssl_keyfile,
        "SSE_FAST_HTTP": args.http,
        "SSE_FAST_LOG_FORMAT": args.log_format,
        "SSE_FAST_ACCESS_LOG": "true" if args.access_log else None,
    }
    interface_given = args.interface is not None or "SSE_FAST_INTERFACE" in os.environ
    # Workers are separate processes that read their settings from the environment: put the CLI's there.
    os.environ.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = Settings.from_env()
    except SettingsError as err:
        print(f"sse-fast: {err}", file=sys.stderr)
        return ExitCode.USAGE
    log_config = logs.dictconfig(settings.log_level, settings.log_format)
    logging.config.dictConfig(log_config)
    refusal = _broker_refusal(settings.broker)
    if refusal is not None:
        print(f"sse-fast: {refusal}", file=sys.stderr)
        return ExitCode.BROKER
    with _metrics_dir(settings):
        return _run_granian(settings, interface_given, log_config)


def _broker_refusal(url: str) -> str | None:
    """Why the Redis at ``url`` cannot serve as the broker (a Redis Cluster node), or None. An unreachable Redis is
    not refused here: the workers wait for it at start (10 s) and say so themselves."""
    if url == "memory":
        return None
    import redis

    from sse_fast.broker.redis.connection import ClusterRefused, refuse_cluster, sync_client

    try:
        with sync_client(url, socket_timeout=3, socket_connect_timeout=2) as client:
            refuse_cluster(client)
    except ClusterRefused as err:
        return str(err)
    except redis.RedisError:
        return None
    return None


@contextlib.contextmanager
def _metrics_dir(settings: Any) -> Iterator[None]:
    """Several workers share their metrics through a directory: a fresh private one for this server, removed when it
    stops (unless ``SSE_FAST_METRICS_DIR`` names one)."""
    if settings.workers <= 1 or settings.metrics_dir:
        yield
        return
    from sse_fast.server.metrics import make_shared_dir

    path = make_shared_dir()
    os.environ["SSE_FAST_METRICS_DIR"] = str(path)
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _run_granian(settings: Any, interface_given: bool, log_config: dict[str, Any]) -> int:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops, RuntimeModes
    from granian.http import HTTP1Settings

    interface = settings.interface
    if not interface_given and serves_http2(settings):
        interface = "asgi"  # per-stream backpressure under HTTP/2 (see docs/architecture.md, "TLS and HTTP/2")
    nofile = raise_open_file_limit()
    sizing = serve_options(nofile, settings.workers)
    runtime = runtime_options(
        len(os.sched_getaffinity(0)),
        settings.workers,
        interface=interface,
        http=settings.http,
        threads=settings.runtime_threads,
        mode=settings.runtime_mode,
    )
    log.info(
        "serving on %s://%s:%d (HTTP %s), %d worker(s) with %d runtime thread(s) (%s), %s; open-file limit %d: up to"
        " %d streams per worker",
        "https" if settings.ssl_certfile else "http",
        settings.host,
        settings.port,
        settings.http,
        settings.workers,
        runtime["runtime_threads"],
        runtime["runtime_mode"],
        interface,
        nofile,
        sizing["backpressure"],
    )
    tls: dict[str, Any] = {}
    if settings.ssl_certfile and settings.ssl_keyfile:
        tls = {"ssl_cert": Path(settings.ssl_certfile), "ssl_key": Path(settings.ssl_keyfile)}
    server = Granian(
        "sse_fast.app:app",
        address=settings.host,
        port=settings.port,
        interface=Interfaces(interface),
        http=HTTPModes(settings.http),
        **tls,
        workers=settings.workers,
        runtime_threads=runtime["runtime_threads"],
        runtime_mode=RuntimeModes(runtime["runtime_mode"]),
        loop=Loops.uvloop,
        backlog=sizing["backlog"],
        backpressure=sizing["backpressure"],
        # Small per-connection read buffers: SSE requests are tiny, and each idle stream keeps its buffer.
        http1_settings=HTTP1Settings(max_buffer_size=8192),
        log_level=_granian_log_level(settings.log_level),
        log_dictconfig=log_config,
        workers_kill_timeout=int(settings.shutdown_grace) + 5,
    )
    server.serve()
    return ExitCode.OK


def serves_http2(settings: Any) -> bool:
    """Whether clients may speak HTTP/2 to this server: ``--http 2``, or ``auto`` over TLS (ALPN offers ``h2``)."""
    return bool(settings.http == "2" or (settings.http == "auto" and settings.ssl_certfile))


def _granian_log_level(level: str) -> Any:
    from granian.log import LogLevels

    return LogLevels(level.lower())


# ---------------------------------------------------------------------------------------------------------------
# `sse-fast listen` and `sse-fast publish`: the client's runners
# ---------------------------------------------------------------------------------------------------------------


async def run_listen(
    url: str,
    *,
    client_id: str,
    topics: str = "",
    token: str | None = None,
    as_json: bool = False,
    ack: bool = False,
) -> int:
    """``sse-fast listen``: print every message (heartbeats excepted) as it comes, reconnecting forever.

    With ``as_json`` each message is one JSON object per line on stdout; state changes go to stderr. ``requireAck``
    messages are acknowledged only with ``ack``: a listener watching another client's stream must not tell their
    senders that the client got them. Returns the exit code: :attr:`ExitCode.OK` when the server said stop (204),
    :attr:`ExitCode.AUTH` when it refused the credentials.
    """
    topic_list = [t.strip() for t in topics.split(",") if t.strip()]
    client = Client(url, client_id=client_id, topics=topic_list, token=token, max_reconnect_attempts=None, auto_ack=ack)

    def show_state(old: State, new: State) -> None:
        print(f"sse-fast: {old} -> {new}", file=sys.stderr, flush=True)

    client.on_state_change(show_state)
    try:
        async with client:
            async for message in client.messages(system=True):
                print(_render(message, as_json), flush=True)
    except AuthError as err:
        print(f"sse-fast: refused ({err.status} {err.code}): {err}", file=sys.stderr)
        return ExitCode.AUTH
    return ExitCode.OK


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
    time_limit: float = 10.0,
) -> int:
    """``sse-fast publish``: send one message and print the server's answer as JSON; returns the exit code.

    ``data`` is sent as JSON when it parses as JSON (type ``json``), else as a string (type ``text``). Without
    ``target`` and ``topic`` the message is a broadcast (``broadcast`` only makes that explicit).

    One request, no retry: :class:`~sse_fast.client.Client` queues a send and retries it for up to a minute, which
    a long-lived program wants and a command in a script does not. An unreachable server fails at once, and the
    whole request is bounded by ``time_limit`` seconds (:attr:`ExitCode.NETWORK` either way).
    """
    try:
        payload: Any = msgspec.json.decode(data)
        default_type = "json"
    except msgspec.DecodeError:
        payload, default_type = data, "text"
    envelope = Envelope(type=type or default_type, payload=payload, target=target, topic=topic, priority=priority)
    path = "/api/commands" if envelope.type == "command" and target is None else "/api/messages"
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    elif client_id:
        headers["X-Client-Id"] = client_id
    if api_key:
        headers["X-API-Key"] = api_key
    try:
        async with asyncio.timeout(time_limit), httpx.AsyncClient(timeout=time_limit) as http:
            response = await http.post(f"{url.rstrip('/')}{path}", content=_json.encode(envelope), headers=headers)
    except (TimeoutError, httpx.TimeoutException):
        print(f"sse-fast: no answer from {url} within {time_limit:g} s", file=sys.stderr)
        return ExitCode.NETWORK
    except httpx.HTTPError as err:
        print(f"sse-fast: cannot reach {url}: {str(err) or err.__class__.__name__}", file=sys.stderr)
        return ExitCode.NETWORK
    if response.is_success:
        print(response.text.strip(), flush=True)
        return ExitCode.OK
    print(f"sse-fast: {_describe_error(response)}", file=sys.stderr)
    return ExitCode.AUTH if response.status_code in (401, 403) else ExitCode.REFUSED


def _describe_error(response: httpx.Response) -> str:
    """``401 unauthorized: <message>`` from the server's error body (or its first line, if it sent no JSON)."""
    try:
        body = msgspec.json.decode(response.content, type=ErrorBody)
    except (msgspec.DecodeError, msgspec.ValidationError):
        text = response.text.strip().splitlines()
        return f"{response.status_code} {response.reason_phrase}" + (f": {text[0][:200]}" if text else "")
    return f"{response.status_code} {body.code}: {body.error}"


def _listen(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(
            run_listen(
                args.url,
                client_id=args.client_id,
                topics=args.topics,
                token=args.token,
                as_json=args.json,
                ack=args.ack,
            )
        )
    except KeyboardInterrupt:  # Ctrl-C is how one stops listening
        return ExitCode.OK


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
            time_limit=args.timeout,
        )
    )


# ---------------------------------------------------------------------------------------------------------------
# Arguments: checked here, with messages in words, so that a mistake is a usage error and not a server's refusal
# ---------------------------------------------------------------------------------------------------------------

_CLIENT_ID = re.compile(CLIENT_ID_PATTERN)


def _log_level(value: str) -> str:
    level = value.strip().lower()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{value!r} is not a log level (one of: {', '.join(LOG_LEVELS)})")
    return level


def _client_id(value: str) -> str:
    if not _CLIENT_ID.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a clientId: a clientId is {CLIENT_ID_RULE}")
    return value


def _topics(value: str) -> str:
    for pattern in (t.strip() for t in value.split(",")):
        try:
            if pattern:
                validate_topic(pattern, pattern=True)
        except TopicError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return value


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds above 0")
    return seconds


def _epilog() -> str:
    codes = "\n".join(f"  {int(code)}  {text}" for code, text in _EXIT_DOC.items())
    return f"exit codes:\n{codes}"


def _parser() -> argparse.ArgumentParser:
    from sse_fast import __version__

    # --log-level is accepted before and after the command: each subparser has it too, with no default of its own
    # (SUPPRESS), so that one given before the command is not overwritten by the subparser's default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        type=_log_level,
        default=argparse.SUPPRESS,
        metavar="LEVEL",
        help=f"one of {', '.join(LOG_LEVELS)} (SSE_FAST_LOG_LEVEL, default info)",
    )
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="sse-fast",
        description="A fast, reliable SSE notification server.",
        epilog=_epilog(),
        formatter_class=formatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"sse-fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, epilog=_epilog(), formatter_class=formatter, parents=[common])

    serve = command("serve", "run the server (granian, sized for long-lived streams)")
    serve.add_argument("--host", help="address to bind (SSE_FAST_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (SSE_FAST_PORT, default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (SSE_FAST_WORKERS; >1 needs Redis)")
    serve.add_argument(
        "--runtime-threads",
        type=int,
        metavar="N",
        help="granian runtime threads per worker, doing its socket I/O (SSE_FAST_RUNTIME_THREADS; default 0: "
        f"the cores per worker, 1 to {RUNTIME_THREADS_MAX})",
    )
    serve.add_argument(
        "--runtime-mode",
        choices=["auto", "st", "mt"],
        help="granian runtime mode (SSE_FAST_RUNTIME_MODE; default auto: mt with several runtime threads, else st)",
    )
    serve.add_argument(
        "--interface",
        choices=["rsgi", "asgi"],
        help="granian interface (SSE_FAST_INTERFACE; default rsgi, or asgi when HTTP/2 is served: it has per-stream "
        "backpressure)",
    )
    serve.add_argument(
        "--ssl-certfile", metavar="PEM", help="certificate (chain) file: serve HTTPS (SSE_FAST_SSL_CERTFILE)"
    )
    serve.add_argument("--ssl-keyfile", metavar="PEM", help="its private key, PKCS#8 (SSE_FAST_SSL_KEYFILE)")
    serve.add_argument(
        "--http",
        choices=["auto", "1", "2"],
        help="HTTP versions (SSE_FAST_HTTP, default auto: HTTP/1.1, and HTTP/2 by ALPN over TLS)",
    )
    serve.add_argument("--broker", help="memory (default) or a redis:// URL (SSE_FAST_BROKER)")
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="log lines of granian and sse-fast, text or one JSON object per line (SSE_FAST_LOG_FORMAT)",
    )
    serve.add_argument(
        "--access-log",
        action="store_true",
        default=None,
        help="log every request: method, path, status, duration, clientId; tokens redacted (SSE_FAST_ACCESS_LOG)",
    )
    serve.set_defaults(func=_serve)

    listen = command("listen", "print the events of a stream, reconnecting")
    listen.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:8000")
    listen.add_argument("--client-id", required=True, type=_client_id, help="the client whose stream to open")
    listen.add_argument("--topics", default="", type=_topics, help="comma-separated topic patterns")
    listen.add_argument("--token", help="a JWT (sent as Authorization: Bearer)")
    listen.add_argument("--json", action="store_true", help="one JSON object per line")
    listen.add_argument(
        "--ack",
        action="store_true",
        help="acknowledge requireAck messages (by default they are shown, not acknowledged: the client's own "
        "program still gets them)",
    )
    listen.set_defaults(func=_listen)

    publish = command("publish", "publish one message (one request, no retry)")
    publish.add_argument("url", help="the server's base URL")
    publish.add_argument("data", help="the payload: JSON if it parses as JSON, else a string")
    route = publish.add_mutually_exclusive_group()
    route.add_argument("--target", type=_client_id, help="a clientId")
    route.add_argument("--topic", help="a topic")
    route.add_argument("--broadcast", action="store_true", help="everyone (the default)")
    publish.add_argument("--type", default=None, help="message type (default: json for JSON data, else text)")
    publish.add_argument("--priority", type=int, default=1, choices=[0, 1, 2, 3])
    publish.add_argument("--token", help="a JWT")
    publish.add_argument("--api-key", help="an admin API key (X-API-Key)")
    publish.add_argument("--client-id", type=_client_id, help="X-Client-Id (auth=none)")
    publish.add_argument(
        "--timeout", type=_seconds, default=10.0, metavar="SECONDS", help="give up after this long (default 10)"
    )
    publish.set_defaults(func=_publish)

    log_config = command("log-config", "print the logging config of sse-fast serve, for granian --log-config")
    log_config.add_argument(
        "--log-format", choices=["text", "json"], default=None, help="text or json (SSE_FAST_LOG_FORMAT, default text)"
    )
    log_config.set_defaults(func=_log_config)
    return parser


def _log_config(args: argparse.Namespace) -> int:
    fmt = args.log_format or os.environ.get("SSE_FAST_LOG_FORMAT", "text")
    for known in logs.LOG_FORMATS:
        if fmt == known:
            print(_json.encode(logs.dictconfig(args.log_level, known)).decode())
            return ExitCode.OK
    print(f"sse-fast: SSE_FAST_LOG_FORMAT={fmt!r}: one of {', '.join(logs.LOG_FORMATS)}", file=sys.stderr)
    return ExitCode.USAGE


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs one INFO line per request: noise for a listener's reconnects, useful only when debugging.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``sse-fast`` entry point; returns an :class:`ExitCode`."""
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "log_level", None) is None:
        try:
            args.log_level = _log_level(os.environ.get("SSE_FAST_LOG_LEVEL", "info"))
        except argparse.ArgumentTypeError as err:
            parser.error(f"SSE_FAST_LOG_LEVEL: {err}")
    _configure_logging(args.log_level)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
