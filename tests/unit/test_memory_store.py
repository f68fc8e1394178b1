"""InMemorySessionStore on its own: expiry and the lifetime cap on fake clocks, the LRU bound, copies, validation, real
threads.

The promises shared with every store are in test_store_contract.py; nothing here needs a Redis server.
"""

from __future__ import annotations

import enum
import logging
import math
import random
import sys
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from unittest.mock import ANY

import orjson
import pytest

from fmredis import InvalidTTLError, SessionExpired, StoreUnavailable
from fmredis.memory_store import InMemorySessionStore
from fmredis.serialization import decode_session, encode_session
from tests.fakes import FakeClock

# A fixed stamp, written with set(..., stamp=False), keeps expected values exact (set stamps the time of the write).
STAMP = {"last_activity": "2025-01-15T10:35:22.456Z"}


def make(clock: FakeClock, **kwargs: Any) -> InMemorySessionStore:
    return InMemorySessionStore(clock=clock, **kwargs)


def doc(**fields: Any) -> dict[str, Any]:
    return {**fields, **STAMP}


# --- expiry ---------------------------------------------------------------------------------------------------------

# Each probe reports whether the method saw key "k" as present.
PROBES: dict[str, Callable[[InMemorySessionStore], bool]] = {
    "get": lambda s: s.get("k") is not None,
    "exists": lambda s: s.exists("k"),
    "ttl": lambda s: s.ttl("k") is not None,
    "get_many": lambda s: "k" in s.get_many(["k", "other"]),
    "extend_ttl": lambda s: s.extend_ttl("k"),
    "delete": lambda s: s.delete("k"),
    "delete_many": lambda s: s.delete_many(["k", "other"]) == 1,
    "len": lambda s: len(s) == 1,
    "items_snapshot": lambda s: [key for key, _, _ in s.items_snapshot()] == ["k"],
}


@pytest.mark.parametrize("probe", PROBES.values(), ids=PROBES.keys())
@pytest.mark.parametrize(("elapsed", "present"), [(59.999, True), (60.0, False), (61.5, False)])
def test_every_method_sees_a_session_vanish_at_its_deadline(
    probe: Callable[[InMemorySessionStore], bool], elapsed: float, present: bool
) -> None:
    clock = FakeClock(4.4)
    store = make(clock)
    store.set("k", doc(v=1), ttl=60)
    clock.now = 4.4 + elapsed
    assert probe(store) is present


def test_an_expired_session_is_purged_and_stays_gone_when_the_clock_is_checked_again() -> None:
    clock = FakeClock()
    store = make(clock)
    store.set("k", doc(), ttl=5)
    clock.now += 5
    assert store.get("k") is None
    assert "k" not in store._entries  # purged on access, not just hidden
    clock.now -= 1  # even a clock that stepped back cannot bring it back
    assert store.exists("k") is False


def test_ttl_rounds_up_and_never_reports_zero_for_a_live_session() -> None:
    clock = FakeClock(0.0)
    store = make(clock)
    store.set("k", doc(), ttl=60)
    assert store.ttl("k") == 60
    for elapsed, expected in [(0.25, 60), (0.999, 60), (1.0, 59), (58.5, 2), (59.0, 1), (59.75, 1), (59.999, 1)]:
        clock.now = elapsed
        assert store.ttl("k") == expected, elapsed
    clock.now = 60.0
    assert store.ttl("k") is None


def test_ttl_never_exceeds_the_ttl_granted_despite_float_rounding() -> None:
    # 4.4 + 60 - 4.4 is 60.00000000000001 in binary floating point: rounded up naively it would read 61.
    assert (4.4 + 60) - 4.4 > 60
    clock = FakeClock(4.4)
    store = make(clock)
    store.set("k", doc(), ttl=60)
    assert store.ttl("k") == 60
    assert store.items_snapshot()[0][2] == 60
    assert store.extend_ttl("k", 60)
    assert store.ttl("k") == 60


def test_default_ttl_applies_when_none_is_given() -> None:
    clock = FakeClock()
    store = make(clock, default_ttl=30)
    store.set("k", doc())
    assert store.ttl("k") == 30
    clock.now += 29.5
    assert store.extend_ttl("k") is True
    assert store.ttl("k") == 30


