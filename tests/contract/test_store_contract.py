"""The promises every ISessionStore keeps, run against each store (the `store` fixture in conftest.py): round trips,
last_activity stamps, TTLs, bulk calls, bad input, TTL rules, construction and close."""

from __future__ import annotations

import dataclasses
import math
import time
from collections import OrderedDict
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmredis import (
    MAX_KEY_LENGTH,
    FallbackSessionStore,
    FmRedisError,
    InMemorySessionStore,
    InvalidKeyError,
    InvalidTTLError,
    ISessionStore,
    RedisSessionStore,
    ResilientRedisSessionStore,
    SerializationError,
    SessionTTLManager,
    TTLRules,
    core,
)
from fmredis.serialization import utc_now


@dataclasses.dataclass
class NaNPoint:
    x: float


MAX_TTL = 86_400  # every store under test (the ``store`` fixture in conftest.py) has the default max_ttl
DEFAULT_TTL = 1800
OLD_STAMP = "2025-01-15T10:35:22.456Z"  # a last_activity long past
SLACK = timedelta(seconds=1)  # clock and round-trip allowance when checking that a stamp is "now"

SESSION = {
    "user_id": "user_123",
    # The "Z" form the design document writes (an hour ago: a lifetime cap, were one on, would keep it).
    "created_at": (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat(timespec="milliseconds")[:-6] + "Z",
    "investigation_id": "inv_789",
    "context": {
        "current_phase": "analysis",
        "uploaded_files": ["log1.txt", "metrics.json"],
        "preferences": {"detail_level": "verbose", "auto_execute": False},
    },
}

BAD_KEYS = [None, b"bytes-key", "", "k" * (MAX_KEY_LENGTH + 1), 42, ("a",), "lone-\ud800-surrogate"]
BAD_TTLS = [0, -1, 1.5, "60", True, [60], MAX_TTL + 1]
BAD_VALUES = [
    ["a", "list"],
    None,
    "a string",
    {"tags": {"a", "set"}},
    {"obj": object()},
    {1: "int key"},
    {"nan": float("nan")},
    {"nested": [{"inf": float("inf")}]},
    {"neg_inf": -math.inf},
    {"huge": 2**70},
    {"raw": b"bytes"},
    {"point": NaNPoint(math.nan), "other": None},
]


# --- round trips ----------------------------------------------------------------------------------------------------


def assert_stamped_now(session: dict[str, Any], since: datetime) -> None:
    """``session["last_activity"]`` is aware UTC ISO-8601 text of a moment between ``since`` and now."""
    stamp = datetime.fromisoformat(session["last_activity"])
    assert stamp.tzinfo is not None and stamp.utcoffset() == timedelta(0)
    assert since - SLACK <= stamp <= datetime.now(timezone.utc) + SLACK


def test_set_then_get_returns_the_document_with_last_activity(store: ISessionStore) -> None:
    before = datetime.now(timezone.utc)
    store.set("abc", SESSION)
    got = store.get("abc")
    assert got is not None
    assert_stamped_now(got, before)
    del got["last_activity"]
    assert got == SESSION


def test_set_stamps_last_activity_now_over_an_old_one_and_never_mutates_the_callers_dict(store: ISessionStore) -> None:
    mine = {"user_id": "u", "last_activity": OLD_STAMP}
    before = datetime.now(timezone.utc)
    store.set("a", mine)
    assert mine == {"user_id": "u", "last_activity": OLD_STAMP}
    got = store.get("a")
    assert got is not None
    assert_stamped_now(got, before)
    assert {k: v for k, v in got.items() if k != "last_activity"} == {"user_id": "u"}


def test_set_without_stamp_keeps_the_last_activity_given(store: ISessionStore) -> None:
    given = {"user_id": "u", "last_activity": OLD_STAMP}
    store.set("b", given, stamp=False)
    assert store.get("b") == given
    store.set("c", {"v": 1}, ttl=60, stamp=False)
    assert store.get("c") == {"v": 1}  # none given: none stored
    assert 58 <= store.ttl("c") <= 60  # type: ignore[operator]


class Session(dict[str, Any]):
    """An application's own session type: a dict subclass."""


SUBCLASSED = [
    OrderedDict(user_id="u", last_activity=OLD_STAMP),
    Session(user_id="u"),  # and none given
]


@pytest.mark.parametrize("value", SUBCLASSED, ids=lambda value: type(value).__name__)
def test_set_stamps_last_activity_on_a_dict_subclass_too(store: ISessionStore, value: dict[str, Any]) -> None:
    mine = dict(value)
    before = datetime.now(timezone.utc)
    store.set("a", value)
    assert value == mine  # the caller's own left as it was
    got = store.get("a")
    assert got is not None
    assert_stamped_now(got, before)
    assert {k: v for k, v in got.items() if k != "last_activity"} == {"user_id": "u"}


def test_a_set_that_stamps_plain_dicts_only_would_leave_a_subclass_unstamped(
    store: ISessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The naive check, ``type(value) is dict``, in place of stamped()'s isinstance (set stamps through it).
    def naive(value: Any) -> Any:
        return {**value, "last_activity": utc_now()} if type(value) is dict else value

    monkeypatch.setattr(core, "stamped", naive)
    store.set("a", OrderedDict(user_id="u", last_activity=OLD_STAMP))
    assert store.get("a") == {"user_id": "u", "last_activity": OLD_STAMP}


def test_get_missing_is_none_and_set_overwrites(store: ISessionStore) -> None:
    assert store.get("nope") is None
    store.set("k", {"v": 1})
    store.set("k", {"v": 2})
    assert store.get("k") == {"v": 2, "last_activity": store.get("k")["last_activity"]}  # type: ignore[index]


def test_tuples_read_back_as_lists(store: ISessionStore) -> None:
    store.set("t", {"pair": (1, 2), "last_activity": "x"}, stamp=False)
    assert store.get("t") == {"pair": [1, 2], "last_activity": "x"}


# --- delete / exists / ttl ------------------------------------------------------------------------------------------


def test_delete_and_exists(store: ISessionStore) -> None:
    assert store.exists("k") is False
    store.set("k", {})
    assert store.exists("k") is True
    assert store.delete("k") is True
    assert store.delete("k") is False
    assert store.exists("k") is False
    assert store.get("k") is None


def test_default_and_explicit_ttl(store: ISessionStore) -> None:
    store.set("d", {})
    store.set("e", {}, ttl=60)
    assert DEFAULT_TTL - 2 <= store.ttl("d") <= DEFAULT_TTL  # type: ignore[operator]
    assert 58 <= store.ttl("e") <= 60  # type: ignore[operator]
    assert store.ttl("missing") is None


def ttl_readings(store: ISessionStore, key: str) -> Iterator[int | None]:
    """``store.ttl(key)``, read as fast as it answers until the session is gone (or 3 s have passed)."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        reading = store.ttl(key)
        yield reading
        if reading is None:
            return


def test_ttl_rounds_up_so_a_live_session_never_reports_zero(store: ISessionStore) -> None:
    store.set("k", {"v": 1}, ttl=1)
    readings = list(ttl_readings(store, "k"))
    assert readings[-1] is None  # it expired
    assert set(readings) == {1, None}  # 1 until then: never 0, which would read as "no time left" while it exists


def test_a_redis_store_reporting_redis_own_ttl_would_read_zero_for_a_live_session(
    redis_store: RedisSessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def naive_read_with_ttl(key: str) -> tuple[bytes | None, int]:  # TTL rounds to the nearest second, 0 at < 0.5 s
        with redis_store.client.pipeline(transaction=False) as pipe:
            pipe.execute_command("GET", redis_store.prefix + key)
            pipe.execute_command("TTL", redis_store.prefix + key)
            payload, seconds = pipe.execute()
        return payload, int(seconds)

    monkeypatch.setattr(redis_store, "_read_with_ttl", naive_read_with_ttl)
    redis_store.set("k", {"v": 1}, ttl=1)
    assert 0 in set(ttl_readings(redis_store, "k"))


def test_extend_ttl(store: ISessionStore) -> None:
    assert store.extend_ttl("missing") is False
    assert store.exists("missing") is False
    store.set("k", {"v": 1}, ttl=30)
    assert store.extend_ttl("k", 600) is True
    assert 598 <= store.ttl("k") <= 600  # type: ignore[operator]
    assert store.extend_ttl("k") is True
    assert DEFAULT_TTL - 2 <= store.ttl("k") <= DEFAULT_TTL  # type: ignore[operator]
    assert store.get("k")["v"] == 1  # type: ignore[index]


# --- bulk -----------------------------------------------------------------------------------------------------------


def test_get_many_returns_found_sessions_only(store: ISessionStore) -> None:
    for i in range(5):
        store.set(f"s{i}", {"i": i})
    got = store.get_many(["s0", "s2", "missing", "s4", "s2"])
    assert sorted(got) == ["s0", "s2", "s4"]
    assert all(got[k]["i"] == int(k[1]) for k in got)
    assert store.get_many([]) == {}
    assert store.get_many(iter(["s1"]))["s1"]["i"] == 1


def test_delete_many_counts_what_existed(store: ISessionStore) -> None:
    for i in range(25):
        store.set(f"s{i}", {"i": i})
    keys = [f"s{i}" for i in range(30)] + ["s0"]
    assert store.delete_many(keys) == 25
    assert store.get_many(keys) == {}
    assert store.delete_many([]) == 0
    assert store.delete_many(keys) == 0


def test_set_many_stores_each_session_with_its_own_ttl(store: ISessionStore) -> None:
    since = utc_now()
    assert (
        store.set_many([("a", {"i": 1}, None), ("b", {"i": 2}, 60), ("c", {"i": 3, "last_activity": OLD_STAMP}, 90)])
        == 3
    )
    assert [store.get(key)["i"] for key in ("a", "b", "c")] == [1, 2, 3]  # type: ignore[index]
    for key in ("a", "b", "c"):
        assert_stamped_now(store.get(key), since)  # type: ignore[arg-type]
    assert DEFAULT_TTL - 5 <= store.ttl("a") <= DEFAULT_TTL  # type: ignore[operator]
    assert 55 <= store.ttl("b") <= 60  # type: ignore[operator]
    assert store.set_many(iter([])) == 0


def test_set_many_without_stamp_keeps_last_activity(store: ISessionStore) -> None:
    assert store.set_many(iter([("a", {"last_activity": OLD_STAMP}, None)]), stamp=False) == 1
    assert store.get("a") == {"last_activity": OLD_STAMP}


def test_set_many_with_index_lists_user_sessions_as_create_does(store: ISessionStore) -> None:
    made = store.create("u9", {"n": 0})
    assert store.set_many([("s1", {**SESSION, "user_id": "u9"}, None), ("s2", {"n": 1}, None)], index=True) == 2
    assert store.sessions_for_user("u9") == ["s1", made]  # s1's created_at (an hour ago) orders it first
    assert store.delete_user_sessions("u9") == 2
    assert store.get("s1") is None and store.get("s2") is not None
    assert store.set_many([("s3", {"user_id": "u8"}, None)]) == 1
    assert store.sessions_for_user("u8") == []  # without index=True, as set: not listed


@pytest.mark.parametrize(
    "bad", [("", {"v": 1}, None), ("k", ["not", "a", "dict"], None), ("k", {"v": 1}, 0), ("k", {"v": {1, 2}}, None)]
)
def test_set_many_with_one_bad_item_writes_none(store: ISessionStore, bad: tuple[Any, Any, Any]) -> None:
    with pytest.raises((FmRedisError, ValueError, TypeError)):
        store.set_many([("first", {"v": 1}, None), bad, ("last", {"v": 2}, None)])
    assert store.get_many(["first", "last", "k"]) == {}


# --- bad input: a clear error, and nothing written ------------------------------------------------------------------


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_bad_keys_are_refused_by_every_method(store: ISessionStore, key: Any) -> None:
    calls = [
        lambda: store.get(key),
        lambda: store.set(key, {"v": 1}),
        lambda: store.delete(key),
        lambda: store.exists(key),
        lambda: store.extend_ttl(key),
        lambda: store.ttl(key),
        lambda: store.get_many(["fine", key]),
        lambda: store.delete_many(["fine", key]),
    ]
    store.set("fine", {"v": 0})
    for call in calls:
        with pytest.raises(InvalidKeyError) as info:
            call()
        assert isinstance(info.value, (ValueError, FmRedisError))
    assert store.get("fine") is not None  # delete_many checked every key before deleting any


def test_a_single_str_is_not_taken_for_a_list_of_keys(store: ISessionStore) -> None:
    store.set("a", {})
    with pytest.raises(InvalidKeyError):
        store.delete_many("abc")  # type: ignore[arg-type]
    assert store.exists("a")


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=repr)
def test_bad_ttls_are_refused_and_nothing_is_written(store: ISessionStore, ttl: Any) -> None:
    with pytest.raises(InvalidTTLError, match=r"^ttl ") as info:
        store.set("k", {"v": 1}, ttl=ttl)
    assert isinstance(info.value, ValueError)
    assert store.exists("k") is False
    store.set("k", {"v": 1}, ttl=100)
    with pytest.raises(InvalidTTLError):
        store.extend_ttl("k", ttl)
    assert 98 <= store.ttl("k") <= 100  # type: ignore[operator]


@pytest.mark.parametrize("value", BAD_VALUES, ids=lambda v: type(v).__name__ + ":" + repr(v)[:30])
def test_bad_values_raise_serialization_error_before_any_write(store: ISessionStore, value: Any) -> None:
    with pytest.raises(SerializationError) as info:
        store.set("new", value)
    assert isinstance(info.value, TypeError)
    assert store.exists("new") is False
    store.set("old", {"keep": True})
    with pytest.raises(SerializationError):
        store.set("old", value)
    assert store.get("old")["keep"] is True  # type: ignore[index]


# --- arbitrary JSON documents round-trip ----------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=st.dictionaries(st.text(), json_values, max_size=8))
def test_arbitrary_json_documents_round_trip(store: ISessionStore, document: dict[str, Any]) -> None:
    store.set("doc", document)
    got = store.get("doc")
    assert got is not None
    assert got == {**document, "last_activity": got["last_activity"]}  # a last_activity given is stamped over
    store.set("doc", document, stamp=False)
    assert store.get("doc") == document


# --- TTL rules ------------------------------------------------------------------------------------------------------

POLICY = SessionTTLManager()  # active_ttl 3600, max_ttl 7200


def test_the_ttl_rules_by_default(store: ISessionStore) -> None:
    assert store.ttl_rules == TTLRules(default_ttl=DEFAULT_TTL, max_ttl=MAX_TTL, ttl_policy=None, max_lifetime=None)


@pytest.mark.store_options(default_ttl=600, max_ttl=7200, ttl_policy=POLICY, max_lifetime=86_400)
def test_the_ttl_rules_are_the_options_the_store_was_built_with_and_are_kept(store: ISessionStore) -> None:
    assert store.ttl_rules == TTLRules(default_ttl=600, max_ttl=7200, ttl_policy=POLICY, max_lifetime=86_400)
    store.set("k", {"v": 1})  # stamped now: the policy's TTL for an active session
    assert POLICY.active_ttl - 2 <= store.ttl("k") <= POLICY.active_ttl  # type: ignore[operator]
    assert store.extend_ttl("k") is True  # no TTL: the default
    assert 598 <= store.ttl("k") <= 600  # type: ignore[operator]
    store.set("k", {"v": 1}, ttl=7200)
    with pytest.raises(InvalidTTLError, match="exceeds max_ttl 7200"):
        store.set("k", {"v": 1}, ttl=7201)


# --- construction: bad counts and durations are refused -------------------------------------------------------------

BAD_COUNTS: list[Any] = [0, -1, 1.5, True, "3"]
BAD_DURATIONS: list[Any] = [-1, -0.001, math.nan, math.inf, 86_401, 1e10, "5", True, None]
BAD_LIFETIMES: list[Any] = [0, -60, 1.5, True, "3600"]
CORE_OPTIONS: dict[str, tuple[Any, list[Any]]] = {
    "update_attempts": (3, [*BAD_COUNTS, None]),
    "max_sessions_per_user": (3, BAD_COUNTS),  # None: no cap
    "max_lifetime": (3600, BAD_LIFETIMES),  # None: off
}
#: For each kind of store, the counts and durations it takes itself: a value it accepts, and values it must refuse.
OWN_OPTIONS: dict[type[ISessionStore], dict[str, tuple[Any, list[Any]]]] = {
    RedisSessionStore: {**CORE_OPTIONS, "batch_size": (10, [*BAD_COUNTS, None])},
    InMemorySessionStore: {**CORE_OPTIONS, "max_entries": (10, [*BAD_COUNTS, None])},
    ResilientRedisSessionStore: {
        "attempts": (3, [*BAD_COUNTS, None]),
        "rebuild_after": (3, [*BAD_COUNTS, None]),
        "backoff_base": (0.01, BAD_DURATIONS),
        "backoff_cap": (0.5, BAD_DURATIONS),
        "deadline": (5, BAD_DURATIONS),
    },
    FallbackSessionStore: {"probe_interval": (5, BAD_DURATIONS), "max_entries": (10, BAD_COUNTS)},  # None: default
}


def build_like(store: ISessionStore, **options: Any) -> ISessionStore:
    """A new store of ``store``'s kind built with ``options``: a Redis store on the same client, a wrapper around
    ``store`` itself."""
    if isinstance(store, RedisSessionStore):
        return RedisSessionStore(store.client, **options)
    if isinstance(store, InMemorySessionStore):
        return InMemorySessionStore(**options)
    return type(store)(store, **options)  # type: ignore[call-arg]


def test_bad_counts_and_durations_are_refused_with_an_error_naming_them(store: ISessionStore) -> None:
    [options] = [table for kind, table in OWN_OPTIONS.items() if isinstance(store, kind)]
    for name, (good, bad_values) in options.items():
        assert isinstance(build_like(store, **{name: good}), type(store))  # the control: a value in range is taken
        for bad in bad_values:
            with pytest.raises((ValueError, TypeError), match=rf"^{name} must be "):
                build_like(store, **{name: bad})


# --- close ----------------------------------------------------------------------------------------------------------


class Boom(Exception):
    pass


def test_with_closes_the_store_and_closing_again_is_harmless(
    store: ISessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    closes: list[str] = []
    close = store.close

    def counted_close() -> None:
        closes.append("close")
        close()

    monkeypatch.setattr(store, "close", counted_close)
    with store as entered:
        assert entered is store
        store.set("k", {"v": 1})
        assert closes == []
    assert closes == ["close"]
    with pytest.raises(Boom), store:  # an error inside: closed all the same, and the error is not swallowed
        raise Boom
    assert closes == ["close", "close"]
    close()  # a third time, straight: harmless too
