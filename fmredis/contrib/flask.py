"""A Flask session interface on fmredis: ``app.session_interface = FmRedisSessionInterface()``.

The cookie holds only a random session id (256 bits), signed with ``app.secret_key`` (``SECRET_KEY_FALLBACKS``
verify too); the data stays in Redis as JSON. A save writes only the keys the request changed, merged atomically into
the stored session (:mod:`fmredis.contrib.web`), so overlapping requests of one user never undo each other's changes.
A read restarts the session's expiry (one GETEX); a session the request did not change is not written, and an empty
new session is neither stored nor given a cookie.

Flask's settings apply: ``SESSION_COOKIE_NAME``, ``_DOMAIN``, ``_PATH``, ``_HTTPONLY``, ``_SECURE``, ``_SAMESITE``,
``_PARTITIONED`` (Flask 3.1), ``SESSION_REFRESH_EACH_REQUEST``, and ``PERMANENT_SESSION_LIFETIME``: the cookie's expiry
for a ``permanent`` session, and the Redis TTL of every session. With ``store=None`` the interface builds a
:class:`~fmredis.RedisSessionStore` on first use, from ``app.config["FMREDIS_REDIS"]`` (keyword arguments for
:func:`fmredis.create_redis_client`) and the factory's hierarchy (``REDIS_URL``, ``REDIS_*``, defaults).

Without a fallback store, a Redis outage makes the request fail with :class:`~fmredis.StoreUnavailable` (a 500;
docs/frameworks.md shows a 503 handler): never an empty session, which would log the user out.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SecureCookieSession, SessionInterface
from itsdangerous import BadSignature, Signer

from fmredis.contrib.web import WebSessions, snapshot
from fmredis.errors import SessionNotFound
from fmredis.lifecycle import new_session_id
from fmredis.store import ISessionStore

__all__ = ["FmRedisSession", "FmRedisSessionInterface"]


class FmRedisSession(SecureCookieSession):
    """A server-side session: the data, ``sid`` (``None`` until stored), ``new``, and Flask's ``modified``,
    ``accessed`` and ``permanent``. Like any Flask session, one request uses it."""

    def __init__(
        self, initial: Mapping[str, Any] | None = None, *, sid: str | None = None, before: Mapping[str, bytes] = {}
    ) -> None:
        super().__init__(initial)
        self.sid = sid
        self.new = sid is None
        self.before: Mapping[str, bytes] = before  # the snapshot a save compares against

    def __repr__(self) -> str:  # the data is the user's, not for logs
        return f"<FmRedisSession {'new' if self.sid is None else 'stored'}, {len(self)} keys>"


class FmRedisSessionInterface(SessionInterface):
    """Server-side Flask sessions in an fmredis store (``store``, or a Redis store built on first use; its keys are
    ``key_prefix`` + session id). Thread-safe: one interface serves every request of the app."""

    session_class = FmRedisSession
    #: The salt of the cookie's signature (a separate key from Flask's cookie sessions).
    salt = "fmredis.contrib.flask"

    def __init__(self, store: ISessionStore | None = None, *, key_prefix: str = "flask-session:") -> None:
        if store is not None and not isinstance(store, ISessionStore):
            raise TypeError(f"store must be an ISessionStore, not {type(store).__name__}")
        self._web = None if store is None else WebSessions(store)
        self._key_prefix = key_prefix
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FmRedisSessionInterface(store={None if self._web is None else self._web.store!r})"

    def sessions(self, app: Flask) -> WebSessions:
        """The web sessions of ``app`` (the store built on first use when none was given)."""
        web = self._web
        if web is None:
            with self._lock:
                if self._web is None:
                    options = app.config.get("FMREDIS_REDIS", {})
                    self._web = WebSessions.on_redis(options, self._key_prefix, self._ttl(app))
                web = self._web
        return web

    def get_store(self, app: Flask) -> ISessionStore:
        """The store sessions live in (for ``delete_user_sessions`` at "log out everywhere", or metrics)."""
        return self.sessions(app).store

    @staticmethod
    def _ttl(app: Flask) -> int:
        return max(1, int(app.permanent_session_lifetime.total_seconds()))

    def _signer(self, app: Flask) -> Signer | None:
        if not app.secret_key:
            return None
        keys: list[str | bytes] = list(app.config.get("SECRET_KEY_FALLBACKS") or ())
        keys.append(app.secret_key)  # itsdangerous signs with the last key and verifies with every one
        return Signer(keys, salt=self.salt, key_derivation="hmac")  # type: ignore[arg-type]

    def open_session(self, app: Flask, request: Request) -> FmRedisSession | None:
        signer = self._signer(app)
        if signer is None:
            return None  # Flask's null session: it explains that SECRET_KEY is not set
        cookie = request.cookies.get(self.get_cookie_name(app))
        if cookie:
            try:
                sid = signer.unsign(cookie).decode("ascii")
            except (BadSignature, UnicodeDecodeError):
                sid = None  # forged or from another secret: a new session, nothing loaded
            if sid is not None:
                ttl = self._ttl(app)
                loaded = self.sessions(app).load(sid, lambda _data: ttl)
                if loaded is not None:
                    return self.session_class(loaded.data, sid=sid, before=loaded.snapshot)
        return self.session_class()

    def regenerate(self, session: FmRedisSession, user_id: str | None = None, *, app: Flask | None = None) -> None:
        """Give ``session`` a new id (call it at login: session-fixation defence); the old id stops working at once
        and the response carries the new cookie. The request's changes so far are saved first. With ``user_id``, the
        session is listed under that user, so ``get_store(app).delete_user_sessions(user_id)`` logs it out."""
        if app is None:
            from flask import current_app

            app = current_app._get_current_object()  # type: ignore[attr-defined]
        assert app is not None
        web, ttl, data = self.sessions(app), self._ttl(app), dict(session)
        if session.sid is not None:
            try:
                session.before = web.save(session.sid, session.before, data, ttl, user_id=user_id)
                session.sid = web.regenerate(session.sid)
            except SessionNotFound:  # gone since this request loaded it: the login starts a new session
                session.sid = None
        if session.sid is None:
            sid = new_session_id()
            web.create(sid, data, ttl, user_id=user_id)
            session.before = snapshot(data)
            session.sid = web.regenerate(sid) if user_id is not None else sid
        session.new = False
        session.modified = True  # the cookie is re-sent with the new id

    def _cookie(self, app: Flask) -> dict[str, Any]:
        """The session cookie's attributes from Flask's ``SESSION_COOKIE_*`` settings."""
        options: dict[str, Any] = {
            "domain": self.get_cookie_domain(app),
            "path": self.get_cookie_path(app),
            "secure": self.get_cookie_secure(app),
            "samesite": self.get_cookie_samesite(app),
            "httponly": self.get_cookie_httponly(app),
        }
        if hasattr(self, "get_cookie_partitioned"):  # Flask 3.1
            options["partitioned"] = self.get_cookie_partitioned(app)
        return options

    def save_session(  # type: ignore[override]
        self, app: Flask, session: FmRedisSession | None, response: Response
    ) -> None:
        if session is None:  # open_session failed (Redis down): Flask's error response still comes here
            return
        name, cookie = self.get_cookie_name(app), self._cookie(app)
        if session.accessed:
            response.vary.add("Cookie")
        web = self.sessions(app)
        if not session:
            if session.sid is not None and session.modified:  # emptied (logout): the stored session goes too
                web.delete(session.sid)
                response.delete_cookie(name, **cookie)
                response.vary.add("Cookie")
            return
        ttl, data = self._ttl(app), dict(session)
        if session.sid is None:
            sid = new_session_id()
            web.create(sid, data, ttl)
            session.sid, session.before = sid, snapshot(data)  # only once stored: an error response saves again
        else:
            try:  # nothing changed: no round trip (the load's GETEX already restarted the expiry)
                session.before = web.save(session.sid, session.before, data, ttl, touch=False)
            except SessionNotFound:  # logged out by a concurrent request: not resurrected, the cookie goes
                response.delete_cookie(name, **cookie)
                return
        if not (session.new or self.should_set_cookie(app, session)):
            return
        signer = self._signer(app)
        assert signer is not None
        value = signer.sign(session.sid).decode("ascii")
        response.set_cookie(name, value, expires=self.get_expiration_time(app, session), **cookie)
        response.vary.add("Cookie")
