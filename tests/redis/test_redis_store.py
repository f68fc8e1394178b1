"""What RedisSessionStore does in Redis itself: key layout, encoding, TTLs, round trips, corrupt data, failures."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import orjson
import pytest
import redis

from fmredis import (
    FallbackSessionStore,
    InvalidTTLError,
    RedisSessionStore,
    ResilientRedisSessionStore,
    StoreError,
    StoreUnavailable,
    create_redis_client,
    session_ref,
)


def commandstats(raw: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in raw.info("commandstats").items()}


def test_layout_is_prefix_plus_key_holding_orjson_with_set_ex(redis_store: RedisSessionStore, raw: redis.Redis) -> None:
    redis_store.set("abc", {"user_id": "u1"}, ttl=120)
    assert raw.type("session:abc") == b"string"
    assert orjson.loads(raw.get("session:abc"))["user_id"] == "u1"  # type: ignore[arg-type]
    assert 118 <= raw.ttl("session:abc") <= 120
    assert raw.keys("*") == [b"session:abc"]


def test_custom_prefix_and_default_ttl(client: redis.Redis, raw: redis.Redis) -> None:
    store = RedisSessionStore(client, prefix="app:s:", default_ttl=300, max_ttl=600)
    store.set("x", {})
    assert raw.exists("app:s:x") and not raw.exists("session:x")
    assert 298 <= raw.ttl("app:s:x") <= 300
    with pytest.raises(InvalidTTLError):
        store.set("y", {}, ttl=601)
    assert not raw.exists("app:s:y")


@pytest.mark.parametrize(
    "kwargs",
    [{"default_ttl": 0}, {"default_ttl": 100, "max_ttl": 50}, {"max_ttl": 0}, {"max_ttl": 1.5}, {"batch_size": 0}],
)
def test_constructor_refuses_bad_policy(client: redis.Redis, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RedisSessionStore(client, **kwargs)  # type: ignore[arg-type]


def test_ttl_of_a_key_without_expiry_is_minus_one(redis_store: RedisSessionStore, raw: redis.Redis) -> None:
    raw.set("session:forever", b"{}")
    assert redis_store.ttl("forever") == -1


def test_each_call_is_one_round_trip(redis_store: RedisSessionStore, raw: redis.Redis) -> None:
    for i in range(50):
        redis_store.set(f"s{i}", {"i": i})
    before = commandstats(raw)
    assert len(redis_store.get_many([f"s{i}" for i in range(50)])) == 50
    redis_store.get("s1")
    redis_store.extend_ttl("s1")
    after = commandstats(raw)
    assert after["mget"] - before.get("mget", 0) == 1
    assert after["get"] - before.get("get", 0) == 1
    assert after["getex"] - before.get("getex", 0) == 1  # extend_ttl reads the lifetime cap in the same command
    assert after.get("expire", 0) - before.get("expire", 0) == 0


def test_delete_many_sends_one_unlink_per_batch(client: redis.Redis, raw: redis.Redis) -> None:
    store = RedisSessionStore(client, batch_size=100)
    raw.mset({f"session:s{i}": b"{}" for i in range(250)})
    before = commandstats(raw).get("unlink", 0)
    assert store.delete_many([f"s{i}" for i in range(260)]) == 250
    assert commandstats(raw)["unlink"] - before == 3
    assert raw.dbsize() == 0


@pytest.mark.parametrize(
    "payload",
    [b"not json", b"[1, 2, 3]", b'"a string"', b"\xff\xfe\x00garbage", b"", b'{"cut": '],
    ids=["text", "array", "string", "binary", "empty", "truncated"],
)
def test_corrupt_data_reads_as_missing_with_one_warning(
    redis_store: RedisSessionStore, raw: redis.Redis, caplog: pytest.LogCaptureFixture, payload: bytes
) -> None:
    raw.set("session:bad", payload)
    with caplog.at_level(logging.DEBUG):
        assert redis_store.get("bad") is None
    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert record.levelno == logging.WARNING and record.name.startswith("fmredis")
    assert session_ref("bad") in record.getMessage() and record.session_id == session_ref("bad")
    if len(payload) > 3:
        assert payload.decode("latin-1") not in record.getMessage()
    assert raw.get("session:bad") == payload  # left as found


def test_get_many_skips_corrupt_entries_with_a_warning_each(
    redis_store: RedisSessionStore, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis_store.set("good", {"ok": True})
    raw.set("session:bad", b"{oops")
    with caplog.at_level(logging.WARNING):
        got = redis_store.get_many(["good", "bad"])
    assert list(got) == ["good"]
    assert [r.getMessage().count(session_ref("bad")) for r in caplog.records] == [1]


@pytest.mark.parametrize(
    "read",
    [
        lambda store: store.get("hash"),
        lambda store: store.exists("hash"),
        lambda store: store.ttl("hash"),
        lambda store: store.touch("hash"),
        lambda store: store.extend_ttl("hash", 600),
        lambda store: store.get("hash", refresh=True),
    ],
    ids=["get", "exists", "ttl", "touch", "extend_ttl", "refresh"],
)
def test_a_key_of_another_redis_type_reads_as_missing_to_every_read(
    redis_store: RedisSessionStore,
    raw: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    read: Callable[[RedisSessionStore], object],
) -> None:
    raw.hset("session:hash", mapping={"secret-field": "v"})
    raw.expire("session:hash", 100)
    with caplog.at_level(logging.WARNING):
        assert read(redis_store) in (None, False)  # get/ttl: None; exists/touch/extend_ttl: False
    assert len(caplog.records) == 1 and session_ref("hash") in caplog.records[0].getMessage()
    assert "secret-field" not in caplog.text
    assert raw.type("session:hash") == b"hash"  # still there: fmredis does not destroy what it cannot read
    assert 98 <= raw.ttl("session:hash") <= 100  # nor restart its expiry


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_raises_store_unavailable_with_the_cause() -> None:
    client = create_redis_client(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, retry_attempts=0, environ={}
    )
    store = RedisSessionStore(client)
    for call in (lambda: store.get("k"), lambda: store.set("k", {}), lambda: store.delete_many(["k"])):
        with pytest.raises(StoreUnavailable) as info:
            call()
        assert isinstance(info.value.__cause__, redis.ConnectionError)
        assert isinstance(info.value, ConnectionError)


def test_server_errors_raise_store_error_naming_only_the_code(redis_store: RedisSessionStore, raw: redis.Redis) -> None:
    raw.config_set("maxmemory", "1")  # every write now fails with OOM
    try:
        with pytest.raises(StoreError) as info:
            redis_store.set("k", {"token": "tok-123"})
    finally:
        raw.config_set("maxmemory", "0")
    assert str(info.value).startswith("Redis SET failed: OutOfMemoryError: OOM command not allowed")
    assert "tok-123" not in str(info.value)
    assert not isinstance(info.value, StoreUnavailable)
    cause = info.value.__cause__
    assert isinstance(cause, redis.exceptions.OutOfMemoryError)  # a scrubbed copy of redis-py's error, same class
    assert cause.__traceback__ is None and info.value.__context__ is None


def test_store_without_client_builds_one_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, raw: redis.Redis
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    store = RedisSessionStore()
    try:
        store.set("env", {"v": 1})
        assert raw.exists("session:env")
        pool = store.client.connection_pool
        assert isinstance(pool, redis.BlockingConnectionPool)
    finally:
        store.close()
    assert "RedisSessionStore(prefix='session:'" in repr(store)


def test_the_wrappers_add_no_round_trip_on_the_normal_path(redis_store: RedisSessionStore, raw: redis.Redis) -> None:
    wrapped = FallbackSessionStore(ResilientRedisSessionStore(lambda: redis_store))
    wrapped.set("k", {"v": 1})
    before = commandstats(raw)
    for _ in range(10):
        wrapped.get("k")
        wrapped.set("k", {"v": 2})
    after = commandstats(raw)
    assert {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)} == {
        "get": 10,
        "set": 10,
        "info": 1,  # commandstats itself
    }
