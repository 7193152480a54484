"""A host application whose auth hook rules on the path (tests/test_mount.py, tests/test_logging.py), run by granian
(``granian --interface asgi _hooked_app:app``), with sse-fast mounted at ``/events``.

The hook answers an admin for every path, except that ``/api/admin/...`` is for nobody (401) and that it fails
(a host bug: 500) on ``/api/messages/{id}``. It remembers what it saw, which ``GET /seen`` answers.
"""

from fastapi import FastAPI

from sse_fast import AuthRequest, Identity, SseFast

SEEN: list[dict[str, str]] = []


def rule_on_the_path(request: AuthRequest) -> Identity | None:
    SEEN.append({"path": request.path, "route": request.route})
    if request.route == "/api/messages/{id}":
        raise KeyError(request.path)
    if request.path.startswith("/api/admin"):
        return None
    return Identity(client_id="root", admin=True, topics=(">",), publish=(">",))


sse = SseFast(auth=rule_on_the_path)
app = FastAPI(lifespan=sse.lifespan)
app.mount("/events", sse.asgi)


@app.get("/seen")
async def seen() -> list[dict[str, str]]:
    return SEEN


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
