"""TLS and ACL through the ordinary factory and store: ``create_redis_client(ssl=True, ...)`` / ``rediss://`` URLs on a
TLS-only server (tests/harness/tls.py), and ACL users with key patterns on the pytest-redis server.

A certificate the client does not trust, a refused login and a NOPERM are configuration problems: ``StoreError``, never
``StoreUnavailable``, so the resilient wrapper does not retry them and the fallback wrapper does not switch to memory.
"""

from __future__ import annotations

import re
import socket
import ssl
import traceback
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import redis
from pytest_redis.executor import RedisExecutor
from redis.exceptions import AuthenticationError, NoPermissionError

from fmredis import (
    FallbackSessionStore,
    RedisSessionStore,
    ResilientRedisSessionStore,
    StoreError,
    StoreUnavailable,
    create_redis_client,
    diagnostics,
    resolve_settings,
)
from fmredis.client import RedisClient
from tests.harness.acl import temporary_acl_user
from tests.harness.tls import TLSCerts, TLSRedis

topology = pytest.mark.topology
tls_timeout = pytest.mark.timeout(120)

Make = Callable[..., RedisClient]
Operation = Callable[[RedisSessionStore], object]


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes/contexts, outermost first."""
    found: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(found) < 10:
        found.append(seen)
        seen = seen.__cause__ or seen.__context__
    return found


def _full_text(exc: BaseException) -> str:
    """Everything a log of the exception would show: the formatted traceback of the whole chain, and reprs."""
    return "".join(traceback.format_exception(exc)) + "".join(repr(error) for error in _chain(exc))


@pytest.fixture
def make() -> Iterator[Make]:
    """``create_redis_client(environ={}, **kwargs)``, every client made closed (pool disconnected) afterwards."""
    made: list[RedisClient] = []

    def factory(**kwargs: Any) -> RedisClient:
        client = create_redis_client(environ={}, **kwargs)
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close()
        client.connection_pool.disconnect()


class CountingStore(RedisSessionStore):
    """Counts the calls that reach the store (whatever they then do on the wire)."""

    def __init__(self, client: RedisClient) -> None:
        super().__init__(client)
        self.calls = 0

    def get(self, key: str, *, refresh: bool = False) -> dict[str, Any] | None:
        self.calls += 1
        return super().get(key, refresh=refresh)

    def set(self, key: str, value: dict[str, Any], ttl: int | None = None, *, stamp: bool = True) -> None:
        self.calls += 1
        super().set(key, value, ttl, stamp=stamp)


def _round_trip(store: RedisSessionStore) -> str:
    """set/get/create/update/sessions_for_user on ``store``; returns the created session id."""
    store.set("plain", {"n": 1})
    plain = store.get("plain")
    assert plain is not None and plain["n"] == 1
    session_id = store.create("user-1", {"role": "admin"})
    updated = store.update(session_id, lambda session: {**session, "count": 2})
    assert (updated["role"], updated["count"], updated["user_id"]) == ("admin", 2, "user-1")
    assert store.get(session_id) == updated
    assert store.sessions_for_user("user-1") == [session_id]
    return session_id


# ======================================================================================================================
# TLS
# ======================================================================================================================


@pytest.fixture(scope="module")
def tls_auth_yes(tls_certs: TLSCerts) -> Iterator[TLSRedis]:
    """A TLS-only server that requires a client certificate signed by the CA (tls-auth-clients yes)."""
    with TLSRedis(tls_certs, tls_auth_clients="yes") as server:
        yield server


@pytest.fixture
def tls(tls_server: TLSRedis) -> Iterator[TLSRedis]:
    """The shared TLS server, flushed before and after the test."""
    tls_server.flush()
    yield tls_server
    tls_server.flush()


def _tls_kwargs(server: TLSRedis, **extra: Any) -> dict[str, Any]:
    return {"host": server.host, "port": server.port, "ssl": True, "socket_timeout": 2.0, **extra}


@topology
@tls_timeout
def test_store_over_tls_round_trip(tls: TLSRedis, tls_certs: TLSCerts, make: Make) -> None:
    client = make(**_tls_kwargs(tls, ssl_ca_certs=tls_certs.ca_file))
    session_id = _round_trip(RedisSessionStore(client))
    with tls.server.client() as inspect:  # the server itself holds what the store wrote
        assert inspect.exists("session:plain", f"session:{session_id}", "user-sessions:session:user-1") == 3


@topology
@tls_timeout
def test_store_over_tls_from_a_rediss_url_with_query_parameters(tls: TLSRedis, tls_certs: TLSCerts, make: Make) -> None:
    query = urlencode(
        {"ssl_ca_certs": tls_certs.ca_file, "ssl_certfile": tls_certs.client_cert, "ssl_keyfile": tls_certs.client_key}
    )
    url = f"rediss://{tls.host}:{tls.port}/0?{query}"
    settings = resolve_settings(url=url, environ={})
    assert (settings.ssl, settings.ssl_ca_certs, settings.ssl_certfile, settings.ssl_keyfile) == (
        True,
        tls_certs.ca_file,
        tls_certs.client_cert,
        tls_certs.client_key,
    )
    assert settings.ssl_cert_reqs == "required"
    assert settings.address == f"rediss://{tls.host}:{tls.port}/0"
    _round_trip(RedisSessionStore(make(url=url)))


@topology
@tls_timeout
def test_diagnostics_report_tls(tls: TLSRedis, tls_certs: TLSCerts, make: Make, redis_url: str) -> None:
    report = diagnostics(make(**_tls_kwargs(tls, ssl_ca_certs=tls_certs.ca_file)))
    assert report["tls"] is True
    assert report["pool"]["tls"] is True
    assert report["pool"]["connection_class"] == "SSLConnection"
    assert report["pool"]["address"] == f"{tls.host}:{tls.port}"
    plain = diagnostics(make(url=redis_url))
    assert (plain["tls"], plain["pool"]["tls"], plain["pool"]["connection_class"]) == (False, False, "Connection")


def _openssl_verdict(server: TLSRedis, ca_file: str) -> str:
    """What OpenSSL says of the server's certificate to a client trusting only ``ca_file``, from a TLS handshake of
    our own (fmredis' error no longer chains the ssl exception: its cause is a scrubbed copy of redis-py's error)."""
    context = ssl.create_default_context(cafile=ca_file)
    with (
        socket.create_connection(server.address, timeout=2.0) as sock,
        pytest.raises(ssl.SSLCertVerificationError) as caught,
    ):
        context.wrap_socket(sock, server_hostname=server.host)
    return str(caught.value.verify_message)


UNTRUSTED_MESSAGE = re.compile(
    r"Redis (?P<command>\S+) failed: the server's TLS certificate was not accepted \((?P<reason>[^()]+)\); "
    r"check ssl_ca_certs and ssl_cert_reqs"
)

STORE_OPERATIONS: list[Any] = [
    pytest.param(lambda store: store.get("k"), "GET", id="get"),
    pytest.param(lambda store: store.set("k", {"a": 1}), "SET", id="set"),
    pytest.param(lambda store: store.delete("k"), "UNLINK", id="delete"),
    pytest.param(lambda store: store.get_many(["k", "j"]), "MGET", id="get_many"),
    pytest.param(lambda store: store.get("k", refresh=True), "GETEX", id="get-refresh"),
    pytest.param(lambda store: store.create("user-1", {}), "create", id="create"),
    pytest.param(lambda store: store.update("k", dict), "update", id="update"),
    pytest.param(lambda store: store.sessions_for_user("user-1"), "sessions_for_user", id="sessions_for_user"),
    pytest.param(lambda store: store.delete_user_sessions("user-1"), "delete_user_sessions", id="delete_user_sess"),
]


@topology
@tls_timeout
@pytest.mark.parametrize(("operation", "command"), STORE_OPERATIONS)
def test_untrusted_server_certificate_is_a_configuration_error(
    tls: TLSRedis, tls_certs: TLSCerts, make: Make, operation: Operation, command: str
) -> None:
    store = RedisSessionStore(make(**_tls_kwargs(tls, ssl_ca_certs=tls_certs.other_ca_file)))
    with pytest.raises(StoreError) as caught:
        operation(store)
    exc = caught.value
    assert not isinstance(exc, StoreUnavailable), repr(exc)
    match = UNTRUSTED_MESSAGE.fullmatch(str(exc))
    assert match is not None, str(exc)
    assert match["command"] == command
    assert isinstance(exc.__cause__, redis.ConnectionError)
    # OpenSSL's own words ("self-signed certificate in certificate chain"), as a handshake of our own hears them
    assert match["reason"] == _openssl_verdict(tls, tls_certs.other_ca_file)
    assert "certificate" in match["reason"]


@topology
@tls_timeout
def test_untrusted_certificate_through_the_resilient_store_is_attempted_once(
    tls: TLSRedis, tls_certs: TLSCerts, make: Make
) -> None:
    built: list[CountingStore] = []
    sleeps: list[float] = []

    def factory() -> CountingStore:
        built.append(CountingStore(make(**_tls_kwargs(tls, ssl_ca_certs=tls_certs.other_ca_file))))
        return built[-1]

    resilient = ResilientRedisSessionStore(factory, attempts=5, rebuild_after=1, sleep=sleeps.append)
    for call in (lambda: resilient.get("k"), lambda: resilient.set("k", {"a": 1})):
        with pytest.raises(StoreError, match="TLS certificate was not accepted") as caught:
            call()
        assert not isinstance(caught.value, StoreUnavailable)
    assert len(built) == 1  # no rebuild
    assert built[0].calls == 2  # one attempt per call
    assert (sleeps, resilient.rebuilds, resilient.breaker.state) == ([], 0, "closed")


@topology
@tls_timeout
def test_untrusted_certificate_through_the_fallback_store_does_not_degrade(
    tls: TLSRedis, tls_certs: TLSCerts, make: Make
) -> None:
    primary = CountingStore(make(**_tls_kwargs(tls, ssl_ca_certs=tls_certs.other_ca_file)))
    fallback = FallbackSessionStore(ResilientRedisSessionStore(lambda: primary, sleep=lambda _seconds: None))
    with pytest.raises(StoreError, match="check ssl_ca_certs") as caught:
        fallback.set("k", {"a": 1})
    assert not isinstance(caught.value, StoreUnavailable)
    with pytest.raises(StoreError, match="check ssl_ca_certs"):
        fallback.get("k")  # not None from memory: the error stays visible
    assert (fallback.degraded, fallback.pending, primary.calls) == (False, 0, 2)
    assert fallback.stats()["degraded"] == 0


@topology
@tls_timeout
def test_client_certificate_required_and_given(tls_auth_yes: TLSRedis, tls_certs: TLSCerts, make: Make) -> None:
    tls_auth_yes.flush()
    with_cert = make(
        **_tls_kwargs(
            tls_auth_yes,
            ssl_ca_certs=tls_certs.ca_file,
            ssl_certfile=tls_certs.client_cert,
            ssl_keyfile=tls_certs.client_key,
        )
    )
    _round_trip(RedisSessionStore(with_cert))
    query = urlencode(
        {"ssl_ca_certs": tls_certs.ca_file, "ssl_certfile": tls_certs.client_cert, "ssl_keyfile": tls_certs.client_key}
    )
    from_url = RedisSessionStore(make(url=f"rediss://{tls_auth_yes.host}:{tls_auth_yes.port}/0?{query}"))
    assert from_url.get("plain") is not None  # the URL's certificate files are presented too
    tls_auth_yes.flush()


# What the refusal looks like. TLS 1.3 finishes the client's side of the handshake before the server checks the client
# certificate, so the client learns of the refusal on its first command: either as the server's alert (certificate
# required) when it arrives before the client writes, or, more often, as an EOF while writing.
# Under TLS 1.3 the client finishes its side of the handshake before the server checks for a certificate, so the
# refusal arrives on the first command, in one of two forms (timing decides which).
NO_CLIENT_CERT_EOF = re.compile(
    r"Redis GET failed: ConnectionError: Error 8 while writing to socket\. EOF occurred in violation of protocol "
    r"\(_ssl\.c:\d+\)\.; if the server requires client certificates, check ssl_certfile"
)
NO_CLIENT_CERT_ALERT = (
    "Redis GET failed: the server requires a TLS client certificate; check ssl_certfile and ssl_keyfile"
)


def _refusal_without_client_cert(server: TLSRedis, certs: TLSCerts, make: Make) -> StoreError:
    store = RedisSessionStore(make(**_tls_kwargs(server, ssl_ca_certs=certs.ca_file)))
    with pytest.raises(StoreError) as caught:
        store.get("k")
    return caught.value


@topology
@tls_timeout
def test_client_certificate_required_but_missing_is_refused(
    tls_auth_yes: TLSRedis, tls_certs: TLSCerts, make: Make
) -> None:
    """The refusal comes in one of three forms, by timing (and Python/OpenSSL version): the explicit alert is a
    configuration error (StoreError, not retried); a bare TLS EOF or a reset could also be a dropped connection, so
    they stay StoreUnavailable, the EOF with a hint at the likely fix (a reset carries no TLS error to go by).
    (The ssl exception is not in the chain any more: the message is what tells the forms apart.)"""
    for _attempt in range(5):
        exc = _refusal_without_client_cert(tls_auth_yes, tls_certs, make)
        assert isinstance(exc.__cause__, redis.ConnectionError)
        if type(exc) is StoreError:
            assert str(exc) == NO_CLIENT_CERT_ALERT
        else:
            assert isinstance(exc, StoreUnavailable), repr(exc)
            assert NO_CLIENT_CERT_EOF.fullmatch(str(exc)) or (  # seen on Python 3.13: the close arrives as a reset
                str(exc).startswith("Redis GET failed: ConnectionError: ") and "Connection reset by peer" in str(exc)
            ), str(exc)
    with open(tls_auth_yes.server.log_path, encoding="utf-8") as log:
        assert "peer did not return a certificate" in log.read()  # the server's side of the story


@topology
@tls_timeout
def test_client_certificate_required_but_missing_says_so_when_tls_tells(
    tls_auth_yes: TLSRedis, tls_certs: TLSCerts, make: Make
) -> None:
    """Where the TLS layer says what happened (the alert, or its EOF), the message points at the fix, as an untrusted
    server certificate does ("check ssl_ca_certs ..."). Five tries, so that more than one form is likely seen."""
    for _attempt in range(5):
        exc = _refusal_without_client_cert(tls_auth_yes, tls_certs, make)
        if "Connection reset by peer" not in str(exc):  # a reset carries no TLS error to go by
            assert "certificate" in str(exc), str(exc)
            assert "ssl_certfile" in str(exc), str(exc)


@topology
@tls_timeout
@pytest.mark.parametrize("via", ["arguments", "url"])
def test_cert_reqs_none_connects_despite_an_untrusted_certificate(
    tls: TLSRedis, tls_certs: TLSCerts, make: Make, via: str
) -> None:
    """The documented escape hatch for self-signed development setups: no verification of the server at all."""
    if via == "arguments":
        client = make(**_tls_kwargs(tls, ssl_ca_certs=tls_certs.other_ca_file, ssl_cert_reqs="none"))
    else:
        query = urlencode({"ssl_ca_certs": tls_certs.other_ca_file, "ssl_cert_reqs": "none"})
        client = make(url=f"rediss://{tls.host}:{tls.port}/0?{query}")
    _round_trip(RedisSessionStore(client))
    assert diagnostics(client)["tls"] is True


@topology
@tls_timeout
def test_plain_client_on_the_tls_port_is_unavailable(tls: TLSRedis, make: Make) -> None:
    store = RedisSessionStore(make(host=tls.host, port=tls.port, socket_timeout=2.0))
    with pytest.raises(StoreUnavailable) as caught:
        store.get("k")
    assert str(caught.value).startswith("Redis GET failed: ConnectionError: ")
    assert "Connection reset by peer" in str(caught.value)
    assert isinstance(caught.value.__cause__, redis.ConnectionError)


# ======================================================================================================================
# ACL (on the pytest-redis server)
# ======================================================================================================================

APP_USER = "fmredis-app"
APP_PASSWORD = "app-S3cret/pw#1@x"  # characters a URL must percent-encode
STORE_PATTERNS = ["session:*", "user-sessions:session:*"]
NOPERM_KEYS = "NOPERM this user has no permissions to access one of the keys used as arguments"  # the server's words
WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled. (check username and password)"


@pytest.fixture
def app_user(raw: redis.Redis) -> Iterator[str]:
    """A user with every command but only the store's keys (sessions and the per-user index)."""
    with temporary_acl_user(raw, APP_USER, APP_PASSWORD, STORE_PATTERNS) as name:
        yield name


