"""LocalTier, the rules that keep a process's copy coherent, without a server: reads in flight during an invalidation
or a flush are not kept (a cache that fills whatever it read keeps the pre-write value); nothing is kept while the
listener is not subscribed; expiry; the byte bound and LRU order. Real threads check the byte accounting under
contention."""

from __future__ import annotations

import random
import threading
import time

from fmredis.local_tier import MISSING, LocalTier

LATER = 3600.0


def tier(max_bytes: int = 1000, max_entry: int = 500) -> LocalTier:
    made = LocalTier(max_bytes, max_entry)
    made.serving = True
    return made


def read(t: LocalTier, key: str, value: object, size: int = 10) -> bool:
    return t.fill(t.ticket(key), value, size, time.monotonic() + LATER)


def test_a_read_in_flight_during_an_invalidation_is_not_kept() -> None:
    t = tier()
    ticket = t.ticket("k")  # the read is sent
    t.invalidate(["k"])  # a write lands meanwhile: what the read returns may be the old value
    assert not t.fill(ticket, "old", 10, time.monotonic() + LATER)
    assert t.get("k") is MISSING
    assert read(t, "k", "new")  # a read sent after the invalidation is kept
    assert t.get("k") == "new"


def test_a_read_in_flight_during_a_flush_is_not_kept_and_nothing_is_kept_while_not_serving() -> None:
    t = tier()
    ticket = t.ticket("k")
    t.flush()
    assert not t.fill(ticket, "old", 10, time.monotonic() + LATER)
    t.serving = False
    assert not read(t, "k", "unsubscribed")  # no invalidation could drop it
    assert t.get("k") is MISSING and t.fallback("k") is MISSING


def test_entries_are_served_only_while_serving_and_fallback_reads_them_until_they_expire() -> None:
    t = tier()
    assert read(t, "k", "v")
    t.serving = False
    assert t.get("k") is MISSING and t.fallback("k") == "v"
    assert t.fill(t.ticket("short"), "s", 1, time.monotonic() + 3600) is False  # not serving
    t.serving = True
    assert t.fill(t.ticket("short"), "s", 1, time.monotonic() + 0.05)
    time.sleep(0.06)
    assert t.get("short") is MISSING and t.fallback("short") is MISSING
    assert not t.fill(t.ticket("past"), "p", 1, time.monotonic() - 1)  # already expired: not kept


def test_the_byte_bound_evicts_least_recently_used_first_and_skips_oversized_entries() -> None:
    t = tier(max_bytes=100, max_entry=40)
    for key in "abcd":
        assert read(t, key, key, size=25)
    assert t.sizes() == (4, 100)
    assert t.get("a") == "a"  # a is now the most recently used
    assert read(t, "e", "e", size=25)
    assert t.sizes() == (4, 100) and t.get("b") is MISSING and t.get("a") == "a"
    assert not read(t, "big", "x", size=41)  # over max_entry: never kept, nothing evicted for it
    assert t.sizes() == (4, 100) and t.counts["evictions"] == 1


def test_threads_keep_the_byte_count_exact() -> None:
    t = tier(max_bytes=2000, max_entry=400)
    keys = [f"k{i}" for i in range(40)]
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(3000):
                key = rng.choice(keys)
                action = rng.random()
                if action < 0.5:
                    t.fill(t.ticket(key), key, rng.randint(1, 300), time.monotonic() + LATER)
                elif action < 0.7:
                    t.get(key)
                elif action < 0.85:
                    t.invalidate([key])
                else:
                    t.flush()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    entries, size = t.sizes()
    assert size == sum(entry[1] for entry in t._entries.values()) <= 2000
    assert entries == len(t._entries)
    assert not t._tickets  # every ticket was retired
