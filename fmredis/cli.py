"""``fmredis`` (also ``python -m fmredis``): check a deployment and inspect its sessions from a shell.

Commands: ``config`` (the resolved settings and where each came from), ``doctor`` (connect and check the server, see
:mod:`fmredis.doctor`), ``sessions count|show|user|logout`` (see :mod:`fmredis.session_admin`). Settings come from the
configuration hierarchy (:mod:`fmredis.config`): the connection options below are its explicit tier (``--url`` takes
``REDIS_URL``'s place), then ``REDIS_URL``, then ``REDIS_*`` variables. A failure is one line on stderr naming the
address (never a credential or a session id) and an exit code from the table below; no traceback. docs/cli.md has the
reference.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

import orjson

from fmredis import __version__
from fmredis.client import RedisClient, create_redis_client
from fmredis.config import RedisSettings, resolve_settings
from fmredis.doctor import REFUSED, UNHEALTHY, examine
from fmredis.errors import (
    ConfigurationError,
    InvalidKeyError,
    SessionNotFound,
    StoreError,
    StoreUnavailable,
    UpdateConflict,
)
from fmredis.session_admin import count_sessions, logout_user, show_session, user_sessions

__all__ = ["EXIT_CODES", "main"]

OK, NOT_FOUND, BAD_CONFIGURATION, UNREACHABLE = 0, 1, 2, 3  # REFUSED (4), UNHEALTHY (5): see fmredis.doctor
#: Exit codes and what they mean (printed by ``--help``).
EXIT_CODES = {
    OK: "success (doctor: healthy)",
    NOT_FOUND: "no such session, or a logout lost to concurrent logins",
    BAD_CONFIGURATION: "bad configuration or usage",
    UNREACHABLE: "Redis unreachable (connection refused or lost, timeout)",
    REFUSED: "Redis refused (wrong password, NOAUTH, an ACL permission missing, untrusted TLS certificate)",
    UNHEALTHY: "doctor: connected, but a check failed (server too old, a replica)",
}
_PROGRESS_EVERY = 0.1  # seconds between two updates of the count's progress line
DEFAULT_PREFIX = "session:"  # RedisSessionStore's
_Run = Callable[[argparse.Namespace, RedisSettings], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (see :data:`EXIT_CODES`)."""
    args = _parser().parse_args(argv)
    command = " ".join(["fmredis", args.command, *([args.action] if hasattr(args, "action") else [])])
    settings: RedisSettings | None = None
    try:
        settings = _settings(args)
        code: int = args.run(args, settings)
        return code
    except ConfigurationError as exc:
        return _fail(command, f"configuration error: {exc}", BAD_CONFIGURATION, settings)
    except InvalidKeyError as exc:
        return _fail(command, str(exc), BAD_CONFIGURATION, settings)
    except (SessionNotFound, UpdateConflict) as exc:
        return _fail(command, str(exc), NOT_FOUND, settings)
    except StoreUnavailable as exc:
        return _fail(command, f"{_address(settings)}: unreachable: {exc}", UNREACHABLE, settings)
    except StoreError as exc:
        return _fail(command, f"{_address(settings)}: refused: {exc}", REFUSED, settings)
    except KeyboardInterrupt:
        return _fail(command, "interrupted", 130, settings)
    except BrokenPipeError:  # stdout closed early (| head): no traceback, and none at exit when Python flushes it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it


def _address(settings: RedisSettings | None) -> str:
    return settings.address if settings is not None else "Redis"


def _fail(command: str, message: str, code: int, settings: RedisSettings | None) -> int:
    """One line on stderr, any secret of ``settings`` masked (belt and braces: no message should hold one)."""
    for secret in (settings.password, settings.sentinel_password) if settings is not None else ():
        if secret:
            message = message.replace(secret, "***")
    print(f"{command}: {' '.join(message.split())}", file=sys.stderr)
    return code


# --- argument parsing --------------------------------------------------------------------------------------------

#: Connection options: (flag, setting, help). Values are passed as text; the resolution parses and checks them.
_CONNECTION = (
    ("--host", "host", "server host name or address"),
    ("--port", "port", "server port"),
    ("--db", "db", "database number"),
    ("--username", "username", "ACL user (the password: REDIS_PASSWORD or the URL, not the command line)"),
)


