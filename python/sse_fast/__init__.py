"""sse-fast: a fast, reliable bidirectional notification system on Server-Sent Events."""

from sse_fast._core import (
    CRITICAL,
    HIGH,
    LOW,
    NORMAL,
    Decoder,
    Event,
    __version__,
    build_profile,
    encode_comment,
    encode_event,
    encode_json_frame,
    encode_retry,
)
from sse_fast.errors import AuthError, FrameError, SseFastError, TopicError
from sse_fast.scheduler import PermanentError, Scheduler, TaskContext

__all__ = [
    "CRITICAL",
    "HIGH",
    "LOW",
    "NORMAL",
    "AuthError",
    "Decoder",
    "Event",
    "FrameError",
    "PermanentError",
    "Scheduler",
    "SseFastError",
    "TaskContext",
    "TopicError",
    "__version__",
    "build_profile",
    "encode_comment",
    "encode_event",
    "encode_json_frame",
    "encode_retry",
]
