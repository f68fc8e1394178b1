"""The one background thread per process that renews every auto-renewed lease (:class:`~fmredis.RedisLock`).

A thread per held lock (python-redis-lock's way) costs a thread start on every acquisition; one scheduler thread with
a heap of due times costs nothing on the acquire path but a heap push. A renewal that blocks on a slow server delays
the others: each call is bounded by the client's socket timeout, and a lease that may have run out is reported lost by
the holder's own clock whatever this thread is doing (see ``HeldLock.lost``).
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import threading
import time
from collections.abc import Callable

__all__ = ["Entry", "Renewal", "schedule"]

#: Renews one lease if it is still held; returns the monotonic time of the next renewal, or ``None`` to stop.
Renewal = Callable[[], "float | None"]


class Entry:
    """A scheduled renewal; :meth:`cancel` drops it (the handle is let go at once, the slot when it comes due)."""

    __slots__ = ("at", "handle", "order")

    def __init__(self, at: float, order: int, handle: Renewal) -> None:
        self.at, self.order, self.handle = at, order, handle

    def __lt__(self, other: Entry) -> bool:
        return (self.at, self.order) < (other.at, other.order)

    def cancel(self) -> None:
        self.handle = None  # type: ignore[assignment]  # one store: atomic, so no lock


class _Renewer:
    """A heap of entries and one thread that sleeps until the first is due.

    A released lock cancels its entry, so a tight acquire/release loop must not wake the thread once per lock: the
    thread is woken only by an entry due before the time it sleeps until, and drops cancelled entries in a batch when
    it wakes (and the heap is rebuilt when they are most of it)."""

    def __init__(self) -> None:
        self._wakeup = threading.Condition(threading.Lock())
        self._due: list[Entry] = []
        self._order = itertools.count()  # ties in due time never compare the handles
        self._thread: threading.Thread | None = None
        self._sleeping_until = -math.inf  # not sleeping: it looks at the heap again before it does

    def schedule(self, at: float, handle: Renewal) -> Entry:
        entry = Entry(at, next(self._order), handle)
        with self._wakeup:
            self._push(entry)
        return entry

    def _push(self, entry: Entry) -> None:
        due = self._due
        if len(due) > 1024 and len(due) % 1024 == 0:
            live = [queued for queued in due if queued.handle is not None]
            if len(live) < len(due) // 2:
                due[:] = live
                heapq.heapify(due)
        heapq.heappush(due, entry)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fmredis-lock-renewal", daemon=True)
            self._thread.start()
        elif entry.at < self._sleeping_until:
            self._wakeup.notify()

    def _run(self) -> None:
        due = self._due
        while True:
            with self._wakeup:
                while True:
                    latest = -math.inf  # the last cancelled entry dropped: sleep until then at least
                    while due and due[0].handle is None:
                        latest = heapq.heappop(due).at
                    now = time.monotonic()
                    if due and due[0].at <= now:
                        break
                    # With the heap emptied of cancelled entries, sleeping for good would make the next lock's entry
                    # wake the thread at once, and so once per acquisition in a loop: sleep until the last one
                    # dropped was due (entries pushed meanwhile are due later, at the same ttl).
                    wake_at = due[0].at if due else (latest if latest > now else math.inf)
                    self._sleeping_until = wake_at
                    self._wakeup.wait(None if wake_at == math.inf else wake_at - now)
                self._sleeping_until = -math.inf
                entry = heapq.heappop(due)
            handle = entry.handle
            following = None if handle is None else handle()  # outside the lock: a round trip to Redis
            if following is not None and entry.handle is not None:
                entry.at = following
                with self._wakeup:
                    self._push(entry)


_renewer = _Renewer()


def _forked() -> None:
    """A child process starts with no renewal thread (threads do not survive ``fork``) and renews nothing of its
    parent's: the leases are the parent's."""
    global _renewer
    _renewer = _Renewer()


os.register_at_fork(after_in_child=_forked)


def schedule(at: float, handle: Renewal) -> Entry:
    """Call ``handle()`` at monotonic time ``at``, on the renewal thread, and again as it asks, until the entry
    returned is cancelled."""
    return _renewer.schedule(at, handle)
