"""InMemorySessionStore: sessions as orjson bytes in a bounded, expiring, thread-safe LRU dict; nothing logged."""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from fmredis.serialization import decode_session, encode_for_write
from fmredis.store import ISessionStore, TTLDefaults, check_key, check_keys

__all__ = ["InMemorySessionStore"]

# Rebuild the expiry heap once it holds this many stale items beyond twice the live ones: bounds its memory while
# keeping the rebuild cost amortized over at least as many pushes as it scans.
_HEAP_SLACK = 64


class _Entry:
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
    session never reports 0.

    Bound: at most ``max_entries`` sessions are held, expired ones not yet purged included. Storing a new key into a
    full store first purges every expired session, then, if still full, evicts the least recently used one. ``get``,
    ``get_many``, ``set`` and ``extend_ttl`` count as use; ``exists``, ``ttl`` and :meth:`items_snapshot` do not.
    Each such eviction adds one to :attr:`evictions` and calls ``on_evict(key)`` once the write is done; an exception
    from ``on_evict`` propagates out of that ``set``, after the value has been stored.

    Thread-safety: every method may be called from many threads at once. One lock guards the entries; encoding,
    decoding, the clock and ``on_evict`` all run outside it, so a slow callback never blocks other callers.
    Invalid input raises (:class:`~fmredis.errors.InvalidKeyError`, :class:`~fmredis.errors.InvalidTTLError`,
    :class:`~fmredis.errors.SerializationError`) before anything is changed.
    """

    def __init__(
        self,
        *,
        default_ttl: int = 1800,
        max_ttl: int = 86_400,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        on_evict: Callable[[str], None] | None = None,
    ) -> None:
        self._init_ttls(default_ttl, max_ttl)
        if type(max_entries) is not int or max_entries < 1:
            raise ValueError(f"max_entries must be an int of at least 1 (got {max_entries!r})")
        if not callable(clock):
            raise TypeError(f"clock must be callable, not {type(clock).__name__}")
        if on_evict is not None and not callable(on_evict):
            raise TypeError(f"on_evict must be callable or None, not {type(on_evict).__name__}")
        self._max_entries = max_entries
        self._clock = clock
        self._on_evict = on_evict
        self._lock = threading.Lock()
        # Recency order: least recently used first.
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        # (deadline, key) for every deadline ever given to a held entry, so expired entries are found without a scan.
        # Items whose entry was since removed or given a new deadline are stale and skipped when popped.
        self._expiry_heap: list[tuple[float, str]] = []
        self._evictions = 0

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

    def _schedule(self, key: str, deadline: float) -> None:
        heap = self._expiry_heap
        heapq.heappush(heap, (deadline, key))
        if len(heap) > 2 * len(self._entries) + _HEAP_SLACK:
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

    # --- ISessionStore ----------------------------------------------------------------------------------------------

    def get(self, key: str) -> dict[str, Any] | None:
        check_key(key)
        now = self._clock()
        with self._lock:
            entry = self._live(key, now)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            payload = entry.payload
        return decode_session(payload)

    def set(self, key: str, value: dict[str, Any], ttl: int | None = None) -> None:
        check_key(key)
        seconds = self._ttl_or_default(ttl)
        payload = encode_for_write(value)
        now = self._clock()
        deadline = now + seconds
        evicted: str | None = None
        with self._lock:
            entries = self._entries
            entry = entries.get(key)
            if entry is not None:
                # Replacing a held entry (even an expired one) does not grow the store, so nothing is evicted.
                entry.payload, entry.deadline, entry.ttl = payload, deadline, seconds
                entries.move_to_end(key)
            else:
                if len(entries) >= self._max_entries:
                    self._purge_expired(now)
                    if len(entries) >= self._max_entries:
                        evicted, _ = entries.popitem(last=False)
                        self._evictions += 1
                entries[key] = _Entry(payload, deadline, seconds)
            self._schedule(key, deadline)
        if evicted is not None and self._on_evict is not None:
            self._on_evict(evicted)

    def delete(self, key: str) -> bool:
        check_key(key)
        now = self._clock()
        with self._lock:
            entry = self._entries.pop(key, None)
        return entry is not None and entry.deadline > now

    def exists(self, key: str) -> bool:
        check_key(key)
        now = self._clock()
        with self._lock:
            return self._live(key, now) is not None

    def extend_ttl(self, key: str, ttl: int | None = None) -> bool:
        check_key(key)
        seconds = self._ttl_or_default(ttl)
        now = self._clock()
        with self._lock:
            entry = self._live(key, now)
            if entry is None:
                return False
            entry.deadline, entry.ttl = now + seconds, seconds
            self._entries.move_to_end(key)
            self._schedule(key, entry.deadline)
            return True

    def ttl(self, key: str) -> int | None:
        """Seconds until the session expires, rounded up (a live session never reports 0); ``None`` if missing."""
        check_key(key)
        now = self._clock()
        with self._lock:
            entry = self._live(key, now)
            return None if entry is None else _remaining(entry, now)

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
        return {key: decode_session(payload) for key, payload in payloads.items()}

    def delete_many(self, keys: Iterable[str]) -> int:
        checked = check_keys(keys)
        if not checked:
            return 0
        now = self._clock()
        removed = 0
        with self._lock:
            pop = self._entries.pop
            for key in checked:
                entry = pop(key, None)
                if entry is not None and entry.deadline > now:
                    removed += 1
        return removed


def _remaining(entry: _Entry, now: float) -> int:
    return min(math.ceil(entry.deadline - now), entry.ttl)
