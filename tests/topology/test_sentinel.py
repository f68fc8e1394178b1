"""Sentinel mode end to end, against real sentinels (tests/harness/sentinel.py): passwords, diagnostics, failover and
master kill under load, the bounded pool.

Layout: the tests on the shared, password-less setup (``sentinel_setup``, which they may fail over but never kill)
come first; then a module-scoped setup of this file's own with passwords on the data nodes and on the sentinels, whose
last test SIGKILLs the master. Figures (unavailability window, errors by type, lost writes) are printed and recorded as
test properties (``-rP`` shows them). The time bounds asserted here are liveness bounds, not performance figures:
benchmarks/failover.py measures those.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from fmredis import (
    RedisSessionStore,
    ResilientRedisSessionStore,
    StoreError,
    StoreUnavailable,
    create_redis_client,
    diagnostics,
)
from fmredis.client import BlockingSentinelConnectionPool, RedisClient
from tests.harness.loads import SESSION_PREFIX, WriteLoad, unreadable
from tests.harness.sentinel import SentinelSetup
from tests.harness.servers import LOOPBACK, Address, free_port, make_client

pytestmark = [pytest.mark.topology, pytest.mark.timeout(180)]

WRITERS = 4
FAILOVER_RECOVERY_BOUND = 10.0  # liveness: seconds from SENTINEL FAILOVER until the store serves the new master
KILL_RECOVERY_BOUND = 20.0  # liveness: seconds from SIGKILL of the master until the store serves the new master
REPLICATION_LAG_BOUND = 1.0  # a SIGKILL may lose what the master acknowledged this shortly before it, never more


# --- lost writes: `loads.WriteLoad` records what callers saw acknowledged, `loads.unreadable` reads them back --------


def describe_lost(lost: list[str], load: WriteLoad, fault: float) -> str:
    first, last = load.acknowledged_between(lost, fault) or (0.0, 0.0)  # `lost` is never empty here
    return (
        f"{len(lost)} of {len(load.acked)} acknowledged writes are not readable; they were acknowledged between "
        f"{first:+.3f} s and {last:+.3f} s from the fault (e.g. {sorted(lost)[:3]})"
    )


def _close(client: RedisClient) -> None:
    client.close()
    client.connection_pool.disconnect()


# --- the shared setup (no passwords): failover under load, the pool bound --------------------------------------------


@pytest.fixture
def own_client(sentinels: tuple[list[Address], str]) -> Iterator[RedisClient]:
    """A fresh client on the shared setup (default settings), closed after the test."""
    addresses, name = sentinels
    client = create_redis_client(mode="sentinel", sentinels=addresses, sentinel_master=name, environ={})
    yield client
    _close(client)


@pytest.fixture
def failover_hygiene(sentinel_client: RedisClient) -> Iterator[None]:
    """For tests that fail the shared setup over: afterwards, drop the session client's pooled connections, so that
    later tests using it do not start on connections to the demoted master (see
    test_bare_store_follows_a_failover_without_an_error)."""
    yield
    sentinel_client.connection_pool.disconnect()


@pytest.mark.usefixtures("failover_hygiene")
def test_failover_under_load_through_resilient(
    sentinel_setup: SentinelSetup, own_client: RedisClient, record_property: pytest.RecordProperty
) -> None:
    """4 writers through ResilientRedisSessionStore (default deadline 5 s) during SENTINEL FAILOVER: no caller sees
    an error and the store serves the new master within the bound.

    Sentinel's failover is not coordinated with the clients: between the replica's promotion and the old master's
    demotion (about a second here), pooled connections keep writing to the old master, which acknowledges and later
    drops those writes (Redis replication is asynchronous; README "Sentinel: a failover window"). What must hold:
    no write acknowledged after the switch completed is lost."""
    store = ResilientRedisSessionStore(lambda: RedisSessionStore(own_client))
    old = sentinel_setup.master_address()
    with WriteLoad(store, threads=WRITERS) as load:
        load.wait_for_writes(50)
        fault = time.monotonic()
        failover_seconds = sentinel_setup.failover()
        switched = time.monotonic()  # the new master is reported by every sentinel, and the old one demoted
        serving = load.wait_for_success_after(switched, fault + FAILOVER_RECOVERY_BOUND)
        time.sleep(0.2)
    new = sentinel_setup.master_address()
    lost = unreadable(new, load.acked)
    first = load.first_success_started_after(fault)
    figures = {
        "failover_seconds": round(failover_seconds, 3),
        "first_success_after_fault_s": None if first is None else round(first - fault, 3),
        "serving_new_master_after_s": None if serving is None else round(serving - fault, 3),
        "longest_gap_between_successful_writes_s": round(load.longest_gap(fault), 3),
        "errors_seen_by_callers": load.error_summary(),
        "acknowledged_writes": len(load.acked),
        "lost_writes": len(lost),
        "rebuilds": store.rebuilds,
    }
    record_property("sentinel_failover_under_load", figures)
    print(f"SENTINEL FAILOVER under load through Resilient: {figures}")

    assert new != old
    problems = []
    if load.errors:
        problems.append(f"callers saw errors through the Resilient wrapper: {load.error_summary()}: {load.errors[0]}")
    if serving is None:
        problems.append(f"no write started after the switch succeeded within {FAILOVER_RECOVERY_BOUND} s")
    if figures["longest_gap_between_successful_writes_s"] > FAILOVER_RECOVERY_BOUND:
        problems.append(f"no write succeeded for {figures['longest_gap_between_successful_writes_s']} s")
    late = [key for key in lost if load.acked[key][1] > switched]
    if late:
        problems.append(
            describe_lost(late, load, fault) + f"; the switch completed {switched - fault:.3f} s from the fault, "
            "so these were acknowledged by the new master and then lost"
        )
    # A read right after a write the old master acknowledged in the failover window may miss it: once one caller's
    # command meets the demoted master, the store's shared connection moves every caller to the new one, which never
    # got that write (one of the window's lost writes, tolerated above). A miss of a write acknowledged after the
    # switch is a real failure.
    missed = [text for text, acked in zip(load.mismatches, load.missed_acks, strict=True) if acked > switched]
    if missed:
        problems.append(
            f"{len(missed)} reads right after a write acknowledged after the switch missed it: {missed[:3]}"
        )
    assert not problems, "\n".join(problems)


@pytest.mark.usefixtures("failover_hygiene")
def test_bare_store_follows_a_failover_without_an_error(sentinel_setup: SentinelSetup, own_client: RedisClient) -> None:
    """The client's own retry (retry_attempts=1: reconnect and send again) should carry a plain RedisSessionStore over
    a planned failover: a pooled connection to the demoted master gets READONLY, which redis-py's Sentinel connection
    turns into a ConnectionError "The previous master is now a slave" and disconnects; the retry must then connect to
    the master the sentinels name now."""
    store = RedisSessionStore(own_client)
    store.set("before", {"n": 1})  # leaves one pooled connection to the current master
    old = sentinel_setup.master_address()
    sentinel_setup.failover()
    assert sentinel_setup.master_address() != old
    try:
        store.set("after", {"n": 2})
    except StoreUnavailable as exc:
        connection = own_client.connection_pool.get_connection()
        try:
            where = f"{connection.host}:{connection.port}"
        finally:
            own_client.connection_pool.release(connection)
        pytest.fail(
            f"the first write after the failover failed: {exc}. (The retry reconnects to the old address: redis-py "
            f"8.1's send_packed_command() reconnects through connect_check_health(), which skips "
            f"SentinelManagedConnection.connect() and so never asks the sentinels; the next call connects to {where}.)"
        )
    assert (store.get("after") or {}).get("n") == 2


def test_unreachable_sentinel_does_not_stall_the_first_call(sentinels: tuple[list[Address], str]) -> None:
    """A sentinel that refuses connections (first in the list) should cost about fmredis' retry_attempts x backoff, not
    redis-py's default retry of the sentinel clients (10 retries with backoff up to 1 s)."""
    addresses, name = sentinels
    dead = free_port()
    client = create_redis_client(
        mode="sentinel",
        sentinels=[(LOOPBACK, dead), *addresses],
        sentinel_master=name,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        environ={},
    )
    try:
        started = time.monotonic()
        RedisSessionStore(client).set("k", {"n": 1})
        elapsed = time.monotonic() - started
    finally:
        _close(client)
    print(f"first call with an unreachable sentinel listed first: {elapsed:.2f} s")
    assert elapsed < 1.5, (
        f"the first call took {elapsed:.2f} s: the sentinel clients retry a refused connection with redis-py's default "
        "Retry (10 retries), not with the client's retry settings"
    )