def test_extend_ttl_moves_the_deadline_to_now_plus_ttl() -> None:
    clock = FakeClock(0.0)
    store = make(clock)
    store.set("k", doc(v=1), ttl=10, stamp=False)
    clock.now = 9.0
    assert store.extend_ttl("k", 10) is True
    clock.now = 18.5  # past the first deadline, before the new one
    assert store.get("k") == doc(v=1)
    assert store.ttl("k") == 1
    clock.now = 19.0
    assert store.get("k") is None
    assert len(store) == 0


def test_extend_ttl_can_also_shorten_the_deadline() -> None:
    clock = FakeClock(0.0)
    store = make(clock)
    store.set("k", doc(), ttl=100)
    assert store.extend_ttl("k", 5) is True
    clock.now = 5.0
    assert store.exists("k") is False


def test_extend_ttl_does_not_revive_an_expired_session() -> None:
    clock = FakeClock(0.0)
    store = make(clock)
    store.set("k", doc(), ttl=10)
    clock.now = 10.0
    assert store.extend_ttl("k", 100) is False
    assert store.get("k") is None


def test_set_over_an_expired_session_starts_afresh() -> None:
    clock = FakeClock(0.0)
    store = make(clock)
    store.set("k", doc(v=1), ttl=10)
    clock.now = 20.0
    store.set("k", doc(v=2), ttl=10, stamp=False)
    assert store.get("k") == doc(v=2)
    assert store.ttl("k") == 10


# --- the lifetime cap, on an injected wall clock ---------------------------------------------------------------------


def test_the_lifetime_cap_counts_on_the_wall_clock_given() -> None:
    clock, wall = FakeClock(0.0), FakeClock(1_750_000_000.0)

    def elapse(seconds: float) -> None:
        clock.advance(seconds)
        wall.advance(seconds)

    store = make(clock, max_lifetime=3600, wall_clock=wall)
    created_at = datetime.fromtimestamp(wall.now, timezone.utc).isoformat()
    store.set("k", {"created_at": created_at}, ttl=600)
    assert store.ttl("k") == 600  # a whole hour left: the TTL asked for
    elapse(500)
    store.set("k", {"created_at": created_at, "v": 2})
    assert store.ttl("k") == 1800  # the default TTL: 3100 s left
    elapse(1700)
    assert store.touch("k") is True
    assert store.ttl("k") == 1400  # cut to the lifetime left
    elapse(1390)
    assert store.extend_ttl("k", 600) is True
    assert store.ttl("k") == 10
    elapse(10)
    assert store.get("k", refresh=True) is None  # at the cap: removed
    assert store.exists("k") is False
    with pytest.raises(SessionExpired):
        store.set("k", {"created_at": created_at})
    assert store.exists("k") is False


def test_without_a_lifetime_cap_the_wall_clock_changes_nothing() -> None:
    clock, wall = FakeClock(0.0), FakeClock(1_750_000_000.0)
    store = make(clock, wall_clock=wall)
    document = {"created_at": datetime.fromtimestamp(wall.now, timezone.utc).isoformat()}
    store.set("k", document, ttl=600)
    wall.advance(10 * 365 * 86_400)  # ten years later by the wall clock
    assert store.touch("k", 600) is True
    assert store.ttl("k") == 600
    store.set("k", document, ttl=600)
    assert store.ttl("k") == 600
    assert store.get("k")["created_at"] == document["created_at"]  # type: ignore[index]


# --- the max_entries bound ------------------------------------------------------------------------------------------


def recorder() -> tuple[list[str], Callable[[str], None]]:
    seen: list[str] = []
    return seen, seen.append


def test_a_new_key_into_a_full_store_evicts_the_least_recently_used() -> None:
    evicted, on_evict = recorder()
    store = make(FakeClock(), max_entries=3, on_evict=on_evict)
    for key in "abc":
        store.set(key, doc())
    store.set("d", doc())
    assert evicted == ["a"]
    assert store.evictions == 1
    assert sorted(key for key, _, _ in store.items_snapshot()) == ["b", "c", "d"]
    assert store.get("a") is None


@pytest.mark.parametrize(
    ("touch", "victim"),
    [
        (lambda s: s.get("a"), "b"),
        (lambda s: s.get_many(["b", "a"]), "c"),
        (lambda s: s.set("a", doc()), "b"),
        (lambda s: s.extend_ttl("a"), "b"),
        (lambda s: s.exists("a"), "a"),
        (lambda s: s.ttl("a"), "a"),
        (lambda s: s.items_snapshot(), "a"),
        (lambda s: len(s), "a"),
        (lambda s: s.get("missing"), "a"),
    ],
    ids=["get", "get_many", "set", "extend_ttl", "exists", "ttl", "items_snapshot", "len", "get_missing"],
)
def test_which_calls_count_as_use(touch: Callable[[InMemorySessionStore], object], victim: str) -> None:
    evicted, on_evict = recorder()
    store = make(FakeClock(), max_entries=3, on_evict=on_evict)
    for key in "abc":
        store.set(key, doc())
    touch(store)
    store.set("d", doc())
    assert evicted == [victim]


