"""fmredis.contrib.flask on a real Redis: the cookie (a signed id, Flask's SESSION_COOKIE_* settings, expiry), the
stored document and its sliding TTL, login (regenerate, "log out everywhere"), overlapping requests of one session
through a threaded waitress server (against Flask-Session 0.8, which loses changes in the same scenarios), bad values,
and Redis outages with and without a FallbackSessionStore.

The app and its views are in tests/contrib/flask_app_factory.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
import redis
from flask import Flask, request, session
from werkzeug.exceptions import InternalServerError
from werkzeug.test import TestResponse

from fmredis import FallbackSessionStore, RedisSessionStore, SerializationError, StoreUnavailable, create_redis_client
from tests.contrib.flask_app_factory import (
    LIFETIME,
    PREFIX,
    WAIT,
    Browser,
    flask_session_app,
    fmredis_app,
    serve,
)
from tests.harness.servers import RedisServer

pytestmark = pytest.mark.timeout(60)

MARGIN = 30  # seconds a TTL or expiry may have run down between the write and the check


@pytest.fixture
def flask_store(client: redis.Redis) -> RedisSessionStore:
    return RedisSessionStore(client, prefix=PREFIX)


@pytest.fixture
def app(flask_store: RedisSessionStore) -> Flask:
    return fmredis_app(flask_store)


@pytest.fixture
def naive_app(raw: redis.Redis) -> Flask:
    return flask_session_app(raw)


# --- helpers ---------------------------------------------------------------------------------------------------------


def set_cookies(response: TestResponse) -> dict[str, dict[str, Any]]:
    """The response's Set-Cookie headers as {name: {"value": ..., lower-cased attribute: value, or True if bare}}."""
    parsed: dict[str, dict[str, Any]] = {}
    for header in response.headers.getlist("Set-Cookie"):
        first, *attributes = (part.strip() for part in header.split(";"))
        name, _, value = first.partition("=")
        cookie: dict[str, Any] = {"value": value}
        for attribute in attributes:
            key, equals, argument = attribute.partition("=")
            cookie[key.lower()] = argument if equals else True
        parsed[name] = cookie
    return parsed


def stored(raw: redis.Redis, sid: str) -> dict[str, Any] | None:
    payload = raw.get(PREFIX + sid)
    return None if payload is None else json.loads(payload)


def sid_of(test_client: Any) -> str:
    return test_client.get("/sid").get_data(as_text=True)  # type: ignore[no-any-return]


def new_session(app: Flask, query: str = "color=blue&size=9") -> tuple[Any, str, str]:
    """A test client with a stored session: (client, its cookie value, its session id)."""
    browser = app.test_client()
    response = browser.get(f"/set?{query}")
    cookie = set_cookies(response)["session"]["value"]
    return browser, cookie, sid_of(browser)


# --- basic life ------------------------------------------------------------------------------------------------------


def test_first_write_stores_the_data_and_sends_a_signed_id(app: Flask, raw: redis.Redis) -> None:
    browser, cookie, sid = new_session(app)
    assert cookie != sid and len(sid) >= 32  # the cookie is not the bare id ...
    document = stored(raw, sid)
    assert document is not None and document["data"] == {"color": "blue", "size": "9"}
    assert {"created_at", "last_activity"} <= set(document)
    assert browser.get("/dump").json == {"color": "blue", "size": "9"}  # ... and the data round-trips
    assert browser.get("/set?size=10").status_code == 200
    assert browser.get("/dump").json == {"color": "blue", "size": "10"}
    assert raw.dbsize() == 1  # one session, one key


def altered_signature(cookie: str) -> str:
    """The cookie with its signature's first character changed (not its last: in base64 that may be padding bits)."""
    head, dot, signature = cookie.rpartition(".")
    return head + dot + ("A" if signature[0] != "A" else "B") + signature[1:]


