"""``fmredis sessions count|show|user|logout`` as subprocesses on the test server: exact counts by SCAN (never KEYS),
metadata without payload values unless asked, a user's ids, and "log out everywhere"."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
import redis

from fmredis import RedisSessionStore, cli, session_ref
from tests.cli.conftest import ROOT, Cli, assert_one_line_failure, cli_environ

SECRET_VALUE = "card-4111-secret"


@pytest.fixture
def store(raw: redis.Redis) -> Iterator[RedisSessionStore]:
    """A store with RedisSessionStore's default prefix ("session:"), arranging what the CLI is asked about."""
    port = raw.connection_pool.connection_kwargs["port"]
    with RedisSessionStore.from_url(f"redis://127.0.0.1:{port}/0") as made:
        yield made


def _fill(raw: redis.Redis, prefix: str, count: int) -> None:
    with raw.pipeline(transaction=False) as pipe:
        for number in range(count):
            pipe.set(f"{prefix}{number}", b"{}", ex=600)
        pipe.execute()


def _commandstats(raw: redis.Redis) -> dict[str, int]:
    return {name: int(stats["calls"]) for name, stats in raw.info("commandstats").items()}


# --- count ---------------------------------------------------------------------------------------------------------


def test_count_is_exact_and_only_under_the_prefix(cli_run: Cli, raw: redis.Redis, store: RedisSessionStore) -> None:
    _fill(raw, "session:", 3000)
    _fill(raw, "sessions:", 300)  # a longer prefix that "session:*" must not match
    _fill(raw, "other:session:", 200)
    store.create("u1", {"n": 1})  # one more session, and its index key "user-sessions:session:u1" (not counted)
    raw.config_resetstat()
    run = cli_run("sessions", "count")
    assert run.code == 0, run
    assert run.stdout == "3001\n"
    assert run.stderr == ""  # stderr is a pipe, not a terminal: no progress line
    stats = _commandstats(raw)
    assert stats["cmdstat_scan"] >= 4  # COUNT 1000 over ~3,500 keys: several round trips, no KEYS
    assert "cmdstat_keys" not in stats
    assert cli_run("sessions", "count", "--prefix", "other:").stdout == "200\n"
    assert cli_run("sessions", "--prefix", "nothing-here:", "count").stdout == "0\n"


def test_count_escapes_glob_characters_in_the_prefix(cli_run: Cli, raw: redis.Redis) -> None:
    _fill(raw, "a*b?[c]:", 7)
    _fill(raw, "aXXbY[c]:", 5)  # what "a*b?[c]:*" would match unescaped
    _fill(raw, "aXbYc:", 3)
    assert cli_run("sessions", "count", "--prefix", "a*b?[c]:").stdout == "7\n"


def test_count_shows_progress_in_place_on_a_terminal(redis_url: str, raw: redis.Redis) -> None:
    _fill(raw, "session:", 2500)
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "fmredis", "sessions", "count"],
            stdout=subprocess.PIPE,
            stderr=follower,
            env=cli_environ({"REDIS_URL": redis_url}),
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        os.close(follower)
        follower = -1
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other end is closed and everything was read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if follower != -1:
            os.close(follower)
        os.close(leader)
    assert done.returncode == 0 and done.stdout == b"2500\n"
    text = shown.decode()
    assert text.startswith("\rscanning session:*: ") and " keys" in text  # a counter line, rewritten with \r
    assert text.endswith("\r")  # and cleared at the end
    assert "\n" not in text.replace("\r\n", "")


# --- show ----------------------------------------------------------------------------------------------------------


def test_show_prints_metadata_and_the_payload_only_when_asked(
    cli_run: Cli, raw: redis.Redis, store: RedisSessionStore
) -> None:
    session_id = store.create("alice", {"card": SECRET_VALUE, "theme": "dark"}, ttl=900)
    run = cli_run("sessions", "show", "--", session_id)
    assert run.code == 0, run
    rows = {line[:14].strip(): line[15:] for line in run.stdout.splitlines()}
    assert rows["session"].startswith(session_ref(session_id))
    assert 0 < int(rows["ttl"].removesuffix(" s")) <= 900
    assert rows["user_id"] == "alice"
    created = datetime.fromisoformat(rows["created_at"])
    assert created.tzinfo is not None and created <= datetime.now(timezone.utc)
    assert rows["last_activity"] == rows["created_at"]
    assert rows["size"] == f"{raw.strlen('session:' + session_id)} bytes"
    assert rows["keys"] == "card, theme"
    assert SECRET_VALUE not in run.output and session_id not in run.output
    assert "payload" not in rows

    with_payload = cli_run("sessions", "show", "--payload", "--", session_id)
    assert with_payload.code == 0, with_payload
    assert with_payload.stdout.startswith(run.stdout)
    assert f'"card": "{SECRET_VALUE}"' in with_payload.stdout


