"""ContextCache refuses bad input before anything is sent: values that are not JSON, bad keys, bad TTLs, values over
max_value_bytes, and bad constructor arguments. Each error names the problem (never the value or the key), and Redis
is checked with ``raw`` to hold nothing afterwards. Also: close() and repr."""

from __future__ import annotations

import threading
import traceback
from typing import Any

import pytest
import redis
from pytest_redis.executor import RedisExecutor

from fmredis import (
    ConfigurationError,
    ContextCache,
    InvalidKeyError,
    InvalidTTLError,
    SerializationError,
    ValueTooLarge,
)
from tests.cache.context_support import Caches, data_commands, eventually, settle

pytestmark = pytest.mark.timeout(60)

SECRET = "secret-token-QWERTY"


def full_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def listener_threads() -> int:
    return sum(thread.name == "fmredis-cache-invalidations" for thread in threading.enumerate())


# --- values, keys, TTLs ---------------------------------------------------------------------------------------------

BAD_VALUES = [
    ({SECRET: {1, 2}}, "not JSON-serializable"),
    ([SECRET, object()], "not JSON-serializable"),
    ({"token": SECRET, "raw": SECRET.encode()}, "not JSON-serializable"),
    ({"token": SECRET, "score": float("nan")}, "NaN or infinity"),
    ([SECRET, float("-inf")], "NaN or infinity"),
    ({SECRET: "x", 1: "y"}, "not JSON-serializable"),
    (None, "must not be None"),
]


VALUE_IDS = ["set", "object", "bytes", "nan", "inf", "int key", "none"]


@pytest.mark.parametrize(("value", "problem"), BAD_VALUES, ids=VALUE_IDS)
def test_a_value_that_is_not_json_is_refused_with_nothing_written(
    cache: ContextCache, raw: redis.Redis, value: Any, problem: str
) -> None:
    with pytest.raises(SerializationError, match=problem) as caught:
        cache.set("conv-1", value)
    assert "cache value" in str(caught.value) and SECRET not in full_text(caught.value)
    assert isinstance(caught.value, TypeError)
    with pytest.raises(SerializationError, match=problem):
        cache.get_or_load("conv-2", lambda: value)
    assert raw.keys("*") == []


BAD_KEYS = [
    (123, "must be a str, not int"),
    (b"conv", "must be a str, not bytes"),
    (None, "must be a str, not NoneType"),
    ("", "must not be empty"),
    ("k" * 513, "513 characters long"),
    ("bad\ud800", "lone surrogate"),
]


@pytest.mark.parametrize(("key", "problem"), BAD_KEYS, ids=["int", "bytes", "none", "empty", "long", "surrogate"])
def test_a_bad_key_is_refused_with_nothing_written(
    cache: ContextCache, raw: redis.Redis, key: Any, problem: str
) -> None:
    calls = [
        lambda: cache.set(key, {"a": 1}),
        lambda: cache.get(key),
        lambda: cache.delete(key),
        lambda: cache.get_or_load(key, lambda: {"a": 1}),
    ]
    for call in calls:
        with pytest.raises(InvalidKeyError, match=problem) as caught:
            call()
        assert str(caught.value).startswith("cache key") and isinstance(caught.value, ValueError)
        if isinstance(key, str) and len(key) > 3:
            assert key not in str(caught.value)
    assert raw.keys("*") == []


@pytest.mark.parametrize(
    ("ttl", "problem"),
    [(0, "at least 1"), (-1, "at least 1"), (1.5, "int number of seconds"), ("x", "int number of seconds"),
     (True, "int number of seconds"), (366 * 86_400 + 1, "exceeds max_ttl")],
)  # fmt: skip
def test_a_bad_ttl_is_refused_with_nothing_written(
    cache: ContextCache, raw: redis.Redis, ttl: Any, problem: str
) -> None:
    loads: list[int] = []
    with pytest.raises(InvalidTTLError, match=problem) as caught:
        cache.set("conv-1", {"a": 1}, ttl=ttl)
    assert "ttl" in str(caught.value)
    with pytest.raises(InvalidTTLError, match=problem):
        cache.get_or_load("conv-1", lambda: loads.append(1) or {"a": 1}, ttl=ttl)
    assert loads == [] and raw.keys("*") == []


def test_a_value_over_max_value_bytes_is_refused_with_nothing_written(caches: Caches, raw: redis.Redis) -> None:
    cache = caches.make(max_value_bytes=1000)
    value = {"token": SECRET, "text": "x" * 2000}
    with pytest.raises(ValueTooLarge, match=r"cache value is \d+ bytes of JSON.*max_value_bytes.*1000") as caught:
        cache.set("conv-1", value)
    assert SECRET not in full_text(caught.value) and isinstance(caught.value, ValueError)
    with pytest.raises(ValueTooLarge, match="loaded value"):
        cache.get_or_load("conv-1", lambda: value)
    assert raw.keys("*") == []  # neither the value nor the lease
    cache.set("conv-1", {"text": "x" * 900})  # just under: accepted
    assert cache.get("conv-1") == {"text": "x" * 900}


