"""The browser SDK as the server serves it (server/static.py), and the README's integrity hash of it."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import sse_fast
from _servers import ROOT, Server, running_server

pytestmark = pytest.mark.e2e

SOURCE = ROOT / "python" / "sse_fast" / "static" / "sse-fast.js"


def sri(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tmp_path_factory.mktemp("sdk")) as srv:
        yield srv


def test_the_sdk_is_served_with_its_etag_and_revalidated(server: Server) -> None:
    response = httpx.get(f"{server.url}/sdk/sse-fast.js")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert response.content == SOURCE.read_bytes()
    assert response.headers["etag"] == f'"{sri(response.content)}"'
    assert response.headers["cache-control"] == "no-cache"
    again = httpx.get(f"{server.url}/sdk/sse-fast.js", headers={"If-None-Match": response.headers["etag"]})
    assert (again.status_code, again.content) == (304, b"")
    assert again.headers["etag"] == response.headers["etag"]
    changed = httpx.get(f"{server.url}/sdk/sse-fast.js", headers={"If-None-Match": '"sha384-old"'})
    assert changed.status_code == 200


def test_the_versioned_url_is_immutable_and_other_files_are_404(server: Server) -> None:
    pinned = httpx.get(f"{server.url}/sdk/sse-fast@{sse_fast.__version__}.js")
    assert pinned.status_code == 200
    assert pinned.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert pinned.content == SOURCE.read_bytes()
    for name in ("sse-fast@0.0.0-old.js", "..%2Fapp.py", "sse-fast.ts"):
        missing = httpx.get(f"{server.url}/sdk/{name}")
        assert (missing.status_code, missing.json()["code"]) == (404, "not_found")


def test_the_readme_shows_the_integrity_hash_of_the_served_file(server: Server) -> None:
    served = httpx.get(f"{server.url}/sdk/sse-fast.js").content
    hashes = set(re.findall(r"sha384-[A-Za-z0-9+/=]{64}", (ROOT / "README.md").read_text()))
    assert hashes == {sri(served)}, "README.md's SRI hash is stale: update it to the served file's"


def test_the_sdk_is_inside_the_package(tmp_path: Path) -> None:
    """The file the wheel ships is the package's own, the one source the npm package copies."""
    packaged = Path(sse_fast.__file__).parent / "static" / "sse-fast.js"
    assert packaged.read_bytes() == SOURCE.read_bytes()


def test_a_listed_origin_may_load_the_sdk_and_call_the_server_cross_origin(tmp_path: Path) -> None:
    """The README's browser recipe: a page on http://127.0.0.1:8080 (python -m http.server) imports the SDK from the
    server (a module script is fetched in CORS mode), streams and POSTs with preflighted headers."""
    site = "http://127.0.0.1:8080"
    with running_server(tmp_path, env={"SSE_FAST_CORS_ORIGINS": site}) as srv:
        for path in ("/sdk/sse-fast.js", f"/sdk/sse-fast@{sse_fast.__version__}.js"):
            answer = httpx.get(srv.url + path, headers={"Origin": site})
            assert answer.status_code == 200
            assert answer.headers["access-control-allow-origin"] == site
            assert answer.headers["vary"] == "Origin"
        revalidated = httpx.get(
            f"{srv.url}/sdk/sse-fast.js", headers={"Origin": site, "If-None-Match": answer.headers["etag"]}
        )
        assert revalidated.status_code == 304
        assert revalidated.headers["access-control-allow-origin"] == site
        other = httpx.get(f"{srv.url}/sdk/sse-fast.js", headers={"Origin": "http://127.0.0.1:9999"})
        assert other.status_code == 200  # served, but the browser refuses it to that page
        assert "access-control-allow-origin" not in other.headers
        for method, path in (("POST", "/api/messages"), ("GET", "/sse"), ("POST", "/api/tickets")):
            preflight = httpx.options(
                srv.url + path,
                headers={
                    "Origin": site,
                    "Access-Control-Request-Method": method,
                    "Access-Control-Request-Headers": "authorization,content-type,last-event-id,x-client-id",
                },
            )
            assert preflight.status_code == 204
            assert preflight.headers["access-control-allow-origin"] == site
            assert method in preflight.headers["access-control-allow-methods"]
            allowed = {h.strip() for h in preflight.headers["access-control-allow-headers"].split(",")}
            assert {"authorization", "content-type", "last-event-id", "x-client-id"} <= allowed
        published = httpx.post(
            f"{srv.url}/api/messages",
            headers={"Origin": site},
            json={"type": "text", "topic": "news.eu", "payload": "hello"},
        )
        assert published.status_code == 202
        assert published.headers["access-control-allow-origin"] == site
        assert published.headers["access-control-expose-headers"] == "retry-after"  # the SDK honours Retry-After
