"""FallbackSessionStore: keep serving from memory while Redis is down, and write the outage back when it returns."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

from fmredis.errors import FmRedisError, StoreUnavailable
from fmredis.memory_store import InMemorySessionStore
from fmredis.store import ISessionStore, check_keys

__all__ = ["FallbackSessionStore"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

_SET, _DELETE = "set", "delete"
_PROBE_KEY = "fmredis:probe"
_UNLOCKED_ROUNDS = 3


def _new_counts() -> dict[str, int]:
    return {"written_back": 0, "deleted": 0, "kept_newer_in_redis": 0, "expired_in_memory": 0, "failed": 0}


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
        self._epoch = 0  # recoveries so far: a failure seen by a call started before the last one is stale
        self._dirty: dict[str, str] = {}
        self._in_flight: dict[str, str] = {}  # taken from _dirty by a write-back and not yet applied
        self._counts = _new_counts()
        self.lost_unsynced = 0
        self.last_recovery: dict[str, Any] | None = None

    @property
    def degraded(self) -> bool:
        """``True`` while sessions are served from memory."""
        return self._degraded

    @property
    def pending(self) -> int:
        """Writes and deletes made during the outage and not yet applied to the primary."""
        with self._lock:
            return len(self._dirty) + len(self._in_flight)

    def _evicted(self, key: str) -> None:
        # Runs under self._lock (memory writes are made holding it), so the two maps cannot change meanwhile.
        for pending in (self._dirty, self._in_flight):
            if pending.get(key) == _SET:
                del pending[key]
                self.lost_unsynced += 1
                logger.warning("Memory fallback full: session %s evicted before it reached Redis; it is lost", key)

    def _degrade(self, exc: StoreUnavailable, epoch: int) -> None:
        with self._lock:
            if self._degraded or epoch != self._epoch:  # already degraded, or the failure predates a recovery
                return
            self._degraded = True
            self._degraded_since = self._clock()
            self._next_probe = self._degraded_since + self._probe_interval
            self._counts = _new_counts()
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
        try:
            self._primary.exists(_PROBE_KEY)
            # Write back without blocking writers for a few rounds; writes made meanwhile land in _dirty for the next
            # round. Then finish holding the lock, so a steady stream of writes cannot keep recovery from ending.
            for _round in range(_UNLOCKED_ROUNDS):
                with self._lock:
                    self._in_flight, self._dirty = self._dirty, {}
                if not self._in_flight:
                    break
                self._write_back()
            with self._lock:
                self._in_flight, self._dirty = self._dirty, {}
                self._write_back()
                leftovers = [key for key, _payload, _ttl in self._memory.items_snapshot()]
                self._memory.delete_many(leftovers)
                self._degraded = False
                self._epoch += 1
        except StoreUnavailable:
            return False
        outage = self._clock() - self._degraded_since
        self.last_recovery = {"outage_seconds": round(outage, 3), **self._counts}
        logger.info(
            "Redis answers again after %.1f s: wrote back %d sessions, re-applied %d deletes, kept %d newer in Redis",
            outage,
            self._counts["written_back"],
            self._counts["deleted"],
            self._counts["kept_newer_in_redis"],
            extra={"recovery": self.last_recovery},
        )
        return True

    def _write_back(self) -> None:
        """Apply ``_in_flight`` to the primary. On StoreUnavailable, what is left goes back to ``_dirty`` (unless a
        newer outage write replaced it) and the error propagates; another error drops that key with a warning."""
        counts = self._counts
        try:
            for key in list(self._in_flight):
                with self._lock:  # evictions remove keys from _in_flight under this lock
                    op = self._in_flight.get(key)
                    if op is None:
                        continue
                    mine, remaining = (self._memory.get(key), self._memory.ttl(key)) if op == _SET else (None, None)
                try:
                    self._apply(key, op, mine, remaining, counts)
                except StoreUnavailable:
                    raise
                except FmRedisError as exc:  # Redis refused this one (OOM, MISCONF ...): waiting would not help
                    counts["failed"] += 1
                    logger.warning("Session %s could not be written back to Redis (%s); it is lost", key, exc)
                with self._lock:
                    self._in_flight.pop(key, None)
        finally:
            with self._lock:
                for key, op in self._in_flight.items():
                    self._dirty.setdefault(key, op)
                self._in_flight = {}

    def _apply(
        self, key: str, op: str, mine: dict[str, Any] | None, remaining: int | None, counts: dict[str, int]
    ) -> None:
        if op == _DELETE:
            self._primary.delete(key)
            counts["deleted"] += 1
        elif mine is None or remaining is None:
            counts["expired_in_memory"] += 1
        else:
            theirs_at, mine_at = _activity(self._primary.get(key)), _activity(mine)
            if theirs_at is not None and (mine_at is None or theirs_at > mine_at):
                counts["kept_newer_in_redis"] += 1
            else:
                self._primary.set(key, mine, remaining)
                counts["written_back"] += 1

    def _call(self, call: Callable[[ISessionStore], T], marks: Callable[[], list[tuple[str, str]]] | None = None) -> T:
        """On the primary when it is up; else on memory, under the lock and re-checked, so that no memory read or write
        straddles the switch back (an outage write left behind, a read of memory just cleared). ``marks`` names the
        keys a write touches, remembered for the write-back."""
        while True:
            if self._use_primary():
                epoch = self._epoch
                try:
                    return call(self._primary)
                except StoreUnavailable as exc:
                    self._degrade(exc, epoch)
            with self._lock:
                if self._degraded:
                    result = call(self._memory)
                    for key, op in marks() if marks is not None else ():
                        self._dirty[key] = op
                    return result

    def get(self, key: str) -> dict[str, Any] | None:
        return self._call(lambda store: store.get(key))

    def set(self, key: str, value: dict[str, Any], ttl: int | None = None) -> None:
        self._call(lambda store: store.set(key, value, ttl), lambda: [(key, _SET)])

    def delete(self, key: str) -> bool:
        return self._call(lambda store: store.delete(key), lambda: [(key, _DELETE)])

    def exists(self, key: str) -> bool:
        return self._call(lambda store: store.exists(key))

    def extend_ttl(self, key: str, ttl: int | None = None) -> bool:
        # In memory only a session written during the outage can be extended; its new TTL is written back with it.
        return self._call(
            lambda store: store.extend_ttl(key, ttl), lambda: [(key, _SET)] if self._memory.exists(key) else []
        )

    def ttl(self, key: str) -> int | None:
        return self._call(lambda store: store.ttl(key))

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        listed = check_keys(keys)
        return self._call(lambda store: store.get_many(listed))

    def delete_many(self, keys: Iterable[str]) -> int:
        listed = check_keys(keys)
        return self._call(lambda store: store.delete_many(listed), lambda: [(key, _DELETE) for key in listed])

    def close(self) -> None:
        close = getattr(self._primary, "close", None)
        if close is not None:
            close()
