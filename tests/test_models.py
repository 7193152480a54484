"""sse_fast.models: the wire types against every rule of PROTOCOL.md sections 1, 3, 4 and 7."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import msgspec
import pytest

from sse_fast import models

Envelope = models.Envelope
ValidationFailure = models.ValidationFailure

ALL_ID_CHARS = "Az09_.:@/+=-"


def body(**fields: Any) -> bytes:
    return json.dumps({"type": "text", "payload": "hi"} | fields).encode()


def failure(data: bytes, *, model: Any = Envelope, direct: bool = False) -> Any:
    def run() -> Any:
        return models.decode_envelope(data, direct=direct) if model is Envelope else models.decode(data, model)

    with pytest.raises(ValidationFailure) as info:
        run()
    return info.value


# ---------------------------------------------------------------------------------------------------------------
# The protocol's patterns
# ---------------------------------------------------------------------------------------------------------------


def test_patterns_are_the_protocols() -> None:
    assert models.ID_PATTERN == r"^[A-Za-z0-9_.:@/+=-]{1,128}$"
    assert models.CLIENT_ID_PATTERN == r"^[A-Za-z0-9_.:@-]{1,128}$"
    assert models.TYPE_PATTERN == r"^[A-Za-z0-9_.:-]{1,64}$"
    assert models.BUILTIN_TYPES == ("text", "json", "system", "command", "heartbeat", "ack", "error", "progress")


# ---------------------------------------------------------------------------------------------------------------
# Valid envelopes
# ---------------------------------------------------------------------------------------------------------------


def test_minimal_envelope_has_the_defaults() -> None:
    e = models.decode_envelope(b'{"type": "text", "payload": "hi"}')
    assert (e.id, e.type, e.priority, e.payload, e.target, e.topic) == (None, "text", 1, "hi", None, None)
    assert (e.require_ack, e.ephemeral, e.metadata, e.correlation_id) == (False, False, None, None)
    assert (e.timestamp, e.source) == (None, None)


def test_full_envelope_round_trips_in_camel_case() -> None:
    wire = {
        "id": "m-1",
        "type": "json",
        "priority": 3,
        "timestamp": 1700000000000,
        "source": "alice",
        "target": "bob@example.com",
        "payload": {"nested": [1, 2.5, None, True]},
        "metadata": {"k": "v"},
        "requireAck": True,
        "correlationId": "c-1",
    }
    e = models.decode_envelope(json.dumps(wire).encode())
    assert (e.require_ack, e.correlation_id, e.target) == (True, "c-1", "bob@example.com")
    assert json.loads(models.encoder.encode(e)) == wire


def test_defaults_are_left_out_on_the_wire() -> None:
    e = Envelope(type="text", payload=None)
    assert models.encoder.encode(e) == b'{"type":"text","payload":null}'


@pytest.mark.parametrize("payload", [None, "hi", 1, 1.5, True, [1, "a"], {"a": {"b": []}}])
def test_payload_is_any_json(payload: Any) -> None:
    assert models.decode_envelope(body(payload=payload)).payload == payload


@pytest.mark.parametrize(
    "fields",
    [
        {"id": "a"},
        {"id": ALL_ID_CHARS},
        {"id": "x" * 128},
        *({"type": t} for t in models.BUILTIN_TYPES),
        {"type": "my.custom:type_1-b"},
        {"type": "t" * 64},
        *({"priority": p} for p in range(4)),
        {"target": "Az09_.:@-"},
        {"target": "c" * 128},
        {"topic": "orders"},
        {"topic": "a.b/c:d-e_f"},
        {"topic": "a." + "b" * 126},
        {"metadata": {}},
        {"correlationId": ALL_ID_CHARS},
        {"timestamp": 0},
        {"source": "anything goes here"},
    ],
)
def test_valid_envelopes(fields: dict[str, Any]) -> None:
    e = models.decode_envelope(body(**fields))
    decoded = json.loads(models.encoder.encode(e))
    for key, value in fields.items():
        assert decoded.get(key, 1 if key == "priority" else None) == value


# ---------------------------------------------------------------------------------------------------------------
# Invalid envelopes
# ---------------------------------------------------------------------------------------------------------------

INVALID = [
    ({"id": ""}, "$.id"),
    ({"id": "x" * 129}, "$.id"),
    ({"id": "has space"}, "$.id"),
    ({"id": "hash#"}, "$.id"),
    ({"id": "line\n"}, "$.id"),
    ({"id": 5}, "$.id"),
    ({"type": ""}, "$.type"),
    ({"type": "t" * 65}, "$.type"),
    ({"type": "has space"}, "$.type"),
    ({"type": "a/b"}, "$.type"),
    ({"type": "text\n"}, "$.type"),
    ({"type": None}, "$.type"),
    ({"priority": -1}, "$.priority"),
    ({"priority": 4}, "$.priority"),
    ({"priority": "1"}, "$.priority"),
    ({"priority": 1.5}, "$.priority"),
    ({"topic": ""}, "$.topic"),
    ({"topic": "a..b"}, "$.topic"),
    ({"topic": ".a"}, "$.topic"),
    ({"topic": "a."}, "$.topic"),
    ({"topic": "a.*"}, "$.topic"),
    ({"topic": "a.>"}, "$.topic"),
    ({"topic": "a b"}, "$.topic"),
    ({"topic": "a\n"}, "$.topic"),
    ({"topic": "t" * 129}, "$.topic"),
    ({"target": 7}, "$.target"),
    ({"metadata": []}, "$.metadata"),
    ({"requireAck": 1}, "$.requireAck"),
    ({"requireAck": "true"}, "$.requireAck"),
    ({"ephemeral": "yes"}, "$.ephemeral"),
    ({"correlationId": "a b"}, "$.correlationId"),
    ({"timestamp": "now"}, "$.timestamp"),
]


@pytest.mark.parametrize(("fields", "path"), INVALID)
def test_invalid_fields_are_422_with_the_path(fields: dict[str, Any], path: str) -> None:
    err = failure(body(**fields))
    assert (err.status, err.code) == (422, "invalid_message")
    assert err.detail["path"] == path
    assert err.message.startswith("invalid message: ")
    assert err.message.endswith(f" - at `{path}`")


@pytest.mark.parametrize("data", [b'{"type": "text"}', b'{"payload": 1}'])
def test_type_and_payload_are_required(data: bytes) -> None:
    err = failure(data)
    assert (err.status, err.code, err.detail["path"]) == (422, "invalid_message", "$")
    assert "missing required field" in err.message


@pytest.mark.parametrize("key", ["requireACK", "require_ack", "Target", "extra"])
def test_unknown_keys_are_422(key: str) -> None:
    err = failure(body(**{key: True}))
    assert (err.status, err.code) == (422, "invalid_message")
    assert err.detail["reason"] == f"Object contains unknown field `{key}`"


def test_target_and_topic_together_are_422() -> None:
    err = failure(body(target="bob", topic="news"))
    assert (err.status, err.code, err.detail["path"]) == (422, "target_and_topic", "$")


def test_target_and_topic_together_cannot_be_constructed_either() -> None:
    with pytest.raises(ValueError, match="exclusive"):
        Envelope(type="text", payload=1, target="bob", topic="news")


@pytest.mark.parametrize("target", ["a b", "a/b", "a+b", "", "x" * 129, "bob\n"])
def test_a_bad_target_client_id_is_400(target: str) -> None:
    err = failure(body(target=target))
    assert (err.status, err.code, err.detail["path"]) == (400, "invalid_client_id", "$.target")
    assert err.message == "invalid clientId at $.target: expected 1 to 128 letters, digits or any of _ . : @ -"


@pytest.mark.parametrize("data", [b"[]", b'"text"', b"1", b"null", b"true"])
def test_a_non_object_body_is_422(data: bytes) -> None:
    err = failure(data)
    assert (err.status, err.code, err.detail["path"]) == (422, "invalid_message", "$")


@pytest.mark.parametrize(
    "data",
    [b"", b"  \n", b"{", b"{}x", b'{"type": "t", "payload": 1} {}', b"{'a': 1}", b"\xff\xfe", b'{"type": "text",}'],
)
def test_malformed_json_is_400(data: bytes) -> None:
    err = failure(data)
    assert (err.status, err.code, err.detail) == (400, "malformed_json", None)
    assert err.message.startswith("malformed JSON: ")


def test_an_empty_body_says_so() -> None:
    assert failure(b"").message == "malformed JSON: empty body"


def test_direct_body_may_not_carry_a_target() -> None:
    err = failure(body(target="bob"), direct=True)
    assert (err.status, err.code, err.detail) == (422, "target_not_allowed", {"path": "$.target"})
    assert models.decode_envelope(body(topic="x"), direct=False).topic == "x"
    assert models.decode_envelope(body(), direct=True).target is None


def test_validation_failure_body_is_the_error_shape() -> None:
    err = failure(body(priority=9))
    assert isinstance(err, ValueError)
    assert json.loads(models.encoder.encode(err.body())) == {
        "error": "invalid message: Expected `int` <= 3 - at `$.priority`",
        "code": "invalid_message",
        "detail": {"path": "$.priority", "reason": "Expected `int` <= 3"},
    }


# ---------------------------------------------------------------------------------------------------------------
# Other request bodies
# ---------------------------------------------------------------------------------------------------------------


def test_broadcast_request() -> None:
    data = b'{"message": {"type": "text", "payload": 1}, "excludeClientId": "alice"}'
    req = models.decode(data, models.BroadcastRequest)
    assert (req.exclude_client_id, req.message.payload) == ("alice", 1)
    assert models.decode(b'{"message": {"type": "t", "payload": 1}}', models.BroadcastRequest).exclude_client_id is None


@pytest.mark.parametrize(
    ("data", "status", "code", "path"),
    [
        (b'{"message": {"type": "t", "payload": 1}, "excludeClientId": "a b"}', 400, "invalid_client_id",
         "$.excludeClientId"),
        (b'{"message": {"type": "t", "payload": 1, "target": "a", "topic": "b"}}', 422, "target_and_topic",
         "$.message"),
        (b'{"message": {"type": "t", "payload": 1, "bogus": 1}}', 422, "invalid_message", "$.message"),
        (b'{"message": {"type": "t", "payload": 1, "priority": 7}}', 422, "invalid_message", "$.message.priority"),
        (b'{"message": {"type": "t", "payload": 1, "target": "a b"}}', 400, "invalid_client_id", "$.message.target"),
        (b'{"type": "t", "payload": 1}', 422, "invalid_message", "$"),
        (b"{}", 422, "invalid_message", "$"),
    ],
)  # fmt: skip
def test_broadcast_request_errors(data: bytes, status: int, code: str, path: str) -> None:
    err = failure(data, model=models.BroadcastRequest)
    assert (err.status, err.code, err.detail["path"]) == (status, code, path)


def test_ack_request() -> None:
    ids = [f"m{i}" for i in range(models.MAX_ACK_IDS)]
    assert models.decode(json.dumps({"messageIds": ids}).encode(), models.AckRequest).message_ids == ids


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ([], "$.messageIds"),
        ([f"m{i}" for i in range(1001)], "$.messageIds"),
        (["ok", "not ok"], "$.messageIds[1]"),
        ("m1", "$.messageIds"),
    ],
)
def test_ack_request_errors(value: Any, path: str) -> None:
    err = failure(json.dumps({"messageIds": value}).encode(), model=models.AckRequest)
    assert (err.status, err.code, err.detail["path"]) == (422, "invalid_message", path)


@pytest.mark.parametrize(
    "payload",
    [
        {"commandId": "c1", "action": "execute", "task": "sleep", "params": {"seconds": 1}, "timeout": 5000},
        {"commandId": "c1", "action": "cancel", "taskId": "t1"},
        {"commandId": "c1", "action": "pause", "taskId": "t1"},
        {"commandId": "c1", "action": "resume", "taskId": "t1"},
        {"commandId": "c1", "action": "query", "taskId": "t1", "requireAck": True},
        {"commandId": "c1", "action": "sync"},
    ],
)
def test_command_payloads(payload: dict[str, Any]) -> None:
    command = models.convert(payload, models.CommandPayload)
    assert command.action == payload["action"]
    assert json.loads(models.encoder.encode(command)) == payload


@pytest.mark.parametrize(
    ("payload", "path", "reason"),
    [
        ({"commandId": "c1", "action": "explode"}, "$.payload.action", "Invalid enum value 'explode'"),
        ({"commandId": "c1", "action": "execute"}, "$.payload", "action `execute` needs `task`"),
        ({"commandId": "c1", "action": "cancel"}, "$.payload", "action `cancel` needs `taskId`"),
        ({"commandId": "c1", "action": "query"}, "$.payload", "action `query` needs `taskId`"),
        ({"commandId": "c1", "action": "sync", "timeout": 0}, "$.payload.timeout", "Expected `int` >= 1"),
        ({"commandId": "c1", "action": "sync", "tiemout": 5}, "$.payload", "Object contains unknown field `tiemout`"),
        ({"action": "sync"}, "$.payload", "Object missing required field `commandId`"),
        ({"commandId": "c 1", "action": "sync"}, "$.payload.commandId", None),
        ({"commandId": "c1", "action": "execute", "task": "bad task"}, "$.payload.task", None),
        ("sync", "$.payload", "Expected `object`, got `str`"),
    ],
)
def test_command_payload_errors(payload: Any, path: str, reason: str | None) -> None:
    with pytest.raises(ValidationFailure) as info:
        models.convert(payload, models.CommandPayload)
    err = info.value
    assert (err.status, err.code, err.detail["path"]) == (422, "invalid_message", path)
    if reason is not None:
        assert err.detail["reason"] == reason


# ---------------------------------------------------------------------------------------------------------------
# Answers and server payloads
# ---------------------------------------------------------------------------------------------------------------


def encoded(value: Any) -> Any:
    return json.loads(models.encoder.encode(value))


def test_publish_answer_shows_duplicate_only_when_set() -> None:
    assert encoded(models.PublishAnswer(message_id="m", delivered=2, queued=True)) == {
        "success": True,
        "messageId": "m",
        "delivered": 2,
        "queued": True,
    }
    duplicate = models.PublishAnswer(message_id="m", delivered=0, duplicate=True)
    assert encoded(duplicate) == {"success": True, "messageId": "m", "delivered": 0, "queued": False, "duplicate": True}


def test_the_server_answers_a_repeat_with_the_keys_it_always_had() -> None:
    """The dedupe answer of a publish and of an execute: the same keys, in the same order, as the hand-built dicts."""
    assert models.encoder.encode(models.DuplicateAnswer(message_id="m")) == (
        b'{"success":true,"messageId":"m","duplicate":true,"delivered":0}'
    )
    assert models.encoder.encode(models.CommandAnswer(task_id="t", status="running", duplicate=True)) == (
        b'{"success":true,"taskId":"t","status":"running","duplicate":true}'
    )
    # What the client reads it as.
    read = msgspec.json.decode(models.encoder.encode(models.DuplicateAnswer(message_id="m")), type=models.PublishAnswer)
    assert (read.message_id, read.duplicate, read.delivered, read.queued) == ("m", True, 0, False)


def test_operations_answers() -> None:
    assert models.encoder.encode(models.HealthAnswer()) == b'{"status":"ok"}'
    ready = models.ReadyAnswer(status="unavailable", broker="RedisBroker")
    assert models.encoder.encode(ready) == b'{"status":"unavailable","broker":"RedisBroker"}'


def test_connect_detail_leaves_out_a_missing_reason() -> None:
    detail = models.ConnectDetail(client_id="a", connection_id="n.1", resumed=True, missed=0, server_time=5)
    assert encoded(detail) == {"clientId": "a", "connectionId": "n.1", "resumed": True, "missed": 0, "serverTime": 5}
    gap = msgspec.structs.replace(detail, resumed=False, reason="expired")
    assert encoded(gap)["reason"] == "expired"


def test_answers_are_camel_case() -> None:
    assert encoded(models.BroadcastAnswer(sent_count=3, message_id="m")) == {
        "success": True,
        "sentCount": 3,
        "messageId": "m",
    }
    assert encoded(models.AckAnswer(acked=2)) == {"acked": 2}
    assert encoded(models.CommandAnswer(task_id="t", status="pending")) == {
        "success": True,
        "taskId": "t",
        "status": "pending",
    }
    assert encoded(models.MessageStatus(status="acked", acked_by=["bob"])) == {"status": "acked", "ackedBy": ["bob"]}
    # A null detail is left out, as the server has always answered it.
    assert encoded(models.ErrorBody(error="nope", code="not_found")) == {"error": "nope", "code": "not_found"}
    assert encoded(models.ErrorBody(error="no", code="c", detail={})) == {"error": "no", "code": "c", "detail": {}}
    assert encoded(models.SystemPayload(event="maintenance")) == {"event": "maintenance", "detail": None}
    assert encoded(models.HeartbeatPayload(server_time=5)) == {"serverTime": 5}


def test_connection_info_keys() -> None:
    info = models.ConnectionInfo(
        client_id="a",
        connection_id="n1-7",
        topics=["x"],
        connected_at=1,
        last_active_at=2,
        queued_frames=3,
        dropped_frames=4,
    )
    assert list(encoded(info)) == [
        "clientId",
        "connectionId",
        "topics",
        "connectedAt",
        "lastActiveAt",
        "queuedFrames",
        "droppedFrames",
        "queuedBytes",
        "node",
    ]


def test_connect_detail_and_progress_leave_out_what_is_unset() -> None:
    detail = models.ConnectDetail(client_id="a", connection_id="c", resumed=False, missed=0, server_time=9)
    assert encoded(detail) == {"clientId": "a", "connectionId": "c", "resumed": False, "missed": 0, "serverTime": 9}
    expired = msgspec.structs.replace(detail, reason="expired")
    assert encoded(expired)["reason"] == "expired"
    assert encoded(models.ProgressPayload(task_id="t", progress=50.0)) == {"taskId": "t", "progress": 50.0}


def test_task_record_round_trip() -> None:
    record = models.TaskRecord(
        task_id="t1",
        command_id="c1",
        client_id="alice",
        task="sleep",
        params={"seconds": 1},
        priority=2,
        status="completed",
        progress=100.0,
        attempts=1,
        created_at=1,
        started_at=2,
        completed_at=3,
        result={"ok": True},
    )
    wire = encoded(models.TasksAnswer(tasks=[record]))
    assert wire["tasks"][0]["taskId"] == "t1"
    assert wire["tasks"][0]["completedAt"] == 3
    assert models.decode(json.dumps(wire).encode(), models.TasksAnswer).tasks == [record]
    bad = json.dumps(wire | {"tasks": [wire["tasks"][0] | {"status": "done"}]}).encode()
    assert failure(bad, model=models.TasksAnswer).detail["path"] == "$.tasks[0].status"


# ---------------------------------------------------------------------------------------------------------------
# Message ids
# ---------------------------------------------------------------------------------------------------------------


def test_message_ids_match_the_id_pattern_and_are_unique_and_increasing() -> None:
    ids = [models.new_message_id() for _ in range(10_000)]
    assert all(re.fullmatch(models.ID_PATTERN[1:-1], i) and len(i) == 26 for i in ids)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_message_ids_start_with_the_time() -> None:
    before = time.time_ns() // 1_000_000
    first = models.new_message_id()
    after = time.time_ns() // 1_000_000
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    ms = 0
    for char in first[:10]:
        ms = ms * 32 + alphabet.index(char)
    assert before <= ms <= after + 1  # +1: ids within one ms may borrow the next one only on counter overflow


def test_message_ids_keep_increasing_when_the_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    first = models.new_message_id()
    monkeypatch.setattr(models.time, "time_ns", lambda: 1_000_000_000 * 1_000_000)  # 1970 + 11 days
    later = [models.new_message_id() for _ in range(3)]
    assert [first, *later] == sorted({first, *later})


# ---------------------------------------------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------------------------------------------


def test_envelope_schema_carries_the_constraints() -> None:
    schema = msgspec.json.schema(Envelope)["$defs"]["Envelope"]
    props = schema["properties"]
    assert schema["required"] == ["type", "payload"]
    assert schema["additionalProperties"] is False
    assert (props["priority"]["minimum"], props["priority"]["maximum"], props["priority"]["default"]) == (0, 3, 1)
    assert props["id"]["anyOf"][0]["pattern"].startswith(models.ID_PATTERN)
    assert props["type"]["pattern"].startswith(models.TYPE_PATTERN)
    assert props["target"]["anyOf"][0]["pattern"].startswith(models.CLIENT_ID_PATTERN)
    assert props["topic"]["anyOf"][0]["maxLength"] == 128
    assert set(props) == {
        "id",
        "type",
        "priority",
        "timestamp",
        "source",
        "target",
        "topic",
        "payload",
        "metadata",
        "requireAck",
        "correlationId",
        "ephemeral",
    }


def test_schema_patterns_mean_the_same_to_an_ecma_engine() -> None:
    """The `(?!\\n)` suffix (closing Python's `$`-before-newline) must not change what the pattern accepts."""
    pattern = msgspec.json.schema(models.ClientId)["pattern"]
    assert re.search(pattern, "alice")
    assert not re.search(pattern, "alice\n")
    assert re.sub(r"\(\?!\\n\)$", "", pattern) == models.CLIENT_ID_PATTERN


def test_ack_request_schema_bounds_the_list() -> None:
    props = msgspec.json.schema(models.AckRequest)["$defs"]["AckRequest"]["properties"]
    assert (props["messageIds"]["minItems"], props["messageIds"]["maxItems"]) == (1, models.MAX_ACK_IDS)


ROUTES = [
    ("POST", "/api/messages", Envelope, {202: models.PublishAnswer, 422: models.ErrorBody}, "Publish a message"),
    models.Route("POST", "/api/direct/{clientId}", Envelope, {202: models.PublishAnswer, 400: models.ErrorBody}),
    models.Route("GET", "/api/connections", None, {200: list[models.ConnectionInfo]}),
    models.Route("GET", "/api/messages/{id}", None, {200: models.MessageStatus, 404: models.ErrorBody}),
    models.Route("POST", "/api/tasks/{taskId}/cancel", None, {200: models.TaskRecord, 409: models.ErrorBody}),
    models.Route(
        "GET", "/sse", None, {200: "text/event-stream", 401: models.ErrorBody}, query=(("clientId", "your id"),)
    ),
    models.Route("GET", "/healthz", None, {204: None}),
]


def test_openapi_document() -> None:
    doc = models.openapi_schema(ROUTES, title="sse-fast", version="1.2.3", description="SSE")
    assert doc["openapi"] == "3.1.0"
    assert doc["info"] == {"title": "sse-fast", "version": "1.2.3", "description": "SSE"}
    assert set(doc["paths"]) == {r[1] for r in ROUTES}
    publish = doc["paths"]["/api/messages"]["post"]
    assert publish["summary"] == "Publish a message"
    assert publish["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Envelope"}
    assert publish["responses"]["202"]["description"] == "Accepted"
    assert publish["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    direct = doc["paths"]["/api/direct/{clientId}"]["post"]
    client_id = {"type": "string", "pattern": models.CLIENT_ID_PATTERN}
    assert direct["parameters"] == [{"name": "clientId", "in": "path", "required": True, "schema": client_id}]
    connections = doc["paths"]["/api/connections"]["get"]["responses"]["200"]["content"]["application/json"]
    assert connections["schema"] == {"type": "array", "items": {"$ref": "#/components/schemas/ConnectionInfo"}}
    sse = doc["paths"]["/sse"]["get"]
    assert sse["responses"]["200"]["content"] == {"text/event-stream": {"schema": {"type": "string"}}}
    assert sse["parameters"][0]["in"] == "query"
    assert doc["paths"]["/healthz"]["get"]["responses"]["204"] == {"description": "No Content"}


def test_openapi_refs_all_resolve_and_descriptions_are_dedented() -> None:
    doc = models.openapi_schema(ROUTES)
    text = json.dumps(doc)
    schemas = doc["components"]["schemas"]
    for ref in re.findall(r'"#/components/schemas/([^"]+)"', text):
        assert ref in schemas
    assert {"Envelope", "PublishAnswer", "ErrorBody", "ConnectionInfo", "MessageStatus", "TaskRecord"} <= set(schemas)
    assert "\n    " not in schemas["Envelope"]["description"]


def test_openapi_alternatives_headers_security_and_the_default_error() -> None:
    route = models.Route(
        "POST",
        "/api/commands",
        Envelope,
        {202: (models.PublishAnswer, models.CommandAnswer), 503: models.ErrorBody, 200: {"type": "object"}},
        headers=(("X-Client-Id", "who"),),
        security=[{"bearerAuth": []}, {}],
        operation_id="command",
    )
    schemes = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    doc = models.openapi_schema([route], security_schemes=schemes, security=[{"bearerAuth": []}])
    assert doc["components"]["securitySchemes"] == schemes
    assert doc["security"] == [{"bearerAuth": []}]
    op = doc["paths"]["/api/commands"]["post"]
    assert op["operationId"] == "command"
    assert op["security"] == [{"bearerAuth": []}, {}]
    client_id = {"type": "string", "pattern": models.CLIENT_ID_PATTERN}
    assert op["parameters"] == [{"name": "X-Client-Id", "in": "header", "required": False, "description": "who",
                                 "schema": client_id}]  # fmt: skip
    responses = op["responses"]
    assert list(responses) == ["200", "202", "503", "default"]
    assert responses["200"]["content"]["application/json"]["schema"] == {"type": "object"}
    either = responses["202"]["content"]["application/json"]["schema"]["anyOf"]
    assert [ref["$ref"].rsplit("/", 1)[1] for ref in either] == ["PublishAnswer", "CommandAnswer"]
    assert responses["503"]["headers"]["Retry-After"]["schema"]["type"] == "integer"
    error = {"$ref": "#/components/schemas/ErrorBody"}
    assert responses["default"]["content"]["application/json"]["schema"] == error
