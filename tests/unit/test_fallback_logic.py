"""FallbackSessionStore's construction and outage bookkeeping against a primary that fails on command (no server, fake
clock)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

from fmredis import FallbackSessionStore, InMemorySessionStore, SessionTTLManager
from fmredis.breaker import CircuitBreaker
from fmredis.lifecycle import session_ref
from fmredis.outage_log import OutageLog
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


def test_counts_survive_an_interrupted_write_back(clock: FakeClock) -> None:
    primary = FakePrimary()
    store = outage(primary, clock)
    for i in range(9):
        store.set(f"s{i}", {"i": i})
    primary.down_after_sets = 4
    recover(store, primary, clock)  # dies after writing back 4 of 10
    assert store.degraded and store.pending == 6
    primary.down_after_sets = None
    recover(store, primary, clock)
    assert not store.degraded and store.pending == 0
    assert store.last_recovery is not None and store.last_recovery["written_back"] == 10
    assert all(primary.exists(f"s{i}") for i in range(9))


def test_an_eviction_during_the_write_back_is_counted(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    primary = FakePrimary()
    store = outage(primary, clock, max_entries=3)  # memory holds "first"
    store.set("a", {"k": "a"})
    store.set("b", {"k": "b"})  # memory is full: first, a, b

    def write_during_write_back(key: str) -> None:
        if key == "first":  # the write-back's first set: another caller writes two new sessions meanwhile
            primary.on_set = None
            store.set("c", {"k": "c"})  # still degraded: lands in memory and evicts "a" (least recently used)
            store.set("d", {"k": "d"})  # evicts "b"

    primary.on_set = write_during_write_back
    with caplog.at_level(logging.WARNING, logger="fmredis"):
        recover(store, primary, clock)
    assert not store.degraded
    assert store.lost_unsynced == 2
    assert len([r for r in caplog.records if "evicted before it reached Redis" in r.getMessage()]) == 2
    assert [k for k in ("first", "a", "b", "c", "d") if primary.exists(k)] == ["first", "c", "d"]


def evict_the_key_being_written_back(store: FallbackSessionStore, primary: FakePrimary) -> None:
    """Arrange that, once the write-back has written ``first`` (the only session a memory of one holds) to the primary
    and before it is done with it, another caller's outage write evicts ``first`` from memory."""

    def write_during_write_back(key: str) -> None:
        if key == "first":
            primary.on_set = None
            store.set("b", {"k": "b"})  # still degraded: lands in memory, which evicts "first"
            assert not store.memory.exists("first")

    primary.on_set = write_during_write_back


def test_a_key_evicted_while_it_is_written_back_is_not_lost(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    primary = FakePrimary()
    store = outage(primary, clock, max_entries=1)
    evict_the_key_being_written_back(store, primary)
    with caplog.at_level(logging.WARNING, logger="fmredis"):
        recover(store, primary, clock)
    assert not store.degraded
    assert primary.exists("first") and primary.exists("b")
    assert store.lost_unsynced == 0
    assert not [r for r in caplog.records if "evicted before it reached Redis" in r.getMessage()]


def test_without_sparing_the_key_being_written_back_its_eviction_counted_as_lost(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The naive log: evicted() never learns which key the write-back is applying (the assignments go nowhere).
    monkeypatch.setattr(OutageLog, "_applying", property(lambda log: None, lambda log, key: None), raising=False)
    primary = FakePrimary()
    store = outage(primary, clock, max_entries=1)
    evict_the_key_being_written_back(store, primary)
    recover(store, primary, clock)
    assert primary.exists("first")  # written back all the same ...
    assert store.lost_unsynced == 1  # ... and reported lost


def test_an_outage_write_evicted_before_the_write_back_is_still_lost(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    primary = FakePrimary()
    store = outage(primary, clock, max_entries=1)
    with caplog.at_level(logging.WARNING, logger="fmredis"):
        store.set("b", {"k": "b"})  # evicts "first", which never reached the primary
    recover(store, primary, clock)
    assert not store.degraded
    assert not primary.exists("first") and primary.exists("b")
    assert store.lost_unsynced == 1
    assert len([r for r in caplog.records if "evicted before it reached Redis" in r.getMessage()]) == 1


def test_a_key_evicted_during_a_write_back_cut_off_by_an_outage_is_counted_lost(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    primary = FakePrimary()
    store = outage(primary, clock, max_entries=1)
    get = primary.get

    def outage_while_reading_redis(key: str, *, refresh: bool = False) -> Any:
        # The write-back reads Redis's copy of "first": meanwhile an outage write evicts "first", and Redis goes away.
        monkeypatch.setattr(primary, "get", get)
        store.set("b", {"k": "b"})
        primary.down = True
        return get(key, refresh=refresh)

    monkeypatch.setattr(primary, "get", outage_while_reading_redis)
    recover(store, primary, clock)
    assert store.degraded and not store.memory.exists("first")
    recover(store, primary, clock)
    assert not store.degraded and primary.exists("b")
    assert primary.exists("first") or store.lost_unsynced == 1  # written back, or its loss counted: never silent


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