def test_an_id_starting_with_a_dash_is_read_after_double_dash(cli_run: Cli, store: RedisSessionStore) -> None:
    """A generated id starts with "-" one time in 64 (URL-safe base64); argparse reads it as an option unless it
    comes after "--", which --help says."""
    store.set("-dash-first", {"n": 1}, ttl=60)
    assert cli_run("sessions", "show", "-dash-first").code == 2  # argparse: "the following arguments are required"
    assert "one starting with '-' goes after '--'" in cli_run("sessions", "show", "--help").stdout
    run = cli_run("sessions", "show", "--", "-dash-first")
    assert run.code == 0, run
    assert "keys           n" in run.stdout
    session_id = store.create("-dash-user", {"n": 2})
    assert cli_run("sessions", "user", "--", "-dash-user").stdout.split() == [session_id]


def test_show_lists_the_framework_keys_of_a_web_session(cli_run: Cli, store: RedisSessionStore) -> None:
    """The document of fmredis.contrib's engines keeps the framework's keys under "data"."""
    now = datetime.now(timezone.utc).isoformat()
    document = {"data": {"_auth_user_id": "7", "csrf": SECRET_VALUE}, "created_at": now, "last_activity": now}
    store.set("web-sid-1", document, ttl=60)
    run = cli_run("sessions", "show", "web-sid-1")
    assert run.code == 0, run
    assert "data keys      _auth_user_id, csrf" in run.stdout and "keys           data" in run.stdout
    assert "user_id        -" in run.stdout
    assert SECRET_VALUE not in run.output


def test_show_does_not_slide_the_ttl(cli_run: Cli, raw: redis.Redis, store: RedisSessionStore) -> None:
    """An inspection is no activity: the TTL is read with PTTL, not refreshed (``store.get(refresh=True)`` would put
    it back to the store's 1800 s)."""
    session_id = store.create("bob", {"n": 1}, ttl=120)
    assert cli_run("sessions", "show", "--", session_id).code == 0
    assert 0 < raw.ttl("session:" + session_id) <= 120


def test_show_of_a_missing_or_foreign_session_names_only_its_reference(cli_run: Cli, raw: redis.Redis) -> None:
    session_id = "missing-Hk3-session-id"
    run = cli_run("sessions", "show", "--", session_id)
    line = assert_one_line_failure(run, cli.NOT_FOUND, session_ref(session_id), "no session")
    assert session_id not in line
    raw.rpush("session:a-list", "x")  # a key of another type under the prefix is no session
    line = assert_one_line_failure(cli_run("sessions", "show", "a-list"), cli.NOT_FOUND, session_ref("a-list"))
    assert "no session document" in line
    raw.set("session:not-json", b"\x00garbage")
    assert cli_run("sessions", "show", "not-json").code == cli.NOT_FOUND


def test_show_refuses_an_id_no_store_accepts(cli_run: Cli) -> None:
    long_id = "x" * 600
    line = assert_one_line_failure(cli_run("sessions", "show", long_id), cli.BAD_CONFIGURATION, "limit is 512")
    assert long_id not in line


# --- user and logout -----------------------------------------------------------------------------------------------


def test_user_lists_the_users_session_ids(cli_run: Cli, store: RedisSessionStore) -> None:
    bobs = [store.create("bob", {"n": n}) for n in range(3)]
    store.create("carol", {"n": 0})
    run = cli_run("sessions", "user", "bob")
    assert run.code == 0, run
    assert run.stdout.split() == store.sessions_for_user("bob") and sorted(run.stdout.split()) == sorted(bobs)
    store.delete(bobs[0])  # gone sessions are not listed
    assert cli_run("sessions", "user", "bob").stdout.split() == store.sessions_for_user("bob")
    assert cli_run("sessions", "user", "nobody").stdout == ""


def test_logout_removes_every_session_of_the_user_only(cli_run: Cli, raw: redis.Redis, redis_url: str) -> None:
    with RedisSessionStore.from_url(redis_url, prefix="django-session:") as django:
        bobs = [django.create("bob", {"n": n}) for n in range(3)]
        carols = django.create("carol", {"n": 0})
        assert cli_run("sessions", "logout", "bob").stdout == "removed 0 session(s) of user bob\n"  # other prefix
        run = cli_run("sessions", "logout", "--prefix", "django-session:", "bob")
        assert run.code == 0, run
        assert run.stdout == "removed 3 session(s) of user bob\n"
        assert not any(raw.exists("django-session:" + session_id) for session_id in bobs)
        assert django.sessions_for_user("bob") == [] and django.exists(carols)
        again = cli_run("sessions", "logout", "--prefix", "django-session:", "bob")
        assert again.stdout == "removed 0 session(s) of user bob\n"
        assert not any(session_id in run.output + again.output for session_id in bobs)


def test_sessions_on_a_dead_server_is_one_line_exit_3() -> None:
    from tests.cli.conftest import run_cli
    from tests.harness.servers import free_port

    port = free_port()
    for action in (["count"], ["show", "some-session-id"], ["user", "u"], ["logout", "u"]):
        run = run_cli("sessions", *action, env={"REDIS_URL": f"redis://127.0.0.1:{port}/0"})
        line = assert_one_line_failure(run, cli.UNREACHABLE, f"127.0.0.1:{port}")
        assert "some-session-id" not in line
