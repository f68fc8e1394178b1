"""The framework-neutral core of the Django and Flask integrations: web sessions on any :class:`ISessionStore` that
never lose a concurrent change.

A web request loads the whole session, changes a key or two, and saves. Saving the whole session back (what Django's
cache engine and Flask-Session do) lets the last of two overlapping requests of one user undo the other's change.
Here a save sends only what the request changed since it loaded (keys set, keys deleted), merged into the stored
session by the store's atomic :meth:`~fmredis.ISessionStore.update`: two requests that change different keys both
keep their change, and for one key the later save wins. A request that changed nothing writes nothing.

The framework's keys live under ``"data"`` in the stored document, apart from the store's own fields
(``created_at``, ``last_activity``, ``user_id``), so no framework key can collide with them::

    {"data": {"cart": [3, 7], "_auth_user_id": "42"}, "created_at": "...", "last_activity": "..."}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from fmredis.checks import check_key, check_user_id
from fmredis.client import create_redis_client
from fmredis.errors import InvalidKeyError, SerializationError, SessionNotFound, StoreUnavailable
from fmredis.lifecycle import session_ref
from fmredis.redis_store import RedisSessionStore
from fmredis.serialization import encode_session, utc_now
from fmredis.store import ISessionStore

__all__ = ["DATA", "MAX_TTL", "AnotherUsersSession", "Loaded", "WebSessions", "changes", "snapshot"]

#: The document field that holds the framework's session data.
DATA = "data"

#: The longest TTL a framework's default store accepts: a year, so that an expiry of months is stored as asked.
MAX_TTL = 366 * 86_400


class AnotherUsersSession(ValueError):
    """A save marked the session as one user's, but it is stored as another user's: start a new session instead."""


@attrs.frozen
class Loaded:
    """A session as a request loaded it: ``data`` (the caller's own dict) and ``snapshot``, each key's encoded value
    at load, which :meth:`WebSessions.save` compares against to find what the request changed."""

    data: dict[str, Any]
    snapshot: Mapping[str, bytes]


def _encoded(key: object, value: Any) -> bytes:
    """``value`` as JSON; the error names the session key (never the value: it is session data)."""
    if type(key) is not str:
        raise SerializationError(f"session keys must be str, not {type(key).__name__}; nothing was written")
    try:
        return encode_session({key: value})
    except SerializationError as exc:
        raise SerializationError(f"session key {key!r}: {exc}; nothing was written") from None


def snapshot(data: Mapping[str, Any]) -> dict[str, bytes]:
    """Each key's value encoded: what :func:`changes` compares a later state against."""
    return {key: _encoded(key, value) for key, value in data.items()}


def changes(before: Mapping[str, bytes], data: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """What ``data`` changed since ``before`` (a :func:`snapshot`): the keys set to a new value (compared as JSON, so a
    list changed in place counts) and the keys deleted. Raises :class:`SerializationError` naming the first key whose
    value is not JSON."""
    changed, deleted, _after = _diff(before, data)
    return changed, deleted


def _diff(before: Mapping[str, bytes], data: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], dict[str, bytes]]:
    """:func:`changes`, plus ``data``'s own snapshot from the same encoding pass (each value is encoded once)."""
    after = snapshot(data)
    changed = {key: data[key] for key, encoded in after.items() if before.get(key) != encoded}
    deleted = [key for key in before if key not in after]
    return changed, deleted, after


def _merged(changed: dict[str, Any], deleted: list[str], user_id: str | None) -> Callable[[dict[str, Any]], Any]:
    """The update function that applies a request's changes to the stored document (run again on a conflict)."""

    def merge(document: dict[str, Any]) -> dict[str, Any]:
        current = document.get(DATA)
        data = dict(current) if type(current) is dict else {}
        data.update(changed)
        for key in deleted:
            data.pop(key, None)
        document[DATA] = data
        if user_id is not None and document.setdefault("user_id", user_id) != user_id:
            raise AnotherUsersSession("the session belongs to another user; start a new session for this login")
        return document

    return merge


class WebSessions:
    """Web sessions stored in ``store`` (any :class:`~fmredis.ISessionStore`: Redis, resilient, fallback).

    Thread-safe as the store is. TTLs are the framework's, in seconds, cut to the store's ``max_ttl``; a TTL of 0 or
    less removes the session (Django's expiry in the past). Store errors (``StoreUnavailable`` first) propagate: a
    session that cannot be read is never presented as empty, which would log the user out. That includes a
    :class:`~fmredis.FallbackSessionStore` in an outage asked for a session it does not hold (one not written since
    the outage began): ``StoreUnavailable``, while new sessions and those written during the outage keep working.
    """

    def __init__(self, store: ISessionStore) -> None:
        if not isinstance(store, ISessionStore):
            raise TypeError(f"store must be an ISessionStore, not {type(store).__name__}")
        self.store = store

    @classmethod
    def on_redis(cls, client_options: Mapping[str, Any], prefix: str, ttl: int) -> WebSessions:
        """Sessions in a :class:`~fmredis.RedisSessionStore` of their own (a framework's default): its client made by
        :func:`~fmredis.create_redis_client` from ``client_options`` and the factory's hierarchy, its default TTL the
        framework's session lifetime ``ttl``, its ``max_ttl`` at least :data:`MAX_TTL`."""
        client = create_redis_client(**client_options)
        store = RedisSessionStore(client, prefix=prefix, default_ttl=ttl, max_ttl=max(ttl, MAX_TTL), owns_client=True)
        return cls(store)

    def _capped(self, ttl: int) -> int:
        return min(int(ttl), self.store.ttl_rules.max_ttl)

    def load(self, key: object, ttl_for: Callable[[dict[str, Any]], int]) -> Loaded | None:
        """The session under ``key`` with its expiry restarted (one GETEX: sliding expiry), or ``None`` when there is
        none, ``key`` is not a valid key (a forged cookie), or the document is not a web session.

        ``ttl_for(data)`` gives the session's TTL; only a session whose TTL differs from the store's refresh TTL
        (a custom expiry) costs a second round trip to set it, and one whose TTL has run out is removed.
        """
        if not _valid(key):
            return None
        assert isinstance(key, str)
        document = self.store.get(key, refresh=True)
        if document is None:
            if getattr(self.store, "degraded", False):
                # A FallbackSessionStore in an outage holds only the sessions written since it began: this one may
                # well be in Redis, and an empty session would log the user out.
                raise StoreUnavailable(
                    "the session store is in an outage and this session was not written since it began; "
                    "it may exist in Redis: refused rather than starting an empty session"
                )
            return None
        data = document.get(DATA)
        if type(data) is not dict:
            return None  # a session of the store's own API (create), not one a framework wrote: never handed out
        ttl = ttl_for(data)
        if ttl <= 0:
            self.store.delete(key)
            return None
        seconds = self._capped(ttl)
        if seconds != self.store.ttl_rules.for_touch(None) and not self.store.touch(key, seconds):
            return None  # removed since the read
        return Loaded(data, snapshot(data))

    def create(self, key: str, data: Mapping[str, Any], ttl: int, *, user_id: str | None = None) -> bool:
        """Store a new session under ``key`` (a fresh random id the framework chose); ``False`` if ``key`` is taken.
        With ``user_id``, the session is marked as that user's (see :meth:`regenerate`).

        Every value is checked before anything is written. Not atomic against a second creator of the same key: ids of
        160 random bits or more are never drawn twice.
        """
        check_key(key)
        snapshot(data)  # bad input raises naming the key, before anything is written
        document: dict[str, Any] = {DATA: dict(data), "created_at": utc_now()}
        if user_id is not None:
            document["user_id"] = check_user_id(user_id)
        if ttl <= 0:
            return True  # expired at birth: nothing to keep
        if self.store.exists(key):
            return False
        self.store.set(key, document, self._capped(ttl))
        return True

    def save(
        self,
        key: str,
        before: Mapping[str, bytes],
        data: Mapping[str, Any],
        ttl: int,
        *,
        user_id: str | None = None,
        touch: bool = True,
    ) -> dict[str, bytes]:
        """Write what ``data`` changed since ``before`` into the stored session (merged atomically) with ``ttl``, and
        return the new snapshot. With ``user_id``, the session is marked as that user's (see :meth:`regenerate`).

        Nothing changed: no write; one ``touch`` applies ``ttl`` and checks that the session still exists, unless
        ``touch=False`` (the load's refresh already restarted the expiry: no round trip at all). Raises
        :class:`~fmredis.SessionNotFound` when the session is gone (deleted by a concurrent logout, or expired): it is
        never recreated.
        """
        check_key(key)
        changed, deleted, after = _diff(before, data)
        if ttl <= 0:
            self.store.delete(key)
            return after
        seconds = self._capped(ttl)
        if changed or deleted or user_id is not None:
            checked = None if user_id is None else check_user_id(user_id)
            self.store.update(key, _merged(changed, deleted, checked), seconds)
        elif touch and not self.store.touch(key, seconds):
            raise SessionNotFound(f"No session {session_ref(key)} to save: nothing was written.")
        return after

    def delete(self, key: object) -> None:
        """Remove the session under ``key`` (nothing to do for an invalid key)."""
        if _valid(key):
            assert isinstance(key, str)
            self.store.delete(key)

    def exists(self, key: object) -> bool:
        return _valid(key) and self.store.exists(key)  # type: ignore[arg-type]

    def regenerate(self, key: str) -> str:
        """Move the session to a fresh id (session-fixation defence at login) and return it; the old id is gone.

        A session marked as a user's (``save(..., user_id=...)``) is listed in that user's index under its new id, so
        ``store.delete_user_sessions(user_id)`` logs it out. Raises :class:`~fmredis.SessionNotFound` when there is
        no session under ``key``.
        """
        return self.store.regenerate(check_key(key))


def _valid(key: object) -> bool:
    try:
        check_key(key)
    except InvalidKeyError:
        return False
    return True
