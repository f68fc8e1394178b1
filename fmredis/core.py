"""SessionStoreBase: the rules every store keeps, written once; each backend supplies a few small primitives.

The base owns input checks, TTL rules and the lifetime cap (:class:`~fmredis.ttl_rules.TTLRules`), stamping,
encoding and decoding, corrupt-data handling, refresh, the optimistic retry loop of ``update`` and ``regenerate``,
``create``'s id and per-user cap, the counters, events and ``close``. A backend implements the primitives below on
bytes and already-checked keys (as redis-py's ``Lock.acquire`` loops and calls ``do_acquire``), and translates its own
failures into fmredis errors (:mod:`fmredis.backend` lists the primitives).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from redis.backoff import FullJitterBackoff

from fmredis.backend import StoreBackend, Transaction
from fmredis.checks import check_count, check_key, check_keys, check_user_id
from fmredis.counters import CONFLICTS, DELETED_FOR_USER, HITS, MISSES, OPS, StoreCounters
from fmredis.errors import SessionNotFound, StoreError, UpdateConflict
from fmredis.lifecycle import (
    apply_update,
    events,
    expired,
    new_session_document,
    owner_of,
    report_corrupt,
    report_created,
    report_regenerated,
    session_ref,
)
from fmredis.serialization import CorruptSession, decode_session, encode_session, parse_utc, stamped, utc_now
from fmredis.store import Fence, ISessionStore, SessionUpdate
from fmredis.ttl_policy import SessionTTLManager
from fmredis.ttl_rules import TTLRules

__all__ = ["SessionStoreBase", "conflict_pause"]

T = TypeVar("T")

# Full jitter, 1 ms doubling per attempt, at most 100 ms: updaters that keep colliding (a slow fn) spread out instead
# of retrying in lockstep.
_CONFLICT_BACKOFF = FullJitterBackoff(cap=0.1, base=0.001)


def conflict_pause(attempt: int) -> None:
    """Wait before retrying a write that lost a race (full jitter, 1 ms doubling per attempt, at most 100 ms)."""
    time.sleep(_CONFLICT_BACKOFF.compute(attempt))


class SessionStoreBase(StoreBackend, ISessionStore):
    """The shared core of :class:`~fmredis.RedisSessionStore` and :class:`~fmredis.InMemorySessionStore`.

    Options every store takes: ``default_ttl``, ``max_ttl``, ``ttl_policy`` and ``max_lifetime`` (see
    :class:`~fmredis.ttl_rules.TTLRules`); ``max_sessions_per_user`` (a create that takes a user past it removes the
    user's oldest sessions); ``update_attempts`` (how often ``update`` and ``regenerate`` retry a lost race, with
    jittered backoff); ``counters`` (``False``: :meth:`stats` reports zeros).
    """

    def __init__(
        self,
        *,
        default_ttl: int = 1800,
        max_ttl: int = 86_400,
        ttl_policy: SessionTTLManager | None = None,
        max_lifetime: int | None = None,
        max_sessions_per_user: int | None = None,
        update_attempts: int = 64,
        counters: bool = True,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._rules = TTLRules(
            default_ttl=default_ttl,
            max_ttl=max_ttl,
            ttl_policy=ttl_policy,
            max_lifetime=max_lifetime,
            wall_clock=wall_clock,
        )
        self._max_per_user = check_count("max_sessions_per_user", max_sessions_per_user, optional=True)
        self._update_attempts: int = check_count("update_attempts", update_attempts)  # type: ignore[assignment]
        self._counters = counted = StoreCounters(enabled=counters)
        self._op, self._hit, self._miss = counted.tick[OPS], counted.tick[HITS], counted.tick[MISSES]

    def __repr__(self) -> str:
        rules = self._rules
        return (
            f"{type(self).__name__}({self._repr_fields()}, default_ttl={rules.default_ttl}, max_ttl={rules.max_ttl}, "
            f"max_lifetime={rules.max_lifetime})"
        )

    def _repr_fields(self) -> str:
        """What the backend adds to the repr (never a secret)."""
        return ""

    # --- shared rules ------------------------------------------------------------------------------------------------

    @property
    def ttl_rules(self) -> TTLRules:
        return self._rules

    @property
    def default_ttl(self) -> int:
        return self._rules.default_ttl

    @property
    def max_ttl(self) -> int:
        return self._rules.max_ttl

    @property
    def ttl_policy(self) -> SessionTTLManager | None:
        return self._rules.ttl_policy

    @property
    def max_lifetime(self) -> int | None:
        return self._rules.max_lifetime

    def stats(self) -> dict[str, int]:
        return self._counters.snapshot()

    def close(self) -> None:
        self._close()

    def _session(self, key: str, payload: bytes | None) -> dict[str, Any] | None:
        """``payload`` decoded; ``None`` (with a warning) when it is not a JSON object."""
        if payload is None:
            return None
        try:
            return decode_session(payload)
        except CorruptSession as exc:
            report_corrupt(self._counters, key, exc)
            return None

    def _indexed_for(self, session: dict[str, Any], seconds: int) -> None:
        owner = session.get("user_id")
        if type(owner) is str and owner:
            self._keep_index_of(owner, session, seconds)

    def _keep_index_of(self, owner: str, session: dict[str, Any], seconds: int) -> None:
        """Keep the user's index alive for a session of theirs that no lifetime cap bounds (the index's own expiry
        covers the capped ones)."""
        rules = self._rules
        if rules.max_lifetime is None or rules.lifetime_left(session) is None:
            self._keep_index(owner, seconds)

    def _load(self, key: str, read: Callable[..., bytes | None], *args: Any) -> dict[str, Any] | None:
        """``read(*args)`` decoded; ``None`` (with a warning) when it finds data that is not a session."""
        try:
            payload = read(*args)
            return None if payload is None else decode_session(payload)
        except CorruptSession as exc:
            report_corrupt(self._counters, key, exc)
            return None

    # --- ISessionStore: the hot path ---------------------------------------------------------------------------------

    def get(self, key: str, *, refresh: bool = False) -> dict[str, Any] | None:
        if refresh:
            return self._refreshed(key, self._rules.for_touch(None))
        try:
            payload = self._read(check_key(key))
            session = None if payload is None else decode_session(payload)
        except CorruptSession as exc:
            report_corrupt(self._counters, key, exc)
            session = None
        self._op()
        (self._miss if session is None else self._hit)()
        return session

    def set(
        self, key: str, value: dict[str, Any], ttl: int | None = None, *, stamp: bool = True, fence: Fence | None = None
    ) -> None:
        """See :meth:`ISessionStore.set`."""
        check_key(key)
        if fence is not None:
            self._check_fence(key, fence)
        if stamp:
            value = stamped(value)
        payload = encode_session(value)
        seconds = self._rules.for_write(ttl, value, stamped=stamp)
        if seconds:
            if fence is None:
                self._write(key, payload, seconds)
            else:
                self._fenced(key, fence, payload, seconds)
            if self._indexes_expire and type(owner := value.get("user_id")) is str and owner:  # inlined: hot path
                self._keep_index_of(owner, value, seconds)
            self._op()
            return
        if fence is None:
            self._remove(key)
        else:
            self._fenced(key, fence, None, 0)
        self._op()
        raise expired(key)

    def set_many(
        self, items: Iterable[tuple[str, dict[str, Any], int | None]], *, stamp: bool = True, index: bool = False
    ) -> int:
        """See :meth:`ISessionStore.set_many`: every item is checked and encoded before anything is written."""
        writes: list[tuple[str, bytes, int]] = []
        past: list[str] = []
        owners: list[tuple[str, dict[str, Any], int]] = []
        listed: list[tuple[str, str, float]] = []
        for key, value, ttl in items:
            check_key(key)
            if stamp:
                value = stamped(value)
            payload = encode_session(value)
            seconds = self._rules.for_write(ttl, value, stamped=stamp)
            if seconds:
                writes.append((key, payload, seconds))
                owner = owner_of(value)
                if self._indexes_expire and owner is not None:
                    owners.append((owner, value, seconds))
                if index and owner is not None:
                    created = parse_utc(value.get("created_at")) or utc_now()
                    listed.append((owner, key, created.timestamp()))
            else:
                past.append(key)
        if writes:
            self._write_many(writes)
        if listed:
            self._list_many(listed)
        for owner, value, seconds in owners:
            self._keep_index_of(owner, value, seconds)
        if past:
            self._remove_many(past)
        self._op()
        return len(writes)

    def logouts(self, user_ids: Iterable[str]) -> dict[str, float]:
        """See :meth:`ISessionStore.logouts`."""
        checked = sorted({check_user_id(user_id) for user_id in user_ids})
        if not checked:
            return {}
        floor = self._rules.wall_clock() - 2 * self._rules.max_ttl
        found = zip(checked, self._logouts(checked), strict=True)
        return {user_id: at for user_id, at in found if at is not None and at >= floor}

    def delete(self, key: str, *, fence: Fence | None = None) -> bool:
        if fence is None:
            removed = self._remove(check_key(key))
        else:
            self._check_fence(check_key(key), fence)
            removed = self._fenced(key, fence, None, 0)
        self._op()
        return removed

    def exists(self, key: str) -> bool:
        """See :meth:`ISessionStore.exists`: the session is read and decoded, so unreadable data does not exist."""
        found = self._load(key, self._peek, check_key(key)) is not None
        self._op()
        return found

    def ttl(self, key: str) -> int | None:
        """See :meth:`ISessionStore.ttl`: read together with the session, so unreadable data has no TTL."""
        try:
            payload, seconds = self._read_with_ttl(check_key(key))
        except CorruptSession as exc:
            report_corrupt(self._counters, key, exc)
            payload, seconds = None, 0
        found = self._session(key, payload) is not None
        self._op()
        return seconds if found else None

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """See :meth:`ISessionStore.get_many`. Data of another type reads as missing without a warning."""
        checked = check_keys(keys)
        if not checked:
            return {}
        found: dict[str, dict[str, Any]] = {}
        hits = 0
        for key, payload in zip(checked, self._read_many(checked), strict=True):
            session = self._session(key, payload)
            if session is not None:
                found[key] = session
                hits += 1  # per key asked for, as a get per key would count: a repeated key counts each time
        self._op()
        self._counters.add(HITS, hits)
        self._counters.add(MISSES, len(checked) - hits)
        return found

    def delete_many(self, keys: Iterable[str]) -> int:
        checked = check_keys(keys)
        if not checked:
            return 0
        removed = self._remove_many(checked)
        self._op()
        return removed

    # --- sliding expiry ----------------------------------------------------------------------------------------------

    def touch(self, key: str, ttl: int | None = None) -> bool:
        return self._refreshed(key, self._rules.for_touch(ttl)) is not None

    def extend_ttl(self, key: str, ttl: int | None = None) -> bool:
        """See :meth:`ISessionStore.extend_ttl`: like :meth:`touch`, with ``ttl`` or the default rather than the
        policy's TTL."""
        return self._refreshed(key, self._rules.explicit(ttl)) is not None

    def _refreshed(self, key: str, seconds: int) -> dict[str, Any] | None:
        """Read the session and restart its expiry at ``seconds`` in one step, then cut it to the lifetime cap."""
        session = self._load(key, self._read_and_expire, check_key(key), seconds)
        if session is not None:
            left = self._rules.lifetime_left(session)
            if left is not None and left < seconds:
                if left >= 1:
                    self._expire(key, int(left))
                else:
                    self._remove(key)
                    expired(key)  # logged; a refresh of an expired session reads as missing
                    session = None
            elif self._indexes_expire:
                self._indexed_for(session, seconds)
        self._op()
        (self._miss if session is None else self._hit)()
        return session

    # --- atomic read-modify-write ------------------------------------------------------------------------------------

    def update(
        self, key: str, fn: SessionUpdate, ttl: int | None = None, *, fence: Fence | None = None
    ) -> dict[str, Any]:
        """See :meth:`ISessionStore.update`: optimistic; ``fn`` runs with nothing locked, and its result is written
        only if nobody wrote the session since it was read, else it runs again on a fresh copy."""
        check_key(key)
        if fence is not None:
            self._check_fence(key, fence)
        if ttl is not None:
            self._rules.explicit(ttl)  # bad input raises before anything is read

        def step(txn: Transaction, session: dict[str, Any]) -> tuple[bool, tuple[bytes, int]]:
            updated = apply_update(session, fn)
            payload, seconds = encode_session(updated), self._rules.for_write(ttl, updated)
            return txn.write(payload, seconds), (payload, seconds)

        payload, seconds = self._optimistic("update", key, step, fence)
        if not seconds:
            raise expired(key)
        written = decode_session(payload)
        if self._indexes_expire:
            self._indexed_for(written, seconds)
        return written  # as a read returns it (datetimes as text, tuples as lists)

    def regenerate(self, session_id: str) -> str:
        """See :meth:`ISessionStore.regenerate`: optimistic like :meth:`update`."""
        check_key(session_id)

        def step(txn: Transaction, session: dict[str, Any]) -> tuple[bool, tuple[str, str | None, int]]:
            session["last_activity"] = now = utc_now()
            seconds = self._rules.for_write(None, session)
            user_id = owner_of(session)
            created = (parse_utc(session.get("created_at")) or now).timestamp()
            new_id = self._successor_id(session_id)
            return txn.move(new_id, encode_session(session), seconds, user_id, created), (new_id, user_id, seconds)

        new_id, user_id, seconds = self._optimistic("regenerate", session_id, step)
        if user_id is not None:  # the old id is logged out: a fallback must not write its outage copy back
            self._note_logout(user_id, self._rules.wall_clock(), 2 * self._rules.max_ttl, "regenerate")
        if not seconds:
            raise expired(session_id)
        report_regenerated(self._counters, session_id, new_id, user_id, seconds)
        return new_id

    def _optimistic(
        self,
        what: str,
        key: str,
        step: Callable[[Transaction, dict[str, Any]], tuple[bool, T]],
        fence: Fence | None = None,
    ) -> T:
        """``step(txn, session)`` on a fresh read of the session until its commit wins, or the attempts run out."""
        for attempt in range(self._update_attempts):
            with self._transaction(what, key, fence) as txn:
                session = self._load(key, txn.read)
                if session is None:
                    self._op()
                    self._miss()
                    raise SessionNotFound(f"No session {session_ref(key)} to {what}: nothing was written.")
                won, result = step(txn, session)
            if won:
                self._op()
                self._hit()
                return result
            self._counters.tick[CONFLICTS]()
            if attempt + 1 < self._update_attempts:
                conflict_pause(attempt)
        raise UpdateConflict(
            f"{what} of session {session_ref(key)} lost to other writers {self._update_attempts} times; not applied"
        )

    # --- creation and the per-user index -----------------------------------------------------------------------------

    def create(self, user_id: str, data: dict[str, Any], ttl: int | None = None) -> str:
        user_id = check_user_id(user_id)
        session = new_session_document(user_id, data)
        payload = encode_session(session)
        seconds = max(1, self._rules.for_write(ttl, session))  # new: only a max_lifetime under 1 s could make it 0
        created = session["created_at"].timestamp()
        for _attempt in range(3):  # a collision of 256-bit random ids does not happen; checked all the same
            session_id = self._new_id(user_id)
            count = self._insert(session_id, payload, seconds, user_id, created)
            if count is not None:
                break
        else:
            raise StoreError("could not find an unused session id in 3 attempts")
        cap = self._max_per_user
        evicted: list[str] = []
        if cap is not None and count > cap:
            try:
                evicted = self._trim_user(user_id, cap, session_id)
            except StoreError as exc:  # the session is written: report the id, and the cap next time
                events.warning(
                    "Per-user session cap not applied (%s); the user has more sessions than the cap",
                    exc,
                    extra={"user_id": user_id, "cap": cap},
                )
        self._op()
        report_created(self._counters, session_id, user_id, seconds, len(evicted), cap)
        return session_id

    def sessions_for_user(self, user_id: str) -> list[str]:
        """See :meth:`ISessionStore.sessions_for_user`; prunes entries of gone sessions on the way."""
        listed = self._user_sessions(check_user_id(user_id))
        self._op()
        return listed

    def delete_user_sessions(self, user_id: str) -> int:
        user_id = check_user_id(user_id)
        # First: a logout must never revive, even if the removal below fails half-way (see logouts()).
        self._note_logout(user_id, self._rules.wall_clock(), 2 * self._rules.max_ttl, "delete_user_sessions")
        removed = self._remove_user(user_id)
        self._op()
        self._counters.add(DELETED_FOR_USER, removed)
        events.info("Sessions deleted for user", extra={"user_id": user_id, "removed": removed})
        return removed
