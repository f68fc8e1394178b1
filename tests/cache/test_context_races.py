"""ContextCache regressions from the second review, each against a real redis-server (and real threads).

What is proved, each a failure the library used to show:
1. get_or_load of a value this cache cannot read (an unknown tag byte; a compressed value over its max_value_bytes
   written by a cache with a larger limit) runs the loader once, returns its value and writes it over the bad one
   (it used to spin for ever: LEASE answered "fresh", the read found it unreadable, and round again).
2. A delete(), or a set() whose value then expired, during another cache's load leaves the lease marked; the next
   get_or_load takes the marked lease at once (a few load_waits at most) instead of waiting out the lease.
3. A loader slower than ``lease`` does not write over a set() made after its lease ran out; with no write meanwhile
   (the value missing, or stale) it still writes its value.
4. A read that fails in any way (NOPERM from an ACL, a pipeline raising a server error, an interruption) retires its
   ticket and releases the probe: nothing is left in ``_tier._tickets``.
5. append() with the byte-count hash's ``bytes`` garbled or missing counts the list again: the stored total is the
   real sum of the stored messages and max_bytes holds.
6. ping_interval below 0.01 s is refused (5e-7 s used to pack SO_RCVTIMEO as zero: no timeout at all).
7. After an outage, reads that succeed while subscribed end the "Redis is down" window: a later listener drop plus a
   write elsewhere, while another read is in flight, does not make get() serve the pre-write copy.
Every wait is a bounded poll or a thread join with a deadlock guard; nothing asserts a duration.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

import fmredis.context_core as context_core
from fmredis import ConfigurationError, ContextCache, StoreError, StoreUnavailable, create_redis_client
from tests.cache.context_support import (
    GUARD,
    NS,
    Caches,
    decode,
    eventually,
    fragile_client,
    history_keys,
    opened,
    plain,
    resubscribed,
    settle,
    subscribe_refused,
    value_key,
)
from tests.harness.servers import RedisServer

pytestmark = pytest.mark.timeout(60)


def lease_key(key: str) -> str:
    return f"{NS}:l:{key}"


class Loader:
    """Counts its calls and returns ``result``; with ``gated``, each call signals ``started`` and then waits for
    ``go`` (a deadlock guard bounds the wait)."""

    def __init__(self, result: Any, gated: bool = False) -> None:
        self.result, self.calls = result, 0
        self.started, self.go = threading.Event(), threading.Event()
        if not gated:
            self.go.set()

    def __call__(self) -> Any:
        self.calls += 1
        self.started.set()
        assert self.go.wait(GUARD), "the test never released the loader"
        return self.result


class InThread:
    """``call()`` in a daemon thread; ``result()`` joins it (deadlock guard) and returns its value or raises."""

    def __init__(self, call: Any, name: str = "call") -> None:
        self.value: list[Any] = []
        self.error: list[BaseException] = []

        def run() -> None:
            try:
                self.value.append(call())
            except BaseException as exc:
                self.error.append(exc)

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()

    def result(self, what: str) -> Any:
        self.thread.join(GUARD)
        assert not self.thread.is_alive(), f"{what} did not return within {GUARD} s"
        if self.error:
            raise self.error[0]
        return self.value[0]


# --- 1. a value this cache cannot read ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["unknown-tag", "compressed-over-limit"])
def test_get_or_load_over_an_unreadable_value_loads_once_and_overwrites_it(
    bad: str, caches: Caches, raw: redis.Redis
) -> None:
    if bad == "unknown-tag":
        raw.set(value_key("k"), b"\x07garbage", px=60_000)
        reader = caches.make()
    else:
        caches.make().set("k", {"blob": "x" * 300_000})  # default limit 16 MiB: stored compressed, ~300 KB as JSON
        stored = raw.get(value_key("k"))
        assert stored is not None and stored[:1] == b"\x01" and len(stored) < 100_000
        reader = caches.make(max_value_bytes=100_000)
    assert reader.get("k") is None and reader.stats()["unreadable"] == 1  # the premise: unreadable here
    loader = Loader({"fresh": 1})
    call = InThread(lambda: reader.get_or_load("k", loader))
    try:
        assert call.result("get_or_load over an unreadable value") == {"fresh": 1}
    finally:
        if call.thread.is_alive():  # stop a spinning caller: a readable value ends its loop
            raw.set(value_key("k"), plain({"unstick": True}))
    assert loader.calls == 1
    stored = raw.get(value_key("k"))
    assert stored is not None and decode(stored) == {"fresh": 1}, "the unreadable value was not overwritten"
    assert not raw.exists(lease_key("k"))
    assert reader.get("k") == {"fresh": 1}


# --- 2. a lease marked by a delete (or an expired set) during a load ------------------------------------------------


@pytest.mark.parametrize("write", ["delete", "set-then-expiry"])
def test_a_lease_marked_during_a_load_does_not_hold_up_the_next_load(
    write: str, caches: Caches, raw: redis.Redis
) -> None:
    """With lease=5 a waiter for the marker used to poll until the marker expired (~20 load_waits)."""
    a, b = caches.make(lease=5), caches.make(lease=5)
    first = Loader({"by": "a"}, gated=True)
    load = InThread(lambda: a.get_or_load("k", first))
    assert first.started.wait(GUARD)
    assert raw.get(lease_key("k")) not in (None, b"")  # a's token
    if write == "delete":
        assert b.delete("k") is False
    else:
        b.set("k", {"by": "b.set"}, ttl=1)
    assert raw.get(lease_key("k")) == b"", "the write did not mark the lease"
    first.go.set()
    assert load.result("a's load") == {"by": "a"}
    assert raw.get(value_key("k")) in (None, plain({"by": "b.set"})), "a's load wrote over the newer write"
    eventually(lambda: not raw.exists(value_key("k")), "the set value to expire")
    assert raw.get(lease_key("k")) == b"" and raw.pttl(lease_key("k")) > 0  # the premise: the marker is still there
    waits, second = b.stats()["load_waits"], Loader({"by": "b"})
    assert b.get_or_load("k", second) == {"by": "b"}
    assert b.stats()["load_waits"] - waits <= 3, "get_or_load waited for the marker's lease to run out"
    assert second.calls == 1
    stored = raw.get(value_key("k"))
    assert stored is not None and decode(stored) == {"by": "b"}
    assert not raw.exists(lease_key("k"))


# --- 3. a loader slower than its lease ------------------------------------------------------------------------------


@pytest.mark.parametrize("before", ["missing", "stale"])
@pytest.mark.parametrize("set_meanwhile", [True, False], ids=["set-after-lease", "no-write"])
def test_a_loader_slower_than_its_lease_never_undoes_a_newer_set(
    before: str, set_meanwhile: bool, caches: Caches, raw: redis.Redis
) -> None:
    """lease=0.5; the loader returns only once its lease has run out in Redis (a poll, not a sleep)."""
    stale_ttl = 60 if before == "stale" else 0
    a, b = caches.make(lease=0.5, stale_ttl=stale_ttl), caches.make(lease=0.5, stale_ttl=stale_ttl)
    if before == "stale":
        b.set("k", {"v": "previous"}, ttl=1)  # lives 61 s in Redis, stale after 1 s
        eventually(lambda: 0 < raw.pttl(value_key("k")) <= stale_ttl * 1000, "the value to turn stale")
    loader = Loader({"v": "loaded before the set"}, gated=True)
    load = InThread(lambda: a.get_or_load("k", loader))
    assert loader.started.wait(GUARD)
    eventually(lambda: not raw.exists(lease_key("k")), "the loader's lease to run out")
    if set_meanwhile:
        b.set("k", {"v": "set after the lease ran out"})
    loader.go.set()
    assert load.result("the slow load") == {"v": "loaded before the set"}
    expected = {"v": "set after the lease ran out"} if set_meanwhile else {"v": "loaded before the set"}
    stored = raw.get(value_key("k"))
    assert stored is not None and decode(stored) == expected
    assert b.get("k") == expected and a.get("k") == expected
    assert loader.calls == 1 and not raw.exists(lease_key("k"))


# --- 4. tickets and the probe after failed reads --------------------------------------------------------------------


def assert_no_leak(cache: ContextCache) -> None:
    assert cache._tier._tickets == {}, "a failed read left its ticket behind"
    assert not cache._probe.locked(), "a failed read kept the probe"


@pytest.mark.fault
def test_reads_refused_by_an_acl_leave_no_ticket(redis_url: str, raw: redis.Redis) -> None:
    """A user without GET and LRANGE: every read raises StoreError (not StoreUnavailable), subscribed or not."""
    raw.execute_command("ACL", "SETUSER", "ctx-noread", "on", ">pw", "~*", "&*", "+@all", "-get", "-lrange")
    try:
        url = redis_url.replace("redis://", "redis://ctx-noread:pw@")
        with opened(create_redis_client(url=url, environ={})) as cache:
            loader = Loader({"never": "stored"})
            for _ in range(2):  # subscribed, then (after close) unsubscribed: the reads that take the probe
                reads = (lambda: cache.get("k"), lambda: cache.history("c"), lambda: cache.get_or_load("k", loader))
                for read in reads:
                    for _ in range(20):
                        with pytest.raises(StoreError) as refused:
                            read()
                        assert not isinstance(refused.value, StoreUnavailable)
                        assert "NOPERM" in str(refused.value)
                assert_no_leak(cache)
                cache.close()
            assert loader.calls == 0 and not raw.exists(value_key("k"))
    finally:
        raw.execute_command("ACL", "DELUSER", "ctx-noread")


@pytest.mark.fault
@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (redis.ResponseError("ERR injected"), StoreError),
        (redis.ConnectionError("injected"), StoreUnavailable),
        (RuntimeError("injected"), RuntimeError),
        (KeyboardInterrupt(), KeyboardInterrupt),
    ],
    ids=["server-error", "connection-lost", "bug", "interrupted"],
)
def test_reads_whose_pipeline_raises_leave_no_ticket(
    error: BaseException, raised: type[BaseException], cache: ContextCache, client: redis.Redis, raw: redis.Redis
) -> None:
    raw.rpush(value_key("wrong"), b"x")  # WRONGTYPE reads as missing (unreadable), and leaves no ticket either
    raw.set(history_keys("wrong")[0], b"x")
    assert cache.get("wrong") is None and cache.history("wrong") == []
    assert_no_leak(cache)

    class Failing:
        def execute_command(self, *args: Any) -> None:
            pass

        def execute(self) -> None:
            raise error

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(client, "pipeline", lambda transaction=True: Failing())
        for _ in range(2):  # subscribed, then (after close) unsubscribed
            for read in (lambda: cache.get("k"), lambda: cache.history("c"), lambda: cache.get_or_load("k", dict)):
                for _ in range(10):
                    with pytest.raises(raised):
                        read()
            assert_no_leak(cache)
            cache.close()
    assert cache.get_or_load("k", lambda: {"after": 1}) == {"after": 1}  # the real pipeline again
    assert_no_leak(cache)


# --- 5. the history byte count garbled or lost ----------------------------------------------------------------------


@pytest.mark.parametrize("garble", ["nan", "0", "-100000", "inf", "1e400", "abc", "field-missing", "hash-missing"])
def test_append_counts_again_over_a_garbled_byte_count(garble: str, caches: Caches, raw: redis.Redis) -> None:
    """Messages of 70..110 stored bytes, max_bytes=500; after the count is garbled every append leaves the stored
    total equal to the sum of the stored messages, within the bound (a count taken as 0, -100000 or nan let the list
    grow past it; inf trimmed it to one message)."""
    cache = caches.make(compression=None)
    history, counted = history_keys("c")
    messages = ["m" * (67 + (i * 29) % 41) for i in range(12)]  # stored: tag + quotes + text = 70..110 bytes

    def check() -> None:
        stored = raw.lrange(history, 0, -1)
        real = sum(len(message) for message in stored)
        assert raw.hget(counted, "bytes") == str(real).encode(), f"byte count {raw.hget(counted, 'bytes')!r}"
        assert real <= 500 and len(stored) >= 1

    for message in messages[:6]:
        cache.append("c", message, max_bytes=500)
    check()
    if garble == "hash-missing":
        raw.delete(counted)
    elif garble == "field-missing":
        raw.hdel(counted, "bytes")
    else:
        raw.hset(counted, "bytes", garble)
    for message in messages[6:]:
        kept = cache.append("c", message, max_bytes=500)
        assert kept == raw.llen(history)
        check()
    assert list(cache.history("c")) == [decode(stored) for stored in raw.lrange(history, 0, -1)]


# --- 6. ping_interval too small for SO_RCVTIMEO ---------------------------------------------------------------------


def listeners() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == "fmredis-cache-invalidations")


@pytest.mark.parametrize("ping_interval", [5e-7, 0.009])
def test_a_ping_interval_under_10_ms_is_refused(ping_interval: float, client: redis.Redis, raw: redis.Redis) -> None:
    before = listeners()
    with pytest.raises(ConfigurationError, match="ping_interval"):
        ContextCache(client, ping_interval=ping_interval)
    assert listeners() == before and raw.dbsize() == 0
    with contextlib.closing(ContextCache(client, namespace="edge", ping_interval=0.01)) as edge:
        eventually(lambda: edge.stats()["tracking"], "a cache with ping_interval=0.01 subscribed")


# --- 7. the "Redis is down" window after an outage ------------------------------------------------------------------


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    with RedisServer("cache-races") as server:
        yield server


@pytest.mark.fault
def test_a_listener_drop_after_an_outage_serves_no_pre_write_copy(
    own_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failed read of an outage opens the window (_DOWN, widened here to 60 s so that no step races it) in which,
    while the listener is unsubscribed and another read is in flight, reads serve local copies without asking Redis.
    Reads that succeed once the listener has resubscribed must close it: then the listener is dropped (CLIENT KILL
    TYPE pubsub, SUBSCRIBE refused by an ACL so that it stays down), a raw write changes the key, and a read is held
    in flight (its pipeline gated): get() must return the new value, not the copy from before the drop."""
    monkeypatch.setattr(context_core, "_DOWN", 60.0)
    admin = redis.Redis(host=own_server.address[0], port=own_server.port, protocol=2)
    with contextlib.closing(admin), opened(fragile_client(own_server.url), ping_interval=0.2) as cache:
        subscriptions = cache.stats()["subscriptions"]
        own_server.kill()
        eventually(lambda: not cache.stats()["tracking"], "the listener to notice the outage")
        with pytest.raises(StoreUnavailable):
            cache.get("missing")  # the failed read: opens the window
        own_server.start()
        eventually(lambda: resubscribed(cache, subscriptions), "the listener to resubscribe after the outage")
        cache.set("k", {"v": 1})
        assert settle(cache, lambda: cache.get("k")) == {"v": 1}  # reads succeed, served locally
        admin.acl_log_reset()
        admin.execute_command("ACL", "SETUSER", "default", "-subscribe")
        assert admin.client_kill_filter(_type="pubsub") >= 1
        eventually(lambda: not cache.stats()["tracking"], "the listener to notice the kill")
        eventually(lambda: subscribe_refused(admin), "the listener's SUBSCRIBE refused")
        admin.set(value_key("k"), plain({"v": 2}))

        gate, entered, real = threading.Event(), threading.Event(), cache._pipelined

        def gated(*commands: Any) -> Any:
            if threading.current_thread().name == "in-flight":
                entered.set()
                assert gate.wait(GUARD)
            return real(*commands)

        monkeypatch.setattr(cache, "_pipelined", gated)
        in_flight = InThread(lambda: cache.get("other"), name="in-flight")
        try:
            eventually(lambda: entered.is_set() and cache._probe.locked(), "a read in flight holding the probe")
            fallbacks = cache.stats()["fallback_reads"]
            assert cache.get("k") == {"v": 2}, "get() served the copy from before the write"
            assert cache.stats()["fallback_reads"] == fallbacks
        finally:
            gate.set()
        assert in_flight.result("the read in flight") is None
        admin.execute_command("ACL", "SETUSER", "default", "+subscribe")
        eventually(lambda: cache.stats()["tracking"], "the listener to resubscribe")
        assert settle(cache, lambda: cache.get("k")) == {"v": 2}
