"""Bulk calls against loops of single calls: delete_many of 10,000 sessions, get_many of 100."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis

from benchmarks.sessions import SEED_SESSION
from fmredis import RedisSessionStore

CLEANUP = 10_000
MANY = 100
PAYLOAD = orjson.dumps(SEED_SESSION)


@pytest.fixture(scope="module")
def store(bench_client: redis.Redis, bench_prefix: str) -> RedisSessionStore:
    return RedisSessionStore(bench_client, prefix=bench_prefix + "bulk:")


def populate(store: RedisSessionStore, keys: list[str]) -> None:
    pipe = store.client.pipeline(transaction=False)
    for start in range(0, len(keys), 1000):
        pipe.mset({store.prefix + key: PAYLOAD for key in keys[start : start + 1000]})
    pipe.execute()


def delete_loop(store: RedisSessionStore, keys: list[str]) -> int:
    return sum(store.delete(key) for key in keys)


@pytest.mark.parametrize(
    ("role", "cleanup"),
    [("baseline", delete_loop), ("candidate", RedisSessionStore.delete_many)],
    ids=["delete-loop", "delete_many"],
)
def test_cleanup_10000_sessions(benchmark: Any, store: RedisSessionStore, role: str, cleanup: Any) -> None:
    keys = [f"s{i}" for i in range(CLEANUP)]
    benchmark.group, benchmark.extra_info["role"] = f"cleanup {CLEANUP} sessions", role
    deleted = benchmark.pedantic(cleanup, args=(store, keys), setup=lambda: populate(store, keys), rounds=3)
    assert deleted == CLEANUP
    assert store.get_many(keys[:10]) == {}


def get_loop(store: RedisSessionStore, keys: list[str]) -> dict[str, Any]:
    return {key: store.get(key) for key in keys}


@pytest.mark.parametrize(
    ("role", "fetch"), [("baseline", get_loop), ("candidate", RedisSessionStore.get_many)], ids=["get-loop", "get_many"]
)
def test_fetch_100_sessions(benchmark: Any, store: RedisSessionStore, role: str, fetch: Any) -> None:
    keys = [f"m{i}" for i in range(MANY)]
    populate(store, keys)
    benchmark.group, benchmark.extra_info["role"] = f"fetch {MANY} sessions", role
    found = benchmark(fetch, store, keys)
    assert len(found) == MANY and found[keys[0]] == SEED_SESSION
