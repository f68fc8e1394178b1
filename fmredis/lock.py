"""RedisLock: a lease lock in Redis whose every acquisition mints a fencing token the session store can enforce.

The design answers what the Python locks miss (docs/locks.md compares them): the handle is an explicit owner that any
thread may release (redis-py's token is thread-local); waiters queue in Redis and the release wakes the first one
through its own list (no 100 ms polling, no thundering herd, no barging past the queue); one background thread renews
every lease and a failed renewal is reported (``lost``, ``on_lost``, ``LockLost``) instead of dying silently
(python-redis-lock's renewal thread); and a holder paused past its lease is stopped at the storage: its token is
older than the newest one issued, and ``store.set/update/delete(..., fence=held)`` check that in Redis, in the script
that writes (Kleppmann's fencing token, which Redlock lacks).

A lease is a time-out, so it only means something while the clocks agree: the holder counts it from *before* it sent
the acquisition (or renewal), minus 1% and 2 ms for clock drift, and reports the lock lost once that has passed.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from fmredis.checks import MAX_KEY_LENGTH, MAX_SECONDS
from fmredis.errors import ConfigurationError, FmRedisError, InvalidKeyError, LockLost, LockTimeout, StoreUnavailable
from fmredis.lifecycle import events, session_ref
from fmredis.lock_renewal import Entry, schedule
from fmredis.lock_scripts import ACQUIRE, EXTEND, LEAVE, RELEASE
from fmredis.redis_errors import RedisCall, redis_call
from fmredis.redis_scripts import script

__all__ = ["HeldLock", "RedisLock"]

#: A waiter blocks at most this long per BLPOP before it asks again (and pushes back its deadline in the queue).
_SLICE = 1.0
#: A waiter that has not asked for this long (its process died) is dropped from the queue.
_WAITER_LEASE_MS = 3_000
#: The fencing counter is kept this long after the last acquisition (tokens keep growing by the clock after that).
_FENCE_KEEP_MS = 86_400_000
_STATS = ("acquisitions", "contended", "wait_ms", "timeouts", "releases", "renewals", "renewal_failures", "lost")

_ACQUIRE, _RELEASE, _EXTEND = redis_call("lock acquire"), redis_call("lock release"), redis_call("lock extend")
_WAIT, _LEAVE, _LOCKED = redis_call("lock wait"), redis_call("lock leave"), redis_call("lock locked", read=True)


_ACQUIRE_SCRIPT, _RELEASE_SCRIPT = script(ACQUIRE), script(RELEASE)
_EXTEND_SCRIPT, _LEAVE_SCRIPT = script(EXTEND), script(LEAVE)


def _has_hash_tag(key: str) -> bool:
    """Redis Cluster's rule: the text between the first ``{`` and the first ``}`` after it, if not empty."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return end > start + 1


