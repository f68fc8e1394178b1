"""ContextCache across real processes (multiprocessing spawn and fork).

What is proved, next to the naive version that fails it where there is one: a write (through another ContextCache or
a raw client) reaches another process's warm local copy (a plain dict memo keeps serving the old value); get_or_load
runs one loader across 4 processes and all get its value (without single flight each process loads), also when a
caller's miss came just before the loader's write (the lease script sees the value and says read again); a loader
SIGKILLed mid-load does not block the others past its lease; with stale_ttl another process gets the stale copy
instead of waiting; a fork child's cache restarts its listener and sees invalidations, the parent's keeps working.
Faults of the server are in test_cache_faults.py. The children run tests/cache/cache_workers.py. Every wait is a
bounded poll or a join with a timeout (deadlock guards, never timing assertions).
"""

from __future__ import annotations

import multiprocessing
import queue as queues
import time
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from typing import Any

import pytest
import redis

from fmredis import ContextCache, create_redis_client
from tests.cache import cache_workers as workers
from tests.cache.context_support import GUARD, NS, eventually, opened, plain, settle, value_key

pytestmark = pytest.mark.timeout(60)


class Children:
    """Worker processes (spawned, or forked) sharing one report queue; `close` SIGKILLs and reaps what is left."""

    def __init__(self, method: str = "spawn") -> None:
        self.ctx = multiprocessing.get_context(method)
        self.queue: Any = self.ctx.Queue()
        self.started: list[BaseProcess] = []
        self.early: list[tuple[str, Any]] = []  # reports read while waiting for another kind

    def start(self, target: Callable[..., None], *args: Any) -> BaseProcess:
        process = self.ctx.Process(target=target, args=(self.queue, *args), daemon=True)
        process.start()
        self.started.append(process)
        return process

    def expect(self, kind: str, count: int = 1, timeout: float = GUARD * 2) -> list[Any]:
        """The payloads of the next ``count`` reports of ``kind`` (others are kept for later; a child's traceback
        fails the test)."""
        found = [payload for got, payload in self.early if got == kind][:count]
        for payload in found:
            self.early.remove((kind, payload))
        deadline = time.monotonic() + timeout
        while len(found) < count:
            try:
                got, payload = self.queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queues.Empty:
                pytest.fail(f"{len(found)} of {count} {kind!r} reports from the child processes within {timeout} s")
            if got == "error":
                pytest.fail(f"a child process failed:\n{payload}")
            (found if got == kind else self.early).append(payload if got == kind else (got, payload))
        return found

    def close(self) -> None:
        for process in self.started:
            if process.is_alive():
                process.kill()
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


@pytest.fixture
def cache(redis_url: str, raw: redis.Redis) -> Iterator[ContextCache]:
    with opened(create_redis_client(url=redis_url, environ={})) as made:
        yield made


# --- 1. an invalidation reaches another process's local copy; a dict memo keeps the old value ---------------------


def test_write_reaches_the_local_copy_of_another_process(
    children: Children, redis_url: str, raw: redis.Redis, cache: ContextCache
) -> None:
    """A child with a warm local copy sees the parent's write through its own ContextCache, then a raw client's, on a
    bounded poll, counted as invalidations; a child with a plain dict memo still serves the first value after both."""
    key = "shared"
    cache.set(key, {"v": 1})
    inboxes = [children.ctx.Queue(), children.ctx.Queue()]
    for inbox, naive in zip(inboxes, (False, True), strict=True):
        children.start(workers.reader, inbox, redis_url, key, naive)
    assert children.expect("warm", 2) == [{"v": 1}, {"v": 1}]
    tracked, memo = inboxes

    def ask(inbox: Any, *command: Any) -> tuple[Any, dict[str, Any]]:
        inbox.put(command)
        (answer,) = children.expect("value")
        return answer  # type: ignore[no-any-return]

    cache.set(key, {"v": 2})
    value, stats = ask(tracked, "until", {"v": 2})
    assert value == {"v": 2}
    assert stats["invalidations"] >= 1 and stats["tracking"] is True
    raw.set(value_key(key), plain({"v": 3, "by": "raw"}))
    value, stats = ask(tracked, "until", {"v": 3, "by": "raw"})
    assert value == {"v": 3, "by": "raw"}
    assert stats["invalidations"] >= 2
    assert ask(memo, "get")[0] == {"v": 1}, "the naive memo should still serve the value it first read"
    assert cache.get(key) == {"v": 3, "by": "raw"}
    for inbox in inboxes:
        inbox.put(("stop",))


