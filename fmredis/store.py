"""The session store interface every store and wrapper implements, and the input checks they share."""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Any

from fmredis.errors import InvalidKeyError, InvalidTTLError

__all__ = ["MAX_KEY_LENGTH", "ISessionStore", "TTLDefaults", "check_key", "check_keys", "check_ttl"]

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
    """Mixin for stores that own their TTLs: ``default_ttl`` and ``max_ttl``, checked once, and the per-call rule."""

    _default_ttl: int
    _max_ttl: int

    def _init_ttls(self, default_ttl: object, max_ttl: object) -> None:
        if type(max_ttl) is not int or max_ttl < 1:
            raise InvalidTTLError(f"max_ttl must be an int of at least 1 (got {max_ttl!r})")
        self._default_ttl, self._max_ttl = check_ttl(default_ttl, max_ttl), max_ttl

    @property
    def default_ttl(self) -> int:
        return self._default_ttl

    @property
    def max_ttl(self) -> int:
        return self._max_ttl

    def _ttl_or_default(self, ttl: int | None) -> int:
        return self._default_ttl if ttl is None else check_ttl(ttl, self._max_ttl)


class ISessionStore(abc.ABC):
    """A keyed store of JSON-object sessions with expiry.

    Every method is safe to call from many threads at once. Keys are non-empty ``str`` of at most
    :data:`MAX_KEY_LENGTH` characters; values are ``dict`` that serialize to JSON. Invalid input raises before
    anything is written. Backend failures raise :class:`~fmredis.errors.StoreError` subclasses, never a silent miss.
    """

    @abc.abstractmethod
    def get(self, key: str) -> dict[str, Any] | None:
        """The session stored under ``key``, or ``None`` when it is missing, expired or unreadable."""

    @abc.abstractmethod
    def set(self, key: str, value: dict[str, Any], ttl: int | None = None) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (the store's default when ``None``).

        Adds ``last_activity`` (UTC ISO-8601) when the value has none; never mutates ``value``.
        """

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Remove the session; ``True`` if it existed."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """``True`` if a session is stored under ``key``."""

    @abc.abstractmethod
    def extend_ttl(self, key: str, ttl: int | None = None) -> bool:
        """Reset the session's expiry to ``ttl`` seconds (default when ``None``); ``False`` if it is missing."""

    @abc.abstractmethod
    def ttl(self, key: str) -> int | None:
        """Seconds until the session expires; ``None`` if it is missing, ``-1`` if it has no expiry."""

    @abc.abstractmethod
    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The sessions found among ``keys``, as ``{key: session}``; missing ones are left out."""

    @abc.abstractmethod
    def delete_many(self, keys: Iterable[str]) -> int:
        """Remove every session in ``keys``; returns how many existed."""
