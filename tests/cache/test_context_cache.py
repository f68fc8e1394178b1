"""ContextCache values on a real redis-server: round trips, hits (the same frozen object, no round trip), TTLs (the
local copy never outlives the Redis key), invalidation by other clients (a naive dict cache serves the old value),
a read in flight across an invalidation, the local tier's byte bound and LRU order, compression, and values in Redis
it cannot read (missing, counted, logged without key or payload). Frozen values: test_context_frozen.py.

Nothing here asserts a duration: waits are bounded polls (deadlock guards) and order is shown by counters."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import orjson
import pytest
import redis
import zstandard

from fmredis import ContextCache, FrozenDict, FrozenList, create_redis_client
from tests.cache.context_support import (
    GUARD,
    Caches,
    NaiveCache,
    data_commands,
    drain,
    eventually,
    plain,
    settle,
    value_key,
)
from tests.harness.servers import RedisServer

pytestmark = pytest.mark.timeout(120)

CONTEXT = {"user": "u-1", "turns": [{"role": "user", "text": "héllo"}, {"role": "bot", "text": "hi", "n": 2.5}]}


# --- round trip and hits --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [CONTEXT, [1, "two", {"three": [3]}], "text", 42, 0, 2.5, True, False, [], {}])
def test_set_get_delete_round_trip(cache: ContextCache, raw: redis.Redis, value: Any) -> None:
    cache.set("conv-1", value)
    stored = raw.get(value_key("conv-1"))
    assert stored is not None and stored[:1] == b"\x00" and orjson.loads(stored[1:]) == value
    got = cache.get("conv-1")
    assert got == value and type(got) is {dict: FrozenDict, list: FrozenList}.get(type(value), type(value))
    assert cache.delete("conv-1") is True
    assert raw.exists(value_key("conv-1")) == 0
    assert cache.get("conv-1") is None
    assert cache.delete("conv-1") is False


def test_get_of_a_missing_key_is_none_and_counts_a_miss(cache: ContextCache) -> None:
    misses = cache.stats()["misses"]
    assert cache.get("never-set") is None
    assert cache.stats()["misses"] == misses + 1 and cache.stats()["local_entries"] == 0


def test_a_hit_is_the_same_frozen_object_with_no_round_trip(cache: ContextCache, raw: redis.Redis) -> None:
    cache.set("conv-1", CONTEXT)
    first = settle(cache, lambda: cache.get("conv-1"))
    hits, commands = cache.stats()["hits"], data_commands(raw)
    assert all(cache.get("conv-1") is first for _ in range(50))
    assert cache.stats()["hits"] == hits + 50
    assert data_commands(raw) == commands, "a hit sent a command to Redis"
    assert cache.get("other") is None  # and a miss is seen by the same count
    assert data_commands(raw) > commands


# --- TTLs -----------------------------------------------------------------------------------------------------------


def test_a_value_set_with_ttl_1_is_gone_from_redis_and_the_local_tier(cache: ContextCache, raw: redis.Redis) -> None:
    cache.set("short", CONTEXT, ttl=1)
    assert 0 < raw.pttl(value_key("short")) <= 1000
    assert cache.get("short") in (CONTEXT, None)  # None only if this machine stalled for the whole second
    eventually(lambda: cache.get("short") is None, "the value to expire")
    assert cache.stats()["local_entries"] == 0
    assert raw.exists(value_key("short")) == 0


def test_the_local_copy_expires_with_the_pttl_read_at_fill_time() -> None:
    """With Redis's active expiry off and nobody touching the keys, only the local expiry can end the local copies:
    a copy of a key written with ``SET PX`` and one of a key whose TTL ``PEXPIRE`` shortened (that sends an
    invalidation, so the next read refills with the new PTTL) both end when their keys do, long before the cache's
    ttl. A naive dict cache still serves the value after Redis dropped it."""
    with RedisServer("ctx-expiry", config=[("enable-debug-command", "yes")]) as server:
        raw = server.client(decode_responses=False)
        client = create_redis_client(url=server.url, environ={})
        caches = Caches(client)
        try:
            raw.execute_command("DEBUG", "SET-ACTIVE-EXPIRE", "0")
            cache = caches.make(ttl=3600)
            naive = NaiveCache(raw)
            cache.set("shortened", {"k": "shortened"})
            settle(cache, lambda: cache.get("shortened"))
            raw.set(value_key("written"), plain({"k": "written"}), px=3000)
            raw.pexpire(value_key("shortened"), 3000)
            gone_by = time.monotonic() + 3.0
            assert naive.get("written") == {"k": "written"}
            eventually(lambda: cache.stats()["local_entries"] == 0, "the PEXPIRE's invalidation")
            for key in ("written", "shortened"):
                assert settle(cache, lambda key=key: cache.get(key)) == {"k": key}
            assert cache.stats()["expirations"] == 0 and cache.stats()["local_entries"] == 2
            eventually(lambda: time.monotonic() > gone_by + 0.05, "the keys' expiry", seconds=GUARD + 3)
            expirations = cache.stats()["expirations"]
            assert cache.get("written") is None and cache.get("shortened") is None
            assert cache.stats()["expirations"] == expirations + 2  # the local tier ended them, not an invalidation
            assert raw.exists(value_key("written"), value_key("shortened")) == 0
            assert naive.get("written") == {"k": "written"}, "the naive cache should serve the expired value"
        finally:
            caches.close()
            client.close()
            raw.close()


# --- invalidation ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("write", ["set", "delete", "flushall"])
def test_a_write_by_another_client_is_seen_by_the_next_get(cache: ContextCache, raw: redis.Redis, write: str) -> None:
    cache.set("conv-1", {"version": 1})
    cache.set("conv-2", {"version": 1})
    naive = NaiveCache(raw)
    assert settle(cache, lambda: cache.get("conv-1")) == {"version": 1} == naive.get("conv-1")
    settle(cache, lambda: cache.get("conv-2"))
    before = cache.stats()
    expected: Any = None
    if write == "set":
        raw.set(value_key("conv-1"), plain({"version": 2}))
        expected = {"version": 2}
    elif write == "delete":
        raw.delete(value_key("conv-1"))
    else:
        raw.flushall()
    eventually(lambda: cache.get("conv-1") == expected, f"the {write} by another client to be seen")
    after = cache.stats()
    if write == "flushall":
        assert after["flushes"] > before["flushes"] and cache.get("conv-2") is None
    else:
        assert after["invalidations"] > before["invalidations"]
        assert settle(cache, lambda: cache.get("conv-2")) == {"version": 1}  # other entries untouched
    assert naive.get("conv-1") == {"version": 1}, "the naive cache should still serve the old value"


class HeldReplies(redis.Redis):
    """A client that holds the reply to a read of ``hold`` (a pipeline or a script naming it) until ``release`` is
    set: a read whose reply is on its way back while the test writes."""

    hold: str | None = None

    def __init__(self, pool: redis.ConnectionPool) -> None:
        super().__init__(connection_pool=pool)
        self.held, self.release = threading.Event(), threading.Event()

    def wait_if_held(self, *commands: tuple[Any, ...]) -> None:
        if self.hold is not None and any(self.hold in command for command in commands):
            self.held.set()
            self.release.wait(GUARD)

    def execute_command(self, *args: Any, **options: Any) -> Any:
        reply = super().execute_command(*args, **options)
        if args[0] in ("EVALSHA", "EVAL"):
            self.wait_if_held(args)
        return reply

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe, owner = super().pipeline(transaction, shard_hint), self
        execute = pipe.execute

        def held_execute(raise_on_error: bool = True) -> Any:
            commands = [args for args, _ in pipe.command_stack]
            replies = execute(raise_on_error)
            owner.wait_if_held(*commands)
            return replies

        pipe.execute = held_execute  # type: ignore[method-assign]
        return pipe


def test_a_read_in_flight_when_its_key_is_invalidated_does_not_keep_what_it_read(
    caches: Caches, client: redis.Redis, raw: redis.Redis
) -> None:
    held = HeldReplies(client.connection_pool)
    cache = caches.make(held)
    cache.set("conv-1", {"version": 1})
    drain(cache, raw)
    held.hold = value_key("conv-1")
    read: list[Any] = []
    reader = threading.Thread(target=lambda: read.append(cache.get("conv-1")), daemon=True)
    reader.start()
    assert held.held.wait(GUARD), "the read did not start"
    raw.set(value_key("conv-1"), plain({"version": 2}))  # while version 1 is on its way back
    drain(cache, raw)  # the listener has applied that invalidation
    held.hold = None
    held.release.set()
    reader.join(GUARD)
    assert read == [{"version": 1}]  # the read returns what it read...
    assert cache.get("conv-1") == {"version": 2}, "...but must not have kept it: a stale copy for good"


# --- the local tier's byte bound ------------------------------------------------------------------------------------


def test_the_byte_bound_holds_under_a_stream_of_large_values(caches: Caches, raw: redis.Redis) -> None:
    bound = 1_000_000
    cache = caches.make(local_max_bytes=bound)
    values = {f"k{i}": {"i": i, "text": f"{i:05d}" * 10_000} for i in range(200)}  # ~50 KB of JSON each
    for key, value in values.items():
        cache.set(key, value)
    drain(cache, raw)
    cache.delete("__drain__")
    assert cache.stats()["local_entries"] == 0
    for key, value in values.items():
        assert cache.get(key) == value
        assert cache.get("k0") == values["k0"]  # read after every fill: the most recently used one
        assert cache.stats()["local_bytes"] <= bound
    stats = cache.stats()
    assert stats["evictions"] > 0 and stats["evictions"] == len(values) - stats["local_entries"]
    assert stats["local_entries"] * 50_000 <= bound
    hits, commands = stats["hits"], data_commands(raw)
    assert cache.get("k0") == values["k0"] and cache.get("k199") == values["k199"]
    assert cache.stats()["hits"] == hits + 2 and data_commands(raw) == commands  # the recent ones were kept
    misses = cache.stats()["misses"]
    assert cache.get("k1") == values["k1"]  # the oldest was evicted: a miss, still readable
    assert cache.stats()["misses"] == misses + 1


def test_an_entry_over_a_quarter_of_the_bound_is_not_kept_locally_but_still_readable(
    caches: Caches, raw: redis.Redis
) -> None:
    cache = caches.make(local_max_bytes=1_000_000)
    big = {"text": "y" * 300_000}
    cache.set("big", big)
    for _ in range(3):
        hits, commands = cache.stats()["hits"], data_commands(raw)
        assert cache.get("big") == big
        assert cache.stats()["hits"] == hits and data_commands(raw) > commands
    assert cache.stats()["local_entries"] == 0 and cache.stats()["local_bytes"] == 0


# --- compression and values the cache cannot read -------------------------------------------------------------------

LARGE = {"turns": [{"role": "user", "text": "the same words again " * 10} for _ in range(200)]}  # ~45 KB of JSON


def test_a_value_over_compress_above_is_stored_compressed_with_tag_1(cache: ContextCache, raw: redis.Redis) -> None:
    cache.set("large", LARGE)
    cache.set("small", CONTEXT)
    stored, small = raw.get(value_key("large")), raw.get(value_key("small"))
    assert stored is not None and small is not None
    assert stored[:1] == b"\x01" and len(stored) < len(orjson.dumps(LARGE)) // 2
    assert small == plain(CONTEXT)
    assert cache.get("large") == LARGE


def test_a_cache_without_compression_stores_tag_0_and_still_reads_tag_1(caches: Caches, raw: redis.Redis) -> None:
    compressing, uncompressed = caches.make(), caches.make(compression=None)
    compressing.set("by-zstd", LARGE)
    uncompressed.set("by-plain", LARGE)
    assert raw.get(value_key("by-plain")) == plain(LARGE)
    assert raw.get(value_key("by-zstd"))[:1] == b"\x01"  # type: ignore[index]
    assert uncompressed.get("by-zstd") == LARGE and compressing.get("by-plain") == LARGE


@pytest.mark.parametrize("declares_size", [True, False])
def test_a_compressed_value_over_max_value_bytes_reads_as_missing(
    caches: Caches, raw: redis.Redis, declares_size: bool
) -> None:
    """Whether or not the frame declares its size, a small frame of a large value is not inflated past the limit."""
    cache = caches.make(max_value_bytes=100_000)
    frame = zstandard.ZstdCompressor(write_content_size=declares_size).compress(orjson.dumps({"t": "z" * 200_000}))
    assert len(frame) < 1_000 and (zstandard.frame_content_size(frame) > 0) is declares_size
    raw.set(value_key("bomb"), b"\x01" + frame)
    assert cache.get("bomb") is None and cache.stats()["unreadable"] == 1 and cache.stats()["local_entries"] == 0


SECRET_KEY, SECRET_PAYLOAD = "secret-key-XYZ", "payload-secret-PQR"


@pytest.mark.parametrize(
    "stored",
    [
        b"\x07" + orjson.dumps({"token": SECRET_PAYLOAD}),
        b"\x01" + SECRET_PAYLOAD.encode(),
        b"\x00{" + SECRET_PAYLOAD.encode(),
        b"",
        "list",
    ],
    ids=["unknown tag", "not zstd", "bad json", "empty", "wrong type"],
)
def test_a_value_it_cannot_read_reads_as_missing_counted_and_logged_without_key_or_payload(
    cache: ContextCache, raw: redis.Redis, caplog: pytest.LogCaptureFixture, stored: bytes | str
) -> None:
    if stored == "list":
        raw.rpush(value_key(SECRET_KEY), SECRET_PAYLOAD)
    else:
        raw.set(value_key(SECRET_KEY), stored)
    caplog.set_level(logging.DEBUG)
    unreadable = cache.stats()["unreadable"]
    assert cache.get(SECRET_KEY) is None
    assert cache.stats()["unreadable"] == unreadable + 1 and cache.stats()["local_entries"] == 0
    warnings = [r for r in caplog.records if r.name.startswith("fmredis") and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unreadable" in warnings[0].getMessage()
    text = " ".join(r.getMessage() + " " + repr(vars(r)) for r in caplog.records)
    assert SECRET_KEY not in text and SECRET_PAYLOAD not in text
    assert raw.exists(value_key(SECRET_KEY)) == 1  # left alone, not deleted or overwritten
