"""Lifecycle calls through the wrapper stores: FallbackSessionStore during and after an outage (real Redis behind a
primary that can be cut off), and ResilientRedisSessionStore's retry policy and counters across rebuilds (fakes)."""

from __future__ import annotations

import gc
import logging
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import redis

from fmredis import (
    FallbackSessionStore,
    InMemorySessionStore,
    InvalidTTLError,
    ISessionStore,
    RedisSessionStore,
    ResilientRedisSessionStore,
    SerializationError,
    SessionExpired,
    StoreUnavailable,
)
from fmredis.breaker import CircuitBreaker
from fmredis.lifecycle import session_ref
from fmredis.serialization import parse_utc
from tests.fakes import FakeClock, FakePrimary

# --- helpers ---------------------------------------------------------------------------------------------------------


def cut_off(primary: FakePrimary, store: FallbackSessionStore) -> None:
    """Cut the primary off and make ``store`` notice (a call that fails over to memory)."""
    primary.down = True
    assert store.get("probe-the-outage") is None
    assert store.degraded


def reconnect(primary: FakePrimary, store: FallbackSessionStore, clock: FakeClock) -> None:
    primary.down = False
    clock.advance(1.0)
    store.exists("anything")  # the call that probes, and writes the outage back
    assert not store.degraded


@pytest.fixture
def primary(redis_store: RedisSessionStore) -> FakePrimary:
    """The Redis store, behind a switch that cuts it off (as if Redis went away)."""
    return FakePrimary(redis_store)


@pytest.fixture
def fallback(primary: FakePrimary, clock: FakeClock) -> FallbackSessionStore:
    return FallbackSessionStore(primary, probe_interval=1.0, clock=clock)


def token() -> str:
    return "tok-" + secrets.token_urlsafe(24)


# --- (a) the write-back never revives a session logged out elsewhere during the outage ------------------------------


