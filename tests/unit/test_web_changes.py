"""fmredis.contrib.web on the in-memory store: what a save sends, and the merge that keeps concurrent changes."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from fmredis import InMemorySessionStore, SerializationError, SessionNotFound
from fmredis.contrib.web import DATA, WebSessions, changes, snapshot


def test_changes_finds_keys_set_changed_in_place_and_deleted() -> None:
    data: dict[str, Any] = {"cart": [1], "name": "a", "gone": True}
    before = snapshot(data)
    data["cart"].append(2)  # changed in place: no __setitem__ a framework could see
    data["new"] = {"x": 1}
    del data["gone"]
    changed, deleted = changes(before, data)
    assert changed == {"cart": [1, 2], "new": {"x": 1}}
    assert deleted == ["gone"]
    assert changes(snapshot(data), data) == ({}, [])


def test_a_value_that_is_not_json_names_the_key_never_the_value() -> None:
    class Secret:
        def __repr__(self) -> str:
            return "hunter2"

    with pytest.raises(SerializationError) as caught:
        changes({}, {"token": Secret()})
    assert "'token'" in str(caught.value) and "hunter2" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    with pytest.raises(SerializationError, match="session keys must be str"):
        snapshot({1: "a"})  # type: ignore[dict-item]


@pytest.fixture
def web() -> WebSessions:
    return WebSessions(InMemorySessionStore(default_ttl=600, max_ttl=3600))


def test_two_overlapping_saves_of_different_keys_both_stay(web: WebSessions) -> None:
    assert web.create("k" * 32, {"a": 0, "b": 0}, 600)
    first = web.load("k" * 32, lambda _data: 600)
    second = web.load("k" * 32, lambda _data: 600)
    assert first is not None and second is not None
    first.data["a"] = 1
    second.data["b"] = 2
    web.save("k" * 32, first.snapshot, first.data, 600)
    web.save("k" * 32, second.snapshot, second.data, 600)
    stored = web.store.get("k" * 32)
    assert stored is not None and stored[DATA] == {"a": 1, "b": 2}
    # The naive save (the whole session, last writer wins) loses the first request's change.
    web.store.set("k" * 32, {DATA: second.data}, 600)
    stored = web.store.get("k" * 32)
    assert stored is not None and stored[DATA] == {"a": 0, "b": 2}


def test_many_threads_incrementing_their_own_key_lose_nothing(web: WebSessions) -> None:
    key = "shared-session-key"
    web.create(key, {}, 600)
    rounds, threads = 50, 8

    def worker(name: str) -> None:
        for _ in range(rounds):
            loaded = web.load(key, lambda _data: 600)
            assert loaded is not None
            loaded.data[name] = loaded.data.get(name, 0) + 1
            web.save(key, loaded.snapshot, loaded.data, 600)

    pool = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    stored = web.store.get(key)
    assert stored is not None
    assert stored[DATA] == {f"t{i}": rounds for i in range(threads)}


def test_a_save_never_resurrects_a_deleted_session_and_a_no_change_save_writes_nothing(web: WebSessions) -> None:
    key = "session-to-log-out"
    web.create(key, {"a": 1}, 600)
    loaded = web.load(key, lambda _data: 600)
    assert loaded is not None
    stamp = web.store.get(key)["last_activity"]  # type: ignore[index]
    web.save(key, loaded.snapshot, loaded.data, 300)  # nothing changed: only the TTL is applied
    assert web.store.get(key)["last_activity"] == stamp  # type: ignore[index]
    assert 290 <= (web.store.ttl(key) or 0) <= 300
    web.delete(key)
    loaded.data["a"] = 2
    with pytest.raises(SessionNotFound):
        web.save(key, loaded.snapshot, loaded.data, 600)
    with pytest.raises(SessionNotFound):
        web.save(key, snapshot(loaded.data), loaded.data, 600)
    assert not web.exists(key)


def test_bad_and_foreign_keys_read_as_missing(web: WebSessions) -> None:
    assert web.load("", lambda _data: 600) is None
    assert web.load("x" * 10_000, lambda _data: 600) is None
    assert web.load(None, lambda _data: 600) is None
    web.store.set("made-by-the-store-api", {"user_id": "u"})
    assert web.load("made-by-the-store-api", lambda _data: 600) is None  # not a web session: never handed out


def test_an_expiry_in_the_past_removes_the_session(web: WebSessions) -> None:
    key = "expires-now"
    web.create(key, {"a": 1}, 600)
    assert web.load(key, lambda _data: 0) is None
    assert not web.store.exists(key)
    assert web.create(key, {"a": 1}, -5)  # expired at birth: nothing stored
    assert not web.store.exists(key)


def test_regenerate_lists_a_marked_session_under_its_user(web: WebSessions) -> None:
    key = "anonymous-session"
    web.create(key, {"cart": [1]}, 600)
    loaded = web.load(key, lambda _data: 600)
    assert loaded is not None
    web.save(key, loaded.snapshot, loaded.data, 600, user_id="u1")
    new_key = web.regenerate(key)
    assert not web.exists(key) and web.exists(new_key)
    assert web.store.sessions_for_user("u1") == [new_key]
    assert web.store.delete_user_sessions("u1") == 1
    web.create("other-session", {}, 600, user_id="u2")
    other = web.load("other-session", lambda _data: 600)
    assert other is not None
    with pytest.raises(ValueError, match="another user"):
        web.save("other-session", other.snapshot, other.data, 600, user_id="u3")
