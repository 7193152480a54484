"""Logging of real servers: one line format for granian's lines and sse-fast's, the access log and its redaction,
and sse-fast's lines under plain granian (with and without ``sse-fast log-config``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt

from _servers import BIN, Server, running_server
from sse_fast.logs import JSON_KEYS, REDACTED

SECRET = "a-test-secret-of-at-least-32-bytes-long!"
JWT = {"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_SECRET": SECRET}
# Values that must never reach the output, whatever the format.
QUERY_TOKEN = "qs-token-0123456789abcdef"
BEARER = "bearer-token-0123456789abcdef"
TICKET = "ticket-0123456789abcdef"
ACCESS_TOKEN = "access-token-0123456789abcdef"
API_KEY = "api-key-0123456789abcdef"
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+): ")


def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not met in {timeout}s: {what}"
        time.sleep(0.05)  # ok-sleep: polling another process's output with a deadline


def json_lines(server: Server) -> list[dict[str, Any]]:
    """Every line the server printed, each parsed as JSON (a line that is not JSON fails the test)."""
    lines = [line for line in server.log().splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    return parsed


def ready(server: Server) -> Callable[[], bool]:
    return lambda: "sse-fast worker ready" in server.log()


def test_json_lines_of_granian_and_sse_fast_have_the_same_keys(tmp_path: Path) -> None:
    with running_server(tmp_path, extra_args=("--log-format", "json")) as srv:
        eventually(ready(srv), "the worker's startup line")
        lines = json_lines(srv)
    granian = [line for line in lines if line["logger"].startswith("_granian")]
    ours = [line for line in lines if line["logger"].startswith("sse_fast")]
    assert granian, lines
    assert ours, lines
    for line in granian + ours:
        assert tuple(line) == JSON_KEYS, line
        assert line["level"] in ("INFO", "WARNING"), line
    assert any(line["message"].startswith("sse-fast worker ready") for line in ours)
    assert not [line for line in lines if line["logger"] == "sse_fast.access"], "the access log is off by default"


def test_text_lines_of_granian_and_sse_fast_have_one_format(tmp_path: Path) -> None:
    with running_server(tmp_path) as srv:
        eventually(ready(srv), "the worker's startup line")
        lines = [line for line in srv.log().splitlines() if line.strip()]
    loggers = set()
    for line in lines:
        match = TEXT_LINE.match(line)
        assert match, f"not in the text format: {line!r}"
        loggers.add(match.group(2).split(".")[0])
    assert {"_granian", "sse_fast"} <= loggers


def test_the_access_log_redacts_every_credential(tmp_path: Path) -> None:
    env = {**JWT, "SSE_FAST_LOG_FORMAT": "json"}
    with running_server(tmp_path, env=env, extra_args=("--access-log",)) as srv:
        eventually(ready(srv), "the worker's startup line")
        assert httpx.get(f"{srv.url}/sse", params={"clientId": "alice", "token": QUERY_TOKEN}).status_code == 401
        headers = {"Authorization": f"Bearer {BEARER}"}
        answer = httpx.post(f"{srv.url}/api/messages", json={"type": "text", "payload": "x"}, headers=headers)
        assert answer.status_code == 401
        assert httpx.get(f"{srv.url}/sse", params={"ticket": TICKET, "clientId": "bob"}).status_code == 401
        assert httpx.get(f"{srv.url}/healthz", headers={"X-Client-Id": "carol"}).status_code == 200
        credentials = {"topic": "a", "access_token": ACCESS_TOKEN, "API_KEY": API_KEY}
        assert httpx.get(f"{srv.url}/api/presence", params=credentials).status_code == 401

        def access() -> list[dict[str, Any]]:
            # After start_server's own /healthz polls (without X-Client-Id).
            lines = [line for line in json_lines(srv) if line["logger"] == "sse_fast.access"]
            return lines[next(i for i, line in enumerate(lines) if line["path"].startswith("/sse")) :]

        eventually(lambda: len(access()) == 5, "five access lines")
        output = srv.log()
    for secret in (QUERY_TOKEN, BEARER, TICKET, SECRET, ACCESS_TOKEN, API_KEY):
        assert secret not in output
    stream, publish, ticket, health, presence = access()
    assert stream["method"] == "GET"
    assert stream["path"] == f"/sse?clientId=alice&token={REDACTED}"
    assert stream["status"] == 401
    assert stream["client_id"] == "-"  # refused: it names alice, but nobody was identified
    assert stream["duration_ms"] >= 0
    assert REDACTED in stream["message"]
    assert (publish["method"], publish["path"], publish["status"]) == ("POST", "/api/messages", 401)
    assert ticket["path"] == f"/sse?ticket={REDACTED}&clientId=bob"
    assert (health["status"], health["client_id"]) == (200, "-")  # an open route has no caller
    assert presence["path"] == f"/api/presence?topic=a&access_token={REDACTED}&API_KEY={REDACTED}"


def test_the_access_log_names_the_identified_caller_never_the_claimed_one(tmp_path: Path) -> None:
    env = {**JWT, "SSE_FAST_LOG_FORMAT": "json"}
    bob = jwt.encode({"sub": "bob", "topics": ["orders.bob"]}, SECRET, algorithm="HS256")
    with running_server(tmp_path, env=env, extra_args=("--access-log",)) as srv:
        eventually(ready(srv), "the worker's startup line")
        as_bob = {"Authorization": f"Bearer {bob}"}
        presence = f"{srv.url}/api/presence"
        assert httpx.get(presence, params={"topic": "orders.bob"}, headers=as_bob).status_code == 200
        impersonating = {**as_bob, "X-Client-Id": "alice"}
        assert httpx.get(presence, params={"topic": "orders.bob"}, headers=impersonating).status_code == 403
        assert httpx.get(presence, params={"topic": "orders.alice"}, headers=as_bob).status_code == 403

        def access() -> list[dict[str, Any]]:
            lines = [line for line in json_lines(srv) if line["logger"] == "sse_fast.access"]
            return [line for line in lines if line["path"].startswith("/api/presence")]

        eventually(lambda: len(access()) == 3, "three access lines")
    assert [(line["status"], line["client_id"]) for line in access()] == [(200, "bob"), (403, "-"), (403, "bob")]


def test_the_access_log_is_written_whatever_the_log_level(tmp_path: Path) -> None:
    with running_server(tmp_path, extra_args=("--access-log", "--log-level", "error")) as srv:
        assert httpx.get(f"{srv.url}/readyz").status_code == 200
        eventually(lambda: "GET /readyz 200 " in srv.log(), "the access line at --log-level error")
        lines = srv.log().splitlines()
    assert not [line for line in lines if " INFO sse_fast: " in line], "other INFO lines stay off at error"


def test_no_path_can_forge_a_line_in_the_unhandled_error_log(tmp_path: Path) -> None:
    # The hook of _hooked_app fails on /api/messages/{id}: a 500 by design, logged with the request's path. A carriage
    # return ends a line as surely as a line feed (which Starlette's mount refuses with a 404 before sse-fast).
    forged = "2099-01-01 00:00:00,000 INFO sse_fast.access: FORGED LINE"
    with running_server(tmp_path, command="granian", interface="asgi", app="_hooked_app:app") as srv:
        url = f"{srv.url}/events/api/messages/x%0D" + forged.replace(" ", "%20")
        answer = httpx.get(url)
        assert (answer.status_code, answer.json()["code"]) == (500, "internal_error")
        eventually(lambda: "unhandled error in GET " in srv.log(), "the error line")
        lines = srv.log().splitlines()
    (line,) = [line for line in lines if "unhandled error in GET " in line]
    assert line.endswith(
        "unhandled error in GET /api/messages/x%0D2099-01-01%2000:00:00,000%20INFO%20sse_fast.access:%20FORGED%20LINE"
    )
    assert not [line for line in lines if line.startswith("2099-01-01")]


def test_no_input_can_forge_an_access_line(tmp_path: Path) -> None:
    with running_server(tmp_path, extra_args=("--access-log",)) as srv:
        eventually(ready(srv), "the worker's startup line")
        forged = "x\n2026-01-01 00:00:00,000 INFO sse_fast: forged"
        httpx.get(f"{srv.url}/healthz", params={"clientId": forged, "note": forged})
        eventually(lambda: "GET /healthz?" in srv.log(), "the access line")
        lines = srv.log().splitlines()
    assert not [line for line in lines if "forged" in line and not line.startswith(tuple("0123456789"))]
    assert not [line for line in lines if line.endswith("INFO sse_fast: forged")]
    (line,) = [line for line in lines if "GET /healthz?" in line]
    assert "client=- " in line


def test_plain_granian_shows_sse_fast_startup_line(tmp_path: Path) -> None:
    with running_server(tmp_path, command="granian") as srv:
        eventually(ready(srv), "sse-fast's INFO line under plain granian")
        (line,) = [line for line in srv.log().splitlines() if "sse-fast worker ready" in line]
    assert TEXT_LINE.match(line), line
    assert " INFO sse_fast: " in line


def test_plain_granian_with_the_printed_log_config_logs_json(tmp_path: Path) -> None:
    printed = subprocess.run(
        [str(BIN / "sse-fast"), "log-config", "--log-format", "json"], capture_output=True, check=True, text=True
    )
    config = tmp_path / "logging.json"
    config.write_text(printed.stdout)
    with running_server(tmp_path, command="granian", extra_args=("--log-config", str(config))) as srv:
        eventually(ready(srv), "sse-fast's INFO line")
        lines = json_lines(srv)
    assert {line["logger"].split(".")[0] for line in lines} >= {"_granian", "sse_fast"}
    assert all(tuple(line)[:4] == JSON_KEYS for line in lines)


def test_a_host_logging_configuration_is_kept() -> None:
    host = (
        "import logging, sys\n"
        "logging.basicConfig(stream=sys.stdout, format='HOST %(name)s %(message)s', level=logging.INFO)\n"
        "from sse_fast import logs\n"
        "print(logs.install('info', 'json'))\n"
        "logging.getLogger('sse_fast').info('hello')\n"
    )
    bare = (
        "import logging\n"
        "from sse_fast import logs\n"
        "print(logs.install('info', 'json'))\n"
        "logging.getLogger('sse_fast.x').info('hello')\n"
    )
    kept = subprocess.run([sys.executable, "-c", host], capture_output=True, text=True, check=True)
    assert kept.stdout.splitlines() == ["False", "HOST sse_fast hello"]
    assert kept.stderr == ""
    installed = subprocess.run([sys.executable, "-c", bare], capture_output=True, text=True, check=True)
    assert installed.stdout.splitlines() == ["True"]
    line = json.loads(installed.stderr)
    assert (line["logger"], line["level"], line["message"]) == ("sse_fast.x", "INFO", "hello")
