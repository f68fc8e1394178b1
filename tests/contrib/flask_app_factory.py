"""The Flask app the session tests drive, with either session interface (fmredis's or Flask-Session's, the naive
whole-session overwrite), and a waitress server in a thread to send it real concurrent requests over 127.0.0.1.

Views: ``/none`` never touches the session; ``/set?k=v`` sets keys; ``/get/<key>`` reads one; ``/dump`` returns the
session as JSON; ``/sid`` its id; ``/pop/<key>``, ``/clear``; ``/permanent/<0|1>``; ``/login/<user_id>`` regenerates
it; ``/bad`` stores a value JSON cannot hold; ``/incr/<key>`` adds one to a counter; ``/meet/<first|second>?k=v``
meets the other request at the app's `Meeting` before it sets its keys.
"""

from __future__ import annotations

import contextlib
import http.client
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
import waitress
from flask import Flask, Response, jsonify, request, session
from flask.sessions import SessionInterface

SECRET_KEY = "test-secret-key-not-for-production"
PREFIX = "flask-session:"
NAIVE_PREFIX = "naive-session:"
LIFETIME = 600  # PERMANENT_SESSION_LIFETIME of the test apps, in seconds
WAIT = 10.0  # bound of every wait on another thread, so a broken implementation fails instead of hanging


class Opaque:
    """A value JSON cannot hold, whose repr stands for session data that must never reach a message."""

    def __repr__(self) -> str:
        return "Opaque(card=4111-1111-1111-1111)"


@dataclass
class Meeting:
    """Two requests of one session held so that both have opened it before either saves, and ``first`` saves first.

    Both views wait at ``opened`` (so both loaded the session); ``first`` then returns and saves; ``second`` waits for
    ``first_saved``, which the test sets once it has received first's response (sent only after its save).
    """

    opened: threading.Barrier = field(default_factory=lambda: threading.Barrier(2, timeout=WAIT))
    first_saved: threading.Event = field(default_factory=threading.Event)
    #: Optional start line of the counter requests: ``/incr/<key>?meet=1`` waits here after opening the session.
    start_line: threading.Barrier | None = None


def fmredis_app(store: Any, **config: Any) -> Flask:
    """The app with ``FmRedisSessionInterface(store=store)`` (key prefix `PREFIX`)."""
    from fmredis.contrib.flask import FmRedisSessionInterface  # the module under test: import errors show per test

    return build_app(FmRedisSessionInterface(store=store, key_prefix=PREFIX), **config)


def flask_session_app(client: redis.Redis, **config: Any) -> Flask:
    """The app with Flask-Session 0.8's RedisSessionInterface on `client` (the naive control: it writes the whole
    session it loaded on every change)."""
    from flask_session import Session

    app = build_app(None, SESSION_TYPE="redis", SESSION_REDIS=client, SESSION_KEY_PREFIX=NAIVE_PREFIX, **config)
    Session(app)
    return app


def build_app(interface: SessionInterface | None, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY=SECRET_KEY, PERMANENT_SESSION_LIFETIME=LIFETIME, TESTING=True)
    app.config.update(config)
    if interface is not None:
        app.session_interface = interface
    app.extensions["meeting"] = Meeting()

    @app.get("/none")
    def untouched() -> str:
        return "no session"

    @app.get("/set")
    def set_keys() -> str:
        session.update(request.args.to_dict())
        return "set"

    @app.get("/get/<key>")
    def get_key(key: str) -> Response:
        return jsonify(session.get(key))

    @app.get("/dump")
    def dump() -> Response:
        return jsonify(visible(session))

    @app.get("/sid")
    def sid() -> str:
        return session.sid  # type: ignore[attr-defined,no-any-return]

    @app.get("/pop/<key>")
    def pop(key: str) -> str:
        session.pop(key, None)
        return "popped"

    @app.get("/clear")
    def clear() -> str:
        session.clear()
        return "cleared"

    @app.get("/permanent/<int:flag>")
    def permanent(flag: int) -> str:
        session.permanent = bool(flag)
        session["seen"] = "yes"
        return "permanent"

    @app.get("/login/<user_id>")
    def login(user_id: str) -> str:
        app.session_interface.regenerate(session, user_id=user_id)  # type: ignore[attr-defined]
        session["user"] = user_id
        return "logged in"

    @app.get("/bad")
    def bad() -> str:
        session["fine"] = "ok"
        session["blob"] = Opaque()
        return "bad"

    @app.get("/incr/<key>")
    def incr(key: str) -> str:
        count = int(session.get(key, 0))
        line = app.extensions["meeting"].start_line
        if request.args.get("meet") and line is not None:
            line.wait()
        session[key] = count + 1
        return str(count + 1)

    @app.get("/meet/<role>")
    def meet(role: str) -> str:
        meeting: Meeting = app.extensions["meeting"]
        visible(session)  # read it, as a real view would before changing it
        meeting.opened.wait()
        if role == "second" and not meeting.first_saved.wait(WAIT):
            raise RuntimeError("the first request's response never arrived")
        session.update(request.args.to_dict())
        return role

    return app


def visible(data: Any) -> dict[str, Any]:
    """The session's keys without Flask's own ``_permanent`` (Flask-Session stores it; the tests compare the rest)."""
    return {key: value for key, value in dict(data).items() if key != "_permanent"}


# --- a real server ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def serve(app: Flask, threads: int = 8) -> Iterator[int]:
    """Run `app` under waitress (`threads` worker threads) on 127.0.0.1 in a thread; yields the port; stops it after."""
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=threads)
    loop = threading.Thread(target=server.run, name="waitress-loop", daemon=True)
    loop.start()
    try:
        yield server.effective_port  # type: ignore[union-attr]
    finally:

        def close_all() -> None:  # runs in the loop's thread: the loop ends once its map is empty
            for dispatcher in list(server._map.values()):
                dispatcher.handle_close()

        # The loop may run the thunk as soon as it is queued (woken by a worker's own pull) and close the trigger
        # before this write reaches it: then the write fails, and the loop has stopped anyway (checked below).
        with contextlib.suppress(OSError):
            server.trigger.pull_trigger(close_all)  # type: ignore[union-attr]
        loop.join(WAIT)
        server.task_dispatcher.shutdown()
        assert not loop.is_alive(), "waitress did not stop"


class Browser:
    """One user agent over http.client (keep-alive): sends the session cookie it holds, keeps the one it is sent."""

    def __init__(self, port: int, cookie: str | None = None, name: str = "session") -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        self.cookie, self.name = cookie, name

    def get(self, path: str) -> tuple[int, str]:
        headers = {"Cookie": f"{self.name}={self.cookie}"} if self.cookie is not None else {}
        self.connection.request("GET", path, headers=headers)
        response = self.connection.getresponse()
        body = response.read().decode()
        for header in response.headers.get_all("Set-Cookie") or []:
            name, _, rest = header.partition("=")
            if name == self.name:
                self.cookie = rest.split(";", 1)[0]
        return response.status, body

    def close(self) -> None:
        self.connection.close()
