"""FallbackSessionStore: keep serving from memory while Redis is down, and write the outage back when it returns."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from fmredis.checks import check_count, check_key, check_keys, check_seconds, check_user_id
from fmredis.errors import FmRedisError, SessionNotFound, StoreUnavailable
from fmredis.journal import Change, OutageJournal
from fmredis.lifecycle import new_session_document
from fmredis.memory_store import InMemorySessionStore
from fmredis.outage_log import DELETE, SET, OutageLog, logger
from fmredis.serialization import CorruptSession, decode_session, encode_session
from fmredis.store import Fence, ISessionStore, SessionUpdate
from fmredis.ttl_rules import TTLRules

__all__ = ["FallbackSessionStore"]

T = TypeVar("T")

_UNLOCKED_ROUNDS = 3


class FallbackSessionStore(ISessionStore):
    """Sends everything to ``primary``; when it raises ``StoreUnavailable``, serves from an in-memory store instead.

    - Normal path: one call to the primary, nothing else (no extra round trip, no log record).
    - Outage: the first ``StoreUnavailable`` switches to memory (logged once per outage). Writes and deletes go to
      memory and are recorded with the session's bytes (and, with ``journal_path``, committed to the journal before
      they are acknowledged); reads see what was written during the outage. Sessions written before the outage are
      not in memory: ``get`` returns ``None``, ``extend_ttl`` and ``touch`` ``False``, ``update`` raises
      ``StoreUnavailable`` (not ``SessionNotFound``: the session may well exist), ``delete`` reports only memory's
      copy. A refresh, touch or update of a session held in memory is written back with it.
    - Redis only: ``create``, ``regenerate``, ``sessions_for_user`` and ``delete_user_sessions`` need the primary's
      per-user index and raise ``StoreUnavailable`` during an outage (bad input raises the same error either way).
    - Recovery: while degraded, a caller probes the primary at most every ``probe_interval`` seconds (default 0.5;
      no background thread, and the first caller after a quiet spell probes at once). The probe is the resilient
      store's breaker trial, never swallowed by its cool-down. When it answers, the outage's changes are written back
      in batches (one ``MGET`` and one pipelined batch of ``SET`` per :data:`~fmredis.outage_log.BATCH` sessions),
      then memory is cleared and calls go to the primary again (logged once, with counts in ``last_recovery``). If
      the primary fails half-way, what is left stays pending for the next probe.
      Conflict rules: a session Redis holds with a newer ``last_activity`` is kept; otherwise the outage's copy wins,
      including a session Redis no longer holds, with or without a ``user_id`` (Redis restarted empty, or expired
      it; ``create``, ``regenerate`` and ``delete_user_sessions`` cannot run during an outage, so nothing else can
      have removed it, except another worker that still reached Redis in a partial outage). A delete stays deleted.
    - Bounds, never by dropping an acknowledged write: memory holds at most its ``max_entries`` sessions and never
      evicts one not yet written back; without a journal at most ``max_entries`` changes are pending; with one, at
      most ``journal_max_bytes``. A write past a bound raises ``StoreUnavailable``, and nothing is written.
    - Journal (``journal_path``, see :class:`~fmredis.journal.OutageJournal`): one SQLite file per worker process,
      durable across ``kill -9`` (``journal_fsync=True``: across power loss). A fallback opened on a journal that
      holds an earlier process's changes starts degraded, serves them from memory, and writes them back at the first
      call that finds Redis up.

    :meth:`stats` is the primary's counters plus ``degraded`` (0 or 1), ``pending`` and ``lost_unsynced`` (0 by
    construction since 0.4; kept for compatibility). Thread-safe, including the write-back while other threads keep
    calling (during an outage ``update``'s ``fn`` runs under the wrapper's lock: keep it quick). :meth:`close` closes
    the primary and the journal.
    """

    def __init__(
        self,
        primary: ISessionStore,
        *,
        memory: InMemorySessionStore | None = None,
        max_entries: int | None = None,
        probe_interval: float = 0.5,
        journal_path: str | os.PathLike[str] | None = None,
        journal_max_bytes: int = 64 * 2**20,
        journal_fsync: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(primary, ISessionStore):
            raise TypeError(f"primary must be an ISessionStore, not {type(primary).__name__}")
        self._probe_interval = check_seconds("probe_interval", probe_interval)
        max_bytes: int = check_count("journal_max_bytes", journal_max_bytes)  # type: ignore[assignment]
        if not isinstance(journal_fsync, bool):
            raise TypeError(f"journal_fsync must be a bool, not {type(journal_fsync).__name__}")
        if journal_path is not None and not isinstance(journal_path, (str, os.PathLike)):
            raise TypeError(f"journal_path must be a path or None, not {type(journal_path).__name__}")
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
        self._clock = clock
        # Re-entrant: the write-back takes it briefly, also when run holding it (the last round).
        self._lock = threading.RLock()
        self._journal = (
            None if journal_path is None else OutageJournal(journal_path, max_bytes=max_bytes, fsync=journal_fsync)
        )
        limit = memory.max_entries if self._journal is None else sys.maxsize
        rules = primary.ttl_rules
        self._log = OutageLog(self._lock, self._journal, limit, rules.wall_clock, rules.max_ttl)
        self._writing: frozenset[str] = frozenset()  # the keys the memory call running now writes: pinned too
        memory.pinned = self._pinned
        self._degraded = False
        self._degraded_since = 0.0
        self._next_probe = 0.0
        self._reconciling = False
        self._epoch = 0  # recoveries so far: a failure seen by a call started before the last one is stale
        self.last_recovery: dict[str, Any] | None = None
        if self._journal is not None:
            self._resume(self._journal.loaded())

    def _resume(self, changes: list[Change]) -> None:
        """Take up an earlier process's journaled changes: pending again, their sessions served from memory, degraded
        until a probe (due at once) writes them back."""
        if not changes:
            return
        wall, served = self._primary.ttl_rules.wall_clock(), 0
        for key, op, payload, expires, at, seq in changes:
            self._log.restore(key, op, payload, expires, at, seq)
            if op != SET or payload is None or expires is None or expires <= wall:
                continue
            with contextlib.suppress(
                FmRedisError, CorruptSession
            ):  # full, past its lifetime: written back all the same
                self._memory.set(key, decode_session(payload), math.ceil(expires - wall), stamp=False)
                served += 1
        self._degraded, self._degraded_since, self._next_probe = True, self._clock(), 0.0
        logger.warning(
            "Outage journal %s holds %d changes of an earlier process: serving %d sessions from memory until they are "
            "written back to Redis",
            self._journal.path if self._journal is not None else "",
            len(changes),
            served,
        )

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
        """Always 0 since 0.4: no bound drops an outage write (a write past one is refused). Kept for compatibility."""
        return 0

    @property
    def journal(self) -> OutageJournal | None:
        """The outage journal, if ``journal_path`` was given."""
        return self._journal

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
        log, demote = self._log, self._memory.demote
        started = self._clock()
        try:
            self._primary.probe()
            # Write back without blocking writers for a few rounds; writes made meanwhile are dirty again for the next
            # round. Then finish holding the lock, so a steady stream of writes cannot keep recovery from ending.
            for _round in range(_UNLOCKED_ROUNDS):
                with self._lock:
                    taken = log.take()
                if not taken:
                    break
                log.write_back(self._primary, demote)
            with self._lock:
                log.take()
                log.write_back(self._primary, demote)
                self._memory.clear()
                self._degraded = False
                self._epoch += 1
        except StoreUnavailable:
            return False
        outage = self._clock() - self._degraded_since
        counts = log.counts
        self.last_recovery = {
            "outage_seconds": round(outage, 3),
            "write_back_seconds": round(self._clock() - started, 3),
            **counts,
        }
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
                    if marks is None:
                        return call(self._memory)
                    changes = list(dict(marks()).items())  # one change per key (a key listed twice is one change)
                    if not changes:  # a refresh of a session memory does not hold: nothing to record
                        return call(self._memory)
                    before = [(key, self._memory.peek_entry(key)) for key, _op in changes]
                    self._check_room(changes, before)
                    return self._record(call, changes, before)

    def _pinned(self, key: str) -> bool:
        """What memory must not evict: an outage write not yet written back, or a key the running call writes (an
        earlier key of the same ``set_many`` must not make room for a later one). Called under memory's lock, always
        holding the wrapper's (memory is written only holding it)."""
        return key in self._writing or self._log.pinned(key)

    def _check_room(self, changes: list[tuple[str, str]], before: list[tuple[str, tuple[bytes, int] | None]]) -> None:
        """Refuse at once a write of a new key that memory, full of outage writes not yet written back, could only
        take by evicting one (:meth:`InMemorySessionStore` would find that out too, but by asking about each)."""
        memory = self._memory
        if any(op == SET and entry is None for (_key, op), (_, entry) in zip(changes, before, strict=True)) and (
            self._log.full(memory.max_entries) and len(memory) >= memory.max_entries
        ):
            raise StoreUnavailable(
                f"memory is full: all {memory.max_entries} sessions held (max_entries) are outage writes not yet "
                "written back to Redis; refused rather than evicting one"
            )

    def _record(
        self,
        call: Callable[[ISessionStore], T],
        changes: list[tuple[str, str]],
        before: list[tuple[str, tuple[bytes, int] | None]],
    ) -> T:
        """Run ``call`` on memory and record the changes it made (journaled, when there is a journal); if it fails
        part-way, or the bound or the journal refuses its changes, put memory back as it was and raise: the write is
        not acknowledged, and nothing is kept."""
        memory = self._memory
        self._writing = frozenset(key for key, op in changes if op == SET)
        try:
            result = call(memory)
            recorded: list[tuple[str, str, bytes | None, int]] = []
            for key, op in changes:
                entry = memory.peek_entry(key) if op == SET else None
                recorded.append((key, SET, *entry) if entry is not None else (key, DELETE, None, 0))
            self._log.mark(recorded)
        except SessionNotFound:  # memory's own answer (a session at its lifetime cap removed): it stands
            raise
        except BaseException:
            for key, entry in before:
                memory.put_entry(key, entry)
            raise
        finally:
            self._writing = frozenset()
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
        """Marks for a call that changes a session in place: written back if memory holds it (checked before the
        call, under the lock: the same answer as after it)."""
        return lambda: [(key, SET)] if self._memory.exists(key) else []

    def get(self, key: str, *, refresh: bool = False) -> dict[str, Any] | None:
        if refresh:  # the refreshed expiry of a session held in memory is written back with it
            return self._call(lambda store: store.get(key, refresh=True), self._if_held(key))
        return self._call(lambda store: store.get(key))

    def set(
        self, key: str, value: dict[str, Any], ttl: int | None = None, *, stamp: bool = True, fence: Fence | None = None
    ) -> None:
        if fence is not None:  # only Redis can check the fence: never written to memory, never journaled
            return self._redis_only("a fenced set", lambda store: store.set(key, value, ttl, stamp=stamp, fence=fence))
        self._call(lambda store: store.set(key, value, ttl, stamp=stamp), lambda: [(key, SET)])

    def set_many(
        self, items: Iterable[tuple[str, dict[str, Any], int | None]], *, stamp: bool = True, index: bool = False
    ) -> int:
        listed = list(items)  # checked by the store that takes them (memory or the primary), before any is written
        if index:  # the per-user index is Redis's, like create's
            return self._redis_only(
                "set_many(index=True)", lambda store: store.set_many(listed, stamp=stamp, index=True)
            )
        return self._call(
            lambda store: store.set_many(listed, stamp=stamp), lambda: [(key, SET) for key, _value, _ttl in listed]
        )

    def delete(self, key: str, *, fence: Fence | None = None) -> bool:
        if fence is not None:
            return self._redis_only("a fenced delete", lambda store: store.delete(key, fence=fence))
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

    def update(
        self, key: str, fn: SessionUpdate, ttl: int | None = None, *, fence: Fence | None = None
    ) -> dict[str, Any]:
        if fence is not None:
            return self._redis_only("a fenced update", lambda store: store.update(key, fn, ttl, fence=fence))

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

    def probe(self) -> None:
        self._primary.probe()

    def logouts(self, user_ids: Iterable[str]) -> dict[str, float]:
        """The primary's (Redis only, like the per-user index)."""
        listed = list(user_ids)
        return self._redis_only("logouts", lambda store: store.logouts(listed))

    def close(self) -> None:
        try:
            self._primary.close()
        finally:
            if self._journal is not None:
                self._journal.close()


def _rules_text(rules: TTLRules) -> str:
    lifetime = rules.max_lifetime
    return (
        f"default_ttl={rules.default_ttl}, max_ttl={rules.max_ttl}, max_lifetime={lifetime}, policy={rules.ttl_policy}"
    )
