"""A small Flask app on fmredis sessions (``FmRedisSessionInterface``).

    REDIS_URL=redis://127.0.0.1:6379/0 python examples/flask_app.py      # http://127.0.0.1:5000 (REDIS_URL optional)

    curl -c jar -b jar -X POST http://127.0.0.1:5000/incr/visits           # {"visits": 1}
    curl -c jar -b jar -X POST http://127.0.0.1:5000/incr/visits           # {"visits": 2}
    curl -c jar -b jar -X POST -d user_id=42 http://127.0.0.1:5000/login  # new session id, same data
    curl -c jar -b jar http://127.0.0.1:5000/session

Each save writes only the keys the request changed, merged into the stored session: two overlapping requests of one
user (two tabs) that change different keys both keep their change. ``benchmarks/web.py`` builds this same app with
Flask-Session's interface to compare (``create_app`` takes any session interface).

Without ``FLASK_SECRET_KEY`` in the environment the app signs its cookies with a key drawn at start, so sessions do
not survive a restart; set one (``python -c "import secrets; print(secrets.token_hex(32))"``) to keep them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from flask import Flask, Response, jsonify, request, session
from flask.sessions import SessionInterface
from werkzeug.exceptions import InternalServerError

from fmredis import StoreUnavailable
from fmredis.contrib.flask import FmRedisSessionInterface

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

Interface = SessionInterface | Callable[[Flask], SessionInterface]


def create_app(interface: Interface | None = None, config: Mapping[str, Any] | None = None) -> Flask:
    """The app, with ``interface`` as its session interface (default: ``FmRedisSessionInterface()``, which builds its
    store from ``FMREDIS_REDIS`` on first use). ``interface`` may also be a callable taking the app, for interfaces
    that need it to be built (Flask-Session's). ``config`` is applied last (after ``FLASK_*`` variables)."""
    app = Flask(__name__)
    app.config.update(SECRET_KEY=secrets.token_hex(32), FMREDIS_REDIS={"url": REDIS_URL})
    app.config.from_prefixed_env()  # FLASK_SECRET_KEY, ...
    app.config.update(config or {})
    if interface is None:
        interface = FmRedisSessionInterface()
    app.session_interface = interface if isinstance(interface, SessionInterface) else interface(app)

    def public() -> Response:
        return jsonify({key: value for key, value in session.items() if not key.startswith("_")})

    @app.post("/incr/<name>")
    def incr(name: str) -> Response:
        """Read-modify-write of one key: session[name] += 1."""
        session[name] = session.get(name, 0) + 1
        return public()

    @app.get("/session")
    def show() -> Response:
        return public()

    @app.post("/login")
    def login() -> Response:
        """A login (no password check here): a new session id for the same data, the old id gone (session-fixation
        defence), and with fmredis the session listed under the user's id, so that
        ``store.delete_user_sessions(user_id)`` logs the user out everywhere."""
        user_id = request.values.get("user_id", "")
        if not user_id:
            return Response("user_id is required\n", status=400, mimetype="text/plain")
        current = app.session_interface
        if isinstance(current, FmRedisSessionInterface):
            current.regenerate(session, user_id=user_id)
        else:  # Flask-Session's interfaces (the benchmark's comparison): regenerate(session), no user index
            current.regenerate(session)  # type: ignore[attr-defined]
        session["user_id"] = user_id
        return public()

    @app.post("/logout")
    def logout() -> Response:
        session.clear()  # an emptied session is deleted and its cookie removed
        return public()

    @app.errorhandler(InternalServerError)
    def unavailable(error: InternalServerError) -> Response | InternalServerError:
        """Redis down (and no fallback store): a retryable 503 rather than a 500, never an empty session (which would
        log the user out). Flask hands an error raised while the session opens to its 500 handler: hence the check."""
        if isinstance(error.original_exception, StoreUnavailable):
            body = "session store unavailable, retry shortly\n"
            return Response(body, 503, {"Retry-After": "1"}, mimetype="text/plain")
        return error

    return app


if __name__ == "__main__":
    create_app().run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