def _seconds(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.01 <= value <= MAX_SECONDS:
        raise ConfigurationError(f"{what} must be a number of seconds from 0.01 to {MAX_SECONDS:.0f}", key=what)
    return float(value)


def _lease(sent: float, ttl: float) -> float:
    """The end of a lease of ``ttl`` seconds asked for at ``sent``, less clock drift (Redlock's 1%, and 2 ms)."""
    return sent + ttl * 0.99 - 0.002


class _Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_STATS, 0)

    def add(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                self._counts[name] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class RedisLock:
    """A named lock in Redis (``client``: a redis-py ``Redis`` or ``RedisCluster``) with a lease of ``ttl`` seconds.

    ``acquire(timeout)`` returns a :class:`HeldLock`; ``with lock as held:`` acquires (waiting as long as it takes)
    and releases. ``auto_renew``: the process's renewal thread restarts the lease every ``ttl / 3`` while it is held.
    ``on_lost(held)`` is called once when a held lock is found lost. All of the lock's keys start with
    ``key_prefix`` and share the name's hash tag (``{name}`` unless the name has one): see docs/locks.md for a
    cluster. Thread-safe; each thread waiting in ``acquire`` holds one of the client's pooled connections.
    """

    def __init__(
        self,
        client: Any,
        name: str,
        ttl: float = 10.0,
        auto_renew: bool = True,
        on_lost: Callable[[HeldLock], object] | None = None,
        *,
        key_prefix: str = "fmredis-lock:",
    ) -> None:
        if not callable(getattr(client, "execute_command", None)):
            kind = type(client).__name__
            raise TypeError(f"client must be a redis-py client (redis.Redis, RedisCluster), not {kind}")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_KEY_LENGTH:
            raise InvalidKeyError(f"lock name must be a non-empty str of at most {MAX_KEY_LENGTH} characters")
        if not isinstance(key_prefix, str):
            raise TypeError(f"key_prefix must be a str, not {type(key_prefix).__name__}")
        if type(auto_renew) is not bool:
            raise TypeError(f"auto_renew must be a bool, not {type(auto_renew).__name__}")
        if on_lost is not None and not callable(on_lost):
            raise TypeError("on_lost must be a callable taking the HeldLock, or None")
        self.client, self.name, self.auto_renew, self.on_lost = client, name, auto_renew, on_lost
        self.ttl = _seconds("ttl", ttl)
        self.key = base = key_prefix + (name if _has_hash_tag(key_prefix + name) else "{" + name + "}")
        self.fence_key = base + ":fence"
        self._queue, self._waiters, self._released = base + ":queue", base + ":waiters", base + ":released"
        self._wake_prefix = base + ":wake:"
        self._slice = _SLICE
        pool = getattr(client, "connection_pool", None) or getattr(client, "nodes_manager", None)  # a cluster's
        timeout = getattr(pool, "connection_kwargs", {}).get("socket_timeout")
        if isinstance(timeout, (int, float)) and timeout > 0:
            self._slice = min(_SLICE, timeout / 2)  # a BLPOP must return before the socket times out
        self._stats = _Stats()
        self._entered = threading.local()

    def __repr__(self) -> str:
        return f"RedisLock({session_ref(self.name)}, ttl={self.ttl}, auto_renew={self.auto_renew})"

    def stats(self) -> dict[str, int]:
        """Counts since the lock was made: acquisitions, contended (acquisitions that waited), wait_ms (total time
        those waited), timeouts, releases, renewals, renewal_failures and lost."""
        return self._stats.snapshot()

    def locked(self) -> bool:
        """Whether anyone holds the lock now (a snapshot)."""
        with _LOCKED:
            return bool(self.client.execute_command("EXISTS", self.key))

    def acquire(self, timeout: float | None = None) -> HeldLock:
        """Take the lock, waiting up to ``timeout`` seconds (``None``: as long as it takes; ``0``: one attempt).

        Waiters are served first come, first served: a release wakes the first of them, and nobody else can take the
        lock before it. Raises :class:`~fmredis.errors.LockTimeout` when the time runs out, and
        :class:`~fmredis.errors.StoreUnavailable` when Redis cannot be reached (nothing is held either way).
        """
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))):
            raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
        if timeout is not None and not 0 <= timeout <= 10 * MAX_SECONDS:
            raise ValueError(f"timeout must be None or from 0 to {10 * MAX_SECONDS:.0f} seconds (got {timeout!r})")
        owner = secrets.token_hex(16)
        started = time.monotonic()
        deadline = math.inf if timeout is None else started + timeout
        wake = self._wake_prefix + owner
        keys = (self.key, self.fence_key, self._queue, self._waiters, wake)
        args = (owner, int(self.ttl * 1000), "0" if timeout == 0 else "1", _WAITER_LEASE_MS, _FENCE_KEEP_MS)
        queued = False
        try:
            while True:
                sent = time.monotonic()
                with _ACQUIRE:
                    acquired, value = _ACQUIRE_SCRIPT(self.client, keys, (*args, self._wake_prefix))
                if acquired:
                    held = HeldLock(self, owner, int(value), sent)
                    waited_ms = int((time.monotonic() - started) * 1000) if queued else 0
                    self._stats.add(acquisitions=1, contended=int(queued), wait_ms=waited_ms)
                    return held
                queued = timeout != 0
                left = deadline - time.monotonic()
                if left <= 0:
                    self._stats.add(timeouts=1)
                    raise LockTimeout(f"Lock {session_ref(self.name)} not acquired within {timeout} s")
                pttl = int(value) / 1000
                block = min(left, self._slice, pttl if pttl > 0 else self._slice)
                with _WAIT:  # woken by the push of a release, or at the end of the holder's lease
                    self.client.execute_command("BLPOP", wake, f"{max(block, 0.002):.3f}")
        except BaseException:
            if queued:
                self._leave(owner, wake)
            raise

    def _leave(self, owner: str, wake: str) -> None:
        """Leave the queue; if Redis cannot be reached the entry lapses by itself within the waiter lease."""
        try:
            with _LEAVE:
                keys = (self.key, self._queue, self._waiters, wake)
                _LEAVE_SCRIPT(self.client, keys, (owner, self._wake_prefix, _WAITER_LEASE_MS))
        except FmRedisError:
            pass

    def __enter__(self) -> HeldLock:
        held = self.acquire()
        stack: list[HeldLock] = self._entered.__dict__.setdefault("stack", [])
        stack.append(held)
        return held

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._entered.stack.pop().__exit__(exc_type, exc, tb)

    # --- what HeldLock asks of its lock ------------------------------------------------------------------------------

    def _release(self, owner: str) -> bool:
        with _RELEASE:
            keys = (self.key, self._queue, self._waiters, self._released)
            return int(_RELEASE_SCRIPT(self.client, keys, (owner, self._wake_prefix, _WAITER_LEASE_MS))) == 1

    def _extend(self, owner: str, ttl: float, guard: RedisCall = _EXTEND) -> bool:
        with guard:
            return int(_EXTEND_SCRIPT(self.client, (self.key,), (owner, int(ttl * 1000)))) == 1


