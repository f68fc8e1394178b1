"""Fenced writes: ``store.set/update/delete(..., fence=held)`` on a real redis-server, refused with ``FencedOut`` (and
nothing written) once a newer token has been issued for the lock, with the naive unfenced late write shown landing.

Also the stores that cannot check a fence (in memory; the fallback during an outage), the wrappers passing it through,
and on a Redis Cluster the rule that the session and the lock share a slot."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from fmredis import (
    ConfigurationError,
    FallbackSessionStore,
    FencedOut,
    HeldLock,
    InMemorySessionStore,
    InvalidKeyError,
    LockTimeout,
    RedisLock,
    RedisSessionStore,
    ResilientRedisSessionStore,
    StoreUnavailable,
    create_redis_client,
)
from fmredis.client import RedisClient
from tests.harness.servers import free_port

pytestmark = pytest.mark.timeout(60)

PREFIX = "session:"


# --- helpers --------------------------------------------------------------------------------------------------------


def snapshot(raw: redis.Redis) -> dict[bytes, bytes | None]:
    """Every key in Redis with its serialized value (DUMP): what "nothing changed" is compared against."""
    return {key: raw.dump(key) for key in sorted(raw.keys("*"))}  # type: ignore[misc]


def stored(raw: redis.Redis, key: str) -> dict[str, Any] | None:
    payload = raw.get(PREFIX + key)
    return None if payload is None else orjson.loads(payload)


def take_over(lock: RedisLock, raw: redis.Redis) -> HeldLock:
    """Another worker takes the lock from a holder that has stopped (GC pause, SIGSTOP) past its lease: the lease is
    forced out (as its expiry would) and a second handle on the same name acquires it, with a newer token."""
    raw.delete(lock.key)
    newer = RedisLock(lock.client, lock.name, ttl=5.0, auto_renew=False).acquire(timeout=0)
    return newer


def wait_until(condition: Callable[[], object], seconds: float = 10.0) -> bool:
    """Poll until ``condition()``; whether it came true (a deadlock guard only)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def change(store: Any, op: str, key: str, value: dict[str, Any], fence: object | None) -> None:
    """One write of ``op`` (set, update or delete) of ``key``, fenced if ``fence`` is given."""
    if op == "set":
        store.set(key, value, fence=fence)
    elif op == "update":
        store.update(key, lambda session: {**session, **value}, fence=fence)
    else:
        store.delete(key, fence=fence)


OPS = ["set", "update", "delete"]


@pytest.fixture(params=[True, False], ids=["multiplexed", "redis-py"])
def redis_store(client: redis.Redis, request: pytest.FixtureRequest) -> RedisSessionStore:
    """A Redis store with and without the multiplexer (``pipelining``), on the test server."""
    return RedisSessionStore(client, pipelining=request.param)


@pytest.fixture
def lock(client: redis.Redis) -> RedisLock:
    return RedisLock(client, "cart-1", ttl=5.0, auto_renew=False)


@pytest.fixture
def handles() -> Iterator[list[HeldLock]]:
    taken: list[HeldLock] = []
    yield taken
    for held in taken:
        if not held.released:
            held.release()


# --- RedisSessionStore ----------------------------------------------------------------------------------------------


def test_fenced_writes_succeed_while_the_lock_is_held(
    redis_store: RedisSessionStore, lock: RedisLock, raw: redis.Redis
) -> None:
    with lock as held:
        redis_store.set("s1", {"v": 1}, fence=held)
        assert stored(raw, "s1")["v"] == 1  # type: ignore[index]
        written = redis_store.update("s1", lambda session: {**session, "v": session["v"] + 1}, fence=held)
        assert written["v"] == 2 and stored(raw, "s1")["v"] == 2  # type: ignore[index]
        assert 1790 <= raw.ttl(PREFIX + "s1") <= 1800  # the store's default ttl, as an unfenced write
        redis_store.set("s1", {"v": 3}, ttl=60, stamp=False, fence=held)
        assert stored(raw, "s1") == {"v": 3} and 58 <= raw.ttl(PREFIX + "s1") <= 60
        assert redis_store.delete("s1", fence=held) is True
        assert not raw.exists(PREFIX + "s1")
        assert redis_store.delete("s1", fence=held) is False  # nothing to delete: the fence passes, the count is 0


