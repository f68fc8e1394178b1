"""CacheCore: the reads and writes every ContextCache operation is made of, and the rules they keep.

A read goes through the local tier to Redis (one round trip) and back into the tier, taking a ticket first (see
:mod:`fmredis.local_tier`); a write drops this process's copy at its reply. When Redis cannot be reached, a read is
served the local copy kept from before the listener lost Redis, if there is one, for at most its TTL; within ``_DOWN``
seconds of such a failure one read at a time tries Redis again and the others are served at once; the first read that
reaches Redis while the listener is not subscribed drops every copy (this process may have missed invalidations).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from fmredis.context_values import Codec
from fmredis.errors import StoreUnavailable
from fmredis.lifecycle import events, session_ref
from fmredis.local_tier import MISSING, LocalTier
from fmredis.serialization import CorruptSession
from fmredis.tracking import InvalidationListener

__all__ = ["CacheCore"]

#: After a read found Redis unreachable, reads with a local copy serve it without trying Redis for this long.
_DOWN = 1.0
_COUNTS = ("loads", "load_waits", "stale_served", "fallback_reads", "unreadable")


class CacheCore:
    """What :class:`~fmredis.context_cache.ContextCache` builds on: the client, the local tier, the codec and the
    listener (set by the subclass), with the read-through, write and outage rules. Thread-safe."""

    _listener: InvalidationListener

    def __init__(self, client: Any, tier: LocalTier, codec: Codec, ttl: int) -> None:
        self._client: Any = client
        self._tier = tier
        self.codec = codec
        self.ttl = ttl
        self._mutex = threading.Lock()
        self._probe = threading.Lock()  # held by the one read that tries an unreachable Redis again
        self._down_until = 0.0  # monotonic time until which reads serve local copies without trying Redis
        self._counts = dict.fromkeys(_COUNTS, 0)

    def _write(self, name: str, guard: Any, send: Callable[[], Any]) -> Any:
        """``send()`` under ``guard`` (its error translation); this process's copy of ``name`` is dropped at the
        reply, or at the failure (outcome unknown)."""
        try:
            with guard:
                return send()
        finally:
            self._tier.invalidate((name,))

    def _pipelined(self, *commands: tuple[Any, ...]) -> list[Any]:
        """The replies to ``commands``, sent in one write (one round trip). Not atomic, and need not be: a write
        between them also sends an invalidation, which drops what this read fills."""
        pipe = self._client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return pipe.execute()  # type: ignore[no-any-return]

    def _offline(self, name: str) -> Any:
        """(Listener not subscribed.) Restart a listener that died with a fork; and within ``_DOWN`` seconds of a
        read that could not reach Redis, while another read is trying it again, the unexpired local copy of ``name``
        (a hung server would cost every read its socket timeout), else ``MISSING``."""
        self._listener.start(0)
        if self._down_until > time.monotonic() and self._probe.locked():
            value = self._tier.fallback(name)
            if value is not MISSING:
                self._count("fallback_reads")
            return value
        return MISSING

    def _reachable(self) -> None:
        """(A read reached Redis while the listener is not subscribed.) Copies kept from before may have missed a
        write: drop them."""
        self._down_until = 0.0
        if self._tier.sizes()[0]:
            self._tier.flush()

    def _unreachable(self, name: str) -> Any:
        """(A read could not reach Redis.) The unexpired local copy of ``name``, or ``MISSING``."""
        self._down_until = time.monotonic() + _DOWN
        value = self._tier.fallback(name)
        if value is not MISSING:
            self._count("fallback_reads")
        return value

    def _read_through(
        self,
        name: str,
        guard: Any,
        commands: tuple[tuple[Any, ...], ...],
        decode: Callable[[list[Any]], tuple[Any, int] | None],
        stale_ttl: int,
    ) -> tuple[Any, bool]:
        """Send ``commands`` (the last one ``PTTL``) in one round trip and ``decode`` the replies into ``(value,
        size)`` (``None``: missing): ``(value, fresh)``, the local tier filled when fresh. Redis unreachable: the
        local copy if there is one, else ``StoreUnavailable``."""
        tier = self._tier
        if not tier.serving:
            value = self._offline(name)
            if value is not MISSING:
                return value, True
        ticket = tier.ticket(name)
        probing = False
        try:
            probing = not tier.serving and self._probe.acquire(blocking=False)
            sent = time.monotonic()
            try:
                with guard:
                    replies = self._pipelined(*commands)
                self._down_until = 0.0
                if not tier.serving:
                    self._reachable()
                decoded = decode(replies)
            except StoreUnavailable:
                value = self._unreachable(name)
                if value is MISSING:
                    raise
                return value, True
            except CorruptSession as exc:
                self._unreadable(name, exc)
                return None, False
            if decoded is None:
                return None, False
            value, size = decoded
            pttl = int(replies[-1])
            fresh_ms = (pttl - stale_ttl * 1000) if pttl >= 0 else self.ttl * 1000
            if fresh_ms <= 0:
                return value, False
            tier.fill(ticket, value, size, sent + fresh_ms / 1000)
            return value, True
        finally:
            tier.forget(ticket)  # (nothing to do if it was filled) also for an error of any other kind
            if probing:
                self._probe.release()

    def _count(self, name: str) -> None:
        with self._mutex:
            self._counts[name] += 1

    def _unreadable(self, name: str, exc: CorruptSession) -> None:
        self._count("unreadable")
        events.warning("Context cache entry %s unreadable, read as missing: %s", session_ref(name), exc)

    def _core_forked(self) -> None:
        # In a child only the forking thread exists: another thread of the parent may have held these locks.
        self._mutex = threading.Lock()
        self._probe = threading.Lock()
        self._down_until = 0.0