class HeldLock:
    """One acquisition of a :class:`RedisLock`: an explicit owner (any thread may release it), not thread-local.

    ``token`` is its fencing token: pass the handle as ``fence=`` to a Redis session store's ``set``, ``update`` or
    ``delete`` and Redis refuses the write (:class:`~fmredis.errors.FencedOut`) once a newer token has been issued.
    ``lost`` turns ``True``, for good, once the lock may no longer be held. Leaving ``with held:`` releases it, and
    raises :class:`~fmredis.errors.LockLost` if it was lost meanwhile. Thread-safe.
    """

    def __init__(self, lock: RedisLock, owner: str, token: int, sent: float) -> None:
        self.lock, self.name, self.token, self.fence_key = lock, lock.name, token, lock.fence_key
        self._owner = owner
        self._state = threading.Lock()
        self._ttl = lock.ttl
        self._valid_until = _lease(sent, lock.ttl)
        self._lost = self._released = self._ending = False
        self._generation = 0
        self._renewal: Entry | None = None
        if lock.auto_renew:
            self._schedule(sent + lock.ttl / 3)

    def __repr__(self) -> str:
        return f"HeldLock({session_ref(self.name)}, token={self.token}, lost={self._lost}, released={self._released})"

    @property
    def released(self) -> bool:
        return self._released

    @property
    def lost(self) -> bool:
        """``True`` once a renewal found the lock taken or gone, or once its lease may have run out by this process's
        clock (Redis unreachable, or this process paused): never ``False`` while another may hold the lock."""
        with self._state:
            if self._lost or self._released or time.monotonic() < self._valid_until:
                return self._lost
        self._mark_lost()
        return True

    def release(self) -> bool:
        """Release the lock; ``True`` if this call released it, ``False`` if it was no longer held (lost, or
        released already). Never releases another owner's lock. Raises ``StoreUnavailable`` if Redis cannot be
        reached (the lock then frees itself when its lease ends; calling again retries)."""
        with self._state:
            if self._released:
                return False
            self._ending = True  # no more renewals, whatever the outcome
            renewal, self._renewal = self._renewal, None
        if renewal is not None:
            renewal.cancel()  # else the renewal thread would wake for it, and hold the handle until ttl / 3
        released = self.lock._release(self._owner)
        with self._state:
            self._released = True
        if released:
            self.lock._stats.add(releases=1)
        else:
            self._mark_lost()  # taken or expired before this release: that is a lost lock, reported once
        return released

    def extend(self, ttl: float | None = None) -> None:
        """Restart the lease at ``ttl`` seconds (default: the lock's ``ttl``; later renewals use it too). Raises
        :class:`~fmredis.errors.LockLost` if the lock is no longer held."""
        seconds = self.lock.ttl if ttl is None else _seconds("ttl", ttl)
        if self.lost or self._ending:
            raise LockLost(f"Lock {session_ref(self.name)} is no longer held: not extended")
        sent = time.monotonic()
        if not self.lock._extend(self._owner, seconds):
            self._mark_lost()
            raise LockLost(f"Lock {session_ref(self.name)} was taken or expired: not extended")
        with self._state:
            self._ttl, self._valid_until = seconds, _lease(sent, seconds)
        if self.lock.auto_renew:
            self._schedule(sent + seconds / 3)

    def _schedule(self, at: float) -> None:
        with self._state:
            self._generation += 1
            generation = self._generation
            previous = self._renewal
        if previous is not None:
            previous.cancel()
        entry = schedule(at, lambda: self._renew(generation))
        with self._state:
            if self._ending:  # released meanwhile
                entry.cancel()
            else:
                self._renewal = entry

    def _renew(self, generation: int) -> float | None:
        """On the renewal thread: restart the lease; the time of the next renewal, or ``None`` to stop."""
        with self._state:
            if generation != self._generation or self._ending or self._lost:
                return None
            ttl = self._ttl
        sent = time.monotonic()
        try:
            renewed: bool | None = self.lock._extend(self._owner, ttl)
        except FmRedisError:
            renewed = None
        with self._state:
            if generation != self._generation or self._ending:
                return None
            if renewed:
                self._valid_until = _lease(sent, ttl)
            valid_until = self._valid_until
        if renewed:
            self.lock._stats.add(renewals=1)
            return sent + ttl / 3
        if renewed is None:
            self.lock._stats.add(renewal_failures=1)
            now = time.monotonic()
            if now < valid_until:  # try again soon, while the lease may still be saved
                return min(valid_until, now + min(ttl / 10, 0.5))
        self._mark_lost()
        return None

    def _mark_lost(self) -> None:
        with self._state:
            if self._lost:
                return
            self._lost = True
        self.lock._stats.add(lost=1)
        events.warning("Lock lost", extra={"lock": session_ref(self.name), "token": self.token})
        callback = self.lock.on_lost
        if callback is not None:
            try:
                callback(self)
            except Exception as exc:  # the renewal thread must survive a failing callback; its text may hold data
                events.error("on_lost callback raised %s", type(exc).__name__, extra={"lock": session_ref(self.name)})

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        lost = self.lost
        try:
            released = self.release()
        except StoreUnavailable:
            if exc is None and not lost:
                raise
            released = False
        if lost or not released:
            raise LockLost(
                f"Lock {session_ref(self.name)} was lost before the with block ended: another holder may have run "
                f"meanwhile (writes fenced with token {self.token} are refused once a newer one is issued)"
            ) from exc