def test_pool_bound_makes_extra_threads_wait(sentinels: tuple[list[Address], str]) -> None:
    """max_connections=2 and 8 threads: the 6 beyond the bound wait for a connection (none fails), and the master never
    sees more than 2 connections from this client."""
    addresses, name = sentinels
    client = create_redis_client(
        mode="sentinel",
        sentinels=addresses,
        sentinel_master=name,
        max_connections=2,
        pool_timeout=30.0,
        environ={},
    )
    pool = client.connection_pool
    assert isinstance(pool, BlockingSentinelConnectionPool)
    store = RedisSessionStore(client)
    errors: list[BaseException] = []
    done = collections.Counter[int]()
    start = threading.Barrier(9)

    def worker(n: int) -> None:
        start.wait()
        try:
            for i in range(40):
                store.set(f"t{n}-{i}", {"n": n, "i": i})
                found = store.get(f"t{n}-{i}")
                assert found is not None
                assert (found["n"], found["i"]) == (n, i)
                done[n] += 1
        except BaseException as exc:
            errors.append(exc)

    held = [pool.get_connection(), pool.get_connection()]  # every connection taken: the workers must wait
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    try:
        for thread in threads:
            thread.start()
        start.wait()
        time.sleep(0.3)
        assert sum(done.values()) == 0, "a worker got through while both connections were held"
    finally:
        for connection in held:
            pool.release(connection)
    for thread in threads:
        thread.join(60)
    try:
        assert errors == []
        assert dict(done) == dict.fromkeys(range(8), 40)
        assert len(pool._connections) <= 2  # every connection the pool ever created
    finally:
        _close(client)


