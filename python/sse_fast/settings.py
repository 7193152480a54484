"""The server's settings: one frozen :class:`Settings`, read from ``SSE_FAST_*`` environment variables.

Every field is one variable, its name upper-cased behind ``SSE_FAST_`` (``keepalive`` is ``SSE_FAST_KEEPALIVE``).
Its type, default, bounds, unit and documentation live in its annotation, and everything else (parsing, the
error messages, :func:`describe`, :func:`as_table`) is derived from there, so a setting is added in one place.

:meth:`Settings.from_env` validates everything at once and raises one :class:`SettingsError` that lists every
problem (``SSE_FAST_KEEPALIVE='abc': expected a number of seconds > 0``), including ``SSE_FAST_*`` variables that
name no setting: a typo must not vanish. Variables starting with ``SSE_FAST_TEST_`` are reserved for the test
suite and tooling, and ignored.

An empty variable counts as unset (``SSE_FAST_JWT_SECRET=`` in a compose file means "no secret").
"""

from __future__ import annotations

import difflib
import math
import os
import re
import types
import typing
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import msgspec

from sse_fast.errors import SseFastError

__all__ = [
    "ENV_PREFIX",
    "SENTINEL_SCHEME",
    "TOOLING_PREFIX",
    "SentinelUrl",
    "SettingDoc",
    "Settings",
    "SettingsError",
    "as_table",
    "describe",
    "public_key_algorithm",
    "sentinel_url",
]

ENV_PREFIX = "SSE_FAST_"
"""The prefix of every setting's environment variable."""

TOOLING_PREFIX = "SSE_FAST_TEST_"
"""Variables with this prefix belong to the test suite and tooling; :meth:`Settings.from_env` ignores them."""

_MIB = 1024 * 1024
_SECRETS = frozenset({"jwt_secret", "api_keys"})
_MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key is at least 256 bits; PyJWT warns below it
_MIN_API_KEY = 16
_ORIGIN = re.compile(r"^https?://[^/\s?#]+$")
_BROKER_SCHEMES = ("redis://", "rediss://", "unix://")
SENTINEL_SCHEME = "redis+sentinel://"
"""The scheme of a broker found through Redis Sentinel (:func:`sentinel_url`)."""
_BOOLS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _doc(description: str, *, unit: str = "", gt: float | None = None, ge: float | None = None) -> msgspec.Meta:
    extra = {"unit": unit} if unit else None
    if gt is not None:
        return msgspec.Meta(description=description, gt=gt, extra=extra)
    return msgspec.Meta(description=description, ge=ge, extra=extra)


Seconds = float
Count = int


