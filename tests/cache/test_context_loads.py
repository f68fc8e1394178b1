"""ContextCache with real threads: get_or_load's single flight (32 threads, one loader call; a failing loader or one
returning a non-JSON value fails every waiter, writes nothing and releases the lease; the naive get-then-load-then-set
loads more than once), and mixed concurrent set/get/append/history from two cache instances leaving no stale local
copy behind, including after two concurrent writes of one key that Redis announces with one invalidation. Waits
are bounded polls only; nothing asserts a duration."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from fmredis import ContextCache, FrozenDict, SerializationError, create_redis_client
from tests.cache.context_support import (
    GUARD,
    NS,
    Caches,
    Threads,
    decode,
    drain,
    eventually,
    history_keys,
    plain,
    settle,
    value_key,
)

pytestmark = pytest.mark.timeout(120)

THREADS = 32
LOADED = {"profile": {"name": "Ada", "plan": "pro"}, "turns": [1, 2, 3]}


class Loader:
    """Counts its calls. Each call waits until every caller has arrived, then until a second call starts or
    ``patience`` seconds pass (so with single flight it returns after ``patience``, without it as soon as a second
    caller loads too), and then returns a fresh copy of ``result`` or raises ``error()``."""

    def __init__(
        self, result: Any = LOADED, error: Callable[[int], BaseException] | None = None, patience: float = 0.3
    ) -> None:
        self.result, self.error, self.patience = result, error, patience
        self.calls = 0
        self.arrived = 0
        self.lock = threading.Lock()

    def arrive(self) -> None:
        with self.lock:
            self.arrived += 1

    def __call__(self) -> Any:
        with self.lock:
            self.calls += 1
            number = self.calls
        eventually(lambda: self.arrived == THREADS, "every caller to arrive")
        deadline = time.monotonic() + self.patience
        while self.calls < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.error is not None:
            raise self.error(number)
        return {**self.result} if isinstance(self.result, dict) else self.result


def load_in_threads(cache: ContextCache, loader: Loader, key: str = "conv-1") -> Threads:
    def call(_: int) -> Any:
        loader.arrive()
        return cache.get_or_load(key, loader)

    return Threads(THREADS, call).run()


def test_32_threads_on_one_missing_key_run_the_loader_once(caches: Caches, raw: redis.Redis) -> None:
    cache = caches.make()
    loader = Loader()
    done = load_in_threads(cache, loader)
    assert done.errors == [None] * THREADS
    assert loader.calls == 1 and cache.stats()["loads"] == 1
    assert all(result == LOADED and type(result) is FrozenDict for result in done.results)
    assert decode(raw.get(value_key("conv-1"))) == LOADED  # type: ignore[arg-type]
    assert raw.keys(f"{NS}:l:*") == []  # the lease was released with the write
    assert cache.get_or_load("conv-1", loader) == LOADED and loader.calls == 1


def test_the_naive_get_then_load_then_set_loads_more_than_once(caches: Caches, raw: redis.Redis) -> None:
    cache = caches.make()
    loader = Loader(patience=GUARD)

    def naive(_: int) -> Any:
        loader.arrive()
        value = cache.get("conv-1")
        if value is None:
            value = loader()
            cache.set("conv-1", value)
        return value

    done = Threads(THREADS, naive).run()
    assert done.errors == [None] * THREADS and all(result == LOADED for result in done.results)
    assert loader.calls > 1


def test_a_failing_loader_fails_every_waiter_writes_nothing_and_the_next_call_loads_again(
    caches: Caches, raw: redis.Redis
) -> None:
    cache = caches.make()
    loader = Loader(error=lambda number: RuntimeError(f"backend down (call {number})"))
    done = load_in_threads(cache, loader)
    assert all(isinstance(error, RuntimeError) for error in done.errors)
    assert loader.calls >= 1 and cache.stats()["loads"] == loader.calls
    # Waiters get their leader's exception: as many distinct exceptions as loader calls (normally one).
    assert len({id(error) for error in done.errors}) == loader.calls
    assert raw.keys("*") == []  # no value, no lease
    good = Loader()
    good.arrived = THREADS
    assert cache.get_or_load("conv-1", good) == LOADED and good.calls == 1
    assert decode(raw.get(value_key("conv-1"))) == LOADED  # type: ignore[arg-type]


def test_a_loader_returning_a_non_json_value_fails_every_waiter_and_releases_the_lease(
    caches: Caches, raw: redis.Redis
) -> None:
    cache = caches.make()
    loader = Loader(result={"tags": {"a", "b"}})
    done = load_in_threads(cache, loader)
    assert all(isinstance(error, SerializationError) for error in done.errors)
    assert "loaded value is not JSON-serializable" in str(done.errors[0])
    assert raw.keys("*") == [] and raw.keys(f"{NS}:l:*") == []
    good = Loader()
    good.arrived = THREADS
    assert cache.get_or_load("conv-1", good) == LOADED and good.calls == 1


# --- mixed concurrent use -------------------------------------------------------------------------------------------

KEYS = [f"k{i}" for i in range(4)]
CONVERSATIONS = ["c0", "c1"]


def test_mixed_concurrent_use_leaves_no_stale_local_copy(caches: Caches, raw: redis.Redis, redis_url: str) -> None:
    """8 threads (6 on one cache, 2 on a second cache with its own client: the other writer whose changes only
    Redis's invalidations report) set, get, delete, append and read histories on shared keys for about a second.
    No call fails, every value read is one some thread wrote, every history is in append order per thread; then
    each cache's every read equals what Redis holds, and a later write by another client to any key is heard."""
    other_client = create_redis_client(url=redis_url, environ={})
    try:
        first, second = caches.make(), caches.make(other_client)
        stop = time.monotonic() + 1.0

        def work(index: int) -> int:
            cache = first if index < 6 else second
            rng, n = random.Random(index), 0
            while time.monotonic() < stop:
                n += 1
                op = rng.random()
                key, conversation = rng.choice(KEYS), rng.choice(CONVERSATIONS)
                if op < 0.25:
                    cache.set(key, {"t": index, "n": n, "pad": "x" * rng.randrange(0, 3000)})
                elif op < 0.3:
                    cache.delete(key)
                elif op < 0.65:
                    value = cache.get(key)
                    assert value is None or (set(value) == {"t", "n", "pad"} and type(value) is FrozenDict)
                elif op < 0.8:
                    kept = cache.append(conversation, {"t": index, "n": n}, max_messages=5)
                    assert 1 <= kept <= 5
                else:
                    messages = cache.history(conversation)
                    assert len(messages) <= 5
                    for thread in range(8):
                        mine = [m["n"] for m in messages if m["t"] == thread]
                        assert mine == sorted(mine), "a thread's messages out of order"
            return n

        done = Threads(8, work).run()
        assert done.errors == [None] * 8, [repr(error) for error in done.errors if error is not None]
        assert all(count > 10 for count in done.results)
        hits = first.stats()["hits"] + second.stats()["hits"]
        for cache in (first, second):
            drain(cache, raw)
            for key in KEYS:
                stored = raw.get(value_key(key))
                assert cache.get(key) == (None if stored is None else decode(stored)), f"stale local copy of {key}"
            for conversation in CONVERSATIONS:
                expected = [decode(item) for item in raw.lrange(history_keys(conversation)[0], 0, -1)]
                assert cache.history(conversation) == expected, f"stale local history of {conversation}"
        assert hits > 0  # the local tier did serve reads meanwhile
        # And both still hear every write: each one's local copy of every key, then a write by another client.
        for cache in (first, second):
            for key in KEYS:
                cache.set(key, {"before": key})
                settle(cache, lambda c=cache, k=key: c.get(k), {"before": key})  # type: ignore[misc]
                raw.set(value_key(key), plain({"after": key}))
            drain(cache, raw)
            for key in KEYS:
                assert cache.get(key) == {"after": key}, f"a write by another client to {key} went unheard"
    finally:
        other_client.close()
        other_client.connection_pool.disconnect()


def paused_scripts(raw: redis.Redis) -> int:
    return sum(entry["cmd"] in ("evalsha", "eval") and "b" in entry["flags"] for entry in raw.client_list())


def test_a_write_by_another_client_is_heard_after_concurrent_writes_of_the_key_by_this_process(
    caches: Caches, client: redis.Redis, raw: redis.Redis
) -> None:
    """Two threads of this process set one key while writes are paused, so that Redis runs both in one event-loop
    iteration (as it may under load), and Redis's broadcasting mode sends one invalidation for both; then another
    client writes the key: the cache must serve that write, not its own older copy. (A first version counted one
    echo per own write and took the other client's invalidation for the missing echo.)"""
    cache = caches.make()
    cache.set("k", {"v": 0})  # the script is loaded
    pool = client.connection_pool
    for connection in [pool.get_connection() for _ in range(3)]:  # connected before the pause
        pool.release(connection)
    raw.execute_command("CLIENT", "PAUSE", str(int(GUARD * 1000)), "WRITE")
    try:
        writers = threading.Thread(target=lambda: Threads(2, lambda n: cache.set("k", {"v": n + 1})).run())
        writers.start()
        eventually(lambda: paused_scripts(raw) == 2, "both writes to wait for the pause's end")
    finally:
        raw.execute_command("CLIENT", "UNPAUSE")
    writers.join(GUARD)
    drain(cache, raw)
    assert settle(cache, lambda: cache.get("k")) in ({"v": 1}, {"v": 2})
    raw.set(value_key("k"), plain({"v": "theirs"}))
    drain(cache, raw)
    assert cache.get("k") == {"v": "theirs"}, "another client's write went unheard: a stale copy is served"