FORGERIES: dict[str, Callable[[str, str], str]] = {
    "bare-id": lambda cookie, sid: sid,
    "signature-changed": lambda cookie, sid: altered_signature(cookie),
    "id-changed": lambda cookie, sid: ("A" if cookie[0] != "A" else "B") + cookie[1:],
    "garbage": lambda cookie, sid: "\u00e9t\u00e9.not-a-signature",
}


@pytest.mark.parametrize("forge", FORGERIES.values(), ids=FORGERIES.keys())
def test_a_tampered_cookie_is_a_new_empty_session(
    app: Flask, raw: redis.Redis, forge: Callable[[str, str], str]
) -> None:
    _, cookie, sid = new_session(app)
    before = raw.get(PREFIX + sid)
    intruder = app.test_client()
    intruder.set_cookie("session", forge(cookie, sid))
    assert intruder.get("/dump").json == {}  # nothing of the victim's session is loaded
    response = intruder.get("/set?stolen=1")
    issued = set_cookies(response)["session"]["value"]
    assert issued != cookie and sid_of(intruder) != sid  # a new session of its own
    assert raw.get(PREFIX + sid) == before  # the victim's is untouched


def test_cookies_signed_with_a_key_in_secret_key_fallbacks_still_load(
    flask_store: RedisSessionStore, raw: redis.Redis
) -> None:
    _, cookie, _ = new_session(fmredis_app(flask_store, SECRET_KEY="old-key"), "cart=3")
    for config, expected in (
        ({"SECRET_KEY": "new-key", "SECRET_KEY_FALLBACKS": ["old-key"]}, {"cart": "3"}),  # rotated
        ({"SECRET_KEY": "new-key"}, {}),  # the old key dropped: its cookies no longer verify
    ):
        browser = fmredis_app(flask_store, **config).test_client()
        browser.set_cookie("session", cookie)
        assert browser.get("/dump").json == expected, config


def test_without_a_secret_key_flask_refuses_to_store_a_session(
    flask_store: RedisSessionStore, raw: redis.Redis
) -> None:
    app = fmredis_app(flask_store, SECRET_KEY=None)
    browser = app.test_client()
    assert browser.get("/none").status_code == 200
    with pytest.raises(RuntimeError, match="secret key"):  # Flask's null session explains it
        browser.get("/set?color=blue")
    assert raw.dbsize() == 0


def test_a_request_that_never_touches_the_session_gets_no_cookie_and_writes_nothing(
    app: Flask, raw: redis.Redis
) -> None:
    browser = app.test_client()
    for path in ("/none", "/get/color", "/dump", "/clear"):  # no access, reads, and emptying an empty session
        response = browser.get(path)
        assert response.status_code == 200 and "Set-Cookie" not in response.headers, path
    assert browser.get_cookie("session") is None
    assert raw.dbsize() == 0


@pytest.mark.parametrize("path", ["/clear", "/pop/color"])
def test_emptying_the_session_deletes_it_and_expires_the_cookie(app: Flask, raw: redis.Redis, path: str) -> None:
    browser, _, sid = new_session(app, "color=blue")
    response = browser.get(path)
    cookie = set_cookies(response)["session"]
    assert cookie["value"] == ""
    assert cookie.get("max-age") == "0" or parsedate_to_datetime(cookie["expires"]).year == 1970
    assert raw.exists(PREFIX + sid) == 0
    assert browser.get("/dump").json == {}


# --- cookie settings and expiry --------------------------------------------------------------------------------------


COOKIE_SETTINGS = {
    "defaults": ({}, {"path": "/", "httponly": True}, ["domain", "secure", "samesite", "partitioned"]),
    "all-set": (
        {
            "SESSION_COOKIE_NAME": "app-sid",
            "SESSION_COOKIE_DOMAIN": "shop.example.test",
            "SESSION_COOKIE_PATH": "/app",
            "SESSION_COOKIE_HTTPONLY": False,
            "SESSION_COOKIE_SECURE": True,
            "SESSION_COOKIE_SAMESITE": "Strict",
            "SESSION_COOKIE_PARTITIONED": True,
        },
        {"domain": "shop.example.test", "path": "/app", "secure": True, "samesite": "Strict", "partitioned": True},
        ["httponly"],
    ),
}