class SettingsError(SseFastError, ValueError):
    """Invalid settings; ``problems`` holds one line per problem, and the message lists them all."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings:\n  " + "\n  ".join(problems))


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every setting of the server (PROTOCOL.md section 8 and the serving options), validated on construction.

    Build it with :meth:`from_env`; constructing it directly validates the same rules (errors name the fields).
    """

    # Serving
    host: Annotated[str, _doc("Interface to bind.")] = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535, description="TCP port to bind.")] = 8000
    workers: Annotated[Count, _doc("Worker processes; more than one needs the Redis broker.", gt=0)] = 1
    interface: Annotated[Literal["rsgi", "asgi"], _doc("granian interface.")] = "rsgi"
    log_level: Annotated[Literal["critical", "error", "warning", "info", "debug"], _doc("Log level.")] = "info"
    log_format: Annotated[
        Literal["text", "json"],
        _doc("Log line format of granian's lines and sse-fast's: `text`, or `json` (one object per line)."),
    ] = "text"
    access_log: Annotated[
        bool,
        _doc("Log every request (method, path, status, duration, clientId) with credentials redacted."),
    ] = False
    metrics_dir: Annotated[
        str | None,
        _doc(
            "Directory where several workers leave their metrics for each other (default: a private one per "
            "server under the temp directory when `SSE_FAST_WORKERS` > 1)."
        ),
    ] = None
    ssl_certfile: Annotated[
        str | None, _doc("PEM certificate (chain) file: serve HTTPS. Needs `SSE_FAST_SSL_KEYFILE`.")
    ] = None
    ssl_keyfile: Annotated[str | None, _doc("PEM private key file (PKCS#8) of `SSE_FAST_SSL_CERTFILE`.")] = None
    http: Annotated[
        Literal["auto", "1", "2"],
        _doc("HTTP versions: `auto` is HTTP/1.1 and HTTP/2 (negotiated by ALPN over TLS), `1` or `2` only one."),
    ] = "auto"
    runtime_threads: Annotated[
        Count,
        _doc(
            "granian runtime threads per worker: the Rust threads that do its socket reads and writes (its Python "
            "runs on one other thread). 0: chosen by `sse-fast serve` for the cores it may use, the cores per worker "
            "from 1 to 2 (`cli.runtime_options`); under plain granian, its `--runtime-threads`.",
            ge=0,
        ),
    ] = 0
    runtime_mode: Annotated[
        Literal["auto", "st", "mt"],
        _doc(
            "granian runtime mode: `st` a single-threaded runtime per runtime thread, `mt` one runtime over all of "
            "them; `auto`: `mt` with several runtime threads, else granian's choice (`st` for RSGI)."
        ),
    ] = "auto"

    # Identity (PROTOCOL.md section 6)
    auth: Annotated[Literal["none", "jwt"], _doc("`none` trusts the caller's clientId; `jwt` verifies tokens.")] = (
        "none"
    )
    jwt_secret: Annotated[str | None, _doc("HS256 secret (at least 32 bytes).")] = None
    jwt_public_key: Annotated[str | None, _doc("RS256/ES256 public key: PEM text or the path of a PEM file.")] = None
    jwt_jwks_file: Annotated[str | None, _doc("Path of a JWKS (JSON Web Key Set) file with the verification keys.")] = (
        None
    )
    jwt_audience: Annotated[str | None, _doc("Required `aud` claim, if set.")] = None
    jwt_issuer: Annotated[str | None, _doc("Required `iss` claim, if set.")] = None
    jwt_leeway: Annotated[Seconds, _doc("Clock skew allowed when checking `exp` and `nbf`.", unit="s", ge=0)] = 5.0
    jwt_require_exp: Annotated[
        bool, _doc("Refuse tokens without `exp` (401 `missing_exp`), so that every stream ends when its token does.")
    ] = False
    api_keys: Annotated[
        tuple[str, ...], _doc("Comma-separated keys for `X-API-Key` (admin publishers), 16+ characters each.")
    ] = ()
    cors_origins: Annotated[
        tuple[str, ...],
        _doc(
            "Comma-separated allowed origins (`https://host[:port]`), reflected with credentials; or `*`: a literal "
            "`*` without credentials."
        ),
    ] = ()
    ticket_ttl: Annotated[
        Seconds,
        msgspec.Meta(
            gt=0,
            le=30,
            description="How long a stream ticket (`POST /api/tickets`) is valid (at most 30 s).",
            extra={"unit": "s"},
        ),
    ] = 30.0
    tickets_max: Annotated[
        Count, _doc("Stream tickets waiting to be used (per worker; with Redis, cluster-wide); past it 429.", gt=0)
    ] = 10_000

    # The stream (section 2)
    keepalive: Annotated[Seconds, _doc("Interval of the `: keepalive` comment.", unit="s", gt=0)] = 15.0
    heartbeat: Annotated[Seconds, _doc("Interval of the `heartbeat` frame.", unit="s", gt=0)] = 30.0
    retry: Annotated[int, _doc("The `retry:` sent when a stream opens.", unit="ms", gt=0)] = 3000
    retry_spread: Annotated[
        Seconds, _doc("Window over which the shutdown `retry:` is spread at random.", unit="s", ge=0)
    ] = 30.0
    shutdown_grace: Annotated[Seconds, _doc("Time given to streams to close on SIGTERM.", unit="s", ge=0)] = 10.0
    max_body: Annotated[int, _doc("Largest request body; larger is 413.", unit="bytes", gt=0)] = _MIB
    max_connections: Annotated[Count, _doc("Streams per worker; past it 503.", gt=0)] = 100_000
    max_connections_per_client: Annotated[
        Count, _doc("Streams per clientId; past it the oldest is closed (`replaced`).", gt=0)
    ] = 8
    max_topic_segments: Annotated[
        Count, _doc("Segments in one topic pattern of a stream; more is 400 `topic_too_deep`.", gt=0)
    ] = 16
    max_topics_bytes: Annotated[
        int, _doc("Length of a stream's topic patterns together; more is 400 `topics_too_long`.", unit="bytes", gt=0)
    ] = 1024
    queue_frames: Annotated[Count, _doc("Outbound queue bound per connection, in frames.", gt=0)] = 1024
    queue_bytes: Annotated[
        int,
        _doc("Outbound queue bound per connection (and what granian may hold for it under RSGI).", unit="bytes", gt=0),
    ] = _MIB

    # Replay log, mailboxes, idempotency, acks (sections 1, 2, 5)
    replay_size: Annotated[Count, _doc("Frames kept for resume.", gt=0)] = 10_000
    replay_bytes: Annotated[int, _doc("Bytes kept for resume (bounds the log's memory).", unit="bytes", gt=0)] = (
        64 * _MIB
    )
    replay_ttl: Annotated[Seconds, _doc("Frames older than this leave the replay log.", unit="s", gt=0)] = 3600.0
    mailbox_size: Annotated[Count, _doc("Offline messages kept per client (oldest dropped).", gt=0)] = 100
    mailbox_ttl: Annotated[Seconds, _doc("How long an offline message waits.", unit="s", gt=0)] = 3600.0
    mailbox_clients: Annotated[Count, _doc("Clients that may hold a mailbox at once.", gt=0)] = 100_000
    dedupe_window: Annotated[Seconds, _doc("How long a client-set message id is remembered.", unit="s", gt=0)] = 300.0
    dedupe_size: Annotated[Count, _doc("Message ids remembered for idempotency.", gt=0)] = 100_000
    ack_timeout: Annotated[Seconds, _doc("Wait for an ack before redelivering.", unit="s", gt=0)] = 30.0
    ack_retries: Annotated[Count, _doc("Redeliveries of an unacked message before it expires.", ge=0)] = 5
    max_pending_acks: Annotated[Count, _doc("requireAck messages tracked at once.", gt=0)] = 100_000
    ack_status_ttl: Annotated[
        Seconds,
        _doc(
            "How long an acked or expired requireAck message's status stays queryable (`GET /api/messages/{id}`), "
            "past its last redelivery.",
            unit="s",
            gt=0,
        ),
    ] = 3600.0

    # Per-client publish limits (section 3): a token bucket per caller and worker; API keys and JWT admins are exempt
    publish_rate: Annotated[
        float, _doc("Messages per second one client may publish, sustained (0: no limit); past it 429.", ge=0)
    ] = 100.0
    publish_burst: Annotated[Count, _doc("Messages one client may publish at once above its rate.", gt=0)] = 200
    publish_bytes_rate: Annotated[
        int, _doc("Bytes per second one client may publish, sustained (0: no limit); past it 429.", unit="bytes", ge=0)
    ] = 256 * 1024
    publish_burst_bytes: Annotated[
        int, _doc("Bytes one client may publish at once above its rate.", unit="bytes", gt=0)
    ] = 2 * _MIB
    publish_limit_clients: Annotated[
        Count, _doc("Clients whose publish rate a worker tracks at once (the least recently active forgotten).", gt=0)
    ] = 100_000
    presence_rate: Annotated[
        float,
        _doc(
            "`GET /api/presence` requests per second one client may make, sustained (0: no limit); past it 429.", ge=0
        ),
    ] = 2.0
    presence_burst: Annotated[Count, _doc("`GET /api/presence` requests one client may make at once.", gt=0)] = 10

    # Scheduler (section 4)
    scheduler_concurrency: Annotated[Count, _doc("Tasks running at once per worker.", gt=0)] = 5
    scheduler_client_concurrency: Annotated[Count, _doc("Tasks running at once per client.", gt=0)] = 2
    scheduler_queue_size: Annotated[Count, _doc("Tasks waiting to run; past it a submit is refused.", gt=0)] = 1000
    scheduler_retention: Annotated[Seconds, _doc("How long a finished task record is kept.", unit="s", gt=0)] = 3600.0
    scheduler_retention_count: Annotated[Count, _doc("Finished task records kept.", gt=0)] = 10_000
    scheduler_client_queue_share: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            le=1,
            description="Share of SSE_FAST_SCHEDULER_QUEUE_SIZE one client's waiting tasks may take (at least 1 "
            "task); past it 429 `client_queue_full`.",
        ),
    ] = 0.25
    scheduler_client_paused: Annotated[
        Count, _doc("Paused tasks per client; a pause past it is 429 `too_many_paused`.", gt=0)
    ] = 8
    scheduler_pause_timeout: Annotated[
        Seconds, _doc("How long a task may stay paused; then it is cancelled (`pause_timeout`).", unit="s", gt=0)
    ] = 600.0

    # The admin page (`/admin`)
    admin_recent_max: Annotated[
        Count, _doc("Messages `GET /api/admin/recent` answers at most (its `limit` is capped at this).", gt=0)
    ] = 200

    # Broker
    broker: Annotated[
        str,
        _doc(
            "`memory` (one worker), a `redis://`, `rediss://` or `unix://` URL, or "
            "`redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]` (the primary that Sentinel "
            "names, followed across failovers)."
        ),
    ] = "memory"
    redis_wait_replicas: Annotated[
        Count,
        _doc(
            "With Redis: replicas a publish waits for (`WAIT`) before it answers; `replicated: false` when they did "
            "not confirm in time. 0: no wait.",
            ge=0,
        ),
    ] = 0
    redis_wait_timeout: Annotated[
        Seconds, _doc("How long a publish waits for `SSE_FAST_REDIS_WAIT_REPLICAS` (at most 2 s).", unit="s", gt=0)
    ] = 0.5

    def __post_init__(self) -> None:
        problems = [f"{name}={_shown(name, getattr(self, name))}: {text}" for name, text in _check(self)]
        if problems:
            raise SettingsError(problems)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={_shown(name, getattr(self, name))}" for name in self.__struct_fields__)
        return f"Settings({shown})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``SSE_FAST_*`` from ``environ`` (default ``os.environ``); ``overrides`` (e.g. CLI flags) win.

        An override of ``None`` means "not given" and is skipped; a string override is parsed like the
        environment. Raises :class:`SettingsError` listing every problem at once, or ``TypeError`` for an
        override that names no setting.
        """
        environ = os.environ if environ is None else environ
        unknown = sorted(set(overrides) - set(cls.__struct_fields__))
        if unknown:
            raise TypeError(f"Settings.from_env() got unknown settings: {', '.join(unknown)}")
        values, labels, problems = _read_env(environ)
        for name, value in overrides.items():
            if value is not None:
                labels[name] = f"{name}={_shown(name, value)}"
                values[name] = _read_one(name, value, labels[name], problems)
        values["jwt_public_key"] = _resolve_public_key(values.get("jwt_public_key"), labels, problems)
        view = _Defaulted(values)
        for name, text in _check(view):
            label = labels.get(name) or f"{_env_name(name)} (default {_shown(name, getattr(view, name))})"
            problems.append(f"{label}: {text}")
        if problems:
            raise SettingsError(problems)
        return cls(**{name: value for name, value in values.items() if value is not None})


# ---------------------------------------------------------------------------------------------------------------
# Field introspection
# ---------------------------------------------------------------------------------------------------------------


class _Field(NamedTuple):
    name: str
    base: type  # float, int, str, or tuple (of str); a Literal is str with choices
    choices: tuple[str, ...]
    optional: bool
    meta: msgspec.Meta


def _fields() -> Iterator[_Field]:
    hints = typing.get_type_hints(Settings, include_extras=True)
    for name in Settings.__struct_fields__:
        annotated = hints[name]
        base, meta = typing.get_args(annotated)[:2]
        optional = isinstance(base, types.UnionType)
        if optional:
            base = next(arg for arg in typing.get_args(base) if arg is not type(None))
        choices: tuple[str, ...] = ()
        if typing.get_origin(base) is Literal:
            base, choices = str, typing.get_args(base)
        elif typing.get_origin(base) is tuple:
            base = tuple
        yield _Field(name, base, choices, optional, meta)


_FIELDS: dict[str, _Field] = {}


def _field(name: str) -> _Field:
    if not _FIELDS:
        _FIELDS.update((f.name, f) for f in _fields())
    return _FIELDS[name]


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _unit(meta: msgspec.Meta) -> str:
    return str((meta.extra or {}).get("unit", ""))


# ---------------------------------------------------------------------------------------------------------------
# Parsing: one value at a time; ValueError carries "expected ..."
# ---------------------------------------------------------------------------------------------------------------


def _expected(name: str) -> str:
    f = _field(name)
    if f.choices:
        return "expected one of: " + ", ".join(f.choices)
    if f.base is tuple:
        return "expected a comma-separated list"
    if f.base is bool:
        return "expected true or false"
    if f.base is str:
        return "expected a non-empty string"
    unit = _unit(f.meta)
    what = {
        (float, "s"): "a number of seconds",
        (int, "ms"): "a whole number of milliseconds",
        (int, "bytes"): "a whole number of bytes",
    }.get((f.base, unit), "a whole number" if f.base is int else "a number")
    return f"expected {what}{_bounds(f.meta)}"


def _bounds(meta: msgspec.Meta) -> str:
    if meta.gt is not None:
        return f" > {meta.gt:g}"
    if meta.ge is not None and meta.le is not None:
        return f" from {meta.ge:g} to {meta.le:g}"
    if meta.ge is not None:
        return f" >= {meta.ge:g}"
    return ""


def _parse(name: str, raw: str) -> Any:
    """One environment string to the field's type, or ValueError("expected ...")."""
    f = _field(name)
    text = raw.strip()
    if f.base is tuple:
        return tuple(item.strip() for item in text.split(",") if item.strip())
    if f.base is bool:
        if text.lower() not in _BOOLS:
            raise ValueError(_expected(name))
        return _BOOLS[text.lower()]
    if f.base is str:
        return _coerce(name, text)
    try:
        number: float = int(text) if f.base is int else float(text)
    except ValueError:
        raise ValueError(_expected(name)) from None
    return _coerce(name, number)


