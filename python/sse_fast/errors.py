"""The exceptions of sse-fast, one tree rooted at :class:`SseFastError`.

::

    SseFastError
    ├── FrameError (ValueError)        a frame or field that would break the SSE wire format
    ├── TopicError (ValueError)        an invalid topic or topic pattern
    ├── SettingsError (ValueError)     invalid SSE_FAST_* settings (sse_fast.settings)
    │
    │   the server: every error it answers, as {"error", "code", "detail"} (PROTOCOL.md section 7)
    ├── HttpError                      status, code, message, detail, headers (Retry-After, Allow...)
    │   ├── AuthFailure                400/401/403: who the caller is and what it may do (sse_fast.server.auth)
    │   ├── ValidationFailure (ValueError)
    │   │                              400/409/413/422: a request the protocol refuses (sse_fast.models)
    │   ├── BrokerUnavailable          503 + Retry-After: Redis cannot be reached now (sse_fast.broker.redis)
    │   └── SchedulerError             400/404/409/422/429/503/504: a refused task request (sse_fast.scheduler.core)
    ├── PermanentError                 raised by a task handler: fail the task without retrying
    │
    │   the client (sse_fast.client): what it raises to its caller
    ├── AuthError (PermissionError)    401/403: a bad, expired or insufficient credential
    ├── ConnectionLostError (ConnectionError)
    │                                  the client could not reach the server within its reconnect budget
    ├── QueueFullError                 the client's outbound queue evicted or refused a message
    ├── ServerError                    the server answered an error (``status``, ``code``, ``detail``)
    └── TaskError                      a task ended ``failed``, ``cancelled`` or ``timed_out``

The Rust core raises the first two; the binding maps every variant of its one error enum onto them in one place.

On the server, whatever refuses a request raises an :class:`HttpError` (or a subclass), wherever it is; the routes
answer it in one place (``Api.handle``) with :class:`ErrorBody`, its ``status`` and its ``headers``. A code names
one situation everywhere: to a caller reading or steering something that belongs to another client, it does not
exist (``404 task_not_found`` or ``unknown_message``, as for an id nobody has). The subclasses say where an error
comes from; the answer is the same for all of them. ``AuthFailure`` is not a ``PermissionError``, which is an
``OSError``: I/O code that catches ``OSError`` (an unreachable Redis) must not swallow a refused caller.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "AuthError",
    "AuthFailure",
    "BrokerUnavailable",
    "ConnectionLostError",
    "ErrorBody",
    "FrameError",
    "HttpError",
    "PermanentError",
    "QueueFullError",
    "SchedulerError",
    "ServerError",
    "SseFastError",
    "TaskError",
    "TopicError",
    "ValidationFailure",
]


class SseFastError(Exception):
    """The base of every exception sse-fast raises on purpose."""


class FrameError(SseFastError, ValueError):
    """A value that would break the SSE wire format: CR/LF in ``event`` or ``id``, NUL in ``id``, an oversized line."""


class TopicError(SseFastError, ValueError):
    """An invalid topic or topic pattern."""


# ---------------------------------------------------------------------------------------------------------------
# The server's error answers
# ---------------------------------------------------------------------------------------------------------------


class ErrorBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Every error answer (PROTOCOL.md section 7): a human-readable ``error``, a snake_case ``code`` and, when there
    is more to say, a ``detail`` (left out when null)."""

    error: str
    code: str
    detail: Any = None


class HttpError(SseFastError):
    """An error the server answers: ``status`` with ``{"error": message, "code": code, "detail": detail}``.

    ``headers`` go out with the answer (``Allow`` on a 405...); ``retry_after`` (seconds) adds ``Retry-After``.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: Any = None,
        *,
        headers: list[tuple[str, str]] | None = None,
        retry_after: int = 0,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = list(headers or [])
        if retry_after:
            self.headers.append(("retry-after", str(retry_after)))

    @property
    def retry_after(self) -> int:
        """The ``Retry-After`` seconds this answer carries; 0 when none."""
        for name, value in self.headers:
            if name.lower() == "retry-after" and value.isdigit():
                return int(value)
        return 0

    def body(self) -> ErrorBody:
        """The JSON body of the answer."""
        return ErrorBody(error=self.message, code=self.code, detail=self.detail)


class AuthFailure(HttpError):
    """A caller refused by :mod:`sse_fast.server.auth`: 400 (a malformed clientId), 401 (no, or a bad, credential) or
    403 (``client_id_mismatch``, ``topic_not_granted``, ``direct_not_granted``, ``admin_required``)."""


class ValidationFailure(HttpError, ValueError):
    """A request the protocol refuses: 400 (``malformed_json``, ``invalid_client_id``), 413, 422 (``invalid_message``,
    ``target_and_topic``, ``target_not_allowed``...), 409 (``message_id_in_use``)."""


class SchedulerError(HttpError):
    """A refused scheduler request: ``unknown_task`` (400, ``detail.task`` the name asked for), ``invalid_params``
    (422), ``queue_full`` (429, ``retry_after`` seconds), ``task_not_found`` (404), ``task_finished`` (409),
    ``not_paused`` (409), ``shutting_down`` (503); across Redis nodes also ``task_node_unavailable`` (503),
    ``command_pending`` (503: a repeated ``commandId`` still being accepted on another node) and
    ``task_node_timeout`` (504)."""

    @classmethod
    def task_not_found(cls, task_id: str) -> SchedulerError:
        """404 ``task_not_found``: one answer for a task that is unknown, dropped after retention, or another
        client's (to a caller who may not see it, it does not exist: no existence oracle)."""
        return cls(404, "task_not_found", f"no task {task_id!r} (unknown, or dropped after retention)")


class BrokerUnavailable(HttpError):
    """503 ``broker_unavailable`` with ``Retry-After``: the shared broker (Redis) cannot be reached now; the request
    changed nothing, and the same request may be retried."""

    def __init__(self, *, retry_after: int = 2) -> None:
        message = "the message broker (Redis) is unreachable; retry later"
        super().__init__(503, "broker_unavailable", message, retry_after=retry_after)


class PermanentError(SseFastError):
    """Raise it from a task handler to fail the task without retrying (bad input, a missing resource...)."""


# ---------------------------------------------------------------------------------------------------------------
# What the client raises
# ---------------------------------------------------------------------------------------------------------------


class AuthError(SseFastError, PermissionError):
    """The server refused the credentials (HTTP 401 or 403)."""

    def __init__(self, message: str, *, status: int = 401, code: str = "unauthorized") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ConnectionLostError(SseFastError, ConnectionError):
    """The client gave up reconnecting (``max_reconnect_attempts`` exhausted) or was closed."""


class QueueFullError(SseFastError):
    """An outbound message was evicted from, or refused by, the client's bounded queue."""


class ServerError(SseFastError):
    """The server answered with an error body ``{"error", "code", "detail"}``."""

    def __init__(self, message: str, *, status: int, code: str, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.detail = detail


class TaskError(SseFastError):
    """A task ended without a result: ``status`` is ``failed``, ``cancelled`` or ``timed_out``."""

    def __init__(self, message: str, *, task_id: str, status: str, error: Any = None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.status = status
        self.error = error