def test_eviction_follows_recency_over_many_rounds() -> None:
    evicted, on_evict = recorder()
    store = make(FakeClock(), max_entries=2, on_evict=on_evict)
    store.set("a", doc())
    store.set("b", doc())
    store.get("a")  # order b, a
    store.set("c", doc())  # evicts b -> a, c
    store.get("a")  # c, a
    store.set("d", doc())  # evicts c -> a, d
    store.set("e", doc())  # evicts a -> d, e
    assert evicted == ["b", "c", "a"]
    assert store.evictions == 3
    assert [key for key, _, _ in store.items_snapshot()] == ["d", "e"]


def test_overwriting_a_held_key_in_a_full_store_evicts_nothing() -> None:
    evicted, on_evict = recorder()
    clock = FakeClock()
    store = make(clock, max_entries=2, on_evict=on_evict)
    store.set("a", doc(v=1), ttl=5)
    store.set("b", doc())
    store.set("b", doc(v=2), stamp=False)
    clock.now += 10  # "a" has expired but is still held: replacing it does not grow the store either
    store.set("a", doc(v=3), stamp=False)
    assert evicted == []
    assert store.evictions == 0
    assert store.get_many(["a", "b"]) == {"a": doc(v=3), "b": doc(v=2)}


def test_expired_sessions_are_purged_before_any_live_one_is_evicted() -> None:
    evicted, on_evict = recorder()
    clock = FakeClock()
    store = make(clock, max_entries=3, on_evict=on_evict)
    store.set("b", doc(), ttl=100)
    store.set("c", doc(), ttl=100)
    store.set("a", doc(), ttl=5)  # the most recently used, but short-lived
    clock.now += 5
    store.set("d", doc())
    assert evicted == []
    assert store.evictions == 0
    assert "a" not in store._entries
    assert sorted(store.get_many(list("abcd"))) == ["b", "c", "d"]


def test_all_expired_sessions_make_room_at_once() -> None:
    evicted, on_evict = recorder()
    clock = FakeClock()
    store = make(clock, max_entries=4, on_evict=on_evict)
    for key in "abc":
        store.set(key, doc(), ttl=5)
    store.set("z", doc(), ttl=100)
    clock.now += 6
    for key in "def":
        store.set(key, doc())
    assert evicted == []
    assert len(store._entries) == 4
    store.set("g", doc())
    assert evicted == ["z"]


def test_len_and_snapshot_count_only_live_sessions() -> None:
    clock = FakeClock()
    store = make(clock, max_entries=3)
    for key in "abc":
        store.set(key, doc(), ttl=5)
    store.set("d", doc(), ttl=6)
    clock.now += 5
    assert len(store) == 1
    assert [key for key, _, _ in store.items_snapshot()] == ["d"]
    clock.now += 1
    assert len(store) == 0
    assert store.items_snapshot() == []


def test_evictions_is_read_only() -> None:
    store = make(FakeClock())
    with pytest.raises(AttributeError):
        store.evictions = 5  # type: ignore[misc]
    assert store.evictions == 0


def test_on_evict_runs_after_the_write_and_outside_the_lock() -> None:
    calls: list[tuple[str, bool, bool, bool]] = []

    def on_evict(key: str) -> None:
        # Calling back into the store would deadlock if the lock were held (it is not reentrant): check first.
        locked = store._lock.locked()
        calls.append((key, locked, not locked and store.exists(key), not locked and store.exists("new")))

    store = make(FakeClock(), max_entries=1, on_evict=on_evict)
    store.set("old", doc())
    store.set("new", doc())
    assert calls == [("old", False, False, True)]


def test_an_error_in_on_evict_propagates_after_the_value_is_stored() -> None:
    def on_evict(key: str) -> None:
        raise RuntimeError(f"hook failed for {key}")

    store = make(FakeClock(), max_entries=1, on_evict=on_evict)
    store.set("old", doc())
    with pytest.raises(RuntimeError, match="hook failed for old"):
        store.set("new", doc(v=1), stamp=False)
    assert store.get("new") == doc(v=1)
    assert store.evictions == 1


