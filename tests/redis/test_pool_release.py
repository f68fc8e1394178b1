"""What ``close()`` and ``rebuild()`` release: idle connections only. Cutting a connection another thread is using
makes redis-py reconnect it silently, and an ``update`` whose ``WATCH`` was on it would then overwrite a concurrent
write without noticing. Real Redis, real threads; the naive release is shown losing the write. ``update`` watches only
with pipelining off (and in a cluster); on the multiplexer it compares and sets, which no cut connection can fool."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis

from fmredis import RedisSessionStore, create_redis_client
from fmredis.client import build_connection_pool
from fmredis.config import resolve_settings


class Paused:
    """An update function that appends ``item``; its first call waits until the test lets it go on."""

    def __init__(self, item: str) -> None:
        self.item = item
        self.calls = 0
        self.inside = threading.Event()
        self.go_on = threading.Event()

    def __call__(self, session: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        if self.calls == 1:
            self.inside.set()
            assert self.go_on.wait(10)
        return {**session, "items": [*session["items"], self.item]}


def race(store: RedisSessionStore, raw: redis.Redis, release: Callable[[], None]) -> tuple[Paused, list[str]]:
    """An update is watching the session when ``release`` runs and another writer adds "pear"; returns the update
    function and the items stored at the end."""
    store.set("cart", {"items": []})
    fn = Paused("apple")
    worker = threading.Thread(target=store.update, args=("cart", fn))
    worker.start()
    assert fn.inside.wait(10)
    release()
    raw.set("session:cart", orjson.dumps({"items": ["pear"]}), ex=600)  # the concurrent writer
    fn.go_on.set()
    worker.join(10)
    return fn, orjson.loads(raw.get("session:cart"))["items"]


@pytest.fixture
def given_client(redis_url: str, raw: redis.Redis) -> redis.Redis:
    return create_redis_client(url=redis_url, environ={})


@pytest.mark.parametrize("naive", [False, True], ids=["rebuild", "naive: disconnect all"])
def test_rebuild_during_an_update_keeps_its_watch(given_client: redis.Redis, raw: redis.Redis, naive: bool) -> None:
    store = RedisSessionStore(given_client, pipelining=False)
    release = given_client.connection_pool.disconnect if naive else store.rebuild
    fn, items = race(store, raw, release)  # type: ignore[arg-type]
    if naive:  # the WATCH went with the cut connection: the EXEC ran on a new one and overwrote "pear"
        assert (fn.calls, items) == (1, ["apple"])
    else:  # the conflict was seen, and fn ran again on the concurrent write
        assert (fn.calls, items) == (2, ["pear", "apple"])


@pytest.mark.parametrize("naive", [False, True], ids=["close", "naive: client.close()"])
def test_closing_a_store_that_owns_its_pool_during_an_update_keeps_its_watch(
    redis_url: str, raw: redis.Redis, naive: bool
) -> None:
    # Built like Sentinel's master_for: a client that owns its pool, so that client.close() disconnects all of it.
    client = redis.Redis.from_pool(build_connection_pool(resolve_settings(url=redis_url, environ={})))
    store = RedisSessionStore(client, owns_client=True, pipelining=False)
    fn, items = race(store, raw, client.close if naive else store.close)
    if naive:
        assert (fn.calls, items) == (1, ["apple"])
    else:
        assert (fn.calls, items) == (2, ["pear", "apple"])


def test_a_compare_and_set_update_is_not_fooled_by_the_naive_disconnect(
    given_client: redis.Redis, raw: redis.Redis
) -> None:
    # The release that made the watching update overwrite "pear" above: the compare-and-set update either sees the
    # conflict (fn runs again) or reports an unknown outcome for its cut connection; "pear" is never overwritten.
    store = RedisSessionStore(given_client)
    assert store.pipelined
    errors: list[BaseException] = []

    def update(key: str, fn: Paused) -> None:
        try:
            store.update(key, fn)
        except BaseException as exc:
            errors.append(exc)

    store.set("cart", {"items": []})
    fn = Paused("apple")
    worker = threading.Thread(target=update, args=("cart", fn))
    worker.start()
    assert fn.inside.wait(10)
    given_client.connection_pool.disconnect()
    raw.set("session:cart", orjson.dumps({"items": ["pear"]}), ex=600)
    fn.go_on.set()
    worker.join(10)
    items = orjson.loads(raw.get("session:cart"))["items"]
    assert items[0] == "pear"
    assert (items, fn.calls) == (["pear", "apple"], 2) or (items == ["pear"] and len(errors) == 1)


def _named(raw: redis.Redis, name: str) -> int:
    deadline = time.monotonic() + 5  # the server notices a close within moments
    while True:
        count = sum(1 for entry in raw.client_list() if entry.get("name") == name)
        if count == 0 or time.monotonic() > deadline:
            return count
        time.sleep(0.01)


def test_a_store_used_after_close_is_released_by_the_next_close(redis_url: str, raw: redis.Redis) -> None:
    store = RedisSessionStore.from_url(f"{redis_url}?client_name=closed-twice")
    store.set("k", {"n": 1})
    store.close()
    assert _named(raw, "closed-twice") == 0
    assert store.get("k") is not None  # connects again
    store.close()
    assert _named(raw, "closed-twice") == 0
