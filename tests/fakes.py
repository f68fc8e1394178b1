"""The fakes the tests share: a clock that moves only when a test moves it, a store that fails on command, a
configuration manager with fixed answers, and a connection that loses a reply."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import redis

from fmredis import InMemorySessionStore, ISessionStore, StoreError, StoreUnavailable, TTLRules
from fmredis.store import SessionUpdate

__all__ = ["OOM", "FakeClock", "FakeConfigManager", "FakePrimary", "ReplyLost"]

#: What a refused ``FakePrimary.set`` raises: the message a Redis store gives for a SET refused for lack of memory.
OOM = "Redis SET failed: OutOfMemoryError: OOM command not allowed when used memory > 'maxmemory'."


class FakeClock:
    """A clock (float seconds) that moves only when a test moves it: set ``now``, or :meth:`advance` it.

    It stands in for ``time.monotonic`` (``clock=``) and, started at an epoch second, for ``time.time``
    (``wall_clock=``). With ``tick``, every read also moves it on by ``tick`` seconds, so that threads sharing it see
    time pass (``next`` on a count is atomic: no lock is needed); :meth:`freeze` stops that.
    """

    def __init__(self, now: float = 1000.0, *, tick: float = 0.0) -> None:
        self.now = now
        self.tick = tick
        self._reads = itertools.count()

    def __call__(self) -> float:
        return self.now + next(self._reads) * self.tick if self.tick else self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    def freeze(self) -> float:
        """Stop ticking where the clock is now; returns that time."""
        self.now, self.tick = self(), 0.0
        return self.now


class FakePrimary(ISessionStore):
    """A store to wrap (a fallback's primary, a resilient wrapper's store) that fails on command.

    Every call goes to ``inner`` (default: a new :class:`~fmredis.InMemorySessionStore`; a test may pass a Redis store)
    and is counted in ``calls`` by method name. While ``down`` is set, every call raises ``StoreUnavailable``, as a
    store cut off from Redis does; ``ttl_rules``, ``stats`` and ``close`` stay local and always work (``closed``
    counts the calls of ``close``). ``set`` also refuses the keys in ``refused`` (``StoreError``, as for OOM), goes
    down itself after ``down_after_sets`` more successful sets, and calls ``on_set(key)`` after each one that worked.
    Thread-safe as far as ``inner`` is.
    """

    def __init__(self, inner: ISessionStore | None = None) -> None:
        self.inner: ISessionStore = InMemorySessionStore() if inner is None else inner
        self.down = False
        self.refused: set[str] = set()
        self.down_after_sets: int | None = None
        self.on_set: Callable[[str], None] | None = None
        self.calls: dict[str, int] = {}
        self.closed = 0
        self._lock = threading.Lock()

    def _up(self, name: str) -> ISessionStore:
        with self._lock:
            self.calls[name] = self.calls.get(name, 0) + 1
        if self.down:
            raise StoreUnavailable(f"{name}: the primary is cut off")
        return self.inner

    @property
    def ttl_rules(self) -> TTLRules:
        return self.inner.ttl_rules

    def get(self, key: str, *, refresh: bool = False) -> dict[str, Any] | None:
        return self._up("get").get(key, refresh=refresh)

    def set(
        self, key: str, value: dict[str, Any], ttl: int | None = None, *, stamp: bool = True, fence: Any = None
    ) -> None:
        inner = self._up("set")
        if key in self.refused:
            raise StoreError(OOM)
        if self.down_after_sets is not None:
            self.down_after_sets -= 1
            if self.down_after_sets < 0:
                self.down = True
                raise StoreUnavailable("set: the primary went down")
        inner.set(key, value, ttl, stamp=stamp, fence=fence)
        if self.on_set is not None:
            self.on_set(key)

    def delete(self, key: str, *, fence: Any = None) -> bool:
        return self._up("delete").delete(key, fence=fence)

    def exists(self, key: str) -> bool:
        return self._up("exists").exists(key)

    def extend_ttl(self, key: str, ttl: int | None = None) -> bool:
        return self._up("extend_ttl").extend_ttl(key, ttl)

    def ttl(self, key: str) -> int | None:
        return self._up("ttl").ttl(key)

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        return self._up("get_many").get_many(keys)

    def set_many(
        self, items: Iterable[tuple[str, dict[str, Any], int | None]], *, stamp: bool = True, index: bool = False
    ) -> int:
        """Through :meth:`set` item by item (so ``refused``, ``down_after_sets`` and ``on_set`` apply), then, with
        ``index``, listed by ``inner``."""
        listed = list(items)
        stored = ISessionStore.set_many(self, listed, stamp=stamp)
        if index:
            self.inner.set_many(listed, stamp=stamp, index=True)
        return stored

    def logouts(self, user_ids: Iterable[str]) -> dict[str, float]:
        return self._up("logouts").logouts(user_ids)

    def delete_many(self, keys: Iterable[str]) -> int:
        return self._up("delete_many").delete_many(keys)

    def touch(self, key: str, ttl: int | None = None) -> bool:
        return self._up("touch").touch(key, ttl)

    def update(self, key: str, fn: SessionUpdate, ttl: int | None = None, *, fence: Any = None) -> dict[str, Any]:
        return self._up("update").update(key, fn, ttl, fence=fence)

    def create(self, user_id: str, data: dict[str, Any], ttl: int | None = None) -> str:
        return self._up("create").create(user_id, data, ttl)

    def regenerate(self, session_id: str) -> str:
        return self._up("regenerate").regenerate(session_id)

    def sessions_for_user(self, user_id: str) -> list[str]:
        return self._up("sessions_for_user").sessions_for_user(user_id)

    def delete_user_sessions(self, user_id: str) -> int:
        return self._up("delete_user_sessions").delete_user_sessions(user_id)

    def stats(self) -> dict[str, int]:
        return self.inner.stats()

    def close(self) -> None:
        self.closed += 1
        self.inner.close()


class FakeConfigManager:
    """A configuration manager (``config_manager=``) returning fixed values, counting how often it is asked."""

    def __init__(self, values: object) -> None:
        self.values = values
        self.calls = 0

    def get_redis_settings(self) -> Any:
        self.calls += 1
        return self.values


class ReplyLost:
    """Patches redis-py so that, once armed, the next reply of the command armed for is read (the command ran on the
    server) and then the connection is reported lost: what redis-py raises when a connection drops while reading it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed: str | None = None
        self.dropped = 0
        parse_response = redis.client.Redis.parse_response  # a pipeline's parse_response calls it too

        def parse_then_drop(client: redis.Redis, connection: Any, command_name: Any, **options: Any) -> Any:
            result = parse_response(client, connection, command_name, **options)
            if self.armed is not None and self._is_reply_armed_for(command_name, result):
                self.armed = None
                self.dropped += 1
                raise redis.exceptions.ConnectionError("connection lost while reading the reply (test)")
            return result

        monkeypatch.setattr(redis.client.Redis, "parse_response", parse_then_drop)

    def _is_reply_armed_for(self, command_name: Any, result: Any) -> bool:
        if self.armed == "EXEC":  # "_" names every reply of a MULTI/EXEC; EXEC's is the only list (MULTI's is OK)
            return command_name == "_" and isinstance(result, list)
        return command_name == self.armed

    def arm(self, command: str = "EXEC") -> None:
        self.armed = command
