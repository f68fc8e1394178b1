"""RedisLock on a real redis-server with real threads: acquire/release, timeouts, FIFO hand-off, renewal, lost locks,
stats, bad input, secrets, an unreachable server, and mutual exclusion (with the naive unlocked version losing counts).

Nothing here asserts a duration: waits are bounded only as deadlock guards, and order is shown by events."""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from pytest_redis.executor import RedisExecutor

from fmredis import (
    ConfigurationError,
    HeldLock,
    InvalidKeyError,
    LockLost,
    LockTimeout,
    RedisLock,
    StoreUnavailable,
    create_redis_client,
    session_ref,
)
from tests.harness.polls import GUARD, eventually
from tests.harness.proxy import TcpProxy
from tests.harness.servers import free_port

pytestmark = pytest.mark.timeout(60)

SECRET = "secret-name-XYZ"


# --- helpers --------------------------------------------------------------------------------------------------------


def queued(raw: redis.Redis, lock: RedisLock) -> int:
    """How many waiters the lock's queue (a zset in Redis) holds."""
    return int(raw.zcard(lock.key + ":queue"))


def fmredis_records(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [record for record in records if record.name.startswith("fmredis")]


def everything_in(record: logging.LogRecord) -> str:
    """The message and every attribute of a record (extras included), as text to search for a secret."""
    return record.getMessage() + " " + " ".join(f"{name}={value!r}" for name, value in vars(record).items())


class Acquirer(threading.Thread):
    """A thread that calls ``lock.acquire(timeout)``, keeps the handle or the error, and appends ``label`` to
    ``events`` the moment acquire returns (while it holds the lock), so tests can check the order of events."""

    def __init__(
        self, lock: RedisLock, timeout: float | None, label: str = "acquired", events: list[str] | None = None
    ) -> None:
        super().__init__(daemon=True, name=f"acquirer-{label}")
        self.lock = lock
        self.timeout = timeout
        self.label = label
        self.events = events if events is not None else []
        self.held: HeldLock | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.held = self.lock.acquire(timeout=self.timeout)
        except BaseException as exc:  # kept for the test thread to assert on
            self.error = exc
            return
        self.events.append(self.label)

    def finish(self) -> HeldLock:
        self.join(timeout=GUARD)
        assert not self.is_alive(), f"{self.label}: acquire did not return"
        assert self.error is None, f"{self.label}: {self.error!r}"
        assert self.held is not None
        return self.held


@pytest.fixture
def handles() -> Iterator[list[HeldLock]]:
    """Handles a test took: any not released at the end is released (so no renewal outlives its test)."""
    taken: list[HeldLock] = []
    yield taken
    for held in taken:
        if not held.released:
            with contextlib.suppress(Exception):  # cleanup only: the test's own assertions have run
                held.release()


# --- acquire / release ----------------------------------------------------------------------------------------------


def test_keys_are_the_prefix_plus_the_name_in_a_hash_tag(client: redis.Redis) -> None:
    assert RedisLock(client, "job").key == "fmredis-lock:{job}"
    assert RedisLock(client, "job").fence_key == "fmredis-lock:{job}:fence"
    assert RedisLock(client, "{cart-42}").key == "fmredis-lock:{cart-42}"
    assert RedisLock(client, "{cart-42}").fence_key == "fmredis-lock:{cart-42}:fence"
    assert RedisLock(client, "job", key_prefix="app:").key == "app:{job}"


def test_acquire_and_release_round_trip(client: redis.Redis, raw: redis.Redis) -> None:
    lock = RedisLock(client, "job", ttl=2.0)
    held = lock.acquire(timeout=0)
    assert isinstance(held, HeldLock)
    assert held.name == "job" and held.lock is lock
    assert type(held.token) is int and held.token > 0
    assert int(raw.get(lock.fence_key)) == held.token  # type: ignore[arg-type]
    assert raw.exists(lock.key) and 0 < raw.pttl(lock.key) <= 2000
    assert not held.released and not held.lost
    assert held.release() is True
    assert held.released and not raw.exists(lock.key)
    assert held.release() is False  # idempotent: nothing left to release, no error
    assert held.released


def test_a_second_release_never_releases_the_next_owner(client: redis.Redis, raw: redis.Redis) -> None:
    lock = RedisLock(client, "job", ttl=5.0)
    first = lock.acquire(timeout=0)
    assert first.release() is True
    second = lock.acquire(timeout=0)
    owner = raw.get(lock.key)
    assert first.release() is False
    assert raw.get(lock.key) == owner  # the new owner still holds it
    with pytest.raises(LockTimeout):
        lock.acquire(timeout=0)
    assert second.release() is True


def test_with_lock_and_with_acquire_release_at_exit(client: redis.Redis, raw: redis.Redis) -> None:
    lock = RedisLock(client, "job", ttl=2.0)
    with lock as held:
        assert isinstance(held, HeldLock) and raw.exists(lock.key) and not held.released
    assert held.released and not raw.exists(lock.key)
    with lock.acquire(timeout=1) as again:
        assert isinstance(again, HeldLock) and raw.exists(lock.key)
        assert again.token > held.token
    assert again.released and not raw.exists(lock.key)


def test_a_body_exception_propagates_unchanged_and_the_lock_is_released(client: redis.Redis, raw: redis.Redis) -> None:
    lock = RedisLock(client, "job", ttl=2.0)

    class BodyError(Exception):
        pass

    with pytest.raises(BodyError), lock as held:
        raise BodyError("boom")
    assert held.released and not raw.exists(lock.key)


def test_tokens_strictly_grow_across_acquisitions_handles_and_clients(
    client: redis.Redis, redis_url: str, raw: redis.Redis
) -> None:
    other_client = create_redis_client(url=redis_url, environ={})
    try:
        locks = [RedisLock(client, "job", ttl=2.0), RedisLock(other_client, "job", ttl=2.0)]
        tokens: list[int] = []
        for i in range(20):
            with locks[i % 2].acquire(timeout=1) as held:
                tokens.append(held.token)
    finally:
        other_client.close()
    assert all(later > earlier for earlier, later in itertools.pairwise(tokens))


@pytest.mark.parametrize("damage", ["deleted", "set-lower"])
def test_tokens_keep_growing_when_redis_lost_the_fence_counter(
    client: redis.Redis, raw: redis.Redis, damage: str
) -> None:
    lock = RedisLock(client, "job", ttl=2.0)
    with lock as before:
        pass
    if damage == "deleted":
        raw.delete(lock.fence_key)
    else:
        raw.set(lock.fence_key, 1)
    with lock as after:
        assert after.token > before.token


# --- timeouts -------------------------------------------------------------------------------------------------------


def test_timeout_zero_on_a_held_lock_raises_lock_timeout_and_leaves_no_queue_entry(
    client: redis.Redis, raw: redis.Redis, handles: list[HeldLock]
) -> None:
    lock = RedisLock(client, "job", ttl=5.0)
    handles.append(holder := lock.acquire(timeout=0))
    with pytest.raises(LockTimeout) as info:
        lock.acquire(timeout=0)
    assert isinstance(info.value, TimeoutError)
    assert queued(raw, lock) == 0 and not raw.hlen(lock.key + ":waiters")
    assert holder.release() is True
    lock.acquire(timeout=0).release()  # one attempt only: any stale queue entry would have made it fail


def test_a_timed_out_waiter_leaves_the_queue_and_blocks_no_one(
    client: redis.Redis, raw: redis.Redis, handles: list[HeldLock]
) -> None:
    lock = RedisLock(client, "job", ttl=5.0)
    handles.append(holder := lock.acquire(timeout=0))
    waiter = Acquirer(lock, timeout=0.3)
    waiter.start()
    waiter.join(timeout=GUARD)
    assert not waiter.is_alive()
    assert isinstance(waiter.error, LockTimeout) and waiter.held is None
    assert raw.exists(lock.key) and raw.get(lock.key) is not None  # the holder was not disturbed
    assert queued(raw, lock) == 0 and not raw.hlen(lock.key + ":waiters")
    assert holder.release() is True
    handles.append(lock.acquire(timeout=0))  # immediately acquirable: no stale queue entry ahead of us
    assert lock.stats()["timeouts"] == 1


# --- hand-off and fairness ------------------------------------------------------------------------------------------


def commands_sent(raw: redis.Redis) -> int:
    """Commands the server has run so far, not counting INFO (which this helper itself sends)."""
    stats = raw.info("commandstats")
    return sum(entry["calls"] for name, entry in stats.items() if name != "cmdstat_info")


def test_release_hands_the_lock_to_a_blocked_waiter_which_waits_without_polling(
    client: redis.Redis, raw: redis.Redis, handles: list[HeldLock]
) -> None:
    lock = RedisLock(client, "job", ttl=5.0, auto_renew=False)  # no renewals: every command seen is the waiter's
    handles.append(holder := lock.acquire(timeout=0))
    events: list[str] = []
    waiter = Acquirer(lock, timeout=30, label="waiter acquired", events=events)
    waiter.start()
    eventually(lambda: queued(raw, lock) == 1, "the waiter is queued")
    keys = [key.decode() if isinstance(key, bytes) else key for key in raw.keys("*")]
    assert all(key.startswith(lock.key) for key in keys), keys  # every key of the lock shares its hash tag
    before = commands_sent(raw)
    time.sleep(1.0)  # a second of waiting: a polling waiter would send tens of commands
    during = commands_sent(raw) - before
    assert waiter.is_alive() and events == []  # still waiting: the lock is held
    assert during <= 10, f"{during} commands in 1 s of waiting"
    assert raw.info("commandstats").get("cmdstat_blpop", {}).get("calls", 0) >= 1  # it blocks on its wake list
    events.append("released")
    assert holder.release() is True
    held = waiter.finish()
    assert events == ["released", "waiter acquired"]
    assert held.token > holder.token and raw.exists(lock.key)
    assert held.release() is True
    assert lock.stats()["contended"] == 1


def test_waiters_get_the_lock_in_arrival_order(client: redis.Redis, raw: redis.Redis, handles: list[HeldLock]) -> None:
    lock = RedisLock(client, "job", ttl=5.0)
    handles.append(holder := lock.acquire(timeout=0))
    order: list[tuple[str, int]] = []

    def wait_then_release(label: str) -> None:
        with lock.acquire(timeout=30) as held:
            order.append((label, held.token))  # appended while holding: the list is the acquisition order

    threads = []
    for count, label in enumerate(["W1", "W2", "W3"], start=1):
        thread = threading.Thread(target=wait_then_release, args=(label,), daemon=True)
        thread.start()
        threads.append(thread)
        eventually(lambda count=count: queued(raw, lock) == count, f"{label} is queued")  # type: ignore[misc]
    assert order == []
    assert holder.release() is True
    for thread in threads:
        thread.join(timeout=GUARD)
        assert not thread.is_alive()
    assert [label for label, _ in order] == ["W1", "W2", "W3"]
    tokens = [holder.token] + [token for _, token in order]
    assert tokens == sorted(tokens) and len(set(tokens)) == 4
    assert queued(raw, lock) == 0 and not raw.exists(lock.key)


class SlowToWake:
    """A client whose waiter reacts late to being woken: after a ``BLPOP`` that returns a push, it sleeps ``delay``
    seconds, and the first time it also waits for ``gate`` (if given) before acquire goes on. Everything else is
    the wrapped client's. It opens the window in which a barging lock would let a new arrival past the woken waiter."""

    def __init__(self, client: redis.Redis, *, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self._client, self._delay, self._gate = client, delay, gate
        self.woken = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def execute_command(self, *args: Any, **options: Any) -> Any:
        reply = self._client.execute_command(*args, **options)  # type: ignore[no-untyped-call]
        if args[0] == "BLPOP" and reply is not None:
            first = not self.woken.is_set()
            self.woken.set()
            if first and self._gate is not None:
                assert self._gate.wait(GUARD)
            time.sleep(self._delay)
        return reply


def test_a_new_arrival_never_barges_past_a_woken_waiter(
    client: redis.Redis, raw: redis.Redis, handles: list[HeldLock]
) -> None:
    lock = RedisLock(client, "job", ttl=5.0)
    handles.append(holder := lock.acquire(timeout=0))
    gate = threading.Event()
    slow = SlowToWake(client, gate=gate)
    events: list[str] = []
    first = Acquirer(RedisLock(slow, "job", ttl=5.0), timeout=30, label="first", events=events)
    first.start()
    eventually(lambda: queued(raw, lock) == 1, "the first waiter is queued")
    assert holder.release() is True
    eventually(slow.woken.is_set, "the first waiter is woken")  # ... and held back: the lock is free in Redis now
    assert not raw.exists(lock.key)
    with pytest.raises(LockTimeout):
        lock.acquire(timeout=0)  # the lock is free, but a waiter is ahead
    second = Acquirer(lock, timeout=30, label="second", events=events)
    second.start()
    eventually(lambda: queued(raw, lock) == 2, "the second waiter is queued behind the first")
    gate.set()
    first_held = first.finish()
    assert events == ["first"]
    first_held.release()
    second_held = second.finish()
    assert events == ["first", "second"] and second_held.token > first_held.token
    assert second_held.release() is True


def test_a_thread_re_acquiring_in_a_loop_does_not_starve_a_queued_waiter(client: redis.Redis, raw: redis.Redis) -> None:
    """The waiter reacts to its wake-up 50 ms late, the hog re-acquires at once: a lock that let the hog past a
    queued waiter would hand it every cycle."""
    lock = RedisLock(client, "job", ttl=5.0)
    stop = threading.Event()
    cycles = 0
    errors: list[BaseException] = []

    def hog() -> None:
        nonlocal cycles
        try:
            while not stop.is_set():
                with lock.acquire(timeout=30):
                    cycles += 1
                    time.sleep(0.01)
        except BaseException as exc:  # reported below
            errors.append(exc)

    hogger = threading.Thread(target=hog, daemon=True)
    hogger.start()
    eventually(lambda: cycles >= 3, "the hog is cycling")
    seen: list[int] = []
    slow = RedisLock(SlowToWake(client, delay=0.05), "job", ttl=5.0)

    def waiter() -> None:
        try:
            with slow.acquire(timeout=30):
                seen.append(cycles)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            stop.set()

    waiting = threading.Thread(target=waiter, daemon=True)
    waiting.start()
    eventually(lambda: queued(raw, lock) >= 1 or seen or errors, "the waiter is queued")
    queued_at = cycles  # read after the waiter queued: at most the cycle count it queued in
    waiting.join(timeout=GUARD)
    hogger.join(timeout=GUARD)
    assert not waiting.is_alive() and not hogger.is_alive() and errors == []
    assert seen and seen[0] - queued_at <= 2, (queued_at, seen)


# --- handles across threads; stale handles --------------------------------------------------------------------------


def test_another_thread_can_release_the_handle(client: redis.Redis, raw: redis.Redis) -> None:
    lock = RedisLock(client, "job", ttl=5.0)
    held = lock.acquire(timeout=0)
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(held.release()), daemon=True)
    thread.start()
    thread.join(timeout=GUARD)
    assert result == [True] and held.released and not raw.exists(lock.key)


def test_a_stale_handle_never_releases_the_new_owners_lock(
    client: redis.Redis, raw: redis.Redis, handles: list[HeldLock]
) -> None:
    lock = RedisLock(client, "job", ttl=0.5, auto_renew=False)
    stale = lock.acquire(timeout=0)
    eventually(lambda: not raw.exists(lock.key), "the lease expires in Redis")
    handles.append(fresh := RedisLock(client, "job", ttl=5.0).acquire(timeout=0))
    owner = raw.get(lock.key)
    assert stale.lost
    assert stale.release() is False
    assert raw.get(lock.key) == owner  # the new owner still holds it
    with pytest.raises(LockLost):
        stale.extend()
    assert raw.get(lock.key) == owner and raw.pttl(lock.key) > 1000  # not cut to the stale handle's 0.5 s lease
    assert fresh.release() is True


# --- renewal --------------------------------------------------------------------------------------------------------


def test_auto_renew_keeps_a_short_lease_held(client: redis.Redis, raw: redis.Redis) -> None:
    lock = RedisLock(client, "job", ttl=0.6)
    with lock as held:
        time.sleep(2.0)  # more than three ttls
        assert not held.lost and raw.exists(lock.key)
        with pytest.raises(LockTimeout):
            RedisLock(client, "job", ttl=5.0).acquire(timeout=0)
    stats = lock.stats()
    assert stats["renewals"] >= 2 and stats["renewal_failures"] == 0 and stats["lost"] == 0


def test_without_auto_renew_the_lease_runs_out_and_another_thread_gets_it(
    client: redis.Redis, raw: redis.Redis, handles: list[HeldLock]
) -> None:
    lock = RedisLock(client, "job", ttl=0.6, auto_renew=False)
    held = lock.acquire(timeout=0)
    eventually(lambda: held.lost, "the local clock says the lease may have expired")
    other = Acquirer(RedisLock(client, "job", ttl=5.0), timeout=5)
    other.start()
    handles.append(taken := other.finish())
    assert taken.token > held.token and raw.exists(lock.key)
    assert held.release() is False and raw.exists(lock.key)
    assert lock.stats()["renewals"] == 0


def test_extend_restarts_the_lease_and_refuses_a_lost_lock(client: redis.Redis, raw: redis.Redis) -> None:
    lock = RedisLock(client, "job", ttl=1.0, auto_renew=False)
    held = lock.acquire(timeout=0)
    assert raw.pttl(lock.key) <= 1000
    held.extend(5.0)
    assert 1000 < raw.pttl(lock.key) <= 5000
    held.extend()  # back to lock.ttl
    assert 0 < raw.pttl(lock.key) <= 1000
    raw.delete(lock.key)
    with pytest.raises(LockLost):
        held.extend()
    assert not raw.exists(lock.key)  # extend never re-creates a lost lock
    assert held.lost


# --- lost locks -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["deleted", "taken"])
def test_a_lost_lock_is_seen_reported_once_and_logged_once(
    client: redis.Redis, raw: redis.Redis, root_records: list[logging.LogRecord], handles: list[HeldLock], how: str
) -> None:
    reports: list[HeldLock] = []
    lock = RedisLock(client, SECRET, ttl=0.6, on_lost=reports.append)
    handles.append(held := lock.acquire(timeout=0))
    raw.delete(lock.key)
    if how == "taken":
        handles.append(RedisLock(client, SECRET, ttl=5.0, auto_renew=False).acquire(timeout=0))
    eventually(lambda: held.lost, "the renewal thread finds the lock lost")
    eventually(lambda: reports, "on_lost is called")
    time.sleep(0.6)  # three more renewal periods: still one report, one record
    assert len(reports) == 1 and reports[0] is held
    records = fmredis_records(root_records)
    assert [(r.name, r.levelno) for r in records] == [("fmredis.events", logging.WARNING)]
    assert "Lock lost" in records[0].getMessage()
    assert SECRET not in everything_in(records[0]) and lock.key not in everything_in(records[0])
    assert session_ref(SECRET) in everything_in(records[0])
    assert held.release() is False
    assert raw.exists(lock.key) == (1 if how == "taken" else 0)  # a new owner keeps its lock
    assert lock.stats()["lost"] == 1


def test_leaving_with_of_a_lost_lock_raises_lock_lost(
    client: redis.Redis, raw: redis.Redis, root_records: list[logging.LogRecord]
) -> None:
    reports: list[HeldLock] = []
    lock = RedisLock(client, SECRET, ttl=0.6, on_lost=reports.append)
    entered: list[HeldLock] = []

    def body() -> None:
        with lock as held:
            entered.append(held)
            raw.delete(lock.key)
            eventually(lambda: held.lost, "the renewal thread finds the lock lost")

    with pytest.raises(LockLost) as info:
        body()
    assert info.value.__cause__ is None
    assert SECRET not in str(info.value) and lock.key not in str(info.value)
    assert reports == entered and len(entered) == 1 and len(fmredis_records(root_records)) == 1


def test_leaving_with_a_lock_found_lost_only_at_exit_raises_lock_lost_and_reports_it(
    client: redis.Redis, raw: redis.Redis, root_records: list[logging.LogRecord]
) -> None:
    reports: list[HeldLock] = []
    lock = RedisLock(client, SECRET, ttl=5.0, auto_renew=False, on_lost=reports.append)
    with pytest.raises(LockLost), lock as held:
        raw.delete(lock.key)  # nothing notices until the release at exit
    assert reports == [held]
    assert [r.getMessage().startswith("Lock lost") for r in fmredis_records(root_records)] == [True]


def test_a_body_exception_is_the_cause_of_lock_lost(client: redis.Redis, raw: redis.Redis) -> None:
    lock = RedisLock(client, SECRET, ttl=0.6)

    class BodyError(Exception):
        pass

    def body() -> None:
        with lock as held:
            raw.delete(lock.key)
            eventually(lambda: held.lost, "the renewal thread finds the lock lost")
            raise BodyError("the body failed")

    with pytest.raises(LockLost) as info:
        body()
    assert isinstance(info.value.__cause__, BodyError)
    assert SECRET not in str(info.value)


def test_a_lost_lock_seen_by_extend_is_reported_once(client: redis.Redis, raw: redis.Redis) -> None:
    reports: list[HeldLock] = []
    lock = RedisLock(client, "job", ttl=5.0, auto_renew=False, on_lost=reports.append)
    held = lock.acquire(timeout=0)
    raw.delete(lock.key)
    for _ in range(2):
        with pytest.raises(LockLost):
            held.extend()
    assert held.release() is False
    assert reports == [held] and lock.stats()["lost"] == 1


# --- stats and logging ----------------------------------------------------------------------------------------------


def test_stats_count_a_known_sequence(client: redis.Redis, raw: redis.Redis, handles: list[HeldLock]) -> None:
    lock = RedisLock(client, "job", ttl=5.0, auto_renew=False)
    assert lock.stats() == dict.fromkeys(
        ["acquisitions", "contended", "wait_ms", "timeouts", "releases", "renewals", "renewal_failures", "lost"], 0
    )
    lock.acquire(timeout=0).release()  # acquisitions 1, releases 1
    handles.append(holder := lock.acquire(timeout=0))  # acquisitions 2
    with pytest.raises(LockTimeout):
        lock.acquire(timeout=0)  # timeouts 1
    waiter = Acquirer(lock, timeout=30)
    waiter.start()
    eventually(lambda: queued(raw, lock) == 1, "the waiter is queued")
    holder.release()  # releases 2
    waiter.finish().release()  # acquisitions 3, contended 1, releases 3
    handles.append(doomed := lock.acquire(timeout=0))  # acquisitions 4
    raw.delete(lock.key)
    with pytest.raises(LockLost):
        doomed.extend()  # lost 1
    stats = lock.stats()
    assert all(type(value) is int for value in stats.values())
    assert stats["wait_ms"] >= 0
    assert {name: stats[name] for name in ["acquisitions", "contended", "timeouts", "releases", "lost"]} == {
        "acquisitions": 4,
        "contended": 1,
        "timeouts": 1,
        "releases": 3,
        "lost": 1,
    }
    assert stats["renewals"] == 0 and stats["renewal_failures"] == 0


def test_the_success_path_logs_nothing(
    client: redis.Redis, raw: redis.Redis, root_records: list[logging.LogRecord]
) -> None:
    lock = RedisLock(client, "job", ttl=0.6)
    with lock as held:
        waiter = Acquirer(lock, timeout=30)
        waiter.start()
        eventually(lambda: queued(raw, lock) == 1, "the waiter is queued")
        time.sleep(0.5)  # a couple of renewals
        held.extend()
    waiter.finish().release()
    for _ in range(20):
        with lock.acquire(timeout=1):
            pass
    assert lock.stats()["renewals"] >= 1
    assert fmredis_records(root_records) == [], [f"{r.name}: {r.getMessage()}" for r in root_records]


# --- bad input and secrets ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", 5, None, b"job"], ids=["empty", "int", "none", "bytes"])
def test_a_bad_name_is_refused(client: redis.Redis, name: Any) -> None:
    with pytest.raises(InvalidKeyError):
        RedisLock(client, name)


@pytest.mark.parametrize(
    "ttl", [0, -1, -0.5, "10", None, math.nan], ids=["zero", "neg", "neg-float", "str", "none", "nan"]
)
def test_a_bad_ttl_is_refused(client: redis.Redis, ttl: Any) -> None:
    with pytest.raises(ConfigurationError):
        RedisLock(client, "job", ttl=ttl)


@pytest.mark.parametrize("timeout", [-1, -0.001])
def test_a_negative_timeout_is_refused_before_anything_is_sent(
    client: redis.Redis, raw: redis.Redis, timeout: float
) -> None:
    lock = RedisLock(client, "job", ttl=2.0)
    with pytest.raises(ValueError):
        lock.acquire(timeout=timeout)
    assert raw.keys("*") == []


def test_reprs_and_messages_never_contain_the_name_or_keys(
    client: redis.Redis, raw: redis.Redis, handles: list[HeldLock]
) -> None:
    lock = RedisLock(client, SECRET, ttl=5.0, auto_renew=False)
    handles.append(held := lock.acquire(timeout=0))
    with pytest.raises(LockTimeout) as timed_out:
        lock.acquire(timeout=0.1)
    raw.delete(lock.key)
    with pytest.raises(LockLost) as lost:
        held.extend()
    texts = [repr(lock), str(lock), repr(held), str(held), str(timed_out.value), str(lost.value)]
    for text in texts:
        assert SECRET not in text and "XYZ" not in text, text
    assert repr(lock) and repr(held)


# --- Redis unreachable ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [0, 1.0])
def test_an_unreachable_server_raises_store_unavailable(timeout: float) -> None:
    dead = create_redis_client(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, retry_attempts=0, environ={}
    )
    try:
        lock = RedisLock(dead, "job", ttl=2.0)
        with pytest.raises(StoreUnavailable):
            lock.acquire(timeout=timeout)
    finally:
        dead.close()


@pytest.mark.fault
def test_a_release_while_connections_are_reset_raises_store_unavailable_and_can_be_retried(
    redis_server: RedisExecutor, raw: redis.Redis
) -> None:
    with TcpProxy(redis_server.port) as proxy:
        proxied = create_redis_client(url=proxy.url, socket_connect_timeout=0.5, retry_attempts=0, environ={})
        try:
            lock = RedisLock(proxied, "job", ttl=5.0, auto_renew=False)
            held = lock.acquire(timeout=0)
            proxy.reset_all()
            with pytest.raises(StoreUnavailable):
                held.release()
            with pytest.raises(StoreUnavailable):
                RedisLock(proxied, "other", ttl=5.0).acquire(timeout=0)
            assert raw.exists(lock.key)  # not released: the release never reached Redis
            proxy.pass_through()
            assert held.release() is True
            assert not raw.exists(lock.key) and held.released
        finally:
            proxied.close()


# --- mutual exclusion -----------------------------------------------------------------------------------------------

THREADS = 8
ROUNDS = 50


def count_with(guard: Callable[[], Any] | None) -> int:
    """THREADS threads each do ROUNDS read-yield-write increments of one Python int, inside ``guard()`` if given.

    Without a guard every thread waits for all the others between its read and its write, so the race the lock
    prevents happens in every round (a bare ``sleep(0)`` there made it likely, and on a busy machine it sometimes
    did not happen at all); with a guard the threads only yield there."""
    count = 0
    start = threading.Barrier(THREADS)
    between = threading.Barrier(THREADS) if guard is None else None
    errors: list[BaseException] = []

    def increment() -> None:
        nonlocal count
        value = count
        if between is not None:
            between.wait(timeout=GUARD)  # every thread has read the same value
        else:
            time.sleep(0)  # let another thread run between the read and the write, if the guard allows it
        count = value + 1

    def worker() -> None:
        try:
            start.wait(timeout=GUARD)
            for _ in range(ROUNDS):
                if guard is None:
                    increment()
                else:
                    with guard():
                        increment()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()
    assert errors == []
    return count


@pytest.mark.parametrize("style", ["acquire", "with-lock"])
def test_threads_sharing_the_lock_lose_no_increment(client: redis.Redis, raw: redis.Redis, style: str) -> None:
    lock = RedisLock(client, "counter", ttl=5.0)

    class Guarded:
        def __enter__(self) -> None:
            self.held = lock.acquire(timeout=30)

        def __exit__(self, *exc: object) -> None:
            assert self.held.release() is True

    assert count_with(Guarded if style == "acquire" else lambda: lock) == THREADS * ROUNDS
    stats = lock.stats()
    assert stats["acquisitions"] == stats["releases"] == THREADS * ROUNDS
    assert queued(raw, lock) == 0 and not raw.exists(lock.key)


def test_without_the_lock_the_same_threads_lose_increments() -> None:
    """The naive version of the test above: same threads, same increments, no lock; the threads interleave between
    read and write (which the lock above does not let them do), and every round's increments but one are lost."""
    assert count_with(None) == ROUNDS < THREADS * ROUNDS