def test_the_clock_is_read_outside_the_lock() -> None:
    held: list[bool] = []

    def clock() -> float:
        held.append(store._lock.locked())
        return 0.0

    store = InMemorySessionStore(clock=clock, max_entries=1)
    store.set("a", doc())
    store.set("b", doc())
    store.get("b")
    store.get_many(["b"])
    store.exists("b")
    store.ttl("b")
    store.extend_ttl("b")
    store.items_snapshot()
    len(store)
    store.delete("b")
    store.delete_many(["b"])
    assert held
    assert not any(held)


def test_the_expiry_heap_stays_bounded_under_repeated_rewrites() -> None:
    clock = FakeClock()
    store = make(clock, max_entries=10)
    for i in range(5000):
        store.set(f"k{i % 3}", doc())
        store.extend_ttl(f"k{i % 3}", 1 + i % 50)
    assert len(store._expiry_heap) <= 2 * 3 + 64 + 1
    assert len(store) == 3


# --- values: encoded once, read back as the Redis store would -------------------------------------------------------


class Colour(enum.Enum):
    RED = "red"


def test_values_read_back_in_their_json_form_with_last_activity_stamped() -> None:
    store = make(FakeClock())
    ident = uuid.UUID(int=7)
    when = datetime(2025, 1, 15, 10, 30, tzinfo=timezone.utc)
    value = {"pair": (1, 2), "id": ident, "when": when, "colour": Colour.RED, "nested": {"t": ("x",)}}
    store.set("k", value)
    got = store.get("k")
    assert got is not None
    stamp = datetime.fromisoformat(got.pop("last_activity"))
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert got == {
        "pair": [1, 2],
        "id": str(ident),
        "when": "2025-01-15T10:30:00+00:00",
        "colour": "red",
        "nested": {"t": ["x"]},
    }
    assert "last_activity" not in value


def test_the_stored_bytes_are_what_encode_session_produces() -> None:
    store = make(FakeClock())
    value = doc(a=[1, 2.5, None, True], b={"c": "d"})
    store.set("k", value, stamp=False)
    [(key, payload, _)] = store.items_snapshot()
    assert key == "k"  # no prefix
    assert payload == encode_session(value) == orjson.dumps(value)
    assert decode_session(payload) == value


def test_returned_dicts_are_copies() -> None:
    store = make(FakeClock())
    original = doc(items=[1, 2], nested={"x": 1})
    store.set("k", original, stamp=False)
    first = store.get("k")
    assert first is not None
    first["items"].append(3)
    first["nested"]["x"] = 99
    first["added"] = True
    many = store.get_many(["k"])
    many["k"]["items"].clear()
    del many["k"]["nested"]
    assert store.get("k") == original
    assert store.get_many(["k"]) == {"k": original}
    assert store.get("k") is not store.get("k")


def test_changing_the_callers_dict_after_set_does_not_change_the_store() -> None:
    store = make(FakeClock())
    mine = doc(items=[1])
    store.set("k", mine, stamp=False)
    mine["items"].append(2)
    mine["new"] = 1
    assert store.get("k") == doc(items=[1])


# --- construction ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_entries", [0, -1, 1.5, True, "10", None])
def test_bad_max_entries_are_refused(max_entries: Any) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        InMemorySessionStore(max_entries=max_entries)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"default_ttl": 0},
        {"default_ttl": -5},
        {"default_ttl": 1.5},
        {"default_ttl": True},
        {"default_ttl": "60"},
        {"default_ttl": 100, "max_ttl": 99},
        {"max_ttl": 0},
        {"max_ttl": 1.5},
        {"max_ttl": False},
        {"max_ttl": None},
    ],
    ids=repr,
)
def test_bad_ttl_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidTTLError):
        InMemorySessionStore(**kwargs)


@pytest.mark.parametrize("kwargs", [{"clock": 5.0}, {"on_evict": "log"}], ids=repr)
def test_non_callable_hooks_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        InMemorySessionStore(**kwargs)


def test_settings_are_kept_and_a_custom_max_ttl_is_enforced() -> None:
    store = InMemorySessionStore(default_ttl=10, max_ttl=20, max_entries=1)
    assert (store.default_ttl, store.max_ttl, store.max_entries) == (10, 20, 1)
    assert "max_entries=1" in repr(store)
    store.set("k", doc(), ttl=20)
    with pytest.raises(InvalidTTLError):
        store.set("k", doc(), ttl=21)
    with pytest.raises(InvalidTTLError):
        store.extend_ttl("k", 21)
    assert InMemorySessionStore(max_entries=1).max_entries == 1


