"""End to end: identity, grants and hostile input against a real server."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from _servers import Server, open_stream, running_server

pytestmark = pytest.mark.e2e

SECRET = "s" * 40
API_KEY = "k" * 24


def token(sub: str, **claims: Any) -> str:
    claims.setdefault("exp", int(time.time()) + 600)
    return jwt.encode({"sub": sub, **claims}, SECRET, algorithm="HS256")


def bearer(sub: str, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(sub, **claims)}"}


@pytest.fixture(scope="module")
def jwt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_SECRET": SECRET, "SSE_FAST_API_KEYS": API_KEY}
    with running_server(tmp_path_factory.mktemp("jwt"), env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("open"), env={"SSE_FAST_MAX_BODY": "4096"}) as srv:
        yield srv


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) <= {"error", "code", "detail"}
    assert isinstance(body["error"], str)
    assert response.headers["content-type"].startswith("application/json")
    return response.status_code, body["code"]


# -- identity ----------------------------------------------------------------------------------------------------


async def test_the_token_subject_is_the_client_and_the_server_sets_the_source(jwt_server: Server) -> None:
    url = jwt_server.url
    async with open_stream(url, client_id="", headers=bearer("alice", topics=["news.*"])) as alice:
        await alice.wait_for(lambda s: bool(s.system("connect")))
        assert alice.system("connect")[0]["payload"]["detail"]["clientId"] == "alice"
        body = {"type": "text", "payload": "hi", "target": "alice", "source": "mallory"}
        sent = httpx.post(f"{url}/api/messages", json=body, headers=bearer("bob", direct=True))
        assert sent.status_code == 202
        await alice.count("text", 1)
        assert alice.envelopes("text")[0]["source"] == "bob", "a client can never choose its source"
        api = httpx.post(
            f"{url}/api/messages",
            json={"type": "text", "payload": "x", "target": "alice"},
            headers={"X-API-Key": API_KEY},
        )
        assert api.status_code == 202
        await alice.count("text", 2)
        assert alice.envelopes("text")[1]["source"] == "server"


async def test_stream_refusals(jwt_server: Server) -> None:
    url = jwt_server.url
    cases = [
        ({}, "", 401, "missing_token"),
        ({"Authorization": "Bearer not.a.jwt"}, "", 401, "invalid_token"),
        (bearer("alice", exp=int(time.time()) - 60), "", 401, "token_expired"),
        (bearer("alice", nbf=int(time.time()) + 600), "", 401, "invalid_token"),
        (bearer("alice"), "clientId=bob", 403, "client_id_mismatch"),
        (bearer("alice", topics=["news.*"]), "topics=secret.x", 403, "topic_not_granted"),
        (bearer("alice", topics=["news.*"]), "topics=news.>", 403, "topic_not_granted"),
    ]
    for headers, query, status, code in cases:
        response = httpx.get(f"{url}/sse?{query}", headers=headers)
        assert error_of(response) == (status, code), (headers, query)


def test_query_tokens_work_for_browsers_and_are_never_logged(jwt_server: Server) -> None:
    tok = token("browser", topics=["a"])
    with httpx.stream("GET", f"{jwt_server.url}/sse?token={tok}&topics=a") as response:
        assert response.status_code == 200
        first = next(response.iter_raw())
        assert b"retry:" in first
    assert tok not in jwt_server.log()


def test_publish_grants_are_enforced(jwt_server: Server) -> None:
    url = jwt_server.url

    def send(headers: dict[str, str], **envelope: Any) -> httpx.Response:
        return httpx.post(f"{url}/api/messages", json={"type": "json", "payload": 1, **envelope}, headers=headers)

    plain = bearer("carol", publish=["chat.*"])
    assert send(plain, topic="chat.room").status_code == 202
    assert error_of(send(plain, topic="ops.deploy")) == (403, "topic_not_granted")
    assert error_of(send(plain, target="dave")) == (403, "direct_not_granted")
    assert send(plain, target="carol").status_code == 202, "a client may always message itself"
    assert error_of(send(plain)) == (403, "admin_required")
    broadcast = httpx.post(f"{url}/api/broadcast", json={"message": {"type": "json", "payload": 1}}, headers=plain)
    assert error_of(broadcast) == (403, "admin_required")
    assert send(bearer("root", admin=True)).status_code == 202
    assert error_of(httpx.get(f"{url}/api/connections", headers=plain)) == (403, "admin_required")
    assert httpx.get(f"{url}/api/connections", headers={"X-API-Key": API_KEY}).status_code == 200
    assert error_of(send({"X-API-Key": "w" * 24})) == (401, "invalid_api_key")


def test_another_clients_message_status_is_unknown(jwt_server: Server) -> None:
    """As for another client's task: what belongs to another client is unknown to the caller (404, no oracle)."""
    url = jwt_server.url
    body = {"type": "json", "payload": 1, "target": "alice", "requireAck": True}
    sent = httpx.post(f"{url}/api/messages", json=body, headers=bearer("alice"))
    assert sent.status_code == 202, sent.text
    status_url = f"{url}/api/messages/{sent.json()['messageId']}"
    assert httpx.get(status_url, headers=bearer("alice")).json()["status"] in ("pending", "delivered")
    assert error_of(httpx.get(status_url, headers=bearer("mallory"))) == (404, "unknown_message")
    assert httpx.get(status_url, headers=bearer("root", admin=True)).status_code == 200