def _acl_client(make: Make, server: RedisExecutor, user: str, password: str, **extra: Any) -> RedisClient:
    return make(host=server.host, port=server.port, username=user, password=password, socket_timeout=2.0, **extra)


def _keys(raw: redis.Redis) -> set[bytes]:
    return set(raw.keys("*"))


def test_acl_user_limited_to_the_store_keys_can_use_the_store(
    app_user: str, redis_server: RedisExecutor, raw: redis.Redis, make: Make
) -> None:
    store = RedisSessionStore(_acl_client(make, redis_server, app_user, APP_PASSWORD))
    store.set("k", {"a": 1})
    assert (store.get("k") or {}).get("a") == 1
    assert store.delete("k") is True
    assert store.get("k") is None
    first = store.create("user-1", {"device": "phone"})
    second = store.create("user-1", {"device": "laptop"})
    assert sorted(store.sessions_for_user("user-1")) == sorted([first, second])
    assert store.update(first, lambda session: {**session, "seen": True})["seen"] is True
    assert _keys(raw) == {f"session:{first}".encode(), f"session:{second}".encode(), b"user-sessions:session:user-1"}
    assert store.delete_user_sessions("user-1") == 2
    assert store.sessions_for_user("user-1") == []
    assert _keys(raw) == {b"user-sessions:session:"}  # only the logout notes (their key matches the index pattern)
    whoami = _acl_client(make, redis_server, app_user, APP_PASSWORD).execute_command("ACL", "WHOAMI")
    assert whoami == APP_USER.encode()


