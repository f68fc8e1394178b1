"""Tests of the fault-injection helpers in tests/faults.py, driven with plain redis-py."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.harness.faults import LOOPBACK, RedisProcess, TcpProxy

SOCKET_TIMEOUT = 0.3

pytestmark = pytest.mark.timeout(30)


def make_client(port: int) -> redis.Redis:
    """No retries, so each failure surfaces on the first attempt and timings are one socket timeout."""
    return redis.Redis(
        host=LOOPBACK,
        port=port,
        protocol=2,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )


@pytest.fixture
def server() -> Iterator[RedisProcess]:
    with RedisProcess() as proc:
        yield proc


@pytest.fixture
def proxy(server: RedisProcess) -> Iterator[TcpProxy]:
    with TcpProxy(server.port) as made:
        yield made


@pytest.fixture
def clients() -> Iterator[list[redis.Redis]]:
    """Collects clients a test creates and closes them all afterwards."""
    made: list[redis.Redis] = []
    yield made
    for client in made:
        client.close()
        client.connection_pool.disconnect()


@pytest.mark.parametrize(("persistent", "expected"), [(False, None), (True, b"v")])
def test_kill_and_restart_on_same_port(persistent: bool, expected: bytes | None, clients: list[redis.Redis]) -> None:
    with RedisProcess(persistent=persistent) as server:
        port, pid = server.port, server.pid
        client = make_client(port)
        clients.append(client)
        assert client.set("k", "v")

        server.kill()
        assert not server.running
        with pytest.raises(redis.ConnectionError):
            client.ping()

        server.restart()
        assert server.port == port
        assert server.pid not in (None, pid)
        assert client.get("k") == expected


def test_restart_while_running_replaces_the_process(server: RedisProcess, clients: list[redis.Redis]) -> None:
    client = make_client(server.port)
    clients.append(client)
    pid = server.pid
    server.restart()
    assert server.pid != pid
    assert client.ping()


def test_freeze_times_out_and_thaw_recovers(server: RedisProcess, clients: list[redis.Redis]) -> None:
    client = make_client(server.port)
    clients.append(client)
    assert client.ping()

    server.freeze()
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        client.ping()
    assert time.monotonic() - started < 1.0

    server.thaw()
    assert client.ping()


def test_stop_is_idempotent_and_close_removes_the_directory() -> None:
    server = RedisProcess().start()
    server.freeze()  # stop() must also end a frozen server
    server.stop()
    server.stop()
    assert not server.running
    assert os.path.isdir(server.directory)
    assert os.path.getsize(server.log_path) > 0
    server.close()
    server.close()
    assert not os.path.exists(server.directory)


def test_start_waits_for_a_busy_port_to_free_up(clients: list[redis.Redis]) -> None:
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind((LOOPBACK, 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    release = threading.Timer(0.5, blocker.close)
    release.start()
    try:
        with RedisProcess(port, start_timeout=5.0) as server:
            clients.append(make_client(server.port))
            assert clients[0].ping()
    finally:
        release.cancel()
        release.join()
        blocker.close()


def test_start_gives_up_on_a_port_that_stays_busy() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind((LOOPBACK, 0))
        blocker.listen(1)
        server = RedisProcess(blocker.getsockname()[1], start_timeout=0.5)
        try:
            with pytest.raises(RuntimeError, match="did not answer"):
                server.start()
            assert not server.running
        finally:
            server.close()


def test_proxy_passes_traffic_through(proxy: TcpProxy, clients: list[redis.Redis]) -> None:
    client = make_client(proxy.port)
    clients.append(client)
    assert client.set("k", "v")
    assert client.get("k") == b"v"
    assert proxy.connections_accepted == 1
    assert proxy.open_connections == 1


def test_proxy_reset_all_breaks_open_and_new_connections(proxy: TcpProxy, clients: list[redis.Redis]) -> None:
    client = make_client(proxy.port)
    clients.append(client)
    assert client.ping()

    proxy.reset_all()
    assert proxy.open_connections == 0
    with pytest.raises(redis.ConnectionError):
        client.ping()  # the pooled connection was reset
    with pytest.raises(redis.ConnectionError):
        client.ping()  # and a fresh one is reset right after accept
    assert proxy.connections_accepted >= 2

    proxy.pass_through()
    assert client.ping()


def test_proxy_blackhole_times_out_then_recovers(proxy: TcpProxy, clients: list[redis.Redis]) -> None:
    client = make_client(proxy.port)
    clients.append(client)
    assert client.set("k", "before")

    proxy.blackhole()
    for _ in range(2):  # first on the existing connection, then on a new one
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            client.set("k", "during")
        elapsed = time.monotonic() - started
        assert SOCKET_TIMEOUT * 0.9 <= elapsed < 1.0

    proxy.pass_through()
    assert client.get("k") == b"before"  # black-holed writes were dropped, not delivered late
    assert client.ping()


def test_proxy_close_is_prompt_and_idempotent(server: RedisProcess, clients: list[redis.Redis]) -> None:
    proxy = TcpProxy(server.port)
    client = make_client(proxy.port)
    clients.append(client)
    assert client.ping()
    started = time.monotonic()
    proxy.close()
    proxy.close()
    assert time.monotonic() - started < 1.0
    assert proxy.open_connections == 0
    with pytest.raises(redis.ConnectionError):
        client.ping()


def test_proxy_resets_clients_when_upstream_is_down(
    server: RedisProcess, proxy: TcpProxy, clients: list[redis.Redis]
) -> None:
    client = make_client(proxy.port)
    clients.append(client)
    server.kill()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    server.restart()
    assert client.ping()