# -- hostile input -----------------------------------------------------------------------------------------------


BAD_BODIES: list[tuple[Any, int, str]] = [
    ({"type": "text\nevent: x", "payload": 1}, 422, "invalid_message"),
    ({"type": "json", "payload": 1, "id": "a\r\nid: 9"}, 422, "invalid_message"),
    ({"type": "json", "payload": 1, "id": "a\u0000b"}, 422, "invalid_message"),
    ({"type": "json", "payload": 1, "target": "bob\ndata: x"}, 400, "invalid_client_id"),
    ({"type": "json", "payload": 1, "topic": "a\nb"}, 422, "invalid_message"),
    ({"type": "json", "payload": 1, "correlationId": "x\ny"}, 422, "invalid_message"),
    ({"type": "json", "payload": 1, "bogus": True}, 422, "invalid_message"),
    ({"type": "json", "payload": 1, "priority": 4}, 422, "invalid_message"),
    ({"type": "json", "payload": 1, "priority": -1}, 422, "invalid_message"),
    ({"type": "json", "payload": 1, "id": "x" * 129}, 422, "invalid_message"),
    ({"type": "not a type!", "payload": 1}, 422, "invalid_message"),
    ({"type": "json", "payload": 1, "target": "a", "topic": "b"}, 422, "target_and_topic"),
    ({"type": "json"}, 422, "invalid_message"),
    ([1, 2, 3], 422, "invalid_message"),
]


def test_bad_bodies_get_clear_json_errors(server: Server) -> None:
    for body, status, code in BAD_BODIES:
        response = httpx.post(f"{server.url}/api/messages", json=body)
        assert error_of(response) == (status, code), body


def test_bad_requests_of_every_kind(server: Server) -> None:
    url = server.url
    json_type = {"content-type": "application/json"}
    assert error_of(httpx.post(f"{url}/api/messages", content=b"{not json", headers=json_type)) == (
        400,
        "malformed_json",
    )
    assert error_of(httpx.post(f"{url}/api/messages", content=b"", headers=json_type)) == (400, "empty_body")
    assert error_of(httpx.post(f"{url}/api/messages", content=b"{}", headers={"content-type": "text/plain"}))[0] == 415
    ok_charset = {"content-type": "application/json; charset=utf-8"}
    assert (
        httpx.post(f"{url}/api/messages", content=b'{"type":"json","payload":1}', headers=ok_charset).status_code == 202
    )
    big = b'{"type":"json","payload":"' + b"x" * 5000 + b'"}'
    assert error_of(httpx.post(f"{url}/api/messages", content=big, headers=json_type)) == (413, "body_too_large")

    def chunked() -> Iterator[bytes]:
        yield b'{"type":"json","payload":"'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}'

    assert error_of(httpx.post(f"{url}/api/messages", content=chunked(), headers=json_type))[0] == 413
    assert error_of(httpx.post(f"{url}/api/direct/bad%0Aid", json={"type": "json", "payload": 1})) == (
        400,
        "invalid_client_id",
    )
    direct_target = httpx.post(f"{url}/api/direct/bob", json={"type": "json", "payload": 1, "target": "eve"})
    assert error_of(direct_target) == (422, "target_not_allowed")
    assert error_of(httpx.get(f"{url}/sse?clientId=a%0Ab")) == (400, "invalid_client_id")
    assert error_of(httpx.get(f"{url}/sse?clientId=a&topics=a..b")) == (400, "invalid_topic")
    assert error_of(httpx.get(f"{url}/nowhere")) == (404, "not_found")
    wrong = httpx.get(f"{url}/api/messages")
    assert error_of(wrong) == (405, "method_not_allowed")
    assert wrong.headers["allow"] == "POST"