def _coerce(name: str, value: Any) -> Any:
    """A Python value (an override or a parsed string) checked against the field's type and bounds."""
    f = _field(name)
    if f.base is tuple:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError("expected a list of strings")
        return tuple(value)
    if f.base is bool:
        if not isinstance(value, bool):
            raise ValueError(_expected(name))
        return value
    if f.choices:
        if value not in f.choices:
            raise ValueError(_expected(name))
        return value
    if f.base is str:
        if not isinstance(value, str) or not value:
            raise ValueError(_expected(name))
        return value
    return _number(name, value)


def _number(name: str, value: Any) -> float:
    f = _field(name)
    ok_type = isinstance(value, int) if f.base is int else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or not math.isfinite(value):
        raise ValueError(_expected(name))
    meta = f.meta
    too_low = (meta.gt is not None and value <= meta.gt) or (meta.ge is not None and value < meta.ge)
    if too_low or (meta.le is not None and value > meta.le):
        raise ValueError(_expected(name))
    return float(value) if f.base is float else int(value)


_FAILED: Any = msgspec.UNSET  # stands for a value that did not parse, so that no rule reports it twice


def _read_env(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """The given settings, the label of each for messages (``SSE_FAST_X='raw'``), and the problems so far."""
    values: dict[str, Any] = {}
    labels: dict[str, str] = {}
    problems: list[str] = []
    known = {_env_name(name): name for name in Settings.__struct_fields__}
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX) or var.startswith(TOOLING_PREFIX):
            continue
        name = known.get(var)
        if name is None:
            problems.append(_unknown(var, known))
        elif environ[var].strip():  # empty means unset
            labels[name] = f"{var}={_shown(name, environ[var])}"
            values[name] = _read_one(name, environ[var], labels[name], problems)
    return values, labels, problems