@pytest.mark.parametrize("op", OPS)
def test_a_superseded_holders_late_write_is_refused_and_changes_nothing(
    redis_store: RedisSessionStore, lock: RedisLock, raw: redis.Redis, handles: list[HeldLock], op: str
) -> None:
    handles.append(old := lock.acquire(timeout=0))
    redis_store.set("s1", {"by": "old"}, fence=old)
    handles.append(new := take_over(lock, raw))
    assert new.token > old.token
    redis_store.set("s1", {"by": "new"}, fence=new)
    before = snapshot(raw)
    with pytest.raises(FencedOut) as info:
        change(redis_store, op, "s1", {"by": "old, late"}, old)
    assert snapshot(raw) == before  # the session, the lock and the fence counter are as they were
    assert stored(raw, "s1")["by"] == "new"  # type: ignore[index]
    assert "s1" not in str(info.value) and lock.name not in str(info.value)
    # the current holder's fenced writes go on
    redis_store.update("s1", lambda session: {**session, "n": 1}, fence=new)
    assert stored(raw, "s1") is not None and stored(raw, "s1")["n"] == 1  # type: ignore[index]
    assert redis_store.delete("s1", fence=new) is True


@pytest.mark.parametrize("op", OPS)
def test_without_the_fence_the_same_late_write_lands(
    redis_store: RedisSessionStore, lock: RedisLock, raw: redis.Redis, handles: list[HeldLock], op: str
) -> None:
    """The naive version of the test above: the same scenario, the late write unfenced, overwrites the new holder's."""
    handles.append(old := lock.acquire(timeout=0))
    redis_store.set("s1", {"by": "old"}, fence=old)
    handles.append(new := take_over(lock, raw))
    redis_store.set("s1", {"by": "new"}, fence=new)
    change(redis_store, op, "s1", {"by": "old, late"}, None)
    if op == "delete":
        assert stored(raw, "s1") is None  # the new holder's session is gone
    else:
        assert stored(raw, "s1")["by"] == "old, late"  # type: ignore[index]


@pytest.mark.parametrize("op", OPS)
def test_a_fenced_write_with_an_expired_but_not_superseded_lease_succeeds(
    redis_store: RedisSessionStore, client: redis.Redis, raw: redis.Redis, op: str
) -> None:
    """Documented: fencing is about newer holders; a lease that ran out with nobody acquiring since still writes."""
    lock = RedisLock(client, "cart-1", ttl=0.5, auto_renew=False)
    held = lock.acquire(timeout=0)
    redis_store.set("s1", {"v": 1}, fence=held)
    assert wait_until(lambda: not raw.exists(lock.key)), "the lease did not run out"
    assert held.lost
    change(redis_store, op, "s1", {"v": 2}, held)
    if op == "delete":
        assert stored(raw, "s1") is None
    else:
        assert stored(raw, "s1")["v"] == 2  # type: ignore[index]


def test_a_fenced_update_writes_what_fn_returned(
    redis_store: RedisSessionStore, lock: RedisLock, raw: redis.Redis
) -> None:
    redis_store.set("s1", {"n": 1, "keep": "x"})
    with lock as held:
        written = redis_store.update("s1", lambda session: {**session, "n": session["n"] + 1}, fence=held)
    assert written["n"] == 2 and written["keep"] == "x"
    assert stored(raw, "s1") is not None and stored(raw, "s1")["n"] == 2  # type: ignore[index]


def test_a_newer_acquisition_while_fn_runs_refuses_the_update(
    redis_store: RedisSessionStore, lock: RedisLock, raw: redis.Redis, handles: list[HeldLock]
) -> None:
    """The window a check-then-write would miss: the fence passes when the session is read, then (inside ``fn``) the
    lease is forced out and another handle acquires; the commit must see the newer token."""
    handles.append(old := lock.acquire(timeout=0))
    redis_store.set("s1", {"n": 1})
    payload = raw.get(PREFIX + "s1")
    newer: list[HeldLock] = []

    def fn(session: dict[str, Any]) -> dict[str, Any]:
        if not newer:  # fn may run again on a fresh copy: take over once
            newer.append(take_over(lock, raw))
            handles.append(newer[0])
        return {**session, "n": session["n"] + 100}

    with pytest.raises(FencedOut):
        redis_store.update("s1", fn, fence=old)
    assert newer and newer[0].token > old.token
    assert raw.get(PREFIX + "s1") == payload  # nothing written
    written = redis_store.update("s1", lambda session: {**session, "n": 2}, fence=newer[0])
    assert written["n"] == 2


