"""ISessionStore: the session store interface every store and wrapper implements."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Protocol, TypeVar

from fmredis.errors import SessionExpired
from fmredis.ttl_rules import TTLRules

__all__ = ["Fence", "ISessionStore", "SessionUpdate"]

#: ``update``'s function: given the session (a fresh copy), returns the new session.
SessionUpdate = Callable[[dict[str, Any]], dict[str, Any]]

_Store = TypeVar("_Store", bound="ISessionStore")


class Fence(Protocol):
    """What a fenced write carries (a :class:`~fmredis.HeldLock` is one): its lock's fencing counter's key, and the
    token it was issued. Redis refuses the write once the counter has passed the token."""

    @property
    def token(self) -> int: ...

    @property
    def fence_key(self) -> str: ...


#: The key :meth:`ISessionStore.probe` asks about (never written).
PROBE_KEY = "fmredis:probe"


class ISessionStore(abc.ABC):
    """A keyed store of JSON-object sessions with expiry.

    Every method is safe to call from many threads at once. Keys are non-empty ``str`` of at most
    :data:`~fmredis.MAX_KEY_LENGTH` characters; values are ``dict`` that serialize to JSON. Invalid input raises before
    anything is written. Backend failures raise :class:`~fmredis.errors.StoreError` subclasses, never a silent miss.

    A key whose stored data is unreadable (not a JSON object, or in Redis a key of another type) is missing to every
    read alike: ``get`` returns ``None``, ``exists`` ``False``, ``ttl`` ``None``, ``touch`` and ``extend_ttl`` ``False``
    (each logs one warning); the data is left in place (a refresh of a string that is not JSON restarts its expiry:
    the expiry is set in the same command that reads it).

    Lifetime (opt-in, ``max_lifetime``): a session whose document has ``created_at`` is never kept past ``created_at +
    max_lifetime``; every TTL a write or refresh gives it is cut to that, a refresh after it reads as missing, and a
    write after it removes the session and raises :class:`~fmredis.errors.SessionExpired`.

    Stores are context managers: ``with`` closes them.
    """

    @property
    @abc.abstractmethod
    def ttl_rules(self) -> TTLRules:
        """The store's TTL rules (default and maximum TTL, policy, lifetime cap)."""

    @abc.abstractmethod
    def get(self, key: str, *, refresh: bool = False) -> dict[str, Any] | None:
        """The session stored under ``key``, or ``None`` when it is missing, expired or unreadable.

        ``refresh=True`` also restarts its expiry, in the same round trip, as :meth:`touch` does.
        """

    @abc.abstractmethod
    def set(
        self, key: str, value: dict[str, Any], ttl: int | None = None, *, stamp: bool = True, fence: Fence | None = None
    ) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (the store's default, or its TTL policy's, when ``None``).

        Stamps ``last_activity`` with the time of the write (UTC ISO-8601); ``stamp=False`` stores the caller's
        ``last_activity`` as given (migrations, write-backs). Never mutates ``value``. With ``max_lifetime`` on, a
        ``value`` past its lifetime removes the stored session and raises :class:`~fmredis.errors.SessionExpired`.

        ``fence`` (a :class:`~fmredis.HeldLock`): Redis writes only if no newer token has been issued for that lock,
        checked in the script that writes; else :class:`~fmredis.errors.FencedOut` and nothing is written. Only a
        Redis store can check a fence (others raise :class:`~fmredis.errors.ConfigurationError`); the same applies to
        ``delete`` and ``update``.
        """

    def set_many(
        self, items: Iterable[tuple[str, dict[str, Any], int | None]], *, stamp: bool = True, index: bool = False
    ) -> int:
        """Store several sessions, each ``(key, value, ttl)`` as :meth:`set` would, and return how many were stored (a
        session past its lifetime cap is removed instead and not counted, without raising).

        ``index=True`` also lists each stored session that has a ``user_id`` in that user's index (as ``create`` does,
        scored by its ``created_at``), so that ``sessions_for_user`` and ``delete_user_sessions`` find it: the
        fallback's write-back of sessions Redis lost. The stores check and encode every item before writing any, and
        the Redis store sends them in one round trip (not a transaction: a failure part-way may leave some written).
        This default calls :meth:`set` per item and lists nothing.
        """
        stored = 0
        for key, value, ttl in list(items):
            try:
                self.set(key, value, ttl, stamp=stamp)
            except SessionExpired:
                continue
            stored += 1
        return stored

    @abc.abstractmethod
    def delete(self, key: str, *, fence: Fence | None = None) -> bool:
        """Remove the session; ``True`` if it existed. ``fence``: as for :meth:`set`."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """``True`` if :meth:`get` would return a session for ``key``."""

    @abc.abstractmethod
    def extend_ttl(self, key: str, ttl: int | None = None) -> bool:
        """Reset the session's expiry to ``ttl`` seconds (default when ``None``), cut to its lifetime like
        :meth:`touch`; ``False`` if it is missing or unreadable."""

    @abc.abstractmethod
    def ttl(self, key: str) -> int | None:
        """Seconds until the session expires; ``None`` if it is missing or unreadable, ``-1`` if it has no expiry."""

    @abc.abstractmethod
    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The sessions found among ``keys``, as ``{key: session}``; missing and unreadable ones are left out."""

    @abc.abstractmethod
    def delete_many(self, keys: Iterable[str]) -> int:
        """Remove every session in ``keys``; returns how many existed."""

    @abc.abstractmethod
    def touch(self, key: str, ttl: int | None = None) -> bool:
        """Restart the session's expiry (sliding expiry) without rewriting it; ``False`` if it is missing.

        The TTL is ``ttl``, else the TTL policy's for a session active now, else the default, cut to the session's
        remaining lifetime. ``last_activity`` is not changed: only writes change the document.
        """

    @abc.abstractmethod
    def update(
        self, key: str, fn: SessionUpdate, ttl: int | None = None, *, fence: Fence | None = None
    ) -> dict[str, Any]:
        """Apply ``fn`` to the session atomically against concurrent writers, and return the session written.

        ``fn`` gets a fresh copy and returns the new session (it may be called again, on a fresh copy, if another
        writer got in first: keep it free of side effects). ``last_activity`` is stamped with the time of the write;
        ``created_at`` and ``user_id`` must not change. The TTL is chosen as for :meth:`set`.
        Raises :class:`~fmredis.errors.SessionNotFound` if there is no session, whatever ``fn`` raises, or
        :class:`~fmredis.errors.UpdateConflict` when every attempt lost to another writer; in each case nothing was
        written. ``fence``: as for :meth:`set`, checked atomically with the write (a newer token issued while ``fn``
        runs refuses it).
        """

    @abc.abstractmethod
    def create(self, user_id: str, data: dict[str, Any], ttl: int | None = None) -> str:
        """Store a new session for ``user_id`` under a fresh unguessable id, and return that id.

        The document is ``data`` plus ``user_id``, ``created_at`` and ``last_activity`` (now); an existing session is
        never overwritten. The session and its entry in the user's index (:meth:`sessions_for_user`) are written
        together or not at all.
        """

    @abc.abstractmethod
    def regenerate(self, session_id: str) -> str:
        """Move the session to a fresh id and remove the old one (session-fixation defence); return the new id.

        The data, ``created_at`` (so a lifetime cap still counts from the first login) and the user's index follow, all
        in one step or not at all; ``last_activity`` is stamped. Raises :class:`~fmredis.errors.SessionNotFound` if
        there is no session under ``session_id``.
        """

    @abc.abstractmethod
    def sessions_for_user(self, user_id: str) -> list[str]:
        """The ids of the user's live sessions made by :meth:`create` or :meth:`regenerate`, oldest first."""

    @abc.abstractmethod
    def delete_user_sessions(self, user_id: str) -> int:
        """Remove every session of the user ("log out everywhere"); returns how many were live."""

    def logouts(self, user_ids: Iterable[str]) -> dict[str, float]:
        """When each of ``user_ids`` was last logged out (``delete_user_sessions``, or ``regenerate`` of one of their
        sessions), as epoch seconds, for those logged out within the last two ``max_ttl``: the fallback asks before it
        writes back a user's session that Redis no longer holds. This default (a store that keeps no such record)
        returns ``{}``."""
        return {}

    def probe(self) -> None:
        """One round trip that raises ``StoreUnavailable`` unless the backend answers: how the fallback learns that
        Redis is back. Wrappers pass it on (the resilient store as its breaker's trial, past the cool-down)."""
        self.exists(PROBE_KEY)

    @abc.abstractmethod
    def stats(self) -> dict[str, int]:
        """The store's operation counters by name (see :data:`fmredis.counters.COUNTER_NAMES`), for metrics."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the store holds (the idle connections of a client it owns, an inner store); calling it again
        is harmless. A Redis store used after ``close`` connects again (and ``close`` releases that connection too)."""

    def __enter__(self: _Store) -> _Store:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
