"""sse-fast: a fast, reliable bidirectional notification system on Server-Sent Events."""

from sse_fast._core import (
    CRITICAL,
    HIGH,
    LOW,
    NORMAL,
    Decoder,
    Event,
    PriorityQueue,
    __version__,
    build_profile,
    encode_comment,
    encode_event,
    encode_json_frame,
    encode_retry,
    topic_matches,
    validate_topic,
)
from sse_fast.client import Client, Message, Subscription
from sse_fast.errors import (
    AuthError,
    ConnectionLostError,
    FrameError,
    QueueFullError,
    ServerError,
    SseFastError,
    TaskError,
    TopicError,
)
from sse_fast.scheduler.core import PermanentError, Scheduler, TaskContext
from sse_fast.server.app import App, create_app
from sse_fast.settings import Settings, SettingsError

__all__ = [
    "CRITICAL",
    "HIGH",
    "LOW",
    "NORMAL",
    "App",
    "AuthError",
    "Client",
    "ConnectionLostError",
    "Decoder",
    "Event",
    "FrameError",
    "Message",
    "PermanentError",
    "PriorityQueue",
    "QueueFullError",
    "Scheduler",
    "ServerError",
    "Settings",
    "SettingsError",
    "SseFastError",
    "Subscription",
    "TaskContext",
    "TaskError",
    "TopicError",
    "__version__",
    "build_profile",
    "create_app",
    "encode_comment",
    "encode_event",
    "encode_json_frame",
    "encode_retry",
    "topic_matches",
    "validate_topic",
]
