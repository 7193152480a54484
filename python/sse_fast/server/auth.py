"""Identity and permissions (PROTOCOL.md section 6): who is calling, and what they may do.

:class:`Authenticator` turns a request's headers and query into an :class:`Identity` or raises
:class:`AuthFailure` (401/403, or 400 for a malformed clientId); the module functions decide what an identity
may subscribe to and publish. Nothing here logs, and no message or exception text ever contains a token or a key:
use :func:`redact_query` before logging a query string.

With ``auth = none`` the caller is trusted as given and everyone is admin. With ``auth = jwt`` the token's ``sub``
is the clientId and its claims ``topics``, ``publish``, ``direct`` and ``admin`` are the grants. ``X-API-Key``
(``SSE_FAST_API_KEYS``) makes an admin publisher called ``server`` on the HTTP API.

With an auth hook (``SseFast(auth=...)``, :mod:`sse_fast.mount`) the host application decides alone: the hook is
called once per request that needs a caller, with an :class:`AuthRequest`, and returns the :class:`Identity`
(client id and grants) or None (401 ``unauthenticated``). ``SSE_FAST_AUTH``, tokens and API keys are not consulted
then, and the client id comes only from the hook: a ``clientId`` or ``X-Client-Id`` that differs is 403.
"""

from __future__ import annotations

import hmac
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias
from urllib.parse import unquote_plus

import jwt
import msgspec

from sse_fast._core import topic_matches, validate_topic
from sse_fast.broker.rules import RESERVED_SOURCES, Acker
from sse_fast.errors import AuthFailure, TopicError
from sse_fast.logs import REDACTED, is_credential
from sse_fast.models import CLIENT_ID_PATTERN, CLIENT_ID_RULE
from sse_fast.settings import Settings, public_key_algorithm

if TYPE_CHECKING:
    from sse_fast.server.http import Request

__all__ = [
    "ANONYMOUS",
    "SERVER",
    "SERVER_IDENTITY",
    "AuthFailure",
    "AuthHook",
    "AuthRequest",
    "Authenticator",
    "Identity",
    "can_subscribe",
    "canonical_path",
    "check_publish",
    "check_subscribe",
    "owns",
    "redact_query",
    "require_admin",
    "valid_topic",
]

ANONYMOUS: Final = "anonymous"
"""The clientId of an API caller that gave none, with ``auth = none``."""
SERVER: Final = "server"
"""The clientId (and message ``source``) of an ``X-API-Key`` caller."""

_CLIENT_ID = re.compile(CLIENT_ID_PATTERN[1:-1])
_EVERYTHING = (">",)
_RESERVED_NAMES = ", ".join(sorted(RESERVED_SOURCES))


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """Who a request comes from, and what it was granted.

    ``topics`` and ``publish`` are topic patterns (``*`` one segment, a final ``>`` one or more); ``direct`` allows
    sending to other clients; ``admin`` allows everything (broadcast, the connections list, any task). ``expires``
    is when the credential stops being valid (a token's ``exp`` plus the leeway, in epoch seconds): a stream opened
    with it is closed then. None for a token without ``exp`` and for every identity not from a token.

    An auth hook returns one: ``Identity(client_id="alice", topics=("orders.alice",))`` (``kind`` ``client``).
    """

    client_id: str
    kind: Literal["anonymous", "client", "api_key"] = "client"
    admin: bool = False
    topics: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    direct: bool = False
    expires: float | None = None


def _trusted(client_id: str, kind: Literal["anonymous", "client"]) -> Identity:
    return Identity(client_id=client_id, kind=kind, admin=True, topics=_EVERYTHING, publish=_EVERYTHING, direct=True)


_API_KEY_IDENTITY: Final = Identity(
    client_id=SERVER, kind="api_key", admin=True, topics=_EVERYTHING, publish=_EVERYTHING, direct=True
)
SERVER_IDENTITY: Final = _API_KEY_IDENTITY
"""The identity of an ``X-API-Key`` caller, and of the host application's in-process publishes (an admin, source
``server``)."""


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """What an auth hook sees of a request: the same for every route, whichever interface carried it.

    ``path`` is the path inside sse-fast as the router reads it (``/sse``, ``/api/messages/m1``): canonical, with the
    empty segments at either end dropped (``//api/presence/`` is ``/api/presence``), so a rule on the path sees the
    route that will answer; ``route`` is the template of that route (``/api/messages/{id}``), the surer thing to
    match on. ``root_path`` is the prefix sse-fast is mounted at (``/events``; empty when not mounted). The open
    routes (``/healthz``, ``/readyz``, ``/metrics``, ``/openapi.json``, the SDK and the admin page's files) have no
    caller: the hook is not called for them. ``headers`` have lower-case names; ``query`` and ``cookies`` keep one value
    per name (the last). ``client`` is the peer's ``host:port``. The body is not offered: the hook runs before it
    is read, and a refused caller's body is never read.
    """

    method: str
    path: str
    root_path: str
    headers: Mapping[str, str]
    query: Mapping[str, str]
    cookies: Mapping[str, str]
    client: str
    route: str = ""


