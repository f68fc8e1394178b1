"""Smoke test of ``python -m benchmarks.web --quick`` (the Flask example app under waitress, fmredis against
Flask-Session): both variants run and report, fmredis loses no update, and the same load does make Flask-Session's
whole-session saves lose some on shared sessions (so the count can see a loss). Then the example apps themselves
(examples/flask_app.py, examples/django_app/) against a redis-server of the benchmarks' own. No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.harness.servers import free_port

ROOT = Path(__file__).resolve().parent.parent  # the checkout: `-m benchmarks.web` and the examples import from there


@pytest.mark.timeout(120)
def test_web_script_reports_both_variants(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.web", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads((tmp_path / "web.json").read_text())
    assert {"rounds", "variants", "targets", "settings", "versions"} <= set(report)
    assert sorted(run["variant"] for run in report["rounds"]) == ["flask-session", "fmredis"]

    for name, variant in report["variants"].items():
        assert variant["requests"] > 0, name
        assert {"p50_ms", "p99_ms"} <= set(variant["latency"]), name
        assert variant["own"]["increments"] > 0 and variant["shared"]["increments"] > 0, name
        assert variant["own"]["lost"] == 0, name  # one client at a time per own session: nothing to lose
        assert variant["login_ok"], name  # the login moved the data to a new id; the old cookie reads empty

    fm = report["variants"]["fmredis"]
    assert fm["lost"] == 0, fm  # changed keys merged atomically: every acknowledged increment is held
    assert fm["shared"]["extra"] == fm["own"]["extra"] == 0, fm
    assert fm["failed"] == {}, fm
    assert report["targets"]["fmredis lost updates (own and shared sessions)"]["met"]
    # The naive version of the same app: Flask-Session saves the whole session, and overlapping requests on a shared
    # session write back each other's old counts.
    assert report["variants"]["flask-session"]["shared"]["lost"] > 0, report["variants"]["flask-session"]
    assert "lost" in result.stdout and "flask-session" in result.stdout  # the table


def _document(raw: redis.Redis, key: str) -> dict[str, Any] | None:
    value = raw.get(key)
    return None if value is None else json.loads(value)


def test_flask_example_keeps_sessions_in_redis(bench_redis_server: Any) -> None:
    from examples.flask_app import create_app

    url = f"redis://{bench_redis_server.host}:{bench_redis_server.port}/0"
    app = create_app(config={"FMREDIS_REDIS": {"url": url}})
    client = app.test_client()
    raw = redis.Redis(host=bench_redis_server.host, port=bench_redis_server.port)
    assert client.get("/session").json == {}
    assert client.get_cookie("session") is None  # an empty new session gets no cookie
    assert client.post("/incr/a").json == {"a": 1}
    assert client.post("/incr/a").json == {"a": 2}
    sid = app.session_interface.open_session(app, _request(app, client)).sid
    assert _document(raw, "flask-session:" + sid)["data"] == {"a": 2}

    assert client.post("/login", data={"user_id": "u-42"}).json == {"a": 2, "user_id": "u-42"}
    new_sid = app.session_interface.open_session(app, _request(app, client)).sid
    assert new_sid != sid
    assert raw.exists("flask-session:" + sid) == 0  # the old id is gone
    assert _document(raw, "flask-session:" + new_sid)["data"] == {"a": 2, "user_id": "u-42"}
    assert app.session_interface.get_store(app).sessions_for_user("u-42") == [new_sid]

    assert client.post("/logout").json == {}
    assert raw.exists("flask-session:" + new_sid) == 0
    raw.close()


def _request(app: Any, client: Any) -> Any:
    """A request carrying the test client's current session cookie (to read the session id it names)."""
    cookie = client.get_cookie("session")
    assert cookie is not None
    return app.test_request_context(headers={"Cookie": f"session={cookie.value}"}).request


def test_flask_example_answers_503_while_redis_is_unreachable() -> None:
    from examples.flask_app import create_app

    app = create_app(config={"FMREDIS_REDIS": {"url": f"redis://127.0.0.1:{free_port()}/0"}})  # nothing listens
    response = app.test_client().post("/incr/a")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"


DJANGO_SCRIPT = """
import json, os, sys
sys.path.insert(0, os.path.join(sys.argv[1], "examples", "django_app"))
os.environ["DJANGO_SETTINGS_MODULE"] = "settings"
import django
django.setup()
from django.core.management import call_command
from django.test import Client
call_command("check")
client, seen = Client(), {}
seen["incr"] = [client.post("/incr/a").json(), client.post("/incr/a").json()]
seen["old"] = client.cookies["sessionid"].value
seen["login"] = client.post("/login", {"user_id": "u-7"}).json()
seen["new"] = client.cookies["sessionid"].value
seen["session"] = client.get("/session").json()
print(json.dumps(seen))
"""


def test_django_example_keeps_sessions_in_redis(bench_redis_server: Any) -> None:
    env = {**os.environ, "REDIS_URL": f"redis://{bench_redis_server.host}:{bench_redis_server.port}/0"}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run(
        [sys.executable, "-c", DJANGO_SCRIPT, str(ROOT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["incr"] == [{"a": 1}, {"a": 2}]
    assert seen["login"] == seen["session"] == {"a": 2, "user_id": "u-7"}
    assert seen["new"] != seen["old"]  # cycle_key: a new session key at login
    raw = redis.Redis(host=bench_redis_server.host, port=bench_redis_server.port)
    assert raw.exists("django-session:" + seen["old"]) == 0
    assert _document(raw, "django-session:" + seen["new"])["data"] == {"a": 2, "user_id": "u-7"}
    raw.close()
