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
from tests.fakes import FakeClock, ReplyLost
from tests.harness.options import store_options

# The topology fixtures (cluster, sentinel, TLS and the stores on them) live with the harness.
pytest_plugins = ["tests.harness.fixtures"]

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
def redis_store(client: redis.Redis, request: pytest.FixtureRequest) -> RedisSessionStore:
    return RedisSessionStore(client, **store_options(request))


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
def memory_store(request: pytest.FixtureRequest) -> InMemorySessionStore:
    return InMemorySessionStore(**store_options(request))


@pytest.fixture
def resilient_store(redis_store: RedisSessionStore) -> ResilientRedisSessionStore:
    return ResilientRedisSessionStore(redis_store)


@pytest.fixture
def fallback_store(redis_store: RedisSessionStore) -> FallbackSessionStore:
    return FallbackSessionStore(ResilientRedisSessionStore(redis_store))


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> ISessionStore:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


@pytest.fixture
def clock() -> FakeClock:
    """A fake monotonic clock for the ``clock=`` of the store or wrapper under test (tests/fakes.py)."""
    return FakeClock()


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


@pytest.fixture
def reply_lost(monkeypatch: pytest.MonkeyPatch) -> ReplyLost:
    """Arm it to make the next reply of a command be read and then reported lost (see tests/fakes.py)."""
    return ReplyLost(monkeypatch)


@pytest.fixture
def clients() -> Iterator[list[redis.Redis]]:
    """Collects the plain or cluster redis-py clients a test creates, and closes them all afterwards."""
    made: list[redis.Redis] = []
    yield made
    for client in made:
        client.close()
        pool = getattr(client, "connection_pool", None)  # a cluster client has one per node, closed with it
        if pool is not None:
            pool.disconnect()