AuthHook: TypeAlias = Callable[[AuthRequest], Identity | Awaitable[Identity | None] | None]
"""An auth hook: from an :class:`AuthRequest` to the caller's :class:`Identity`, or None (401); sync or async."""


def parse_cookies(header: str) -> dict[str, str]:
    """The ``Cookie`` header as a dict (a repeated name keeps its last value; quotes around a value dropped)."""
    cookies: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if sep and name:
            cookies[name] = value[1:-1] if len(value) > 1 and value[0] == value[-1] == '"' else value
    return cookies


def _checked(identity: object) -> Identity:
    """The hook's answer, if it is a well-formed identity; a bad one is the host's bug (500), not the caller's."""
    if not isinstance(identity, Identity):
        raise TypeError(f"the auth hook returned {type(identity).__name__}, not an Identity or None")
    if not _CLIENT_ID.fullmatch(identity.client_id) or identity.client_id in RESERVED_SOURCES:
        raise ValueError(f"the auth hook's client_id {identity.client_id[:64]!r} is not a valid, unreserved clientId")
    for pattern in (*identity.topics, *identity.publish):
        if not isinstance(pattern, str) or not valid_topic(pattern, pattern=True):
            raise ValueError(f"the auth hook granted {pattern!r}, which is not a topic pattern")
    return identity


