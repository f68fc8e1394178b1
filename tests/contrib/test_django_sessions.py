"""``SESSION_ENGINE = "fmredis.contrib.django"`` through Django's real request path (the test ``Client``, Django's
``SessionMiddleware`` or fmredis's, the views of tests/contrib/django_app.py) on a real redis-server.

Overlapping requests are forced, never timed: the views call a ``test.pause`` hook after loading the session, and the
tests hold them there with barriers and events. Where a test proves that no change is lost, the same scenario is run
on Django's own cache engine over Django's ``RedisCache`` (a whole-session overwrite), which loses it.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import import_module
from typing import Any

import pytest
import redis
from django.conf import settings
from django.test import Client, override_settings

from fmredis import (
    FallbackSessionStore,
    RedisSessionStore,
    ResilientRedisSessionStore,
    SerializationError,
    StoreUnavailable,
    create_redis_client,
)
from fmredis.contrib.django import SessionStore, get_store
from tests.contrib.django_app import PAUSE
from tests.contrib.django_settings import fmredis_on
from tests.harness.servers import RedisServer

pytestmark = pytest.mark.timeout(60)

PREFIX = "django-session:"  # FMREDIS_SESSION_KEY_PREFIX's default
WAIT = 10.0  # the longest any request waits for another (a hang fails instead of blocking the suite)
#: For the servers the outage tests kill: fail fast, no redis-py retry.
FAST_FAILING = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5, "retry_attempts": 0, "health_check_interval": 0}


@pytest.fixture
def on_redis(redis_url: str, raw: redis.Redis) -> Iterator[redis.Redis]:
    """fmredis's engine on the session's test server; yields the plain client that inspects it."""
    with fmredis_on(redis_url):
        yield raw


@contextlib.contextmanager
def djangos_cache_engine(url: str) -> Iterator[None]:
    """The naive engine: Django's cache sessions on Django's RedisCache (each save overwrites the whole session)."""
    caches = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url}}
    with override_settings(SESSION_ENGINE="django.contrib.sessions.backends.cache", CACHES=caches):
        yield


def client_for(key: str | None = None) -> Client:
    client = Client()
    if key is not None:
        client.cookies[settings.SESSION_COOKIE_NAME] = key
    return client


def cookie(client: Client) -> str:
    return str(client.cookies[settings.SESSION_COOKIE_NAME].value)


def started(**data: str) -> str:
    """A new session holding `data`, made by a request; its key."""
    client = client_for()
    assert client.get("/write/", data).status_code == 200
    return cookie(client)


def stored(key: str) -> dict[str, Any]:
    """The session's data as the configured engine loads it ({} when there is none)."""
    return dict(import_module(settings.SESSION_ENGINE).SessionStore(key).load())


def document(raw: redis.Redis, key: str) -> dict[str, Any] | None:
    payload = raw.get(PREFIX + key)
    return None if payload is None else json.loads(payload)


def session_keys(raw: redis.Redis) -> set[str]:
    return {name.decode()[len(PREFIX) :] for name in raw.scan_iter(match=PREFIX + "*")}


def overlapping(key: str, first: dict[str, str], second: dict[str, str]) -> None:
    """Two ``/write/`` requests of session `key`: both load it, then the first saves, then the second."""
    both_loaded = threading.Barrier(2, timeout=WAIT)
    first_saved = threading.Event()

    def second_waits() -> None:
        both_loaded.wait()
        assert first_saved.wait(WAIT), "the first request did not finish"

    def run_first() -> int:
        try:
            return int(client_for(key).get("/write/", first, **{PAUSE: both_loaded.wait}).status_code)
        finally:
            first_saved.set()

    with ThreadPoolExecutor(2) as pool:
        one = pool.submit(run_first)
        two = pool.submit(lambda: client_for(key).get("/write/", second, **{PAUSE: second_waits}).status_code)
        assert (one.result(), two.result()) == (200, 200)


# --- no lost concurrent change ---------------------------------------------------------------------------------------


