"""Logging: one line format for granian's lines and sse-fast's (text or JSON), and the access log.

:func:`dictconfig` is the one configuration: ``sse-fast serve`` applies it and hands it to granian (its
``log_dictconfig``, which granian applies in the server and in every worker), and ``sse-fast log-config`` prints it
for ``granian --log-config``. Under plain ``granian sse_fast.app:app``, :func:`install` (called when
:mod:`sse_fast.app` is imported) gives sse-fast's loggers a handler when the host configured none, so that its
INFO lines are not lost; a host's own configuration is left alone.

The access log (``SSE_FAST_ACCESS_LOG``) is sse-fast's, not granian's: it knows who the caller turned out to be,
and it redacts what is a credential. The values of the query parameters in :data:`CREDENTIAL_PARAMS` become
``REDACTED`` (:func:`redact`, the one rule, which :func:`sse_fast.server.auth.redact_query` applies too); no header
is printed (so neither is ``Authorization``); the path and query are percent-encoded, so no input can forge a line.
Every other line that shows a request's path shows it through :func:`quoted_path`, for the same reason.
"""

from __future__ import annotations

import datetime
import logging
import logging.config
import time
from collections.abc import Mapping
from typing import Any, Final, Literal
from urllib.parse import quote, urlencode

import msgspec

__all__ = [
    "CREDENTIAL_PARAMS",
    "JSON_KEYS",
    "LOG_FORMATS",
    "REDACTED",
    "AccessLog",
    "JsonFormatter",
    "dictconfig",
    "install",
    "is_credential",
    "quoted_path",
    "redact",
]

LogFormat = Literal["text", "json"]
LOG_FORMATS: Final[tuple[LogFormat, ...]] = ("text", "json")
"""The values of ``--log-format`` (and of ``SSE_FAST_LOG_FORMAT``)."""

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JSON_KEYS: Final = ("time", "level", "logger", "message")
"""The keys of every JSON line, granian's and sse-fast's (an access line adds its own fields after them)."""
REDACTED: Final = "REDACTED"
"""What a credential's value becomes in a log line."""
CREDENTIAL_PARAMS: Final = frozenset({"token", "access_token", "ticket", "api_key"})
"""The query parameters whose values are credentials (names compared case-insensitively): never logged."""
_PATH_SAFE: Final = "/:@!$&'()*+,;=-._~"
_json = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, then ``exc`` for an
    exception and the fields of an access line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            line.update(access)
        return _json.encode(line).decode()


def dictconfig(level: str, log_format: LogFormat, *, access: bool = False) -> dict[str, Any]:
    """The logging configuration of a server: the root logger, granian's loggers and sse-fast's, on stderr.

    ``access``: granian's own access log (never on in sse-fast: its lines carry no clientId and no redaction).
    """
    formatter: dict[str, Any] = (
        {"()": "sse_fast.logs.JsonFormatter"} if log_format == "json" else {"format": TEXT_FORMAT}
    )
    handler = {"class": "logging.StreamHandler", "formatter": "sse_fast", "stream": "ext://sys.stderr"}
    upper = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"sse_fast": formatter},
        "handlers": {"sse_fast": handler},
        "root": {"handlers": ["sse_fast"], "level": upper},
        "loggers": {
            "_granian": {"handlers": ["sse_fast"], "level": upper, "propagate": False},
            "granian.access": {"handlers": ["sse_fast"], "level": "INFO" if access else "CRITICAL", "propagate": False},
            # httpx logs one INFO line per request: noise, useful only when debugging.
            # Its lines exist only when SSE_FAST_ACCESS_LOG is on, and then they are wanted whatever the level.
            "sse_fast.access": {"level": "INFO"},
            "httpx": {"level": "DEBUG" if upper == "DEBUG" else "WARNING"},
            "httpcore": {"level": "DEBUG" if upper == "DEBUG" else "WARNING"},
        },
    }


def install(level: str, log_format: LogFormat) -> bool:
    """Give sse-fast's loggers a handler in this format when nothing configured logging (plain granian, whose
    config covers only its own loggers); returns whether it did. A host with a root handler keeps its own."""
    if logging.getLogger().handlers or logging.getLogger("sse_fast").handlers:
        return False
    config = dictconfig(level, log_format)
    del config["loggers"]["_granian"], config["loggers"]["granian.access"]  # granian's own config stays
    logging.config.dictConfig(config)
    return True


class AccessLog:
    """``SSE_FAST_ACCESS_LOG``: one INFO line per request on the ``sse_fast.access`` logger.

    A stream is logged when it opens (status 200; the duration is that of its handshake).
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._log = logging.getLogger("sse_fast.access")

    def record(
        self,
        *,
        method: str,
        path: str,
        query: Mapping[str, str],
        caller: str | None,
        peer: str,
        status: int,
        started: float,
    ) -> None:
        """Log one answered request (``started``: its ``time.perf_counter()`` on arrival; ``caller``: the clientId
        the server identified it as, None when it identified none: refused, or a route without a caller)."""
        target = quoted_path(path)
        if query:
            target += "?" + urlencode(redact(query))
        fields = {
            "method": quote(method, safe=""),
            "path": target,
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "client_id": caller or "-",
            "peer": quote(peer, safe=":[]."),
        }
        self._log.info(
            "%(method)s %(path)s %(status)d %(duration_ms).3f ms client=%(client_id)s peer=%(peer)s",
            fields,
            extra={"access": fields},
        )


def is_credential(name: str) -> bool:
    """Whether the query parameter ``name`` (decoded) carries a credential (:data:`CREDENTIAL_PARAMS`)."""
    return name.lower() in CREDENTIAL_PARAMS


def redact(query: Mapping[str, str]) -> dict[str, str]:
    """``query`` (decoded) with the value of every credential replaced by :data:`REDACTED`."""
    return {name: REDACTED if is_credential(name) else value for name, value in query.items()}


def quoted_path(path: str) -> str:
    """``path`` (decoded) percent-encoded for a log line: no control character or space survives it, so a
    path cannot end a line or forge the next one."""
    return quote(path, safe=_PATH_SAFE)
