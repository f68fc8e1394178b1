"""StoreBackend: the primitives a session store backend supplies to the shared core (:mod:`fmredis.core`).

Every primitive works on bytes and keys the core has already checked, and raises fmredis errors only (a backend
translates its own failures). Data of another kind under a key (a Redis key of another type) raises the internal
``CorruptSession``, which the core turns into a miss and one warning.
"""

from __future__ import annotations

import abc
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from fmredis.errors import ConfigurationError
from fmredis.lifecycle import new_session_id

if TYPE_CHECKING:
    from fmredis.store import Fence

__all__ = ["StoreBackend", "Transaction"]


class Transaction(Protocol):
    """One optimistic attempt on one session, opened by :meth:`SessionStoreBase._transaction`.

    ``read`` returns the stored bytes (``None`` if missing; raises ``CorruptSession`` for data of another type). The
    commit methods write only if nobody wrote the session since ``read`` and return ``False`` if someone did (the
    attempt lost the race, nothing was written). A commit whose outcome is unknown (the connection was lost around it)
    raises ``StoreUnavailable``: it is never retried, since a retry could apply the change twice.
    """

    def read(self) -> bytes | None: ...

    def write(self, payload: bytes, seconds: int) -> bool:
        """Replace the session (``seconds`` 0: remove it, it is past its lifetime)."""

    def move(self, new_id: str, payload: bytes, seconds: int, user_id: str | None, created: float) -> bool:
        """Store ``payload`` under ``new_id`` (unless ``seconds`` is 0) and remove the session read, in one step; the
        user's index follows. ``False`` also when ``new_id`` is taken (nothing written either way)."""


class StoreBackend(abc.ABC):
    """What :class:`~fmredis.core.SessionStoreBase` asks of a backend."""

    @abc.abstractmethod
    def _read(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or ``None``; ``CorruptSession`` for data of another type."""

    def _peek(self, key: str) -> bytes | None:
        """Like :meth:`_read`, for ``exists``: a backend with a recency order leaves it alone here."""
        return self._read(key)

    @abc.abstractmethod
    def _write(self, key: str, payload: bytes, seconds: int) -> None:
        """Store ``payload`` under ``key`` for ``seconds`` (>= 1)."""

    def _write_many(self, writes: list[tuple[str, bytes, int]]) -> None:
        """Store each ``(key, payload, seconds)``; a backend with pipelining sends them in one round trip."""
        for key, payload, seconds in writes:
            self._write(key, payload, seconds)

    @abc.abstractmethod
    def _list_many(self, entries: list[tuple[str, str, float]]) -> None:
        """List each ``(user_id, session_id, created)`` in its user's index (the sessions are written already)."""

    @abc.abstractmethod
    def _note_logout(self, user_id: str, at: float, keep: int, what: str) -> None:
        """Record that ``user_id`` was logged out at ``at`` (epoch seconds), kept ``keep`` seconds at least, for the
        call ``what`` (named in errors)."""

    @abc.abstractmethod
    def _logouts(self, user_ids: list[str]) -> list[float | None]:
        """The recorded logout time of each of ``user_ids`` (``None``: none recorded)."""

    @abc.abstractmethod
    def _remove(self, key: str) -> bool:
        """Remove ``key``; whether it existed."""

    @abc.abstractmethod
    def _read_with_ttl(self, key: str) -> tuple[bytes | None, int]:
        """The bytes under ``key`` and its remaining seconds (``-1``: no expiry), read together."""

    @abc.abstractmethod
    def _read_and_expire(self, key: str, seconds: int) -> bytes | None:
        """The bytes under ``key``, its expiry restarted at ``seconds`` in the same step."""

    @abc.abstractmethod
    def _expire(self, key: str, seconds: int) -> None:
        """Set the expiry of ``key`` to ``seconds`` (>= 1) if it exists."""

    @abc.abstractmethod
    def _read_many(self, keys: list[str]) -> list[bytes | None]:
        """The bytes under each key, in order (``None`` for missing ones and data of another type)."""

    @abc.abstractmethod
    def _remove_many(self, keys: list[str]) -> int:
        """Remove the keys; how many existed."""

    @abc.abstractmethod
    def _transaction(self, what: str, key: str, fence: Fence | None = None) -> AbstractContextManager[Transaction]:
        """An optimistic attempt on ``key`` (``what`` names the public call, for error messages); with ``fence``
        (checked by :meth:`_check_fence`), its commit also raises ``FencedOut`` once the fence has been passed."""

    def _check_fence(self, key: str, fence: Fence) -> None:
        """Refuse a ``fence`` this backend cannot check for ``key``, before anything is read or written."""
        raise ConfigurationError(
            f"{type(self).__name__} cannot check a fencing token: fenced writes need a RedisSessionStore on the "
            "lock's Redis",
            key="fence",
        )

    def _fenced(self, key: str, fence: Fence, payload: bytes | None, seconds: int) -> bool:
        """Store ``payload`` for ``seconds`` (``None``: remove the key) unless ``fence`` has been passed
        (``FencedOut``), in one step; whether the key existed, for a removal."""
        raise NotImplementedError  # only reached after _check_fence accepted the fence

    def _new_id(self, user_id: str) -> str:
        """A fresh id for a session of ``user_id`` (a cluster tags it into the user's slot)."""
        return new_session_id()

    def _successor_id(self, session_id: str) -> str:
        """A fresh id to move ``session_id`` to (a cluster tags it into the same slot)."""
        return new_session_id()

    @abc.abstractmethod
    def _insert(self, session_id: str, payload: bytes, seconds: int, user_id: str, created: float) -> int | None:
        """Store a new session and its index entry together, or nothing; the user's number of index entries after
        it, or ``None`` if ``session_id`` is taken."""

    @abc.abstractmethod
    def _trim_user(self, user_id: str, keep: int, spare: str) -> list[str]:
        """Remove the user's oldest live sessions so that ``keep`` are left, never ``spare`` (the session just made,
        whatever the clocks say); the ids removed."""

    @abc.abstractmethod
    def _user_sessions(self, user_id: str) -> list[str]:
        """Ids of the user's live indexed sessions, oldest first (entries of gone sessions pruned)."""

    @abc.abstractmethod
    def _remove_user(self, user_id: str) -> int:
        """Remove every indexed session of the user and the index; how many sessions were live."""

    def _close(self) -> None:
        """Release what the backend holds (called by every :meth:`close`: it must be harmless to repeat); nothing by
        default."""
        return None

    #: Whether the backend's user indexes expire on their own, so that :meth:`_keep_index` must hear of every new TTL
    #: an indexed session gets (a Redis store without a lifetime cap).
    _indexes_expire = False

    def _keep_index(self, user_id: str, seconds: int) -> None:
        """A session of ``user_id`` was just given ``seconds`` more: keep the user's index alive at least that long
        (only called when :attr:`_indexes_expire`)."""
        return None