# --- 2. single flight across processes ------------------------------------------------------------------------------


@pytest.mark.parametrize("naive", [False, True], ids=["single-flight", "naive"])
def test_one_load_across_four_processes(naive: bool, children: Children, redis_url: str, raw: redis.Redis) -> None:
    """4 processes released together call get_or_load on one missing key, the first loader held until the 3 others
    wait for it: exactly one load (the raw counter), and all 4 get its value. The naive get-then-load-and-set, held
    until all 4 loaders run, loads 4 times and the processes end up with 4 different values."""
    start = children.ctx.Barrier(4)
    release = children.ctx.Event()
    for _ in range(4):
        children.start(workers.load, redis_url, "missing", {}, start, release, naive)
    children.expect("ready", 4)
    loading = children.expect("loading", 4 if naive else 1)
    children.expect("calling" if naive else "waiting", 4 if naive else 3)
    release.set()
    reports = children.expect("loaded", 4)
    values = [report["value"] for report in reports]
    if naive:
        assert int(raw.get(workers.LOAD_COUNTER)) == 4
        assert len({value["by"] for value in values}) == 4
        return
    assert int(raw.get(workers.LOAD_COUNTER)) == 1
    assert values == [{"by": loading[0]}] * 4
    assert sum(report["stats"]["loads"] for report in reports) == 1
    assert sum(report["stats"]["load_waits"] for report in reports) >= 1
    assert not raw.exists(f"{NS}:l:missing"), "the loader's lease was not released with its write"


@pytest.mark.fault
def test_a_killed_loader_does_not_block_the_others(children: Children, redis_url: str, raw: redis.Redis) -> None:
    """A loader (lease=1.0) is SIGKILLed mid-load while two other processes wait on its lease: both get a value,
    loaded by one of them once the lease is over, never the dead loader's."""
    options = {"lease": 1.0}
    never, go = children.ctx.Event(), children.ctx.Event()
    doomed = children.start(workers.load, redis_url, "orphan", options, None, never)
    for _ in range(2):
        children.start(workers.load, redis_url, "orphan", options, go, None)
    ready = children.expect("ready", 3)
    assert children.expect("loading") == [doomed.pid]
    assert raw.exists(f"{NS}:l:orphan"), "the first loader holds no lease"
    go.set()
    children.expect("calling", 3)
    doomed.kill()
    doomed.join(10)
    reports = children.expect("loaded", 2)
    survivors = set(ready) - {doomed.pid}
    assert {report["pid"] for report in reports} == survivors
    assert all(report["value"]["by"] in survivors for report in reports)
    assert sum(report["stats"]["load_waits"] for report in reports) >= 1
    assert 1 <= sum(report["stats"]["loads"] for report in reports) <= 2
    assert int(raw.get(workers.LOAD_COUNTER)) == 1 + sum(report["stats"]["loads"] for report in reports)


class _PausedBeforeLease(redis.Redis):
    """A client that runs ``before_lease()`` once, just before sending the first command naming ``lease_key``."""

    lease_key = ""
    before_lease: Callable[[], None] | None = None

    def execute_command(self, *args: Any, **options: Any) -> Any:
        hook = self.before_lease
        if hook is not None and any(arg in (self.lease_key, self.lease_key.encode()) for arg in args):
            self.before_lease = None
            hook()
        return super().execute_command(*args, **options)


