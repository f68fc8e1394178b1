"""The session store interface every store and wrapper implements, and the input checks they share."""

from __future__ import annotations

import abc
import functools
import time
from collections.abc import Callable, Iterable
from typing import Any

from fmredis.errors import InvalidKeyError, InvalidTTLError
from fmredis.serialization import parse_utc
from fmredis.ttl_policy import SessionTTLManager

__all__ = [
    "MAX_KEY_LENGTH",
    "ISessionStore",
    "SessionUpdate",
    "TTLDefaults",
    "check_key",
    "check_keys",
    "check_ttl",
    "check_user_id",
]

#: ``update``'s function: given the session (a fresh copy), returns the new session.
SessionUpdate = Callable[[dict[str, Any]], dict[str, Any]]

#: Longest session key accepted, in characters (the store's prefix is not counted).
MAX_KEY_LENGTH = 512


def check_key(key: object) -> str:
    """Return ``key`` if it is a non-empty ``str`` of at most :data:`MAX_KEY_LENGTH` characters, else raise."""
    if isinstance(key, str) and 0 < len(key) <= MAX_KEY_LENGTH and (key.isascii() or _encodable(key)):
        return key
    if not isinstance(key, str):
        raise InvalidKeyError(f"session key must be a str, not {type(key).__name__}")
    if not key:
        raise InvalidKeyError("session key must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKeyError(f"session key is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}")
    raise InvalidKeyError("session key is not valid UTF-8 text (it contains a lone surrogate)")


def check_user_id(user_id: object) -> str:
    """Return ``user_id`` if it is a valid key (the same rules as session keys), else raise ``InvalidKeyError``."""
    try:
        return check_key(user_id)
    except InvalidKeyError as exc:
        raise InvalidKeyError(str(exc).replace("session key", "user_id", 1)) from None


def _encodable(key: str) -> bool:
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_keys(keys: Iterable[object]) -> list[str]:
    """Check every key of a bulk call before anything is sent; a bare ``str`` is refused (it would iterate chars)."""
    if isinstance(keys, (str, bytes)):
        raise InvalidKeyError("expected an iterable of session keys, not a single key")
    return [check_key(key) for key in keys]


def check_ttl(ttl: object, max_ttl: int) -> int:
    """Return ``ttl`` if it is an ``int`` (not a bool) in ``1..max_ttl``, else raise :class:`InvalidTTLError`."""
    if type(ttl) is int and 0 < ttl <= max_ttl:
        return ttl
    if not isinstance(ttl, int) or isinstance(ttl, bool):
        raise InvalidTTLError(f"ttl must be an int number of seconds, not {type(ttl).__name__}")
    if ttl <= 0:
        raise InvalidTTLError(f"ttl must be at least 1 second (got {ttl}); sessions never live forever")
    raise InvalidTTLError(f"ttl {ttl} exceeds max_ttl {max_ttl}")


class TTLDefaults:
    """Mixin for stores that own their TTLs: the defaults, the adaptive policy and the lifetime cap, checked once.

    The TTL of a write given no ``ttl``: ``ttl_policy.calculate_ttl(session)`` when the store has a policy, else
    ``default_ttl``. Every TTL is then capped so a session whose document has ``created_at`` never outlives
    ``created_at + max_lifetime`` (sliding expiry included).
    """

    _default_ttl: int
    _max_ttl: int
    _policy: SessionTTLManager | None
    _max_lifetime: int

    def _init_ttls(
        self, default_ttl: object, max_ttl: object, ttl_policy: object = None, max_lifetime: object = 86_400
    ) -> None:
        if type(max_ttl) is not int or max_ttl < 1:
            raise InvalidTTLError(f"max_ttl must be an int of at least 1 (got {max_ttl!r})")
        if type(max_lifetime) is not int or max_lifetime < 1:
            raise InvalidTTLError(f"max_lifetime must be an int number of seconds of at least 1 (got {max_lifetime!r})")
        if ttl_policy is not None:
            if not isinstance(ttl_policy, SessionTTLManager):
                raise TypeError(f"ttl_policy must be a SessionTTLManager or None, not {type(ttl_policy).__name__}")
            if ttl_policy.max_ttl > max_ttl:
                raise InvalidTTLError(f"ttl_policy.max_ttl {ttl_policy.max_ttl} exceeds the store's max_ttl {max_ttl}")
        self._default_ttl, self._max_ttl = check_ttl(default_ttl, max_ttl), max_ttl
        self._policy, self._max_lifetime = ttl_policy, max_lifetime

    @property
    def default_ttl(self) -> int:
        return self._default_ttl

    @property
    def max_ttl(self) -> int:
        return self._max_ttl

    @property
    def ttl_policy(self) -> SessionTTLManager | None:
        return self._policy

    @property
    def max_lifetime(self) -> int:
        return self._max_lifetime

    def _ttl_or_default(self, ttl: int | None) -> int:
        return self._default_ttl if ttl is None else check_ttl(ttl, self._max_ttl)

    def _write_ttl(self, ttl: int | None, session: dict[str, Any]) -> int:
        """The TTL to write ``session`` with; ``0`` if it is past its lifetime (the caller must not write it)."""
        if ttl is not None:
            seconds = check_ttl(ttl, self._max_ttl)
        elif self._policy is not None:
            # No last_activity: the write stamps it now, so the session is as active as can be.
            seconds = self._policy.calculate_ttl(session) if "last_activity" in session else self._policy.ttl_for_age(0)
        else:
            seconds = self._default_ttl
        return self._capped(seconds, session)

    def _touch_ttl(self, ttl: int | None) -> int:
        """The TTL a touch (``get(refresh=True)``) gives: explicit, else the policy's for activity now, else default."""
        if ttl is not None:
            return check_ttl(ttl, self._max_ttl)
        return self._default_ttl if self._policy is None else self._policy.ttl_for_age(0)

    def _capped(self, seconds: int, session: dict[str, Any]) -> int:
        """``seconds``, cut to what is left of the session's lifetime (``0`` when none is left)."""
        left = self._lifetime_left(session)
        return seconds if left is None or left >= seconds else max(0, int(left))

    def _lifetime_left(self, session: dict[str, Any]) -> float | None:
        """Seconds until ``created_at + max_lifetime``; ``None`` when the session has no readable ``created_at``."""
        created = session.get("created_at")
        if created is None:
            return None
        epoch = _epoch(created) if type(created) is str else _epoch.__wrapped__(created)
        return None if epoch is None else epoch + self._max_lifetime - time.time()


