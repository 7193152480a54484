"""sse_fast.settings: every setting parsed and defaulted, every error message, the cross-field rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sse_fast import settings as settings_mod

Settings = settings_mod.Settings
SettingsError = settings_mod.SettingsError

MIB = 1024 * 1024
SECRET = "s" * 32
KEY = "k" * 16

# PROTOCOL.md section 8 and the brief: every field and its default. A new field must be added here.
DEFAULTS: dict[str, Any] = {
    "host": "127.0.0.1",
    "port": 8000,
    "workers": 1,
    "interface": "rsgi",
    "log_level": "info",
    "log_format": "text",
    "access_log": False,
    "metrics_dir": None,
    "ssl_certfile": None,
    "ssl_keyfile": None,
    "http": "auto",
    "runtime_threads": 0,
    "runtime_mode": "auto",
    "auth": "none",
    "jwt_secret": None,
    "jwt_public_key": None,
    "jwt_jwks_file": None,
    "jwt_audience": None,
    "jwt_issuer": None,
    "jwt_leeway": 5.0,
    "jwt_require_exp": False,
    "api_keys": (),
    "cors_origins": (),
    "ticket_ttl": 30.0,
    "tickets_max": 10_000,
    "keepalive": 15.0,
    "heartbeat": 30.0,
    "retry": 3000,
    "retry_spread": 30.0,
    "shutdown_grace": 10.0,
    "max_body": MIB,
    "max_connections": 100_000,
    "max_connections_per_client": 8,
    "max_topic_segments": 16,
    "max_topics_bytes": 1024,
    "queue_frames": 1024,
    "queue_bytes": MIB,
    "replay_size": 10_000,
    "replay_bytes": 64 * MIB,
    "replay_ttl": 3600.0,
    "mailbox_size": 100,
    "mailbox_ttl": 3600.0,
    "mailbox_clients": 100_000,
    "dedupe_window": 300.0,
    "dedupe_size": 100_000,
    "ack_timeout": 30.0,
    "ack_retries": 5,
    "max_pending_acks": 100_000,
    "ack_status_ttl": 3600.0,
    "publish_rate": 100.0,
    "publish_burst": 200,
    "publish_bytes_rate": 256 * 1024,
    "publish_burst_bytes": 2 * MIB,
    "publish_limit_clients": 100_000,
    "presence_rate": 2.0,
    "presence_burst": 10,
    "scheduler_concurrency": 5,
    "scheduler_client_concurrency": 2,
    "scheduler_queue_size": 1000,
    "scheduler_retention": 3600.0,
    "scheduler_retention_count": 10_000,
    "scheduler_client_queue_share": 0.25,
    "scheduler_client_paused": 8,
    "scheduler_pause_timeout": 600.0,
    "admin_recent_max": 200,
    "broker": "memory",
    "redis_wait_replicas": 0,
    "redis_wait_timeout": 0.5,
}


def problems_of(environ: dict[str, str], **overrides: Any) -> list[str]:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(environ, **overrides)
    assert str(info.value) == "invalid settings:\n  " + "\n  ".join(info.value.problems)
    return list(info.value.problems)


def pem_of(private_key: Any) -> str:
    public = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return str(public.decode())


@pytest.fixture(scope="module")
def rsa_pem() -> str:
    return pem_of(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def ec_pem() -> str:
    return pem_of(ec.generate_private_key(ec.SECP256R1()))


# ---------------------------------------------------------------------------------------------------------------
# Defaults and parsing
# ---------------------------------------------------------------------------------------------------------------


def test_every_field_has_a_known_default() -> None:
    assert tuple(DEFAULTS) == Settings.__struct_fields__
    settings = Settings.from_env({})
    assert {name: getattr(settings, name) for name in DEFAULTS} == DEFAULTS
    assert settings == Settings()


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSE_FAST_KEEPALIVE", "7")
    assert Settings.from_env().keepalive == 7.0


PARSED = [
    ("SSE_FAST_HOST", "0.0.0.0", "host", "0.0.0.0"),
    ("SSE_FAST_PORT", "9000", "port", 9000),
    ("SSE_FAST_INTERFACE", "asgi", "interface", "asgi"),
    ("SSE_FAST_LOG_LEVEL", "debug", "log_level", "debug"),
    ("SSE_FAST_LOG_FORMAT", "json", "log_format", "json"),
    ("SSE_FAST_ACCESS_LOG", "true", "access_log", True),
    ("SSE_FAST_METRICS_DIR", "/run/sse-fast/metrics", "metrics_dir", "/run/sse-fast/metrics"),
    ("SSE_FAST_JWT_LEEWAY", "0", "jwt_leeway", 0.0),
    ("SSE_FAST_API_KEYS", f" {KEY} , {'j' * 20},", "api_keys", (KEY, "j" * 20)),
    (
        "SSE_FAST_CORS_ORIGINS",
        "https://a.example, http://localhost:3000",
        "cors_origins",
        ("https://a.example", "http://localhost:3000"),
    ),
    ("SSE_FAST_CORS_ORIGINS", "*", "cors_origins", ("*",)),
    ("SSE_FAST_KEEPALIVE", "2.5", "keepalive", 2.5),
    ("SSE_FAST_HEARTBEAT", "1e1", "heartbeat", 10.0),
    ("SSE_FAST_RETRY", "500", "retry", 500),
    ("SSE_FAST_RETRY_SPREAD", "0", "retry_spread", 0.0),
    ("SSE_FAST_SHUTDOWN_GRACE", "0.5", "shutdown_grace", 0.5),
    ("SSE_FAST_MAX_BODY", "1_000", "max_body", 1000),
    ("SSE_FAST_MAX_CONNECTIONS", "10", "max_connections", 10),
    ("SSE_FAST_MAX_CONNECTIONS_PER_CLIENT", "1", "max_connections_per_client", 1),
    ("SSE_FAST_MAX_TOPIC_SEGMENTS", "4", "max_topic_segments", 4),
    ("SSE_FAST_MAX_TOPICS_BYTES", "256", "max_topics_bytes", 256),
    ("SSE_FAST_QUEUE_FRAMES", "16", "queue_frames", 16),
    ("SSE_FAST_QUEUE_BYTES", "2097152", "queue_bytes", 2 * MIB),
    ("SSE_FAST_REPLAY_SIZE", "5", "replay_size", 5),
    ("SSE_FAST_REPLAY_BYTES", "2097152", "replay_bytes", 2 * MIB),
    ("SSE_FAST_REPLAY_TTL", "60", "replay_ttl", 60.0),
    ("SSE_FAST_MAILBOX_SIZE", "3", "mailbox_size", 3),
    ("SSE_FAST_MAILBOX_TTL", "1.5", "mailbox_ttl", 1.5),
    ("SSE_FAST_MAILBOX_CLIENTS", "7", "mailbox_clients", 7),
    ("SSE_FAST_DEDUPE_WINDOW", "10", "dedupe_window", 10.0),
    ("SSE_FAST_DEDUPE_SIZE", "11", "dedupe_size", 11),
    ("SSE_FAST_ACK_TIMEOUT", "0.25", "ack_timeout", 0.25),
    ("SSE_FAST_ACK_RETRIES", "0", "ack_retries", 0),
    ("SSE_FAST_MAX_PENDING_ACKS", "12", "max_pending_acks", 12),
    ("SSE_FAST_ACK_STATUS_TTL", "90", "ack_status_ttl", 90.0),
    ("SSE_FAST_PUBLISH_RATE", "0", "publish_rate", 0.0),
    ("SSE_FAST_PUBLISH_BURST", "3", "publish_burst", 3),
    ("SSE_FAST_PUBLISH_BYTES_RATE", "0", "publish_bytes_rate", 0),
    ("SSE_FAST_PUBLISH_BURST_BYTES", "2097152", "publish_burst_bytes", 2 * MIB),
    ("SSE_FAST_PUBLISH_LIMIT_CLIENTS", "9", "publish_limit_clients", 9),
    ("SSE_FAST_PRESENCE_RATE", "0.5", "presence_rate", 0.5),
    ("SSE_FAST_PRESENCE_BURST", "4", "presence_burst", 4),
    ("SSE_FAST_SCHEDULER_CONCURRENCY", "13", "scheduler_concurrency", 13),
    ("SSE_FAST_SCHEDULER_CLIENT_CONCURRENCY", "14", "scheduler_client_concurrency", 14),
    ("SSE_FAST_SCHEDULER_QUEUE_SIZE", "15", "scheduler_queue_size", 15),
    ("SSE_FAST_SCHEDULER_RETENTION", "16", "scheduler_retention", 16.0),
    ("SSE_FAST_SCHEDULER_RETENTION_COUNT", "17", "scheduler_retention_count", 17),
    ("SSE_FAST_SCHEDULER_CLIENT_QUEUE_SHARE", "1", "scheduler_client_queue_share", 1.0),
    ("SSE_FAST_SCHEDULER_CLIENT_PAUSED", "18", "scheduler_client_paused", 18),
    ("SSE_FAST_SCHEDULER_PAUSE_TIMEOUT", "19", "scheduler_pause_timeout", 19.0),
    ("SSE_FAST_TICKET_TTL", "5", "ticket_ttl", 5.0),
    ("SSE_FAST_TICKETS_MAX", "20", "tickets_max", 20),
    ("SSE_FAST_ADMIN_RECENT_MAX", "21", "admin_recent_max", 21),
    ("SSE_FAST_HTTP", "2", "http", "2"),
    ("SSE_FAST_HTTP", "1", "http", "1"),
    ("SSE_FAST_RUNTIME_THREADS", "2", "runtime_threads", 2),
    ("SSE_FAST_RUNTIME_MODE", "st", "runtime_mode", "st"),
    ("SSE_FAST_BROKER", "redis://localhost:6379/0", "broker", "redis://localhost:6379/0"),
    ("SSE_FAST_BROKER", "rediss://h", "broker", "rediss://h"),
    ("SSE_FAST_BROKER", "unix:///tmp/redis.sock", "broker", "unix:///tmp/redis.sock"),
    (
        "SSE_FAST_BROKER",
        "redis+sentinel://s1:26379,s2:26379/mymaster",
        "broker",
        "redis+sentinel://s1:26379,s2:26379/mymaster",
    ),
    ("SSE_FAST_REDIS_WAIT_REPLICAS", "1", "redis_wait_replicas", 1),
    ("SSE_FAST_REDIS_WAIT_TIMEOUT", "0.25", "redis_wait_timeout", 0.25),
]


@pytest.mark.parametrize(("var", "raw", "name", "expected"), PARSED)
def test_each_setting_is_parsed(var: str, raw: str, name: str, expected: Any) -> None:
    value = getattr(Settings.from_env({var: raw}), name)
    assert value == expected
    assert type(value) is type(expected)


def test_every_variable_is_covered_by_the_parse_table() -> None:
    covered = {name for _, _, name, _ in PARSED} | {"workers", "auth", "jwt_secret", "jwt_public_key"}
    covered |= {"jwt_jwks_file", "jwt_audience", "jwt_issuer", "jwt_require_exp"}  # parsed in the auth tests below
    covered |= {"ssl_certfile", "ssl_keyfile"}  # parsed in test_tls_files below
    assert covered == set(Settings.__struct_fields__)


def test_workers_and_jwt_settings_are_parsed() -> None:
    s = Settings.from_env(
        {
            "SSE_FAST_WORKERS": "4",
            "SSE_FAST_BROKER": "redis://r",
            "SSE_FAST_AUTH": "jwt",
            "SSE_FAST_JWT_SECRET": SECRET,
            "SSE_FAST_JWT_AUDIENCE": "aud",
            "SSE_FAST_JWT_ISSUER": "iss",
        }
    )
    assert (s.workers, s.auth, s.jwt_secret, s.jwt_audience, s.jwt_issuer) == (4, "jwt", SECRET, "aud", "iss")


@pytest.mark.parametrize(
    ("raw", "expected"), [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("false", False), ("0", False)]
)
def test_jwt_require_exp_is_a_boolean(raw: str, expected: bool) -> None:
    env = {"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_SECRET": SECRET, "SSE_FAST_JWT_REQUIRE_EXP": raw}
    assert Settings.from_env(env).jwt_require_exp is expected


def test_jwt_require_exp_is_checked() -> None:
    jwt_env = {"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_SECRET": SECRET}
    assert problems_of({**jwt_env, "SSE_FAST_JWT_REQUIRE_EXP": "maybe"}) == [
        "SSE_FAST_JWT_REQUIRE_EXP='maybe': expected true or false"
    ]
    assert problems_of({}, auth="jwt", jwt_secret=SECRET, jwt_require_exp=1) == [
        "jwt_require_exp=1: expected true or false"
    ]
    assert problems_of({"SSE_FAST_JWT_REQUIRE_EXP": "true"}) == [
        "SSE_FAST_JWT_REQUIRE_EXP='true': has no effect with SSE_FAST_AUTH='none' (set SSE_FAST_AUTH=jwt, or unset it)"
    ]


def test_an_empty_variable_counts_as_unset() -> None:
    assert Settings.from_env({"SSE_FAST_KEEPALIVE": "", "SSE_FAST_JWT_SECRET": "  "}) == Settings()


def test_unrelated_and_tooling_variables_are_ignored() -> None:
    assert Settings.from_env({"PATH": "/bin", "SSE_FAST_TEST_REDIS": "x", "sse_fast_port": "1"}) == Settings()


def test_overrides_win_over_the_environment() -> None:
    s = Settings.from_env({"SSE_FAST_PORT": "9000", "SSE_FAST_HOST": "::1"}, port=9100, host=None, keepalive="3")
    assert (s.port, s.host, s.keepalive) == (9100, "::1", 3.0)


def test_an_override_naming_no_setting_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="unknown settings: prot"):
        Settings.from_env({}, prot=1)


def test_bad_overrides_are_reported_with_their_names() -> None:
    assert problems_of({}, port=True, workers=1.5, cors_origins=5, interface="wsgi") == [
        "port=True: expected a whole number from 1 to 65535",
        "workers=1.5: expected a whole number > 0",
        "cors_origins=5: expected a list of strings",
        "interface='wsgi': expected one of: rsgi, asgi",
    ]


# ---------------------------------------------------------------------------------------------------------------
# Error messages
# ---------------------------------------------------------------------------------------------------------------

BROKER = "expected `memory`, a redis://, rediss:// or unix:// URL, or redis+sentinel://"
API_KEYS = "expected keys of at least 16 characters without whitespace"
ORIGINS = "expected `*` alone, or origins like https://example.com:8443 (no path)"
ERRORS = [
    ("SSE_FAST_KEEPALIVE", "abc", "SSE_FAST_KEEPALIVE='abc': expected a number of seconds > 0"),
    ("SSE_FAST_KEEPALIVE", "0", "SSE_FAST_KEEPALIVE='0': expected a number of seconds > 0"),
    ("SSE_FAST_HEARTBEAT", "nan", "SSE_FAST_HEARTBEAT='nan': expected a number of seconds > 0"),
    ("SSE_FAST_MAILBOX_TTL", "inf", "SSE_FAST_MAILBOX_TTL='inf': expected a number of seconds > 0"),
    ("SSE_FAST_RETRY_SPREAD", "-1", "SSE_FAST_RETRY_SPREAD='-1': expected a number of seconds >= 0"),
    ("SSE_FAST_SHUTDOWN_GRACE", "x", "SSE_FAST_SHUTDOWN_GRACE='x': expected a number of seconds >= 0"),
    ("SSE_FAST_RETRY", "1.5", "SSE_FAST_RETRY='1.5': expected a whole number of milliseconds > 0"),
    ("SSE_FAST_MAX_BODY", "1MiB", "SSE_FAST_MAX_BODY='1MiB': expected a whole number of bytes > 0"),
    ("SSE_FAST_QUEUE_BYTES", "-5", "SSE_FAST_QUEUE_BYTES='-5': expected a whole number of bytes > 0"),
    ("SSE_FAST_QUEUE_FRAMES", "0", "SSE_FAST_QUEUE_FRAMES='0': expected a whole number > 0"),
    ("SSE_FAST_ACK_RETRIES", "-1", "SSE_FAST_ACK_RETRIES='-1': expected a whole number >= 0"),
    ("SSE_FAST_RUNTIME_THREADS", "2.5", "SSE_FAST_RUNTIME_THREADS='2.5': expected a whole number >= 0"),
    ("SSE_FAST_RUNTIME_MODE", "multi", "SSE_FAST_RUNTIME_MODE='multi': expected one of: auto, st, mt"),
    ("SSE_FAST_PORT", "65536", "SSE_FAST_PORT='65536': expected a whole number from 1 to 65535"),
    ("SSE_FAST_AUTH", "JWT", "SSE_FAST_AUTH='JWT': expected one of: none, jwt"),
    ("SSE_FAST_INTERFACE", "wsgi", "SSE_FAST_INTERFACE='wsgi': expected one of: rsgi, asgi"),
    ("SSE_FAST_LOG_LEVEL", "loud", "SSE_FAST_LOG_LEVEL='loud': expected one of: critical, error, warning, info, debug"),
    ("SSE_FAST_BROKER", "postgres://x", "SSE_FAST_BROKER='postgres://x': " + BROKER),
    ("SSE_FAST_BROKER", "redis://", "SSE_FAST_BROKER='redis://': " + BROKER),
    ("SSE_FAST_API_KEYS", "short", "SSE_FAST_API_KEYS=<redacted>: " + API_KEYS),
    ("SSE_FAST_API_KEYS", f"{KEY}, {KEY} x", "SSE_FAST_API_KEYS=<redacted>: " + API_KEYS),
    ("SSE_FAST_CORS_ORIGINS", "https://a.example/", "SSE_FAST_CORS_ORIGINS='https://a.example/': " + ORIGINS),
    ("SSE_FAST_CORS_ORIGINS", "*,https://a.example", "SSE_FAST_CORS_ORIGINS='*,https://a.example': " + ORIGINS),
    ("SSE_FAST_CORS_ORIGINS", "example.com", "SSE_FAST_CORS_ORIGINS='example.com': " + ORIGINS),
    ("SSE_FAST_KEEPALIV", "1", "SSE_FAST_KEEPALIV: no such setting (did you mean SSE_FAST_KEEPALIVE?)"),
    ("SSE_FAST_ZZZ", "1", "SSE_FAST_ZZZ: no such setting"),
]  # fmt: skip


@pytest.mark.parametrize(("var", "raw", "message"), ERRORS)
def test_each_error_message(var: str, raw: str, message: str) -> None:
    assert problems_of({var: raw}) == [message]


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(
        {
            "SSE_FAST_KEEPALIVE": "abc",
            "SSE_FAST_PORT": "0",
            "SSE_FAST_AUTHX": "jwt",
            "SSE_FAST_WORKERS": "2",
            "SSE_FAST_MAX_BODY": str(2 * MIB),
        }
    )
    assert problems == [
        "SSE_FAST_AUTHX: no such setting (did you mean SSE_FAST_AUTH?)",
        "SSE_FAST_KEEPALIVE='abc': expected a number of seconds > 0",
        "SSE_FAST_PORT='0': expected a whole number from 1 to 65535",
        "SSE_FAST_WORKERS='2': the memory broker serves one process; use one worker, or Redis "
        "(SSE_FAST_BROKER=redis://...)",
        "SSE_FAST_QUEUE_BYTES (default 1048576): must be at least SSE_FAST_MAX_BODY (2097152) so that the largest "
        "message fits",
    ]


def test_a_value_that_did_not_parse_is_not_reported_again_by_the_cross_field_rules() -> None:
    problems = problems_of({"SSE_FAST_AUTH": "jwtt", "SSE_FAST_WORKERS": "many"})
    assert problems == [
        "SSE_FAST_AUTH='jwtt': expected one of: none, jwt",
        "SSE_FAST_WORKERS='many': expected a whole number > 0",
    ]


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


def test_several_workers_are_fine_with_redis() -> None:
    assert Settings.from_env({"SSE_FAST_WORKERS": "8", "SSE_FAST_BROKER": "redis://r:6379"}).workers == 8


def test_replay_bytes_must_hold_the_largest_body() -> None:
    assert problems_of({"SSE_FAST_REPLAY_BYTES": "1000"}) == [
        "SSE_FAST_REPLAY_BYTES='1000': must be at least SSE_FAST_MAX_BODY (1048576) so that the largest message fits"
    ]


def test_direct_construction_validates_with_field_names() -> None:
    with pytest.raises(SettingsError) as info:
        Settings(keepalive=-1.0, workers=2)
    assert info.value.problems == [
        "keepalive=-1.0: expected a number of seconds > 0",
        "workers=2: the memory broker serves one process; use one worker, or Redis (SSE_FAST_BROKER=redis://...)",
    ]


# ---------------------------------------------------------------------------------------------------------------
# Auth settings
# ---------------------------------------------------------------------------------------------------------------


def test_jwt_needs_a_key() -> None:
    assert problems_of({"SSE_FAST_AUTH": "jwt"}) == [
        "SSE_FAST_AUTH='jwt': needs exactly one of SSE_FAST_JWT_SECRET, SSE_FAST_JWT_PUBLIC_KEY, "
        "SSE_FAST_JWT_JWKS_FILE (none is set)"
    ]


def test_jwt_needs_exactly_one_key(ec_pem: str) -> None:
    environ = {"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_SECRET": SECRET, "SSE_FAST_JWT_PUBLIC_KEY": ec_pem}
    assert problems_of(environ) == [
        "SSE_FAST_AUTH='jwt': needs exactly one of SSE_FAST_JWT_SECRET, SSE_FAST_JWT_PUBLIC_KEY, "
        "SSE_FAST_JWT_JWKS_FILE (SSE_FAST_JWT_SECRET and SSE_FAST_JWT_PUBLIC_KEY are all set)"
    ]


def test_a_jwt_key_without_jwt_auth_is_an_error() -> None:
    """A key given with auth=none means the operator believes the server is protected: refuse to start."""
    assert problems_of({"SSE_FAST_JWT_SECRET": SECRET, "SSE_FAST_JWT_ISSUER": "me"}) == [
        "SSE_FAST_JWT_SECRET=<redacted>: has no effect with SSE_FAST_AUTH='none' (set SSE_FAST_AUTH=jwt, or unset it)",
        "SSE_FAST_JWT_ISSUER='me': has no effect with SSE_FAST_AUTH='none' (set SSE_FAST_AUTH=jwt, or unset it)",
    ]


def test_a_short_secret_is_refused_and_never_echoed() -> None:
    problems = problems_of({"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_SECRET": "hunter2"})
    assert problems == [
        "SSE_FAST_JWT_SECRET=<redacted>: expected at least 32 bytes (HS256 needs a 256-bit key)",
    ]


def test_public_key_as_pem_text(rsa_pem: str) -> None:
    s = Settings.from_env({"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_PUBLIC_KEY": rsa_pem})
    assert s.jwt_public_key == rsa_pem.strip()
    assert settings_mod.public_key_algorithm(s.jwt_public_key) == "RS256"


def test_public_key_as_a_path_is_read(tmp_path: Path, ec_pem: str) -> None:
    path = tmp_path / "key.pem"
    path.write_text(ec_pem)
    s = Settings.from_env({"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_PUBLIC_KEY": str(path)})
    assert s.jwt_public_key == ec_pem
    assert settings_mod.public_key_algorithm(ec_pem) == "ES256"


def test_public_key_path_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    assert problems_of({"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_PUBLIC_KEY": str(missing)}) == [
        f"SSE_FAST_JWT_PUBLIC_KEY='{missing}': expected PEM text or the path of a PEM file (No such file or directory)"
    ]


def test_public_key_that_is_not_pem(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    problems = problems_of({"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_PUBLIC_KEY": str(path)})
    assert problems == [
        f"SSE_FAST_JWT_PUBLIC_KEY='{path}': expected a PEM public key (-----BEGIN PUBLIC KEY-----)",
    ]


@pytest.mark.parametrize(
    "private_key",
    [
        pytest.param(lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), id="rsa-1024"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="ec-p384"),
    ],
)
def test_public_key_of_an_unsupported_kind(private_key: Any) -> None:
    pem = pem_of(private_key())
    problems = problems_of({"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_PUBLIC_KEY": pem})
    assert problems == [
        "SSE_FAST_JWT_PUBLIC_KEY='-----BEGIN PUBLIC KEY-----...': expected an RSA (2048+ bits, RS256) or EC P-256 "
        "(ES256) public key"
    ]


def test_jwks_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}]}))
    s = Settings.from_env({"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_JWKS_FILE": str(path)})
    assert s.jwt_jwks_file == str(path)


def test_jwks_file_missing_or_bad(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"keys": []}')
    assert problems_of({"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_JWKS_FILE": str(bad)}) == [
        f"SSE_FAST_JWT_JWKS_FILE='{bad}': expected a JWKS file with at least one usable key (PyJWKSetError)"
    ]
    missing = tmp_path / "missing.json"
    assert problems_of({"SSE_FAST_AUTH": "jwt", "SSE_FAST_JWT_JWKS_FILE": str(missing)}) == [
        f"SSE_FAST_JWT_JWKS_FILE='{missing}': expected a readable JWKS file (No such file or directory)"
    ]


def test_tls_files(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n")
    s = Settings.from_env({"SSE_FAST_SSL_CERTFILE": str(cert), "SSE_FAST_SSL_KEYFILE": str(key)})
    assert (s.ssl_certfile, s.ssl_keyfile) == (str(cert), str(key))


def test_tls_files_come_together_and_are_readable_pem(tmp_path: Path) -> None:
    cert, missing = tmp_path / "cert.pem", tmp_path / "missing.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    assert problems_of({"SSE_FAST_SSL_CERTFILE": str(cert)}) == [
        "SSE_FAST_SSL_KEYFILE (default None): must be set with SSE_FAST_SSL_CERTFILE (or unset both for plain HTTP)"
    ]
    assert problems_of({"SSE_FAST_SSL_CERTFILE": str(cert), "SSE_FAST_SSL_KEYFILE": str(missing)}) == [
        f"SSE_FAST_SSL_KEYFILE='{missing}': expected a readable file (No such file or directory)"
    ]
    assert problems_of({"SSE_FAST_SSL_CERTFILE": str(cert), "SSE_FAST_SSL_KEYFILE": str(cert)}) == [
        f"SSE_FAST_SSL_KEYFILE='{cert}': expected a PEM file with a PRIVATE KEY block"
    ]
    assert problems_of({"SSE_FAST_HTTP": "3"}) == ["SSE_FAST_HTTP='3': expected one of: auto, 1, 2"]


# ---------------------------------------------------------------------------------------------------------------
# Secrets and documentation
# ---------------------------------------------------------------------------------------------------------------


def test_repr_never_shows_secrets() -> None:
    s = Settings.from_env(
        {
            "SSE_FAST_AUTH": "jwt",
            "SSE_FAST_JWT_SECRET": "topsecret" * 4,
            "SSE_FAST_API_KEYS": f"{KEY}a,{KEY}b",
            "SSE_FAST_BROKER": "redis://user:hunter2hunter2@redis:6379/0",
            "SSE_FAST_WORKERS": "2",
        }
    )
    text = repr(s)
    assert "topsecret" not in text
    assert KEY not in text
    assert "hunter2" not in text
    assert "jwt_secret=<redacted>" in text
    assert "api_keys=<2 redacted>" in text
    assert "broker='redis://user:***@redis:6379/0'" in text
    assert s.broker == "redis://user:hunter2hunter2@redis:6379/0"


def test_a_bad_setting_next_to_a_password_url_does_not_leak_it() -> None:
    problems = problems_of({"SSE_FAST_BROKER": "redis://:hunter2@r", "SSE_FAST_WORKERS": "0"})
    assert problems == ["SSE_FAST_WORKERS='0': expected a whole number > 0"]
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"SSE_FAST_BROKER": "redis://:hunter2@r", "SSE_FAST_MAX_BODY": "0"}, broker="x://:pw@h")
    assert "pw" not in str(info.value)
    assert "hunter2" not in str(info.value)


def test_describe_lists_every_setting() -> None:
    docs = settings_mod.describe()
    assert [d.name for d in docs] == list(Settings.__struct_fields__)
    by_name = {d.name: d for d in docs}
    assert by_name["keepalive"] == (
        "keepalive",
        "SSE_FAST_KEEPALIVE",
        "15",
        "s",
        "Interval of the `: keepalive` comment.",
    )
    assert by_name["retry"].unit == "ms"
    assert by_name["max_body"].default == "1 MiB"
    assert by_name["jwt_secret"].default == "-"
    assert by_name["auth"].doc.endswith("One of: none, jwt.")
    assert all(d.doc for d in docs)


def test_as_table_has_a_row_per_setting() -> None:
    text = settings_mod.as_table()
    lines = text.splitlines()
    assert len(lines) == len(Settings.__struct_fields__)
    assert lines[0].split() == ["SSE_FAST_HOST", "127.0.0.1", "Interface", "to", "bind."]
    assert any(line.split()[:3] == ["SSE_FAST_RETRY", "3000", "ms"] for line in lines)
    markdown = settings_mod.as_table(markdown=True).splitlines()
    assert markdown[:2] == ["| variable | default | meaning |", "|---|---|---|"]
    assert "| `SSE_FAST_KEEPALIVE` | 15 s | Interval of the `: keepalive` comment. |" in markdown
    assert len(markdown) == len(Settings.__struct_fields__) + 2


def test_the_readme_settings_table_is_the_generated_one() -> None:
    # The README's table is as_table(markdown=True) pasted whole: a setting added, renamed or redocumented in
    # settings.py must reach the README too (regenerate with `python -c "from sse_fast.settings import as_table;
    # print(as_table(markdown=True))"`).
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert settings_mod.as_table(markdown=True) in readme


def test_sentinel_urls_are_parsed_into_their_parts() -> None:
    parts = settings_mod.sentinel_url("redis+sentinel://app:p%40ss@s1:26379,[::1]:26380/mymaster/2")
    assert parts == settings_mod.SentinelUrl((("s1", 26379), ("::1", 26380)), "mymaster", 2, "app", "p@ss")
    assert settings_mod.sentinel_url("redis+sentinel://s1:1/m").db == 0


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://", "not a host:port: ''"),
        ("redis+sentinel://s1:26379", "the service name is missing"),
        ("redis+sentinel://s1/mymaster", "not a host:port: 's1'"),
        ("redis+sentinel://s1:26379,/mymaster", "not a host:port: ''"),
        ("redis+sentinel://s1:99999/mymaster", "not a host:port: 's1:99999'"),
        ("redis+sentinel://s1:26379/my master", "the service name is missing or not"),
        ("redis+sentinel://s1:26379/mymaster/x", "the database is not a number: 'x'"),
    ],
)
def test_malformed_sentinel_urls_say_what_is_wrong(url: str, why: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"SSE_FAST_BROKER": url})
    (problem,) = info.value.problems
    assert problem.startswith("SSE_FAST_BROKER=")
    assert "expected redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]" in problem
    assert why in problem


def test_a_sentinel_url_is_shown_without_its_password() -> None:
    s = Settings.from_env({"SSE_FAST_BROKER": "redis+sentinel://app:hunter2hunter2@s1:26379/m"})
    assert "broker='redis+sentinel://app:***@s1:26379/m'" in repr(s)


def test_the_replica_wait_must_answer_before_a_redis_call_times_out() -> None:
    assert problems_of({"SSE_FAST_REDIS_WAIT_TIMEOUT": "2.5"}) == [
        "SSE_FAST_REDIS_WAIT_TIMEOUT='2.5': expected at most 2 s (a Redis call times out after 3 s)"
    ]
    assert Settings.from_env({"SSE_FAST_REDIS_WAIT_TIMEOUT": "2"}).redis_wait_timeout == 2.0