@pytest.mark.parametrize(("config", "present", "absent"), COOKIE_SETTINGS.values(), ids=COOKIE_SETTINGS.keys())
def test_session_cookie_settings_are_honoured(
    flask_store: RedisSessionStore, raw: redis.Redis, config: dict[str, Any], present: dict[str, Any], absent: list[str]
) -> None:
    app = fmredis_app(flask_store, **config)
    response = app.test_client().get("/set?color=blue")
    cookies = set_cookies(response)
    cookie = cookies[config.get("SESSION_COOKIE_NAME", "session")]
    assert {key: cookie.get(key) for key in present} == present
    assert [key for key in absent if key in cookie] == []
    assert len(cookies) == 1 and raw.dbsize() == 1


@pytest.mark.parametrize("permanent", [True, False], ids=["permanent", "browser-session"])
def test_cookie_expiry_and_redis_ttl_follow_permanent_session_lifetime(
    app: Flask, raw: redis.Redis, permanent: bool
) -> None:
    browser = app.test_client()
    response = browser.get(f"/permanent/{int(permanent)}")
    cookie = set_cookies(response)["session"]
    if permanent:
        expires = parsedate_to_datetime(cookie["expires"])
        assert abs(expires - (datetime.now(timezone.utc) + timedelta(seconds=LIFETIME))) < timedelta(seconds=MARGIN)
        assert "max-age" not in cookie or LIFETIME - MARGIN <= int(cookie["max-age"]) <= LIFETIME
    else:
        assert "expires" not in cookie and "max-age" not in cookie
    # The Redis TTL is PERMANENT_SESSION_LIFETIME either way (the store's default TTL, 1800 s, is not it).
    assert (LIFETIME - MARGIN) * 1000 <= raw.pttl(PREFIX + sid_of(browser)) <= LIFETIME * 1000


@pytest.mark.parametrize("permanent", [True, False], ids=["permanent", "browser-session"])
def test_an_unchanged_session_is_not_rewritten_but_its_ttl_slides(
    app: Flask, raw: redis.Redis, permanent: bool
) -> None:
    browser = app.test_client()
    browser.get(f"/permanent/{int(permanent)}")
    key = PREFIX + sid_of(browser)
    before = raw.get(key)
    raw.pexpire(key, 5_000)  # as if most of its lifetime had passed
    response = browser.get("/get/seen")
    assert response.json == "yes"
    assert raw.get(key) == before  # not written: same bytes, last_activity included
    assert raw.pttl(key) >= (LIFETIME - MARGIN) * 1000  # but the read restarted its expiry
    # A permanent session's cookie is refreshed too (SESSION_REFRESH_EACH_REQUEST); a browser-session one is not sent.
    assert ("Set-Cookie" in response.headers) is permanent


def test_flasks_default_31_day_lifetime_is_cut_to_the_stores_max_ttl(
    flask_store: RedisSessionStore, raw: redis.Redis
) -> None:
    app = fmredis_app(flask_store, PERMANENT_SESSION_LIFETIME=timedelta(days=31))
    browser = app.test_client()
    browser.get("/set?color=blue")
    assert 0 < raw.ttl(PREFIX + sid_of(browser)) <= flask_store.ttl_rules.max_ttl
    assert browser.get("/dump").json == {"color": "blue"}


def test_without_a_store_one_is_built_from_fmredis_redis(redis_url: str, raw: redis.Redis) -> None:
    app = fmredis_app(None, FMREDIS_REDIS={"url": redis_url, "environ": {}})
    browser = app.test_client()
    browser.get("/set?color=blue")
    assert stored(raw, sid_of(browser))["data"] == {"color": "blue"}  # type: ignore[index]
    assert (LIFETIME - MARGIN) * 1000 <= raw.pttl(PREFIX + sid_of(browser)) <= LIFETIME * 1000
    app.session_interface.get_store(app).close()  # type: ignore[attr-defined]


