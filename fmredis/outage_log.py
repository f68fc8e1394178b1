"""OutageLog: what a fallback's outage changed that the primary has not seen yet, and how it is written back."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fmredis.errors import FmRedisError, StoreUnavailable
from fmredis.journal import OutageJournal
from fmredis.lifecycle import owner_of, session_ref
from fmredis.serialization import CorruptSession, decode_session, parse_utc
from fmredis.store import ISessionStore

__all__ = ["BATCH", "DELETE", "SET", "OutageLog"]

logger = logging.getLogger("fmredis.fallback")

SET, DELETE = "set", "delete"

COUNT_NAMES = ("written_back", "deleted", "kept_newer_in_redis", "gone_in_redis", "expired_in_memory", "failed")

#: Changes written back per round trip pair (one MGET, one pipelined batch of SETs).
BATCH = 500


class _Pending:
    """One change not yet applied to the primary: the session's bytes and absolute expiry (epoch seconds) for a
    ``SET``; ``seq`` tells a newer change of the same key apart."""

    __slots__ = ("expires", "op", "payload", "seq")

    def __init__(self, op: str, payload: bytes | None, expires: float | None, seq: int) -> None:
        self.op, self.payload, self.expires, self.seq = op, payload, expires, seq


class OutageLog:
    """The changes an outage made, each dirty (not yet taken for a write-back) or in flight (taken by the write-back
    running now). A ``SET`` keeps the session's own bytes, so the write-back never depends on what memory still holds,
    and with a ``journal`` every change is committed to it before the write that made it is acknowledged.

    ``limit`` bounds the changes pending at once (the memory-only mode's bound; the journal bounds bytes on its own):
    a change of a key not already pending that would pass it raises ``StoreUnavailable``.

    Not locked itself: every method but :meth:`write_back` is called holding the fallback's lock (``lock``), which also
    covers the memory store's writes. The write-back runs outside it, a batch at a time, taking it briefly.
    """

    def __init__(
        self,
        lock: threading.RLock,
        journal: OutageJournal | None,
        limit: int,
        wall_clock: Callable[[], float],
        max_ttl: int,
    ) -> None:
        self._lock = lock
        self._max_ttl = max_ttl
        self._journal = journal
        self._limit = limit
        self._wall = wall_clock
        self._dirty: dict[str, _Pending] = {}
        self._in_flight: dict[str, _Pending] = {}
        #: Keys whose pending change is a ``SET`` (a session memory must keep).
        self.sets = 0
        self._both = 0  # keys both in flight and dirty again (a newer change made during the write-back)
        self._seq = 0
        self.counts = dict.fromkeys(COUNT_NAMES, 0)
        #: When the outage began (epoch seconds): a user logged out in Redis since then keeps the outage's copies of
        #: their sessions out of Redis.
        self.began = wall_clock()

    def __len__(self) -> int:
        """Keys with a change not yet applied to the primary."""
        return len(self._dirty) + len(self._in_flight) - self._both

    def pinned(self, key: str) -> bool:
        """Whether memory must keep ``key``: an outage write of it is pending (reads must go on seeing it)."""
        pending = self._dirty.get(key) or self._in_flight.get(key)
        return pending is not None and pending.op == SET

    def _put(self, key: str, pending: _Pending) -> None:
        """Make ``pending`` the key's change (dirty), keeping :attr:`sets` exact."""
        previous = self._dirty.get(key) or self._in_flight.get(key)
        self.sets += (pending.op == SET) - (previous is not None and previous.op == SET)
        if key in self._in_flight and key not in self._dirty:
            self._both += 1
        self._dirty[key] = pending

    def full(self, room: int) -> bool:
        """Whether ``room`` sessions are all held by outage writes not yet written back (expired ones included until
        the next write-back): memory would have to evict one to take a new key."""
        return self.sets >= room

    def mark(self, changes: list[tuple[str, str, bytes | None, int]]) -> None:
        """Record ``(key, op, payload, remaining_seconds)`` changes (journaled first); ``StoreUnavailable`` if the
        bound or the journal refuses them, and then none is recorded."""
        fresh = sum(1 for key, *_ in changes if key not in self._dirty and key not in self._in_flight)
        if fresh and len(self) + fresh > self._limit:
            raise StoreUnavailable(
                f"memory fallback full: {len(self)} outage changes not yet written back to Redis (the bound is "
                f"{self._limit}); refused rather than dropping one"
            )
        now = self._wall()
        stamped = [
            (key, op, payload, None if payload is None else now + seconds) for key, op, payload, seconds in changes
        ]
        if self._journal is not None:
            seqs = self._journal.record(stamped, now)
        else:
            seqs = list(range(self._seq + 1, self._seq + 1 + len(stamped)))
        self._seq = max(self._seq, seqs[-1]) if seqs else self._seq
        for (key, op, payload, expires), seq in zip(stamped, seqs, strict=True):
            self._put(key, _Pending(op, payload, expires, seq))

    def restore(self, key: str, op: str, payload: bytes | None, expires: float | None, at: float, seq: int) -> None:
        """A change an earlier process journaled at ``at``, pending again here (its outage began by then)."""
        self._put(key, _Pending(op, payload, expires, seq))
        self._seq = max(self._seq, seq)
        self.began = min(self.began, at)

    def start_outage(self) -> None:
        self.counts = dict.fromkeys(COUNT_NAMES, 0)
        if not self:
            self.began = self._wall()

    def take(self) -> bool:
        """Move every dirty change in flight, for :meth:`write_back`; whether there was any."""
        self._in_flight, self._dirty = self._dirty, {}
        return bool(self._in_flight)

    def write_back(self, primary: ISessionStore, demote: Callable[[str], None]) -> None:
        """Apply the changes in flight to ``primary``, :data:`BATCH` at a time. On ``StoreUnavailable`` what is left
        goes back to dirty (unless a newer outage write replaced it) and the error propagates: the next recovery
        resumes there (the journal keeps every change until it is applied). A batch the primary refuses (``OOM``,
        ``MISCONF`` ...) is dropped with a warning, since waiting would not help. ``demote(key)`` is called for each
        session written back: memory may evict it first from then on."""
        try:
            batch: list[tuple[str, _Pending]] = []
            for item in list(self._in_flight.items()):
                batch.append(item)
                if len(batch) == BATCH:
                    self._apply_batch(primary, batch, demote)
                    batch = []
            if batch:
                self._apply_batch(primary, batch, demote)
        finally:
            with self._lock:
                for key, pending in self._in_flight.items():
                    self._dirty.setdefault(key, pending)
                self._in_flight, self._both = {}, 0
            if self._journal is not None:
                self._journal.flush()

    def _apply_batch(
        self, primary: ISessionStore, batch: list[tuple[str, _Pending]], demote: Callable[[str], None]
    ) -> None:
        try:
            self._merge(self._apply(primary, batch))
        except StoreUnavailable:
            raise
        except FmRedisError:
            # A change the primary refuses (OOM, MISCONF ...) fails the whole round trip: redo this batch one change
            # at a time, so that only the refused ones are dropped (re-sending the others is idempotent).
            for key, pending in batch:
                try:
                    self._merge(self._apply(primary, [(key, pending)]))
                except StoreUnavailable:
                    raise
                except FmRedisError as exc:
                    self.counts["failed"] += 1
                    ref = session_ref(key)  # never the key itself: a session id is a bearer credential
                    logger.warning(
                        "Session %s could not be written back to Redis (%s); it is dropped",
                        ref,
                        exc,
                        extra={"session_id": ref},
                    )
        with self._lock:
            for key, pending in batch:
                if self._in_flight.get(key) is pending:
                    del self._in_flight[key]
                    if key in self._dirty:  # a newer change stands for the key
                        self._both -= 1
                    elif pending.op == SET:
                        self.sets -= 1
                if pending.op == SET and not self.pinned(key):
                    demote(key)
        if self._journal is not None:
            self._journal.remove([(key, pending.seq) for key, pending in batch])

    def _logouts(self, primary: ISessionStore, owners: set[str]) -> dict[str, float]:
        """The primary's logout notes for ``owners``; unreadable ones (an ACL refusing the notes' key, say) are
        taken as none, with a warning: losing an acknowledged write would be worse than reviving a logged-out one."""
        if not owners:
            return {}
        try:
            return primary.logouts(sorted(owners))
        except StoreUnavailable:
            raise
        except FmRedisError as exc:
            logger.warning("Logout notes unreadable (%s): user sessions Redis lacks are written back regardless", exc)
            return {}

    def _merge(self, counts: dict[str, int]) -> None:
        for name, value in counts.items():
            self.counts[name] += value

    def _apply(self, primary: ISessionStore, batch: list[tuple[str, _Pending]]) -> dict[str, int]:
        """Write one batch back, by the conflict rules of :class:`~fmredis.FallbackSessionStore`: deletes in one
        round trip; sessions read in one (``get_many``) and the winners written in one (``set_many``). Returns the
        counts, once all of it is applied."""
        counts = dict.fromkeys(COUNT_NAMES, 0)
        deletes = [key for key, pending in batch if pending.op == DELETE]
        if deletes:
            primary.delete_many(deletes)
            counts["deleted"] += len(deletes)
        now = self._wall()
        mine: dict[str, tuple[dict[str, Any], int]] = {}
        for key, pending in batch:
            if pending.op != SET or pending.payload is None or pending.expires is None:
                continue
            # At most max_ttl: a wall clock stepped back must not make the TTL one the primary refuses.
            remaining = min(math.ceil(pending.expires - now), self._max_ttl)
            if remaining <= 0:
                counts["expired_in_memory"] += 1
                continue
            try:
                mine[key] = (decode_session(pending.payload), remaining)
            except CorruptSession:  # cannot happen for bytes this process encoded; a tampered journal, say
                counts["failed"] += 1
                logger.warning("Session %s in the outage journal is unreadable; dropped", session_ref(key))
        if not mine:
            return counts
        theirs = primary.get_many(list(mine))
        owners = {owner for key, (session, _) in mine.items() if key not in theirs and (owner := owner_of(session))}
        logouts = self._logouts(primary, owners)
        winners: list[tuple[str, dict[str, Any], int | None]] = []
        lost: list[tuple[str, dict[str, Any], int | None]] = []  # sessions Redis no longer holds
        for key, (session, remaining) in mine.items():
            held = theirs.get(key)
            theirs_at = _activity(held) if held is not None else None  # (parsed only when there is a conflict)
            if theirs_at is not None and ((mine_at := _activity(session)) is None or theirs_at > mine_at):
                counts["kept_newer_in_redis"] += 1
            elif (
                held is None
                and (owner := owner_of(session)) is not None
                and logouts.get(owner, -math.inf) >= self.began
            ):
                # Logged out in Redis (delete_user_sessions, regenerate) by a worker that still reached it while
                # this one was cut off: writing the session back would revive it, outside the user's index.
                counts["gone_in_redis"] += 1
            else:
                (winners if held is not None else lost).append((key, session, remaining))
        # stamp=False: each keeps its own last_activity, the time of the outage write. A user's session Redis lost
        # (restarted empty, say) is listed in the user's index again, so that "log out everywhere" still finds it.
        for sessions, index in ((winners, False), (lost, True)):
            if sessions:
                written = primary.set_many(sessions, stamp=False, index=index)
                counts["written_back"] += written
                counts["expired_in_memory"] += len(sessions) - written  # passed the lifetime cap meanwhile
        return counts


def _activity(session: dict[str, Any] | None) -> datetime | None:
    """``last_activity`` as an aware UTC datetime, or ``None`` when absent or unreadable (such a side never wins)."""
    return parse_utc(session.get("last_activity")) if session else None