def test_acl_user_through_a_url_with_an_encoded_password(
    app_user: str, redis_server: RedisExecutor, raw: redis.Redis, make: Make
) -> None:
    url = f"redis://{app_user}:{quote(APP_PASSWORD, safe='')}@{redis_server.host}:{redis_server.port}/0"
    store = RedisSessionStore(make(url=url))
    session_id = store.create("user-1", {})
    assert store.sessions_for_user("user-1") == [session_id]


@pytest.mark.parametrize(("operation", "command"), STORE_OPERATIONS)
def test_store_outside_the_users_key_patterns_gets_noperm(
    app_user: str, redis_server: RedisExecutor, raw: redis.Redis, make: Make, operation: Operation, command: str
) -> None:
    raw.set("other:k", b"{}")  # so that reads and updates have something they are not allowed to see
    store = RedisSessionStore(_acl_client(make, redis_server, app_user, APP_PASSWORD), prefix="other:")
    with pytest.raises(StoreError) as caught:
        operation(store)
    exc = caught.value
    assert not isinstance(exc, StoreUnavailable), repr(exc)
    assert str(exc) == f"Redis {command} failed: NoPermissionError: {NOPERM_KEYS}"
    assert any(isinstance(error, NoPermissionError) for error in _chain(exc))
    assert _keys(raw) == {b"other:k"}  # nothing written
    assert raw.get("other:k") == b"{}"


