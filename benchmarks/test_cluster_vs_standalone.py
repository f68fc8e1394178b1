"""Per-call cost of RedisSessionStore on a 3-master Redis Cluster against the standalone bench server, in one run.

Baseline: the store on the benchmarks' standalone server (``bench_client``); candidate: the same store, prefix and
session on a cluster this module starts itself (tests/harness/cluster.py's ``RedisCluster3``, three redis-servers on
127.0.0.1, stopped at the end of the module). Both clients come from ``create_redis_client`` with default settings
(hiredis, blocking pools). What the ratio shows is redis-py's cluster routing (slot, node lookup, its retry wrapper)
plus the cluster-enabled server; ``get_many`` of 100 keys also pays for one MGET per slot (pipelined over 3 nodes)
instead of one MGET.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from benchmarks.sessions import SEED_SESSION, written_by_set
from fmredis import RedisSessionStore, create_redis_client
from fmredis.client import RedisClient
from tests.harness.cluster import RedisCluster3

KEY = "user_123_abc"
TTL = 1800
MANY = 100
ROLES = {"standalone": "baseline", "cluster": "candidate"}

pytestmark = pytest.mark.topology  # starts a cluster of its own: `-m "not topology"` skips it


@pytest.fixture(scope="module")
def bench_cluster_client() -> Iterator[RedisClient]:
    with RedisCluster3() as cluster:
        client = create_redis_client(mode="cluster", cluster_nodes=cluster.nodes, environ={})
        yield client
        client.close()


@pytest.fixture(scope="module")
def stores(
    bench_client: redis.Redis, bench_prefix: str, bench_cluster_client: RedisClient
) -> dict[str, RedisSessionStore]:
    prefix = bench_prefix + "cluster-cmp:"
    return {
        "standalone": RedisSessionStore(bench_client, prefix=prefix),
        "cluster": RedisSessionStore(bench_cluster_client, prefix=prefix),
    }


def _label(benchmark: Any, group: str, topology: str) -> None:
    benchmark.group, benchmark.extra_info["role"] = group, ROLES[topology]
    benchmark.extra_info["topology"] = topology


@pytest.mark.parametrize("topology", ROLES)
def test_cluster_get(benchmark: Any, stores: dict[str, RedisSessionStore], topology: str) -> None:
    store = stores[topology]
    store.set(KEY, SEED_SESSION, TTL)
    _label(benchmark, "cluster get", topology)
    assert written_by_set(benchmark(store.get, KEY), SEED_SESSION)


@pytest.mark.parametrize("topology", ROLES)
def test_cluster_set(benchmark: Any, stores: dict[str, RedisSessionStore], topology: str) -> None:
    store = stores[topology]
    _label(benchmark, "cluster set", topology)
    benchmark(store.set, KEY, SEED_SESSION, TTL)
    assert written_by_set(store.get(KEY), SEED_SESSION)


@pytest.mark.parametrize("topology", ROLES)
def test_cluster_get_many(benchmark: Any, stores: dict[str, RedisSessionStore], topology: str) -> None:
    store = stores[topology]
    keys = [f"many-{i}" for i in range(MANY)]
    for key in keys:
        store.set(key, SEED_SESSION, TTL)
    _label(benchmark, f"cluster get_many {MANY}", topology)
    found = benchmark(store.get_many, keys)
    assert len(found) == MANY and all(written_by_set(session, SEED_SESSION) for session in found.values())
