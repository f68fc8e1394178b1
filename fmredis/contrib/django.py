"""A Django session engine on fmredis: ``SESSION_ENGINE = "fmredis.contrib.django"``.

JSON only (no pickle). A save writes only the keys the request changed, merged atomically into the stored session
(:mod:`fmredis.contrib.web`), so overlapping requests of one user never undo each other's changes; a save after a
concurrent logout raises Django's ``UpdateError`` (a 400 through ``SessionMiddleware``), never resurrecting the
session. A read restarts the session's expiry (sliding, one GETEX); a session nobody changed is not written.

Settings, all optional:

- ``FMREDIS_SESSION_STORE``: a zero-argument callable, or its dotted path, returning the
  :class:`~fmredis.ISessionStore` to use (for example one that builds a ``FallbackSessionStore`` to keep sessions
  through outages). Default: a :class:`~fmredis.RedisSessionStore` built as below.
- ``FMREDIS_REDIS``: keyword arguments for :func:`fmredis.create_redis_client` (``{"url": ...}`` and so on); the
  factory's hierarchy (``REDIS_URL``, ``REDIS_*`` variables, defaults) fills in the rest.
- ``FMREDIS_SESSION_KEY_PREFIX``: the Redis key prefix, default ``"django-session:"``.

Django's own settings apply as usual: ``SESSION_COOKIE_AGE`` is the default store's TTL, ``set_expiry`` and
``SESSION_EXPIRE_AT_BROWSER_CLOSE`` work as documented by Django.

Without a fallback store, a Redis outage makes session access raise :class:`~fmredis.StoreUnavailable` (a 500; use
:class:`SessionMiddleware` below for a 503): never an empty session, which would log everyone out.
"""

from __future__ import annotations

import threading
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.signals import user_logged_in
from django.contrib.sessions.backends.base import VALID_KEY_CHARS, CreateError, SessionBase, UpdateError
from django.contrib.sessions.middleware import SessionMiddleware as DjangoSessionMiddleware
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.http import HttpResponse
from django.utils.crypto import get_random_string
from django.utils.module_loading import import_string

from fmredis.contrib.web import AnotherUsersSession, WebSessions, snapshot
from fmredis.errors import SessionNotFound, StoreUnavailable
from fmredis.store import ISessionStore

__all__ = ["SessionMiddleware", "SessionStore", "get_store", "reset_store"]

_lock = threading.Lock()
_sessions: WebSessions | None = None


def _build() -> WebSessions:
    factory = getattr(settings, "FMREDIS_SESSION_STORE", None)
    if factory is not None:
        made = (import_string(factory) if isinstance(factory, str) else factory)()
        if not isinstance(made, ISessionStore):
            raise ImproperlyConfigured(f"FMREDIS_SESSION_STORE returned {type(made).__name__}, not an ISessionStore")
        return WebSessions(made)
    options = getattr(settings, "FMREDIS_REDIS", None) or {}
    if not isinstance(options, dict):
        raise ImproperlyConfigured("FMREDIS_REDIS must be a dict of create_redis_client() keyword arguments")
    prefix = getattr(settings, "FMREDIS_SESSION_KEY_PREFIX", "django-session:")
    age = settings.SESSION_COOKIE_AGE
    if type(age) is not int or age < 1:
        raise ImproperlyConfigured(f"SESSION_COOKIE_AGE must be an int number of seconds >= 1 (got {age!r})")
    return WebSessions.on_redis(options, prefix, age)


def _web() -> WebSessions:
    global _sessions
    sessions = _sessions
    if sessions is None:
        with _lock:
            if _sessions is None:
                _sessions = _build()
            sessions = _sessions
    return sessions


def get_store() -> ISessionStore:
    """The process's session store (built on first use, from the settings above)."""
    return _web().store


def reset_store() -> None:
    """Close and forget the process's store; the next session access builds it again from the settings."""
    global _sessions
    with _lock:
        sessions, _sessions = _sessions, None
    if sessions is not None:
        sessions.store.close()


def _on_setting_changed(*, setting: str, **_kwargs: Any) -> None:
    if setting.startswith("FMREDIS_") or setting == "SESSION_COOKIE_AGE":
        reset_store()


setting_changed.connect(_on_setting_changed, dispatch_uid="fmredis.contrib.django.reset_store")


def _on_login(*, request: Any, user: Any, **_kwargs: Any) -> None:
    """List the session under the user's id at its next save, so ``delete_user_sessions`` logs this login out."""
    session = getattr(request, "session", None)
    if isinstance(session, SessionStore) and getattr(user, "pk", None) is not None:
        session._login_user_id = str(user.pk)
        session.modified = True


user_logged_in.connect(_on_login, dispatch_uid="fmredis.contrib.django.login")