@pytest.mark.parametrize("logout", ["delete_user_sessions", "regenerate"])
def test_a_user_session_logged_out_elsewhere_is_not_revived(
    logout: str,
    fallback: FallbackSessionStore,
    primary: FakePrimary,
    redis_store: RedisSessionStore,
    raw: redis.Redis,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sid = fallback.create("alice", {"cart": 1})
    session = fallback.get(sid)
    assert session is not None
    cut_off(primary, fallback)
    fallback.set(sid, {**session, "cart": 2})  # process A, cut off: lands in memory only
    fallback.set("anonymous", {"cart": 3})  # no user_id: memory's copy wins when Redis has none
    assert fallback.get(sid)["cart"] == 2  # type: ignore[index]
    # Process B, still connected to Redis, logs the session out meanwhile.
    if logout == "delete_user_sessions":
        assert redis_store.delete_user_sessions("alice") == 1
        survivors: list[str] = []
    else:
        survivors = [redis_store.regenerate(sid)]
    with caplog.at_level(logging.INFO, logger="fmredis"):
        reconnect(primary, fallback, clock)
    assert not raw.exists(f"session:{sid}")
    assert fallback.get(sid) is None
    assert fallback.sessions_for_user("alice") == survivors
    assert fallback.get("anonymous")["cart"] == 3  # type: ignore[index]
    recovery = fallback.last_recovery
    assert recovery is not None
    assert recovery["gone_in_redis"] == 1 and recovery["written_back"] == 1
    assert any("left out 1 user sessions gone from Redis" in r.getMessage() for r in caplog.records)


def test_a_user_session_still_in_redis_is_written_back(
    fallback: FallbackSessionStore, primary: FakePrimary, redis_store: RedisSessionStore, clock: FakeClock
) -> None:
    sid = fallback.create("bob", {"n": 1})
    session = redis_store.get(sid)
    assert session is not None
    cut_off(primary, fallback)
    fallback.set(sid, {**session, "n": 2})  # stamped now: memory's copy is newer than Redis's
    reconnect(primary, fallback, clock)
    assert redis_store.get(sid)["n"] == 2  # type: ignore[index]
    assert fallback.sessions_for_user("bob") == [sid]
    assert fallback.last_recovery is not None
    assert fallback.last_recovery["written_back"] == 1 and fallback.last_recovery["gone_in_redis"] == 0


def test_only_a_non_empty_str_user_id_makes_a_user_session(
    fallback: FallbackSessionStore, primary: FakePrimary, redis_store: RedisSessionStore, clock: FakeClock
) -> None:
    cut_off(primary, fallback)
    fallback.set("x", {"user_id": ""})  # no user: written back like an anonymous session
    fallback.set("y", {"user_id": 7})
    reconnect(primary, fallback, clock)
    assert redis_store.exists("x") and redis_store.exists("y")
    assert fallback.last_recovery is not None
    assert fallback.last_recovery["gone_in_redis"] == 0 and fallback.last_recovery["written_back"] == 2


# --- (b) logs name a session by its reference, never by its key ------------------------------------------------------


def _assert_only_ref(records: list[logging.LogRecord], key: str, text: str) -> None:
    matching = [r for r in records if text in r.getMessage()]
    assert matching, [r.getMessage() for r in records]
    for record in matching:
        assert session_ref(key) in record.getMessage()
        assert record.session_id == session_ref(key)  # type: ignore[attr-defined]
    for record in records:
        assert key not in record.getMessage()
        assert key not in repr(vars(record))


def test_a_write_refused_by_the_memory_bound_names_no_key(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    primary = FakePrimary()
    store = FallbackSessionStore(primary, probe_interval=1.0, clock=clock, max_entries=2)
    cut_off(primary, store)
    held, refused = [token(), token()], token()
    with caplog.at_level(logging.DEBUG, logger="fmredis"):
        for key in held:
            store.set(key, {"v": 1})
        with pytest.raises(StoreUnavailable) as caught:
            store.set(refused, {"v": 0})  # memory is full of writes not yet in Redis: refused, none evicted
    assert store.lost_unsynced == 0 and all(store.get(key) is not None for key in held)
    for key in (*held, refused):
        assert key not in str(caught.value) and key not in repr(caught.value.__cause__)
        assert not [r for r in caplog.records if key in r.getMessage() or key in repr(vars(r))]


def test_a_failed_write_back_logs_the_session_ref_not_the_key(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    primary = FakePrimary()
    store = FallbackSessionStore(primary, probe_interval=1.0, clock=clock)
    cut_off(primary, store)
    bad = token()
    store.set(bad, {"v": 0})
    primary.refused = {bad}
    with caplog.at_level(logging.DEBUG, logger="fmredis"):
        reconnect(primary, store, clock)
    assert store.last_recovery is not None and store.last_recovery["failed"] == 1
    _assert_only_ref(caplog.records, bad, "could not be written back")


# --- (c) lifecycle calls during an outage ----------------------------------------------------------------------------


def test_redis_only_calls_raise_store_unavailable_during_an_outage(
    fallback: FallbackSessionStore, primary: FakePrimary
) -> None:
    sid = fallback.create("carol", {})
    cut_off(primary, fallback)
    for call in (
        lambda: fallback.create("carol", {"a": 1}),
        lambda: fallback.create("carol", {"a": 1}, ttl=60),
        lambda: fallback.regenerate(sid),
        lambda: fallback.sessions_for_user("carol"),
        lambda: fallback.delete_user_sessions("carol"),
    ):
        with pytest.raises(StoreUnavailable):
            call()


@pytest.mark.parametrize("down", [False, True], ids=["up", "outage"])
def test_bad_create_input_raises_the_same_error_whether_or_not_redis_is_up(
    down: bool, fallback: FallbackSessionStore, primary: FakePrimary
) -> None:
    if down:
        cut_off(primary, fallback)
    with pytest.raises(SerializationError):
        fallback.create("dave", {"tags": {1, 2}})
    with pytest.raises(SerializationError):
        fallback.create("dave", {"ratio": float("nan")})
    with pytest.raises(SerializationError):
        fallback.create("dave", ["not", "a", "dict"])  # type: ignore[arg-type]
    for ttl in (0, -5, 10**9, 1.5, True):
        with pytest.raises(InvalidTTLError):
            fallback.create("dave", {}, ttl=ttl)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="user_id"):
        fallback.create("dave", {"user_id": "eve"})
    assert fallback.degraded == down
    primary.down = False
    assert primary.sessions_for_user("dave") == []  # nothing was written


def test_update_during_an_outage(
    fallback: FallbackSessionStore, primary: FakePrimary, redis_store: RedisSessionStore, clock: FakeClock
) -> None:
    before = fallback.create("frank", {"n": 1})  # in Redis only
    held = fallback.create("frank", {"n": 1})
    session = fallback.get(held)
    assert session is not None
    cut_off(primary, fallback)
    with pytest.raises(StoreUnavailable):  # memory does not hold it: it may well exist in Redis
        fallback.update(before, lambda s: {**s, "n": 2})
    with pytest.raises(StoreUnavailable):
        fallback.update("never-existed", lambda s: s)
    fallback.set(held, session)  # now memory holds it
    updated = fallback.update(held, lambda s: {**s, "n": 5})
    assert updated["n"] == 5 and updated["user_id"] == "frank"
    assert fallback.get(held) == updated
    fallback.set("anonymous", {"n": 1})
    fallback.update("anonymous", lambda s: {**s, "n": 6})
    reconnect(primary, fallback, clock)
    assert redis_store.get(held) == updated  # the updated document was written back (memory's copy is newer)
    assert redis_store.get("anonymous")["n"] == 6  # type: ignore[index]
    assert redis_store.get(before)["n"] == 1  # type: ignore[index]
    assert sorted(fallback.sessions_for_user("frank")) == sorted([before, held])


@pytest.mark.store_options(max_lifetime=3600)
def test_update_of_a_held_session_at_its_lifetime_cap_raises_session_expired(
    primary: FakePrimary, clock: FakeClock
) -> None:
    created_at = "2026-01-01T00:00:00+00:00"
    created = parse_utc(created_at)
    assert created is not None
    # Memory's lifetime cap counts on its wall clock: stopped where the test needs it.
    wall = FakeClock(created.timestamp() + 3600 - 2)
    memory = InMemorySessionStore(max_lifetime=3600, wall_clock=wall)  # the primary's TTL rules: accepted
    store = FallbackSessionStore(primary, memory=memory, probe_interval=1.0, clock=clock)
    cut_off(primary, store)
    store.set("capped", {"n": 1, "created_at": created_at})  # two seconds of lifetime left: held...
    assert store.exists("capped")
    wall.advance(1.5)  # ...and the update reaches the cap
    with pytest.raises(SessionExpired):  # memory held it: its answer, not "needs Redis"
        store.update("capped", lambda s: {**s, "n": 2})
    assert not store.exists("capped")


def test_touch_and_refresh_of_a_held_session_work_during_an_outage(
    fallback: FallbackSessionStore, primary: FakePrimary, redis_store: RedisSessionStore, clock: FakeClock
) -> None:
    sid = fallback.create("gina", {"n": 1})
    session = fallback.get(sid)
    assert session is not None
    cut_off(primary, fallback)
    fallback.set(sid, session, ttl=60)
    assert fallback.ttl(sid) == 60
    assert fallback.touch(sid) is True
    assert fallback.ttl(sid) == 1800  # the default: touch restarted the expiry
    fallback.set(sid, session, ttl=60)
    assert fallback.get(sid, refresh=True) == fallback.get(sid)
    assert fallback.ttl(sid) == 1800
    assert fallback.touch("not-held") is False
    assert fallback.get("not-held", refresh=True) is None
    reconnect(primary, fallback, clock)
    assert 1790 <= redis_store.ttl(sid) <= 1800  # type: ignore[operator]


# --- (d) ResilientRedisSessionStore: single attempt where a retry could apply twice; counters across rebuilds --------


def _noop(_seconds: float) -> None:
    return None


def resilient(store: ISessionStore | Callable[[], ISessionStore], **kwargs: Any) -> ResilientRedisSessionStore:
    options: dict[str, Any] = {
        "attempts": 3,
        "rebuild_after": 1000,
        "breaker": CircuitBreaker(failure_threshold=1000),
        "sleep": _noop,
    }
    options.update(kwargs)
    return ResilientRedisSessionStore(store, **options)


def test_non_idempotent_calls_get_one_attempt_and_the_rest_are_retried() -> None:
    inner = FakePrimary()
    store = resilient(lambda: inner)
    sid = store.create("hank", {})
    inner.down = True
    inner.calls.clear()
    calls: dict[str, Callable[[], object]] = {
        "update": lambda: store.update(sid, lambda s: s),
        "create": lambda: store.create("hank", {}),
        "regenerate": lambda: store.regenerate(sid),
        "touch": lambda: store.touch(sid),
        "sessions_for_user": lambda: store.sessions_for_user("hank"),
        "delete_user_sessions": lambda: store.delete_user_sessions("hank"),
        "get": lambda: store.get(sid, refresh=True),
    }
    for call in calls.values():
        with pytest.raises(StoreUnavailable):
            call()
    assert inner.calls == {
        "update": 1,
        "create": 1,
        "regenerate": 1,
        "touch": 3,
        "sessions_for_user": 3,
        "delete_user_sessions": 3,
        "get": 3,
    }


def test_a_store_instance_that_cannot_rebuild_is_kept_and_not_closed() -> None:
    """Given a store instance without ``rebuild()``, a rebuild keeps the store: it is neither replaced nor closed."""
    inner = FakePrimary()
    store = resilient(inner, attempts=2, rebuild_after=1)
    store.set("k", {"v": 1})
    inner.down = True
    with pytest.raises(StoreUnavailable, match="after 2 attempt"):
        store.get("k")
    assert store.rebuilds == 2 and store.store is inner and inner.closed == 0
    inner.down = False
    assert store.get("k") is not None  # the same store, still open, serves again
    with store:
        pass
    assert inner.closed == 1  # closing the wrapper closes the store inside


def test_stats_keep_counting_across_a_rebuild_and_the_old_store_is_dropped() -> None:
    built: list[weakref.ref[FakePrimary]] = []

    def factory() -> FakePrimary:
        made = FakePrimary()
        built.append(weakref.ref(made))
        return made

    store = resilient(factory, attempts=1, rebuild_after=1)
    sid = store.create("ivan", {})
    for _ in range(5):
        assert store.get(sid) is not None
    assert store.get("missing") is None
    first = store.stats()
    assert first["ops"] == 7 and first["hits"] == 5 and first["misses"] == 1 and first["created"] == 1
    assert first["rebuilds"] == 0
    old = built[0]()
    assert old is not None
    old.down = True
    del old
    try:
        store.get(sid)  # fails, and rebuild_after=1 replaces the store
    except StoreUnavailable:
        pass
    else:  # pragma: no cover
        pytest.fail("expected StoreUnavailable")
    assert store.rebuilds == 1 and len(built) == 2
    second = store.stats()
    assert {name: value for name, value in second.items() if name != "rebuilds"} == {
        name: value for name, value in first.items() if name != "rebuilds"
    }
    assert second["rebuilds"] == 1
    store.set("k", {"v": 1})
    assert store.get("k") == {"v": 1, "last_activity": store.get("k")["last_activity"]}  # type: ignore[index]
    third = store.stats()
    assert third["ops"] == first["ops"] + 3 and third["hits"] == first["hits"] + 2
    gc.collect()
    assert built[0]() is None  # neither kept for stats() nor by the failure it raised
    assert built[1]() is store.store


def test_stats_never_go_back_while_stores_are_replaced_under_load() -> None:
    built: list[weakref.ref[FakePrimary]] = []

    def factory() -> FakePrimary:
        made = FakePrimary()
        built.append(weakref.ref(made))
        return made

    store = resilient(factory)
    store.set("k", {"v": 1})
    stop = threading.Event()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            while not stop.is_set():
                store.get("k")  # a miss right after a rebuild (the new store is empty) counts too
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    def reader() -> None:
        last: dict[str, int] = {}
        try:
            while not stop.is_set():
                now = store.stats()
                assert all(now[name] >= value for name, value in last.items()), (last, now)
                last = now
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)] + [threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(30):
            time.sleep(0.005)
            store._rebuild(store._current[1])
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert errors == []
    assert store.rebuilds == 30 and store.stats()["rebuilds"] == 30
    assert store.stats()["ops"] > 30
    gc.collect()
    assert [ref() is None for ref in built] == [True] * 30 + [False]


def test_a_rebuild_whose_factory_fails_keeps_the_current_store(caplog: pytest.LogCaptureFixture) -> None:
    """A factory that cannot build a client (a cluster client finds no node) must not break the call that triggered
    the rebuild: the current store stays, the failure is logged, and a later rebuild may succeed."""
    first = FakePrimary()
    outcomes: list[ISessionStore | Exception] = [first, StoreUnavailable("no node answers"), FakePrimary()]

    def factory() -> ISessionStore:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    store = resilient(factory, attempts=2, rebuild_after=1)
    first.down = True
    with caplog.at_level(logging.WARNING, logger="fmredis"), pytest.raises(StoreUnavailable):
        store.get("k")
    # The first failure's rebuild failed (the store was kept), the second failure's rebuild worked.
    assert store.store is not first and store.rebuilds == 1
    assert any("Could not rebuild the Redis client" in r.getMessage() for r in caplog.records)
    assert outcomes == []
    store.set("k", {"v": 1})  # the replacement works
    assert store.get("k") is not None
