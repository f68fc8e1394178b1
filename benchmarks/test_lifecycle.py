"""Lifecycle costs: sliding expiry in one GETEX against the read-and-rewrite it replaces, and update's WATCH/MULTI
against a plain (unsafe) get + set. The counters' before/after is ``benchmarks/counters.py`` (interleaved rounds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from benchmarks import counters
from benchmarks.sessions import SEED_SESSION
from fmredis import RedisSessionStore

KEY = "lifecycle"


def test_the_interleaved_counter_measurement_runs(tmp_path: Path) -> None:
    """``benchmarks/counters.py`` (the counters' before/after, run by ``make bench``) works and reports every case."""
    counters.main(["--rounds", "2", "--calls", "50", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "counters.json").read_text())
    assert {"redis get", "redis set", "memory get", "memory set"} <= set(report)
    assert all(row["off_us"] > 0 and row["on_us"] > 0 for name, row in report.items() if name != "python")


@pytest.fixture(scope="module")
def store(bench_client: redis.Redis, bench_prefix: str) -> RedisSessionStore:
    store = RedisSessionStore(bench_client, prefix=bench_prefix + "lifecycle:")
    store.set(KEY, SEED_SESSION)
    return store


def read_and_rewrite(store: RedisSessionStore) -> dict[str, Any] | None:
    """Sliding expiry as the popular stores do it: read, then write the whole session back to restart its TTL."""
    session = store.get(KEY)
    if session is not None:
        store.set(KEY, session)
    return session


def test_sliding_expiry_rewrite(benchmark: Any, store: RedisSessionStore) -> None:
    benchmark.group, benchmark.extra_info["role"] = "sliding expiry", "baseline"
    assert benchmark(read_and_rewrite, store) is not None


def test_sliding_expiry_getex(benchmark: Any, store: RedisSessionStore) -> None:
    benchmark.group, benchmark.extra_info["role"] = "sliding expiry", "candidate"
    assert benchmark(store.get, KEY, refresh=True) is not None


def plain_get_set(store: RedisSessionStore) -> None:
    session = store.get(KEY)
    assert session is not None
    session["visits"] = session.get("visits", 0) + 1
    store.set(KEY, session)


def test_update_plain_get_set(benchmark: Any, store: RedisSessionStore) -> None:
    benchmark.group, benchmark.extra_info["role"] = "read-modify-write (no contention)", "baseline"
    benchmark(plain_get_set, store)


def test_update_atomic(benchmark: Any, store: RedisSessionStore) -> None:
    benchmark.group, benchmark.extra_info["role"] = "read-modify-write (no contention)", "candidate"
    benchmark(store.update, KEY, lambda session: {**session, "visits": session.get("visits", 0) + 1})