# --- login -----------------------------------------------------------------------------------------------------------


def test_regenerate_at_login_moves_the_session_and_lists_it_under_the_user(
    app: Flask, flask_store: RedisSessionStore, raw: redis.Redis
) -> None:
    browser, old_cookie, old_sid = new_session(app, "cart=3")
    response = browser.get("/login/u-42")
    new_cookie = set_cookies(response)["session"]["value"]
    new_sid = sid_of(browser)
    assert new_cookie != old_cookie and new_sid != old_sid
    assert raw.exists(PREFIX + old_sid) == 0  # the pre-login id is dead at once ...
    replay = app.test_client()
    replay.set_cookie("session", old_cookie)
    assert replay.get("/dump").json == {}  # ... so a planted (fixated) id gets nothing
    assert browser.get("/dump").json == {"cart": "3", "user": "u-42"}  # the data followed
    assert stored(raw, new_sid)["user_id"] == "u-42"  # type: ignore[index]
    assert flask_store.sessions_for_user("u-42") == [new_sid]

    assert flask_store.delete_user_sessions("u-42") == 1  # "log out everywhere"
    assert browser.get("/dump").json == {}
    assert raw.exists(PREFIX + new_sid) == 0


def test_login_as_the_first_request_also_lists_the_session(
    app: Flask, flask_store: RedisSessionStore, raw: redis.Redis
) -> None:
    browser = app.test_client()
    response = browser.get("/login/u-7")
    assert "session" in set_cookies(response)
    sid = sid_of(browser)
    assert browser.get("/dump").json == {"user": "u-7"}
    assert flask_store.sessions_for_user("u-7") == [sid]
    assert flask_store.delete_user_sessions("u-7") == 1
    assert browser.get("/dump").json == {}


# --- overlapping requests of one session -----------------------------------------------------------------------------


def overlap(app: Flask, first: str, second: str) -> dict[str, Any]:
    """Start a session {"base": "0"}, run ``/meet/first?<first>`` and ``/meet/second?<second>`` on it concurrently
    through waitress (both open the session before either saves; first saves first), and return the session after."""
    meeting = app.extensions["meeting"]
    with serve(app) as port:
        owner = Browser(port)
        owner.get("/set?base=0")
        assert owner.cookie is not None

        def send(role: str, query: str) -> int:
            browser = Browser(port, owner.cookie)
            try:
                status, _ = browser.get(f"/meet/{role}?{query}")
            finally:
                browser.close()
            if role == "first":
                meeting.first_saved.set()  # its response came after its save
            return status

        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(send, "first", first), pool.submit(send, "second", second)]
            assert [future.result(WAIT * 2) for future in futures] == [200, 200]
        status, body = owner.get("/dump")
        owner.close()
    assert status == 200
    return json.loads(body)  # type: ignore[no-any-return]


SCENARIOS = {
    "different-keys": ("a=1", "b=2", {"base": "0", "a": "1", "b": "2"}, {"base": "0", "b": "2"}),
    "same-key": ("color=red&a=1", "color=blue&b=2", {"base": "0", "color": "blue", "a": "1", "b": "2"}, None),
}


@pytest.mark.parametrize(("first", "second", "kept", "naive"), SCENARIOS.values(), ids=SCENARIOS.keys())
def test_overlapping_requests_keep_both_changes(
    app: Flask, naive_app: Flask, first: str, second: str, kept: dict[str, str], naive: dict[str, str] | None
) -> None:
    assert overlap(app, first, second) == kept  # same key: the later save wins, for that key only
    # Flask-Session writes back the whole session the later request loaded: the first request's change is undone.
    naive = naive or {key: value for key, value in kept.items() if key != "a"}
    assert overlap(naive_app, first, second) == naive


THREADS, ROUNDS = 8, 25


