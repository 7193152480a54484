"""The public API is what `sse_fast.__all__` says: pinned here so that a change to it is a decision."""

import sse_fast

EXPECTED = [
    "CRITICAL",
    "HIGH",
    "LOW",
    "NORMAL",
    "App",
    "AuthError",
    "AuthRequest",
    "Client",
    "CommandAnswer",
    "ConnectionLostError",
    "Decoder",
    "Event",
    "FrameError",
    "Identity",
    "Message",
    "PermanentError",
    "Priority",
    "PriorityQueue",
    "PublishAnswer",
    "QueueFullError",
    "Scheduler",
    "ServerError",
    "Settings",
    "SettingsError",
    "SseFast",
    "SseFastError",
    "Subscription",
    "SyncClient",
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


def test_all_is_pinned_and_sorted() -> None:
    assert sse_fast.__all__ == EXPECTED


def test_every_public_name_exists_and_is_documented() -> None:
    for name in sse_fast.__all__:
        value = getattr(sse_fast, name)
        if callable(value):
            assert value.__doc__, name


def test_errors_fit_the_builtin_tree() -> None:
    assert issubclass(sse_fast.FrameError, ValueError)
    assert issubclass(sse_fast.FrameError, sse_fast.SseFastError)
    assert issubclass(sse_fast.AuthError, PermissionError)
    assert sse_fast.build_profile in ("release", "debug")
    assert sse_fast.__version__.count(".") == 2