def test_pool_timeout_is_honoured(sentinels: tuple[list[Address], str]) -> None:
    """max_connections=1 held elsewhere: a call waits about pool_timeout, then raises StoreUnavailable."""
    addresses, name = sentinels
    client = create_redis_client(
        mode="sentinel", sentinels=addresses, sentinel_master=name, max_connections=1, pool_timeout=0.5, environ={}
    )
    store = RedisSessionStore(client)
    outcome: dict[str, Any] = {}

    def call() -> None:
        started = time.monotonic()
        try:
            store.get("k")
        except BaseException as exc:
            outcome["error"] = exc
        outcome["waited"] = time.monotonic() - started

    held = client.connection_pool.get_connection()
    try:
        thread = threading.Thread(target=call)
        thread.start()
        thread.join(30)
    finally:
        client.connection_pool.release(held)
    try:
        assert isinstance(outcome.get("error"), StoreUnavailable), outcome
        assert 0.4 <= outcome["waited"] < 5.0, outcome
        assert store.get("k") is None  # the connection is back: calls go through again
    finally:
        _close(client)


# --- an own setup with passwords on the data nodes and on the sentinels; its last test kills the master -------------

DATA_PASSWORD = "data-Secret-4711"
SENTINEL_PASSWORD = "sentinel-Secret-0815"
MASTER_NAME = "fmsecured"


@pytest.fixture(scope="module")
def secured_setup() -> Iterator[SentinelSetup]:
    with SentinelSetup(MASTER_NAME, password=DATA_PASSWORD, sentinel_password=SENTINEL_PASSWORD) as setup:
        yield setup


def sentinel_url(
    setup: SentinelSetup, *, password: str = DATA_PASSWORD, sentinel_password: str = SENTINEL_PASSWORD
) -> str:
    hosts = ",".join(f"{host}:{port}" for host, port in setup.sentinels)
    return (
        f"redis+sentinel://:{quote(password, safe='')}@{hosts}/{setup.master_name}/0"
        f"?sentinel_password={quote(sentinel_password, safe='')}"
    )


@pytest.fixture
def secured_client(secured_setup: SentinelSetup) -> Iterator[RedisClient]:
    secured_setup.wait_ready()
    client = create_redis_client(url=sentinel_url(secured_setup), environ={})
    yield client
    _close(client)


def test_store_works_with_both_passwords(secured_setup: SentinelSetup, secured_client: RedisClient) -> None:
    store = RedisSessionStore(secured_client)
    store.set("s1", {"user": "ada"})
    assert (store.get("s1") or {}).get("user") == "ada"
    session_id = store.create("ada", {"cart": [1]})
    assert store.update(session_id, lambda s: {**s, "cart": [1, 2]})["cart"] == [1, 2]
    assert store.sessions_for_user("ada") == [session_id]
    with make_client(secured_setup.master_address(), password=DATA_PASSWORD) as master:
        # written on the master the sentinels name
        assert master.exists(SESSION_PREFIX + "s1", SESSION_PREFIX + session_id) == 2
    assert store.delete("s1") is True