def _read_one(name: str, value: Any, label: str, problems: list[str]) -> Any:
    try:
        return _parse(name, value) if isinstance(value, str) else _coerce(name, value)
    except ValueError as exc:
        problems.append(f"{label}: {exc}")
        return _FAILED


def _unknown(var: str, known: Mapping[str, str]) -> str:
    close = difflib.get_close_matches(var, list(known), n=1, cutoff=0.8)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{var}: no such setting{hint}"


def _shown(name: str, value: Any) -> str:
    if name in _SECRETS and value:
        count = len(value) if isinstance(value, tuple) else 1
        return f"<{count} redacted>" if isinstance(value, tuple) else "<redacted>"
    if name == "broker" and isinstance(value, str):
        return repr(_redact_url(value))
    if name == "jwt_public_key" and isinstance(value, str) and "\n" in value.strip():
        return repr(value.strip().splitlines()[0] + "...")
    return repr(value)


def _redact_url(url: str) -> str:
    """``redis://user:password@host`` without the password."""
    return re.sub(r"^([a-z+]+://[^:/@]*):[^@/]*@", r"\1:***@", url)


# ---------------------------------------------------------------------------------------------------------------
# Whole-object rules: bounds of every field and the cross-field checks
# ---------------------------------------------------------------------------------------------------------------


