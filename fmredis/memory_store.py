"""InMemorySessionStore: sessions as orjson bytes in a bounded, expiring, thread-safe LRU dict; nothing logged per
call."""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from fmredis.counters import CONFLICTS, DELETED_FOR_USER, HITS, MISSES, OPS, StoreCounters
from fmredis.errors import SessionNotFound, StoreError, UpdateConflict
from fmredis.lifecycle import (
    apply_update,
    conflict_pause,
    events,
    lifetime_reached,
    new_session_document,
    new_session_id,
    report_created,
    report_regenerated,
    session_ref,
)
from fmredis.serialization import decode_session, encode_for_write, encode_session, parse_utc, utc_now
from fmredis.store import ISessionStore, SessionUpdate, TTLDefaults, check_key, check_keys, check_user_id
from fmredis.ttl_policy import SessionTTLManager

__all__ = ["InMemorySessionStore"]

# Rebuild the expiry heap (or sweep the user index) once it holds this many stale items beyond twice the live ones:
# bounds its memory while keeping the rebuild cost amortized over at least as many additions as it scans.
_SLACK = 64


class _Entry:
    """A stored session. Its ``payload`` never changes: every write puts in a new entry, so an updater that still finds
    the entry object it read knows nobody wrote the session since."""

    __slots__ = ("deadline", "payload", "ttl")

    def __init__(self, payload: bytes, deadline: float, ttl: int) -> None:
        self.payload = payload
        self.deadline = deadline
        # The TTL the deadline was computed from: caps ttl() so float rounding in ``deadline - now`` can never report
        # more seconds than were granted.
        self.ttl = ttl


