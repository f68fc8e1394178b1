"""Tests of the server-process helper (tests/harness/servers.py) and the fault-injecting proxy (tests/harness/proxy.py),
driven with plain redis-py."""

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

from tests.harness.proxy import TcpProxy
from tests.harness.servers import LOOPBACK, RedisServer, TopologyError, free_ports, gone

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
def server() -> Iterator[RedisServer]:
    with RedisServer() as proc:
        yield proc


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[TcpProxy]:
    with TcpProxy(server.port) as made:
        yield made


@pytest.mark.parametrize(("persistent", "expected"), [(False, None), (True, b"v")])
def test_kill_and_restart_on_same_port(persistent: bool, expected: bytes | None, clients: list[redis.Redis]) -> None:
    with RedisServer(persistent=persistent) as server:
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
        pids = server.pids
    assert pids == [pid, pids[1]]  # every process started is recorded ...
    assert all(gone(pid) for pid in pids)  # ... and none is left running


def test_restart_while_running_replaces_the_process(server: RedisServer, clients: list[redis.Redis]) -> None:
    client = make_client(server.port)
    clients.append(client)
    pid = server.pid
    server.restart()
    assert server.pid != pid
    assert client.ping()


def test_freeze_times_out_and_thaw_recovers(server: RedisServer, clients: list[redis.Redis]) -> None:
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
    server = RedisServer().start()
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
        with RedisServer(port=port, start_timeout=5.0) as server:
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
        server = RedisServer("busy", blocker.getsockname()[1], start_timeout=1.0)
        try:
            with pytest.raises(TopologyError, match=r"(?s)did not answer.*Address already in use"):
                server.start()
            assert not server.running
            assert len(server.pids) > 1  # retried while the port was busy
            assert all(gone(pid) for pid in server.pids)
        finally:
            server.close()


def test_another_redis_server_on_the_port_is_never_taken_for_ours() -> None:
    """The foreign server answers PING and INFO on the port all along: only its pid tells it apart."""
    with RedisServer("first") as first:
        second = RedisServer("second", first.port, start_timeout=1.0)
        try:
            with pytest.raises(TopologyError, match="Address already in use"):
                second.start()
            assert not second.running and second.pid is None
            assert second.pids and first.pid not in second.pids
        finally:
            second.close()
        assert first.running


def test_a_bad_config_fails_fast_with_its_log() -> None:
    server = RedisServer("bad", config=[("no-such-directive", "x")], start_timeout=10)
    started = time.monotonic()
    with pytest.raises(TopologyError, match="no-such-directive"):
        server.start()
    assert time.monotonic() - started < 5  # not retried: only "Address already in use" is
    assert len(server.pids) == 1 and gone(server.pids[0])
    server.close()
    assert not os.path.exists(server.directory)


def test_free_ports_are_distinct() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20


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


def test_proxy_close_is_prompt_and_idempotent(server: RedisServer, clients: list[redis.Redis]) -> None:
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
    server: RedisServer, proxy: TcpProxy, clients: list[redis.Redis]
) -> None:
    client = make_client(proxy.port)
    clients.append(client)
    server.kill()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    server.restart()
    assert client.ping()
