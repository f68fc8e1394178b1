"""RedisLock across real processes (multiprocessing, spawn), with real signals and real redis-server faults.

What is proved, each time next to the naive version that fails it where there is one: mutual exclusion of a racy
read-modify-write across 4 processes (without the lock, increments are lost); fencing tokens that grow in acquisition
order; a SIGSTOPped holder whose lease expired is fenced out of a late write (without the fence its write lands over
the new holder's); a SIGKILLed holder or head waiter does not block the others; a Redis restart or outage is noticed
by the holder, and tokens keep growing across it (they are time-based); a Sentinel failover keeps them growing too.
The children run tests/lock/workers.py. Every wait is a bounded poll or a join with a timeout (deadlock guards, never
timing assertions).
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import queue as queues
import signal
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from typing import Any

import pytest
import redis

from fmredis import (
    FencedOut,
    HeldLock,
    LockLost,
    RedisLock,
    RedisSessionStore,
    StoreUnavailable,
    create_redis_client,
)
from fmredis.client import RedisClient
from tests.harness.sentinel import SentinelSetup
from tests.harness.servers import NotReady, RedisServer, wait_until
from tests.lock import workers

pytestmark = pytest.mark.timeout(60)

PROCESSES = 4
ROUNDS = 50
BOUND = 20.0  # deadlock guard (seconds) for every poll, join and message


def until(predicate: Callable[[], object], what: str, timeout: float = BOUND) -> None:
    """Poll ``predicate`` until it is truthy; TopologyError naming ``what`` after ``timeout`` seconds."""

    def check() -> None:
        if not predicate():
            raise NotReady(f"not yet: {what}")

    wait_until(check, time.monotonic() + timeout, what)


class Children:
    """Spawned worker processes sharing one report queue; `close` SIGKILLs and reaps whatever is left."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.queue: Any = self.ctx.Queue()
        self.started: list[BaseProcess] = []

    def start(self, target: Callable[..., None], *args: Any) -> BaseProcess:
        process = self.ctx.Process(target=target, args=(self.queue, *args), daemon=True)
        process.start()
        self.started.append(process)
        return process

    def expect(self, kind: str, timeout: float = BOUND) -> Any:
        """The payload of the next report, which must be of ``kind`` (a child's traceback fails the test)."""
        try:
            got, payload = self.queue.get(timeout=timeout)
        except queues.Empty:
            pytest.fail(f"no {kind!r} report from a child process within {timeout} s")
        if got == "error":
            pytest.fail(f"a child process failed:\n{payload}")
        assert got == kind, (got, payload)
        return payload

    def close(self) -> None:
        for process in self.started:
            if process.is_alive():
                process.kill()  # SIGKILL also ends a stopped process
            process.join(10)
        self.queue.close()
        self.queue.join_thread()


@pytest.fixture
def children() -> Iterator[Children]:
    made = Children()
    try:
        yield made
    finally:
        made.close()


def signal_child(process: BaseProcess, signum: signal.Signals) -> None:
    assert process.pid is not None
    os.kill(process.pid, signum)


def acquire_into(lock: RedisLock, timeout: float, outcome: dict[str, Any]) -> None:
    """Thread body: ``lock.acquire(timeout)``, its HeldLock (or exception) into ``outcome``."""
    try:
        outcome["held"] = lock.acquire(timeout=timeout)
    except BaseException as exc:
        outcome["error"] = exc


def drop_connections(client: RedisClient) -> None:
    pool = getattr(client, "connection_pool", None)  # a cluster client has one per node
    if pool is not None:
        pool.disconnect()


def close_client(client: RedisClient) -> None:
    client.close()
    drop_connections(client)


# --- 1. mutual exclusion across processes, and tokens in acquisition order ----------------------------------------


def run_counters(children: Children, url: str, store: RedisSessionStore, *, locked: bool) -> tuple[int, list[Any]]:
    """4 processes x 50 racy increments of one counter session; the final count and every (read, token) seen."""
    name, key = "{counter}", "{counter}:s"
    store.set(key, {"n": 0})
    start = children.ctx.Barrier(PROCESSES)
    for _ in range(PROCESSES):
        children.start(workers.count, url, name, key, ROUNDS, locked, start)
    seen = [pair for _ in range(PROCESSES) for pair in children.expect("done", timeout=40)]
    final = store.get(key)
    assert final is not None
    return int(final["n"]), seen


def test_lock_makes_a_racy_increment_exact_across_processes(
    children: Children, redis_url: str, client: redis.Redis
) -> None:
    """Under the lock no increment is lost, every value is read exactly once, and sorted by the value read (the
    acquisition order) the tokens are distinct and strictly increasing."""
    final, seen = run_counters(children, redis_url, RedisSessionStore(client), locked=True)
    assert final == PROCESSES * ROUNDS
    seen.sort()
    assert [read for read, _token in seen] == list(range(PROCESSES * ROUNDS))
    tokens = [token for _read, token in seen]
    assert len(set(tokens)) == len(tokens)
    assert all(earlier < later for earlier, later in itertools.pairwise(tokens)), "tokens not in acquisition order"


