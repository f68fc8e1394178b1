"""InMemorySessionStore: sessions as orjson bytes in a bounded, expiring, thread-safe LRU dict; nothing logged per
call."""

from __future__ import annotations

import contextlib
import heapq
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator

from fmredis.backend import Transaction
from fmredis.checks import check_count
from fmredis.core import SessionStoreBase
from fmredis.errors import StoreUnavailable
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


class InMemorySessionStore(SessionStoreBase):
    """Sessions in this process: the same orjson bytes :class:`~fmredis.RedisSessionStore` would write, with expiry.

    Values read back exactly as from the Redis store (``last_activity`` stamped, tuples as lists, datetimes and UUIDs
    as their JSON text), and every read returns a freshly decoded dict, so callers can never change stored state
    through one. Keys are used as given (no prefix). Everything else (TTL rules, lifetime cap, the user index and
    ``max_sessions_per_user``, counters, events, the optimistic ``update``) is the shared core's, as in the Redis store.

    Expiry runs on ``clock`` (seconds, monotonic; injectable for tests): a session is gone once ``clock()`` reaches
    its deadline, to every method alike, and is purged lazily. :meth:`ttl` rounds the remaining time up, so a live
    session never reports 0. A lifetime cap counts on ``wall_clock`` (epoch seconds), from ``created_at``.

    Bound: at most ``max_entries`` sessions are held, expired ones not yet purged included. Storing a new key into a
    full store first purges every expired session, then, if still full, evicts the least recently used one. Writes,
    ``get``, ``get_many``, ``touch`` and ``extend_ttl`` count as use; ``exists``, ``ttl`` and :meth:`items_snapshot`
    do not. Each such eviction adds one to :attr:`evictions` and calls ``on_evict(key)`` once the write is done; an
    exception from ``on_evict`` propagates out of that write, after the value has been stored. Evicted and deleted
    sessions are dropped from the user index when next met, never listed.

    Thread-safety: every method may be called from many threads at once. One lock guards the entries and the user
    index; encoding, decoding, update functions, the clocks and ``on_evict`` all run outside it.
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
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_evict: Callable[[str], None] | None = None,
        counters: bool = True,
    ) -> None:
        super().__init__(
            default_ttl=default_ttl,
            max_ttl=max_ttl,
            ttl_policy=ttl_policy,
            max_lifetime=max_lifetime,
            max_sessions_per_user=max_sessions_per_user,
            update_attempts=update_attempts,
            counters=counters,
            wall_clock=wall_clock,
        )
        self._max_entries: int = check_count("max_entries", max_entries)  # type: ignore[assignment]
        if not callable(clock):
            raise TypeError(f"clock must be callable, not {type(clock).__name__}")
        if on_evict is not None and not callable(on_evict):
            raise TypeError(f"on_evict must be callable or None, not {type(on_evict).__name__}")
        self._clock = clock
        #: Called with the key of each session the bound evicts, after the write that evicted it (settable).
        self.on_evict = on_evict
        #: Keys the bound must not evict (settable; called under the store's lock, so it must be quick and take no
        #: lock of this store): eviction takes the least recently used key it does not pin, and a new key that would
        #: need one evicted when every held key is pinned is refused with ``StoreUnavailable``, nothing written.
        self.pinned: Callable[[str], bool] | None = None
        self._logout_marks: dict[str, float] = {}
        self._marks_kept = 1000
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

    def _repr_fields(self) -> str:
        return f"max_entries={self._max_entries}"

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

    # --- primitives --------------------------------------------------------------------------------------------------

    def _read(self, key: str) -> bytes | None:
        now = self._clock()
        with self._lock:
            entry = self._live(key, now)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry.payload

    def _peek(self, key: str) -> bytes | None:
        now = self._clock()
        with self._lock:
            entry = self._live(key, now)
            return None if entry is None else entry.payload

    def _write(self, key: str, payload: bytes, seconds: int) -> None:
        now = self._clock()
        with self._lock:
            evicted = self._store(key, payload, now, seconds)
        self._report_eviction(evicted)

    def _list_many(self, entries: list[tuple[str, str, float]]) -> None:
        with self._lock:
            for user_id, session_id, created in entries:
                self._index(user_id, session_id, created)

    def _note_logout(self, user_id: str, at: float, keep: int, what: str) -> None:
        with self._lock:
            marks = self._logout_marks
            marks[user_id] = max(at, marks.get(user_id, at))
            if len(marks) > 2 * self._marks_kept:  # pruned in bulk: amortized O(1) per logout
                self._logout_marks = {user: when for user, when in marks.items() if when >= at - keep}
                self._marks_kept = max(len(self._logout_marks), 1000)

    def _logouts(self, user_ids: list[str]) -> list[float | None]:
        with self._lock:
            return [self._logout_marks.get(user_id) for user_id in user_ids]

    def _remove(self, key: str) -> bool:
        now = self._clock()
        with self._lock:
            entry = self._entries.pop(key, None)
        return entry is not None and entry.deadline > now

    def _read_with_ttl(self, key: str) -> tuple[bytes | None, int]:
        now = self._clock()
        with self._lock:
            entry = self._live(key, now)
            return (None, 0) if entry is None else (entry.payload, _remaining(entry, now))

    def _read_and_expire(self, key: str, seconds: int) -> bytes | None:
        now = self._clock()
        with self._lock:
            entry = self._live(key, now)
            if entry is None:
                return None
            self._set_deadline(key, entry, now, seconds)
            self._entries.move_to_end(key)
            return entry.payload

    def _expire(self, key: str, seconds: int) -> None:
        now = self._clock()
        with self._lock:
            entry = self._live(key, now)
            if entry is not None:
                self._set_deadline(key, entry, now, seconds)

    def _read_many(self, keys: list[str]) -> list[bytes | None]:
        now = self._clock()
        payloads: list[bytes | None] = []
        with self._lock:
            for key in keys:
                entry = self._live(key, now)
                if entry is not None:
                    self._entries.move_to_end(key)
                payloads.append(None if entry is None else entry.payload)
        return payloads

    def _remove_many(self, keys: list[str]) -> int:
        now = self._clock()
        with self._lock:
            pop = self._entries.pop
            gone = [pop(key, None) for key in keys]
        return sum(entry is not None and entry.deadline > now for entry in gone)

    @contextlib.contextmanager
    def _transaction(self, what: str, key: str, fence: object = None) -> Iterator[Transaction]:
        yield _HeldSession(self, key)

    def _insert(self, session_id: str, payload: bytes, seconds: int, user_id: str, created: float) -> int | None:
        now = self._clock()
        with self._lock:
            if self._live(session_id, now) is not None:
                return None
            evicted = self._store(session_id, payload, now, seconds)
            self._index(user_id, session_id, created)
            count = len(self._users[user_id])
        self._report_eviction(evicted)
        return count

    def _trim_user(self, user_id: str, keep: int, spare: str) -> list[str]:
        now = self._clock()
        with self._lock:
            live = [session_id for session_id in self._user_live(user_id, now) if session_id != spare]
            excess = live[: max(0, len(live) + 1 - keep)]
            for session_id in excess:
                del self._entries[session_id]
            self._unindex(user_id, excess)
        return excess

    def _user_sessions(self, user_id: str) -> list[str]:
        now = self._clock()
        with self._lock:
            return self._user_live(user_id, now)

    def _remove_user(self, user_id: str) -> int:
        now = self._clock()
        with self._lock:
            sessions = self._users.pop(user_id, {})
            self._indexed -= len(sessions)
            pop = self._entries.pop
            gone = [pop(session_id, None) for session_id in sessions]
        return sum(entry is not None and entry.deadline > now for entry in gone)

    # --- internals; every method below that touches the entries is called with the lock held ------------------------

    def _report_eviction(self, evicted: str | None) -> None:
        """Called with the lock released, once the write that evicted ``evicted`` is done."""
        if evicted is not None and self.on_evict is not None:
            self.on_evict(evicted)

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
                evicted = self._victim()
                self._evictions += 1
        entries[key] = _Entry(payload, now + seconds, seconds)
        entries.move_to_end(key)
        self._schedule(key, now + seconds)
        return evicted

    def _victim(self) -> str:
        """Remove and return the least recently used key that is not pinned."""
        entries, pinned = self._entries, self.pinned
        if pinned is None:
            return entries.popitem(last=False)[0]
        for key in entries:  # the fallback moves what it no longer pins to the front: usually the first one
            if not pinned(key):
                del entries[key]
                return key
        raise StoreUnavailable(
            f"memory is full: all {len(entries)} sessions held (max_entries) are pinned outage writes not yet written "
            "back to Redis; refused rather than evicting one"
        )

    def clear(self) -> None:
        """Remove every session (the fallback, once the outage is written back); the user index too."""
        with self._lock:
            self._entries.clear()
            self._expiry_heap.clear()
            self._users.clear()
            self._indexed = 0

    def demote(self, key: str) -> None:
        """Make ``key`` the first one eviction would take (the fallback, for a session written back)."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key, last=False)

    def put_entry(self, key: str, entry: tuple[bytes, int] | None) -> None:
        """Put back what :meth:`peek_entry` returned (``None``: remove the key), for the fallback's rollback of a
        write its journal refused. No eviction callback: it restores a state the store held."""
        now = self._clock()
        with self._lock:
            if entry is None:
                self._entries.pop(key, None)
            else:
                self._store(key, entry[0], now, entry[1])

    def peek_entry(self, key: str) -> tuple[bytes, int] | None:
        """``(payload, remaining_ttl_seconds)`` of a live session, or ``None``; recency is unchanged."""
        now = self._clock()
        with self._lock:
            entry = self._live(key, now)
            return None if entry is None else (entry.payload, _remaining(entry, now))

    def _set_deadline(self, key: str, entry: _Entry, now: float, seconds: int) -> None:
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

    def _user_live(self, user_id: str, now: float) -> list[str]:
        """Ids of the user's live indexed sessions, oldest first; drops entries of gone ones."""
        sessions = self._users.get(user_id, {})
        self._unindex(user_id, [session_id for session_id in sessions if self._live(session_id, now) is None])
        ordered = sorted(sessions.items(), key=lambda item: (item[1], item[0]))  # equal times by id, as Redis's ZRANGE
        return [session_id for session_id, _created in ordered]


