"""End to end, issue 13: hostile bodies, identities and origins against a real server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from _servers import Server, open_stream, running_server
from sse_fast.broker.rules import RESERVED_SOURCES

pytestmark = pytest.mark.e2e

SECRET = "h" * 40
DEEP_LIST = b"[" * 2000 + b"]" * 2000
DEEP_OBJECT = b'{"a":' * 2000 + b"1" + b"}" * 2000
DEEP_PAYLOAD = b'{"type":"text","target":"bob","payload":' + DEEP_LIST + b"}"
JSON = {"content-type": "application/json"}


def bearer(sub: str, **claims: Any) -> dict[str, str]:
    claims.setdefault("exp", int(time.time()) + 600)
    return {"Authorization": f"Bearer {jwt.encode({'sub': sub, **claims}, SECRET, algorithm='HS256')}"}


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("open")) as srv:
        yield srv


@pytest.fixture(scope="module")
def jwt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("jwt"), env={"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_SECRET": SECRET}
    ) as srv:
        yield srv


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert {"error", "code"} <= set(body) <= {"error", "code", "detail"}, body
    assert response.headers["content-type"].startswith("application/json")
    return response.status_code, body["code"]


# -- 1. deeply nested JSON ---------------------------------------------------------------------------------------

_DEEP_PATHS = ("/api/messages", "/api/direct/bob", "/api/ack", "/api/commands", "/api/broadcast")


@pytest.mark.parametrize("body", [DEEP_LIST, DEEP_OBJECT, DEEP_PAYLOAD], ids=["list", "object", "payload"])
@pytest.mark.parametrize("path", _DEEP_PATHS)
def test_deeply_nested_json_is_malformed_not_a_crash(open_server: Server, path: str, body: bytes) -> None:
    answer = httpx.post(f"{open_server.url}{path}", content=body, headers=JSON)
    assert error_of(answer) == (400, "malformed_json")
    assert "Traceback" not in open_server.log()


@pytest.mark.parametrize("path", _DEEP_PATHS)
def test_under_jwt_the_caller_is_authenticated_before_the_body_is_decoded(jwt_server: Server, path: str) -> None:
    answer = httpx.post(f"{jwt_server.url}{path}", content=DEEP_LIST, headers=JSON)
    assert error_of(answer) == (401, "missing_token")
    garbage = httpx.post(f"{jwt_server.url}{path}", content=b"{not json", headers=JSON)
    assert error_of(garbage) == (401, "missing_token")
    authed = httpx.post(f"{jwt_server.url}{path}", content=DEEP_LIST, headers={**JSON, **bearer("alice")})
    assert error_of(authed) == (400, "malformed_json")
    assert "Traceback" not in jwt_server.log()


# -- 2. a stream needs a clientId under auth = none ----------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "?clientId=", "?topics=a.b", "?clientId=&topics=a.b"])
def test_a_stream_without_client_id_is_refused_under_auth_none(open_server: Server, query: str) -> None:
    answer = httpx.get(f"{open_server.url}/sse{query}", timeout=5)
    assert error_of(answer) == (400, "invalid_client_id")


async def test_under_jwt_the_stream_needs_no_client_id_query(jwt_server: Server) -> None:
    async with open_stream(jwt_server.url, client_id="", headers=bearer("alice")) as alice:
        await alice.wait_for(lambda s: bool(s.system("connect")))
        assert alice.system("connect")[0]["payload"]["detail"]["clientId"] == "alice"


# -- 3. the server's own identities are nobody's ------------------------------------------------------------------

RESERVED = sorted(RESERVED_SOURCES)


@pytest.mark.parametrize("sub", RESERVED)
def test_a_token_with_a_reserved_subject_is_refused(jwt_server: Server, sub: str) -> None:
    url = jwt_server.url
    stream = httpx.get(f"{url}/sse", headers=bearer(sub, admin=True), timeout=5)
    assert error_of(stream) == (401, "reserved_identity")
    body = {"type": "text", "payload": "x", "topic": "a.b"}
    api = httpx.post(f"{url}/api/messages", json=body, headers=bearer(sub, admin=True))
    assert error_of(api) == (401, "reserved_identity")
    tasks = httpx.get(f"{url}/api/tasks", headers=bearer(sub, admin=True))
    assert error_of(tasks) == (401, "reserved_identity")


@pytest.mark.parametrize("name", RESERVED)
def test_a_reserved_client_id_is_refused_under_auth_none(open_server: Server, name: str) -> None:
    url = open_server.url
    assert error_of(httpx.get(f"{url}/sse?clientId={name}", timeout=5)) == (400, "invalid_client_id")
    body = {"type": "text", "payload": "x", "topic": "a.b"}
    by_header = httpx.post(f"{url}/api/messages", json=body, headers={"X-Client-Id": name})
    assert error_of(by_header) == (400, "invalid_client_id")
    by_query = httpx.post(f"{url}/api/messages?clientId={name}", json=body)
    assert error_of(by_query) == (400, "invalid_client_id")
    by_source = httpx.post(f"{url}/api/messages", json={**body, "source": name})
    assert error_of(by_source) == (400, "invalid_client_id")
    assert httpx.post(f"{url}/api/messages", json=body).status_code == 202  # nobody named: `anonymous`, as before


# -- 4. CORS: `*` is a literal `*`, never credentials ---------------------------------------------------------------


def test_cors_wildcard_never_reflects_an_origin_with_credentials(tmp_path: Path) -> None:
    with running_server(tmp_path, env={"SSE_FAST_CORS_ORIGINS": "*"}) as srv:
        origin = {"Origin": "https://evil.example"}
        for answer in (
            httpx.get(f"{srv.url}/healthz", headers=origin),
            httpx.options(f"{srv.url}/api/messages", headers={**origin, "Access-Control-Request-Method": "POST"}),
            httpx.post(f"{srv.url}/api/messages", content=b"{", headers={**origin, **JSON}),
        ):
            assert answer.headers["access-control-allow-origin"] == "*"
            assert "access-control-allow-credentials" not in answer.headers
        refused = httpx.post(f"{srv.url}/api/messages", content=b"{", headers={**origin, **JSON})
        assert error_of(refused) == (400, "malformed_json")


def test_cors_named_origins_are_reflected_with_credentials(tmp_path: Path) -> None:
    with running_server(tmp_path, env={"SSE_FAST_CORS_ORIGINS": "https://app.example"}) as srv:
        good = httpx.get(f"{srv.url}/healthz", headers={"Origin": "https://app.example"})
        assert good.headers["access-control-allow-origin"] == "https://app.example"
        assert good.headers["access-control-allow-credentials"] == "true"
        assert good.headers["vary"] == "Origin"
        bad = httpx.get(f"{srv.url}/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in bad.headers
        assert "access-control-allow-credentials" not in bad.headers


# -- 5. a command has no topic ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/commands", "/api/messages"])
def test_a_command_with_a_topic_is_refused_not_run(open_server: Server, path: str) -> None:
    url = open_server.url
    # `sync` would answer 200 with the caller's tasks: the topic used to be dropped and the command run.
    command = {"type": "command", "topic": "jobs.run", "payload": {"commandId": "c-1", "action": "sync"}}
    answer = httpx.post(f"{url}{path}", json=command, headers={"X-Client-Id": "carol"})
    assert error_of(answer) == (422, "topic_not_allowed")
    assert answer.json()["detail"] == {"path": "$.topic"}
    untopical = httpx.post(f"{url}{path}", json={**command, "topic": None}, headers={"X-Client-Id": "carol"})
    assert untopical.status_code == 200, untopical.text


# -- 6. every delivered envelope carries its priority -------------------------------------------------------------


async def test_every_delivered_envelope_carries_priority_even_normal(open_server: Server) -> None:
    url = open_server.url
    async with open_stream(url, client_id="dora", topics="news.*") as dora:
        await dora.wait_for(lambda s: bool(s.system("connect")))
        sent = [
            ("/api/direct/dora", {"type": "text", "payload": "normal"}),
            ("/api/messages", {"type": "text", "topic": "news.a", "payload": "default"}),
            ("/api/messages", {"type": "text", "target": "dora", "priority": 1, "payload": "explicit"}),
            ("/api/messages", {"type": "text", "target": "dora", "priority": 3, "payload": "critical"}),
            ("/api/broadcast", {"message": {"type": "text", "payload": "everyone"}}),
        ]
        for path, body in sent:
            assert httpx.post(f"{url}{path}", json=body).status_code == 202
        got = await dora.count("text", len(sent))
        assert [e["priority"] for e in got] == [1, 1, 1, 3, 1]
        assert all("requireAck" not in e and "ephemeral" not in e for e in got), "other defaults stay out"
        assert all("priority" in e for e in dora.envelopes())