@pytest.mark.parametrize("wrong", ["sentinel_password", "password"])
def test_wrong_password_is_a_clear_configuration_error(secured_setup: SentinelSetup, wrong: str) -> None:
    """A refused login (to the sentinels or to the master) is a configuration problem: StoreError, not
    StoreUnavailable (which the Resilient wrapper retries and the Fallback store falls back on), saying the login was
    refused, and never quoting a password."""
    bad = "Wrong-Passw0rd-xyz"
    client = create_redis_client(
        url=sentinel_url(secured_setup, **{wrong: bad}), socket_timeout=1.0, socket_connect_timeout=1.0, environ={}
    )
    started = time.monotonic()
    try:
        with pytest.raises(StoreError) as caught:
            RedisSessionStore(client).get("k")
    finally:
        _close(client)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    for secret in (bad, DATA_PASSWORD, SENTINEL_PASSWORD):
        assert secret not in message
        assert secret not in str(caught.value.__cause__)
    assert "AuthenticationError" in message
    assert not isinstance(caught.value, StoreUnavailable), (
        f"a refused login to the {'sentinels' if wrong == 'sentinel_password' else 'master'} surfaced as "
        f"StoreUnavailable after {elapsed:.1f} s (a {len(message)}-character message starting "
        f"{message[:110]!r}): an outage to retry and fall back on, not a configuration error"
    )


def test_diagnostics_reports_the_sentinel_topology(secured_setup: SentinelSetup, secured_client: RedisClient) -> None:
    report = diagnostics(secured_client)
    host, port = secured_setup.master_address()
    assert report["mode"] == "sentinel"
    assert report["topology"]["service"] == MASTER_NAME
    assert report["topology"]["master"] == f"{host}:{port}"
    assert report["pool"]["address"] == f"{host}:{port}"
    assert sorted(report["topology"]["sentinels"]) == sorted(f"{h}:{p}" for h, p in secured_setup.sentinels)
    assert report["tls"] is False
    assert report["pool"]["tls"] is False
    assert report["pool"]["class"] == "BlockingSentinelConnectionPool"
    text = json.dumps(report, default=str)
    assert DATA_PASSWORD not in text
    assert SENTINEL_PASSWORD not in text


def test_master_kill_under_load_through_resilient(
    secured_setup: SentinelSetup, secured_client: RedisClient, record_property: pytest.RecordProperty
) -> None:
    """Destructive, last: SIGKILL of the master under 4 writers through ResilientRedisSessionStore.

    Callers DO see errors, all StoreUnavailable: the wrapper's 3 attempts end within a fraction of a second, long
    before the sentinels have elected a new master (down-after 1 s, then the election), and after 5 failures in a row
    the breaker fails fast for its 5 s cool-down. The store serves the new master within the bound; a write may be lost
    only if the dead master acknowledged it within the replication lag before the kill.
    """
    store = ResilientRedisSessionStore(lambda: RedisSessionStore(secured_client))
    with WriteLoad(store, threads=WRITERS) as load:
        load.wait_for_writes(50)
        old = secured_setup.kill_master()
        fault = time.monotonic()  # the process is reaped: nothing acknowledged from here on comes from it
        new = secured_setup.wait_for_new_master(old, fault + KILL_RECOVERY_BOUND)
        elected = time.monotonic()
        serving = load.wait_for_success_after(elected, fault + KILL_RECOVERY_BOUND)
        time.sleep(0.2)
    lost = unreadable(new, load.acked, password=DATA_PASSWORD)
    errors_during = [when for when, _kind, _message in load.errors if when >= fault]
    figures = {
        "new_master_after_s": round(elected - fault, 3),
        "serving_new_master_after_s": None if serving is None else round(serving - fault, 3),
        "longest_gap_between_successful_writes_s": round(load.longest_gap(fault), 3),
        "errors_seen_by_callers": load.error_summary(),
        "errors_from_to_s": [round(min(errors_during) - fault, 3), round(max(errors_during) - fault, 3)]
        if errors_during
        else None,
        "acknowledged_writes": len(load.acked),
        "lost_writes": len(lost),
        "rebuilds": store.rebuilds,
    }
    record_property("sentinel_master_kill_under_load", figures)
    print(f"SIGKILL of the master under load through Resilient: {figures}")

    assert new != old
    assert serving is not None, f"no write started after the election succeeded within {KILL_RECOVERY_BOUND} s"
    assert {kind for _when, kind, _message in load.errors} <= {"StoreUnavailable"}, load.error_summary()
    assert not load.mismatches, load.mismatches[:3]
    too_late = [key for key in lost if load.acked[key][1] < fault - REPLICATION_LAG_BOUND or load.acked[key][1] > fault]
    assert not too_late, describe_lost(too_late, load, fault)
