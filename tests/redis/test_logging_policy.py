"""The reason fmredis exists: successful store operations emit no log record at any level, DEBUG included."""

from __future__ import annotations

import logging

import pytest

from fmredis import FallbackSessionStore, ISessionStore, RedisSessionStore, ResilientRedisSessionStore


@pytest.fixture(params=["plain", "wrapped"])
def hot_store(request: pytest.FixtureRequest, redis_store: RedisSessionStore) -> ISessionStore:
    if request.param == "plain":
        return redis_store
    return FallbackSessionStore(ResilientRedisSessionStore(lambda: redis_store))


def test_the_hot_path_logs_nothing(hot_store: ISessionStore, root_records: list[logging.LogRecord]) -> None:
    redis_store = hot_store
    for i in range(200):
        key = f"s{i}"
        redis_store.set(key, {"user_id": f"u{i}", "context": {"phase": "analysis"}}, ttl=600)
        assert redis_store.get(key) is not None
        assert redis_store.exists(key)
        assert redis_store.extend_ttl(key)
        assert redis_store.ttl(key)
    assert len(redis_store.get_many([f"s{i}" for i in range(200)])) == 200
    assert redis_store.delete("s0") is True
    assert redis_store.get("s0") is None  # a miss is not an event either
    assert redis_store.delete_many([f"s{i}" for i in range(200)]) == 199
    assert root_records == [], [f"{r.name}: {r.getMessage()}" for r in root_records]


def test_the_handler_does_see_application_events(
    redis_store: RedisSessionStore, raw: object, root_records: list[logging.LogRecord]
) -> None:
    """Guards the test above: the same handler catches the corrupt-data warning, so silence there is real."""
    redis_store.client.set("session:bad", b"{not json")
    assert redis_store.get("bad") is None
    assert [r.levelname for r in root_records if r.name.startswith("fmredis")] == ["WARNING"]