@pytest.fixture
def wrong_password_client(app_user: str, redis_server: RedisExecutor, make: Make) -> RedisClient:
    return _acl_client(make, redis_server, app_user, "not-the-" + APP_PASSWORD)


def test_wrong_password_is_a_configuration_error(wrong_password_client: RedisClient, raw: redis.Redis) -> None:
    store = RedisSessionStore(wrong_password_client)
    for operation, command in (
        (lambda: store.get("k"), "GET"),
        (lambda: store.set("k", {}), "SET"),
        (lambda: store.create("user-1", {}), "create"),
    ):
        with pytest.raises(StoreError) as caught:
            operation()
        exc = caught.value
        assert not isinstance(exc, StoreUnavailable), repr(exc)
        assert str(exc) == f"Redis {command} failed: AuthenticationError: {WRONGPASS}"
        assert isinstance(exc.__cause__, AuthenticationError)
        assert APP_PASSWORD not in _full_text(exc)
    assert _keys(raw) == set()


def test_wrong_password_through_the_wrappers_is_attempted_once(
    wrong_password_client: RedisClient, raw: redis.Redis
) -> None:
    primary = CountingStore(wrong_password_client)
    built: list[CountingStore] = []
    sleeps: list[float] = []

    def factory() -> CountingStore:
        built.append(primary)
        return primary

    resilient = ResilientRedisSessionStore(factory, attempts=5, rebuild_after=1, sleep=sleeps.append)
    fallback = FallbackSessionStore(resilient)
    with pytest.raises(StoreError) as caught:
        fallback.set("k", {"a": 1})
    assert str(caught.value) == f"Redis SET failed: AuthenticationError: {WRONGPASS}"
    assert not isinstance(caught.value, StoreUnavailable)
    with pytest.raises(StoreError) as caught:
        fallback.get("k")
    assert str(caught.value) == f"Redis GET failed: AuthenticationError: {WRONGPASS}"
    assert (primary.calls, len(built), sleeps, resilient.rebuilds) == (2, 1, [], 0)
    assert resilient.breaker.state == "closed"
    assert (fallback.degraded, fallback.pending) == (False, 0)


