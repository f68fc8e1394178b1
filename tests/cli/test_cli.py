"""``fmredis config`` and ``fmredis doctor`` as subprocesses against real servers on 127.0.0.1: what they print, that a
failure is one line naming host:port with a distinct exit code and no traceback, and that no password is ever shown."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import redis
from pytest_redis.executor import RedisExecutor

from fmredis import StoreError, cli, create_redis_client, resolve_settings
from fmredis.doctor import REFUSED, STORE_COMMANDS, examine, store_commands
from tests.cli.conftest import Cli, assert_one_line_failure, run_cli
from tests.harness.acl import temporary_acl_user
from tests.harness.servers import RedisServer, free_port
from tests.redis.test_acl_commands import documented_commands

SECRET = "pw-Xq7-not-for-eyes"
STORE_KEYS = ("session:*", "user-sessions:session:*")


def _url(port: int, *, user: str = "", password: str = "") -> str:
    credentials = f"{quote(user)}:{quote(password)}@" if user or password else ""
    return f"redis://{credentials}127.0.0.1:{port}/0"


# --- config --------------------------------------------------------------------------------------------------------


def test_config_shows_each_source_and_masks_the_password() -> None:
    env = {"REDIS_URL": _url(6390, password=SECRET), "REDIS_CLIENT_NAME": "cli-test", "REDIS_DB": "5"}
    run = run_cli("config", "--port", "6391", env=env)  # config connects to nothing
    assert run.code == 0, run
    rows = {line.split()[0]: line.split()[1:] for line in run.stdout.splitlines() if line.strip()}
    assert rows["address:"] == ["redis://127.0.0.1:6391/0"]
    assert rows["port"] == ["6391", "argument", "port"]  # the explicit tier beats the URL's port
    assert rows["host"] == ["'127.0.0.1'", "REDIS_URL"]
    assert rows["db"] == ["0", "REDIS_URL"]  # the URL's /0 beats REDIS_DB
    assert rows["client_name"] == ["'cli-test'", "environment", "variable", "REDIS_CLIENT_NAME"]
    assert rows["password"] == ["***", "REDIS_URL"]
    assert rows["socket_timeout"] == ["10.0", "default"]
    assert SECRET not in run.output


def test_url_option_takes_redis_urls_place() -> None:
    run = run_cli("--url", "redis://127.0.0.1:6392/2", "config", env={"REDIS_URL": _url(6390, password=SECRET)})
    assert run.code == 0, run
    assert "redis://127.0.0.1:6392/2" in run.stdout and "argument url" in run.stdout
    assert "password                None" in run.stdout  # REDIS_URL's password is not used with --url
    assert SECRET not in run.output


@pytest.mark.parametrize(
    ("env", "mentions"),
    [
        ({"REDIS_PORT": "sixty"}, ["REDIS_PORT", "port must be an integer"]),
        # An unencoded '/' in the password: what urlsplit would quote as the "port" is part of the password.
        ({"REDIS_URL": f"redis://:{SECRET}/x@127.0.0.1:6390/0"}, ["REDIS_URL", "malformed URL"]),
        ({"REDIS_URL": f"http://:{SECRET}@127.0.0.1:6390/0"}, ["REDIS_URL", "unknown URL scheme"]),
    ],
)
def test_a_configuration_error_is_one_line_exit_2(env: dict[str, str], mentions: list[str]) -> None:
    for command in (["config"], ["doctor"], ["sessions", "count"]):
        line = assert_one_line_failure(run_cli(*command, env=env), cli.BAD_CONFIGURATION, *mentions)
        assert SECRET not in line and "configuration error" in line


# --- doctor on a healthy server ------------------------------------------------------------------------------------


def test_doctor_on_a_live_server_reports_every_check(cli_run: Cli, redis_server: RedisExecutor) -> None:
    run = cli_run("doctor", "--count", "50")
    assert run.code == 0, run
    assert run.stderr == ""
    lines = dict(line.split(":", 1) for line in run.stdout.splitlines()[:-1])
    assert lines["address"].strip() == f"redis://127.0.0.1:{redis_server.port}/0"
    assert lines["server"].strip().startswith("redis 7.") and "role master" in lines["server"]
    assert lines["mode"].strip().startswith("standalone client") and "redis_mode standalone" in lines["mode"]
    assert "hiredis" in lines["parser"]  # installed with redis[hiredis]: the parser in use is hiredis's
    assert "p50 " in lines["latency"] and "p99 " in lines["latency"] and "over 50 PINGs" in lines["latency"]
    assert lines["acl"].strip() == (
        f"user 'default' may run all {len(store_commands(resolve_settings(environ={})))} store commands on "
        "session:* and user-sessions:session:*"
    )
    assert lines["tls"].strip() == "off"
    assert run.stdout.splitlines()[-1] == "healthy"


def test_the_acl_check_covers_the_documented_commands() -> None:
    """The doctor's list is the one docs/deployment.md gives (and tests/redis/test_acl_commands.py proves enough)."""
    settings = resolve_settings(environ={}, client_name="worker", db=1)
    assert [name.lower() for name in store_commands(settings)] == documented_commands()
    assert "CLIENT|SETNAME" not in store_commands(resolve_settings(environ={}))