def _connection_options() -> argparse.ArgumentParser:
    """The connection options, accepted before or after the command (SUPPRESS: only a given one sets a value)."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("connection (the explicit tier of the configuration hierarchy)")
    group.add_argument("--url", default=argparse.SUPPRESS, help="Redis URL; takes REDIS_URL's place")
    for flag, _name, text in _CONNECTION:
        group.add_argument(flag, default=argparse.SUPPRESS, help=text)
    group.add_argument(
        "--timeout", default=argparse.SUPPRESS, metavar="SECONDS", help="connect and socket timeout, in seconds"
    )
    return options


def _prefix_option() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--prefix",
        default=argparse.SUPPRESS,
        help='the store\'s key prefix (default "session:"; the Django engine uses "django-session:", '
        'Flask "flask-session:")',
    )
    return options


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _parser() -> argparse.ArgumentParser:
    connection, prefix = _connection_options(), _prefix_option()
    epilog = "exit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items())
    formatter = argparse.RawDescriptionHelpFormatter
    what = "Check an fmredis deployment and inspect its sessions."
    parser = argparse.ArgumentParser(
        prog="fmredis", description=what, parents=[connection], epilog=epilog, formatter_class=formatter
    )
    parser.add_argument("--version", action="version", version=f"fmredis {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str, *extra: argparse.ArgumentParser, run: _Run | None) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[connection, *extra], help=text, description=text, epilog=epilog,
                                  formatter_class=formatter)  # fmt: skip
        sub.set_defaults(run=run)
        return sub

    command("config", "show the resolved settings and where each came from (password masked)", run=_config)
    doctor = command("doctor", "connect and check: version, mode, parser, latency, ACL, TLS", prefix, run=_doctor)
    doctor.add_argument("--count", type=_positive, default=200, help="PINGs for the latency figures (default 200)")

    sessions = command("sessions", "count, inspect and log out sessions", prefix, run=None).add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    parents = [connection, prefix]
    for name, text in (
        ("count", "count the keys under the prefix (SCAN, never KEYS)"),
        ("show", "a session's metadata (payload values only with --payload)"),
        ("user", "list the ids of a user's live sessions"),
        ("logout", "remove every session of a user"),
    ):
        sessions.add_parser(name, parents=parents, help=text, description=text)
    show = sessions.choices["show"]
    dash = "; one starting with '-' goes after '--' (a generated id does one time in 64)"
    show.add_argument("session_id", metavar="ID", help="the session's id" + dash)
    show.add_argument("--payload", action="store_true", help="also print the stored document, values included")
    for name in ("user", "logout"):
        sessions.choices[name].add_argument("user_id", metavar="USER_ID", help="the user's id" + dash)
    for name, choice in sessions.choices.items():
        choice.set_defaults(run=_SESSION_ACTIONS[name])
    return parser


def _prefix(args: argparse.Namespace) -> str:
    return str(getattr(args, "prefix", DEFAULT_PREFIX))


def _settings(args: argparse.Namespace) -> RedisSettings:
    explicit: dict[str, Any] = {name: getattr(args, name) for _f, name, _t in _CONNECTION if hasattr(args, name)}
    if hasattr(args, "timeout"):
        explicit["socket_connect_timeout"] = explicit["socket_timeout"] = args.timeout
    return resolve_settings(url=getattr(args, "url", None), **explicit)


@contextmanager
def _client(settings: RedisSettings) -> Iterator[RedisClient]:
    client = create_redis_client(settings)
    try:
        yield client
    finally:
        client.close()
        pool = getattr(client, "connection_pool", None)  # a pool passed in outlives close(); a cluster has none
        if pool is not None:
            pool.disconnect()


# --- the commands ------------------------------------------------------------------------------------------------


def _config(args: argparse.Namespace, settings: RedisSettings) -> int:
    print(f"address: {settings.address}\n")
    print(settings.explain())
    return OK


def _doctor(args: argparse.Namespace, settings: RedisSettings) -> int:
    with _client(settings) as client:
        findings = examine(client, settings, prefix=_prefix(args), pings=args.count)
    print(f"{'address:':<9} {settings.address}")
    for finding in findings:
        mark = "FAIL: " if finding.exit_code else "warning: " if finding.warning else ""
        print(f"{finding.label + ':':<9} {mark}{finding.text}")
    failed = [finding for finding in findings if finding.exit_code]
    if not failed:
        print("healthy")
        return OK
    print(f"unhealthy: {len(failed)} check(s) failed")
    first = failed[0]
    sys.stdout.flush()
    return _fail("fmredis doctor", f"{settings.address}: {first.label}: {first.text}", first.exit_code, settings)


def _count(args: argparse.Namespace, settings: RedisSettings) -> int:
    prefix = _prefix(args)
    with _client(settings) as client, _progress(sys.stderr, f"scanning {prefix}*") as progress:
        found = count_sessions(client, prefix, progress)
    print(found)
    return OK


@contextmanager
def _progress(stream: TextIO, what: str) -> Iterator[Callable[[int], None] | None]:
    """A counter line updated in place on ``stream`` when it is a terminal (at most every 0.1 s), cleared after."""
    if not stream.isatty():
        yield None
        return
    shown_at, width = float("-inf"), 0

    def update(found: int) -> None:
        nonlocal shown_at, width
        now = time.monotonic()
        if now - shown_at >= _PROGRESS_EVERY:
            line = f"{what}: {found:,} keys"
            stream.write("\r" + line)
            stream.flush()
            shown_at, width = now, max(width, len(line))

    try:
        yield update
    finally:
        stream.write("\r" + " " * width + "\r")
        stream.flush()


def _show(args: argparse.Namespace, settings: RedisSettings) -> int:
    with _client(settings) as client:
        info = show_session(client, _prefix(args), args.session_id)
    print(f"{'session':<14} {info.ref} (reference: the first 16 hex digits of the id's SHA-256)")
    for name, value in info.metadata().items():
        if name == "ttl":
            value = "no expiry" if value == -1 else f"{value} s"
        elif name == "size":
            value = f"{value} bytes"
        elif isinstance(value, list):
            value = ", ".join(map(str, value)) or "(none)"
        print(f"{name:<14} {'-' if value is None else value}")
    if args.payload:
        print("payload")
        print(orjson.dumps(info.payload, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
    return OK


def _user(args: argparse.Namespace, settings: RedisSettings) -> int:
    with _client(settings) as client:
        for session_id in user_sessions(client, _prefix(args), args.user_id):
            print(session_id)
    return OK


def _logout(args: argparse.Namespace, settings: RedisSettings) -> int:
    with _client(settings) as client:
        removed = logout_user(client, _prefix(args), args.user_id)
    print(f"removed {removed} session(s) of user {args.user_id}")
    return OK


_SESSION_ACTIONS: dict[str, _Run] = {
    "count": _count,
    "show": _show,
    "user": _user,
    "logout": _logout,
}