def test_a_loader_that_is_not_callable_is_refused(cache: ContextCache, raw: redis.Redis) -> None:
    with pytest.raises(TypeError, match="loader must be callable, not dict"):
        cache.get_or_load("conv-1", {"a": 1})  # type: ignore[arg-type]
    assert raw.keys("*") == []


# --- constructor arguments ------------------------------------------------------------------------------------------


class RedisCluster:
    """Looks like redis-py's cluster client to duck typing (a pool, execute_command), but is not a redis.Redis."""

    connection_pool = None

    def execute_command(self, *args: Any) -> None:
        raise AssertionError("the cache must not use a client it refused")


@pytest.mark.parametrize(
    ("options", "error", "problem"),
    [
        ({"namespace": "my ns"}, ConfigurationError, "namespace"),
        ({"namespace": "ns{x}"}, ConfigurationError, "namespace"),
        ({"namespace": "ns}"}, ConfigurationError, "namespace"),
        ({"namespace": "ns:v"}, ConfigurationError, "namespace"),  # would alias namespace "ns" with keys "v:..."
        ({"namespace": ""}, ConfigurationError, "namespace"),
        ({"namespace": 5}, ConfigurationError, "namespace"),
        ({"local_max_bytes": 0}, ValueError, "local_max_bytes"),
        ({"local_max_bytes": -1}, ValueError, "local_max_bytes"),
        ({"local_max_bytes": 1.5}, ValueError, "local_max_bytes"),
        ({"compression": "lz4"}, ConfigurationError, "compression must be 'zstd' or None"),
        ({"ttl": 0}, InvalidTTLError, "ttl"),
        ({"max_value_bytes": 0}, ValueError, "max_value_bytes"),
        ({"compress_above": -5}, ValueError, "compress_above"),
        ({"lease": 0}, ValueError, "lease"),
        ({"lease": 0.0005}, ConfigurationError, "lease must be at least 0.001 s"),  # 0 ms: Redis refuses it
        ({"stale_ttl": -1}, InvalidTTLError, "ttl"),
        ({"ping_interval": 0}, ValueError, "ping_interval"),
        ({"start_wait": "soon"}, TypeError, "start_wait"),
    ],
)
def test_bad_constructor_arguments_are_refused_before_a_listener_starts(
    client: redis.Redis, options: dict[str, Any], error: type[Exception], problem: str
) -> None:
    threads = listener_threads()
    with pytest.raises(error, match=problem):
        ContextCache(client, **options)
    assert listener_threads() == threads


def test_a_client_that_is_not_a_resp2_redis_is_refused(redis_server: RedisExecutor) -> None:
    with pytest.raises(ConfigurationError, match=r"client must be a redis-py Redis.*not RedisCluster"):
        ContextCache(RedisCluster())
    resp3 = redis.Redis(host=redis_server.host, port=redis_server.port, protocol=3)
    decoding = redis.Redis(host=redis_server.host, port=redis_server.port, decode_responses=True)
    try:
        with pytest.raises(ConfigurationError, match="RESP2"):
            ContextCache(resp3)
        with pytest.raises(ConfigurationError, match="decode_responses=False"):
            ContextCache(decoding)
    finally:
        resp3.close()
        decoding.close()


# --- close and repr -------------------------------------------------------------------------------------------------


def subscribed_clients(raw: redis.Redis) -> int:
    return sum(int(entry["sub"]) > 0 for entry in raw.client_list())


def test_close_stops_the_listener_and_reads_go_on_through_redis(caches: Caches, raw: redis.Redis) -> None:
    cache = caches.make()
    cache.set(SECRET, {"token": SECRET})
    assert settle(cache, lambda: cache.get(SECRET)) == {"token": SECRET}
    assert subscribed_clients(raw) == 1 and cache.stats()["tracking"] is True
    assert SECRET not in repr(cache) and "tracking=True" in repr(cache)
    cache.close()
    assert cache.stats()["tracking"] is False and cache.stats()["local_entries"] == 0
    eventually(lambda: subscribed_clients(raw) == 0, "the listener's connection to close")
    hits = cache.stats()["hits"]
    for _ in range(3):
        commands = data_commands(raw)
        assert cache.get(SECRET) == {"token": SECRET}
        assert data_commands(raw) > commands  # a round trip each time
    cache.set("after", [1, 2])
    assert cache.get("after") == [1, 2] and cache.stats()["hits"] == hits
    raw.set("ctx:v:after", b"\x00[3]")  # no listener, yet no stale read: nothing is served locally
    assert cache.get("after") == [3]
    assert SECRET not in repr(cache) and "tracking=False" in repr(cache)
    cache.close()  # twice is fine
    assert subscribed_clients(raw) == 0


def test_the_context_manager_closes(client: redis.Redis, raw: redis.Redis) -> None:
    with ContextCache(client, namespace="ctx") as cache:
        eventually(lambda: cache.stats()["tracking"], "the listener subscribed")
        cache.set("k", {"a": 1})
    assert cache.stats()["tracking"] is False
    eventually(lambda: subscribed_clients(raw) == 0, "the listener's connection to close")
    assert cache.get("k") == {"a": 1}
