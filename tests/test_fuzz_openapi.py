"""schemathesis against ``/openapi.json`` of a running server (issue 14, item 1): every operation, with generated
valid and invalid input, on the memory broker and on Redis, under ``auth = jwt`` with an admin token. No answer is a
5xx, and every answer matches its documented status, content type and schema.

Valid input and input that breaks the schema are both generated. Bounded by ``SSE_FAST_SCHEMATHESIS_EXAMPLES``
(default 15 examples per operation, generation mode and broker) to fit ``make test``.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from _redis import running_redis
from _servers import Server, running_server

pytestmark = [pytest.mark.e2e]

EXAMPLES = int(os.environ.get("SSE_FAST_SCHEMATHESIS_EXAMPLES", "15"))
SECRET = "a-secret-of-at-least-thirty-two-bytes"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def token(**claims: Any) -> str:
    """An HS256 token as tests/test_auth.py makes them."""
    payload = {"sub": "fuzzer", "exp": int(time.time()) + 3600, "admin": True} | claims
    return jwt.encode(payload, SECRET, algorithm="HS256")


@pytest.fixture(scope="module", params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "SSE_FAST_AUTH": "jwt",
        "SSE_FAST_JWT_SECRET": SECRET,
        "SSE_FAST_PUBLISH_RATE": "0",
        "SSE_FAST_PUBLISH_BYTES_RATE": "0",
    }
    directory = tmp_path_factory.mktemp(f"schemathesis-{request.param}")
    if request.param == "memory":
        with running_server(directory, env=env) as server:
            yield server
        return
    with (
        running_redis(directory) as redis,
        running_server(directory, env=env | {"SSE_FAST_BROKER": redis.url}) as server,
    ):
        yield server


def exercise(operation: Any, mode: schemathesis.GenerationMode, headers: dict[str, str], calls: Counter[str]) -> None:
    """Up to EXAMPLES generated calls of one operation, each checked; counted in ``calls`` by mode."""

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(mode))
    def call(case: Any) -> None:
        calls[mode.value] += 1
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=10)

    try:
        call()
    except Unsatisfiable:
        # An operation without parameters or body has no invalid input to generate.
        assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label


def test_every_operation_answers_within_its_schema(server: Server) -> None:
    # A stream (GET /sse) never ends by itself: schemathesis would wait on it for ever.
    api = schemathesis.openapi.from_url(f"{server.url}/openapi.json").exclude(path="/sse")
    headers = {"Authorization": f"Bearer {token()}"}
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 15

    calls: Counter[str] = Counter()
    for operation in operations:
        for mode in schemathesis.GenerationMode:  # valid input, and input that breaks the schema
            exercise(operation, mode, headers, calls)
    assert calls["positive"] >= len(operations), calls
    assert calls["negative"] >= len(operations) // 2, calls  # most operations take parameters or a body
