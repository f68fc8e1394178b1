"""FallbackSessionStore's construction and outage bookkeeping against a primary that fails on command (no server, fake
clock)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest

from fmredis import (
    FallbackSessionStore,
    InMemorySessionStore,
    ISessionStore,
    ResilientRedisSessionStore,
    SessionTTLManager,
    StoreError,
    StoreUnavailable,
    outage_log,
)
from fmredis.breaker import CircuitBreaker
from fmredis.lifecycle import session_ref
from tests.fakes import OOM, FakeClock, FakePrimary


def outage(primary: FakePrimary, clock: FakeClock, **kwargs: Any) -> FallbackSessionStore:
    store = FallbackSessionStore(primary, probe_interval=1.0, clock=clock, **kwargs)
    primary.down = True
    store.set("first", {"n": 0})
    assert store.degraded
    return store


def recover(store: FallbackSessionStore, primary: FakePrimary, clock: FakeClock) -> None:
    primary.down = False
    clock.advance(1.0)
    store.exists("anything")  # the call that probes


# --- construction: memory takes the primary's TTL rules ---------------------------------------------------------------


def test_memory_is_built_with_the_primarys_ttl_rules(clock: FakeClock) -> None:
    wall = FakeClock(1_750_000_000.0)
    policy = SessionTTLManager()
    primary = FakePrimary(
        InMemorySessionStore(default_ttl=60, max_ttl=7200, ttl_policy=policy, max_lifetime=3600, wall_clock=wall)
    )
    store = FallbackSessionStore(primary, max_entries=7, clock=clock)
    assert store.ttl_rules == store.memory.ttl_rules == primary.ttl_rules
    assert store.memory.ttl_rules.wall_clock is wall  # the lifetime cap counts on the primary's clock in memory too
    assert store.memory.max_entries == 7
    primary.down = True
    store.set("k", {"v": 1})  # in memory: the policy's TTL for a session active now, as the primary would give
    assert store.degraded and store.ttl("k") == policy.active_ttl


def test_a_memory_store_given_is_used_if_its_ttl_rules_are_the_primarys(clock: FakeClock) -> None:
    primary = FakePrimary(InMemorySessionStore(default_ttl=60))
    memory = InMemorySessionStore(default_ttl=60, max_entries=3)
    store = FallbackSessionStore(primary, memory=memory, clock=clock)
    assert store.memory is memory
    primary.down = True
    store.set("k", {"v": 1})
    assert memory.ttl("k") == 60


def test_a_memory_store_with_other_ttl_rules_is_refused() -> None:
    primary = FakePrimary(InMemorySessionStore(default_ttl=60))
    with pytest.raises(
        ValueError, match=r"memory's TTL rules \(default_ttl=1800.*differ from the primary's \(default_ttl=60"
    ):
        FallbackSessionStore(primary, memory=InMemorySessionStore())
    with pytest.raises(ValueError, match="max_lifetime=3600"):
        FallbackSessionStore(primary, memory=InMemorySessionStore(default_ttl=60, max_lifetime=3600))


def test_memory_and_max_entries_together_are_refused() -> None:
    with pytest.raises(TypeError, match="max_entries or memory"):
        FallbackSessionStore(FakePrimary(), memory=InMemorySessionStore(), max_entries=5)
    with pytest.raises(TypeError, match="memory must be an InMemorySessionStore"):
        FallbackSessionStore(FakePrimary(), memory=FakePrimary())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="primary must be an ISessionStore"):
        FallbackSessionStore(InMemorySessionStore)  # type: ignore[arg-type]


# --- the write-back ---------------------------------------------------------------------------------------------------


def test_a_server_error_on_one_key_does_not_stop_the_write_back(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    primary = FakePrimary()
    store = outage(primary, clock)
    for key in ("a", "bad", "c"):
        store.set(key, {"k": key})
    primary.refused = {"bad"}
    with caplog.at_level(logging.WARNING, logger="fmredis"):
        recover(store, primary, clock)
    assert not store.degraded
    assert [k for k in ("first", "a", "bad", "c") if primary.exists(k)] == ["first", "a", "c"]
    assert store.last_recovery is not None and store.last_recovery["failed"] == 1
    assert store.last_recovery["written_back"] == 3
    [warning] = [r.getMessage() for r in caplog.records if "could not be written back" in r.getMessage()]
    assert f"{session_ref('bad')} could not be written back to Redis ({OOM})" in warning


def test_a_write_back_cut_off_half_way_resumes_where_it_stopped(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outage_log, "BATCH", 3)
    primary = FakePrimary()
    store = outage(primary, clock)
    for i in range(9):
        store.set(f"s{i}", {"i": i})
    primary.down_after_sets = 4
    recover(store, primary, clock)  # the first batch of 3 is applied; the second dies after one more set
    assert store.degraded and store.pending == 7  # the cut batch is pending again, whole
    primary.down_after_sets = None
    recover(store, primary, clock)
    assert not store.degraded and store.pending == 0
    assert store.last_recovery is not None and store.last_recovery["written_back"] == 10
    assert all(primary.get(f"s{i}") == {"i": i, "last_activity": ANY} for i in range(9))


def test_memory_full_of_outage_writes_refuses_a_new_one_and_keeps_every_acknowledged_one(clock: FakeClock) -> None:
    primary = FakePrimary()
    store = outage(primary, clock, max_entries=3)  # memory holds "first"
    store.set("a", {"k": "a"})
    store.set("b", {"k": "b"})
    with pytest.raises(StoreUnavailable, match="memory is full: all 3 sessions held"):
        store.set("c", {"k": "c"})
    assert store.memory.get("c") is None and store.pending == 3
    store.set("a", {"k": "a2"})  # a session already held is rewritten in place: nothing to evict
    assert [store.get(key) is not None for key in ("first", "a", "b")] == [True, True, True]
    recover(store, primary, clock)
    assert not store.degraded and store.lost_unsynced == 0
    assert [k for k in ("first", "a", "b", "c") if primary.exists(k)] == ["first", "a", "b"]
    assert primary.get("a") == {"k": "a2", "last_activity": ANY}


def test_without_pinning_the_memory_bound_would_drop_an_acknowledged_write(clock: FakeClock) -> None:
    primary = FakePrimary()
    store = outage(primary, clock, max_entries=1)
    store.memory.pinned = None  # the naive bound: least recently used evicted, pending or not ...
    store._log._limit = 10  # ... no bound on the changes pending ...
    store._log.full = lambda room: False  # type: ignore[method-assign]  # ... and no check of memory's room
    store.set("b", {"k": "b"})  # acknowledged, and evicts "first", acknowledged before it
    assert store.get("first") is None  # a read during the outage no longer sees an acknowledged write


def test_pending_deletes_count_against_the_memory_only_bound(clock: FakeClock) -> None:
    primary = FakePrimary()
    store = outage(primary, clock, max_entries=2)  # "first" pending
    assert store.delete("gone-1") is False  # a session from before the outage: only memory's copy is reported
    with pytest.raises(StoreUnavailable, match="memory fallback full: 2 outage changes"):
        store.delete("gone-2")
    assert store.pending == 2 and store.get("first") is not None
    store.delete("first")  # replaces the pending write of a key already counted
    assert store.pending == 2 and store.get("first") is None


def test_a_session_written_back_is_evicted_before_any_pending_one(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outage_log, "BATCH", 1)
    primary = FakePrimary()
    store = outage(primary, clock, max_entries=3)
    store.set("a", {"k": "a"})
    store.set("b", {"k": "b"})
    store.get("first")  # "first" is now the most recently used: the naive LRU would evict "a" next
    primary.down_after_sets = 1
    recover(store, primary, clock)  # writes "first" back (one batch), then the primary goes down again
    assert store.degraded and store.pending == 2 and primary.inner.exists("first")
    store.set("c", {"k": "c"})  # memory is full: the written-back "first" goes, not "a" or "b"
    assert store.memory.get("first") is None
    assert all(store.get(key) is not None for key in ("a", "b", "c"))


def test_a_write_the_journal_refuses_leaves_memory_as_it_was(clock: FakeClock, tmp_path: Path) -> None:
    primary = FakePrimary()
    store = outage(primary, clock, journal_path=tmp_path / "journal", journal_max_bytes=400)
    store.set("a", {"k": "a"})
    with pytest.raises(StoreUnavailable, match=r"outage journal full \(\d+ of 400 bytes"):
        store.set("a", {"k": "x" * 300})  # a rewrite too big for the journal: the old value stays
    with pytest.raises(StoreUnavailable, match="outage journal full"):
        store.set("new", {"k": "x" * 300})
    assert store.get("a") == {"k": "a", "last_activity": ANY} and store.get("new") is None
    assert store.pending == 2
    recover(store, primary, clock)
    assert primary.get("a") == {"k": "a", "last_activity": ANY} and not primary.exists("new")
    assert store.journal is not None and store.journal.bytes == 0
    store.close()


def test_a_user_session_redis_no_longer_holds_is_written_back(clock: FakeClock) -> None:
    primary = FakePrimary()
    store = outage(primary, clock)
    store.set("login", {"user_id": "u1"})  # a new session during the outage: Redis never held it
    recover(store, primary, clock)
    assert primary.get("login") == {"user_id": "u1", "last_activity": ANY}
    assert store.last_recovery is not None and store.last_recovery["written_back"] == 2


def test_recovery_ends_under_a_steady_stream_of_writes() -> None:
    primary = FakePrimary()
    store = FallbackSessionStore(primary, probe_interval=0.0)
    primary.down = True
    store.set("x", {})
    stop = threading.Event()

    def slow_set(_key: str) -> None:
        time.sleep(0.001)  # each write-back costs more than a writer's memory write

    def writer(n: int) -> None:
        i = 0
        while not stop.is_set():
            store.set(f"w{n}-{i % 50}", {"i": i})
            i += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    primary.on_set = slow_set
    primary.down = False
    deadline = time.monotonic() + 20
    while store.degraded and time.monotonic() < deadline:
        store.exists("probe")
        time.sleep(0.01)
    stop.set()
    for thread in threads:
        thread.join()
    assert not store.degraded
    assert store.pending == 0 and store.lost_unsynced == 0


def test_a_released_call_does_not_free_another_threads_probe(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=1, clock=clock)
    assert breaker.allow()  # this thread was let through while closed
    done = threading.Event()

    def other() -> None:
        breaker.record_failure()
        clock.now += 1
        assert breaker.allow()  # the other thread holds the half-open probe
        done.set()

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert done.is_set()
    breaker.release()  # the first thread's call turned out to be bad input
    assert not breaker.allow()  # the probe is still the other thread's


def behind_a_breaker(primary: FakePrimary, breaker: CircuitBreaker, clock: FakeClock) -> FallbackSessionStore:
    resilient = ResilientRedisSessionStore(primary, breaker=breaker, clock=clock, sleep=lambda _seconds: None)
    store = FallbackSessionStore(resilient, probe_interval=1.0, clock=clock)
    primary.down = True
    store.set("first", {"n": 0})
    assert store.degraded
    return store


def test_the_fallbacks_probe_is_not_swallowed_by_the_inner_breakers_cooldown(clock: FakeClock) -> None:
    primary = FakePrimary()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=60, clock=clock)
    store = behind_a_breaker(primary, breaker, clock)
    assert breaker.state == "open"
    primary.down = False
    clock.advance(1.0)  # the fallback's probe interval, far inside the breaker's 60 s cool-down
    store.exists("anything")
    assert not store.degraded and breaker.state == "closed"
    assert primary.inner.exists("first")


def test_a_probe_through_the_breakers_gate_would_wait_out_its_cooldown(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ResilientRedisSessionStore, "probe", ISessionStore.probe)  # the naive probe: a plain call
    primary = FakePrimary()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=60, clock=clock)
    store = behind_a_breaker(primary, breaker, clock)
    primary.down = False
    clock.advance(1.0)
    store.exists("anything")
    assert store.degraded  # refused by the open breaker: another probe interval lost


def test_set_many_never_evicts_its_own_earlier_keys_to_make_room(clock: FakeClock) -> None:
    primary = FakePrimary()
    store = outage(primary, clock, max_entries=2)  # "first" pending: room for one more
    with pytest.raises(StoreUnavailable, match="memory is full"):
        store.set_many([("a", {"k": "a"}, None), ("b", {"k": "b"}, None), ("c", {"k": "c"}, None)])
    assert store.pending == 1 and store.get("a") is None and store.get("first") is not None
    recover(store, primary, clock)
    assert [k for k in ("first", "a", "b", "c") if primary.exists(k)] == ["first"]


def test_a_wall_clock_stepped_back_does_not_cost_a_full_length_session(clock: FakeClock) -> None:
    wall = FakeClock(1_750_000_000.0)
    primary = FakePrimary(InMemorySessionStore(wall_clock=wall))
    store = outage(primary, clock)
    store.set("long", {"v": 1}, ttl=86_400)  # the longest TTL there is
    wall.now -= 5  # the wall clock steps back: 86,405 s "remain"
    recover(store, primary, clock)
    assert primary.get("long") is not None and store.last_recovery["written_back"] == 2  # type: ignore[index]


def test_unreadable_logout_notes_write_the_users_sessions_back_with_a_warning(
    clock: FakeClock, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    primary = FakePrimary()
    store = outage(primary, clock)
    store.set("login", {"user_id": "u1"})

    def refused(user_ids: object) -> dict[str, float]:
        raise StoreError("Redis ZMSCORE failed: NoPermissionError: NOPERM")

    monkeypatch.setattr(primary, "logouts", refused)
    with caplog.at_level(logging.WARNING, logger="fmredis"):
        recover(store, primary, clock)
    assert primary.get("login") is not None and store.last_recovery["failed"] == 0  # type: ignore[index]
    assert any("Logout notes unreadable" in r.getMessage() for r in caplog.records)


def test_a_user_logged_out_since_the_outage_began_is_not_revived_and_one_lost_by_redis_is_relisted(
    clock: FakeClock,
) -> None:
    primary = FakePrimary()
    store = outage(primary, clock)
    store.set("a-of-u1", {"user_id": "u1"})
    store.set("b-of-u2", {"user_id": "u2"})
    primary.inner.delete_user_sessions("u1")  # another worker, still reaching Redis, logs u1 out meanwhile
    recover(store, primary, clock)
    assert not primary.exists("a-of-u1") and store.last_recovery["gone_in_redis"] == 1  # type: ignore[index]
    assert primary.inner.sessions_for_user("u2") == ["b-of-u2"]  # listed again: "log out everywhere" finds it
    assert primary.inner.delete_user_sessions("u2") == 1
