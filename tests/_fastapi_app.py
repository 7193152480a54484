"""The host application of tests/test_mount.py, run by granian (``granian --interface asgi _fastapi_app:app``).

Everything after this docstring is the README's "Inside FastAPI / Starlette" example, character for character
(tests/test_mount.py checks it).
"""

import secrets

from fastapi import FastAPI, HTTPException, Request, Response

from sse_fast import AuthRequest, Identity, SseFast

SESSIONS: dict[str, str] = {}  # the host's own login: session cookie -> user name


async def who_is_it(request: AuthRequest) -> Identity | None:
    """sse-fast's auth hook: the host's session decides who the client is and what it may read."""
    user = SESSIONS.get(request.cookies.get("session", ""))
    if user is None:
        return None  # 401 unauthenticated
    return Identity(client_id=user, topics=(f"orders.{user}",))


sse = SseFast(auth=who_is_it)
app = FastAPI(lifespan=sse.lifespan)  # or `async with sse.lifespan():` inside your own lifespan
app.mount("/events", sse.asgi)  # /events/sse, /events/api/..., /events/sdk/sse-fast.js


@app.post("/login/{user}")
async def login(user: str, response: Response) -> dict[str, str]:
    session = secrets.token_urlsafe(16)
    SESSIONS[session] = user
    response.set_cookie("session", session, httponly=True, samesite="strict")
    return {"user": user}


@app.post("/orders")
async def create_order(request: Request, item: str) -> dict[str, object]:
    user = SESSIONS.get(request.cookies.get("session", ""))
    if user is None:
        raise HTTPException(status_code=401)
    order = {"id": secrets.token_hex(4), "item": item}
    answer = await sse.publish_json(f"orders.{user}", order)  # in-process: no HTTP round trip
    return {"order": order, "messageId": answer.message_id, "delivered": answer.delivered}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
