"""RedisSessionStore.get/set against raw redis-py GET / SET EX of the same payload, on the same client and server.

The raw side gets the payload already serialized and returns bytes undecoded, so the ratio is everything the store
adds: key checks, the last_activity stamp (every set() writes the time of the write), orjson encode/decode and error
translation. Like with like: the raw SET writes the bytes the store's set() writes (the document with a stamped
last_activity, serialized once, before the measurement), and both gets read the same stored bytes. Target: at most
1.05x.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis

from benchmarks.sessions import SEED_SESSION, written_by_set
from fmredis import RedisSessionStore
from fmredis.serialization import stamped

SESSION = SEED_SESSION
PAYLOAD = orjson.dumps(SESSION)
TTL = 1800
KEY = "user_123_abc"


@pytest.fixture(scope="module")
def store(bench_client: redis.Redis, bench_prefix: str) -> RedisSessionStore:
    return RedisSessionStore(bench_client, prefix=bench_prefix)


@pytest.fixture
def stored(store: RedisSessionStore) -> RedisSessionStore:
    """The store with SESSION stored as it is (stamp=False): a fixed payload, so the raw get has bytes to compare."""
    store.set(KEY, SESSION, stamp=False)
    return store


def test_get_raw(benchmark: Any, bench_client: redis.Redis, stored: RedisSessionStore) -> None:
    benchmark.group, benchmark.extra_info["role"] = "get", "baseline"
    assert benchmark(bench_client.get, stored.prefix + KEY) == PAYLOAD


def test_get_store(benchmark: Any, stored: RedisSessionStore) -> None:
    benchmark.group, benchmark.extra_info["role"] = "get", "candidate"
    assert benchmark(stored.get, KEY) == SESSION


# A session with nulls makes the store also scan the document for NaN/infinity (orjson would write them as null).
SESSION_WITH_NULLS = {**SEED_SESSION, "investigation_id": None, "context": {**SEED_SESSION["context"], "closed": None}}
SET_CASES = {"set": SESSION, "set, session with nulls": SESSION_WITH_NULLS}


@pytest.mark.parametrize("group", SET_CASES)
def test_set_raw(benchmark: Any, bench_client: redis.Redis, store: RedisSessionStore, group: str) -> None:
    benchmark.group, benchmark.extra_info["role"] = group, "baseline"
    payload = orjson.dumps(stamped(SET_CASES[group]))  # what the store writes: same size, same shape
    assert benchmark(bench_client.set, store.prefix + KEY, payload, ex=TTL) is True
    assert written_by_set(store.get(KEY), SET_CASES[group])


@pytest.mark.parametrize("group", SET_CASES)
def test_set_store(benchmark: Any, store: RedisSessionStore, group: str) -> None:
    benchmark.group, benchmark.extra_info["role"] = group, "candidate"
    benchmark(store.set, KEY, SET_CASES[group], TTL)  # stamps last_activity on every call: part of the cost
    assert written_by_set(store.get(KEY), SET_CASES[group])