def test_an_unfenced_update_in_the_same_window_lands(
    redis_store: RedisSessionStore, lock: RedisLock, raw: redis.Redis, handles: list[HeldLock]
) -> None:
    """The naive version of the test above: without the fence the stale holder's update is written."""
    handles.append(lock.acquire(timeout=0))
    redis_store.set("s1", {"n": 1})
    newer: list[HeldLock] = []

    def fn(session: dict[str, Any]) -> dict[str, Any]:
        if not newer:
            newer.append(take_over(lock, raw))
            handles.append(newer[0])
        return {**session, "n": session["n"] + 100}

    redis_store.update("s1", fn)
    assert newer and stored(raw, "s1")["n"] == 101  # type: ignore[index]


@dataclass(frozen=True)
class Fence:
    """Not a HeldLock: a fence is any object with ``token`` and ``fence_key``."""

    token: int
    fence_key: str


def test_any_object_with_token_and_fence_key_is_a_fence(
    redis_store: RedisSessionStore, lock: RedisLock, client: redis.Redis, raw: redis.Redis
) -> None:
    with lock as first:
        pass
    with lock as second:
        pass
    redis_store.set("s1", {"v": 1}, fence=Fence(second.token, lock.fence_key))  # the newest token: accepted
    before = snapshot(raw)
    with pytest.raises(FencedOut):
        redis_store.set("s1", {"v": 2}, fence=Fence(first.token, lock.fence_key))
    assert snapshot(raw) == before
    # the check reads the fence's own counter: another lock's newer tokens do not refuse this one's
    other = RedisLock(client, "cart-2", ttl=5.0, auto_renew=False)
    with other:
        pass
    redis_store.set("s1", {"v": 3}, fence=Fence(second.token, lock.fence_key))
    assert stored(raw, "s1")["v"] == 3  # type: ignore[index]


# --- the stores that cannot check a fence, and the wrappers ----------------------------------------------------------


def test_the_in_memory_store_refuses_a_fence_and_writes_nothing(lock: RedisLock) -> None:
    memory = InMemorySessionStore()
    memory.set("kept", {"v": 1})
    with lock as held:
        with pytest.raises(ConfigurationError):
            memory.set("new", {"v": 1}, fence=held)
        with pytest.raises(ConfigurationError):
            memory.update("kept", lambda session: {**session, "v": 2}, fence=held)
        with pytest.raises(ConfigurationError):
            memory.delete("kept", fence=held)
    assert memory.get("new") is None
    assert memory.get("kept") is not None and memory.get("kept")["v"] == 1  # type: ignore[index]


def dead_primary() -> ResilientRedisSessionStore:
    """A resilient Redis store on a loopback port nothing listens on (short timeouts, one attempt)."""

    def build() -> RedisSessionStore:
        dead = create_redis_client(
            host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, retry_attempts=0, environ={}
        )
        return RedisSessionStore(dead, owns_client=True)

    return ResilientRedisSessionStore(build, attempts=1, deadline=2.0)


def journal_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        count: int = db.execute("SELECT count(*) FROM changes").fetchone()[0]
    db.close()
    return count


def test_the_fallback_refuses_fenced_writes_while_redis_is_down_and_keeps_nothing(
    lock: RedisLock, tmp_path: Path
) -> None:
    journal = tmp_path / "outage.db"
    fallback = FallbackSessionStore(dead_primary(), journal_path=journal)
    try:
        with lock as held:
            with pytest.raises(StoreUnavailable):
                fallback.set("fenced", {"v": 1}, fence=held)  # the call that finds Redis down
            fallback.set("plain", {"v": 1})  # the naive contrast: an unfenced write is served from memory
            assert fallback.degraded and fallback.get("plain") is not None
            for op in OPS:  # and during the outage
                with pytest.raises(StoreUnavailable):
                    change(fallback, op, "plain" if op != "set" else "fenced", {"v": 2}, held)
        assert fallback.get("fenced") is None and not fallback.memory.exists("fenced")
        assert fallback.get("plain")["v"] == 1  # type: ignore[index]  # neither updated nor deleted
        assert fallback.pending == 1  # "plain" only
        assert journal_rows(journal) == 1
    finally:
        fallback.close()