class _Defaulted:
    """Parsed values over the defaults, read with ``getattr`` like a Settings instance."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        if name in self._values:
            return self._values[name]
        return next(f.default for f in msgspec.structs.fields(Settings) if f.name == name)


def _check(s: Any) -> list[tuple[str, str]]:
    """Every problem of a full set of values, as (field, "expected ..."); ``s`` is read with getattr."""
    problems: list[tuple[str, str]] = []
    for name in Settings.__struct_fields__:
        value = getattr(s, name)
        if value is _FAILED or (value is None and _field(name).optional):
            continue
        try:
            _coerce(name, value)
        except ValueError as exc:
            problems.append((name, str(exc)))
    problems += _check_auth(s) + _check_lists(s) + _check_broker(s) + _check_sizes(s) + _check_tls(s)
    return problems


def _check_auth(s: Any) -> list[tuple[str, str]]:
    keys = ("jwt_secret", "jwt_public_key", "jwt_jwks_file")
    given = [k for k in keys if getattr(s, k) is not None]  # a value that did not parse was still given
    names = ", ".join(_env_name(k) for k in keys)
    problems: list[tuple[str, str]] = []
    if s.auth == "jwt" and len(given) != 1:
        state = "none is set" if not given else " and ".join(_env_name(k) for k in given) + " are all set"
        problems.append(("auth", f"needs exactly one of {names} ({state})"))
    if s.auth == "none":
        for k in [k for k in (*keys, "jwt_audience", "jwt_issuer", "jwt_require_exp") if getattr(s, k)]:
            problems.append((k, "has no effect with SSE_FAST_AUTH='none' (set SSE_FAST_AUTH=jwt, or unset it)"))
    if s.jwt_secret and len(s.jwt_secret.encode()) < _MIN_SECRET_BYTES:
        problems.append(("jwt_secret", f"expected at least {_MIN_SECRET_BYTES} bytes (HS256 needs a 256-bit key)"))
    if s.jwt_public_key:
        problems += [("jwt_public_key", text) for text in _public_key_problems(s.jwt_public_key)]
    if s.jwt_jwks_file:
        problems += [("jwt_jwks_file", text) for text in _jwks_problems(s.jwt_jwks_file)]
    return problems


def _check_lists(s: Any) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    keys = s.api_keys if isinstance(s.api_keys, tuple) else ()
    if any(len(k) < _MIN_API_KEY or any(c.isspace() for c in k) for k in keys):
        problems.append(("api_keys", f"expected keys of at least {_MIN_API_KEY} characters without whitespace"))
    origins = s.cors_origins if isinstance(s.cors_origins, tuple) else ()
    if origins != ("*",) and not all(_ORIGIN.match(o) for o in origins):
        problems.append(("cors_origins", "expected `*` alone, or origins like https://example.com:8443 (no path)"))
    return problems


def _check_broker(s: Any) -> list[tuple[str, str]]:
    broker = s.broker
    problems: list[tuple[str, str]] = []
    if not isinstance(broker, str):
        return problems
    if broker.startswith(SENTINEL_SCHEME):
        try:
            sentinel_url(broker)
        except ValueError as exc:
            problems.append(("broker", str(exc)))
    elif broker != "memory" and not any(broker.startswith(p) and len(broker) > len(p) for p in _BROKER_SCHEMES):
        problems.append(("broker", "expected `memory`, a redis://, rediss:// or unix:// URL, or redis+sentinel://"))
    if isinstance(s.redis_wait_timeout, float) and s.redis_wait_timeout > 2:
        # A Redis call fails after 3 s (socket timeout): the WAIT must answer well before that.
        problems.append(("redis_wait_timeout", "expected at most 2 s (a Redis call times out after 3 s)"))
    if broker == "memory" and isinstance(s.workers, int) and s.workers > 1:
        problems.append(
            (
                "workers",
                "the memory broker serves one process; use one worker, or Redis (SSE_FAST_BROKER=redis://...)",
            )
        )
    return problems


class SentinelUrl(NamedTuple):
    """A ``redis+sentinel://`` broker URL, parsed (:func:`sentinel_url`)."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None
    password: str | None


