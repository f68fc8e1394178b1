"""FallbackSessionStore's outage bookkeeping against a primary that fails on command (no server, fake clock)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from fmredis import FallbackSessionStore, InMemorySessionStore, StoreError, StoreUnavailable
from fmredis.breaker import CircuitBreaker
from fmredis.lifecycle import session_ref


class FlakyPrimary(InMemorySessionStore):
    """A primary that is 'down' on demand, refuses chosen keys with a server error, and can run a hook per write."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.refused: set[str] = set()
        self.on_set: Callable[[str], None] | None = None
        self.down_after_sets: int | None = None

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("primary is down")

    def get(self, key: str, *, refresh: bool = False) -> dict[str, Any] | None:
        self._check()
        return super().get(key, refresh=refresh)

    def exists(self, key: str) -> bool:
        self._check()
        return super().exists(key)

    def delete(self, key: str) -> bool:
        self._check()
        return super().delete(key)

    def set(self, key: str, value: dict[str, Any], ttl: int | None = None) -> None:
        self._check()
        if key in self.refused:
            raise StoreError("Redis SET failed: OutOfMemoryError")
        if self.down_after_sets is not None:
            self.down_after_sets -= 1
            if self.down_after_sets < 0:
                self.down = True
                raise StoreUnavailable("primary went down mid write-back")
        super().set(key, value, ttl)
        if self.on_set is not None:
            self.on_set(key)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def outage(primary: FlakyPrimary, clock: Clock, **kwargs: Any) -> FallbackSessionStore:
    store = FallbackSessionStore(primary, probe_interval=1.0, clock=clock, **kwargs)
    primary.down = True
    store.set("first", {"n": 0})
    assert store.degraded
    return store


def recover(store: FallbackSessionStore, primary: FlakyPrimary, clock: Clock) -> None:
    primary.down = False
    clock.now += 1.0
    store.exists("anything")  # the call that probes


def test_a_server_error_on_one_key_does_not_stop_the_write_back(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    primary = FlakyPrimary()
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
    assert any(f"{session_ref('bad')} could not be written back" in r.getMessage() for r in caplog.records)


def test_counts_survive_an_interrupted_write_back(clock: Clock) -> None:
    primary = FlakyPrimary()
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


def test_an_eviction_during_the_write_back_is_counted(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    primary = FlakyPrimary()
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


def test_recovery_ends_under_a_steady_stream_of_writes() -> None:
    primary = FlakyPrimary()
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


def test_a_released_call_does_not_free_another_threads_probe() -> None:
    clock = Clock()
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