def test_the_wrappers_pass_the_fence_through(
    redis_store: RedisSessionStore, lock: RedisLock, raw: redis.Redis, handles: list[HeldLock]
) -> None:
    resilient = ResilientRedisSessionStore(redis_store)
    fallback = FallbackSessionStore(ResilientRedisSessionStore(redis_store))
    handles.append(old := lock.acquire(timeout=0))
    resilient.set("s1", {"by": "old"}, fence=old)
    fallback.set("s2", {"by": "old"}, fence=old)
    assert stored(raw, "s1")["by"] == "old" and stored(raw, "s2")["by"] == "old"  # type: ignore[index]
    handles.append(new := take_over(lock, raw))
    before = snapshot(raw)
    for wrapper in (resilient, fallback):
        for op in OPS:
            with pytest.raises(FencedOut):
                change(wrapper, op, "s1", {"by": "old, late"}, old)
    assert snapshot(raw) == before
    assert not fallback.degraded and not fallback.memory.exists("s1") and fallback.pending == 0
    resilient.update("s1", lambda session: {**session, "by": "new"}, fence=new)
    fallback.update("s2", lambda session: {**session, "by": "new"}, fence=new)
    assert stored(raw, "s1")["by"] == "new" and stored(raw, "s2")["by"] == "new"  # type: ignore[index]


# --- Redis Cluster: the session and the lock in one slot -------------------------------------------------------------


@pytest.mark.topology
@pytest.mark.parametrize("name", ["{cart-42}", "cart-42"])
def test_in_a_cluster_a_fenced_session_shares_the_locks_slot(
    cluster_store: RedisSessionStore, cluster_client: RedisClient, name: str
) -> None:
    lock = RedisLock(cluster_client, name, ttl=5.0, auto_renew=False)
    old = lock.acquire(timeout=0)
    try:
        cluster_store.set("{cart-42}:s1", {"by": "old"}, fence=old)
        assert cluster_store.get("{cart-42}:s1") is not None
        for op in OPS:
            with pytest.raises(InvalidKeyError) as info:
                change(cluster_store, op, "other-secret-key", {"v": 1}, old)
            assert "other-secret-key" not in str(info.value)
        assert not cluster_client.exists(PREFIX + "other-secret-key")
        cluster_client.delete(lock.key)
        new = RedisLock(cluster_client, name, ttl=5.0, auto_renew=False).acquire(timeout=0)
        try:
            with pytest.raises(FencedOut):
                cluster_store.set("{cart-42}:s1", {"by": "old, late"}, fence=old)
            assert cluster_store.get("{cart-42}:s1")["by"] == "old"  # type: ignore[index]
            cluster_store.update("{cart-42}:s1", lambda session: {**session, "by": "new"}, fence=new)
            assert cluster_store.get("{cart-42}:s1")["by"] == "new"  # type: ignore[index]
            assert cluster_store.delete("{cart-42}:s1", fence=new) is True
        finally:
            new.release()
    finally:
        old.release()


@pytest.mark.topology
def test_in_a_cluster_a_waiter_blocks_within_the_clients_socket_timeout(redis_cluster: Any) -> None:
    """A cluster client has no connection_pool: the wait per BLPOP must still come from its socket timeout (0.5 s
    here), else the BLPOP outlasts the socket and a contended acquire raises StoreUnavailable instead of waiting."""
    client = create_redis_client(mode="cluster", cluster_nodes=redis_cluster.nodes, socket_timeout=0.5, environ={})
    try:
        lock = RedisLock(client, "{cart-42}:short-timeout", ttl=5.0, auto_renew=False)
        held = lock.acquire(timeout=0)
        with pytest.raises(LockTimeout):
            lock.acquire(timeout=1.5)  # waits through several BLPOPs, each shorter than the socket timeout
        assert held.release() is True
    finally:
        client.close()