def test_overlapping_requests_changing_different_keys_both_keep_their_change(on_redis: redis.Redis) -> None:
    key = started(seed="0")
    overlapping(key, {"a": "1"}, {"b": "2"})
    assert stored(key) == {"seed": "0", "a": "1", "b": "2"}


def test_overlapping_requests_changing_one_key_the_later_save_wins_for_that_key_only(on_redis: redis.Redis) -> None:
    key = started(seed="0")
    overlapping(key, {"shared": "first", "a": "1"}, {"shared": "second", "b": "2"})
    assert stored(key) == {"seed": "0", "shared": "second", "a": "1", "b": "2"}


def test_djangos_cache_engine_loses_the_first_change_in_the_same_scenario(redis_url: str, raw: redis.Redis) -> None:
    with djangos_cache_engine(redis_url):
        key = started(seed="0")
        overlapping(key, {"a": "1"}, {"b": "2"})
        assert stored(key) == {"seed": "0", "b": "2"}  # "a" is gone: the second save overwrote the whole session


THREADS, ROUNDS = 8, 10


def count_concurrently(key: str) -> dict[str, int]:
    """`THREADS` threads x `ROUNDS` requests, each adding one to its own counter in session `key`; in every round all
    threads load the session before any saves (a barrier in the view). Returns the counters as stored."""
    everyone_loaded = threading.Barrier(THREADS, timeout=WAIT)

    def counter(n: int) -> None:
        client = client_for(key)
        for _round in range(ROUNDS):
            response = client.get("/increment/", {"key": f"n{n}"}, **{PAUSE: everyone_loaded.wait})
            assert response.status_code == 200

    with ThreadPoolExecutor(THREADS) as pool:
        for done in [pool.submit(counter, n) for n in range(THREADS)]:
            done.result()
    return {name: value for name, value in stored(key).items() if name.startswith("n")}


def test_concurrent_counters_in_one_session_are_all_exact(on_redis: redis.Redis) -> None:
    key = started(seed="0")
    assert count_concurrently(key) == {f"n{n}": ROUNDS for n in range(THREADS)}


def test_djangos_cache_engine_loses_counts_in_the_same_scenario(redis_url: str, raw: redis.Redis) -> None:
    with djangos_cache_engine(redis_url):
        key = started(seed="0")
        counts = count_concurrently(key)
    # Every round's saves all start from the same load: each overwrites the others' increments of that round.
    assert sum(counts.values()) <= THREADS * ROUNDS - (THREADS - 1)


# --- what a request writes --------------------------------------------------------------------------------------------


def test_an_unchanged_session_is_not_written_but_its_expiry_slides(on_redis: redis.Redis) -> None:
    raw = on_redis
    key = started(a="1", b="2")
    before = raw.get(PREFIX + key)
    age_ms = settings.SESSION_COOKIE_AGE * 1000

    for path, extra in [("/read/", {}), ("/rewrite/", {}), ("/read/", {"SESSION_SAVE_EVERY_REQUEST": True})]:
        raw.pexpire(PREFIX + key, 60_000)
        with override_settings(**extra):
            response = client_for(key).get(path)
        assert response.json() == {"a": "1", "b": "2"}
        assert raw.get(PREFIX + key) == before, path  # same bytes: not rewritten, last_activity unchanged
        assert age_ms - 60_000 < raw.pttl(PREFIX + key) <= age_ms, path  # the read restarted the expiry

    # The comparison can see a write: a real change rewrites the document and its last_activity.
    client_for(key).get("/write/", {"a": "changed"})
    after = document(raw, key)
    assert after is not None and after["data"] == {"a": "changed", "b": "2"}
    assert after["last_activity"] != json.loads(before or b"{}")["last_activity"]


