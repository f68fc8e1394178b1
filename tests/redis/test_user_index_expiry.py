"""Without a lifetime cap a session can slide for ever: the user's index must outlive it, or "log out everywhere"
misses it. So can a session without a readable created_at in a store with a cap. Real Redis, real time (short TTLs),
and the naive version (no keep-alive) shown failing."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis

from fmredis import RedisSessionStore, lifecycle

pytestmark = pytest.mark.slow

MAX_TTL = 1  # the index of a session created now expires after max_ttl + max_ttl + 1 s = 3 s unless pushed along
LIFETIME = 3600  # with a cap, the index of a session created now expires after its lifetime plus max_ttl + 1 s


def slide(store: RedisSessionStore, session_id: str, seconds: float) -> None:
    """Keep the session alive by refreshes alone (never a write) for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert store.touch(session_id, ttl=MAX_TTL)
        time.sleep(0.25)


def created(store: RedisSessionStore, monkeypatch: pytest.MonkeyPatch) -> str:
    """A session made by ``create`` now."""
    return store.create("u", {"n": 1})


def uncapped_near_the_end_of_its_lifetime(store: RedisSessionStore, monkeypatch: pytest.MonkeyPatch) -> str:
    """A session created with 1.5 s of its lifetime left (so its index expires within 3.5 s, at the lifetime plus
    max_ttl + 1 s), then written back with ``set`` without its created_at: no lifetime caps it any more."""
    with monkeypatch.context() as patched:
        ago = timedelta(seconds=LIFETIME - 1.5)
        patched.setattr(lifecycle, "utc_now", lambda: datetime.now(timezone.utc) - ago)
        session_id = store.create("u", {"n": 1})
    session = store.get(session_id)
    assert session is not None
    del session["created_at"]
    store.set(session_id, session)
    return session_id


#: The sessions nothing caps: the store's options, and how the session is made.
UNCAPPED: dict[str, tuple[dict[str, Any], Callable[[RedisSessionStore, pytest.MonkeyPatch], str]]] = {
    "no lifetime cap": ({}, created),
    "no created_at under a cap": ({"max_lifetime": LIFETIME}, uncapped_near_the_end_of_its_lifetime),
}


def slid_past_its_index_expiry(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch, case: str, *, keep_alive: bool = True
) -> tuple[RedisSessionStore, str]:
    """A store and an ``UNCAPPED[case]`` session of user u on it, kept alive by refreshes alone well past its index's
    first expiry; ``keep_alive=False``: the naive store, which never pushes the index's expiry along."""
    options, make = UNCAPPED[case]
    store = RedisSessionStore(client, default_ttl=MAX_TTL, max_ttl=MAX_TTL, **options)
    if not keep_alive:
        monkeypatch.setattr(store, "_keep_index", lambda user_id, seconds: None)
    session_id = make(store, monkeypatch)
    slide(store, session_id, 4.5)
    assert store.exists(session_id)  # the session lives on
    return store, session_id


@pytest.mark.parametrize("case", UNCAPPED)
def test_a_session_kept_alive_by_refreshes_stays_in_its_users_index(
    client: redis.Redis, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    store, session_id = slid_past_its_index_expiry(client, monkeypatch, case)
    assert store.sessions_for_user("u") == [session_id]
    assert store.delete_user_sessions("u") == 1
    assert not raw.exists("session:" + session_id)


@pytest.mark.parametrize("case", UNCAPPED)
def test_without_the_keep_alive_log_out_everywhere_would_miss_the_session(
    client: redis.Redis, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    store, session_id = slid_past_its_index_expiry(client, monkeypatch, case, keep_alive=False)
    assert store.sessions_for_user("u") == []  # its user's index expired under it
    assert store.delete_user_sessions("u") == 0
    assert raw.exists("session:" + session_id)


def test_a_logged_out_user_who_logs_in_again_keeps_a_live_index(client: redis.Redis, raw: redis.Redis) -> None:
    # The process's note of how far it pushed the old index outlives that index: the new one must still be kept.
    store = RedisSessionStore(client, default_ttl=MAX_TTL, max_ttl=MAX_TTL)
    slide(store, store.create("u", {"n": 1}), 1.5)
    assert store.delete_user_sessions("u") == 1
    session_id = store.create("u", {"n": 2})
    slide(store, session_id, 4.5)
    assert store.sessions_for_user("u") == [session_id]


def test_a_refresh_soon_after_a_create_is_a_single_getex(client: redis.Redis, raw: redis.Redis) -> None:
    store = RedisSessionStore(client)
    session_id = store.create("u", {"n": 1})
    before = {name: stats["calls"] for name, stats in raw.info("commandstats").items()}
    assert store.touch(session_id)
    after = {name: stats["calls"] for name, stats in raw.info("commandstats").items()}
    changed = {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}
    changed.pop("cmdstat_info", None)
    assert changed == {"cmdstat_getex": 1}