def test_nothing_is_logged_on_the_success_path(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    store = make(clock, max_entries=2, on_evict=lambda key: None)
    for key in "abc":
        store.set(key, doc())
    store.get("c")
    store.get("missing")
    store.get_many(["b", "c", "x"])
    store.exists("c")
    store.ttl("c")
    store.extend_ttl("c", 10)
    clock.now += 11
    store.get("c")
    store.items_snapshot()
    store.delete("b")
    store.delete_many(["a", "b"])
    assert caplog.records == []


# --- against a plain reference model --------------------------------------------------------------------------------


class Model:
    """The documented behaviour spelled out naively: live sessions in recency order, scanned on every call."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.entries: dict[str, tuple[dict[str, Any], float]] = {}  # insertion order = recency order
        self.evicted: list[str] = []
        self.now = 0.0

    def live(self) -> list[str]:
        return [key for key, (_, deadline) in self.entries.items() if deadline > self.now]

    def touch(self, key: str) -> None:
        self.entries[key] = self.entries.pop(key)

    def get(self, key: str) -> dict[str, Any] | None:
        if key not in self.live():
            return None
        self.touch(key)
        return self.entries[key][0]

    def set(self, key: str, value: dict[str, Any], ttl: int) -> None:
        live = self.live()
        if key not in live and len(live) >= self.max_entries:
            self.evicted.append(live[0])
            del self.entries[live[0]]
        self.entries.pop(key, None)
        self.entries[key] = (value, self.now + ttl)

    def extend_ttl(self, key: str, ttl: int) -> bool:
        if key not in self.live():
            return False
        self.entries[key] = (self.entries[key][0], self.now + ttl)
        self.touch(key)
        return True

    def ttl(self, key: str) -> int | None:
        return math.ceil(self.entries[key][1] - self.now) if key in self.live() else None

    def delete(self, key: str) -> bool:
        was_live = key in self.live()
        self.entries.pop(key, None)
        return was_live


@pytest.mark.parametrize("seed", range(6))
def test_behaves_like_the_reference_model(seed: int) -> None:
    rng = random.Random(seed)
    clock = FakeClock(0.0)
    evicted, on_evict = recorder()
    store = make(clock, max_entries=5, on_evict=on_evict)
    model = Model(max_entries=5)
    keys = [f"k{i}" for i in range(9)]
    for step in range(3000):
        key = rng.choice(keys)
        op = rng.randrange(10)
        if op <= 2:
            ttl = rng.randint(1, 8)
            store.set(key, doc(step=step), ttl=ttl, stamp=False)
            model.set(key, doc(step=step), ttl)
        elif op == 3:
            assert store.get(key) == model.get(key)
        elif op == 4:
            wanted = rng.sample(keys, 3)
            expected = {k: v for k in wanted if (v := model.get(k)) is not None}
            assert store.get_many(wanted) == expected
        elif op == 5:
            ttl = rng.randint(1, 8)
            assert store.extend_ttl(key, ttl) is model.extend_ttl(key, ttl)
        elif op == 6:
            assert store.ttl(key) == model.ttl(key)
            assert store.exists(key) is (key in model.live())
        elif op == 7:
            if rng.random() < 0.5:
                assert store.delete(key) is model.delete(key)
            else:
                wanted = rng.sample(keys, 3)
                assert store.delete_many(wanted) == sum(model.delete(k) for k in wanted)
        else:
            clock.now = model.now = model.now + rng.choice([0.25, 0.5, 1.0, 2.0])
        assert evicted == model.evicted, step
        assert store.evictions == len(model.evicted)
        if step % 50 == 0:
            assert [(k, decode_session(p), t) for k, p, t in store.items_snapshot()] == [
                (k, model.entries[k][0], model.ttl(k)) for k in model.live()
            ]
            assert len(store) == len(model.live())


# --- real threads ---------------------------------------------------------------------------------------------------


def test_many_threads_on_overlapping_keys_keep_the_store_consistent() -> None:
    threads_n, ops_n, max_entries = 24, 3000, 12
    clock = FakeClock(0.0, tick=0.001)  # shared by the threads: each read moves it on 1 ms
    evicted: list[str] = []
    store = InMemorySessionStore(max_entries=max_entries, clock=clock, on_evict=evicted.append, default_ttl=5)
    keys = [f"key{i}" for i in range(40)]
    errors: list[BaseException] = []
    oversize: list[int] = []
    start = threading.Barrier(threads_n)

    def worker(worker_id: int) -> None:
        rng = random.Random(worker_id)
        try:
            start.wait()
            for n in range(ops_n):
                key = rng.choice(keys)
                op = rng.randrange(9)
                if op <= 2:
                    store.set(key, {"key": key, "by": worker_id, "n": n}, ttl=rng.randint(1, 5))
                elif op == 3:
                    got = store.get(key)
                    assert got is None or got["key"] == key
                elif op == 4:
                    for found_key, value in store.get_many(rng.sample(keys, 4)).items():
                        assert value["key"] == found_key
                elif op == 5:
                    store.extend_ttl(key, rng.randint(1, 5))
                    ttl = store.ttl(key)
                    assert ttl is None or 1 <= ttl <= 5
                elif op == 6:
                    if rng.random() < 0.5:
                        store.delete(key)
                    else:
                        store.delete_many(rng.sample(keys, 3))
                elif op == 7:
                    store.exists(key)
                    if (held := len(store._entries)) > max_entries:
                        oversize.append(held)
                else:
                    if (live := len(store)) > max_entries:
                        oversize.append(live)
                    if n % 100 == 0:
                        for snap_key, payload, ttl in store.items_snapshot():
                            assert decode_session(payload)["key"] == snap_key and 1 <= ttl <= 5
        except BaseException as exc:  # handed to the main thread, which fails the test with it
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    # Switching threads every few bytecodes instead of every 5 ms makes races in unlocked code show up reliably.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        sys.setswitchinterval(switch_interval)
    assert not any(thread.is_alive() for thread in threads)
    if errors:
        raise errors[0]
    assert oversize == []
    clock.freeze()  # so nothing expires between the final checks

    assert store.evictions == len(evicted) > 0
    snapshot = store.items_snapshot()
    assert len(snapshot) == len(store) <= max_entries
    assert len(store._entries) <= max_entries
    assert len(store._expiry_heap) <= 2 * len(store._entries) + 64 + 1
    held_deadlines = {(entry.deadline, key) for key, entry in store._entries.items()}
    assert held_deadlines <= set(store._expiry_heap)  # every held entry can still be found when it expires
    found = store.get_many(keys)
    assert sorted(found) == sorted(key for key, _, _ in snapshot)
    assert all(value["key"] == key for key, value in found.items())


def test_eviction_passes_over_pinned_keys_and_refuses_when_all_are_pinned() -> None:
    store = InMemorySessionStore(max_entries=3)
    for key in ("a", "b", "c"):
        store.set(key, {"k": key})
    store.pinned = lambda key: key in {"a", "c"}
    store.set("d", {"k": "d"})  # the least recently used unpinned key goes: "b", not "a"
    assert [store.exists(key) for key in ("a", "b", "c", "d")] == [True, False, True, True]
    store.pinned = lambda key: True
    with pytest.raises(StoreUnavailable, match=r"all 3 sessions held .* are pinned"):
        store.set("e", {"k": "e"})
    assert not store.exists("e") and len(store) == 3 and store.evictions == 1
    store.set("a", {"k": "a2"})  # a held key is replaced in place: nothing to evict
    assert store.get("a") == {"k": "a2", "last_activity": ANY}


def test_demote_makes_a_key_the_next_to_go_and_put_entry_restores_a_peeked_one() -> None:
    store = InMemorySessionStore(max_entries=2)
    store.set("a", {"k": "a"})
    store.set("b", {"k": "b"})
    store.demote("b")
    store.set("c", {"k": "c"})
    assert not store.exists("b") and store.exists("a")
    entry = store.peek_entry("a")
    assert entry is not None and entry[1] == 1800
    store.delete("a")
    store.put_entry("a", entry)
    assert store.get("a") == {"k": "a", "last_activity": ANY}
    store.put_entry("a", None)
    assert store.peek_entry("a") is None


def test_clear_removes_every_session_and_the_user_index() -> None:
    store = InMemorySessionStore(max_entries=3)
    first = store.create("u1", {"n": 1})
    store.set("plain", {"n": 2})
    store.clear()
    assert len(store) == 0 and store.get("plain") is None and store.sessions_for_user("u1") == []
    assert store.get(first) is None
    store.set("again", {"n": 3})  # still usable
    assert store.get("again") == {"n": 3, "last_activity": ANY}
