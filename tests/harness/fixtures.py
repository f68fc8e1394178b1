"""Fixtures for the multi-process topologies (tests/harness/cluster.py, sentinel.py, tls.py): Redis Cluster, Sentinel,
TLS, and the stores on them that the contract suites also run against. Loaded by tests/conftest.py as a plugin."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fmredis import RedisSessionStore, create_redis_client
from fmredis.client import RedisClient
from tests.harness.cluster import RedisCluster3
from tests.harness.options import store_options
from tests.harness.sentinel import SentinelSetup
from tests.harness.tls import TLSCerts, TLSRedis

# --- Topologies: Redis Cluster, Sentinel, TLS -----------------------------------------------------------------------
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
def cluster_store(
    cluster_client: RedisClient, cluster_nodes: list[tuple[str, int]], request: pytest.FixtureRequest
) -> RedisSessionStore:
    return RedisSessionStore(cluster_client, **store_options(request))


@pytest.fixture(scope="session")
def sentinel_client(sentinel_setup: SentinelSetup) -> Iterator[RedisClient]:
    client = create_redis_client(
        mode="sentinel", sentinels=sentinel_setup.sentinels, sentinel_master=sentinel_setup.master_name, environ={}
    )
    yield client
    client.close()


@pytest.fixture
def sentinel_store(
    sentinel_client: RedisClient, sentinels: tuple[list[tuple[str, int]], str], request: pytest.FixtureRequest
) -> RedisSessionStore:
    return RedisSessionStore(sentinel_client, **store_options(request))
