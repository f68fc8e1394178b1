"""RedisSessionStore.get/set against raw redis-py GET / SET EX of the same payload, on the same client and server.

The raw side gets the payload already serialized and returns bytes undecoded, so the ratio is everything the store
adds: key checks, the last_activity stamp, orjson encode/decode and error translation. Target: at most 1.05x.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis

from benchmarks.sessions import SEED_SESSION
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


# A session with nulls makes the store also scan the document for NaN/infinity (orjson would write them as null).
SESSION_WITH_NULLS = {**SEED_SESSION, "investigation_id": None, "context": {**SEED_SESSION["context"], "closed": None}}
SET_CASES = {"set": SESSION, "set, session with nulls": SESSION_WITH_NULLS}


@pytest.mark.parametrize("group", SET_CASES)
def test_set_raw(benchmark: Any, bench_client: redis.Redis, store: RedisSessionStore, group: str) -> None:
    benchmark.group, benchmark.extra_info["role"] = group, "baseline"
    payload = orjson.dumps(SET_CASES[group])
    assert benchmark(bench_client.set, store.prefix + KEY, payload, ex=TTL) is True


@pytest.mark.parametrize("group", SET_CASES)
def test_set_store(benchmark: Any, store: RedisSessionStore, group: str) -> None:
    benchmark.group, benchmark.extra_info["role"] = group, "candidate"
    benchmark(store.set, KEY, SET_CASES[group], TTL)
    assert store.get(KEY) == SET_CASES[group]