class InMemorySessionStore(TTLDefaults, ISessionStore):
    """Sessions in this process: the same orjson bytes :class:`~fmredis.RedisSessionStore` would write, with expiry.

    Values read back exactly as from the Redis store (``last_activity`` stamped, tuples as lists, datetimes and UUIDs
    as their JSON text), and every read returns a freshly decoded dict, so callers can never change stored state
    through one. Keys are used as given (no prefix).

    Expiry runs on ``clock`` (seconds, monotonic; injectable for tests): a session is gone once ``clock()`` reaches
    its deadline, to every method alike, and is purged lazily. :meth:`ttl` rounds the remaining time up, so a live
    session never reports 0. ``max_lifetime`` counts on the wall clock, from ``created_at``.

    Lifecycle as in the Redis store: ``ttl_policy``, ``max_lifetime``, the user index and ``max_sessions_per_user``,
    :meth:`stats` (``counters=False``: zeros), the ``fmredis.events`` records, and an optimistic :meth:`update`
    (``fn`` runs with no lock held; its result is written only if nobody wrote the session meanwhile, else ``fn``
    runs again after a jittered pause, at most ``update_attempts`` times).

    Bound: at most ``max_entries`` sessions are held, expired ones not yet purged included. Storing a new key into a
    full store first purges every expired session, then, if still full, evicts the least recently used one. Writes,
    ``get``, ``get_many``, ``touch`` and ``extend_ttl`` count as use; ``exists``, ``ttl`` and :meth:`items_snapshot`
    do not. Each such eviction adds one to :attr:`evictions` and calls ``on_evict(key)`` once the write is done; an
    exception from ``on_evict`` propagates out of that write, after the value has been stored. Evicted and deleted
    sessions are dropped from the user index when next met, never listed.

    Thread-safety: every method may be called from many threads at once. One lock guards the entries and the user
    index; encoding, decoding, update functions, the clock and ``on_evict`` all run outside it, so a slow callback
    never blocks other callers. Invalid input raises (:class:`~fmredis.errors.InvalidKeyError`,
    :class:`~fmredis.errors.InvalidTTLError`, :class:`~fmredis.errors.SerializationError`) before anything is changed.
    """

    def __init__(
        self,
        *,
        default_ttl: int = 1800,
        max_ttl: int = 86_400,
        ttl_policy: SessionTTLManager | None = None,
        max_lifetime: int = 86_400,
        max_sessions_per_user: int | None = None,
        update_attempts: int = 64,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        on_evict: Callable[[str], None] | None = None,
        counters: bool = True,
    ) -> None:
        self._init_ttls(default_ttl, max_ttl, ttl_policy, max_lifetime)
        for name, value in (("max_entries", max_entries), ("update_attempts", update_attempts)):
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be an int of at least 1 (got {value!r})")
        if max_sessions_per_user is not None and (type(max_sessions_per_user) is not int or max_sessions_per_user < 1):
            raise ValueError(f"max_sessions_per_user must be None or an int >= 1 (got {max_sessions_per_user!r})")
        if not callable(clock):
            raise TypeError(f"clock must be callable, not {type(clock).__name__}")
        if on_evict is not None and not callable(on_evict):
            raise TypeError(f"on_evict must be callable or None, not {type(on_evict).__name__}")
        self._max_entries = max_entries
        self._update_attempts = update_attempts
        self._max_per_user = max_sessions_per_user
        self._clock, self._on_evict = clock, on_evict
        self._counters = counted = StoreCounters(enabled=counters)
        self._op, self._hit, self._miss = counted.tick[OPS], counted.tick[HITS], counted.tick[MISSES]
        self._lock = threading.Lock()
        # Recency order: least recently used first.
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        # (deadline, key) for every deadline ever given to a held entry, so expired entries are found without a scan.
        # Items whose entry was since removed or given a new deadline are stale and skipped when popped.
        self._expiry_heap: list[tuple[float, str]] = []
        self._evictions = 0
        # user_id -> {session_id: created (epoch seconds)}; entries of gone sessions are dropped when next met.
        self._users: dict[str, dict[str, float]] = {}
        self._indexed = 0  # index entries, all users together

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(default_ttl={self._default_ttl}, max_ttl={self._max_ttl}, "
            f"max_entries={self._max_entries})"
        )

    @property
    def max_entries(self) -> int:
        return self._max_entries

    @property
    def evictions(self) -> int:
        """How many live sessions the ``max_entries`` bound has evicted so far (expired ones purged are not counted)."""
        return self._evictions

    def __len__(self) -> int:
        """The number of live (unexpired) sessions; purges the expired ones."""
        now = self._clock()
        with self._lock:
            self._purge_expired(now)
            return len(self._entries)

    def items_snapshot(self) -> list[tuple[str, bytes, int]]:
        """``(key, payload, remaining_ttl_seconds)`` for every live session, least recently used first.

        ``payload`` is the stored orjson document (:func:`~fmredis.serialization.decode_session` reads it);
        the remaining TTL is rounded up like :meth:`ttl`. A consistent copy taken under the lock; recency is unchanged.
        """
        now = self._clock()
        with self._lock:
            self._purge_expired(now)
            return [(key, entry.payload, _remaining(entry, now)) for key, entry in self._entries.items()]

    def stats(self) -> dict[str, int]:
        return self._counters.snapshot()

    def _looked_up(self, found: bool) -> None:
        self._op()
        (self._hit if found else self._miss)()

    # --- internals; every method below that touches the entries is called with the lock held ------------------------

    def _live(self, key: str, now: float) -> _Entry | None:
        """The entry under ``key`` if it has not expired; an expired one is removed on the way."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.deadline <= now:
            del self._entries[key]
            return None
        return entry

    def _store(self, key: str, payload: bytes, now: float, seconds: int) -> str | None:
        """Put a new entry under ``key``, most recently used, or remove the key if ``seconds`` is 0 (past the lifetime
        cap); returns the key evicted to make room, if any."""
        entries = self._entries
        if not seconds:
            entries.pop(key, None)
            return None
        evicted: str | None = None
        # Replacing a held entry (even an expired one) does not grow the store, so nothing is evicted.
        if key not in entries and len(entries) >= self._max_entries:
            self._purge_expired(now)
            if len(entries) >= self._max_entries:
                evicted, _ = entries.popitem(last=False)
                self._evictions += 1
        entries[key] = _Entry(payload, now + seconds, seconds)
        entries.move_to_end(key)
        self._schedule(key, now + seconds)
        return evicted

    def _expire(self, key: str, entry: _Entry, now: float, seconds: int) -> None:
        entry.deadline, entry.ttl = now + seconds, seconds
        self._schedule(key, entry.deadline)

    def _schedule(self, key: str, deadline: float) -> None:
        heap = self._expiry_heap
        heapq.heappush(heap, (deadline, key))
        if len(heap) > 2 * len(self._entries) + _SLACK:
            heap[:] = [(entry.deadline, held) for held, entry in self._entries.items()]
            heapq.heapify(heap)

    def _purge_expired(self, now: float) -> None:
        heap = self._expiry_heap
        entries = self._entries
        while heap and heap[0][0] <= now:
            deadline, key = heapq.heappop(heap)
            entry = entries.get(key)
            if entry is not None and entry.deadline == deadline:
                del entries[key]

    def _index(self, user_id: str, session_id: str, created: float) -> None:
        sessions = self._users.setdefault(user_id, {})
        self._indexed += session_id not in sessions
        sessions[session_id] = created
        if self._indexed > 2 * len(self._entries) + _SLACK:  # drop every user's entries of sessions no longer held
            entries = self._entries
            swept = {
                user: {sid: at for sid, at in held.items() if sid in entries} for user, held in self._users.items()
            }
            self._users = {user: held for user, held in swept.items() if held}
            self._indexed = sum(map(len, self._users.values()))

    def _unindex(self, user_id: str, session_ids: Iterable[str]) -> None:
        sessions = self._users.get(user_id)
        if sessions is not None:
            for session_id in session_ids:
                self._indexed -= sessions.pop(session_id, None) is not None
            if not sessions:
                del self._users[user_id]

    def _user_live(self, user_id: str, now: float) -> list[tuple[str, float]]:
        """``(session_id, created)`` of the user's live indexed sessions, oldest first; drops entries of gone ones."""
        sessions = self._users.get(user_id, {})
        self._unindex(user_id, [session_id for session_id in sessions if self._live(session_id, now) is None])
        return sorted(sessions.items(), key=lambda item: (item[1], item[0]))  # equal times by id, as Redis's ZRANGE

    # --- ISessionStore ----------------------------------------------------------------------------------------------

    def get(self, key: str, *, refresh: bool = False) -> dict[str, Any] | None:
        if refresh:
            return self._refresh(key, self._touch_ttl(None))
        check_key(key)
        now = self._clock()
        with self._lock:
            entry = self._live(key, now)
            if entry is not None:
                self._entries.move_to_end(key)
        self._looked_up(entry is not None)
        return None if entry is None else decode_session(entry.payload)

    def set(self, key: str, value: dict[str, Any], ttl: int | None = None) -> None:
        """See :meth:`ISessionStore.set`. A session past its lifetime cap is removed instead of stored."""
        check_key(key)
        payload = encode_for_write(value)
        seconds = self._write_ttl(ttl, value)
        now = self._clock()
        with self._lock:
            evicted = self._store(key, payload, now, seconds)
        self._op()
        if not seconds:
            raise lifetime_reached(key)
        if evicted is not None and self._on_evict is not None:
            self._on_evict(evicted)

    def delete(self, key: str) -> bool:
        check_key(key)
        now = self._clock()
        with self._lock:
            entry = self._entries.pop(key, None)
        self._op()
        return entry is not None and entry.deadline > now

    def exists(self, key: str) -> bool:
        check_key(key)
        now = self._clock()
        with self._lock:
            found = self._live(key, now) is not None
        self._op()
        return found

    def extend_ttl(self, key: str, ttl: int | None = None) -> bool:
        """See :meth:`ISessionStore.extend_ttl`: like :meth:`touch`, with ``ttl`` or the default rather than the
        policy's TTL."""
        return self._refresh(key, self._ttl_or_default(ttl)) is not None

    def ttl(self, key: str) -> int | None:
        """Seconds until the session expires, rounded up (a live session never reports 0); ``None`` if missing."""
        check_key(key)
        now = self._clock()
        with self._lock:
            entry = self._live(key, now)
            remaining = None if entry is None else _remaining(entry, now)
        self._op()
        return remaining

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        checked = check_keys(keys)
        if not checked:
            return {}
        now = self._clock()
        payloads: dict[str, bytes] = {}
        with self._lock:
            for key in checked:
                entry = self._live(key, now)
                if entry is not None:
                    self._entries.move_to_end(key)
                    payloads[key] = entry.payload
        self._op()
        self._counters.add(HITS, len(payloads))
        self._counters.add(MISSES, len(checked) - len(payloads))
        return {key: decode_session(payload) for key, payload in payloads.items()}

    def delete_many(self, keys: Iterable[str]) -> int:
        checked = check_keys(keys)
        if not checked:
            return 0
        now = self._clock()
        with self._lock:
            pop = self._entries.pop
            gone = [pop(key, None) for key in checked]
        self._op()
        return sum(entry is not None and entry.deadline > now for entry in gone)

    # --- sliding expiry and atomic read-modify-write -----------------------------------------------------------------

    def touch(self, key: str, ttl: int | None = None) -> bool:
        """See :meth:`ISessionStore.touch`: the document is decoded (outside the lock) only to find its lifetime cap."""
        return self._refresh(key, self._touch_ttl(ttl)) is not None

    def _refresh(self, key: str, seconds: int) -> dict[str, Any] | None:
        """Restart the session's expiry at ``seconds``, cut to its lifetime cap; the session, or ``None``."""
        check_key(key)
        now = self._clock()
        with self._lock:
            entry = self._live(key, now)
            if entry is not None:
                self._expire(key, entry, now, seconds)
                self._entries.move_to_end(key)
        if entry is None:
            self._looked_up(False)
            return None
        session = decode_session(entry.payload)
        left = self._lifetime_left(session)
        found = left is None or left >= seconds or self._cap(key, entry, left)
        self._looked_up(found)
        return session if found else None

    def _cap(self, key: str, entry: _Entry, left: float) -> bool:
        """Pull the deadline a refresh just gave ``entry`` back to its lifetime cap, or remove it if ``left`` is under a
        second; ``False`` if removed. A write since the refresh is left alone (the writer capped its own TTL)."""
        now = self._clock()
        with self._lock:
            mine = self._live(key, now) is entry
            if mine and left >= 1:
                self._expire(key, entry, now, int(left))
            elif mine:
                del self._entries[key]
        if mine and left < 1:
            lifetime_reached(key)
            return False
        return True

    def _read(self, key: str) -> _Entry:
        """The live entry an update starts from; counts a miss and raises ``SessionNotFound`` when there is none."""
        now = self._clock()
        with self._lock:
            entry = self._live(key, now)
        if entry is None:
            self._looked_up(False)
            raise SessionNotFound(f"no session {session_ref(key)}")
        return entry

    def _lost(self, attempt: int) -> None:
        """Count a lost race and back off as the Redis store does: updaters with a slow ``fn`` would keep colliding."""
        self._counters.tick[CONFLICTS]()
        conflict_pause(attempt)

    def update(self, key: str, fn: SessionUpdate, ttl: int | None = None) -> dict[str, Any]:
        """See :meth:`ISessionStore.update`.

        Optimistic: read the entry, then run ``fn`` and encode with no lock held, and write only if the same entry is
        still there; else start again after a short jittered pause.
        """
        check_key(key)
        if ttl is not None:
            self._ttl_or_default(ttl)  # bad input raises before anything is read
        for attempt in range(self._update_attempts):
            entry = self._read(key)
            updated = apply_update(decode_session(entry.payload), fn)
            payload = encode_session(updated)
            seconds = self._write_ttl(ttl, updated)
            now = self._clock()
            with self._lock:
                won = self._live(key, now) is entry
                if won:
                    self._store(key, payload, now, seconds)  # replaces a held key: evicts nothing
            if won:
                break
            self._lost(attempt)
        else:
            raise UpdateConflict(
                f"update of session {session_ref(key)} lost to other writers {self._update_attempts} times; not applied"
            )
        self._looked_up(True)
        if not seconds:
            raise lifetime_reached(key)
        return decode_session(payload)  # as a read returns it (datetimes as text, tuples as lists)

    # --- creation and the per-user index -----------------------------------------------------------------------------

    def create(self, user_id: str, data: dict[str, Any], ttl: int | None = None) -> str:
        user_id = check_user_id(user_id)
        session = new_session_document(user_id, data)
        payload = encode_session(session)
        seconds = max(1, self._write_ttl(ttl, session))  # new: only a max_lifetime under 1 s could make it 0
        created = session["created_at"].timestamp()
        now = self._clock()
        cap = self._max_per_user
        for _attempt in range(3):  # a collision of 256-bit random ids does not happen; checked all the same
            session_id = new_session_id()
            with self._lock:
                if self._live(session_id, now) is not None:
                    continue
                evicted = self._store(session_id, payload, now, seconds)
                self._index(user_id, session_id, created)
                removed: list[str] = []
                # Only past the cap is the user's index checked: doing it on every create would make a user's n-th
                # create cost O(n log n) under the lock (the sweep in _index keeps the index bounded meanwhile).
                if cap is not None and len(self._users[user_id]) > cap:
                    live = self._user_live(user_id, now)
                    removed = [held for held, _at in live[: max(0, len(live) - cap)]]
                for held in removed:
                    del self._entries[held]
                self._unindex(user_id, removed)
            break
        else:
            raise StoreError("could not find an unused session id in 3 attempts")
        self._op()
        report_created(self._counters, session_id, user_id, seconds, len(removed), cap)
        if evicted is not None and self._on_evict is not None:
            self._on_evict(evicted)
        return session_id

    def regenerate(self, session_id: str) -> str:
        """See :meth:`ISessionStore.regenerate`: optimistic like :meth:`update`; the move is one step under the lock."""
        check_key(session_id)
        for attempt in range(self._update_attempts):
            entry = self._read(session_id)
            session = decode_session(entry.payload)
            session["last_activity"] = stamped = utc_now()
            seconds = self._write_ttl(None, session)
            owner = session.get("user_id")
            user_id = owner if isinstance(owner, str) and owner else None
            created = (parse_utc(session.get("created_at")) or stamped).timestamp()
            payload = encode_session(session)
            new_id = new_session_id()
            now = self._clock()
            with self._lock:
                # An id already taken (256 random bits: never) is retried like a lost race.
                won = self._live(session_id, now) is entry and self._live(new_id, now) is None
                if won:
                    del self._entries[session_id]  # first, so storing the new key evicts nothing
                    if user_id is not None:
                        self._unindex(user_id, [session_id])
                    self._store(new_id, payload, now, seconds)
                    if seconds and user_id is not None:
                        self._index(user_id, new_id, created)
            if won:
                break
            self._lost(attempt)
        else:
            raise UpdateConflict(
                f"regenerate of session {session_ref(session_id)} lost to concurrent writers; not applied"
            )
        self._looked_up(True)
        if not seconds:
            raise lifetime_reached(session_id)
        report_regenerated(self._counters, session_id, new_id, user_id, seconds)
        return new_id

    def sessions_for_user(self, user_id: str) -> list[str]:
        """See :meth:`ISessionStore.sessions_for_user`; prunes entries of gone sessions on the way."""
        user_id = check_user_id(user_id)
        now = self._clock()
        with self._lock:
            live = self._user_live(user_id, now)
        self._op()
        return [session_id for session_id, _created in live]

    def delete_user_sessions(self, user_id: str) -> int:
        user_id = check_user_id(user_id)
        now = self._clock()
        with self._lock:
            sessions = self._users.pop(user_id, {})
            self._indexed -= len(sessions)
            pop = self._entries.pop
            gone = [pop(session_id, None) for session_id in sessions]
        removed = sum(entry is not None and entry.deadline > now for entry in gone)
        self._op()
        self._counters.add(DELETED_FOR_USER, removed)
        events.info("Sessions deleted for user", extra={"user_id": user_id, "removed": removed})
        return removed


def _remaining(entry: _Entry, now: float) -> int:
    return min(math.ceil(entry.deadline - now), entry.ttl)
