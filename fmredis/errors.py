"""The one exception hierarchy fmredis raises.

Every error derives from :class:`FmRedisError`; where a builtin says the same thing the error inherits it too, so
``except ValueError`` keeps working for callers who do not know fmredis. Messages name the offending key or setting and
never contain a secret, a session id or a session payload.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "FencedOut",
    "FmRedisError",
    "InvalidKeyError",
    "InvalidTTLError",
    "LockLost",
    "LockTimeout",
    "SerializationError",
    "SessionExpired",
    "SessionNotFound",
    "StoreError",
    "StoreUnavailable",
    "UpdateConflict",
    "ValueTooLarge",
]


class FmRedisError(Exception):
    """Base class of every error raised by fmredis."""


class ConfigurationError(FmRedisError, ValueError):
    """A setting is missing, malformed or out of range.

    ``key`` is the setting's name (``"port"``) and ``source`` where the bad value came from
    (``"environment variable REDIS_PORT"``); either may be ``None`` when the problem is not tied to one setting.
    """

    def __init__(self, message: str, *, key: str | None = None, source: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.source = source


class InvalidKeyError(FmRedisError, ValueError):
    """A session key is not a non-empty ``str`` of at most the documented length."""


class InvalidTTLError(FmRedisError, ValueError):
    """A TTL is not a positive ``int`` no greater than the store's ``max_ttl``."""


class SerializationError(FmRedisError, TypeError):
    """A session value is not a ``dict`` that serializes to JSON; raised before anything is written."""


class ValueTooLarge(FmRedisError, ValueError):
    """A ``ContextCache`` value (or history message) is larger than the cache's configured limit; nothing was
    written."""


class StoreError(FmRedisError):
    """The store's backend failed to carry out an operation.

    The message names the command and the server's reason (``WRONGTYPE``, ``OOM``, ``NOPERM`` ...). The ``__cause__``
    is redis-py's exception, of the same class, with its message scrubbed of keys and payloads.
    """


class StoreUnavailable(StoreError, ConnectionError):
    """The backend could not be reached in time: connection refused or lost, socket timeout, pool exhausted."""


class JournalError(FmRedisError):
    """The fallback's outage journal cannot be used: in use by another process, opened before a fork, or its file
    cannot be created. Raised when the store is built (or on first use after a fork), never for an outage write."""


class SessionNotFound(FmRedisError, KeyError):
    """An operation that needs an existing session (``update``, ``regenerate``) found none under the key: it is
    missing, expired, or unreadable. Nothing was written."""

    def __str__(self) -> str:
        # KeyError's own str() is the repr of its argument (quotes included): this is a sentence, not a key.
        return str(self.args[0]) if self.args else ""


class SessionExpired(SessionNotFound):
    """A write found the session past its absolute lifetime (``created_at + max_lifetime``, when ``max_lifetime`` is
    set): the session was removed instead of written."""


class UpdateConflict(StoreError):
    """``update`` lost the race to concurrent writers of the same session on every attempt it was allowed; the
    session holds the other writers' data and none of this update."""


class LockTimeout(FmRedisError, TimeoutError):
    """``RedisLock.acquire(timeout)`` did not get the lock in time; nothing is held and the waiter left the queue."""


class LockLost(FmRedisError):
    """A held lock may no longer be held: a renewal found it taken or gone, or its lease may have run out (Redis
    unreachable, the process paused). Raised on leaving the ``with`` block and by ``extend``; the block's own
    exception, if any, is its ``__cause__``."""


class FencedOut(FmRedisError):
    """A fenced write was refused: a newer token has been issued for the lock since the one it carried, so another
    holder may have written. Nothing was written."""
