"""The session lifecycle promises every ISessionStore keeps (sliding expiry, the lifetime cap, atomic updates, create,
regenerate, the per-user index, counters), run against each store (the ``store`` fixture in conftest.py).

Nothing here waits for time to pass (four stores times a one-second TTL would double the file's run time): expiry,
and a stored session reaching its lifetime, are left to the store-specific suites, which can inject a clock. So is the
TTL policy: the ``store`` fixture's stores are built without one (test_redis_lifecycle.py and test_ttl_policy.py build
their own). The lifetime cap is off by default; the tests of it turn it on with the ``store_options`` marker.
"""

from __future__ import annotations

import copy
import functools
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from fmredis import (
    MAX_KEY_LENGTH,
    InMemorySessionStore,
    InvalidKeyError,
    InvalidTTLError,
    ISessionStore,
    RedisSessionStore,
    SerializationError,
    SessionExpired,
    SessionNotFound,
    lifecycle,
)
from fmredis.lifecycle import session_ref

MAX_TTL = 86_400  # every store under test (the ``store`` fixture in conftest.py) has the default max_ttl
DEFAULT_TTL = 1800  # and default_ttl
MAX_LIFETIME = 86_400  # the lifetime the tests of the cap turn on (it is off by default)
#: Builds every store of a test with the lifetime cap on.
LIFETIME_CAP = pytest.mark.store_options(max_lifetime=MAX_LIFETIME)
ID_LENGTH = 43  # 256 random bits, URL-safe base64
SLACK = timedelta(seconds=1)  # clock and round-trip allowance when checking that a stamp is "now"
OLD_STAMP = "2025-01-15T10:35:22.456Z"  # a last_activity long past

BAD_USER_IDS: list[Any] = [None, b"bytes", "", "u" * (MAX_KEY_LENGTH + 1), 42, ("a",)]
BAD_KEYS: list[Any] = [None, b"bytes-key", "", "k" * (MAX_KEY_LENGTH + 1), 42]
BAD_TTLS: list[Any] = [0, -1, 1.5, "60", True, MAX_TTL + 1]
NOT_DOCUMENTS: list[Any] = [None, ["a", "list"], "a string", 42, {"tags": {"a", "set"}}, {"nan": float("nan")}]
CREATED_AT_FORMS = ["aware", "Z", "naive", "offset"]


# --- helpers --------------------------------------------------------------------------------------------------------


def now() -> datetime:
    return datetime.now(timezone.utc)


def stamp(moment: datetime, form: str) -> str:
    """``moment`` (aware UTC) as ISO-8601 text in one of the forms a stored ``created_at`` may take."""
    if form == "aware":
        return moment.isoformat()  # 2026-01-01T10:00:00.123456+00:00
    if form == "Z":
        return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"
    if form == "naive":
        return moment.replace(tzinfo=None).isoformat()  # naive means UTC
    assert form == "offset"
    return moment.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()


def parse_stamp(value: object) -> datetime:
    """A stored timestamp, which must be aware UTC ISO-8601 text (``Z`` accepted on Python 3.10 too)."""
    assert isinstance(value, str), f"expected an ISO-8601 str, got {type(value).__name__}: {value!r}"
    parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    assert parsed.tzinfo is not None, f"naive timestamp {value!r}"
    assert parsed.utcoffset() == timedelta(0), f"not UTC: {value!r}"
    return parsed


def assert_recent(value: object, since: datetime) -> datetime:
    parsed = parse_stamp(value)
    assert since - SLACK <= parsed <= now() + SLACK, f"{value!r} is not the time of the call ({since.isoformat()})"
    return parsed


def ttl_of(store: ISessionStore, key: str) -> int:
    seconds = store.ttl(key)
    assert seconds is not None, f"session {key!r} is gone"
    return seconds


def near_cap(seconds_left: float) -> datetime:
    """A ``created_at`` that leaves the session ``seconds_left`` seconds of its lifetime."""
    return now() - timedelta(seconds=MAX_LIFETIME - seconds_left)


def stored(store: ISessionStore, key: str) -> dict[str, Any]:
    session = store.get(key)
    assert session is not None, f"session {key!r} is gone"
    return session


def assert_unchanged(store: ISessionStore, key: str, before: dict[str, Any], ttl_low: int, ttl_high: int) -> None:
    assert store.get(key) == before
    assert ttl_low <= ttl_of(store, key) <= ttl_high


def _append(tag: str, session: dict[str, Any]) -> dict[str, Any]:
    """Side-effect free, as update requires: a new list every call."""
    return {**session, "items": [*session["items"], tag]}