def test_a_save_after_a_logout_elsewhere_is_refused_and_does_not_resurrect_the_session(on_redis: redis.Redis) -> None:
    raw = on_redis
    key = started(a="1")
    loaded, logged_out = threading.Event(), threading.Event()

    def hold() -> None:
        loaded.set()
        assert logged_out.wait(WAIT)

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(lambda: client_for(key).get("/write/", {"a": "2"}, **{PAUSE: hold}))
        assert loaded.wait(WAIT)
        try:
            assert client_for(key).get("/logout/").status_code == 200
        finally:
            logged_out.set()
        response = pending.result()
    # Django's SessionMiddleware turns the engine's UpdateError into SessionInterrupted: a 400.
    assert response.status_code == 400
    assert session_keys(raw) == set()


@pytest.fixture(scope="module")
def user() -> Any:
    """A user in the in-memory sqlite database (created in this thread, whose connection keeps the database)."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("migrate", run_syncdb=True, verbosity=0)
    return get_user_model().objects.create_user("ada")  # no password: nothing is checked against one


def test_login_cycles_the_key_keeps_the_data_and_lists_the_session_under_the_user(
    on_redis: redis.Redis, user: Any
) -> None:
    raw = on_redis
    client = client_for()
    client.get("/write/", {"cart": "3 7"})
    anonymous = cookie(client)

    response = client.get("/login/", {"user": user.pk})
    assert response.status_code == 200
    logged_in = cookie(client)
    assert logged_in != anonymous
    assert session_keys(raw) == {logged_in}  # the pre-login id is gone (session fixation)
    data = client.get("/read/").json()
    assert data["cart"] == "3 7" and data["_auth_user_id"] == str(user.pk)

    store = get_store()
    assert store.sessions_for_user(str(user.pk)) == [logged_in]
    assert store.delete_user_sessions(str(user.pk)) == 1
    assert session_keys(raw) == set()
    assert client.get("/read/").json() == {}  # logged out


def test_cycle_key_moves_the_stored_session(on_redis: redis.Redis) -> None:
    raw = on_redis
    session = SessionStore(started(a="1"))
    old = session.session_key
    session["b"] = "2"
    session.cycle_key()
    session.save()
    assert session.session_key != old
    assert session_keys(raw) == {session.session_key}
    assert stored(session.session_key) == {"a": "1", "b": "2"}


def test_expiry_settings_are_the_redis_ttl(redis_url: str, raw: redis.Redis) -> None:
    age = 5_000

    def expiry(client: Client, **query: int | str) -> Any:
        response = client.get("/expiry/", query)
        assert response.status_code == 200
        return response

    def ttl_is(key: str, seconds: int) -> None:
        assert seconds * 1000 - 20_000 < raw.pttl(PREFIX + key) <= seconds * 1000, seconds

    with fmredis_on(redis_url, SESSION_COOKIE_AGE=age):
        client = client_for()
        response = expiry(client, default="")
        key = cookie(client)
        assert int(response.content) == age
        ttl_is(key, age)

        response = expiry(client, seconds=300)
        assert response.cookies[settings.SESSION_COOKIE_NAME]["max-age"] == 300
        ttl_is(key, 300)
        raw.pexpire(PREFIX + key, 100_000)
        client.get("/read/")
        ttl_is(key, 300)  # a read slides the session's own expiry, not the default

        expiry(client, at=600)
        ttl_is(key, 600)

        response = expiry(client, seconds=0)  # at browser close: a session cookie, kept SESSION_COOKIE_AGE in Redis
        assert int(response.content) == age
        assert response.cookies[settings.SESSION_COOKIE_NAME]["max-age"] == ""
        ttl_is(key, age)
        assert cookie(client) == key


def test_a_value_json_cannot_hold_fails_the_save_naming_the_key_and_writes_nothing(on_redis: redis.Redis) -> None:
    raw = on_redis
    key = started(a="1")
    before = raw.get(PREFIX + key)
    for client in (client_for(key), client_for()):  # an existing session, and a new one
        with pytest.raises(SerializationError) as raised:
            client.get("/unserializable/")
        assert "not_json" in str(raised.value) and "object at" not in str(raised.value)
    assert raw.get(PREFIX + key) == before  # not even the valid change of the same request
    assert session_keys(raw) == {key}  # and no new session


# --- Redis down ------------------------------------------------------------------------------------------------------


def fallback_store() -> FallbackSessionStore:
    """``FMREDIS_SESSION_STORE`` of the outage test: sessions kept in memory while Redis (``OUTAGE_REDIS_URL``) is
    down, written back when it answers again."""
    client = create_redis_client(url=settings.OUTAGE_REDIS_URL, environ={}, **FAST_FAILING)
    age = settings.SESSION_COOKIE_AGE
    store = RedisSessionStore(client, prefix=PREFIX, default_ttl=age, max_ttl=age, owns_client=True)
    return FallbackSessionStore(ResilientRedisSessionStore(store, attempts=1, deadline=1.0), probe_interval=0.05)


def written_back(store: FallbackSessionStore) -> None:
    """Wait until the fallback has found Redis back and written the outage's sessions to it (calls are what probe)."""
    deadline = time.monotonic() + WAIT
    while store.exists("probe") or store.degraded:
        assert time.monotonic() < deadline, f"the fallback did not recover within {WAIT} s"
        time.sleep(0.05)