def count_concurrently(app: Flask) -> dict[str, int]:
    """8 threads x ROUNDS requests through waitress, each incrementing its own counter in one shared session; each
    thread's first request waits at a start line after loading the session, so at least one round truly overlaps."""
    app.extensions["meeting"].start_line = threading.Barrier(THREADS, timeout=WAIT)
    with serve(app, threads=THREADS) as port:
        owner = Browser(port)
        owner.get("/set?base=0")

        def count(n: int) -> list[int]:
            browser = Browser(port, owner.cookie)
            try:
                return [browser.get(f"/incr/c{n}{'?meet=1' if i == 0 else ''}")[0] for i in range(ROUNDS)]
            finally:
                browser.close()

        with ThreadPoolExecutor(THREADS) as pool:
            statuses = [status for result in pool.map(count, range(THREADS)) for status in result]
        assert statuses == [200] * THREADS * ROUNDS
        _, body = owner.get("/dump")
        owner.close()
    counters: dict[str, int] = json.loads(body)
    assert counters.pop("base") == "0"
    return counters


def test_concurrent_counters_in_one_session_are_exact(app: Flask, naive_app: Flask) -> None:
    assert count_concurrently(app) == {f"c{n}": ROUNDS for n in range(THREADS)}
    naive = count_concurrently(naive_app)
    assert sum(naive.values()) < THREADS * ROUNDS  # Flask-Session lost increments


# --- bad input -------------------------------------------------------------------------------------------------------


def test_a_value_json_cannot_hold_fails_the_save_naming_the_key_and_writes_nothing(
    app: Flask, raw: redis.Redis
) -> None:
    browser, _, sid = new_session(app, "color=blue")
    before = raw.get(PREFIX + sid)
    with pytest.raises(SerializationError, match="'blob'") as raised:
        browser.get("/bad")
    assert "4111" not in str(raised.value)  # the value is session data: only its type may be named
    assert raw.get(PREFIX + sid) == before  # not even the request's valid key ("fine") was written

    fresh = app.test_client()
    with pytest.raises(SerializationError, match="'blob'"):
        fresh.get("/bad")
    assert fresh.get_cookie("session") is None
    assert raw.dbsize() == 1


# --- Redis down ------------------------------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer("flask-sessions", persistent=True) as process:
        yield process


@pytest.fixture
def own_store(server: RedisServer) -> Iterator[RedisSessionStore]:
    """A store on `server` with short timeouts and no retries, so an outage shows at once."""
    client = create_redis_client(
        url=server.url,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry_attempts=0,
        health_check_interval=0,
        environ={},
    )
    with RedisSessionStore(client, prefix=PREFIX, owns_client=True) as store:
        yield store


def outage_mid_request(app: Flask, server: RedisServer) -> None:
    """Adds ``/outage?k=v``: sets keys after the session loaded, then kills `server`, so the save meets the outage."""

    @app.get("/outage")
    def outage() -> str:
        session.update(request.args.to_dict())
        server.kill()
        return "set"


@pytest.mark.fault
def test_redis_down_without_a_fallback_fails_the_request(server: RedisServer, own_store: RedisSessionStore) -> None:
    app = fmredis_app(own_store)
    outage_mid_request(app, server)
    browser, cookie, _ = new_session(app, "cart=3")
    with pytest.raises(StoreUnavailable):
        browser.get("/outage?cart=4")  # saving a change
    with pytest.raises(StoreUnavailable):
        browser.get("/dump")  # loading: never an empty session (a silent logout)
    with pytest.raises(StoreUnavailable):
        app.test_client().get("/set?color=blue")  # storing a new one
    app.testing = False  # PROPAGATE_EXCEPTIONS off: what a user gets
    for client, path in ((browser, "/dump"), (app.test_client(), "/set?color=blue")):
        response = client.get(path)
        assert response.status_code == 500 and "Set-Cookie" not in response.headers, path
    app.testing = True
    server.restart()
    assert browser.get_cookie("session").value == cookie  # type: ignore[union-attr]
    assert browser.get("/dump").json == {"cart": "3"}  # the session outlived the outage, unchanged