def test_a_miss_read_just_before_the_write_does_not_load_again(
    children: Children, redis_url: str, raw: redis.Redis, client: redis.Redis
) -> None:
    """Deterministic form of the race the 4-process test meets now and then: this process's get_or_load reads a miss
    while a child loads; between that read and its lease attempt the child writes its value and ends its lease. The
    late caller should then return the child's value, not take the freed lease and run its own loader."""
    release = children.ctx.Event()
    leader = children.start(workers.load, redis_url, "late", {}, None, release)
    children.expect("ready")
    children.expect("loading")
    late = _PausedBeforeLease(connection_pool=client.connection_pool)
    late.lease_key = f"{NS}:l:late"

    def finish_the_load() -> None:
        release.set()
        eventually(lambda: raw.exists(value_key("late")) and not raw.exists(late.lease_key), "the leader's write")

    late.before_lease = finish_the_load
    with opened(late) as cache:
        value = cache.get_or_load("late", lambda: {"by": "the late caller"})
        assert late.before_lease is None, "the lease attempt was never seen"
        (report,) = children.expect("loaded")
        assert report["value"] == {"by": leader.pid}
        assert value == {"by": leader.pid}
        assert cache.stats()["loads"] == 0 and int(raw.get(workers.LOAD_COUNTER)) == 1


def test_stale_copy_is_served_while_another_process_loads(children: Children, redis_url: str, raw: redis.Redis) -> None:
    """With stale_ttl=30, a value past its ttl: while a child holds the lease and loads, get_or_load in this process
    returns the stale copy at once (stale_served, no load of its own), get() reads it as missing; once the child has
    written, this process reads the child's value."""
    with opened(create_redis_client(url=redis_url, environ={}), stale_ttl=30) as mine:
        mine.set("aging", {"v": "old"}, ttl=1)
        eventually(lambda: 0 < raw.pttl(value_key("aging")) <= 30_000, "the value to enter its stale period")
        assert mine.get("aging") is None
        release = children.ctx.Event()
        loader = children.start(workers.load, redis_url, "aging", {"stale_ttl": 30}, None, release)
        children.expect("ready")
        assert children.expect("loading") == [loader.pid]
        assert mine.get_or_load("aging", lambda: pytest.fail("this process should not load")) == {"v": "old"}
        stats = mine.stats()
        assert stats["stale_served"] == 1 and stats["loads"] == 0
        release.set()
        (report,) = children.expect("loaded")
        assert report["value"] == {"by": loader.pid}
        assert report["stats"]["loads"] == 1 and report["stats"]["stale_served"] == 0
        eventually(lambda: mine.get("aging") == {"by": loader.pid}, "the child's value read here")
        assert int(raw.get(workers.LOAD_COUNTER)) == 1


# --- 6. fork: the child's cache restarts its listener, the parent's is untouched -----------------------------------


@pytest.mark.fault
def test_forked_child_sees_invalidations_and_parent_is_unaffected(raw: redis.Redis, cache: ContextCache) -> None:
    """A fork child (multiprocessing fork context) of a process that used its cache: the child reads the value, its
    listener restarts (a subscription of its own) and it sees the parent's raw write as an invalidation; its closing
    the cache leaves the parent's listener alone (same subscription count, still tracking, still seeing writes)."""
    cache.set("forked", {"v": 1})
    assert settle(cache, lambda: cache.get("forked")) == {"v": 1}
    subscriptions = cache.stats()["subscriptions"]
    forks = Children("fork")
    try:
        forks.start(workers.forked_reader, cache, "forked", {"v": 2})
        (ready,) = forks.expect("ready")
        raw.set(value_key("forked"), plain({"v": 2}))
        eventually(lambda: cache.get("forked") == {"v": 2}, "the parent to see the write")
        (seen,) = forks.expect("seen")
    finally:
        forks.close()
    assert ready["first"] == ready["warm"] == {"v": 1}
    assert ready["stats"]["tracking"] is True and ready["stats"]["subscriptions"] >= 1
    assert seen["value"] == {"v": 2} and seen["stats"]["invalidations"] >= 1
    raw.set(value_key("forked"), plain({"v": 3}))
    eventually(lambda: cache.get("forked") == {"v": 3}, "the parent to see a write after the child closed its cache")
    stats = cache.stats()
    assert stats["subscriptions"] == subscriptions and stats["tracking"] is True
    assert stats["invalidations"] >= 2
