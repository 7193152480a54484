"""The exception tree of sse_fast.errors: one root, the server's error answers under HttpError."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import msgspec
import pytest

from _servers import running_server
from sse_fast import Client, errors, models, scheduler, settings
from sse_fast.server import auth
from sse_fast.server import http as _http


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("HttpError", _http),
        ("AuthFailure", auth),
        ("ValidationFailure", models),
        ("ErrorBody", models),
        ("SchedulerError", scheduler),
        ("PermanentError", scheduler),
    ],
)
def test_the_old_names_are_the_classes_of_the_tree(name: str, where: object) -> None:
    assert getattr(where, name) is getattr(errors, name)


@pytest.mark.parametrize("cls", [errors.AuthFailure, errors.ValidationFailure, errors.SchedulerError])
def test_every_server_refusal_is_an_http_error(cls: type[errors.HttpError]) -> None:
    assert issubclass(cls, errors.HttpError)
    assert issubclass(cls, errors.SseFastError)
    err = cls(403, "not_owner", "this belongs to another client", {"id": "x"})
    assert (err.status, err.code, err.message, err.detail, str(err)) == (
        403,
        "not_owner",
        "this belongs to another client",
        {"id": "x"},
        "this belongs to another client",
    )


def test_the_other_errors_hang_from_the_root() -> None:
    for cls in (errors.PermanentError, settings.SettingsError, errors.ServerError, errors.FrameError):
        assert issubclass(cls, errors.SseFastError), cls
    assert issubclass(errors.ValidationFailure, ValueError)
    assert issubclass(settings.SettingsError, ValueError)
    # Not a PermissionError: that is an OSError, which I/O code catches (an unreachable Redis).
    assert not issubclass(errors.AuthFailure, OSError)


def test_body_leaves_a_null_detail_out() -> None:
    plain = errors.HttpError(404, "not_found", "no route for /x")
    assert msgspec.json.encode(plain.body()) == b'{"error":"no route for /x","code":"not_found"}'
    detailed = errors.HttpError(413, "body_too_large", "too large", {"limit": 10})
    assert msgspec.json.decode(msgspec.json.encode(detailed.body())) == {
        "error": "too large",
        "code": "body_too_large",
        "detail": {"limit": 10},
    }


def test_retry_after_is_a_header_and_reads_back() -> None:
    err = errors.SchedulerError(429, "queue_full", "full", retry_after=3)
    assert err.headers == [("retry-after", "3")]
    assert err.retry_after == 3
    given = errors.HttpError(503, "broker_unavailable", "down", headers=[("retry-after", "2")])
    assert given.retry_after == 2
    assert errors.HttpError(400, "x", "y").retry_after == 0


@pytest.mark.e2e
async def test_the_client_gets_a_server_code_with_its_status(tmp_path: Path) -> None:
    """Another client's task is `task_not_found` (404, as if it did not exist): it reaches the SDK as a ServerError
    with the server's status and code, on a send and a read."""
    secret = "s" * 32

    def token(sub: str) -> str:
        return jwt.encode({"sub": sub, "exp": int(time.time()) + 600}, secret, algorithm="HS256")

    with running_server(tmp_path, env={"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_SECRET": secret}) as server:
        async with (
            Client(server.url, client_id="alice", token=token("alice"), auto_connect=False) as alice,
            Client(server.url, client_id="mallory", token=token("mallory"), auto_connect=False) as mallory,
        ):
            answer = await alice.send_command("execute", task="sleep", params={"seconds": 30})
            assert isinstance(answer, models.CommandAnswer)
            with pytest.raises(errors.ServerError) as cancelling:
                await mallory.cancel_task(answer.task_id)
            assert (cancelling.value.status, cancelling.value.code) == (404, "task_not_found")
            with pytest.raises(errors.ServerError) as reading:
                await mallory.query_progress(answer.task_id)
            assert (reading.value.status, reading.value.code) == (404, "task_not_found")
            cancelled = await alice.cancel_task(answer.task_id)
            assert isinstance(cancelled, models.CommandAnswer)
            assert cancelled.status == "cancelled"