def unavailable_as_503(app: Flask) -> None:
    """The 503 handler docs/frameworks.md shows (Flask wraps a session error in its 500 handler)."""

    @app.errorhandler(InternalServerError)
    def unavailable(error: InternalServerError) -> Any:
        if isinstance(error.original_exception, StoreUnavailable):
            return "Service unavailable, try again shortly", 503, {"Retry-After": "1"}
        return error


@pytest.mark.fault
def test_the_documented_503_handler_answers_an_outage(
    server: RedisServer, own_store: RedisSessionStore, caplog: pytest.LogCaptureFixture
) -> None:
    app = fmredis_app(own_store, TESTING=False)
    unavailable_as_503(app)
    outage_mid_request(app, server)
    browser, _, _ = new_session(app, "cart=3")
    fresh = app.test_client()
    for client, path in ((browser, "/outage?cart=4"), (browser, "/dump"), (fresh, "/set?cart=4")):  # save, load, new
        response = client.get(path)
        assert response.status_code == 503 and response.headers["Retry-After"] == "1", path
        assert "Set-Cookie" not in response.headers, path
    # When opening the session failed, Flask still hands the interface's save_session the session it never got.
    crashes = [record.exc_info[1] for record in caplog.records if record.exc_info and record.exc_info[0] is not None]
    assert [exc for exc in crashes if not isinstance(exc, StoreUnavailable)] == []


def wait_recovered(store: FallbackSessionStore) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        store.exists("any")  # calls are what probe the primary
        if not store.degraded:
            return
        assert time.monotonic() < deadline, "the fallback did not recover"
        time.sleep(0.05)


@pytest.mark.fault
def test_a_fallback_serves_sessions_started_during_the_outage_and_writes_them_back(
    server: RedisServer, own_store: RedisSessionStore
) -> None:
    fallback = FallbackSessionStore(own_store, probe_interval=0.05)
    app = fmredis_app(fallback)
    server.kill()
    browser = app.test_client()
    browser.get("/set?cart=3")
    cookie = browser.get_cookie("session")
    assert cookie is not None and fallback.degraded
    assert browser.get("/set?color=blue").status_code == 200
    assert browser.get("/dump").json == {"cart": "3", "color": "blue"}
    sid = sid_of(browser)
    server.restart()
    wait_recovered(fallback)
    raw = server.client()
    try:
        assert json.loads(raw.get(PREFIX + sid))["data"] == {"cart": "3", "color": "blue"}  # written back
    finally:
        raw.close()
    assert browser.get("/dump").json == {"cart": "3", "color": "blue"}
    assert browser.get_cookie("session").value == cookie.value  # type: ignore[union-attr]


@pytest.mark.fault
def test_a_session_started_before_the_outage_is_refused_through_a_fallback_never_emptied(
    server: RedisServer, own_store: RedisSessionStore
) -> None:
    # The fallback holds only what was written since the outage began: a session it does not hold may well be in
    # Redis. An empty session would log the user out (and its next write would fork the session under a new id), so
    # the request fails with StoreUnavailable instead, and the session is intact once Redis is back.
    fallback = FallbackSessionStore(own_store, probe_interval=0.05)
    app = fmredis_app(fallback)
    browser, cookie, sid = new_session(app, "cart=3")
    server.kill()
    with pytest.raises(StoreUnavailable):
        browser.get("/set?color=blue")
    assert fallback.degraded
    assert browser.get_cookie("session").value == cookie  # type: ignore[union-attr]
    server.restart()
    wait_recovered(fallback)
    assert browser.get("/dump").json == {"cart": "3"}
    assert browser.get_cookie("session").value == cookie  # type: ignore[union-attr]
    raw = server.client()
    try:
        assert json.loads(raw.get(PREFIX + sid))["data"] == {"cart": "3"}
    finally:
        raw.close()