def test_without_the_lock_the_same_increments_are_lost(children: Children, redis_url: str, client: redis.Redis) -> None:
    """The naive version of the test above: the same 4 x 50 read-modify-writes without the lock lose increments."""
    final, seen = run_counters(children, redis_url, RedisSessionStore(client), locked=False)
    assert len(seen) == PROCESSES * ROUNDS
    assert final < PROCESSES * ROUNDS


# --- 2. a frozen holder: fenced out of its late write; without the fence the late write lands -----------------------


@pytest.mark.fault
@pytest.mark.parametrize("fenced", [True, False], ids=["fenced", "unfenced"])
def test_frozen_holder_late_write(
    fenced: bool, children: Children, redis_url: str, raw: redis.Redis, client: redis.Redis
) -> None:
    """A holder SIGSTOPped past its lease: the test acquires (larger token) and writes with its fence; the holder,
    continued, learns it lost the lock (``lost``, LockLost at the end of its ``with``) and its fenced write is refused
    (FencedOut, the session keeps the new holder's write). Unfenced, the same late write overwrites it."""
    name, key = "{frozen}", "{frozen}:s"
    store = RedisSessionStore(client)
    lock = RedisLock(client, name, ttl=5.0, auto_renew=False)
    go = children.ctx.Event()
    holder = children.start(workers.frozen_holder, redis_url, name, key, fenced, go)
    first_token = children.expect("holding")
    signal_child(holder, signal.SIGSTOP)
    try:
        until(lambda: not raw.exists(lock.key), "the frozen holder's lease to expire")
        with lock.acquire(timeout=5) as held:
            assert held.token > first_token
            store.set(key, {"writer": "B"}, fence=held)
            signal_child(holder, signal.SIGCONT)
            go.set()
            report = children.expect("done")
            session = store.get(key)
    finally:
        with contextlib.suppress(ProcessLookupError):
            signal_child(holder, signal.SIGCONT)
    assert report["lost"] is True
    assert report["exit"] == "LockLost"
    assert session is not None
    if fenced:
        assert report["write"] == "FencedOut"
        assert session["writer"] == "B"
    else:
        assert report["write"] == "written"
        assert session["writer"] == "A", "the unfenced late write should have landed over the new holder's"


# --- 3. a holder killed -9: a waiting acquire gets the lock once its lease expires -----------------------------------


@pytest.mark.fault
def test_waiter_gets_the_lock_of_a_killed_holder(children: Children, redis_url: str, raw: redis.Redis) -> None:
    """A holder process (ttl 1 s, auto-renewed) is SIGKILLed while a thread waits in acquire(timeout): the waiter,
    queued and still waiting while the holder lived, gets the lock once the lease expires, with a larger token."""
    name = "{killed-holder}"
    holder = children.start(workers.hold, redis_url, name, 1.0)
    first_token = children.expect("holding")
    waiter_client = create_redis_client(url=redis_url, environ={})
    try:
        lock = RedisLock(waiter_client, name, ttl=2.0)
        outcome: dict[str, Any] = {}
        waiter = threading.Thread(target=acquire_into, args=(lock, BOUND, outcome), daemon=True)
        waiter.start()
        until(lambda: raw.zcard(lock.key + ":queue") == 1, "the waiter to queue")
        assert waiter.is_alive() and not outcome, "the waiter got through while the holder was alive"
        holder.kill()
        holder.join(10)
        waiter.join(BOUND + 5)
        assert not waiter.is_alive()
        assert "error" not in outcome, outcome
        held: HeldLock = outcome["held"]
        assert held.token > first_token
        assert held.release() is True
        assert lock.stats()["contended"] == 1
    finally:
        close_client(waiter_client)


# --- 4. Redis restarted or down mid-hold ----------------------------------------------------------------------------


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own (no persistence: a restart loses the data), for kills and restarts."""
    with RedisServer("lock-faults") as server:
        yield server


@pytest.fixture
def own_client(own_server: RedisServer) -> Iterator[RedisClient]:
    made = create_redis_client(url=own_server.url, environ={})
    yield made
    close_client(made)


@pytest.mark.fault
def test_holder_learns_of_a_redis_restart(own_server: RedisServer, own_client: RedisClient) -> None:
    """The restart loses the lock: ``lost`` becomes True, on_lost is called once, LockLost at the ``with`` exit; the
    next acquisition's token is still larger (time-based, though the counter was lost too)."""
    calls: list[HeldLock] = []
    lock = RedisLock(own_client, "{restart}", ttl=1.0, auto_renew=True, on_lost=calls.append)
    holding: list[HeldLock] = []

    def hold_through_restart() -> None:
        with lock as held:
            holding.append(held)
            own_server.restart()
            until(lambda: held.lost, "the holder to notice the lost lock")
            until(lambda: calls, "on_lost to be called")
            time.sleep(1.0)  # a few more renewal rounds: a second on_lost call would show

    with pytest.raises(LockLost):
        hold_through_restart()
    (held,) = holding
    assert calls == [held]
    assert lock.stats()["lost"] == 1
    with lock.acquire(timeout=5) as again:
        assert again.token > held.token


