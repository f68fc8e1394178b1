"""Without a lifetime cap a session can slide for ever: the user's index must outlive it, or "log out everywhere"
misses it. Real Redis, real time (short TTLs), and the naive version (no keep-alive) shown failing."""

from __future__ import annotations

import time

import pytest
import redis

from fmredis import RedisSessionStore

pytestmark = pytest.mark.slow

MAX_TTL = 1  # the index of a session created now expires after max_ttl + max_ttl + 1 s = 3 s unless pushed along


def slide(store: RedisSessionStore, session_id: str, seconds: float) -> None:
    """Keep the session alive by refreshes alone (never a write) for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert store.touch(session_id, ttl=MAX_TTL)
        time.sleep(0.25)


def test_a_session_kept_alive_by_refreshes_stays_in_its_users_index(client: redis.Redis, raw: redis.Redis) -> None:
    store = RedisSessionStore(client, default_ttl=MAX_TTL, max_ttl=MAX_TTL)
    session_id = store.create("u", {"n": 1})
    slide(store, session_id, 4.5)  # well past the index's first expiry
    assert raw.exists("session:" + session_id)
    assert store.sessions_for_user("u") == [session_id]
    assert store.delete_user_sessions("u") == 1
    assert not raw.exists("session:" + session_id)


def test_without_the_keep_alive_log_out_everywhere_would_miss_the_session(
    client: redis.Redis, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisSessionStore(client, default_ttl=MAX_TTL, max_ttl=MAX_TTL)
    monkeypatch.setattr(store, "_keep_index", lambda user_id, seconds: None)  # the naive store
    session_id = store.create("u", {"n": 1})
    slide(store, session_id, 4.5)
    assert raw.exists("session:" + session_id)  # the session lives on ...
    assert store.sessions_for_user("u") == []  # ... but its user's index expired under it
    assert store.delete_user_sessions("u") == 0


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
