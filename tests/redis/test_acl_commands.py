"""docs/deployment.md lists the commands the store sends, for a narrow ACL: an ACL user allowed exactly those (on the
store's keys) runs every store call. The list is read from the document, so the two cannot drift apart."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fmredis import RedisSessionStore, create_redis_client

DEPLOYMENT = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"


def documented_commands() -> list[str]:
    text = DEPLOYMENT.read_text(encoding="utf-8")
    start = text.index("these are the commands the store sends")
    paragraph = text[start : text.index("A cluster client", start)]
    return [name.lower() for name in re.findall(r"`([A-Z]+(?:\|[A-Z]+)?)`", paragraph)]


@pytest.fixture
def narrow_store(redis_url: str, raw: redis.Redis) -> Iterator[RedisSessionStore]:
    rules = [f"+{command}" for command in documented_commands()]
    raw.execute_command(
        "ACL", "SETUSER", "narrow", "reset", "on", ">narrow-pw", "~session:*", "~user-sessions:session:*", *rules
    )
    client = create_redis_client(url=redis_url, environ={}, username="narrow", password="narrow-pw")
    try:
        with RedisSessionStore(client, owns_client=True, max_sessions_per_user=1) as store:
            yield store
    finally:
        raw.execute_command("ACL", "DELUSER", "narrow")


def test_the_list_is_found() -> None:
    assert {"get", "set", "getex", "evalsha", "zadd"} <= set(documented_commands())


def test_every_store_call_works_with_only_the_documented_commands(narrow_store: RedisSessionStore) -> None:
    store = narrow_store
    store.set("k", {"n": 1})
    assert store.get("k") is not None and store.exists("k") and store.ttl("k")
    assert store.touch("k") and store.extend_ttl("k", 60) and store.get("k", refresh=True) is not None
    assert store.update("k", lambda s: {**s, "n": 2})["n"] == 2
    assert store.get_many(["k", "gone"]).keys() == {"k"}
    first = store.create("u", {"n": 1})
    second = store.regenerate(store.create("u", {"n": 2}))  # the second create trims the first (cap of one)
    assert store.sessions_for_user("u") == [second] and not store.exists(first)
    assert store.delete_user_sessions("u") == 1
    assert store.logouts(["u", "nobody"]).keys() == {"u"}  # what the fallback asks before a write-back
    assert store.set_many([("m", {"n": 1}, None)]) == 1
    assert store.delete_many(["k"]) == 1 and not store.delete("k")