@pytest.mark.fault
def test_outage_mid_hold_acquire_raises_store_unavailable(own_server: RedisServer, own_client: RedisClient) -> None:
    """Redis killed while held: a new acquire raises StoreUnavailable (not LockTimeout, not a hang); the holder's
    ``lost`` becomes True and on_lost is called once; once Redis is back, leaving the ``with`` raises LockLost and a
    new acquisition gets a larger token."""
    calls: list[HeldLock] = []
    lock = RedisLock(own_client, "{outage}", ttl=1.0, auto_renew=True, on_lost=calls.append)
    other = RedisLock(own_client, "{outage}", ttl=1.0)
    holding: list[HeldLock] = []

    def hold_through_outage() -> None:
        with lock as held:
            holding.append(held)
            own_server.kill()
            with pytest.raises(StoreUnavailable):
                other.acquire(timeout=2)
            until(lambda: held.lost, "the holder to notice the outage")
            until(lambda: calls, "on_lost to be called")
            own_server.start()

    with pytest.raises(LockLost):
        hold_through_outage()
    (held,) = holding
    assert calls == [held]
    with other.acquire(timeout=5) as again:
        assert again.token > held.token


# --- 5. a queued head waiter killed -9 does not block the next waiter -----------------------------------------------


@pytest.mark.fault
def test_killed_head_waiter_does_not_block_the_next(
    children: Children, redis_url: str, raw: redis.Redis, client: redis.Redis
) -> None:
    """The head waiter (a child process) is SIGKILLed while queued behind the holder, a second waiter queued after
    it: once the holder releases, the second waiter gets the lock, and the dead waiter's entry leaves the queue."""
    name = "{dead-waiter}"
    lock = RedisLock(client, name, ttl=5.0)
    queue_key = lock.key + ":queue"
    held = lock.acquire(timeout=5)
    second_client = create_redis_client(url=redis_url, environ={})
    try:
        head = children.start(workers.wait_for, redis_url, name, 30.0)
        until(lambda: raw.zcard(queue_key) == 1, "the child to queue as head waiter")
        outcome: dict[str, Any] = {}
        second = RedisLock(second_client, name, ttl=5.0)
        waiter = threading.Thread(target=acquire_into, args=(second, 30.0, outcome), daemon=True)
        waiter.start()
        until(lambda: raw.zcard(queue_key) == 2, "the second waiter to queue behind it")
        head.kill()
        head.join(10)
        assert head.exitcode == -signal.SIGKILL
        assert held.release() is True
        waiter.join(BOUND + 15)
        assert not waiter.is_alive(), "the next waiter never got the lock after the head waiter was killed"
        assert "error" not in outcome, outcome
        assert outcome["held"].token > held.token
        assert outcome["held"].release() is True
        assert children.queue.empty(), "the killed head waiter reported acquiring"
        until(lambda: raw.zcard(queue_key) == 0, "the dead waiter to leave the queue")
    finally:
        close_client(second_client)


# --- 6. Sentinel failover: tokens keep growing on the new master ----------------------------------------------------


@pytest.fixture
def sentinel_lock_client(
    sentinel_setup: SentinelSetup, sentinels: tuple[list[tuple[str, int]], str], sentinel_client: RedisClient
) -> Iterator[RedisClient]:
    """A fresh sentinel client; afterwards also drops the shared session client's pooled connections, which the
    failover left pointing at the demoted master (as tests/topology/test_sentinel.py's failover_hygiene does)."""
    addresses, master_name = sentinels
    made = create_redis_client(mode="sentinel", sentinels=addresses, sentinel_master=master_name, environ={})
    yield made
    close_client(made)
    drop_connections(sentinel_client)


@pytest.mark.topology
def test_tokens_keep_growing_across_a_sentinel_failover(
    sentinel_setup: SentinelSetup, sentinel_lock_client: RedisClient
) -> None:
    """Acquire and release through the Sentinel master client, SENTINEL FAILOVER, acquire again: it works on the new
    master with a larger token, and a fenced write with the pre-failover token is refused there."""
    lock = RedisLock(sentinel_lock_client, "{failover}", ttl=2.0)
    with lock.acquire(timeout=5) as before:
        pass
    old = sentinel_setup.master_address()
    sentinel_setup.failover()
    new = sentinel_setup.master_address()
    assert new != old
    with lock.acquire(timeout=10) as after:
        assert after.token > before.token
        with sentinel_setup.data_client(new) as master:
            assert master.exists(lock.key) == 1, "the new acquisition is not on the new master"
    store = RedisSessionStore(sentinel_lock_client)
    with pytest.raises(FencedOut):  # the pre-failover token is fenced out on the new master too
        store.set("{failover}:s", {"writer": "old"}, fence=before)
