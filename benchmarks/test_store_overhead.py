"""RedisSessionStore.get/set against raw redis-py GET / SET EX of the same payload, on the same client and server.

The raw side gets the payload already serialized and returns bytes undecoded, so the ratio is everything the store
adds: key checks, the last_activity stamp, orjson encode/decode and error translation. Target: at most 1.05x.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis
from sessions import SEED_SESSION

from fmredis import RedisSessionStore

SESSION = SEED_SESSION
PAYLOAD = orjson.dumps(SESSION)
TTL = 1800
KEY = "user_123_abc"


@pytest.fixture(scope="module")
def store(bench_client: redis.Redis, bench_prefix: str) -> RedisSessionStore:
    store = RedisSessionStore(bench_client, prefix=bench_prefix)
    store.set(KEY, SESSION)
    return store


def test_get_raw(benchmark: Any, bench_client: redis.Redis, store: RedisSessionStore) -> None:
    benchmark.group, benchmark.extra_info["role"] = "get", "baseline"
    assert benchmark(bench_client.get, store.prefix + KEY) == PAYLOAD


def test_get_store(benchmark: Any, store: RedisSessionStore) -> None:
    benchmark.group, benchmark.extra_info["role"] = "get", "candidate"
    assert benchmark(store.get, KEY) == SESSION


def test_set_raw(benchmark: Any, bench_client: redis.Redis, store: RedisSessionStore) -> None:
    benchmark.group, benchmark.extra_info["role"] = "set", "baseline"
    assert benchmark(bench_client.set, store.prefix + KEY, PAYLOAD, ex=TTL) is True


def test_set_store(benchmark: Any, store: RedisSessionStore) -> None:
    benchmark.group, benchmark.extra_info["role"] = "set", "candidate"
    benchmark(store.set, KEY, SESSION, TTL)
    assert store.get(KEY) == SESSION


# A session with nulls: the store then also scans the document for NaN/infinity (orjson would write them as null).
SESSION_WITH_NULLS = {**SEED_SESSION, "investigation_id": None, "context": {**SEED_SESSION["context"], "closed": None}}
PAYLOAD_WITH_NULLS = orjson.dumps(SESSION_WITH_NULLS)


def test_set_nulls_raw(benchmark: Any, bench_client: redis.Redis, store: RedisSessionStore) -> None:
    benchmark.group, benchmark.extra_info["role"] = "set, session with nulls", "baseline"
    assert benchmark(bench_client.set, store.prefix + KEY, PAYLOAD_WITH_NULLS, ex=TTL) is True


def test_set_nulls_store(benchmark: Any, store: RedisSessionStore) -> None:
    benchmark.group, benchmark.extra_info["role"] = "set, session with nulls", "candidate"
    benchmark(store.set, KEY, SESSION_WITH_NULLS, TTL)
    assert store.get(KEY) == SESSION_WITH_NULLS
