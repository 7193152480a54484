"""/openapi.json of a real server is valid OpenAPI 3.1 and says what every operation answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator

from _servers import Server, running_server

pytestmark = pytest.mark.e2e

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
ERROR_REF = "#/components/schemas/ErrorBody"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("openapi")) as srv:
        yield srv


@pytest.fixture(scope="module")
def document(server: Server) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    doc: dict[str, Any] = response.json()
    return doc


def operations(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield f"{method.upper()} {path}", item[method]


def json_schema(response: dict[str, Any]) -> Any:
    return response.get("content", {}).get("application/json", {}).get("schema")


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in OpenAPIV31SpecValidator(document).iter_errors()]
    assert errors == []


def test_every_operation_has_a_success_and_an_error_schema(document: dict[str, Any]) -> None:
    ops = dict(operations(document))
    # 17, tickets, /sdk/{file}, /admin, /admin/{file}, /api/admin/recent, /api/presence, /api/subscriptions
    assert len(ops) == 24, sorted(ops)
    for name, op in ops.items():
        responses = op["responses"]
        success = [s for s in responses if s.startswith("2")]
        assert success, f"{name} lists no success response"
        for status in success:
            assert responses[status].get("content"), f"{name} {status} has no body schema"
        errors = {s: r for s, r in responses.items() if s == "default" or s[0] in "45"}
        assert any(json_schema(r) == {"$ref": ERROR_REF} for r in errors.values()), f"{name}: no error schema"
        for status, response in errors.items():
            if status.startswith("4"):  # every 4xx is the error body; readyz's 503 is its own answer
                assert json_schema(response) == {"$ref": ERROR_REF}, f"{name} {status}"


def test_every_operation_id_names_its_handler_once(document: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, op in operations(document)]
    assert len(ids) == len(set(ids))
    assert {"stream", "publish", "healthz", "cancel_task"} <= set(ids)


def test_the_stream_lists_its_parameters_and_event_stream(document: dict[str, Any]) -> None:
    sse = document["paths"]["/sse"]["get"]
    params = {(p["in"], p["name"]) for p in sse["parameters"]}
    assert {("query", n) for n in ("clientId", "topics", "lastEventId", "token")} <= params
    assert {("header", "Last-Event-ID"), ("header", "Authorization")} <= params
    # The stream takes its identity from the clientId query or the token, never from X-Client-Id.
    assert ("header", "X-Client-Id") not in params
    assert "text/event-stream" in sse["responses"]["200"]["content"]
    assert "Retry-After" in sse["responses"]["503"]["headers"]
    assert sse["security"] == [{"bearerAuth": []}, {}]


def test_security_schemes_are_declared_and_applied(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == schemes["bearerAuth"] | {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert schemes["apiKeyAuth"] == schemes["apiKeyAuth"] | {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert document["security"] == [{"bearerAuth": []}, {"apiKeyAuth": []}, {}]
    publish = document["paths"]["/api/messages"]["post"]
    assert "security" not in publish  # the document's: a token, an API key, or anonymous with SSE_FAST_AUTH=none
    assert ("header", "X-Client-Id") in {(p["in"], p["name"]) for p in publish["parameters"]}
    assert document["paths"]["/healthz"]["get"]["security"] == []


def test_the_answers_are_the_server_types(document: dict[str, Any]) -> None:
    paths = document["paths"]
    schemas = document["components"]["schemas"]
    assert json_schema(paths["/healthz"]["get"]["responses"]["200"]) == {"$ref": "#/components/schemas/HealthAnswer"}
    assert json_schema(paths["/api/ack"]["post"]["responses"]["200"]) == {"$ref": "#/components/schemas/AckAnswer"}
    direct = paths["/api/direct/{clientId}"]["post"]["responses"]
    assert json_schema(direct["200"]) == {"$ref": "#/components/schemas/DuplicateAnswer"}
    assert set(schemas["ErrorBody"]["required"]) == {"error", "code"}
    assert set(schemas["DuplicateAnswer"]["properties"]) == {"success", "messageId", "duplicate", "delivered"}


def test_the_answers_match_the_document(server: Server, document: dict[str, Any]) -> None:
    """A few live answers have exactly the keys their schema names."""
    schemas = document["components"]["schemas"]

    def keys(name: str) -> set[str]:
        return set(schemas[name]["properties"])

    assert set(httpx.get(f"{server.url}/healthz").json()) == keys("HealthAnswer")
    assert set(httpx.get(f"{server.url}/readyz").json()) == keys("ReadyAnswer")
    body = {"id": "openapi-1", "type": "json", "payload": 1, "topic": "t.x"}
    first = httpx.post(f"{server.url}/api/messages", json=body, headers={"X-Client-Id": "doc"})
    # `replicated` only with SSE_FAST_REDIS_WAIT_REPLICAS (Redis): tests/test_redis_sentinel.py
    assert (first.status_code, set(first.json())) == (202, keys("PublishAnswer") - {"duplicate", "replicated"})
    again = httpx.post(f"{server.url}/api/messages", json=body, headers={"X-Client-Id": "doc"})
    assert (again.status_code, set(again.json())) == (200, keys("DuplicateAnswer"))
    refused = httpx.get(f"{server.url}/api/messages/nope")
    assert (refused.status_code, set(refused.json())) == (404, {"error", "code"})
    ticket = httpx.post(f"{server.url}/api/tickets", headers={"X-Client-Id": "doc"})
    assert (ticket.status_code, set(ticket.json())) == (200, keys("TicketAnswer"))
    sdk = document["paths"]["/sdk/{file}"]["get"]
    assert (sdk["security"], list(sdk["responses"]["200"]["content"])) == ([], ["text/javascript"])


def endpoint_rows(document: dict[str, Any]) -> list[str]:
    """The README's endpoint reference as /openapi.json says it: one row per operation, in the document's order."""
    rows = []
    for name, op in operations(document):
        method, path = name.split(" ", 1)
        who = "anyone" if op.get("security", document["security"]) == [] else "the caller's identity"
        rows.append(f"| `{method}` | `{path}` | {op['summary']} | {who} |")
    return rows


def test_the_readme_endpoint_reference_is_the_document(document: dict[str, Any]) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8").splitlines()
    start = readme.index("<!-- endpoint reference: tests/test_openapi.py checks it against /openapi.json -->")
    table = []
    for line in readme[start + 3 :]:  # the marker, the header row and the rule
        if not line.startswith("|"):
            break
        table.append(line)
    assert table == endpoint_rows(document), "\n".join(endpoint_rows(document))
