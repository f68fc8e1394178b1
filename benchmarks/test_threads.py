"""Throughput of 32 threads sharing one store on a pool of 20, against 32 threads on raw redis-py with the same pool."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
import redis

from benchmarks.sessions import SEED_SESSION
from fmredis import RedisSessionStore, create_redis_client
from fmredis.serialization import stamped

THREADS = 32
POOL = 20
REQUESTS_PER_THREAD = 50  # each a get and a set: 3,200 operations per round
PAYLOAD = orjson.dumps(stamped(SEED_SESSION))  # what the store's set() writes (it stamps last_activity every time)


@pytest.fixture(scope="module")
def pool_client(bench_url: str) -> Iterator[redis.Redis]:
    client = create_redis_client(url=bench_url, max_connections=POOL, environ={})
    yield client
    client.close()


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(THREADS) as pool:
        yield pool


def raw_worker(client: redis.Redis, prefix: str) -> Callable[[int], None]:
    def work(thread: int) -> None:
        for i in range(REQUESTS_PER_THREAD):
            key = f"{prefix}threads-raw:{thread}:{i % 10}"
            client.get(key)
            client.set(key, PAYLOAD, ex=1800)

    return work


def store_worker(client: redis.Redis, prefix: str) -> Callable[[int], None]:
    store = RedisSessionStore(client, prefix=prefix + "threads-store:")

    def work(thread: int) -> None:
        for i in range(REQUESTS_PER_THREAD):
            key = f"{thread}:{i % 10}"
            store.get(key)
            store.set(key, SEED_SESSION)

    return work


@pytest.mark.parametrize(
    ("role", "make"), [("baseline", raw_worker), ("candidate", store_worker)], ids=["raw", "store"]
)
def test_32_threads_pool_of_20(
    benchmark: Any, pool_client: redis.Redis, bench_prefix: str, executor: ThreadPoolExecutor, role: str, make: Any
) -> None:
    work = make(pool_client, bench_prefix)

    def round_of_requests() -> None:
        list(executor.map(work, range(THREADS)))

    benchmark.group, benchmark.extra_info["role"] = f"{THREADS} threads, pool of {POOL}", role
    benchmark.extra_info["ops_per_round"] = THREADS * REQUESTS_PER_THREAD * 2
    benchmark.pedantic(round_of_requests, rounds=5, warmup_rounds=1)
    assert len(pool_client.connection_pool._connections) <= POOL