def test_a_body_over_the_limit_is_not_read_further(server: Server) -> None:
    """A declared Content-Length over the limit is refused at once, before the body is sent."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /api/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n"
        )
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")


def test_header_names_are_read_whatever_their_case(server: Server) -> None:
    body = b'{"type":"json","payload":1}'
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /api/messages HTTP/1.1\r\nHOST: x\r\nCONTENT-TYPE: application/json\r\n"
            b"Content-LENGTH: %d\r\nx-CLIENT-id: bad id\r\n\r\n%s" % (len(body), body)
        )
        answer = sock.recv(4096)
    # Content-Type was found (not 415), and so was X-Client-Id, whose value is refused.
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"invalid_client_id" in answer


def test_a_small_content_length_does_not_bound_a_chunked_body(server: Server) -> None:
    """A body read in one call is bounded by its Content-Length only because the server frames it by that length;
    with Transfer-Encoding as well the body is chunked, and the limit still counts what arrives (4096 here)."""
    body = b'{"type":"json","payload":"' + b"x" * 8000 + b'"}'
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /api/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
        )
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


async def test_a_barrage_of_bad_requests_hurts_nobody(server: Server) -> None:
    async with open_stream(server.url, client_id="bystander") as bystander:
        await bystander.wait_for(lambda s: bool(s.system("connect")))
        async with httpx.AsyncClient(timeout=10) as http:
            barrage = [http.post(f"{server.url}/api/messages", json=body) for body, _, _ in BAD_BODIES * 20]
            barrage += [
                http.post(
                    f"{server.url}/api/messages",
                    content=b"\xff\xfe" * 100,
                    headers={"content-type": "application/json"},
                )
                for _ in range(50)
            ]
            answers = await asyncio.gather(*barrage)
            assert all(400 <= a.status_code < 500 for a in answers)
            ok = await http.post(f"{server.url}/api/messages", json={"type": "json", "payload": "still here"})
            assert ok.status_code == 202
        await bystander.count("json", 1)
        assert [e["payload"] for e in bystander.envelopes("json")] == ["still here"]
        assert server.proc.poll() is None
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_cors_answers_only_listed_origins(tmp_path: Path) -> None:
    with running_server(tmp_path, env={"SSE_FAST_CORS_ORIGINS": "https://app.example"}) as srv:
        good = httpx.get(f"{srv.url}/healthz", headers={"Origin": "https://app.example"})
        assert good.headers["access-control-allow-origin"] == "https://app.example"
        bad = httpx.get(f"{srv.url}/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in bad.headers
        preflight = httpx.options(f"{srv.url}/api/messages", headers={"Origin": "https://app.example"})
        assert preflight.status_code == 204
        assert "POST" in preflight.headers["access-control-allow-methods"]


def test_a_message_that_could_never_fit_a_queue_is_refused_not_delivered(tmp_path: Path) -> None:
    env = {"SSE_FAST_QUEUE_BYTES": "65536", "SSE_FAST_MAX_BODY": "65536"}
    with running_server(tmp_path, env=env) as srv:
        body = {"type": "json", "payload": "x" * 65480}  # fits the body limit; not once the server stamps it
        assert error_of(httpx.post(f"{srv.url}/api/messages", json=body)) == (413, "message_too_large")
        assert httpx.post(f"{srv.url}/api/messages", json={"type": "json", "payload": "x" * 60000}).status_code == 202