_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$")


def sentinel_url(url: str) -> SentinelUrl:
    """The parts of ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``.

    The user and password are the primary's (and its replicas'); the sentinels are asked without them. Raises
    ``ValueError`` saying what is wrong ("expected ..."), the message :class:`Settings` reports.
    """
    shape = "expected redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]"
    if not url.startswith(SENTINEL_SCHEME):
        raise ValueError(shape)
    rest = url[len(SENTINEL_SCHEME) :]
    credentials, at, rest = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = credentials.partition(":")
        username, password = urllib.parse.unquote(user) or None, urllib.parse.unquote(secret) if colon else None
    hosts, _, path = rest.partition("/")
    service, _, db = path.partition("/")
    sentinels = []
    for host in hosts.split(","):
        match = _HOST_PORT.match(host)
        if match is None or not 0 < int(match[2]) < 65536:
            raise ValueError(f"{shape} (not a host:port: {host!r})")
        sentinels.append((match[1].strip("[]"), int(match[2])))
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,128}", service):
        raise ValueError(f"{shape} (the service name is missing or not [A-Za-z0-9_.-])")
    if db and not (db.isascii() and db.isdigit() and int(db) < 16384):
        raise ValueError(f"{shape} (the database is not a number: {db!r})")
    return SentinelUrl(tuple(sentinels), service, int(db or 0), username, password)


