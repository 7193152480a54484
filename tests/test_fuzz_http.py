"""The HTTP layer under random input (issue 14, item 1): random bodies, headers and query strings against a real
server. Whatever arrives, the answer is never a 5xx, and every error is JSON ``{"error", "code", "detail"}``.

Bounded by ``SSE_FAST_FUZZ_EXAMPLES`` (default 150 requests per test), so that it fits ``make test``.
"""

from __future__ import annotations

import json
import os
import socket
import string
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _servers import Server, running_server

pytestmark = pytest.mark.e2e

EXAMPLES = int(os.environ.get("SSE_FAST_FUZZ_EXAMPLES", "150"))
API_KEY = "fuzz-api-key-0123456789"

ROUTES = [
    ("GET", "/sse"),
    ("GET", "/api/admin/recent"),
    ("GET", "/api/connections"),
    ("GET", "/api/messages/{id}"),
    ("GET", "/api/tasks"),
    ("GET", "/api/tasks/{id}"),
    ("GET", "/metrics"),
    ("GET", "/admin/{id}"),
    ("GET", "/sdk/{id}"),
    ("POST", "/api/ack"),
    ("POST", "/api/broadcast"),
    ("POST", "/api/commands"),
    ("POST", "/api/direct/{id}"),
    ("POST", "/api/messages"),
    ("POST", "/api/tasks/{id}/cancel"),
    ("POST", "/api/tasks/{id}/pause"),
    ("POST", "/api/tasks/{id}/resume"),
    ("POST", "/api/tickets"),
    ("PUT", "/api/messages"),
    ("DELETE", "/api/tasks/{id}"),
    ("GET", "/{id}"),
]

FIELDS = ["id", "type", "priority", "timestamp", "source", "target", "topic", "payload", "metadata", "requireAck"]
FIELDS += ["correlationId", "ephemeral", "message", "excludeClientId", "messageId", "messageIds", "command", "task"]
FIELDS += ["params", "commandId", "timeout", "clientId", "topics", "ticket", "x"]
QUERY_KEYS = ["clientId", "topics", "ticket", "token", "limit", "lastEventId", "since", "x", "status"]
HEADERS = ["x-client-id", "x-api-key", "authorization", "last-event-id", "content-type", "origin", "accept", "x-y"]

text = st.text(max_size=40) | st.sampled_from(["alice", "news.*", "a.>", "", "0", "-1", "ep-1", "*", "\x00", "é"])
json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | text, inner, max_size=6),
    max_leaves=12,
)
envelope = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "json", "system", "command", "bad type", ""]), "payload": json_value},
    optional={name: json_value for name in FIELDS if name not in ("type", "payload")},
)
body = (
    envelope.map(lambda v: json.dumps(v).encode())
    | json_value.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=200)
    | st.sampled_from([b"", b"{", b"[]", b"null", b'{"type":"text","payload":"' + b"x" * 5000 + b'"}'])
)
# h11 refuses to send a value with surrounding whitespace or control characters: what it sends is what servers see.
header_value = st.text(string.ascii_letters + string.digits + string.punctuation + " ", max_size=40).map(str.strip)
header_value |= st.sampled_from([API_KEY, "Bearer x", "ep-1", "application/json", "text/plain"])
headers = st.dictionaries(st.sampled_from(HEADERS), header_value, max_size=4)
query = st.dictionaries(st.sampled_from(QUERY_KEYS) | st.text(max_size=8), text, max_size=4)
path_part = st.text(max_size=20).filter(lambda s: "/" not in s and "?" not in s and "#" not in s) | st.just("..")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"SSE_FAST_API_KEYS": API_KEY, "SSE_FAST_PUBLISH_RATE": "0", "SSE_FAST_PUBLISH_BYTES_RATE": "0"}
    with running_server(tmp_path_factory.mktemp("fuzz-http"), env=env) as server:
        yield server


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def check(response: httpx.Response, body: bytes, request: str) -> None:
    """No 5xx, and an error is JSON as docs/protocol.md section 7 has it: ``error`` and ``code`` strings, and
    ``detail`` when there is more to say (left out when null), nothing else."""
    assert response.status_code < 500, f"{request} -> {response.status_code}: {body[:500]!r}"
    if response.status_code >= 400:
        document: Any = json.loads(body)
        assert isinstance(document, dict), (request, body[:500])
        assert {"error", "code"} <= document.keys() <= {"error", "code", "detail"}, (request, body[:500])
        assert isinstance(document["error"], str), (request, body[:500])
        assert isinstance(document["code"], str), (request, body[:500])


def send(client: httpx.Client, method: str, path: str, **kwargs: Any) -> None:
    """One request; a stream that opens (200 on /sse) is closed at once."""
    request = client.build_request(method, path, **kwargs)
    response = client.send(request, stream=True)
    try:
        content = b"" if response.status_code == 200 else response.read()
        check(
            response,
            content,
            f"{method} {request.url} {kwargs.get('headers')} {(kwargs.get('content') or b'')[:200]!r}",
        )
    finally:
        response.close()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ROUTES), part=path_part, body=body, headers=headers, query=query)
def test_random_requests_never_get_a_5xx_and_errors_are_json(
    client: httpx.Client, route: tuple[str, str], part: str, body: bytes, headers: dict[str, str], query: dict[str, str]
) -> None:
    method, template = route
    path = template.replace("{id}", urllib.parse.quote(part, safe="") if part else "x")
    if headers.get("content-type") is None and method == "POST":
        headers = {**headers, "content-type": "application/json"}
    send(client, method, path, content=body if method != "GET" else None, headers=headers, params=query)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    target=st.sampled_from(["/api/messages", "/api/direct/bob", "/api/broadcast", "/api/commands", "/api/ack"]),
    body=envelope,
    trusted=st.booleans(),
)
def test_random_envelopes_are_accepted_or_refused_as_json(
    client: httpx.Client, target: str, body: dict[str, Any], trusted: bool
) -> None:
    """Envelope validation: structured, mostly-valid envelopes reach deep into the checks."""
    if target == "/api/broadcast":
        body = {"message": body}
    headers = {"x-api-key": API_KEY} if trusted else {"x-client-id": "alice"}
    send(client, "POST", target, json=body, headers=headers)


def test_raw_headers_httpx_will_not_send_are_not_a_5xx(server: Server) -> None:
    """Headers httpx will not send: a non-UTF-8 header value and a duplicate Last-Event-ID."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"GET /sse?clientId=alice HTTP/1.1\r\nHost: x\r\nLast-Event-ID: \xff\xfe\r\nLast-Event-ID: a-1\r\n"
            b"X-Client-Id: \xc3\r\nConnection: close\r\n\r\n"
        )
        head = sock.recv(65536)
    status = int(head.split(b" ", 2)[1])
    assert status < 500, head[:300]