def test_password_never_shown(app_user: str, redis_server: RedisExecutor, make: Make) -> None:
    encoded = quote(APP_PASSWORD, safe="")
    url = f"redis://{app_user}:{encoded}@{redis_server.host}:{redis_server.port}/0"
    by_arguments = resolve_settings(
        host=redis_server.host, port=redis_server.port, username=app_user, password=APP_PASSWORD, environ={}
    )
    by_url = resolve_settings(url=url, environ={})
    assert by_arguments.password == by_url.password == APP_PASSWORD
    client = make(url=url)
    store = RedisSessionStore(client)
    shown = [
        repr(by_arguments),
        str(by_arguments),
        by_arguments.explain(),
        repr(by_url),
        by_url.explain(),
        by_url.address,
        repr(client),
        repr(client.connection_pool),
        repr(store),
    ]
    for text in shown:
        assert APP_PASSWORD not in text, text
        assert encoded not in text, text
    assert "password='***'" in repr(by_arguments)
    store.set("k", {"a": 1})  # it does log in with it
    with pytest.raises(StoreError) as caught:
        RedisSessionStore(client, prefix="other:").set("k", {})
    assert APP_PASSWORD not in _full_text(caught.value)
    assert encoded not in _full_text(caught.value)


def test_user_without_the_index_keys_cannot_create_and_leaves_nothing_behind(
    redis_server: RedisExecutor, raw: redis.Redis, make: Make
) -> None:
    with temporary_acl_user(raw, "fmredis-narrow", "narrow-pw", ["session:*"]) as user:
        store = RedisSessionStore(_acl_client(make, redis_server, user, "narrow-pw"))
        store.set("k", {"a": 1})
        assert (store.get("k") or {}).get("a") == 1
        with pytest.raises(StoreError) as caught:
            store.create("user-1", {"secret": "payload"})
        exc = caught.value
        assert not isinstance(exc, StoreUnavailable), repr(exc)
        assert str(exc) == f"Redis create failed: NoPermissionError: {NOPERM_KEYS}"  # no session id, no payload
        assert isinstance(exc.__cause__, NoPermissionError)
        assert _keys(raw) == {b"session:k"}  # the script was refused as a whole: no session without its index entry
        assert raw.keys("user-sessions:*") == []
        with pytest.raises(StoreError) as caught:
            store.sessions_for_user("user-1")
        assert str(caught.value) == f"Redis sessions_for_user failed: NoPermissionError: {NOPERM_KEYS}"
        with pytest.raises(StoreError) as caught:
            store.delete_user_sessions("user-1")
        assert str(caught.value) == f"Redis delete_user_sessions failed: NoPermissionError: {NOPERM_KEYS}"
        assert store.get("k") is not None  # the plain key/value part keeps working
