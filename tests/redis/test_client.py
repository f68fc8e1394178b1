"""The client factory against a real server: pool type and settings, lazy connect, hiredis, auth, fork safety."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from pytest_redis import factories
from pytest_redis.executor import RedisExecutor

from fmredis import (
    RedisSessionStore,
    StoreError,
    StoreUnavailable,
    create_redis_client,
    diagnostics,
    resolve_settings,
)

PASSWORD = "S3cr3t-test-pw"
redis_with_password = factories.redis_proc(host="127.0.0.1", port=None, password=PASSWORD)


def client_ids(raw: redis.Redis) -> set[int]:
    return {int(entry["id"]) for entry in raw.client_list()}


def test_the_pool_is_blocking_and_carries_every_setting(redis_url: str) -> None:
    client = create_redis_client(
        url=redis_url,
        max_connections=7,
        socket_timeout=2.5,
        socket_connect_timeout=1.5,
        pool_timeout=0.7,
        health_check_interval=11,
        retry_attempts=2,
        environ={},
    )
    pool = client.connection_pool
    assert isinstance(pool, redis.BlockingConnectionPool)
    assert pool.max_connections == 7 and pool.timeout == 0.7
    kwargs = pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"], kwargs["health_check_interval"]) == (
        2.5,
        1.5,
        11,
    )
    assert kwargs["socket_keepalive"] is True
    connection = pool.get_connection()
    try:
        assert connection.retry.get_retries() == 2
        assert connection.socket_timeout == 2.5
    finally:
        pool.release(connection)
    client.close()


def test_creating_a_client_does_not_connect_and_logs_at_most_one_line(
    redis_url: str, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    raw.ping()
    before = client_ids(raw)
    with caplog.at_level(logging.DEBUG):
        client = create_redis_client(url=redis_url.replace("redis://", f"redis://:{PASSWORD}@"), environ={})
        store = RedisSessionStore(client)
    assert client_ids(raw) == before
    assert len(caplog.records) <= 1
    assert PASSWORD not in caplog.text
    del store
    client.close()


def test_diagnostics_reports_the_hiredis_parser_and_versions(client: redis.Redis) -> None:
    report = diagnostics(client)
    assert report["hiredis_parser"] is True
    assert report["parser"].endswith("_HiredisParser")
    assert report["versions"]["redis-py"] == redis.__version__
    assert report["versions"]["hiredis"] and report["versions"]["orjson"]
    assert report["versions"]["redis-server"].split(".")[0].isdigit()
    assert report["pool"]["class"] == "BlockingConnectionPool"
    assert report["pool"]["max_connections"] == 20 and report["pool"]["protocol"] == 2


def test_more_threads_than_connections_wait_instead_of_failing(redis_url: str) -> None:
    client = create_redis_client(url=redis_url, max_connections=2, pool_timeout=5, environ={})
    pool = client.connection_pool
    held = [pool.get_connection(), pool.get_connection()]
    results: list[object] = []
    waiter = threading.Thread(target=lambda: results.append(client.ping()))
    waiter.start()
    time.sleep(0.3)
    assert results == []  # still waiting for a connection, not failed with "Too many connections"
    pool.release(held.pop())
    waiter.join(timeout=5)
    assert results == [True]
    pool.release(held.pop())
    client.close()


def test_an_exhausted_pool_raises_store_unavailable_after_the_pool_timeout(redis_url: str) -> None:
    client = create_redis_client(url=redis_url, max_connections=1, pool_timeout=0.2, environ={})
    held = client.connection_pool.get_connection()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        RedisSessionStore(client).get("k")
    assert time.monotonic() - started >= 0.2
    client.connection_pool.release(held)
    client.close()


def test_unix_socket_url(redis_server: RedisExecutor, raw: redis.Redis) -> None:
    client = create_redis_client(url=f"unix://{redis_server.unixsocket}?db=0", environ={})
    RedisSessionStore(client).set("via-socket", {"v": 1})
    assert raw.exists("session:via-socket")
    assert diagnostics(client)["pool"]["connection_class"] == "UnixDomainSocketConnection"
    client.close()


def test_client_name_shows_in_client_list(redis_url: str, raw: redis.Redis) -> None:
    client = create_redis_client(url=redis_url, client_name="worker-7", environ={})
    client.ping()
    assert "worker-7" in [entry["name"] for entry in raw.client_list()]
    client.close()


@pytest.fixture
def secured(redis_with_password: RedisExecutor) -> Iterator[RedisExecutor]:
    yield redis_with_password
    redis.Redis(host=redis_with_password.host, port=redis_with_password.port, password=PASSWORD).flushall()


def test_password_from_the_environment_authenticates(secured: RedisExecutor) -> None:
    environ = {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": str(secured.port), "REDIS_PASSWORD": PASSWORD}
    store = RedisSessionStore(create_redis_client(environ=environ))
    store.set("k", {"v": 1})
    assert store.get("k")["v"] == 1  # type: ignore[index]
    store.client.close()


def test_a_wrong_password_fails_without_echoing_it(secured: RedisExecutor, caplog: pytest.LogCaptureFixture) -> None:
    wrong = "Wr0ng-pw-value"
    client = create_redis_client(host="127.0.0.1", port=secured.port, password=wrong, retry_attempts=0, environ={})
    with caplog.at_level(logging.DEBUG), pytest.raises(StoreError) as info:
        RedisSessionStore(client).get("k")
    assert not isinstance(info.value, StoreUnavailable)  # a refused login is configuration, not an outage
    assert str(info.value) == (
        "Redis GET failed: AuthenticationError: WRONGPASS invalid username-password pair or user is disabled. "
        "(check username and password)"
    )
    settings = resolve_settings(host="127.0.0.1", password=wrong, environ={})
    for text in (str(info.value), repr(info.value), caplog.text, repr(settings), settings.explain(), repr(client)):
        assert wrong not in text
    client.close()


def test_a_store_created_before_fork_works_in_the_child(redis_store: RedisSessionStore, raw: redis.Redis) -> None:
    redis_store.set("parent", {"v": 1})  # the pool now holds a live connection the child must not share
    pid = os.fork()
    if pid == 0:  # child: report through the exit code only, never return into pytest
        code = 1
        try:
            redis_store.set("child", {"v": 2})
            parent, child = redis_store.get("parent") or {}, redis_store.get("child") or {}
            code = 0 if (parent.get("v"), child.get("v")) == (1, 2) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert redis_store.get("child")["v"] == 2  # type: ignore[index]
    assert redis_store.get("parent")["v"] == 1  # type: ignore[index]  # the parent's connection still works


def test_diagnostics_works_on_a_pool_of_one(redis_url: str) -> None:
    client = create_redis_client(url=redis_url, max_connections=1, pool_timeout=1, environ={})
    assert diagnostics(client)["hiredis_parser"] is True
    client.close()


def test_the_sentinel_pool_forgets_a_connection_it_does_not_own() -> None:
    """BlockingConnectionPool.release drops a connection to a non-master (demoted, or never resolved) without removing
    it from the pool's list: one leaked object per failed call during a Sentinel outage. fmredis's pool removes it."""
    client = create_redis_client(mode="sentinel", sentinels=[("127.0.0.1", 1)], sentinel_master="m", environ={})
    pool = client.connection_pool
    for _ in range(5):
        pool.pool.get_nowait()  # take a slot, as get_connection does
        connection = pool.make_connection()  # not connected: its host is not the (unknown) master's
        assert connection in pool._connections
        pool.release(connection)
        assert connection not in pool._connections
    assert pool._connections == []
    assert pool.pool.qsize() == pool.max_connections  # every slot is back
