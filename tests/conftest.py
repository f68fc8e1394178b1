"""Shared fixtures: one throwaway redis-server on loopback for the session (pytest-redis), clients and stores on it,
and ``store``: every store the contract suites run against."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis
from pytest_redis import factories
from pytest_redis.executor import RedisExecutor

from fmredis import (
    FallbackSessionStore,
    InMemorySessionStore,
    ISessionStore,
    RedisSessionStore,
    ResilientRedisSessionStore,
    create_redis_client,
)
from fmredis.client import RedisClient
from tests.harness.topology import RedisCluster3, SentinelSetup, TLSCerts, TLSRedis

# port=None: pytest-redis picks a free port; it binds 127.0.0.1 and also opens a unix socket in a temp folder.
redis_server = factories.redis_proc(host="127.0.0.1", port=None)


@pytest.fixture
def redis_url(redis_server: RedisExecutor) -> str:
    return f"redis://{redis_server.host}:{redis_server.port}/0"


@pytest.fixture
def raw(redis_server: RedisExecutor) -> Iterator[redis.Redis]:
    """A plain redis-py client on the test server, for arranging and inspecting what the store did; flushes after."""
    client = redis.Redis(host=redis_server.host, port=redis_server.port, db=0, protocol=2)
    yield client
    client.flushall()
    client.close()


@pytest.fixture
def client(redis_url: str, raw: redis.Redis) -> Iterator[redis.Redis]:
    """An fmredis client (environment ignored, so a REDIS_* variable on the machine cannot redirect the tests)."""
    made = create_redis_client(url=redis_url, environ={})
    yield made
    made.close()
    made.connection_pool.disconnect()


@pytest.fixture
def redis_store(client: redis.Redis) -> RedisSessionStore:
    return RedisSessionStore(client)


#: The stores every contract test runs against (add new stores here). The topology stores carry their marker, so
#: ``-m "not topology"`` never starts a cluster or sentinels.
STORES = [
    "redis_store",
    "memory_store",
    "resilient_store",
    "fallback_store",
    pytest.param("cluster_store", marks=pytest.mark.topology),
    pytest.param("sentinel_store", marks=pytest.mark.topology),
]


@pytest.fixture
def memory_store() -> InMemorySessionStore:
    return InMemorySessionStore()


@pytest.fixture
def resilient_store(redis_store: RedisSessionStore) -> ResilientRedisSessionStore:
    return ResilientRedisSessionStore(lambda: redis_store)


@pytest.fixture
def fallback_store(redis_store: RedisSessionStore) -> FallbackSessionStore:
    return FallbackSessionStore(ResilientRedisSessionStore(lambda: redis_store))


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> ISessionStore:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def root_records() -> Iterator[list[logging.LogRecord]]:
    """Every record any logger emits, DEBUG included (a handler on the root logger, root set to DEBUG)."""
    root = logging.getLogger()
    handler, level = _Records(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


# --- Topologies (tests/topology.py): Redis Cluster, Sentinel, TLS -------------------------------------------------
# Session-scoped real servers on 127.0.0.1 (free ports, own temp dirs), started on first use and stopped at the end of
# the session. A test that uses them should carry the `topology` marker (registered in tox.ini), so
# `-m "not topology"` skips the slower multi-process setups.


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster3]:
    """Three cluster masters, shared by the session; use `cluster_nodes` in tests to start from empty nodes."""
    with RedisCluster3() as cluster:
        yield cluster


@pytest.fixture
def cluster_nodes(redis_cluster: RedisCluster3) -> list[tuple[str, int]]:
    """The cluster's (host, port) nodes, once the cluster is healthy and every master has been flushed."""
    redis_cluster.wait_ready()
    redis_cluster.flush()
    return redis_cluster.nodes


@pytest.fixture(scope="session")
def sentinel_setup() -> Iterator[SentinelSetup]:
    """Master + replica + three sentinels (no passwords), shared by the session; a test may call .failover() (it
    leaves the setup healthy) but must not kill processes: build an own SentinelSetup for that."""
    with SentinelSetup() as setup:
        yield setup


@pytest.fixture
def sentinels(sentinel_setup: SentinelSetup) -> tuple[list[tuple[str, int]], str]:
    """(sentinel addresses, master name), once the setup is healthy and the current master has been flushed."""
    sentinel_setup.wait_ready()
    sentinel_setup.flush()
    return sentinel_setup.sentinels, sentinel_setup.master_name


@pytest.fixture(scope="session")
def tls_certs() -> Iterator[TLSCerts]:
    """A throwaway CA with server/client certificates, plus an unrelated CA (see TLSCerts)."""
    with TLSCerts() as certs:
        yield certs


@pytest.fixture(scope="session")
def tls_server(tls_certs: TLSCerts) -> Iterator[TLSRedis]:
    """A TLS-only redis-server (tls-auth-clients optional) trusting `tls_certs`' CA, shared by the session."""
    with TLSRedis(tls_certs, tls_auth_clients="optional") as server:
        yield server


# --- The store on a cluster and through Sentinel: the contract suites run against these too --------------------------


@pytest.fixture(scope="session")
def cluster_client(redis_cluster: RedisCluster3) -> Iterator[RedisClient]:
    client = create_redis_client(mode="cluster", cluster_nodes=redis_cluster.nodes, environ={})
    yield client
    client.close()


@pytest.fixture
def cluster_store(cluster_client: RedisClient, cluster_nodes: list[tuple[str, int]]) -> RedisSessionStore:
    return RedisSessionStore(cluster_client)


@pytest.fixture(scope="session")
def sentinel_client(sentinel_setup: SentinelSetup) -> Iterator[RedisClient]:
    client = create_redis_client(
        mode="sentinel", sentinels=sentinel_setup.sentinels, sentinel_master=sentinel_setup.master_name, environ={}
    )
    yield client
    client.close()


@pytest.fixture
def sentinel_store(sentinel_client: RedisClient, sentinels: tuple[list[tuple[str, int]], str]) -> RedisSessionStore:
    return RedisSessionStore(sentinel_client)