@contextlib.contextmanager
def fallback_on(server: RedisServer) -> Iterator[FallbackSessionStore]:
    with override_settings(
        FMREDIS_SESSION_STORE="tests.contrib.test_django_sessions.fallback_store", OUTAGE_REDIS_URL=server.url
    ):
        store = get_store()
        assert isinstance(store, FallbackSessionStore)
        yield store


@pytest.mark.fault
def test_with_a_fallback_store_a_session_made_during_an_outage_is_served_and_written_back() -> None:
    with RedisServer("django-outage", persistent=True) as server, fallback_on(server) as store:
        server.kill()
        client = client_for()
        assert client.get("/write/", {"c": "3"}).status_code == 200
        key = cookie(client)
        assert client.get("/write/", {"d": "4"}).json() == {"c": "3", "d": "4"}
        assert cookie(client) == key

        server.restart()
        written_back(store)
        raw = server.client(decode_responses=False)
        try:
            assert json.loads(raw.get(PREFIX + key))["data"] == {"c": "3", "d": "4"}
        finally:
            raw.close()
        assert client.get("/read/").json() == {"c": "3", "d": "4"}  # now from Redis


@pytest.mark.fault
def test_with_a_fallback_store_a_session_made_before_an_outage_is_refused_never_emptied() -> None:
    # The fallback holds only what was written since the outage began: an empty session here would log the user out
    # and fork the session under a new key. The request fails instead, and the session is intact once Redis is back.
    with RedisServer("django-outage", persistent=True) as server, fallback_on(server) as store:
        key = started(a="1")
        server.kill()
        with pytest.raises(StoreUnavailable):
            client_for(key).get("/write/", {"b": "2"})
        assert store.degraded
        server.restart()
        written_back(store)
        assert client_for(key).get("/read/").json() == {"a": "1"}


@pytest.mark.fault
def test_without_a_fallback_an_outage_raises_or_with_fmredis_middleware_answers_503() -> None:
    fmredis_middleware = ["fmredis.contrib.django.SessionMiddleware"]
    with RedisServer("django-down") as server, fmredis_on(server.url, FAST_FAILING):
        key = started(a="1")

        # Redis gone between the load and the save: the save's failure is a 503 too.
        with override_settings(MIDDLEWARE=fmredis_middleware):
            response = client_for(key).get("/write/", {"a": "2"}, **{PAUSE: server.kill})
        assert response.status_code == 503 and response["Retry-After"]

        with pytest.raises(StoreUnavailable):  # never an empty session: that would log the user out
            SessionStore(key).load()
        with pytest.raises(StoreUnavailable):  # Django's own middleware: a 500
            client_for(key).get("/read/")
        with override_settings(MIDDLEWARE=fmredis_middleware):
            for client in (client_for(key), client_for()):  # a session to read, a new one to create
                response = client.get("/write/", {"b": "2"})
                assert response.status_code == 503 and int(response["Retry-After"]) > 0
                assert settings.SESSION_COOKIE_NAME not in response.cookies