class Authenticator:
    """Identifies callers under the configured ``SSE_FAST_AUTH``; built once per worker from the settings.

    ``headers`` have lower-case names; ``query`` is the decoded query string (one value per name).
    """

    def __init__(self, settings: Settings, *, hook: AuthHook | None = None) -> None:
        self.hook = hook
        self.mode: Literal["none", "jwt", "hook"] = "hook" if hook is not None else settings.auth
        self._api_keys = tuple(key.encode() for key in settings.api_keys)
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._leeway = settings.jwt_leeway
        self._required = ["sub", "exp"] if settings.jwt_require_exp else ["sub"]
        self._key: Any = None
        self._algorithms: list[str] = []
        self._jwks: jwt.PyJWKSet | None = None
        if settings.jwt_secret:
            self._key, self._algorithms = settings.jwt_secret, ["HS256"]
        elif settings.jwt_public_key:
            algorithm = public_key_algorithm(settings.jwt_public_key)
            self._key = jwt.get_algorithm_by_name(algorithm).prepare_key(settings.jwt_public_key)
            self._algorithms = [algorithm]
        elif settings.jwt_jwks_file:
            self._jwks = jwt.PyJWKSet.from_json(Path(settings.jwt_jwks_file).read_text())

    def stream_identity(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Identity:
        """The identity of a ``GET /sse`` request.

        ``auth = none``: the ``clientId`` query, required (a missing or empty one is 400 ``invalid_client_id``:
        a stream always belongs to a named client). ``auth = jwt``: the token's ``sub`` (the query may be left out).
        """
        claimed = _client_id_param(query.get("clientId"), "clientId")
        _not_hooked(self.mode)
        if self.mode == "none":
            if claimed is None:
                raise AuthFailure(400, "invalid_client_id", "clientId is required on the stream with auth = none")
            _not_reserved(claimed, "clientId")
            return _trusted(claimed, "client")
        return self._token_identity(headers, query, (claimed,))

    def api_identity(self, headers: Mapping[str, str], query: Mapping[str, str], body_source: str | None) -> Identity:
        """The identity of an HTTP API request; ``body_source`` is the envelope's ``source``, if any.

        ``X-API-Key`` first; then with ``auth = none`` the ``X-Client-Id`` header, the ``clientId`` query,
        ``body_source`` or ``anonymous``, and with ``auth = jwt`` the token (a different ``X-Client-Id`` or
        ``clientId`` is 403).
        """
        _not_hooked(self.mode)
        api_key = headers.get("x-api-key")
        if api_key and (self._api_keys or self.mode == "jwt"):
            return self._api_key_identity(api_key)
        header_id = _client_id_param(headers.get("x-client-id"), "X-Client-Id")
        query_id = _client_id_param(query.get("clientId"), "clientId")
        if self.mode == "none":
            source = _client_id_param(body_source, "source")
            _not_reserved(header_id, "X-Client-Id")
            _not_reserved(query_id, "clientId")
            _not_reserved(source, "source")
            claimed = header_id or query_id or source
            return _trusted(claimed, "client") if claimed else _trusted(ANONYMOUS, "anonymous")
        return self._token_identity(headers, query, (header_id, query_id))

    # -- the auth hook: when set, the one source of identities -------------------------------------------------

    def caller(self, req: Request, body_source: str | None = None) -> Identity:
        """The identity of an HTTP API request: the hook's when one is set (see :meth:`resolve`), else
        :meth:`api_identity`. It is kept on ``req.caller`` (the access log's client)."""
        if self.hook is not None:
            identity = _hooked(req, req.headers.get("x-client-id"), req.query.get("clientId"))
        else:
            identity = self.api_identity(req.headers, req.query, body_source)
        req.caller = identity
        return identity

    def stream_caller(self, req: Request) -> Identity:
        """The identity of a ``GET /sse`` request: the hook's when one is set, else :meth:`stream_identity`; kept on
        ``req.caller``."""
        if self.hook is not None:
            identity = _hooked(req, req.query.get("clientId"))
        else:
            identity = self.stream_identity(req.headers, req.query)
        req.caller = identity
        return identity

    async def resolve(self, req: Request, route: str = "") -> None:
        """Call the hook (when set) for ``req`` and keep its answer on ``req.identity``, for :meth:`caller`.

        Called once per request, before its handler and before its body is read, for every route that has a
        caller (not for the open ones: ``/healthz``, the SDK...); ``route`` is the template of the route it matched.
        An exception from the hook, or an answer that is not a valid :class:`Identity`, fails the request with 500
        (logged); an :class:`AuthFailure` it raises is answered as it is.
        """
        if self.hook is None:
            return
        view = AuthRequest(
            method=req.method,
            path=canonical_path(req.path),
            root_path=req.root_path,
            headers=req.headers,
            query=req.query,
            cookies=parse_cookies(req.headers.get("cookie", "")),
            client=req.client,
            route=route,
        )
        answer = self.hook(view)
        if inspect.isawaitable(answer):
            answer = await answer
        req.identity = None if answer is None else _checked(answer)

    # The permission checks as methods too, so that routes holding an Authenticator need nothing else.

    @staticmethod
    def can_subscribe(identity: Identity, pattern: str) -> bool:
        """:func:`can_subscribe`."""
        return can_subscribe(identity, pattern)

    @staticmethod
    def check_subscribe(identity: Identity, patterns: Iterable[str]) -> None:
        """:func:`check_subscribe`."""
        check_subscribe(identity, patterns)

    @staticmethod
    def check_publish(
        identity: Identity, *, target: str | None = None, topic: str | None = None, broadcast: bool = False
    ) -> None:
        """:func:`check_publish`."""
        check_publish(identity, target=target, topic=topic, broadcast=broadcast)

    @staticmethod
    def require_admin(identity: Identity) -> None:
        """:func:`require_admin`."""
        require_admin(identity)

    @staticmethod
    def owns(identity: Identity, owner: str) -> bool:
        """:func:`owns`."""
        return owns(identity, owner)

    def acker(self, identity: Identity) -> Acker:
        """Who ``identity`` acks as (:func:`sse_fast.broker.rules.may_ack`): an admin acks anything; a client what it
        could receive, its topic grants judged by :func:`can_subscribe`. With ``auth = none`` everybody may subscribe
        to everything, so a topic message may be acked by anyone, but the trust of ``none`` (everyone an admin) does
        not extend to acking another client's direct message: only an API key acks anything there."""
        if self.mode == "none":
            return Acker(identity.client_id, admin=identity.kind == "api_key")
        return Acker(identity.client_id, admin=identity.admin, receives=lambda topic: can_subscribe(identity, topic))

    # -- API keys ---------------------------------------------------------------------------------------------------

    def _api_key_identity(self, given: str) -> Identity:
        candidate = given.encode()
        # Compare with every key, without stopping at a match, so that timing says nothing about which one.
        matched = False
        for key in self._api_keys:
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise AuthFailure(401, "invalid_api_key", "the API key is not valid")
        return _API_KEY_IDENTITY

    # -- JWT --------------------------------------------------------------------------------------------------------

    def _token_identity(
        self, headers: Mapping[str, str], query: Mapping[str, str], claimed: tuple[str | None, ...]
    ) -> Identity:
        claims = self._claims(_token(headers, query))
        client_id = claims["sub"]
        if any(c is not None and c != client_id for c in claimed):
            raise AuthFailure(403, "client_id_mismatch", "the clientId differs from the token's subject")
        return Identity(
            client_id=client_id,
            kind="client",
            admin=_bool_claim(claims, "admin"),
            topics=_patterns_claim(claims, "topics"),
            publish=_patterns_claim(claims, "publish"),
            direct=_bool_claim(claims, "direct"),
            expires=int(claims["exp"]) + self._leeway if "exp" in claims else None,
        )

    def _claims(self, token: str) -> dict[str, Any]:
        key, algorithms = self._verification_key(token)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": self._required},
            )
        except jwt.ExpiredSignatureError:
            raise AuthFailure(401, "token_expired", "the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthFailure(401, "invalid_token", "the token is not valid yet (nbf)") from None
        except jwt.MissingRequiredClaimError as err:
            if err.claim == "exp":  # SSE_FAST_JWT_REQUIRE_EXP: a token that never expires keeps its streams forever
                raise AuthFailure(401, "missing_exp", "the token has no `exp` claim, which is required") from None
            raise AuthFailure(401, "invalid_token", "the token has no `sub` claim") from None
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            raise AuthFailure(401, "invalid_token", "the token's audience or issuer is not accepted") from None
        except jwt.InvalidTokenError:
            raise AuthFailure(401, "invalid_token", "the token is not valid") from None
        if not isinstance(claims["sub"], str) or not _CLIENT_ID.fullmatch(claims["sub"]):
            raise AuthFailure(401, "invalid_token", "the token's `sub` is not a valid clientId")
        if claims["sub"] in RESERVED_SOURCES:
            raise AuthFailure(401, "reserved_identity", f"the token's `sub` is a reserved name ({_RESERVED_NAMES})")
        return claims

    def _verification_key(self, token: str) -> tuple[Any, list[str]]:
        if self._jwks is None:
            if self._key is None:
                raise AuthFailure(401, "invalid_token", "no token key is configured")
            return self._key, self._algorithms
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError:
            raise AuthFailure(401, "invalid_token", "the token is not valid") from None
        keys = self._jwks.keys
        found = [k for k in keys if k.key_id == kid] if kid is not None else (keys if len(keys) == 1 else [])
        if not found:
            raise AuthFailure(401, "invalid_token", "the token's key id is not in the key set")
        return found[0].key, [found[0].algorithm_name]


def _not_hooked(mode: str) -> None:
    """Fail closed: with a hook, an identity from headers alone (a route that bypassed :meth:`Authenticator.caller`)
    would not be the hook's."""
    if mode == "hook":
        raise AuthFailure(401, "unauthenticated", "this server identifies callers through its host application")


def _hooked(req: Request, *claimed: str | None) -> Identity:
    """The hook's identity for ``req``: 401 when it had none, 403 when the request names another client."""
    identity = req.identity
    if identity is None:
        raise AuthFailure(401, "unauthenticated", "the host application did not recognise this caller")
    if any(c and c != identity.client_id for c in claimed):
        raise AuthFailure(403, "client_id_mismatch", "the clientId differs from the caller's identity")
    return identity


def _token(headers: Mapping[str, str], query: Mapping[str, str]) -> str:
    scheme, _, value = headers.get("authorization", "").strip().partition(" ")
    token = value.strip() if scheme.lower() == "bearer" else ""
    token = token or query.get("token", "").strip()
    if not token:
        raise AuthFailure(401, "missing_token", "a token is required (Authorization: Bearer, or the token query)")
    return token


def _client_id_param(value: str | None, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not _CLIENT_ID.fullmatch(value):
        raise AuthFailure(400, "invalid_client_id", f"{name} must be {CLIENT_ID_RULE}")
    return value


def _not_reserved(client_id: str | None, name: str) -> None:
    """Raise 400 ``invalid_client_id`` when ``client_id`` names one of the server's own identities."""
    if client_id in RESERVED_SOURCES:
        raise AuthFailure(400, "invalid_client_id", f"{name} may not be a reserved name ({_RESERVED_NAMES})")


def _bool_claim(claims: Mapping[str, Any], name: str) -> bool:
    value = claims.get(name, False)
    if not isinstance(value, bool):
        raise AuthFailure(401, "invalid_token", f"the token's `{name}` claim must be true or false")
    return value


def _patterns_claim(claims: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name, [])
    if not isinstance(value, list) or not all(isinstance(p, str) and valid_topic(p, pattern=True) for p in value):
        raise AuthFailure(401, "invalid_token", f"the token's `{name}` claim must be a list of topic patterns")
    return tuple(value)


# ---------------------------------------------------------------------------------------------------------------
# Topics and permissions
# ---------------------------------------------------------------------------------------------------------------


def valid_topic(topic: str, *, pattern: bool = False) -> bool:
    """Whether ``topic`` is a valid topic (or, with ``pattern``, a valid pattern with ``*`` and a final ``>``)."""
    try:
        validate_topic(topic, pattern=pattern)
    except TopicError:
        return False
    return True


def _covers(grant: str, pattern: str) -> bool:
    """Whether every topic ``pattern`` matches is also matched by ``grant`` (pattern containment)."""
    wanted = pattern.split(".")
    for i, segment in enumerate(grant.split(".")):
        if segment == ">":
            return len(wanted) > i
        if i >= len(wanted) or wanted[i] == ">":
            return False
        if segment != "*" and segment != wanted[i]:
            return False
    return len(wanted) == len(grant.split("."))


def can_subscribe(identity: Identity, pattern: str) -> bool:
    """Whether ``identity`` may subscribe to ``pattern``: an admin always; else a ``topics`` grant covers it.

    Containment, not overlap: a grant ``a.*`` covers ``a.b`` and ``a.*``; ``a.>`` covers ``a.b.c``, ``a.*`` and
    ``a.>``; ``a.b`` does not cover ``a.*``.
    """
    if not valid_topic(pattern, pattern=True):
        return False
    return identity.admin or any(_covers(grant, pattern) for grant in identity.topics)


def check_subscribe(identity: Identity, patterns: Iterable[str]) -> None:
    """Raise 400 ``invalid_topic`` for a malformed pattern, 403 ``topic_not_granted`` for one not granted."""
    for pattern in patterns:
        if not valid_topic(pattern, pattern=True):
            raise AuthFailure(400, "invalid_topic", f"not a topic pattern: {pattern!r}")
        if not can_subscribe(identity, pattern):
            raise AuthFailure(403, "topic_not_granted", f"not allowed to subscribe to {pattern!r}")


def check_publish(
    identity: Identity, *, target: str | None = None, topic: str | None = None, broadcast: bool = False
) -> None:
    """Raise 403 unless ``identity`` may publish this: ``topic`` needs a ``publish`` grant that matches it
    (``topic_not_granted``), a ``target`` other than itself needs ``direct`` (``direct_not_granted``), and a
    broadcast (``broadcast``, or neither target nor topic) needs admin (``admin_required``). Admins may do all.
    """
    if identity.admin:
        return
    if broadcast or (target is None and topic is None):
        raise AuthFailure(403, "admin_required", "broadcasting needs an admin")
    if target is not None and target != identity.client_id and not identity.direct:
        raise AuthFailure(403, "direct_not_granted", "sending to another client needs the `direct` grant")
    if topic is not None and not any(topic_matches(grant, topic) for grant in identity.publish):
        raise AuthFailure(403, "topic_not_granted", f"not allowed to publish to {topic!r}")


def require_admin(identity: Identity) -> None:
    """Raise 403 ``admin_required`` unless ``identity`` is an admin (connections list, other clients' tasks)."""
    if not identity.admin:
        raise AuthFailure(403, "admin_required", "this needs an admin")


def owns(identity: Identity, owner: str) -> bool:
    """Whether ``identity`` may read or steer something of ``owner`` (a task, a message's status): ``owner`` itself
    or an admin. To anyone else it does not exist: the route answers its own 404, the same as for an unknown id, so
    that the answer tells nothing about other clients' ids."""
    return identity.admin or identity.client_id == owner


def canonical_path(path: str) -> str:
    """``path`` as the router reads it: the empty segments at either end dropped (``//api/x/`` is ``/api/x``)."""
    return "/" + path.strip("/")


def redact_query(query_string: str) -> str:
    """``query_string`` (raw) with the value of every credential replaced, for logging: the access log's rule
    (:func:`sse_fast.logs.redact`), applied to names as the server decodes them."""
    parts = []
    for part in query_string.split("&"):
        name, sep, value = part.partition("=")
        if sep and value and is_credential(unquote_plus(name)):
            part = f"{name}={REDACTED}"
        parts.append(part)
    return "&".join(parts)