# Every write of a session with created_at needs its epoch: cached, since the same few strings come back on every
# write of a session and parsing one costs about as much as encoding the whole seed session.
@functools.lru_cache(maxsize=4096)
def _epoch(created: object) -> float | None:
    parsed = parse_utc(created)
    return None if parsed is None else parsed.timestamp()


class ISessionStore(abc.ABC):
    """A keyed store of JSON-object sessions with expiry.

    Every method is safe to call from many threads at once. Keys are non-empty ``str`` of at most
    :data:`MAX_KEY_LENGTH` characters; values are ``dict`` that serialize to JSON. Invalid input raises before
    anything is written. Backend failures raise :class:`~fmredis.errors.StoreError` subclasses, never a silent miss.

    Lifetime: a session whose document has ``created_at`` (ISO-8601; :meth:`create` stamps it) is never kept past
    ``created_at + max_lifetime``: every TTL a write or a refresh gives it is cut to that, and a write after it
    removes the session and raises :class:`~fmredis.errors.SessionNotFound` (a refresh after it reads as missing).
    """

    @abc.abstractmethod
    def get(self, key: str, *, refresh: bool = False) -> dict[str, Any] | None:
        """The session stored under ``key``, or ``None`` when it is missing, expired or unreadable.

        ``refresh=True`` also restarts its expiry, in the same round trip, as :meth:`touch` does.
        """

    @abc.abstractmethod
    def set(self, key: str, value: dict[str, Any], ttl: int | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (the store's default, or its TTL policy's, when ``None``).

        Adds ``last_activity`` (UTC ISO-8601) when the value has none; never mutates ``value``. Raises
        :class:`~fmredis.errors.SessionNotFound`, and removes the session, if ``value`` is past its lifetime.
        """

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Remove the session; ``True`` if it existed."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """``True`` if a session is stored under ``key``."""

    @abc.abstractmethod
    def extend_ttl(self, key: str, ttl: int | None = None) -> bool:
        """Reset the session's expiry to ``ttl`` seconds (default when ``None``), cut to its lifetime like
        :meth:`touch`; ``False`` if it is missing or unreadable."""

    @abc.abstractmethod
    def ttl(self, key: str) -> int | None:
        """Seconds until the session expires; ``None`` if it is missing, ``-1`` if it has no expiry."""

    @abc.abstractmethod
    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The sessions found among ``keys``, as ``{key: session}``; missing ones are left out."""

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
    def update(self, key: str, fn: SessionUpdate, ttl: int | None = None) -> dict[str, Any]:
        """Apply ``fn`` to the session atomically against concurrent writers, and return the session written.

        ``fn`` gets a fresh copy and returns the new session (it may be called again, on a fresh copy, if another
        writer got in first: keep it free of side effects). ``last_activity`` is stamped with the time of the write;
        ``created_at`` and ``user_id`` must not change. The TTL is chosen as for :meth:`set`.
        Raises :class:`~fmredis.errors.SessionNotFound` if there is no session, whatever ``fn`` raises, or
        :class:`~fmredis.errors.UpdateConflict` when every attempt lost to another writer; in each case nothing was
        written.
        """

    @abc.abstractmethod
    def create(self, user_id: str, data: dict[str, Any], ttl: int | None = None) -> str:
        """Store a new session for ``user_id`` under a fresh unguessable id, and return that id.

        The document is ``data`` plus ``user_id``, ``created_at`` and ``last_activity`` (now); an existing session is
        never overwritten. The session is added to the user's index (:meth:`sessions_for_user`).
        """

    @abc.abstractmethod
    def regenerate(self, session_id: str) -> str:
        """Move the session to a fresh id and remove the old one (session-fixation defence); return the new id.

        The data, ``created_at`` (so the lifetime cap still counts from the first login) and the user's index follow.
        Raises :class:`~fmredis.errors.SessionNotFound` if there is no session under ``session_id``.
        """

    @abc.abstractmethod
    def sessions_for_user(self, user_id: str) -> list[str]:
        """The ids of the user's live sessions made by :meth:`create` or :meth:`regenerate`, oldest first."""

    @abc.abstractmethod
    def delete_user_sessions(self, user_id: str) -> int:
        """Remove every session of the user ("log out everywhere"); returns how many were live."""

    @abc.abstractmethod
    def stats(self) -> dict[str, int]:
        """The store's operation counters by name (see :data:`fmredis.counters.COUNTER_NAMES`), for metrics."""
