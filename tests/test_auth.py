"""sse_fast.server.auth: identities under auth=none and auth=jwt (HS256, RS256, ES256, JWKS), API keys, permissions."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sse_fast import models
from sse_fast.server import auth
from sse_fast.settings import Settings

Identity = auth.Identity
AuthFailure = auth.AuthFailure

SECRET = "a-secret-of-at-least-thirty-two-bytes"
OTHER_SECRET = "another-secret-of-thirty-two-bytes!"
KEY1 = "key-one-0123456789"
KEY2 = "key-two-0123456789"
NOW = int(time.time())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(private_key: Any) -> str:
    pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return str(pem.decode())


def hs_auth(**settings: Any) -> Any:
    return auth.Authenticator(Settings(auth="jwt", jwt_secret=SECRET, **settings))


def hs_token(claims: dict[str, Any] | None = None, **extra: Any) -> str:
    base = {"sub": "alice", "exp": NOW + 600}
    payload = base if claims is None else claims
    return jwt.encode(payload | extra, SECRET, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def refused(call: Any, *args: Any) -> Any:
    with pytest.raises(AuthFailure) as info:
        call(*args)
    return info.value


# ---------------------------------------------------------------------------------------------------------------
# auth = none
# ---------------------------------------------------------------------------------------------------------------


def test_none_stream_trusts_the_client_id_query() -> None:
    identity = auth.Authenticator(Settings()).stream_identity({}, {"clientId": "alice"})
    assert identity == Identity(
        client_id="alice", kind="client", admin=True, topics=(">",), publish=(">",), direct=True
    )


@pytest.mark.parametrize("query", [{}, {"clientId": ""}])
def test_none_stream_without_client_id_is_refused(query: dict[str, str]) -> None:
    with pytest.raises(auth.AuthFailure) as err:
        auth.Authenticator(Settings()).stream_identity({}, query)
    assert (err.value.status, err.value.code) == (400, "invalid_client_id")


def test_none_ignores_tokens() -> None:
    identity = auth.Authenticator(Settings()).stream_identity(bearer("garbage"), {"clientId": "bob", "token": "x"})
    assert identity.client_id == "bob"


@pytest.mark.parametrize(
    ("headers", "query", "source", "expected", "kind"),
    [
        ({"x-client-id": "h"}, {"clientId": "q"}, "s", "h", "client"),
        ({}, {"clientId": "q"}, "s", "q", "client"),
        ({"x-client-id": ""}, {}, "s", "s", "client"),
        ({}, {}, None, "anonymous", "anonymous"),
        ({}, {}, "", "anonymous", "anonymous"),
    ],
)
def test_none_api_identity_order(
    headers: dict[str, str], query: dict[str, str], source: str | None, expected: str, kind: str
) -> None:
    identity = auth.Authenticator(Settings()).api_identity(headers, query, source)
    assert (identity.client_id, identity.kind, identity.admin) == (expected, kind, True)


@pytest.mark.parametrize(
    ("headers", "query", "source", "name"),
    [
        ({"x-client-id": "a b"}, {}, None, "X-Client-Id"),
        ({}, {"clientId": "a/b"}, None, "clientId"),
        ({}, {}, "x" * 129, "source"),
        ({}, {}, "bob\n", "source"),
    ],
)
def test_none_api_identity_rejects_bad_client_ids(
    headers: dict[str, str], query: dict[str, str], source: str | None, name: str
) -> None:
    err = refused(auth.Authenticator(Settings()).api_identity, headers, query, source)
    assert (err.status, err.code) == (400, "invalid_client_id")
    assert err.message == f"{name} must be 1 to 128 letters, digits or any of _ . : @ -"


def test_none_stream_rejects_a_bad_client_id() -> None:
    err = refused(auth.Authenticator(Settings()).stream_identity, {}, {"clientId": "a b"})
    assert (err.status, err.code) == (400, "invalid_client_id")


# ---------------------------------------------------------------------------------------------------------------
# API keys
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings", [{"api_keys": (KEY1, KEY2)}, {"api_keys": (KEY1, KEY2), "auth": "jwt"}])
def test_api_keys_make_an_admin_publisher(settings: dict[str, Any]) -> None:
    if settings.get("auth") == "jwt":
        settings = settings | {"jwt_secret": SECRET}
    authenticator = auth.Authenticator(Settings(**settings))
    for key in (KEY1, KEY2):
        identity = authenticator.api_identity({"x-api-key": key, "x-client-id": "mallory"}, {}, "mallory")
        assert identity == Identity(
            client_id="server", kind="api_key", admin=True, topics=(">",), publish=(">",), direct=True
        )


@pytest.mark.parametrize("given", ["wrong-key-0123456789", KEY1[:-1], KEY1 + "x", "ключ"])
def test_a_wrong_api_key_is_401_and_not_echoed(given: str) -> None:
    authenticator = auth.Authenticator(Settings(api_keys=(KEY1,)))
    err = refused(authenticator.api_identity, {"x-api-key": given}, {}, None)
    assert (err.status, err.code) == (401, "invalid_api_key")
    assert given not in str(err)


def test_an_api_key_under_jwt_without_configured_keys_is_401() -> None:
    err = refused(hs_auth().api_identity, {"x-api-key": KEY1}, {}, None)
    assert (err.status, err.code) == (401, "invalid_api_key")


def test_an_api_key_under_none_without_configured_keys_is_ignored() -> None:
    identity = auth.Authenticator(Settings()).api_identity({"x-api-key": KEY1, "x-client-id": "bob"}, {}, None)
    assert (identity.client_id, identity.kind) == ("bob", "client")


# ---------------------------------------------------------------------------------------------------------------
# auth = jwt, HS256
# ---------------------------------------------------------------------------------------------------------------


def test_jwt_subject_and_claims_make_the_identity() -> None:
    token = hs_token(topics=["news.*", "chat.>"], publish=["chat.>"], direct=True, admin=False)
    identity = hs_auth().stream_identity(bearer(token), {})
    assert identity == Identity(
        client_id="alice",
        kind="client",
        admin=False,
        topics=("news.*", "chat.>"),
        publish=("chat.>",),
        direct=True,
        expires=NOW + 600 + 5.0,  # exp plus the default leeway: when its streams are closed
    )


def test_a_token_without_exp_never_expires_unless_exp_is_required() -> None:
    token = hs_token({"sub": "alice"})
    assert hs_auth().stream_identity(bearer(token), {}).expires is None
    with pytest.raises(auth.AuthFailure) as info:
        hs_auth(jwt_require_exp=True).stream_identity(bearer(token), {})
    assert (info.value.status, info.value.code) == (401, "missing_exp")
    assert hs_auth(jwt_require_exp=True, jwt_leeway=0.0).stream_identity(bearer(hs_token()), {}).expires == NOW + 600


def test_jwt_claims_default_to_nothing_granted() -> None:
    identity = hs_auth().stream_identity(bearer(hs_token()), {})
    assert (identity.admin, identity.topics, identity.publish, identity.direct) == (False, (), (), False)


def test_jwt_admin_claim() -> None:
    assert hs_auth().api_identity(bearer(hs_token(admin=True)), {}, None).admin is True


def test_jwt_token_from_the_query_and_case_insensitive_scheme() -> None:
    authenticator = hs_auth()
    assert authenticator.stream_identity({}, {"token": hs_token()}).client_id == "alice"
    assert authenticator.stream_identity({"authorization": f"bearer  {hs_token()} "}, {}).client_id == "alice"
    # the header wins over the query
    assert authenticator.stream_identity(bearer(hs_token()), {"token": "garbage"}).client_id == "alice"


@pytest.mark.parametrize(
    "headers", [{}, {"authorization": ""}, {"authorization": "Bearer "}, {"authorization": "Basic YWxpY2U6cHc="}]
)
def test_jwt_missing_token_is_401(headers: dict[str, str]) -> None:
    err = refused(hs_auth().stream_identity, headers, {})
    assert (err.status, err.code) == (401, "missing_token")


def test_jwt_client_id_query_must_match_the_subject() -> None:
    authenticator = hs_auth()
    assert authenticator.stream_identity(bearer(hs_token()), {"clientId": "alice"}).client_id == "alice"
    err = refused(authenticator.stream_identity, bearer(hs_token()), {"clientId": "bob"})
    assert (err.status, err.code) == (403, "client_id_mismatch")


@pytest.mark.parametrize(("headers", "query"), [({"x-client-id": "bob"}, {}), ({}, {"clientId": "bob"})])
def test_jwt_api_client_id_must_match_the_subject(headers: dict[str, str], query: dict[str, str]) -> None:
    err = refused(hs_auth().api_identity, headers | bearer(hs_token()), query, None)
    assert (err.status, err.code) == (403, "client_id_mismatch")


def test_jwt_api_ignores_the_envelope_source() -> None:
    identity = hs_auth().api_identity(bearer(hs_token()), {}, "mallory")
    assert identity.client_id == "alice"


def test_jwt_bad_client_id_query_is_400() -> None:
    err = refused(hs_auth().stream_identity, bearer(hs_token()), {"clientId": "a b"})
    assert (err.status, err.code) == (400, "invalid_client_id")


def test_jwt_expired_token() -> None:
    err = refused(hs_auth().stream_identity, bearer(hs_token(exp=NOW - 60)), {})
    assert (err.status, err.code, err.message) == (401, "token_expired", "the token has expired")


def test_jwt_leeway_tolerates_small_clock_skew() -> None:
    # The clock is read here, not at import: the suite may reach this test long after collecting it.
    now = int(time.time())
    assert hs_auth().stream_identity(bearer(hs_token(exp=now - 2)), {}).client_id == "alice"
    err = refused(hs_auth(jwt_leeway=0.0).stream_identity, bearer(hs_token(exp=now - 2)), {})
    assert err.code == "token_expired"


def test_jwt_not_yet_valid_token() -> None:
    err = refused(hs_auth().stream_identity, bearer(hs_token(nbf=NOW + 600)), {})
    assert (err.status, err.code, err.message) == (401, "invalid_token", "the token is not valid yet (nbf)")


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (jwt.encode({"sub": "alice"}, OTHER_SECRET, algorithm="HS256"), "the token is not valid"),
        ("not.a.token", "the token is not valid"),
        ("garbage", "the token is not valid"),
        (jwt.encode({"sub": "alice"}, None, algorithm="none"), "the token is not valid"),
        (jwt.encode({"sub": "alice"}, SECRET * 2, algorithm="HS512"), "the token is not valid"),
        (jwt.encode({"exp": NOW + 3600}, SECRET, algorithm="HS256"), "the token has no `sub` claim"),
        (jwt.encode({"sub": "a b"}, SECRET, algorithm="HS256"), "the token's `sub` is not a valid clientId"),
        (jwt.encode({"sub": "x" * 129}, SECRET, algorithm="HS256"), "the token's `sub` is not a valid clientId"),
        (hs_token(topics="news"), "the token's `topics` claim must be a list of topic patterns"),
        (hs_token(topics=["a..b"]), "the token's `topics` claim must be a list of topic patterns"),
        (hs_token(publish=[1]), "the token's `publish` claim must be a list of topic patterns"),
        (hs_token(publish=["a.>.b"]), "the token's `publish` claim must be a list of topic patterns"),
        (hs_token(admin="yes"), "the token's `admin` claim must be true or false"),
        (hs_token(direct=1), "the token's `direct` claim must be true or false"),
    ],
)  # fmt: skip
def test_jwt_invalid_tokens(token: str, message: str) -> None:
    err = refused(hs_auth().stream_identity, bearer(token), {})
    assert (err.status, err.code, err.message) == (401, "invalid_token", message)


def test_jwt_audience_and_issuer() -> None:
    authenticator = hs_auth(jwt_audience="sse", jwt_issuer="https://id.example")
    good = hs_token(aud="sse", iss="https://id.example")
    assert authenticator.stream_identity(bearer(good), {}).client_id == "alice"
    for bad in (hs_token(aud="other", iss="https://id.example"), hs_token(aud="sse", iss="evil"), hs_token()):
        err = refused(authenticator.stream_identity, bearer(bad), {})
        assert (err.status, err.code) == (401, "invalid_token")


def test_jwt_token_with_an_audience_needs_one_configured() -> None:
    err = refused(hs_auth().stream_identity, bearer(hs_token(aud="sse")), {})
    assert err.message == "the token's audience or issuer is not accepted"


def test_tokens_never_appear_in_failures() -> None:
    """The message, the repr and the exception chain (which tracebacks print) must not carry the token."""
    authenticator = hs_auth()
    tokens = [hs_token(exp=NOW - 60), hs_token(nbf=NOW + 600), hs_token(sub="a b"), hs_token() + "x", "secret-ish"]
    for token in tokens:
        err = refused(authenticator.stream_identity, {}, {"token": token, "clientId": "alice"})
        assert token not in str(err)
        assert token not in repr(err)
        assert err.__cause__ is None
        assert err.__context__ is None or err.__suppress_context__ is True


# ---------------------------------------------------------------------------------------------------------------
# RS256, ES256, JWKS
# ---------------------------------------------------------------------------------------------------------------


def test_rs256_with_a_pem_public_key(rsa_key: rsa.RSAPrivateKey) -> None:
    authenticator = auth.Authenticator(Settings(auth="jwt", jwt_public_key=public_pem(rsa_key)))
    token = jwt.encode({"sub": "alice", "publish": ["a.b"]}, rsa_key, algorithm="RS256")
    assert authenticator.stream_identity(bearer(token), {}).publish == ("a.b",)


def test_es256_with_a_pem_file(tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey) -> None:
    path = tmp_path / "key.pem"
    path.write_text(public_pem(ec_key))
    settings = Settings.from_env({"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_PUBLIC_KEY": str(path)})
    token = jwt.encode({"sub": "alice"}, ec_key, algorithm="ES256")
    assert auth.Authenticator(settings).api_identity(bearer(token), {}, None).client_id == "alice"


def test_a_public_key_refuses_other_keys_and_algorithms(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    pem = public_pem(rsa_key)
    authenticator = auth.Authenticator(Settings(auth="jwt", jwt_public_key=pem))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = [
        jwt.encode({"sub": "alice"}, other, algorithm="RS256"),  # another key
        jwt.encode({"sub": "alice"}, ec_key, algorithm="ES256"),  # another algorithm
        jwt.encode({"sub": "alice"}, rsa_key, algorithm="PS256"),  # same key, algorithm not allowed
        jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"),
    ]
    for token in forged:
        err = refused(authenticator.stream_identity, bearer(token), {})
        assert (err.status, err.code) == (401, "invalid_token")


def test_hs256_signed_with_the_public_key_is_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    """Algorithm confusion: an attacker HMAC-signs with the (public) PEM text as the secret."""
    pem = public_pem(rsa_key)
    authenticator = auth.Authenticator(Settings(auth="jwt", jwt_public_key=pem))
    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = jwt.utils.base64url_encode(json.dumps({"sub": "alice"}).encode())
    signature = hmac.new(pem.encode(), header + b"." + body, hashlib.sha256).digest()
    token = (header + b"." + body + b"." + jwt.utils.base64url_encode(signature)).decode()
    err = refused(authenticator.stream_identity, bearer(token), {})
    assert err.code == "invalid_token"


def jwks_file(tmp_path: Path, *keys: tuple[str, Any]) -> str:
    jwks = {"keys": []}  # type: dict[str, list[Any]]
    for kid, private_key in keys:
        algorithm = jwt.algorithms.RSAAlgorithm if isinstance(private_key, rsa.RSAPrivateKey) else None
        algorithm = algorithm or jwt.algorithms.ECAlgorithm
        jwk = json.loads(algorithm.to_jwk(private_key.public_key()))
        jwks["keys"].append(jwk | {"kid": kid, "use": "sig"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    return str(path)


def test_jwks_picks_the_key_by_kid(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    path = jwks_file(tmp_path, ("r1", rsa_key), ("e1", ec_key))
    authenticator = auth.Authenticator(Settings(auth="jwt", jwt_jwks_file=path))
    rs = jwt.encode({"sub": "alice"}, rsa_key, algorithm="RS256", headers={"kid": "r1"})
    es = jwt.encode({"sub": "bob"}, ec_key, algorithm="ES256", headers={"kid": "e1"})
    assert authenticator.stream_identity(bearer(rs), {}).client_id == "alice"
    assert authenticator.stream_identity(bearer(es), {}).client_id == "bob"
    wrong_kid = jwt.encode({"sub": "alice"}, rsa_key, algorithm="RS256", headers={"kid": "e1"})
    for token in (
        jwt.encode({"sub": "alice"}, rsa_key, algorithm="RS256", headers={"kid": "zz"}),
        jwt.encode({"sub": "alice"}, rsa_key, algorithm="RS256"),  # no kid, two keys
        wrong_kid,
    ):
        err = refused(authenticator.stream_identity, bearer(token), {})
        assert (err.status, err.code) == (401, "invalid_token")


def test_jwks_with_one_key_needs_no_kid(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    authenticator = auth.Authenticator(Settings(auth="jwt", jwt_jwks_file=jwks_file(tmp_path, ("only", rsa_key))))
    token = jwt.encode({"sub": "alice"}, rsa_key, algorithm="RS256")
    assert authenticator.stream_identity(bearer(token), {}).client_id == "alice"
    err = refused(authenticator.stream_identity, bearer("garbage"), {})
    assert err.code == "invalid_token"


# ---------------------------------------------------------------------------------------------------------------
# Topics and permissions
# ---------------------------------------------------------------------------------------------------------------


def client(*, topics: tuple[str, ...] = (), publish: tuple[str, ...] = (), direct: bool = False) -> Any:
    return Identity(client_id="alice", kind="client", topics=topics, publish=publish, direct=direct)


CONTAINMENT = [
    ("a.*", "a.b", True),
    ("a.*", "a.*", True),
    ("a.*", "a.b.c", False),
    ("a.*", "a", False),
    ("a.*", "a.>", False),
    ("a.*", "b.c", False),
    ("a.>", "a.b", True),
    ("a.>", "a.b.c", True),
    ("a.>", "a.*", True),
    ("a.>", "a.>", True),
    ("a.>", "a.*.c", True),
    ("a.>", "a", False),
    ("a.>", "b.c", False),
    ("a.b", "a.b", True),
    ("a.b", "a.*", False),
    ("a.b", "a.>", False),
    ("a.b", "a.b.c", False),
    ("*.b", "x.b", True),
    ("*.b", "*.b", True),
    ("*.b", "x.c", False),
    ("*.*", "a.*", True),
    ("*.>", "a.b.c", True),
    ("*.>", "a", False),
    (">", "anything.at.all", True),
    (">", ">", True),
    (">", "*", True),
    ("*", ">", False),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.b.d", False),
    ("a/b:c", "a/b:c", True),
]


@pytest.mark.parametrize(("grant", "pattern", "expected"), CONTAINMENT)
def test_subscription_containment(grant: str, pattern: str, expected: bool) -> None:
    assert auth.can_subscribe(client(topics=(grant,)), pattern) is expected


def test_any_grant_may_cover_a_pattern() -> None:
    identity = client(topics=("x.y", "a.>"))
    assert auth.can_subscribe(identity, "a.b")
    assert auth.can_subscribe(identity, "x.y")
    assert not auth.can_subscribe(identity, "x.z")
    assert not auth.can_subscribe(client(), "a")


def test_admin_may_subscribe_to_anything_valid() -> None:
    admin = Identity(client_id="root", kind="client", admin=True)
    assert auth.can_subscribe(admin, "any.>")
    assert not auth.can_subscribe(admin, "a..b")


@pytest.mark.parametrize(("pattern", "valid"), [("a.b", True), ("a.*.c", True), ("a.>", True), (">", True), ("*", True),
                                                ("a..b", False), ("a.>.b", False), ("a.b*", False), (">.a", False),
                                                ("", False), ("a b", False), ("x" * 129, False)])  # fmt: skip
def test_valid_patterns(pattern: str, valid: bool) -> None:
    assert auth.valid_topic(pattern, pattern=True) is valid
    assert auth.can_subscribe(client(topics=(">",)), pattern) is valid


@pytest.mark.parametrize(("topic", "valid"), [("a.b", True), ("a/b:c-d_e", True), ("a.*", False), (">", False),
                                              (".a", False), ("x" * 128, True), ("x" * 129, False)])  # fmt: skip
def test_valid_topics(topic: str, valid: bool) -> None:
    assert auth.valid_topic(topic) is valid


def test_check_subscribe() -> None:
    identity = client(topics=("news.*",))
    auth.check_subscribe(identity, ["news.eu", "news.*"])
    err = refused(auth.check_subscribe, identity, ["news.eu", "chat.x"])
    assert (err.status, err.code, err.message) == (403, "topic_not_granted", "not allowed to subscribe to 'chat.x'")
    err = refused(auth.check_subscribe, identity, ["news..x"])
    assert (err.status, err.code) == (400, "invalid_topic")


PUBLISH = [
    ({"topic": "chat.room1"}, {"publish": ("chat.*",)}, None),
    ({"topic": "chat.room1.x"}, {"publish": ("chat.*",)}, "topic_not_granted"),
    ({"topic": "chat.room1.x"}, {"publish": ("chat.>",)}, None),
    ({"topic": "news"}, {"topics": ("news",)}, "topic_not_granted"),  # subscribing is not publishing
    ({"target": "bob"}, {"direct": True}, None),
    ({"target": "bob"}, {}, "direct_not_granted"),
    ({"target": "alice"}, {}, None),  # to oneself (other tabs)
    ({}, {"publish": (">",), "direct": True}, "admin_required"),
    ({"topic": "chat.x", "broadcast": True}, {"publish": (">",)}, "admin_required"),
]


@pytest.mark.parametrize(("message", "grants", "code"), PUBLISH)
def test_check_publish(message: dict[str, Any], grants: dict[str, Any], code: str | None) -> None:
    identity = client(**grants)
    if code is None:
        assert auth.check_publish(identity, **message) is None
    else:
        err = refused(lambda: auth.check_publish(identity, **message))
        assert (err.status, err.code) == (403, code)


@pytest.mark.parametrize("message", [m for m, _, _ in PUBLISH])
def test_admins_may_publish_anything(message: dict[str, Any]) -> None:
    admin = Identity(client_id="root", kind="client", admin=True)
    assert auth.check_publish(admin, **message) is None


def test_require_admin_and_owns() -> None:
    admin = Identity(client_id="root", kind="api_key", admin=True)
    auth.require_admin(admin)
    assert auth.owns(admin, "alice")
    assert auth.owns(client(), "alice")
    assert refused(auth.require_admin, client()).code == "admin_required"
    assert not auth.owns(client(), "bob")


def test_auth_failure_body() -> None:
    err = AuthFailure(401, "missing_token", "a token is required")
    assert err.body() == models.ErrorBody(error="a token is required", code="missing_token")
    assert str(err) == "a token is required"


# ---------------------------------------------------------------------------------------------------------------
# Logging
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "redacted"),
    [
        ("token=abc.def.ghi", "token=REDACTED"),
        ("clientId=bob&token=abc&topics=a,b", "clientId=bob&token=REDACTED&topics=a,b"),
        ("topics=a&access_token=xyz", "topics=a&access_token=REDACTED"),
        ("%74oken=abc", "%74oken=REDACTED"),  # the server would decode the name, so must the redactor
        ("TOKEN=abc", "TOKEN=REDACTED"),
        ("ticket=t&api_key=k", "ticket=REDACTED&api_key=REDACTED"),  # the access log's rule: one set of names
        ("mytoken=abc&token=", "mytoken=abc&token="),
        ("", ""),
        ("token", "token"),
        ("lastEventId=5", "lastEventId=5"),
    ],
)
def test_redact_query(query: str, redacted: str) -> None:
    assert auth.redact_query(query) == redacted


def test_the_authenticator_offers_the_permission_checks_as_methods() -> None:
    authenticator = auth.Authenticator(Settings())
    identity = client(topics=("a.*",), publish=("a.b",))
    assert authenticator.can_subscribe(identity, "a.x") is True
    assert authenticator.can_subscribe(identity, "b.x") is False
    authenticator.check_subscribe(identity, ["a.*"])
    authenticator.check_publish(identity, topic="a.b")
    assert authenticator.owns(identity, "alice")
    assert refused(lambda: authenticator.check_publish(identity, target="bob")).code == "direct_not_granted"
    assert refused(authenticator.check_subscribe, identity, ["b"]).code == "topic_not_granted"
    assert refused(authenticator.require_admin, identity).code == "admin_required"
    assert not authenticator.owns(identity, "bob")
