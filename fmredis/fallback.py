"""FallbackSessionStore: keep serving from memory while Redis is down, and write the outage back when it returns."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

from fmredis.errors import FmRedisError, SessionNotFound, StoreUnavailable
from fmredis.lifecycle import new_session_document, session_ref
from fmredis.memory_store import InMemorySessionStore
from fmredis.serialization import encode_session, parse_utc
from fmredis.store import ISessionStore, SessionUpdate, check_key, check_keys, check_ttl, check_user_id
from fmredis.ttl_policy import SessionTTLManager

__all__ = ["FallbackSessionStore"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

_SET, _DELETE = "set", "delete"
_PROBE_KEY = "fmredis:probe"
_UNLOCKED_ROUNDS = 3


def _new_counts() -> dict[str, int]:
    return {
        "written_back": 0,
        "deleted": 0,
        "kept_newer_in_redis": 0,
        "gone_in_redis": 0,
        "expired_in_memory": 0,
        "failed": 0,
    }


def _activity(session: dict[str, Any] | None) -> datetime | None:
    """``last_activity`` as an aware UTC datetime (naive text taken as UTC), or ``None`` when absent or unreadable
    (such a side never wins)."""
    return parse_utc(session.get("last_activity")) if session else None


def _owned(session: dict[str, Any]) -> bool:
    """Whether the session belongs to a user (a non-empty ``str`` ``user_id``), so "log out everywhere" covers it."""
    owner = session.get("user_id")
    return isinstance(owner, str) and bool(owner)


class FallbackSessionStore(ISessionStore):
    """Sends everything to ``primary``; when it raises ``StoreUnavailable``, serves from an in-memory store instead.

    - Normal path: one call to the primary, nothing else (no extra round trip, no log record).
    - Outage: the first ``StoreUnavailable`` switches to memory (logged once per outage). Writes and deletes go to
      memory and are remembered; reads see what was written during the outage. Sessions written before the outage are
      not in memory: ``get`` returns ``None``, ``extend_ttl`` and ``touch`` ``False``, ``update`` raises
      ``StoreUnavailable`` (not ``SessionNotFound``: the session may well exist), ``delete`` reports only memory's
      copy. A refresh, touch or update of a session held in memory is written back with it (an ``update`` of a held
      session that reaches its lifetime cap raises ``SessionNotFound`` as usual).
    - Redis only: ``create``, ``regenerate``, ``sessions_for_user`` and ``delete_user_sessions`` need the primary's
      per-user index, which memory cannot stand in for ("log out everywhere" must never miss a session in Redis).
      During an outage they raise :class:`~fmredis.errors.StoreUnavailable` at once (or, on the call that finds the
      primary down, its own ``StoreUnavailable``, after switching to memory for the other calls); they work again
      once a probe finds the primary back. Bad input raises the same error whether or not the primary is up.
    - Recovery: at most every ``probe_interval`` seconds a caller probes the primary (no background thread). When it
      answers, every session written during the outage is written back with its remaining TTL and every delete is
      re-applied, then memory is cleared and calls go to the primary again (logged once, with counts).
      Conflict rule: if Redis holds a session whose ``last_activity`` is newer than memory's copy, Redis's is kept;
      otherwise memory's wins, except that a session with a ``user_id`` (non-empty ``str``) that Redis no longer holds
      is NOT written back, since it may have been logged out elsewhere meanwhile (``delete_user_sessions``,
      ``regenerate``) and writing it back would revive it outside the user's index. ``create`` and ``regenerate`` are
      Redis-only, so such a session existed in Redis before the outage (one Redis itself lost, a server restarted
      empty say, is not written back either); each is counted in ``gone_in_redis``. A session without a ``user_id``
      that Redis does not hold is written back. A delete during the outage stays deleted.
    - Memory is bounded (``max_entries``, least-recently-used evicted). An evicted session that was not yet written
      back is lost: each such loss is counted in ``lost_unsynced`` and logged as a warning, never silently.

    :meth:`stats` is the primary's counters plus ``degraded`` (0 or 1), ``pending`` and ``lost_unsynced``.

    Thread-safe, including the write-back while other threads keep calling (during an outage ``update``'s ``fn`` runs
    under the wrapper's lock: keep it quick). Give ``default_ttl``, ``max_ttl``, ``ttl_policy`` and ``max_lifetime``
    the same values as the primary store so TTLs mean the same on both sides.
    """

    def __init__(
        self,
        primary: ISessionStore,
        *,
        probe_interval: float = 5.0,
        max_entries: int = 10_000,
        default_ttl: int = 1800,
        max_ttl: int = 86_400,
        ttl_policy: SessionTTLManager | None = None,
        max_lifetime: int = 86_400,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not probe_interval >= 0:
            raise ValueError(f"probe_interval must be a number of seconds >= 0 (got {probe_interval!r})")
        self._primary = primary
        self._memory = InMemorySessionStore(
            default_ttl=default_ttl,
            max_ttl=max_ttl,
            ttl_policy=ttl_policy,
            max_lifetime=max_lifetime,
            max_entries=max_entries,
            on_evict=self._evicted,
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
                ref = session_ref(key)  # never the key itself: a session id is a bearer credential
                logger.warning(
                    "Memory fallback full: session %s evicted before it reached Redis; it is lost",
                    ref,
                    extra={"session_id": ref},
                )

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
            "Redis answers again after %.1f s: wrote back %d sessions, re-applied %d deletes, kept %d newer in Redis, "
            "left out %d user sessions gone from Redis",
            outage,
            self._counts["written_back"],
            self._counts["deleted"],
            self._counts["kept_newer_in_redis"],
            self._counts["gone_in_redis"],
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
                    ref = session_ref(key)
                    logger.warning(
                        "Session %s could not be written back to Redis (%s); it is lost",
                        ref,
                        exc,
                        extra={"session_id": ref},
                    )
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
            theirs = self._primary.get(key)
            theirs_at, mine_at = _activity(theirs), _activity(mine)
            if theirs is None and _owned(mine):
                # A user's session existed in Redis before the outage (create and regenerate need Redis); gone now, it
                # may have been logged out elsewhere: writing it back would revive it, outside the user's index.
                counts["gone_in_redis"] += 1
            elif theirs_at is not None and (mine_at is None or theirs_at > mine_at):
                counts["kept_newer_in_redis"] += 1
            else:
                try:
                    self._primary.set(key, mine, remaining)
                except SessionNotFound:  # passed its lifetime cap since it was written to memory
                    counts["expired_in_memory"] += 1
                else:
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

    def _redis_only(self, what: str, call: Callable[[ISessionStore], T]) -> T:
        """On the primary, never on memory: raises ``StoreUnavailable`` during an outage (the primary's own, which also
        switches the other calls to memory, when this call is the one that finds it down)."""
        if not self._use_primary():  # may probe, and write the outage back, when a probe is due
            raise StoreUnavailable(f"{what} needs Redis; unavailable during an outage")
        epoch = self._epoch
        try:
            return call(self._primary)
        except StoreUnavailable as exc:
            self._degrade(exc, epoch)
            raise

    def _if_held(self, key: str) -> Callable[[], list[tuple[str, str]]]:
        """Marks for a call that changes a session in place: written back if memory holds it."""
        return lambda: [(key, _SET)] if self._memory.exists(key) else []

    def get(self, key: str, *, refresh: bool = False) -> dict[str, Any] | None:
        if refresh:  # the refreshed expiry of a session held in memory is written back with it
            return self._call(lambda store: store.get(key, refresh=True), self._if_held(key))
        return self._call(lambda store: store.get(key))

    def set(self, key: str, value: dict[str, Any], ttl: int | None = None) -> None:
        self._call(lambda store: store.set(key, value, ttl), lambda: [(key, _SET)])

    def delete(self, key: str) -> bool:
        return self._call(lambda store: store.delete(key), lambda: [(key, _DELETE)])

    def exists(self, key: str) -> bool:
        return self._call(lambda store: store.exists(key))

    def extend_ttl(self, key: str, ttl: int | None = None) -> bool:
        # In memory only a session written during the outage can be extended; its new TTL is written back with it.
        return self._call(lambda store: store.extend_ttl(key, ttl), self._if_held(key))

    def ttl(self, key: str) -> int | None:
        return self._call(lambda store: store.ttl(key))

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        listed = check_keys(keys)
        return self._call(lambda store: store.get_many(listed))

    def delete_many(self, keys: Iterable[str]) -> int:
        listed = check_keys(keys)
        return self._call(lambda store: store.delete_many(listed), lambda: [(key, _DELETE) for key in listed])

    def touch(self, key: str, ttl: int | None = None) -> bool:
        return self._call(lambda store: store.touch(key, ttl), self._if_held(key))

    def update(self, key: str, fn: SessionUpdate, ttl: int | None = None) -> dict[str, Any]:
        def update(store: ISessionStore) -> dict[str, Any]:
            if store is not self._memory:
                return store.update(key, fn, ttl)
            held = store.exists(key)  # under the wrapper's lock, like the update: nothing can change it meanwhile
            try:
                return store.update(key, fn, ttl)
            except SessionNotFound:
                if not held:  # it may well exist in Redis: "not found" would read as logged out
                    raise StoreUnavailable("update of a session written before the outage needs Redis") from None
                raise  # memory held it (it reached its lifetime cap, say): memory's answer is the answer

        return self._call(update, self._if_held(key))

    def create(self, user_id: str, data: dict[str, Any], ttl: int | None = None) -> str:
        # Bad input raises the same error whether or not Redis is up: checked in full before the primary is chosen.
        encode_session(new_session_document(check_user_id(user_id), data))
        if ttl is not None:
            check_ttl(ttl, self._memory.max_ttl)
        return self._redis_only("create", lambda store: store.create(user_id, data, ttl))

    def regenerate(self, session_id: str) -> str:
        check_key(session_id)
        return self._redis_only("regenerate", lambda store: store.regenerate(session_id))

    def sessions_for_user(self, user_id: str) -> list[str]:
        check_user_id(user_id)
        return self._redis_only("sessions_for_user", lambda store: store.sessions_for_user(user_id))

    def delete_user_sessions(self, user_id: str) -> int:
        check_user_id(user_id)
        return self._redis_only("delete_user_sessions", lambda store: store.delete_user_sessions(user_id))

    def stats(self) -> dict[str, int]:
        """The primary's counters (local: no round trip) plus this wrapper's outage state."""
        return {
            **self._primary.stats(),
            "degraded": int(self._degraded),
            "pending": self.pending,
            "lost_unsynced": self.lost_unsynced,
        }

    def close(self) -> None:
        close = getattr(self._primary, "close", None)
        if close is not None:
            close()
