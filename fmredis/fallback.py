"""FallbackSessionStore: keep serving from memory while Redis is down, and write the outage back when it returns."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

from fmredis.errors import StoreUnavailable
from fmredis.memory_store import InMemorySessionStore
from fmredis.store import ISessionStore, check_keys

__all__ = ["FallbackSessionStore"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

_SET, _DELETE = "set", "delete"
_PROBE_KEY = "fmredis:probe"


def _activity(session: dict[str, Any] | None) -> datetime | None:
    """``last_activity`` as an aware datetime, or ``None`` when absent or unreadable (such a side never wins)."""
    stamp = session.get("last_activity") if session else None
    if not isinstance(stamp, str):
        return None
    try:
        parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


class FallbackSessionStore(ISessionStore):
    """Sends everything to ``primary``; when it raises ``StoreUnavailable``, serves from an in-memory store instead.

    - Normal path: one call to the primary, nothing else (no extra round trip, no log record).
    - Outage: the first ``StoreUnavailable`` switches to memory (logged once per outage). Writes and deletes go to
      memory and are remembered; reads see what was written during the outage. Sessions written before the outage are
      not in memory: ``get`` returns ``None``, ``extend_ttl`` ``False``, ``delete`` reports only memory's copy.
    - Recovery: at most every ``probe_interval`` seconds a caller probes the primary (no background thread). When it
      answers, every session written during the outage is written back with its remaining TTL and every delete is
      re-applied, then memory is cleared and calls go to the primary again (logged once, with counts).
      Conflict rule: if Redis holds a session whose ``last_activity`` is newer than memory's copy, Redis's is kept;
      otherwise memory's wins. A delete during the outage stays deleted.
    - Memory is bounded (``max_entries``, least-recently-used evicted). An evicted session that was not yet written
      back is lost: each such loss is counted in ``lost_unsynced`` and logged as a warning, never silently.

    Thread-safe, including the write-back while other threads keep calling. Give ``default_ttl``/``max_ttl`` the same
    values as the primary store so TTLs mean the same on both sides.
    """

    def __init__(
        self,
        primary: ISessionStore,
        *,
        probe_interval: float = 5.0,
        max_entries: int = 10_000,
        default_ttl: int = 1800,
        max_ttl: int = 86_400,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not probe_interval >= 0:
            raise ValueError(f"probe_interval must be a number of seconds >= 0 (got {probe_interval!r})")
        self._primary = primary
        self._memory = InMemorySessionStore(
            default_ttl=default_ttl, max_ttl=max_ttl, max_entries=max_entries, on_evict=self._evicted
        )
        self._probe_interval = probe_interval
        self._clock = clock
        # Re-entrant: memory's eviction callback runs inside writes made under this lock.
        self._lock = threading.RLock()
        self._degraded = False
        self._degraded_since = 0.0
        self._next_probe = 0.0
        self._reconciling = False
        self._dirty: dict[str, str] = {}
        self.lost_unsynced = 0
        self.last_recovery: dict[str, Any] | None = None

    @property
    def degraded(self) -> bool:
        """``True`` while sessions are served from memory."""
        return self._degraded

    @property
    def pending(self) -> int:
        """Writes and deletes made during the outage and not yet applied to the primary."""
        return len(self._dirty)

    def _evicted(self, key: str) -> None:
        if self._dirty.get(key) == _SET:
            del self._dirty[key]
            self.lost_unsynced += 1
            logger.warning("Memory fallback full: session %s evicted before it reached Redis; it is lost", key)

    def _degrade(self, exc: StoreUnavailable) -> None:
        with self._lock:
            if self._degraded:
                return
            self._degraded = True
            self._degraded_since = self._clock()
            self._next_probe = self._degraded_since + self._probe_interval
        logger.warning("Redis unavailable (%s): serving sessions from memory until it answers again", exc)

    def _use_primary(self) -> bool:
        """Whether to call the primary: normal mode, or an outage whose probe has just found the primary back."""
        if not self._degraded:
            return True
        with self._lock:
            if not self._degraded:
                return True
            now = self._clock()
            if self._reconciling or now < self._next_probe:
                return False
            self._next_probe, self._reconciling = now + self._probe_interval, True
        try:
            return self._recover()
        finally:
            with self._lock:
                self._reconciling = False

    def _recover(self) -> bool:
        counts = {"written_back": 0, "deleted": 0, "kept_newer_in_redis": 0, "expired_in_memory": 0}
        try:
            self._primary.exists(_PROBE_KEY)
            while True:
                with self._lock:
                    batch, self._dirty = self._dirty, {}
                    if not batch:  # nothing left to write back, and no writer can add more while we hold the lock
                        leftovers = [key for key, _payload, _ttl in self._memory.items_snapshot()]
                        self._memory.delete_many(leftovers)
                        self._degraded = False
                        break
                self._write_back(batch, counts)
        except StoreUnavailable:
            return False
        outage = self._clock() - self._degraded_since
        self.last_recovery = {"outage_seconds": round(outage, 3), **counts}
        logger.info(
            "Redis answers again after %.1f s: wrote back %d sessions, re-applied %d deletes, kept %d newer in Redis",
            outage,
            counts["written_back"],
            counts["deleted"],
            counts["kept_newer_in_redis"],
            extra={"recovery": self.last_recovery},
        )
        return True

    def _write_back(self, batch: dict[str, str], counts: dict[str, int]) -> None:
        keys = list(batch)
        for index, key in enumerate(keys):
            try:
                if batch[key] == _DELETE:
                    self._primary.delete(key)
                    counts["deleted"] += 1
                    continue
                mine, remaining = self._memory.get(key), self._memory.ttl(key)
                if mine is None or remaining is None:
                    counts["expired_in_memory"] += 1
                    continue
                theirs_at, mine_at = _activity(self._primary.get(key)), _activity(mine)
                if theirs_at is not None and (mine_at is None or theirs_at > mine_at):
                    counts["kept_newer_in_redis"] += 1
                    continue
                self._primary.set(key, mine, remaining)
                counts["written_back"] += 1
            except StoreUnavailable:
                with self._lock:  # put back what was not applied, unless a newer outage write replaced it
                    for pending in keys[index:]:
                        self._dirty.setdefault(pending, batch[pending])
                raise

    def _on_primary(self, call: Callable[[ISessionStore], T]) -> tuple[bool, T | None]:
        if self._use_primary():
            try:
                return True, call(self._primary)
            except StoreUnavailable as exc:
                self._degrade(exc)
        return False, None

    def _write(self, key_ops: Callable[[], list[tuple[str, str]]], call: Callable[[ISessionStore], T]) -> T:
        """A write: on the primary when it is up, else on memory with the touched keys remembered, atomically with
        respect to the switch back (so no outage write is left behind in memory)."""
        while True:
            done, result = self._on_primary(call)
            if done:
                return result  # type: ignore[return-value]
            with self._lock:
                if self._degraded:
                    result = call(self._memory)
                    for key, op in key_ops():
                        self._dirty[key] = op
                    return result

    def get(self, key: str) -> dict[str, Any] | None:
        done, result = self._on_primary(lambda store: store.get(key))
        return result if done else self._memory.get(key)

    def set(self, key: str, value: dict[str, Any], ttl: int | None = None) -> None:
        self._write(lambda: [(key, _SET)], lambda store: store.set(key, value, ttl))

    def delete(self, key: str) -> bool:
        return self._write(lambda: [(key, _DELETE)], lambda store: store.delete(key))

    def exists(self, key: str) -> bool:
        done, result = self._on_primary(lambda store: store.exists(key))
        return bool(result) if done else self._memory.exists(key)

    def extend_ttl(self, key: str, ttl: int | None = None) -> bool:
        # In memory only a session written during the outage can be extended; its new TTL is written back with it.
        return self._write(lambda: [(key, _SET)] if self._memory.exists(key) else [], lambda s: s.extend_ttl(key, ttl))

    def ttl(self, key: str) -> int | None:
        done, result = self._on_primary(lambda store: store.ttl(key))
        return result if done else self._memory.ttl(key)

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        listed = check_keys(keys)
        done, result = self._on_primary(lambda store: store.get_many(listed))
        return result if done and result is not None else self._memory.get_many(listed)

    def delete_many(self, keys: Iterable[str]) -> int:
        listed = check_keys(keys)
        return self._write(lambda: [(key, _DELETE) for key in listed], lambda store: store.delete_many(listed))

    def close(self) -> None:
        close = getattr(self._primary, "close", None)
        if close is not None:
            close()
