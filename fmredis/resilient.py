"""ResilientRedisSessionStore: retries with backoff, a circuit breaker, and client rebuilds, around any store."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from redis.backoff import FullJitterBackoff

from fmredis.breaker import CircuitBreaker
from fmredis.checks import check_count, check_keys, check_seconds
from fmredis.errors import FencedOut, SessionNotFound, StoreError, StoreUnavailable
from fmredis.store import Fence, ISessionStore, SessionUpdate
from fmredis.ttl_rules import TTLRules

__all__ = ["ResilientRedisSessionStore"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _default_factory() -> ISessionStore:
    from fmredis.redis_store import RedisSessionStore

    return RedisSessionStore()


class ResilientRedisSessionStore(ISessionStore):
    """Wraps a store: ``store``, either a store instance or a zero-argument factory that builds one (default:
    ``RedisSessionStore()`` from the environment).

    - ``StoreUnavailable`` (connection refused or lost, timeout, pool exhausted) is retried up to ``attempts`` times
      in all, with exponential backoff and full jitter (``backoff_base * 2**n`` capped at ``backoff_cap``), never past
      ``deadline`` seconds from the call's start: no attempt is started that, as slow as the last one, would end
      past it. A caller therefore waits at most about ``deadline`` plus one attempt, and one attempt against a frozen
      server lasts ``socket_timeout`` of the client settings for a pipelined command (see :mod:`fmredis.multiplex`)
      and ``socket_timeout x (1 + retry_attempts)`` on redis-py's path, plus a reconnect's handshake.
      Other errors are not retried.
    - After ``rebuild_after`` consecutive connection failures the store (client and pool) is rebuilt: with the
      factory, or for an instance with its ``rebuild()`` (:meth:`RedisSessionStore.rebuild`: a new client from the
      settings it was built with, or its pool's connections closed); an instance without one is kept as it is. One
      thread rebuilds while the others keep using the old store until the new one is complete, then the old store is
      closed. A factory must build a store that owns its client.
    - A :class:`~fmredis.breaker.CircuitBreaker` (default: open after 5 consecutive failures, 5 s cool-down, then one
      probe) makes an outage fail fast: while it is open, calls raise ``StoreUnavailable`` at once.

    When it gives up it raises :class:`~fmredis.errors.StoreUnavailable` with the last failure as its cause: an outage
    is never turned into "session not found". A retried ``delete``/``delete_many``/``delete_user_sessions`` counts only
    what existed at the attempt that succeeded.

    Single attempt: ``update``, ``create`` and ``regenerate`` are not idempotent (when a connection drops after the
    ``EXEC`` or ``SET`` was sent, whether it was applied is unknown, and a retried ``update`` would apply ``fn`` twice),
    so they get ONE attempt, through the breaker and the rebuild accounting like every call; their
    ``StoreUnavailable`` means "may or may not have been applied". Every other method, ``touch`` and
    ``get(refresh=True)`` included, is retried as above.

    :meth:`stats` sums the counters of every inner store used so far (a rebuild does not reset them, and they never go
    back) and adds ``rebuilds``. A replaced store is not kept: its counters are folded into running totals when it is
    replaced, so a call still running on it at that moment may be missing from the totals. All methods are
    thread-safe.
    """

    def __init__(
        self,
        store: ISessionStore | Callable[[], ISessionStore] = _default_factory,
        *,
        attempts: int = 3,
        backoff_base: float = 0.05,
        backoff_cap: float = 0.5,
        deadline: float = 5.0,
        rebuild_after: int = 3,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._attempts: int = check_count("attempts", attempts)  # type: ignore[assignment]
        self._rebuild_after: int = check_count("rebuild_after", rebuild_after)  # type: ignore[assignment]
        self._backoff = FullJitterBackoff(
            cap=check_seconds("backoff_cap", backoff_cap), base=check_seconds("backoff_base", backoff_base)
        )
        self._deadline = check_seconds("deadline", deadline)
        if isinstance(store, ISessionStore):
            first: ISessionStore = store
            self._factory: Callable[[], ISessionStore] = lambda: _rebuilt(self._current[0])
        elif callable(store):
            first, self._factory = store(), store
            if not isinstance(first, ISessionStore):
                raise TypeError(f"the store factory returned {type(first).__name__}, not an ISessionStore")
        else:
            raise TypeError(f"store must be an ISessionStore or a factory of one, not {type(store).__name__}")
        # (store, generation) published as one tuple: a reader never pairs one store with another's generation.
        self._current: tuple[ISessionStore, int] = (first, 0)
        self._consecutive_failures = 0
        self._last_failure: StoreUnavailable | None = None
        self._rebuild_lock = threading.Lock()
        self.breaker = breaker if breaker is not None else CircuitBreaker(clock=clock)
        self._clock = clock
        self._sleep = sleep
        self.rebuilds = 0
        # Counters of the stores replaced so far, summed at each rebuild (under _rebuild_lock): only numbers are kept.
        self._retired_totals: dict[str, int] = {}

    @property
    def store(self) -> ISessionStore:
        """The store currently in use (replaced on a rebuild)."""
        return self._current[0]

    @property
    def ttl_rules(self) -> TTLRules:
        return self._current[0].ttl_rules

    def close(self) -> None:
        self._current[0].close()

    def _rebuild(self, generation: int) -> None:
        """Replace the store built at ``generation``; a no-op if another thread already replaced it."""
        with self._rebuild_lock:
            old, current = self._current
            if current != generation:
                return
            failures = self._consecutive_failures
            try:
                replacement = self._factory()
            except StoreError as exc:  # e.g. a cluster client finds no node: keep the old store, try again later
                logger.warning("Could not rebuild the Redis client (%s); keeping the current one", exc)
                return
            self._current = (replacement, generation + 1)  # complete before it is published
            if replacement is not old:
                # Counters must not go back to zero on a rebuild: fold the old store's into the totals, and drop it
                # (with its client and pool) once closed below. Calls still running on it may count after this.
                _add(self._retired_totals, old.stats())
            self._consecutive_failures = 0
            self.rebuilds += 1
        logger.warning("Rebuilt the Redis client after %d consecutive connection failures", failures)
        if replacement is not old:
            old.close()  # idle connections only: calls still running on the old store finish there

    def _call(self, operation: Callable[[ISessionStore], T], *, attempts: int | None = None, trial: bool = False) -> T:
        """Run ``operation`` on the current store, up to ``attempts`` times (default: the store's ``attempts``);
        ``trial``: as the breaker's half-open trial, whatever its cool-down says."""
        limit = self._attempts if attempts is None else attempts
        started = self._clock()
        attempt = 0
        while True:
            if trial:
                self.breaker.trial()  # False when closed (nothing to take) or a probe is in flight: go through anyway
            elif not self.breaker.allow():
                failure = StoreUnavailable(f"circuit breaker {self.breaker.name} is open: failing fast")
                raise failure from self._last_failure
            store, generation = self._current
            attempt_started = self._clock()
            try:
                result = operation(store)
            except StoreUnavailable as exc:
                self._last_failure = exc  # the cause shown while the breaker fails fast
                if self._current[1] != generation:  # a rebuild replaced this store meanwhile: not the server's fault
                    self.breaker.release()
                    attempt += 1
                    now = self._clock()
                    if attempt >= limit or now + (now - attempt_started) - started > self._deadline:
                        raise StoreUnavailable(f"Redis unavailable after {attempt} attempt(s): {exc}") from exc
                    continue
                self.breaker.record_failure()
                self._consecutive_failures += 1  # a racy count is fine: it only decides when to rebuild
                if self._consecutive_failures >= self._rebuild_after:
                    self._rebuild(generation)
                attempt += 1
                delay = self._backoff.compute(attempt - 1)
                now = self._clock()
                # Give up if another attempt as slow as this one would end past the deadline: a frozen server makes
                # each attempt last a full socket timeout, and the deadline is meant to bound the caller's wait.
                if attempt >= limit or now + delay + (now - attempt_started) - started > self._deadline:
                    raise StoreUnavailable(f"Redis unavailable after {attempt} attempt(s): {exc}") from exc
                self._sleep(delay)
            except (StoreError, SessionNotFound, FencedOut):
                self.breaker.record_success()  # the server answered (an error, "no such session", "fenced out")
                raise
            except BaseException:
                self.breaker.release()  # bad input or a bug: the server was not asked
                raise
            else:
                self.breaker.record_success()
                self._consecutive_failures = 0
                # Its traceback holds the failed call's frames, and so the store it failed on: once a call succeeds it
                # is no longer needed as a cause, and must not keep a replaced store (client and pool) alive.
                self._last_failure = None
                return result

    def get(self, key: str, *, refresh: bool = False) -> dict[str, Any] | None:
        if refresh:
            return self._call(lambda store: store.get(key, refresh=True))
        return self._call(lambda store: store.get(key))

    def set(
        self, key: str, value: dict[str, Any], ttl: int | None = None, *, stamp: bool = True, fence: Fence | None = None
    ) -> None:
        # A fenced set re-sent after a lost reply writes the same bytes under the same check: safe to retry. The fence
        # is passed only when given: a store of the caller's own written before fences keeps working unfenced.
        if fence is None:
            self._call(lambda store: store.set(key, value, ttl, stamp=stamp))
        else:
            self._call(lambda store: store.set(key, value, ttl, stamp=stamp, fence=fence))

    def delete(self, key: str, *, fence: Fence | None = None) -> bool:
        if fence is None:
            return self._call(lambda store: store.delete(key))
        return self._call(lambda store: store.delete(key, fence=fence))

    def exists(self, key: str) -> bool:
        return self._call(lambda store: store.exists(key))

    def extend_ttl(self, key: str, ttl: int | None = None) -> bool:
        return self._call(lambda store: store.extend_ttl(key, ttl))

    def ttl(self, key: str) -> int | None:
        return self._call(lambda store: store.ttl(key))

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        listed = check_keys(keys)  # checked once, and an iterator must survive a retry
        return self._call(lambda store: store.get_many(listed))

    def delete_many(self, keys: Iterable[str]) -> int:
        listed = check_keys(keys)
        return self._call(lambda store: store.delete_many(listed))

    def touch(self, key: str, ttl: int | None = None) -> bool:
        return self._call(lambda store: store.touch(key, ttl))

    def update(
        self, key: str, fn: SessionUpdate, ttl: int | None = None, *, fence: Fence | None = None
    ) -> dict[str, Any]:
        if fence is None:
            return self._call(lambda store: store.update(key, fn, ttl), attempts=1)  # a retry could apply fn twice
        return self._call(lambda store: store.update(key, fn, ttl, fence=fence), attempts=1)

    def create(self, user_id: str, data: dict[str, Any], ttl: int | None = None) -> str:
        return self._call(lambda store: store.create(user_id, data, ttl), attempts=1)

    def regenerate(self, session_id: str) -> str:
        return self._call(lambda store: store.regenerate(session_id), attempts=1)

    def sessions_for_user(self, user_id: str) -> list[str]:
        return self._call(lambda store: store.sessions_for_user(user_id))

    def delete_user_sessions(self, user_id: str) -> int:
        return self._call(lambda store: store.delete_user_sessions(user_id))

    def set_many(
        self, items: Iterable[tuple[str, dict[str, Any], int | None]], *, stamp: bool = True, index: bool = False
    ) -> int:
        listed = list(items)  # an iterator must survive a retry; re-sending SETs (and ZADD NX) is idempotent
        return self._call(lambda store: store.set_many(listed, stamp=stamp, index=index))

    def logouts(self, user_ids: Iterable[str]) -> dict[str, float]:
        listed = list(user_ids)
        return self._call(lambda store: store.logouts(listed))

    def probe(self) -> None:
        """One attempt of the inner store's probe, as the breaker's trial even while it cools down: the fallback's
        recovery probe is never swallowed by an open breaker."""
        self._call(lambda store: store.probe(), attempts=1, trial=True)

    def stats(self) -> dict[str, int]:
        """The counters of every inner store this wrapper has used, summed, plus ``rebuilds``; no round trip, so it
        works while the breaker is open.

        Read under the rebuild lock: a rebuild between reading the totals and the current store would count the
        replaced store twice or not at all.
        """
        with self._rebuild_lock:
            totals = dict(self._retired_totals)
            _add(totals, self._current[0].stats())
            rebuilds = self.rebuilds
        return {**totals, "rebuilds": rebuilds}


def _add(totals: dict[str, int], counters: dict[str, int]) -> None:
    """Add ``counters`` into ``totals``, name by name."""
    for name, value in counters.items():
        totals[name] = totals.get(name, 0) + value


def _rebuilt(store: ISessionStore) -> ISessionStore:
    """``store.rebuild()`` where the store has one (a Redis store), else the store itself."""
    rebuild = getattr(store, "rebuild", None)
    return rebuild() if callable(rebuild) else store
