"""Shared fixtures: one throwaway redis-server on loopback for the session (pytest-redis), clients and stores on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from pytest_redis import factories
from pytest_redis.executor import RedisExecutor

from fmredis import RedisSessionStore, create_redis_client

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
