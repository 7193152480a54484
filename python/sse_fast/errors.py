"""The exceptions of sse-fast, one tree rooted at :class:`SseFastError`.

::

    SseFastError
    ├── FrameError (ValueError)        a frame or field that would break the SSE wire format
    ├── TopicError (ValueError)        an invalid topic or topic pattern
    ├── AuthError (PermissionError)    401/403: a bad, expired or insufficient credential
    ├── ConnectionLostError (ConnectionError)
    │                                  the client could not reach the server within its reconnect budget
    ├── QueueFullError                 the client's outbound queue evicted or refused a message
    ├── ServerError                    the server answered an error (``status``, ``code``, ``detail``)
    └── TaskError                      a task ended ``failed``, ``cancelled`` or ``timed_out``

The Rust core raises the first two; the binding maps every variant of its one error enum onto them in one place.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthError",
    "ConnectionLostError",
    "FrameError",
    "QueueFullError",
    "ServerError",
    "SseFastError",
    "TaskError",
    "TopicError",
]


class SseFastError(Exception):
    """The base of every exception sse-fast raises on purpose."""


class FrameError(SseFastError, ValueError):
    """A value that would break the SSE wire format: CR/LF in ``event`` or ``id``, NUL in ``id``, an oversized line."""


class TopicError(SseFastError, ValueError):
    """An invalid topic or topic pattern."""


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
