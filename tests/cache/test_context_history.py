"""ContextCache conversation histories on a real redis-server: append order, the max_messages and max_bytes bounds
(checked on the stored bytes in Redis), refused messages, ``last``, the sliding TTL, the local copy and its
invalidation by another cache instance (a naive snapshot stays stale), delete_history, and WRONGTYPE keys.
Waits are bounded polls only; nothing asserts a duration."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from fmredis import (
    ContextCache,
    FrozenDict,
    FrozenList,
    InvalidKeyError,
    SerializationError,
    StoreError,
    ValueTooLarge,
    create_redis_client,
)
from tests.cache.context_support import Caches, data_commands, decode, eventually, history_keys, settle

pytestmark = pytest.mark.timeout(60)

SECRET = "secret-message-ZXCV"
LIST, COUNT = history_keys("conv-1")


@pytest.fixture
def cache(caches: Caches) -> ContextCache:
    return caches.make(ttl=600)


def message(n: int, size: int = 0) -> dict[str, Any]:
    return {"role": "user" if n % 2 else "assistant", "n": n, "text": "w" * size}


def stored(raw: redis.Redis) -> list[bytes]:
    return raw.lrange(LIST, 0, -1)  # type: ignore[return-value]


def counted(raw: redis.Redis) -> int:
    """The byte count the cache keeps next to the list (field ``bytes`` of a hash)."""
    return int(raw.hget(COUNT, "bytes"))  # type: ignore[arg-type]


def test_append_keeps_the_order_and_returns_how_many_are_kept(cache: ContextCache, raw: redis.Redis) -> None:
    assert cache.history("conv-1") == [] and type(cache.history("conv-1")) is FrozenList
    assert [cache.append("conv-1", message(n)) for n in range(5)] == [1, 2, 3, 4, 5]
    history = cache.history("conv-1")
    assert history == [message(n) for n in range(5)] and [decode(item) for item in stored(raw)] == history
    assert type(history) is FrozenList and all(type(m) is FrozenDict for m in history)
    assert cache.append("conv-1", "a plain string") == 6 and cache.history("conv-1")[-1] == "a plain string"
    assert cache.history("conv-2") == []  # conversations are separate


def test_max_messages_drops_the_oldest(cache: ContextCache, raw: redis.Redis) -> None:
    kept = [cache.append("conv-1", message(n), max_messages=3) for n in range(7)]
    assert kept == [1, 2, 3, 3, 3, 3, 3]
    assert cache.history("conv-1") == [message(4), message(5), message(6)]
    assert raw.llen(LIST) == 3 and counted(raw) == sum(map(len, stored(raw)))


def test_max_bytes_bounds_the_stored_bytes_dropping_only_as_many_of_the_oldest_as_needed(
    cache: ContextCache, raw: redis.Redis
) -> None:
    bound = 2_000
    appended: list[bytes] = []  # each message as stored, in append order
    for n in range(40):
        kept = cache.append("conv-1", message(n, size=(n * 137) % 700), max_bytes=bound)
        appended.append(stored(raw)[-1])
        items = stored(raw)
        assert kept == len(items) and sum(map(len, items)) <= bound
        assert items == appended[-len(items) :], "not the newest messages, in order"
        if len(items) < len(appended):  # one more of the older ones would not have fitted
            assert sum(map(len, items)) + len(appended[-len(items) - 1]) > bound
        assert counted(raw) == sum(map(len, items))
    assert len(appended) > raw.llen(LIST) > 1
    assert cache.history("conv-1") == [decode(item) for item in stored(raw)]


def test_a_single_message_over_max_bytes_is_refused_with_nothing_written(cache: ContextCache, raw: redis.Redis) -> None:
    big = {"token": SECRET, "text": "x" * 500}
    with pytest.raises(ValueTooLarge, match=r"message takes \d+ bytes stored; max_bytes is 100") as caught:
        cache.append("conv-1", big, max_bytes=100)
    assert SECRET not in str(caught.value)
    assert raw.exists(LIST, COUNT) == 0
    cache.append("conv-1", message(0), max_bytes=100)
    before = (stored(raw), raw.dump(COUNT))
    with pytest.raises(ValueTooLarge):
        cache.append("conv-1", big, max_bytes=100)
    assert (stored(raw), raw.dump(COUNT)) == before and cache.history("conv-1") == [message(0)]


@pytest.mark.parametrize(
    ("call", "error", "problem"),
    [
        (lambda c: c.append("conv-1", None), SerializationError, "must not be None"),
        (lambda c: c.append("conv-1", {"token": SECRET, "s": {1}}), SerializationError, "not JSON-serializable"),
        (lambda c: c.append("conv-1", [float("nan"), SECRET]), SerializationError, "NaN"),
        (lambda c: c.append("", {"a": 1}), InvalidKeyError, "conversation_id must not be empty"),
        (lambda c: c.append(7, {"a": 1}), InvalidKeyError, "conversation_id must be a str"),
        (lambda c: c.append("conv-1", {"a": 1}, max_messages=0), ValueError, "max_messages"),
        (lambda c: c.append("conv-1", {"a": 1}, max_bytes=-1), ValueError, "max_bytes"),
        (lambda c: c.append("conv-1", {"a": 1}, max_messages=2.0), ValueError, "max_messages"),
        (lambda c: c.history(None), InvalidKeyError, "conversation_id"),
        (lambda c: c.history("conv-1", last=0), ValueError, "last"),
        (lambda c: c.history("conv-1", last=-2), ValueError, "last"),
        (lambda c: c.delete_history(b"conv-1"), InvalidKeyError, "conversation_id"),
    ],
)
def test_bad_history_input_is_refused_with_nothing_written(
    cache: ContextCache, raw: redis.Redis, call: Any, error: type[Exception], problem: str
) -> None:
    with pytest.raises(error, match=problem) as caught:
        call(cache)
    assert SECRET not in str(caught.value)
    assert raw.keys("*") == []


def test_last_returns_the_newest_messages_oldest_first(cache: ContextCache) -> None:
    for n in range(5):
        cache.append("conv-1", message(n))
    assert cache.history("conv-1", last=2) == [message(3), message(4)]
    assert cache.history("conv-1", last=1) == [message(4)]
    assert cache.history("conv-1", last=50) == [message(n) for n in range(5)]
    assert type(cache.history("conv-1", last=2)) is FrozenList
    assert cache.history("empty", last=3) == []


def test_each_append_restarts_the_ttl_of_both_keys(cache: ContextCache, raw: redis.Redis) -> None:
    cache.append("conv-1", message(0))
    assert 590_000 < raw.pttl(LIST) <= 600_000 and 590_000 < raw.pttl(COUNT) <= 600_000
    raw.pexpire(LIST, 5_000)
    raw.pexpire(COUNT, 5_000)
    cache.append("conv-1", message(1))
    assert 590_000 < raw.pttl(LIST) <= 600_000 and 590_000 < raw.pttl(COUNT) <= 600_000


def test_history_is_served_locally_and_invalidated_by_an_append_from_another_instance(
    caches: Caches, raw: redis.Redis, redis_url: str
) -> None:
    """The second reader is a second ContextCache on its own client (another process's stand-in): only Redis's
    invalidation can tell the first one its copy is stale."""
    other_client = create_redis_client(url=redis_url, environ={})
    try:
        first, second = caches.make(), caches.make(other_client)
        first.append("conv-1", message(0))
        assert settle(first, lambda: first.history("conv-1")) == [message(0)]
        naive_snapshot = first.history("conv-1")
        hits, commands = first.stats()["hits"], data_commands(raw)
        assert first.history("conv-1") == [message(0)] and first.history("conv-1", last=1) == [message(0)]
        assert first.stats()["hits"] == hits + 2 and data_commands(raw) == commands, "a local hit sent a command"
        assert second.append("conv-1", message(1)) == 2
        eventually(lambda: first.history("conv-1") == [message(0), message(1)], "the other instance's append")
        assert naive_snapshot == [message(0)], "a copy kept without invalidation is stale"
        assert second.delete_history("conv-1") is True
        eventually(lambda: first.history("conv-1") == [], "the other instance's delete_history")
    finally:
        other_client.close()
        other_client.connection_pool.disconnect()


def test_delete_history_removes_both_keys(cache: ContextCache, raw: redis.Redis) -> None:
    cache.append("conv-1", message(0))
    cache.append("conv-2", message(0))
    settle(cache, lambda: cache.history("conv-1"))
    assert cache.delete_history("conv-1") is True
    assert raw.exists(LIST, COUNT) == 0 and cache.history("conv-1") == []
    assert cache.delete_history("conv-1") is False
    assert cache.history("conv-2") == [message(0)]
    assert cache.append("conv-1", message(5)) == 1  # a fresh history, the byte count restarted
    assert counted(raw) == len(stored(raw)[0])


@pytest.mark.parametrize("which", ["list key", "count key"])
def test_a_key_of_the_wrong_type_refuses_append_with_a_store_error_and_nothing_changed(
    cache: ContextCache, raw: redis.Redis, which: str
) -> None:
    if which == "list key":
        raw.set(LIST, SECRET)
    else:
        raw.rpush(COUNT, SECRET)
    before = {key: (raw.type(key), raw.dump(key)) for key in (LIST, COUNT)}
    with pytest.raises(StoreError, match="WRONGTYPE") as caught:
        cache.append("conv-1", {"token": SECRET})
    assert SECRET not in str(caught.value) and "conv-1" not in str(caught.value)
    assert {key: (raw.type(key), raw.dump(key)) for key in (LIST, COUNT)} == before
    if which == "list key":  # and a read of it is a missing history, counted as unreadable
        unreadable = cache.stats()["unreadable"]
        assert cache.history("conv-1") == [] and cache.stats()["unreadable"] == unreadable + 1