# --- doctor on a server that cannot be reached or refuses ----------------------------------------------------------


def test_doctor_on_a_dead_port_is_one_line_exit_3() -> None:
    port = free_port()  # nobody listens there
    run = run_cli("doctor", env={"REDIS_URL": _url(port, password=SECRET)})
    line = assert_one_line_failure(run, cli.UNREACHABLE, f"127.0.0.1:{port}", "unreachable", "Connection refused")
    assert SECRET not in line


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers, like a frozen server."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def test_doctor_on_a_server_that_never_answers_times_out_in_one_line(silent_listener: int) -> None:
    run = run_cli("doctor", "--timeout", "0.2", env={"REDIS_URL": _url(silent_listener)})
    assert_one_line_failure(run, cli.UNREACHABLE, f"127.0.0.1:{silent_listener}", "Timeout")


@pytest.fixture(scope="module")
def password_server() -> Iterator[RedisServer]:
    """A redis-server of our own whose default user needs a password (requirepass)."""
    with RedisServer("cli-auth", config=[("requirepass", SECRET)], client_kwargs={"password": SECRET}) as server:
        yield server


@pytest.mark.parametrize(
    ("password", "reason"), [("wrong-Zz9-password", "WRONGPASS"), ("", "NOAUTH")], ids=["wrong", "none"]
)
def test_doctor_with_a_wrong_or_missing_password_is_one_line_exit_4(
    password_server: RedisServer, password: str, reason: str
) -> None:
    port = password_server.port
    run = run_cli("doctor", env={"REDIS_URL": _url(port, password=password)})
    line = assert_one_line_failure(run, cli.REFUSED, f"127.0.0.1:{port}", "refused", reason)
    assert SECRET not in line and (not password or password not in line)
    # The right password makes the same server healthy: the failure was the password.
    assert run_cli("doctor", "--count", "5", env={"REDIS_URL": _url(port, password=SECRET)}).code == 0


def test_doctor_reports_a_store_command_the_user_may_not_run(cli_run: Cli, raw: redis.Redis) -> None:
    port = raw.connection_pool.connection_kwargs["port"]
    with temporary_acl_user(raw, "no-getex", SECRET, STORE_KEYS, rules=("+@all", "-getex")):
        run = cli_run("doctor", "--count", "5", env={"REDIS_URL": _url(port, user="no-getex", password=SECRET)})
    assert run.code == REFUSED == cli.REFUSED, run
    assert "acl:      FAIL: user 'no-getex' may not run" in run.stdout and "GETEX" in run.stdout
    assert run.stdout.splitlines()[-1] == "unhealthy: 1 check(s) failed"
    assert run.stderr.count("\n") == 1 and f"127.0.0.1:{port}" in run.stderr and "GETEX" in run.stderr
    assert SECRET not in run.output and "Traceback" not in run.output


def test_doctor_reports_keys_outside_the_users_patterns(cli_run: Cli, raw: redis.Redis) -> None:
    """A user allowed the sessions but not their index (``user-sessions:session:*``) cannot log users out."""
    port = raw.connection_pool.connection_kwargs["port"]
    with temporary_acl_user(raw, "no-index", SECRET, ["session:*"]):
        run = cli_run("doctor", "--count", "5", env={"REDIS_URL": _url(port, user="no-index", password=SECRET)})
    assert run.code == cli.REFUSED, run
    assert "ZADD (This user has no permissions to access the 'user-sessions:session:" in run.stdout
    # ... and with a Django engine's prefix the default patterns do not fit at all.
    with temporary_acl_user(raw, "no-index", SECRET, STORE_KEYS):
        url = _url(port, user="no-index", password=SECRET)
        assert cli_run("doctor", "--count", "5", env={"REDIS_URL": url}).code == 0
        run = cli_run("doctor", "--count", "5", "--prefix", "django-session:", env={"REDIS_URL": url})
    assert run.code == cli.REFUSED and "'django-session:fmredis-doctor-probe' key" in run.stdout, run


