"""LocalTier: a process's copy of cached values, bounded in bytes, each entry expiring no later than its Redis key.

Coherence is the invalidation listener's job (:mod:`fmredis.tracking`); this module keeps the one rule that makes it
safe against the race every client-side cache has: a read that was in flight when its key was invalidated (or the
whole tier flushed) must not store what it read, since that may be the value from before the write. So a miss takes a
*ticket* before it sends its read; invalidations mark the tickets of their key, a flush marks them all, and
:meth:`LocalTier.fill` stores the value only if its ticket is unmarked.

Redis also announces this process's own writes, after the copy was already dropped at the write's reply, and that
echo drops the copy read since (a second miss). It cannot be told from another writer's invalidation: in broadcasting
mode Redis sends one invalidation per key per event-loop iteration, however many writes it ran, so counting echoes
per write would take a later writer's invalidation for an echo and keep a stale copy.

``serving`` is False while the listener is not subscribed (starting, reconnecting): nothing is filled then, and the
entries kept from before are read only by :meth:`LocalTier.fallback`, for a caller whose read of Redis failed (the
cache drops them as soon as a read reaches Redis). The listener flushes the tier before it sets ``serving`` again, so
nothing from before a gap in invalidations is served after it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

__all__ = ["MISSING", "LocalTier", "Ticket"]

MISSING: Any = object()


class Ticket:
    """One read in flight for ``key``; ``stale`` once an invalidation or a flush came while it was."""

    __slots__ = ("key", "stale")

    def __init__(self, key: str) -> None:
        self.key = key
        self.stale = False


class LocalTier:
    """A thread-safe LRU of ``key -> (value, size, expiry)`` holding at most ``max_bytes`` (the values' JSON sizes);
    an entry over ``max_entry_bytes`` is never kept."""

    def __init__(self, max_bytes: int, max_entry_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.serving = False
        self._entries: OrderedDict[str, tuple[Any, int, float]] = OrderedDict()
        self._bytes = 0
        self._tickets: dict[str, list[Ticket]] = {}
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(("hits", "misses", "evictions", "expirations", "invalidations", "flushes"), 0)

    def get(self, key: str) -> Any:
        """The value held for ``key`` if the tier is serving and the entry has not expired, else ``MISSING``."""
        counts = self.counts
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and self.serving:
                if entry[2] > time.monotonic():
                    self._entries.move_to_end(key)
                    counts["hits"] += 1
                    return entry[0]
                self._drop(key)
                counts["expirations"] += 1
            counts["misses"] += 1
            return MISSING

    def fallback(self, key: str) -> Any:
        """The value held for ``key`` if it has not expired, serving or not (for a caller that cannot reach Redis)."""
        with self._lock:
            entry = self._entries.get(key)
            return entry[0] if entry is not None and entry[2] > time.monotonic() else MISSING

    def ticket(self, key: str) -> Ticket:
        """Take before sending the read whose result :meth:`fill` may store."""
        ticket = Ticket(key)
        with self._lock:
            self._tickets.setdefault(key, []).append(ticket)
        return ticket

    def fill(self, ticket: Ticket, value: Any, size: int, expires: float) -> bool:
        """Store ``value`` (monotonic expiry ``expires``) unless ``ticket`` went stale; always retires the ticket.
        Whether it was stored."""
        with self._lock:
            self._retire(ticket)
            # Not while unsubscribed: no invalidation would drop the entry (the caller still gets the value).
            if ticket.stale or not self.serving or size > self.max_entry_bytes or expires <= time.monotonic():
                return False
            key = ticket.key
            if key in self._entries:
                self._drop(key)
            self._entries[key] = (value, size, expires)
            self._bytes += size
            while self._bytes > self.max_bytes:  # the oldest first; the new entry alone always fits
                self._drop(next(iter(self._entries)))
                self.counts["evictions"] += 1
            return True

    def forget(self, ticket: Ticket) -> None:
        """Retire ``ticket`` without storing anything (the read failed or found nothing); nothing if it is already
        retired."""
        with self._lock:
            self._retire(ticket)

    def invalidate(self, keys: Iterable[str]) -> None:
        """Drop ``keys`` and mark their reads in flight stale (heard from Redis, or after this process's write)."""
        with self._lock:
            for key in keys:
                for ticket in self._tickets.get(key, ()):
                    ticket.stale = True
                if key in self._entries:
                    self._drop(key)
                    self.counts["invalidations"] += 1

    def flush(self) -> None:
        """Drop every entry and mark every read in flight stale."""
        with self._lock:
            for tickets in self._tickets.values():
                for ticket in tickets:
                    ticket.stale = True
            self._entries.clear()
            self._bytes = 0
            self.counts["flushes"] += 1

    def reset(self) -> None:
        """(In a forked child.) Stop serving and drop everything, with a new lock: another thread of the parent may
        have held the old one at the fork, and reads in flight were the parent's."""
        self._lock = threading.Lock()
        self.serving = False
        self._entries.clear()
        self._bytes = 0
        self._tickets.clear()

    def sizes(self) -> tuple[int, int]:
        """``(entries, bytes)`` held now."""
        with self._lock:
            return len(self._entries), self._bytes

    def _drop(self, key: str) -> None:
        self._bytes -= self._entries.pop(key)[1]

    def _retire(self, ticket: Ticket) -> None:
        tickets = self._tickets.get(ticket.key)
        if tickets is not None and ticket in tickets:  # (retiring twice is harmless)
            tickets.remove(ticket)
            if not tickets:
                del self._tickets[ticket.key]