def _returning(result: object, session: dict[str, Any]) -> Any:
    return result


class Recorder:
    """An update function that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, session: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        return {**session, "changed": True}


class Boom(Exception):
    pass


# --- touch and get(refresh=True): sliding expiry ---------------------------------------------------------------------


def test_touch_restarts_the_default_ttl_of_a_live_session(store: ISessionStore) -> None:
    store.set("k", {"v": 1}, ttl=60)
    assert store.touch("k") is True
    assert DEFAULT_TTL - 2 <= ttl_of(store, "k") <= DEFAULT_TTL


def test_touch_with_a_ttl_uses_it(store: ISessionStore) -> None:
    store.set("k", {"v": 1}, ttl=60)
    assert store.touch("k", ttl=120) is True
    assert 119 <= ttl_of(store, "k") <= 120
    assert store.touch("k", 30) is True  # shorter works too: the expiry is restarted, not only extended
    assert 29 <= ttl_of(store, "k") <= 30


def test_touch_of_a_missing_session_is_false_and_creates_nothing(store: ISessionStore) -> None:
    assert store.touch("missing") is False
    assert store.touch("missing", ttl=120) is False
    assert store.exists("missing") is False
    assert store.ttl("missing") is None


def test_touch_never_changes_the_document(store: ISessionStore) -> None:
    store.set("k", {"user_id": "u", "cart": [1, 2]}, ttl=60)  # last_activity stamped by set
    before = stored(store, "k")
    time.sleep(0.002)  # a stamp taken by touch would differ from set's
    assert store.touch("k") is True
    assert store.touch("k", ttl=90) is True
    after = stored(store, "k")
    assert after == before
    assert after["last_activity"] == before["last_activity"]


def test_get_with_refresh_returns_the_document_and_restarts_the_ttl(store: ISessionStore) -> None:
    store.set("k", {"user_id": "u", "cart": [1, 2]}, ttl=60)
    plain = stored(store, "k")
    time.sleep(0.002)
    refreshed = store.get("k", refresh=True)
    assert refreshed == plain
    assert DEFAULT_TTL - 2 <= ttl_of(store, "k") <= DEFAULT_TTL
    assert stored(store, "k") == plain  # no last_activity stamp either


def test_get_without_refresh_leaves_the_ttl_alone(store: ISessionStore) -> None:
    store.set("k", {"v": 1}, ttl=60)
    assert store.get("k") is not None
    assert store.get("k", refresh=False) is not None
    assert 58 <= ttl_of(store, "k") <= 60


def test_refresh_of_a_missing_session_is_none_and_creates_nothing(store: ISessionStore) -> None:
    assert store.get("missing", refresh=True) is None
    assert store.exists("missing") is False


def test_touch_refuses_a_bad_ttl_and_changes_nothing(store: ISessionStore) -> None:
    store.set("k", {"v": 1}, ttl=60)
    for ttl in BAD_TTLS:
        with pytest.raises(InvalidTTLError):
            store.touch("k", ttl=ttl)
        with pytest.raises(InvalidTTLError):
            store.touch("missing", ttl=ttl)
    assert 58 <= ttl_of(store, "k") <= 60


def test_lifecycle_methods_refuse_bad_keys(store: ISessionStore) -> None:
    for key in BAD_KEYS:
        with pytest.raises(InvalidKeyError):
            store.get(key, refresh=True)
        with pytest.raises(InvalidKeyError):
            store.touch(key)
        with pytest.raises(InvalidKeyError):
            store.update(key, lambda session: session)
        with pytest.raises(InvalidKeyError):
            store.regenerate(key)


# --- the lifetime cap -----------------------------------------------------------------------------------------------


@LIFETIME_CAP
@pytest.mark.parametrize("form", CREATED_AT_FORMS)
def test_lifetime_cap_counts_every_created_at_form(store: ISessionStore, form: str) -> None:
    doc = {"user_id": "u", "created_at": stamp(near_cap(30), form)}
    store.set("k", doc)
    assert 25 <= ttl_of(store, "k") <= 30
    assert store.touch("k") is True
    assert 25 <= ttl_of(store, "k") <= 30
    assert store.get("k", refresh=True) is not None
    assert 25 <= ttl_of(store, "k") <= 30
    assert store.extend_ttl("k") is True
    assert 25 <= ttl_of(store, "k") <= 30


def _set(store: ISessionStore, key: str) -> str:
    store.set(key, stored(store, key))
    return key


def _set_ttl(store: ISessionStore, key: str) -> str:
    store.set(key, stored(store, key), ttl=600)
    return key


def _touch(store: ISessionStore, key: str) -> str:
    assert store.touch(key) is True
    return key


def _touch_ttl(store: ISessionStore, key: str) -> str:
    assert store.touch(key, ttl=600) is True
    return key


def _refresh(store: ISessionStore, key: str) -> str:
    assert store.get(key, refresh=True) is not None
    return key


def _extend(store: ISessionStore, key: str) -> str:
    assert store.extend_ttl(key) is True
    return key


def _extend_ttl(store: ISessionStore, key: str) -> str:
    assert store.extend_ttl(key, ttl=600) is True
    return key


def _update(store: ISessionStore, key: str) -> str:
    store.update(key, lambda session: {**session, "n": 1})
    return key


def _update_ttl(store: ISessionStore, key: str) -> str:
    store.update(key, lambda session: {**session, "n": 1}, ttl=600)
    return key


def _regenerate(store: ISessionStore, key: str) -> str:
    return store.regenerate(key)


CAPPED_OPERATIONS = [
    _set,
    _set_ttl,
    _touch,
    _touch_ttl,
    _refresh,
    _extend,
    _extend_ttl,
    _update,
    _update_ttl,
    _regenerate,
]


@LIFETIME_CAP
@pytest.mark.parametrize("operation", CAPPED_OPERATIONS, ids=lambda op: op.__name__.lstrip("_"))
def test_every_write_and_refresh_is_cut_to_the_lifetime_left(
    store: ISessionStore, operation: Callable[[ISessionStore, str], str]
) -> None:
    store.set("k", {"user_id": "u", "created_at": stamp(near_cap(30), "Z")}, ttl=5)  # anything but the cap
    key = operation(store, "k")
    assert 25 <= ttl_of(store, key) <= 30


@LIFETIME_CAP
def test_extend_ttl_is_cut_to_the_lifetime_like_touch(store: ISessionStore) -> None:
    store.set("k", {"user_id": "u", "created_at": stamp(near_cap(30), "aware")}, ttl=5)
    assert store.extend_ttl("k", ttl=MAX_TTL) is True
    assert 25 <= ttl_of(store, "k") <= 30
    store.set("k", {"user_id": "u", "created_at": stamp(near_cap(30), "aware")}, ttl=5)
    assert store.touch("k", ttl=MAX_TTL) is True
    assert 25 <= ttl_of(store, "k") <= 30
    # the control: the same session an hour younger takes the whole TTL asked for
    store.set("young", {"user_id": "u", "created_at": stamp(near_cap(3600), "aware")}, ttl=5)
    assert store.extend_ttl("young", ttl=600) is True
    assert 598 <= ttl_of(store, "young") <= 600


def test_extend_ttl_of_a_missing_session_is_false_and_creates_nothing(store: ISessionStore) -> None:
    assert store.extend_ttl("missing") is False
    assert store.extend_ttl("missing", ttl=120) is False
    assert store.exists("missing") is False


@LIFETIME_CAP
@pytest.mark.parametrize("form", CREATED_AT_FORMS)
def test_set_past_the_lifetime_raises_session_expired_and_leaves_no_session(store: ISessionStore, form: str) -> None:
    for ttl in (None, 60):
        store.set("k", {"user_id": "u"})  # a session there already is removed, not kept
        value = {"user_id": "u", "created_at": stamp(near_cap(-60), form)}
        pristine = copy.deepcopy(value)
        with pytest.raises(SessionExpired) as info:
            store.set("k", value, ttl=ttl)
        assert isinstance(info.value, SessionNotFound) and isinstance(info.value, KeyError)
        assert str(info.value).startswith(f"Session {session_ref('k')} has passed its lifetime")  # no KeyError quotes
        assert value == pristine
        assert store.get("k") is None
        assert store.exists("k") is False
        assert store.ttl("k") is None
        assert store.get("k", refresh=True) is None
        assert store.touch("k") is False
        assert store.extend_ttl("k") is False
        assert store.exists("k") is False


@LIFETIME_CAP
def test_set_past_the_lifetime_of_a_missing_key_raises_and_creates_nothing(store: ISessionStore) -> None:
    with pytest.raises(SessionExpired):
        store.set("never", {"user_id": "u", "created_at": stamp(near_cap(-60), "aware")})
    assert store.exists("never") is False
    assert store.ttl("never") is None
    store.set("never", {"user_id": "u", "created_at": stamp(near_cap(60), "aware")})  # the control: inside it works
    assert store.exists("never") is True


@LIFETIME_CAP
@pytest.mark.parametrize("doc", [{"user_id": "u"}, {"user_id": "u", "created_at": "not a date"}], ids=["none", "junk"])
def test_a_session_without_a_readable_created_at_is_not_capped(store: ISessionStore, doc: dict[str, Any]) -> None:
    store.set("k", doc, ttl=MAX_TTL)
    assert ttl_of(store, "k") >= MAX_TTL - 2
    assert store.touch("k", ttl=MAX_TTL) is True
    assert ttl_of(store, "k") >= MAX_TTL - 2
    assert store.extend_ttl("k", ttl=MAX_TTL) is True
    assert ttl_of(store, "k") >= MAX_TTL - 2
    # The same with an hour-old created_at is capped: the test above could fail.
    store.set("old", {**doc, "created_at": stamp(now() - timedelta(hours=1), "aware")}, ttl=MAX_TTL)
    assert ttl_of(store, "old") <= MAX_LIFETIME - 3600
    assert store.touch("old", ttl=MAX_TTL) is True
    assert ttl_of(store, "old") <= MAX_LIFETIME - 3600
    assert store.extend_ttl("old", ttl=MAX_TTL) is True
    assert ttl_of(store, "old") <= MAX_LIFETIME - 3600


#: What each write and refresh of CAPPED_OPERATIONS gives a session when no lifetime cap cuts it.
UNCAPPED_TTLS = {
    _set: DEFAULT_TTL,
    _set_ttl: 600,
    _touch: DEFAULT_TTL,
    _touch_ttl: 600,
    _refresh: DEFAULT_TTL,
    _extend: DEFAULT_TTL,
    _extend_ttl: 600,
    _update: DEFAULT_TTL,
    _update_ttl: 600,
    _regenerate: DEFAULT_TTL,
}


def years_ago() -> str:
    return stamp(now() - timedelta(days=3 * 365), "aware")


@pytest.mark.parametrize(
    ("operation", "expected"), UNCAPPED_TTLS.items(), ids=[op.__name__.lstrip("_") for op in UNCAPPED_TTLS]
)
def test_without_a_lifetime_cap_a_years_old_session_gets_the_ttl_asked_for(
    store: ISessionStore, operation: Callable[[ISessionStore, str], str], expected: int
) -> None:
    """max_lifetime is off by default: a document created years ago is written, refreshed and read back as any other."""
    assert store.ttl_rules.max_lifetime is None
    created_at = years_ago()
    store.set("k", {"user_id": "u", "created_at": created_at}, ttl=5)
    key = operation(store, "k")
    assert expected - 2 <= ttl_of(store, key) <= expected
    assert stored(store, key)["created_at"] == created_at


@LIFETIME_CAP
def test_with_a_lifetime_cap_the_same_years_old_session_is_refused(store: ISessionStore) -> None:
    """The control for the test above: with the cap on, the same write raises and stores nothing."""
    with pytest.raises(SessionExpired):
        store.set("k", {"user_id": "u", "created_at": years_ago()}, ttl=5)
    assert store.exists("k") is False


# --- every write stamps last_activity --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "write", [_set, _set_ttl, _update, _update_ttl, _regenerate], ids=lambda op: op.__name__.lstrip("_")
)
def test_every_write_stamps_last_activity_with_now(
    store: ISessionStore, write: Callable[[ISessionStore, str], str]
) -> None:
    store.set("k", {"user_id": "u", "last_activity": OLD_STAMP}, stamp=False)
    assert stored(store, "k")["last_activity"] == OLD_STAMP
    since = now()
    key = write(store, "k")  # set and update write back the document read, old stamp included
    assert_recent(stored(store, key)["last_activity"], since)


# --- update: atomic read-modify-write -------------------------------------------------------------------------------


def test_update_applies_fn_and_returns_the_document_written(store: ISessionStore) -> None:
    store.set("k", {"user_id": "u", "count": 1, "last_activity": OLD_STAMP}, stamp=False)
    before = now()
    written = store.update("k", lambda session: {**session, "count": session["count"] + 1, "new": [1]})
    after = stored(store, "k")
    assert written == after
    assert {k: v for k, v in after.items() if k != "last_activity"} == {"user_id": "u", "count": 2, "new": [1]}
    assert_recent(after["last_activity"], before)
    written["count"] = 99  # the caller's copy, not the store's
    assert stored(store, "k")["count"] == 2


def test_update_stamps_last_activity_newer_than_before(store: ISessionStore) -> None:
    store.set("k", {"v": 1})
    first = parse_stamp(stored(store, "k")["last_activity"])
    time.sleep(0.002)
    before = now()
    store.update("k", lambda session: session)  # even an unchanged document is stamped
    second = assert_recent(stored(store, "k")["last_activity"], before)
    assert second > first


def test_update_fn_gets_a_copy(store: ISessionStore) -> None:
    store.set("k", {"user_id": "u", "cart": [1]}, ttl=60)
    before = stored(store, "k")

    def spoil(session: dict[str, Any]) -> dict[str, Any]:
        session["cart"].append(2)
        session["evil"] = True
        del session["user_id"]
        raise Boom

    with pytest.raises(Boom):
        store.update("k", spoil)
    assert_unchanged(store, "k", before, 58, 60)


def test_update_propagates_what_fn_raises_and_writes_nothing(store: ISessionStore) -> None:
    store.set("k", {"v": 1}, ttl=60)
    before = stored(store, "k")
    boom = Boom("from fn")

    def fail(session: dict[str, Any]) -> dict[str, Any]:
        raise boom

    with pytest.raises(Boom) as info:
        store.update("k", fail)
    assert info.value is boom
    assert_unchanged(store, "k", before, 58, 60)


def test_update_of_a_missing_session_raises_session_not_found_and_creates_nothing(store: ISessionStore) -> None:
    with pytest.raises(SessionNotFound) as info:
        store.update("missing", lambda session: {**session, "v": 1})
    assert isinstance(info.value, KeyError) and not isinstance(info.value, SessionExpired)
    assert str(info.value) == f"No session {session_ref('missing')} to update: nothing was written."  # a sentence
    assert store.exists("missing") is False
    assert store.get("missing") is None


def test_update_fn_returning_no_document_raises_serialization_error(store: ISessionStore) -> None:
    store.set("k", {"v": 1}, ttl=60)
    before = stored(store, "k")
    for result in NOT_DOCUMENTS:
        with pytest.raises(SerializationError):
            store.update("k", functools.partial(_returning, result))
        assert_unchanged(store, "k", before, 58, 60)


PROTECTED_FIELD_CHANGES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "change created_at": lambda s: {**s, "created_at": "2099-01-01T00:00:00+00:00"},
    "remove created_at": lambda s: {k: v for k, v in s.items() if k != "created_at"},
    "null created_at": lambda s: {**s, "created_at": None},
    "change user_id": lambda s: {**s, "user_id": "mallory"},
    "remove user_id": lambda s: {k: v for k, v in s.items() if k != "user_id"},
}


def test_update_may_not_change_created_at_or_user_id(store: ISessionStore) -> None:
    sid = store.create("alice", {"cart": []}, ttl=60)
    before = stored(store, sid)
    for name, fn in PROTECTED_FIELD_CHANGES.items():
        try:
            store.update(sid, fn)
        except ValueError:
            pass
        else:
            pytest.fail(f"update allowed: {name}")
        assert_unchanged(store, sid, before, 58, 60)
    assert store.sessions_for_user("alice") == [sid]
    assert store.sessions_for_user("mallory") == []


def test_update_ttl_argument_and_default(store: ISessionStore) -> None:
    store.set("k", {"v": 1}, ttl=60)
    store.update("k", lambda session: {**session, "v": 2}, ttl=120)
    assert 119 <= ttl_of(store, "k") <= 120
    store.update("k", lambda session: {**session, "v": 3})  # no ttl: as set, the default
    assert DEFAULT_TTL - 2 <= ttl_of(store, "k") <= DEFAULT_TTL
    assert stored(store, "k")["v"] == 3


def test_update_refuses_a_bad_ttl_before_calling_fn(store: ISessionStore) -> None:
    store.set("k", {"v": 1}, ttl=60)
    before = stored(store, "k")
    fn = Recorder()
    for ttl in BAD_TTLS:
        with pytest.raises(InvalidTTLError):
            store.update("k", fn, ttl=ttl)
        assert fn.calls == 0, f"fn called before ttl={ttl!r} was refused"
    assert_unchanged(store, "k", before, 58, 60)
    store.update("k", fn, ttl=60)  # the same fn, with a good ttl: the test above could fail
    assert fn.calls == 1


def test_concurrent_updates_lose_nothing(store: ISessionStore) -> None:
    threads, per_thread = 16, 25
    store.set("shared", {"items": []})
    start = threading.Barrier(threads, timeout=10)

    def work(n: int) -> None:
        start.wait()
        for i in range(per_thread):
            store.update("shared", functools.partial(_append, f"{n}:{i}"))

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(work, n) for n in range(threads)]:
            future.result()
    items = stored(store, "shared")["items"]
    expected = [f"{n}:{i}" for n in range(threads) for i in range(per_thread)]
    assert len(items) == len(expected) == 400
    assert sorted(items) == sorted(expected)  # every append present, none twice
    for n in range(threads):  # and each thread's own updates in the order it made them
        assert [item for item in items if item.startswith(f"{n}:")] == [f"{n}:{i}" for i in range(per_thread)]


# --- create ---------------------------------------------------------------------------------------------------------


def test_create_returns_a_long_random_id(store: ISessionStore) -> None:
    ids = [store.create("alice", {}) for _ in range(1000)]
    assert all(isinstance(sid, str) and len(sid) >= ID_LENGTH for sid in ids)
    assert len(set(ids)) == 1000


def test_create_stores_data_plus_user_id_created_at_and_last_activity(store: ISessionStore) -> None:
    data = {"cart": [1, 2], "prefs": {"theme": "dark"}}
    pristine = copy.deepcopy(data)
    before = now()
    sid = store.create("alice", data)
    assert data == pristine
    doc = stored(store, sid)
    assert set(doc) == {"cart", "prefs", "user_id", "created_at", "last_activity"}
    assert doc["user_id"] == "alice"
    assert {k: doc[k] for k in data} == pristine
    assert_recent(doc["created_at"], before)
    assert_recent(doc["last_activity"], before)
    assert DEFAULT_TTL - 2 <= ttl_of(store, sid) <= DEFAULT_TTL


def test_create_stamps_its_own_created_at_and_last_activity(store: ISessionStore) -> None:
    """A caller cannot forge created_at (a future one would escape the lifetime cap)."""
    data = {"created_at": "2099-01-01T00:00:00+00:00", "last_activity": "2000-01-01T00:00:00+00:00", "v": 1}
    before = now()
    sid = store.create("alice", data)
    doc = stored(store, sid)
    assert_recent(doc["created_at"], before)
    assert_recent(doc["last_activity"], before)
    assert data["created_at"] == "2099-01-01T00:00:00+00:00"


def test_create_accepts_data_naming_the_same_user(store: ISessionStore) -> None:
    sid = store.create("alice", {"user_id": "alice", "v": 1})
    assert stored(store, sid)["user_id"] == "alice"
    assert store.sessions_for_user("alice") == [sid]


def test_create_refuses_data_naming_another_user(store: ISessionStore) -> None:
    with pytest.raises(ValueError):
        store.create("alice", {"user_id": "bob"})
    assert store.sessions_for_user("alice") == []
    assert store.sessions_for_user("bob") == []


def test_bad_user_ids_are_refused(store: ISessionStore) -> None:
    for user_id in BAD_USER_IDS:
        with pytest.raises(InvalidKeyError):
            store.create(user_id, {})
        with pytest.raises(InvalidKeyError):
            store.sessions_for_user(user_id)
        with pytest.raises(InvalidKeyError):
            store.delete_user_sessions(user_id)


def test_create_refuses_data_that_is_no_document(store: ISessionStore) -> None:
    for data in NOT_DOCUMENTS:
        with pytest.raises(SerializationError):
            store.create("alice", data)
    assert store.sessions_for_user("alice") == []


def test_create_refuses_a_bad_ttl(store: ISessionStore) -> None:
    for ttl in BAD_TTLS:
        with pytest.raises(InvalidTTLError):
            store.create("alice", {}, ttl=ttl)
    assert store.sessions_for_user("alice") == []


def test_create_honours_ttl(store: ISessionStore) -> None:
    sid = store.create("alice", {}, ttl=120)
    assert 119 <= ttl_of(store, sid) <= 120


# --- regenerate -----------------------------------------------------------------------------------------------------


def test_regenerate_moves_the_session_to_a_new_id(store: ISessionStore) -> None:
    old = store.create("alice", {"cart": [1]})
    before = stored(store, old)
    time.sleep(0.002)
    since = now()
    new = store.regenerate(old)
    assert isinstance(new, str)
    assert len(new) >= ID_LENGTH
    assert new != old
    assert store.get(old) is None
    assert store.exists(old) is False
    after = stored(store, new)
    assert {k: v for k, v in after.items() if k != "last_activity"} == {
        k: v for k, v in before.items() if k != "last_activity"
    }
    assert after["created_at"] == before["created_at"]
    assert assert_recent(after["last_activity"], since) > parse_stamp(before["last_activity"])
    assert store.sessions_for_user("alice") == [new]


def test_regenerated_session_keeps_its_place_oldest_first(store: ISessionStore) -> None:
    first = store.create("alice", {"n": 1})
    second = store.create("alice", {"n": 2})
    renewed = store.regenerate(first)
    assert store.sessions_for_user("alice") == [renewed, second]  # created_at, and so the order, followed


def test_regenerate_of_a_missing_session_raises_session_not_found(store: ISessionStore) -> None:
    kept = store.create("alice", {})
    with pytest.raises(SessionNotFound):
        store.regenerate("missing")
    assert store.exists("missing") is False
    assert store.sessions_for_user("alice") == [kept]


def test_regenerate_works_on_a_session_stored_with_set(store: ISessionStore) -> None:
    store.set("plain", {"v": 1, "last_activity": OLD_STAMP}, stamp=False)
    since = now()
    new = store.regenerate("plain")
    assert new != "plain"
    assert len(new) >= ID_LENGTH
    assert store.exists("plain") is False
    after = stored(store, new)
    assert after["v"] == 1
    assert set(after) == {"v", "last_activity"}
    assert_recent(after["last_activity"], since)


def test_regenerate_of_a_set_session_naming_a_user_indexes_the_new_id(store: ISessionStore) -> None:
    store.set("legacy", {"user_id": "carol", "created_at": stamp(now(), "aware")})
    new = store.regenerate("legacy")
    assert store.sessions_for_user("carol") == [new]


# --- sessions_for_user and delete_user_sessions ---------------------------------------------------------------------


def test_sessions_for_user_lists_oldest_first(store: ISessionStore) -> None:
    ids = [store.create("alice", {"n": n}) for n in range(6)]
    assert store.sessions_for_user("alice") == ids


def test_sessions_for_user_of_an_unknown_user_is_empty(store: ISessionStore) -> None:
    assert store.sessions_for_user("nobody") == []
    assert store.delete_user_sessions("nobody") == 0


def test_sessions_for_user_never_lists_a_deleted_session(store: ISessionStore) -> None:
    ids = [store.create("alice", {"n": n}) for n in range(5)]
    assert store.delete(ids[1]) is True
    assert store.delete_many([ids[3], "unrelated"]) == 1
    assert store.sessions_for_user("alice") == [ids[0], ids[2], ids[4]]


def test_users_are_isolated(store: ISessionStore) -> None:
    alice = [store.create("alice", {}) for _ in range(3)]
    bob = [store.create("bob", {}) for _ in range(2)]
    assert store.sessions_for_user("alice") == alice
    assert store.sessions_for_user("bob") == bob
    assert store.sessions_for_user("ali") == []  # no prefix matching


def test_delete_user_sessions_removes_the_users_live_sessions_only(store: ISessionStore) -> None:
    alice = [store.create("alice", {}) for _ in range(4)]
    bob = [store.create("bob", {}) for _ in range(2)]
    store.set("unindexed", {"user_id": "alice"})
    assert store.delete(alice[0]) is True
    assert store.delete_user_sessions("alice") == 3
    assert not any(store.exists(sid) for sid in alice)
    assert store.sessions_for_user("alice") == []
    assert store.sessions_for_user("bob") == bob
    assert all(store.exists(sid) for sid in bob)
    assert store.exists("unindexed") is True  # made by set, not create: not in the user's index
    assert store.delete_user_sessions("alice") == 0
    again = store.create("alice", {})  # a user can log in again afterwards
    assert store.sessions_for_user("alice") == [again]


def test_concurrent_creates_and_deletes_leave_exactly_the_survivors_listed(store: ISessionStore) -> None:
    creators, per_creator, deleters = 8, 20, 4
    handoff: queue.Queue[str | None] = queue.Queue()
    start = threading.Barrier(creators + deleters, timeout=10)

    def create(n: int) -> list[str]:
        start.wait()
        made = []
        for i in range(per_creator):
            sid = store.create("shared", {"creator": n, "i": i})
            made.append(sid)
            if i % 2 == 0:
                handoff.put(sid)
        return made

    def delete() -> list[str]:
        start.wait()
        gone = []
        while (sid := handoff.get(timeout=20)) is not None:
            assert store.delete(sid) is True
            gone.append(sid)
        return gone

    with ThreadPoolExecutor(creators + deleters) as pool:
        deleting = [pool.submit(delete) for _ in range(deleters)]
        creating = [pool.submit(create, n) for n in range(creators)]
        try:
            made = [sid for future in creating for sid in future.result()]
        finally:
            for _ in range(deleters):
                handoff.put(None)
        gone = [sid for future in deleting for sid in future.result()]
    assert len(set(made)) == len(made) == creators * per_creator
    assert len(set(gone)) == len(gone) == creators * per_creator // 2
    listed = store.sessions_for_user("shared")
    assert len(listed) == len(set(listed))
    assert set(listed) == set(made) - set(gone)


# --- the per-user cap ----------------------------------------------------------------------------------------------


def create_on_a_clock_ahead(store: ISessionStore, monkeypatch: pytest.MonkeyPatch) -> str:
    """A session of alice's made by another worker whose clock runs 2 minutes ahead (index entries are scored by the
    creating worker's clock)."""
    with monkeypatch.context() as patched:
        patched.setattr(lifecycle, "utc_now", lambda: now() + timedelta(minutes=2))
        return store.create("alice", {"worker": "ahead"})