def _check_tls(s: Any) -> list[tuple[str, str]]:
    """A certificate and its key come together, as readable PEM files (granian reads them in every worker)."""
    problems: list[tuple[str, str]] = []
    pair = {"ssl_certfile": s.ssl_certfile, "ssl_keyfile": s.ssl_keyfile}
    for name, other in (("ssl_certfile", "ssl_keyfile"), ("ssl_keyfile", "ssl_certfile")):
        if pair[name] is None and pair[other] is not None:
            problems.append((name, f"must be set with {_env_name(other)} (or unset both for plain HTTP)"))
    for name, marker in (("ssl_certfile", "CERTIFICATE"), ("ssl_keyfile", "PRIVATE KEY")):
        if isinstance(pair[name], str):
            problems += [(name, text) for text in _pem_file_problems(pair[name], marker)]
    return problems


def _pem_file_problems(path: str, marker: str) -> list[str]:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        return [f"expected a readable file ({exc.strerror or type(exc).__name__})"]
    if not re.search(rf"-----BEGIN [A-Z ]*{marker}-----", text):
        return [f"expected a PEM file with a {marker} block"]
    return []


def _check_sizes(s: Any) -> list[tuple[str, str]]:
    """A message the body limit accepts must fit in one connection's queue, in the replay log and in a client's
    publish burst."""
    problems: list[tuple[str, str]] = []
    for name in ("queue_bytes", "replay_bytes", "publish_burst_bytes"):
        value, body = getattr(s, name), s.max_body
        if isinstance(value, int) and isinstance(body, int) and value < body:
            problems.append((name, f"must be at least SSE_FAST_MAX_BODY ({body}) so that the largest message fits"))
    return problems


