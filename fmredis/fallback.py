"""FallbackSessionStore: keep serving from memory while Redis is down, and write the outage back when it returns."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from fmredis.checks import check_count, check_key, check_keys, check_seconds, check_user_id
from fmredis.errors import SessionNotFound, StoreUnavailable
from fmredis.lifecycle import new_session_document
from fmredis.memory_store import InMemorySessionStore
from fmredis.outage_log import DELETE, SET, OutageLog, logger
from fmredis.serialization import encode_session
from fmredis.store import ISessionStore, SessionUpdate
from fmredis.ttl_rules import TTLRules

__all__ = ["FallbackSessionStore"]

T = TypeVar("T")

_PROBE_KEY = "fmredis:probe"
_UNLOCKED_ROUNDS = 3


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
    - Memory: ``memory``, an :class:`~fmredis.InMemorySessionStore` with the primary's TTL rules (default: one of
      ``max_entries`` sessions, built from ``primary.ttl_rules``). It is bounded, least-recently-used evicted. An
      evicted session that was not yet written back is lost: each such loss is counted in ``lost_unsynced`` and logged
      as a warning, never silently. A memory store passed in gets the fallback's eviction hook (an ``on_evict`` it
      already has is still called after it) and must not be shared with another fallback.

    :meth:`stats` is the primary's counters plus ``degraded`` (0 or 1), ``pending`` and ``lost_unsynced``.

    Thread-safe, including the write-back while other threads keep calling (during an outage ``update``'s ``fn`` runs
    under the wrapper's lock: keep it quick). :meth:`close` closes the primary.
    """

    def __init__(
        self,
        primary: ISessionStore,
        *,
        memory: InMemorySessionStore | None = None,
        max_entries: int | None = None,
        probe_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(primary, ISessionStore):
            raise TypeError(f"primary must be an ISessionStore, not {type(primary).__name__}")
        self._probe_interval = check_seconds("probe_interval", probe_interval)
        if memory is None:
            rules = primary.ttl_rules
            memory = InMemorySessionStore(
                default_ttl=rules.default_ttl,
                max_ttl=rules.max_ttl,
                ttl_policy=rules.ttl_policy,
                max_lifetime=rules.max_lifetime,
                wall_clock=rules.wall_clock,
                max_entries=10_000 if max_entries is None else check_count("max_entries", max_entries),  # type: ignore[arg-type]
            )
        elif not isinstance(memory, InMemorySessionStore):
            raise TypeError(f"memory must be an InMemorySessionStore, not {type(memory).__name__}")
        elif max_entries is not None:
            raise TypeError("give max_entries or memory, not both (memory has its own max_entries)")
        elif memory.ttl_rules != primary.ttl_rules:
            raise ValueError(
                f"memory's TTL rules ({_rules_text(memory.ttl_rules)}) differ from the primary's "
                f"({_rules_text(primary.ttl_rules)}): TTLs would mean different things on the two sides"
            )
        self._primary = primary
        self._memory = memory
        memory.on_evict = self._evicted if memory.on_evict is None else _both(self._evicted, memory.on_evict)
        self._clock = clock
        # Re-entrant: memory's eviction callback runs inside writes made under this lock.
        self._lock = threading.RLock()
        self._log = OutageLog(self._lock)
        self._degraded = False
        self._degraded_since = 0.0
        self._next_probe = 0.0
        self._reconciling = False
        self._epoch = 0  # recoveries so far: a failure seen by a call started before the last one is stale
        self.last_recovery: dict[str, Any] | None = None

    @property
    def ttl_rules(self) -> TTLRules:
        return self._primary.ttl_rules

    @property
    def memory(self) -> InMemorySessionStore:
        """The in-memory store outage calls are served from."""
        return self._memory

    @property
    def degraded(self) -> bool:
        """``True`` while sessions are served from memory."""
        return self._degraded

    @property
    def pending(self) -> int:
        """Writes and deletes made during the outage and not yet applied to the primary."""
        with self._lock:
            return len(self._log)

    @property
    def lost_unsynced(self) -> int:
        """Outage writes the memory bound evicted before they reached the primary (each also logged)."""
        return self._log.lost_unsynced

    def _evicted(self, key: str) -> None:
        with self._lock:  # held already (memory writes are made holding it): re-entered
            self._log.evicted(key)

    def _degrade(self, exc: StoreUnavailable, epoch: int) -> None:
        with self._lock:
            if self._degraded or epoch != self._epoch:  # already degraded, or the failure predates a recovery
                return
            self._degraded = True
            self._degraded_since = self._clock()
            self._next_probe = self._degraded_since + self._probe_interval
            self._log.start_outage()
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
        log = self._log
        try:
            self._primary.exists(_PROBE_KEY)
            # Write back without blocking writers for a few rounds; writes made meanwhile are dirty again for the next
            # round. Then finish holding the lock, so a steady stream of writes cannot keep recovery from ending.
            for _round in range(_UNLOCKED_ROUNDS):
                with self._lock:
                    taken = log.take()
                if not taken:
                    break
                log.write_back(self._primary, self._memory)
            with self._lock:
                log.take()
                log.write_back(self._primary, self._memory)
                self._memory.delete_many([key for key, _payload, _ttl in self._memory.items_snapshot()])
                self._degraded = False
                self._epoch += 1
        except StoreUnavailable:
            return False
        outage = self._clock() - self._degraded_since
        counts = log.counts
        self.last_recovery = {"outage_seconds": round(outage, 3), **counts}
        logger.info(
            "Redis answers again after %.1f s: wrote back %d sessions, re-applied %d deletes, kept %d newer in Redis, "
            "left out %d user sessions gone from Redis",
            outage,
            counts["written_back"],
            counts["deleted"],
            counts["kept_newer_in_redis"],
            counts["gone_in_redis"],
            extra={"recovery": self.last_recovery},
        )
        return True

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
                        self._log.mark(key, op)
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
        return lambda: [(key, SET)] if self._memory.exists(key) else []

    def get(self, key: str, *, refresh: bool = False) -> dict[str, Any] | None:
        if refresh:  # the refreshed expiry of a session held in memory is written back with it
            return self._call(lambda store: store.get(key, refresh=True), self._if_held(key))
        return self._call(lambda store: store.get(key))

    def set(self, key: str, value: dict[str, Any], ttl: int | None = None, *, stamp: bool = True) -> None:
        self._call(lambda store: store.set(key, value, ttl, stamp=stamp), lambda: [(key, SET)])

    def delete(self, key: str) -> bool:
        return self._call(lambda store: store.delete(key), lambda: [(key, DELETE)])

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
        return self._call(lambda store: store.delete_many(listed), lambda: [(key, DELETE) for key in listed])

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
            self.ttl_rules.explicit(ttl)
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
        self._primary.close()


def _both(first: Callable[[str], None], then: Callable[[str], None]) -> Callable[[str], None]:
    def both(key: str) -> None:
        first(key)
        then(key)

    return both


def _rules_text(rules: TTLRules) -> str:
    lifetime = rules.max_lifetime
    return (
        f"default_ttl={rules.default_ttl}, max_ttl={rules.max_ttl}, max_lifetime={lifetime}, policy={rules.ttl_policy}"
    )