class _HeldSession:
    """A :class:`~fmredis.core.Transaction` on the memory store: a commit wins only if the entry read is still there
    (entries are never changed in place, so identity means nobody wrote the session since)."""

    def __init__(self, store: InMemorySessionStore, key: str) -> None:
        self._store, self._key = store, key
        self._entry: _Entry | None = None

    def read(self) -> bytes | None:
        store = self._store
        now = store._clock()
        with store._lock:
            self._entry = store._live(self._key, now)
        return None if self._entry is None else self._entry.payload

    def write(self, payload: bytes, seconds: int) -> bool:
        store = self._store
        now = store._clock()
        with store._lock:
            won = store._live(self._key, now) is self._entry
            if won:
                store._store(self._key, payload, now, seconds)  # replaces a held key: evicts nothing
        return won

    def move(self, new_id: str, payload: bytes, seconds: int, user_id: str | None, created: float) -> bool:
        store = self._store
        now = store._clock()
        with store._lock:
            won = store._live(self._key, now) is self._entry and store._live(new_id, now) is None
            if won:
                del store._entries[self._key]  # first, so storing the new key evicts nothing
                if user_id is not None:
                    store._unindex(user_id, [self._key])
                store._store(new_id, payload, now, seconds)
                if seconds and user_id is not None:
                    store._index(user_id, new_id, created)
        return won


def _remaining(entry: _Entry, now: float) -> int:
    return min(math.ceil(entry.deadline - now), entry.ttl)