@pytest.mark.parametrize(("name", "key_kind"), STORE_COMMANDS, ids=[f"{n}-{k}" for n, k in STORE_COMMANDS])
def test_each_store_command_is_checked(raw: redis.Redis, redis_url: str, name: str, key_kind: str | None) -> None:
    """In process (a subprocess per command adds nothing): deny one command, or one of its keys, and the ACL finding
    fails naming it."""
    rules = ["+@all", f"-{name.lower()}"]
    patterns: list[str] = list(STORE_KEYS)
    if key_kind == "s":  # deny the key instead, where a command touches one: the key pattern is checked as well
        rules, patterns = ["+@all"], ["user-sessions:session:*"]
    elif key_kind in ("i", "l"):
        rules, patterns = ["+@all"], ["session:*"]
    settings = resolve_settings(url=redis_url, environ={})
    with temporary_acl_user(raw, "one-less", SECRET, patterns, rules=rules):
        client = create_redis_client(url=redis_url, environ={}, username="one-less", password=SECRET)
        try:
            if name in ("PING", "INFO"):  # the doctor's own commands: refused before any finding
                with pytest.raises(StoreError, match=f"NOPERM .*'{name.lower()}' command"):
                    examine(client, settings, prefix="session:", pings=1)
                return
            acl = {f.label: f for f in examine(client, settings, prefix="session:", pings=1)}["acl"]
        finally:
            client.close()
            client.connection_pool.disconnect()
    assert acl.exit_code == REFUSED and f"{name} (" in acl.text, acl


def test_a_user_that_may_not_run_acl_dryrun_is_not_checked(cli_run: Cli, raw: redis.Redis) -> None:
    """Exactly the documented commands (the narrowest user the store works with): no ACL DRYRUN, so "not checked",
    and that alone is no reason to fail."""
    port = raw.connection_pool.connection_kwargs["port"]
    rules = [f"+{name}" for name in documented_commands()]
    with temporary_acl_user(raw, "narrow", SECRET, STORE_KEYS, rules=rules):
        run = cli_run("doctor", "--count", "5", env={"REDIS_URL": _url(port, user="narrow", password=SECRET)})
    assert run.code == 0, run
    assert "acl:      not checked (user 'narrow' may not run ACL DRYRUN" in run.stdout


def test_a_user_refused_the_doctors_own_commands_is_one_line_exit_4(cli_run: Cli, raw: redis.Redis) -> None:
    port = raw.connection_pool.connection_kwargs["port"]
    with temporary_acl_user(raw, "no-info", SECRET, STORE_KEYS, rules=("+@all", "-info")):
        run = cli_run("doctor", env={"REDIS_URL": _url(port, user="no-info", password=SECRET)})
    assert_one_line_failure(run, cli.REFUSED, f"127.0.0.1:{port}", "NOPERM", "'info'")
    assert SECRET not in run.output


def test_doctor_on_a_replica_is_unhealthy_exit_5() -> None:
    dead_master = free_port()  # a replica of nobody: it never syncs, and stays read-only
    config = [("replicaof", "127.0.0.1", str(dead_master))]
    with RedisServer("cli-replica", config=config) as replica:
        run = run_cli("doctor", "--count", "5", env={"REDIS_URL": _url(replica.port)})
    assert run.code == cli.UNHEALTHY, run
    assert "server:   FAIL: redis 7." in run.stdout and "role slave" in run.stdout
    assert run.stderr.count("\n") == 1 and f"127.0.0.1:{replica.port}" in run.stderr and "replica" in run.stderr


@pytest.mark.topology
@pytest.mark.timeout(120)
def test_doctor_over_tls_says_whether_the_certificate_is_verified(tls_server: object) -> None:
    from tests.harness.tls import TLSRedis

    assert isinstance(tls_server, TLSRedis)
    url = f"rediss://127.0.0.1:{tls_server.port}/0?ssl_ca_certs={quote(tls_server.certs.ca_file)}"
    run = run_cli("doctor", "--count", "5", env={"REDIS_URL": url})
    assert run.code == 0, run
    assert f"tls:      on, the server's certificate checked against {tls_server.certs.ca_file}" in run.stdout
    run = run_cli("doctor", "--count", "5", env={"REDIS_URL": url, "REDIS_SSL_CERT_REQS": "none"})
    assert run.code == 0, run  # a warning, not a failure: the operator chose it
    assert "tls:      warning: on, the server's certificate is NOT verified" in run.stdout
    # A CA that did not sign the server's certificate: refused, one line.
    other = f"rediss://127.0.0.1:{tls_server.port}/0?ssl_ca_certs={quote(tls_server.certs.other_ca_file)}"
    assert_one_line_failure(run_cli("doctor", env={"REDIS_URL": other}), cli.REFUSED, "ssl_ca_certs")


# --- help and usage ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [[], ["config"], ["doctor"], ["sessions"], ["sessions", "count"], ["sessions", "show"], ["sessions", "user"]],
)
def test_help_for_every_command(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fmredis") and "--url" in out


def test_exit_codes_are_listed_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for code, meaning in cli.EXIT_CODES.items():
        assert f"  {code}  {meaning}" in out


@pytest.mark.parametrize("argv", [[], ["sessions"], ["sessions", "show"], ["doctor", "--count", "0"], ["nope"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == cli.BAD_CONFIGURATION
    assert "usage: fmredis" in capsys.readouterr().err