# ---------------------------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------------------------


def _resolve_public_key(value: Any, labels: Mapping[str, str], problems: list[str]) -> Any:
    """``SSE_FAST_JWT_PUBLIC_KEY`` may name a PEM file: the PEM text it holds (or the value, if it is PEM)."""
    if not isinstance(value, str) or "-----BEGIN" in value:
        return value
    try:
        return Path(value).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        problems.append(f"{labels['jwt_public_key']}: expected PEM text or the path of a PEM file ({reason})")
        return _FAILED


def public_key_algorithm(pem: str) -> str:
    """The JWT algorithm of a PEM public key: ``RS256`` (RSA, 2048+ bits) or ``ES256`` (EC P-256).

    Raises ``ValueError`` for anything else.
    """
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        raise ValueError("expected a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    raise ValueError("expected an RSA (2048+ bits, RS256) or EC P-256 (ES256) public key")


def _public_key_problems(pem: str) -> list[str]:
    try:
        public_key_algorithm(pem)
    except ValueError as exc:
        return [str(exc)]
    return []


def _jwks_problems(path: str) -> list[str]:
    import jwt

    try:
        jwt.PyJWKSet.from_json(Path(path).read_text())
    except OSError as exc:
        return [f"expected a readable JWKS file ({exc.strerror or type(exc).__name__})"]
    except (jwt.PyJWKSetError, jwt.PyJWKError, ValueError, KeyError, TypeError) as exc:
        return [f"expected a JWKS file with at least one usable key ({type(exc).__name__})"]
    return []


# ---------------------------------------------------------------------------------------------------------------
# Documentation
# ---------------------------------------------------------------------------------------------------------------


class SettingDoc(NamedTuple):
    """One setting as documented: field name, environment variable, default (as text), unit and description."""

    name: str
    env: str
    default: str
    unit: str
    doc: str


def describe() -> list[SettingDoc]:
    """Every setting, in declaration order, for the README and ``sse-fast serve --help``."""
    docs = []
    for f in msgspec.structs.fields(Settings):
        spec = _field(f.name)
        docs.append(SettingDoc(f.name, _env_name(f.name), _default_text(f.default), _unit(spec.meta), _doc_of(spec)))
    return docs


def _doc_of(spec: _Field) -> str:
    text = spec.meta.description or ""
    if spec.choices:
        text += " One of: " + ", ".join(spec.choices) + "."
    return text


def _default_text(default: Any) -> str:
    if default is None or default == ():
        return "-"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, int) and not isinstance(default, bool) and default >= _MIB and default % _MIB == 0:
        return f"{default // _MIB} MiB"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def as_table(*, markdown: bool = False) -> str:
    """:func:`describe` as text: a Markdown table for the README, or aligned columns for ``--help``."""
    rows = [(d.env, d.default + (f" {d.unit}" if d.unit in ("s", "ms") else ""), d.doc) for d in describe()]
    if markdown:
        lines = ["| variable | default | meaning |", "|---|---|---|"]
        return "\n".join(lines + [f"| `{env}` | {default} | {doc} |" for env, default, doc in rows])
    width = max(len(env) for env, _, _ in rows)
    dwidth = max(len(default) for _, default, _ in rows)
    return "\n".join(f"{env:<{width}}  {default:<{dwidth}}  {doc}" for env, default, doc in rows)
