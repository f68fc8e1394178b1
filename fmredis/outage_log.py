"""OutageLog: what a fallback's outage changed that the primary has not seen yet, and how it is written back."""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any

from fmredis.errors import FmRedisError, SessionNotFound, StoreUnavailable
from fmredis.lifecycle import owner_of, session_ref
from fmredis.memory_store import InMemorySessionStore
from fmredis.serialization import parse_utc
from fmredis.store import ISessionStore

__all__ = ["DELETE", "SET", "OutageLog"]

logger = logging.getLogger("fmredis.fallback")

SET, DELETE = "set", "delete"

COUNT_NAMES = ("written_back", "deleted", "kept_newer_in_redis", "gone_in_redis", "expired_in_memory", "failed")


class OutageLog:
    """The keys an outage wrote (``SET``) or deleted (``DELETE``) in memory, each in one of two states: dirty (not yet
    taken for a write-back) or in flight (taken by the write-back running now, not yet applied).

    Not locked itself: every method is called holding the fallback's lock (``lock``), which also covers the memory
    store's writes, so that no outage write can slip between a key's write-back and the switch back to the primary.
    The write-back itself runs outside the lock, key by key.
    """

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self._dirty: dict[str, str] = {}
        self._in_flight: dict[str, str] = {}
        self._applying: str | None = None  # the key write_back has read from memory and is writing now
        self._applying_evicted = False  # ... and memory evicted it meanwhile
        self.counts = dict.fromkeys(COUNT_NAMES, 0)
        #: Outage writes the memory bound evicted before they reached the primary: lost, and each logged.
        self.lost_unsynced = 0

    def __len__(self) -> int:
        """Changes not yet applied to the primary."""
        return len(self._dirty) + len(self._in_flight)

    def mark(self, key: str, op: str) -> None:
        self._dirty[key] = op

    def start_outage(self) -> None:
        self.counts = dict.fromkeys(COUNT_NAMES, 0)

    def evicted(self, key: str) -> None:
        """Memory evicted ``key``: an outage write of it that has not reached the primary is lost (counted, logged).
        The key the write-back is applying right now is lost only if that apply does not get through: its session was
        read from memory already."""
        for pending in (self._dirty, self._in_flight):
            if pending.get(key) == SET:
                if pending is self._in_flight and key == self._applying:
                    self._applying_evicted = True
                    continue
                del pending[key]
                self._lost(key)

    def _lost(self, key: str) -> None:
        self.lost_unsynced += 1
        ref = session_ref(key)  # never the key itself: a session id is a bearer credential
        logger.warning(
            "Memory fallback full: session %s evicted before it reached Redis; it is lost",
            ref,
            extra={"session_id": ref},
        )

    def take(self) -> bool:
        """Move every dirty change in flight, for :meth:`write_back`; whether there was any."""
        self._in_flight, self._dirty = self._dirty, {}
        return bool(self._in_flight)

    def write_back(self, primary: ISessionStore, memory: InMemorySessionStore) -> None:
        """Apply the changes in flight to ``primary``. On ``StoreUnavailable`` what is left goes back to dirty (unless a
        newer outage write replaced it) and the error propagates; a change the primary refuses (``OOM``,
        ``MISCONF`` ...) is dropped with a warning, since waiting would not help."""
        try:
            for key in list(self._in_flight):
                with self._lock:  # evictions remove keys from the in-flight map under this lock
                    op = self._in_flight.get(key)
                    if op is None:
                        continue
                    mine, remaining = (memory.get(key), memory.ttl(key)) if op == SET else (None, None)
                    self._applying, self._applying_evicted = key, False
                try:
                    self._apply(primary, key, op, mine, remaining)
                except StoreUnavailable:
                    with self._lock:
                        if self._applying_evicted:  # memory no longer holds it, and Redis did not take it
                            del self._in_flight[key]
                            self._lost(key)
                    raise
                except FmRedisError as exc:
                    self.counts["failed"] += 1
                    ref = session_ref(key)
                    logger.warning(
                        "Session %s could not be written back to Redis (%s); it is lost",
                        ref,
                        exc,
                        extra={"session_id": ref},
                    )
                with self._lock:
                    self._in_flight.pop(key, None)
                    self._applying = None
        finally:
            with self._lock:
                self._applying = None
                for key, op in self._in_flight.items():
                    self._dirty.setdefault(key, op)
                self._in_flight = {}

    def _apply(
        self, primary: ISessionStore, key: str, op: str, mine: dict[str, Any] | None, remaining: int | None
    ) -> None:
        """Write one change back, by the conflict rules of :class:`~fmredis.FallbackSessionStore`."""
        counts = self.counts
        if op == DELETE:
            primary.delete(key)
            counts["deleted"] += 1
            return
        if mine is None or remaining is None:
            counts["expired_in_memory"] += 1
            return
        theirs = primary.get(key)
        theirs_at, mine_at = _activity(theirs), _activity(mine)
        if theirs is None and owner_of(mine) is not None:
            # A user's session existed in Redis before the outage (create and regenerate need Redis); gone now, it
            # may have been logged out elsewhere: writing it back would revive it, outside the user's index.
            counts["gone_in_redis"] += 1
        elif theirs_at is not None and (mine_at is None or theirs_at > mine_at):
            counts["kept_newer_in_redis"] += 1
        else:
            try:
                primary.set(key, mine, remaining, stamp=False)  # its own last_activity: the time of the outage write
            except SessionNotFound:  # passed its lifetime cap since it was written to memory
                counts["expired_in_memory"] += 1
            else:
                counts["written_back"] += 1


def _activity(session: dict[str, Any] | None) -> datetime | None:
    """``last_activity`` as an aware UTC datetime, or ``None`` when absent or unreadable (such a side never wins)."""
    return parse_utc(session.get("last_activity")) if session else None
