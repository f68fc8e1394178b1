"""StoreCounters: cheap, thread-safe operation counts a store keeps for metrics exporters."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

__all__ = ["COUNTER_NAMES", "StoreCounters"]

#: What every store counts, in the order :meth:`StoreCounters.snapshot` reports them.
COUNTER_NAMES = (
    "ops",  # public calls that reached the backend (a bulk call is one)
    "hits",  # sessions found by get, get_many (one per key found), touch and update
    "misses",  # sessions asked for and not found
    "corruptions",  # stored values that were not a JSON object, read as missing
    "conflicts",  # update attempts that lost to a concurrent writer and were retried or given up
    "created",  # sessions made by create or regenerate
    "deleted_for_user",  # sessions removed by delete_user_sessions (and the per-user cap)
)
OPS, HITS, MISSES, CORRUPTIONS, CONFLICTS, CREATED, DELETED_FOR_USER = range(len(COUNTER_NAMES))


class StoreCounters:
    """Monotonic counters that cost a store about 0.05 us per increment and no lock.

    Each counter is an :func:`itertools.count`: ``next()`` on it is one C call, atomic under the GIL, so concurrent
    increments are never lost. A ``threading.Lock`` around a list costs about ten times as much here (0.5-0.7 us per
    call on the CI machine, against a ~100 us round trip); ``benchmarks/test_lifecycle.py`` measures the stores
    with and without counters. Bulk amounts (:meth:`add`) are rare and go to a lock-protected list.

    The store binds the ``tick`` callables once (``counters.tick[HITS]()``). ``enabled=False`` makes them, and
    :meth:`add`, no-ops, and :meth:`snapshot` then reports zeros. Each counter is exact on CPython with the GIL (the
    free-threaded build does not make ``next()`` atomic); a snapshot taken while other threads count reads them one
    after another.
    """

    __slots__ = ("_amounts", "_counts", "_lock", "enabled", "tick")

    def __init__(self, *, enabled: bool = True) -> None:
        self._counts = [itertools.count() for _name in COUNTER_NAMES]
        self._amounts = [0] * len(COUNTER_NAMES)
        self._lock = threading.Lock()
        self.enabled = enabled
        #: ``tick[i]()`` adds one to counter ``i``.
        self.tick: tuple[Callable[[], object], ...] = tuple(
            count.__next__ if enabled else _ignore for count in self._counts
        )

    def add(self, index: int, amount: int) -> None:
        """``amount`` more of counter ``index`` (for bulk calls: one per key found)."""
        if self.enabled and amount:
            with self._lock:
                self._amounts[index] += amount

    def snapshot(self) -> dict[str, int]:
        """Every counter by name."""
        with self._lock:
            amounts = list(self._amounts)
        return {
            name: _peek(count) + amount
            for name, count, amount in zip(COUNTER_NAMES, self._counts, amounts, strict=True)
        }


def _peek(count: itertools.count[int]) -> int:
    # A count's next value is only exposed through its repr ("count(5)"): reading it with next() would change it, and
    # its pickle support is deprecated since Python 3.12.
    return int(repr(count)[6:-1])


def _ignore() -> None:
    return None