class SessionStore(SessionBase):
    """Django's ``SessionBase`` on an fmredis store. An instance serves one request (as Django uses it); the store
    behind it is shared by every thread of the process."""

    _session_key: str | None  # Django's property: set to a key it validates, or None

    def __init__(self, session_key: str | None = None) -> None:
        super().__init__(session_key)
        self._snapshot: dict[str, bytes] = {}
        self._login_user_id: str | None = None

    def _get_new_session_key(self) -> str:
        # Django's loop asks exists() for every candidate; create() checks the one it writes, so that round trip goes.
        return str(get_random_string(32, VALID_KEY_CHARS))

    async def _aget_new_session_key(self) -> str:
        return self._get_new_session_key()

    def load(self) -> dict[str, Any]:
        loaded = _web().load(self.session_key, lambda data: self.get_expiry_age(expiry=data.get("_session_expiry")))
        if loaded is None:
            self._session_key = None  # an unknown key is never reused (session fixation); create() draws a new one
            self._snapshot = {}
            return {}
        self._snapshot = dict(loaded.snapshot)
        return loaded.data

    def exists(self, session_key: str | None) -> bool:
        return _web().exists(session_key)

    def create(self) -> None:
        for _attempt in range(100):
            self._session_key = self._get_new_session_key()
            try:
                self.save(must_create=True)
            except CreateError:
                continue
            self.modified = True
            return
        raise RuntimeError("Unable to create a new session key: 100 random keys were all taken")

    def save(self, must_create: bool = False) -> None:
        if self.session_key is None:
            return self.create()
        data = self._get_session(no_load=must_create)
        key = self.session_key
        if key is None:  # the load found the session gone: it is not recreated
            raise UpdateError
        ttl = self.get_expiry_age()
        web, user_id = _web(), self._login_user_id
        if must_create:
            if not web.create(key, data, ttl, user_id=user_id):
                raise CreateError
            self._snapshot = snapshot(data)
        else:
            try:
                self._snapshot = web.save(key, self._snapshot, data, ttl, user_id=user_id)
            except SessionNotFound:
                raise UpdateError from None
            except AnotherUsersSession:  # another user logs in on a session an app emptied by hand: a new session
                web.delete(key)
                self._session_key = None
                return self.create()
        if user_id is not None and ttl > 0:
            self._login_user_id = None
            self._session_key = web.regenerate(key)  # listed under the user with its new id

    def delete(self, session_key: str | None = None) -> None:
        if session_key is None:
            if self.session_key is None:
                return
            session_key = self.session_key
        _web().delete(session_key)

    def cycle_key(self) -> None:
        """A new key for the same data (at login): fmredis ``regenerate`` moves the stored session in one step; a
        session not stored yet is created under a new key, as Django does."""
        data = self._session
        key = self.session_key
        if key is not None:
            try:
                self._session_key = _web().regenerate(key)
            except SessionNotFound:
                pass
            else:
                self.modified = True
                return
        self.create()
        self._session_cache = data

    @classmethod
    def clear_expired(cls) -> None:
        """Nothing to do: Redis expires sessions itself."""

    # The async twins run the sync methods in a worker thread (the store is synchronous and thread-safe).

    async def aexists(self, session_key: str | None) -> bool:
        return await sync_to_async(self.exists)(session_key)

    async def acreate(self) -> None:
        await sync_to_async(self.create)()

    async def asave(self, must_create: bool = False) -> None:
        await sync_to_async(self.save)(must_create)

    async def adelete(self, session_key: str | None = None) -> None:
        await sync_to_async(self.delete)(session_key)

    async def aload(self) -> dict[str, Any]:
        return await sync_to_async(self.load)()

    async def acycle_key(self) -> None:
        await sync_to_async(self.cycle_key)()

    @classmethod
    async def aclear_expired(cls) -> None:
        """Nothing to do: Redis expires sessions itself."""


def _unavailable() -> HttpResponse:
    response = HttpResponse(
        "Service unavailable: the session store cannot be reached.\n", status=503, content_type="text/plain"
    )
    response["Retry-After"] = "1"
    return response


class SessionMiddleware(DjangoSessionMiddleware):
    """Django's ``SessionMiddleware`` that answers 503 (``Retry-After: 1``) instead of a 500 when the session store
    is unavailable, whether the view's session access or the save after it met the outage. Use it in place of
    ``django.contrib.sessions.middleware.SessionMiddleware``."""

    def process_exception(self, request: Any, exception: Exception) -> HttpResponse | None:
        return _unavailable() if isinstance(exception, StoreUnavailable) else None

    def process_response(self, request: Any, response: Any) -> Any:
        try:
            return super().process_response(request, response)
        except StoreUnavailable:
            return _unavailable()
