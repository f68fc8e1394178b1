"""Fault injection with real redis-server processes on 127.0.0.1: kill -9, SIGSTOP, and a proxy that resets or
black-holes connections. Each test bounds its own run time and stops what it starts."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from fmredis import RedisSessionStore, StoreUnavailable, create_redis_client
from fmredis.breaker import CircuitBreaker
from fmredis.fallback import FallbackSessionStore
from fmredis.resilient import ResilientRedisSessionStore
from tests.harness.proxy import TcpProxy
from tests.harness.servers import RedisServer

pytestmark = [pytest.mark.fault, pytest.mark.timeout(90)]

SOCKET_TIMEOUT = 0.5


def factory(url: str) -> Callable[[], RedisSessionStore]:
    """Stores that own their client, with short timeouts and no redis-py retry (the wrapper retries)."""

    def build() -> RedisSessionStore:
        client = create_redis_client(
            url=url,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            retry_attempts=0,
            health_check_interval=0,
            environ={},
        )
        return RedisSessionStore(client, owns_client=True)

    return build


def resilient(url: str, **kwargs: object) -> ResilientRedisSessionStore:
    options: dict[str, object] = {"attempts": 3, "backoff_base": 0.05, "backoff_cap": 0.2, "deadline": 3.0}
    options.update(kwargs)
    return ResilientRedisSessionStore(factory(url), **options)  # type: ignore[arg-type]


def raw_client(server: RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, protocol=2, socket_timeout=2)


def wait_until(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {seconds} s")
        time.sleep(0.05)


def recovered(store: FallbackSessionStore) -> bool:
    store.exists("any")  # calls are what probe the primary: there is no background thread
    return not store.degraded


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer(persistent=True) as process:
        yield process


@pytest.fixture
def volatile_server() -> Iterator[RedisServer]:
    with RedisServer(persistent=False) as process:
        yield process


# --- kill -9 under load: the fallback-wrapped store raises nothing and loses nothing --------------------------------


def test_kill_and_restart_under_threaded_load_loses_no_session(server: RedisServer) -> None:
    store = FallbackSessionStore(
        resilient(server.url, attempts=2, breaker=CircuitBreaker(failure_threshold=3, cooldown=0.3)),
        probe_interval=0.2,
    )
    stop = threading.Event()
    errors: list[BaseException] = []
    last_written: dict[str, int] = {}
    lock = threading.Lock()

    def writer(n: int) -> None:
        i = 0
        while not stop.is_set():
            key = f"t{n}-{i % 50}"
            try:
                store.set(key, {"thread": n, "i": i}, ttl=600)
                got = store.get(key)
                # None is allowed only in the window where the write reached Redis just before the kill and the
                # read fell back to memory (documented); a stale or foreign value never is.
                assert got is None or got["i"] == i, (key, got, i)
            except BaseException as exc:
                errors.append(exc)
                return
            with lock:
                last_written[key] = i
            i += 1
            time.sleep(0.002)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    server.kill()
    time.sleep(1.5)
    assert store.degraded
    server.restart()
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=20)
    assert errors == []
    wait_until(lambda: recovered(store))

    raw = raw_client(server)
    stored = dict(zip(last_written, raw.mget([f"session:{key}" for key in last_written]), strict=True))
    missing = [key for key, payload in stored.items() if payload is None]
    assert missing == []
    wrong = [key for key, payload in stored.items() if f'"i":{last_written[key]},'.encode() not in payload]  # type: ignore[operator]
    assert wrong == []
    assert all(0 < raw.ttl(f"session:{key}") <= 600 for key in list(last_written)[:50])
    assert store.last_recovery is not None and store.last_recovery["written_back"] > 0
    assert store.lost_unsynced == 0 and store.pending == 0
    raw.close()
    store.close()


@pytest.mark.parametrize("persistent", [True, False], ids=["sessions-kept", "server-restarted-empty"])
def test_outage_writes_and_deletes_are_applied_on_recovery(persistent: bool) -> None:
    with RedisServer(persistent=persistent) as server:
        raw = raw_client(server)
        store = FallbackSessionStore(resilient(server.url, attempts=1), probe_interval=0.1)
        store.set("before", {"v": 0})
        store.set("doomed", {"v": 0})
        server.kill()
        store.set("during", {"v": 1}, ttl=300)  # lands in memory
        assert store.degraded and store.get("during") == {"v": 1, "last_activity": store.get("during")["last_activity"]}  # type: ignore[index]
        assert store.delete("doomed") is False  # unknown to memory, but the delete is remembered
        server.restart()
        wait_until(lambda: recovered(store))
        assert raw.exists("session:before") == (1 if persistent else 0)
        assert not raw.exists("session:doomed")  # a delete during the outage stays deleted
        assert 290 <= raw.ttl("session:during") <= 300
        assert store.last_recovery is not None and store.last_recovery["deleted"] == 1
        raw.close()
        store.close()


def test_the_newer_session_in_redis_wins_a_conflict(server: RedisServer) -> None:
    raw = raw_client(server)
    store = FallbackSessionStore(resilient(server.url, attempts=1), probe_interval=0.1)
    server.kill()
    # stamp=False: keep these last_activity values (a stamped write would say "now", newer than anything below)
    store.set("older", {"v": "memory", "last_activity": "2026-01-01T10:00:00+00:00"}, stamp=False)
    store.set("newer", {"v": "memory", "last_activity": "2026-01-01T12:00:00+00:00"}, stamp=False)
    server.restart()
    # Another worker wrote both sessions meanwhile, at 11:00.
    for key in ("older", "newer"):
        raw.set(f"session:{key}", b'{"v":"redis","last_activity":"2026-01-01T11:00:00+00:00"}', ex=600)
    wait_until(lambda: recovered(store))
    assert store.get("older")["v"] == "redis"  # type: ignore[index]
    assert store.get("newer")["v"] == "memory"  # type: ignore[index]
    assert store.last_recovery == {
        "outage_seconds": store.last_recovery["outage_seconds"],  # type: ignore[index]
        "write_back_seconds": store.last_recovery["write_back_seconds"],  # type: ignore[index]
        "written_back": 1,
        "deleted": 0,
        "kept_newer_in_redis": 1,
        "expired_in_memory": 0,
        "gone_in_redis": 0,
        "failed": 0,
    }
    raw.close()
    store.close()


def test_a_full_memory_refuses_new_outage_writes_and_loses_none(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = FallbackSessionStore(resilient(server.url, attempts=1), probe_interval=0.1, max_entries=3)
    server.kill()
    refused = []
    with caplog.at_level(logging.WARNING, logger="fmredis"):
        for i in range(5):
            try:
                store.set(f"s{i}", {"i": i})
            except StoreUnavailable:
                refused.append(i)
    assert refused == [3, 4] and store.pending == 3 and store.lost_unsynced == 0
    assert len([r for r in caplog.records if "serving sessions from memory" in r.getMessage()]) == 1
    server.restart()
    wait_until(lambda: recovered(store))
    raw = raw_client(server)
    assert [raw.exists(f"session:s{i}") for i in range(5)] == [
        1,
        1,
        1,
        0,
        0,
    ]  # every acknowledged write, and only those
    raw.close()
    store.close()


# --- SIGSTOP: answers within a stated bound, then recovery --------------------------------------------------------


def test_a_frozen_server_gives_bounded_waits_then_fails_fast(server: RedisServer) -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown=1.0)
    store = resilient(server.url, attempts=2, deadline=2.0, breaker=breaker)
    store.set("k", {"v": 1})
    server.freeze()
    try:
        waits = []
        for _ in range(8):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                store.get("k")
            waits.append(time.monotonic() - started)
        # Bound: attempts x socket timeout + backoff (2 x 0.5 + 0.2 s), then ~0 while the breaker is open.
        assert max(waits) < 2 * SOCKET_TIMEOUT + 0.2 + 1.0  # generous margin; a hang would be unbounded
        assert breaker.state == "open"
        assert waits[-1] < SOCKET_TIMEOUT  # fails fast, without touching the socket
    finally:
        server.thaw()
    wait_until(lambda: _answers(store))
    assert store.get("k")["v"] == 1  # type: ignore[index]
    assert breaker.state == "closed"
    store.close()


def _answers(store: ResilientRedisSessionStore) -> bool:
    try:
        store.exists("k")
    except StoreUnavailable:
        return False
    return True


def test_the_fallback_keeps_answering_while_the_server_is_frozen(server: RedisServer) -> None:
    store = FallbackSessionStore(
        resilient(server.url, attempts=1, breaker=CircuitBreaker(failure_threshold=1, cooldown=0.5)),
        probe_interval=0.2,
    )
    server.freeze()
    try:
        started = time.monotonic()
        store.set("during-freeze", {"v": 1})
        assert store.get("during-freeze")["v"] == 1  # type: ignore[index]
        assert time.monotonic() - started < SOCKET_TIMEOUT + 1.0
    finally:
        server.thaw()
    wait_until(lambda: recovered(store))
    assert raw_client(server).exists("session:during-freeze")
    store.close()


# --- a proxy that resets or black-holes connections ----------------------------------------------------------------


@pytest.fixture
def proxy(server: RedisServer) -> Iterator[TcpProxy]:
    with TcpProxy(server.port) as tcp:
        yield tcp


def test_reset_connections_are_reestablished_by_the_retries(proxy: TcpProxy) -> None:
    store = resilient(
        proxy.url, attempts=50, backoff_base=0.1, backoff_cap=0.3, deadline=10.0,
        breaker=CircuitBreaker(failure_threshold=100),
    )  # fmt: skip
    store.set("k", {"v": 1})
    accepted = proxy.connections_accepted
    proxy.reset_all()  # the pooled connection dies under the store's feet
    proxy.pass_through()
    assert store.get("k")["v"] == 1  # type: ignore[index]
    proxy.reset_all()  # and now nothing connects for 0.3 s
    timer = threading.Timer(0.3, proxy.pass_through)
    timer.start()
    assert store.get("k")["v"] == 1  # type: ignore[index]
    timer.join()
    assert proxy.connections_accepted >= accepted + 2  # it reconnected each time
    assert store.breaker.state == "closed"
    store.close()


def test_a_black_hole_opens_the_breaker_and_recovery_closes_it(proxy: TcpProxy) -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooldown=0.5)
    store = resilient(proxy.url, attempts=1, rebuild_after=2, breaker=breaker)
    store.set("k", {"v": 1})
    proxy.blackhole()
    for _ in range(3):
        with pytest.raises(StoreUnavailable):
            store.get("k")
    assert breaker.state == "open"
    assert store.rebuilds >= 1  # the dead pool was replaced
    with pytest.raises(StoreUnavailable, match="failing fast"):
        store.get("k")
    proxy.pass_through()
    wait_until(lambda: _answers(store))
    assert breaker.state == "closed"
    assert store.get("k")["v"] == 1  # type: ignore[index]
    store.close()


def test_bulk_calls_on_a_broken_connection_raise_and_report_no_partial_success(
    proxy: TcpProxy, server: RedisServer
) -> None:
    store = resilient(proxy.url, attempts=2)
    keys = [f"s{i}" for i in range(20)]
    for key in keys:
        store.set(key, {"k": key})
    proxy.reset_all()
    with pytest.raises(StoreUnavailable):
        store.delete_many(keys)
    with pytest.raises(StoreUnavailable):
        store.get_many(keys)  # an outage is never an empty result
    proxy.pass_through()
    wait_until(lambda: _answers(store))
    assert raw_client(server).exists(*[f"session:{key}" for key in keys]) == 20
    assert store.delete_many(keys) == 20
    store.close()


def test_the_resilient_store_never_reports_an_outage_as_a_miss(volatile_server: RedisServer) -> None:
    store = resilient(volatile_server.url, attempts=2)
    store.set("k", {"v": 1})
    volatile_server.kill()
    for call in (lambda: store.get("k"), lambda: store.exists("k"), lambda: store.ttl("k")):
        with pytest.raises(StoreUnavailable) as info:
            call()
        assert info.value.__cause__ is not None
    store.close()