def trim_by_creation_time_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put back the naive trim, which removes the user's oldest entries by score beyond the newest ``keep``, the
    session just made among them: that is the fixed trim asked to spare no session and to keep one more."""
    for kind in (RedisSessionStore, InMemorySessionStore):
        spares = kind._trim_user
        monkeypatch.setattr(
            kind, "_trim_user", lambda self, user_id, keep, spare, trim=spares: trim(self, user_id, keep + 1, "")
        )


@pytest.mark.store_options(max_sessions_per_user=1)
def test_the_per_user_cap_never_removes_the_session_just_made(
    store: ISessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ahead = create_on_a_clock_ahead(store, monkeypatch)
    made = store.create("alice", {"worker": "this"})  # scored 2 minutes before the other: the "oldest"
    assert store.exists(made)
    assert store.sessions_for_user("alice") == [made]
    assert store.exists(ahead) is False


@pytest.mark.store_options(max_sessions_per_user=1)
def test_a_trim_by_creation_time_alone_would_remove_the_session_just_made(
    store: ISessionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    trim_by_creation_time_alone(monkeypatch)
    ahead = create_on_a_clock_ahead(store, monkeypatch)
    made = store.create("alice", {"worker": "this"})
    assert store.exists(made) is False  # create returned the id of a session already gone
    assert store.sessions_for_user("alice") == [ahead]


# --- stats ----------------------------------------------------------------------------------------------------------


def test_stats_has_the_documented_counters(store: ISessionStore) -> None:
    stats = store.stats()
    assert isinstance(stats, dict)
    for name in ("ops", "hits", "misses", "conflicts", "created"):
        assert type(stats[name]) is int, name
        assert stats[name] >= 0


def _delta(before: dict[str, int], after: dict[str, int], *names: str) -> dict[str, int]:
    return {name: after[name] - before[name] for name in names}


@pytest.mark.parametrize(
    ("call", "hits", "misses"),
    [
        (lambda s: s.get("present"), 1, 0),
        (lambda s: s.get("absent"), 0, 1),
        (lambda s: s.get("present", refresh=True), 1, 0),
        (lambda s: s.get("absent", refresh=True), 0, 1),
        (lambda s: s.touch("present"), 1, 0),
        (lambda s: s.touch("absent"), 0, 1),
        (lambda s: s.get_many(["present", "absent", "other"]), 1, 2),
    ],
    ids=["get-hit", "get-miss", "refresh-hit", "refresh-miss", "touch-hit", "touch-miss", "get_many"],
)
def test_reads_move_hits_and_misses_exactly(
    store: ISessionStore, call: Callable[[ISessionStore], object], hits: int, misses: int
) -> None:
    store.set("present", {"v": 1})
    before = store.stats()
    call(store)
    after = store.stats()
    assert _delta(before, after, "hits", "misses") == {"hits": hits, "misses": misses}
    assert after["ops"] > before["ops"]


def test_get_many_counts_a_hit_or_a_miss_per_key_asked_for_repeats_included(store: ISessionStore) -> None:
    store.set("a", {"v": 1})
    keys = ["a", "a", "missing"]
    before = store.stats()
    found = store.get_many(keys)
    after = store.stats()
    assert list(found) == ["a"]  # one entry for the key asked twice: counting entries (the naive count) gives 1 and 2
    assert _delta(before, after, "hits", "misses") == {"hits": 2, "misses": 1}
    for key in keys:  # the control: a get per key asked for counts the same
        store.get(key)
    assert _delta(after, store.stats(), "hits", "misses") == {"hits": 2, "misses": 1}


def test_create_and_regenerate_count_as_created(store: ISessionStore) -> None:
    before = store.stats()
    sid = store.create("alice", {})
    middle = store.stats()
    store.regenerate(sid)
    after = store.stats()
    assert middle["created"] - before["created"] == 1
    assert after["created"] - middle["created"] == 1
