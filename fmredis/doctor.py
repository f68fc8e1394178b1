"""The checks behind ``fmredis doctor``: server, parser, latency, ACL permissions on the store's keys, TLS.

:func:`examine` connects through a client from :func:`~fmredis.create_redis_client` and returns one :class:`Finding`
per check, a failing one carrying the exit code the CLI reports. It raises
:class:`~fmredis.errors.StoreUnavailable` when the server cannot be reached and :class:`~fmredis.errors.StoreError`
when it refuses the doctor's own commands (a wrong password, ``NOAUTH``, ``NOPERM`` on ``INFO`` or ``PING``). Nothing it
reports holds a credential; ``ACL DRYRUN`` runs nothing, so no key is read or written.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster

from fmredis.client import RedisClient, diagnostics
from fmredis.config import RedisSettings
from fmredis.errors import StoreError, StoreUnavailable
from fmredis.redis_errors import redis_call

__all__ = ["REFUSED", "STORE_COMMANDS", "UNHEALTHY", "Finding", "examine", "store_commands"]

#: Exit codes of a failing finding: the server refuses what the store needs (ACL), or a check found it unfit.
REFUSED = 4
UNHEALTHY = 5

#: The commands the store sends (docs/deployment.md lists the same ones), by the key they touch: "s" a session key,
#: "i" a user's index, "l" the logout notes (the index prefix itself), None no key.
STORE_COMMANDS: tuple[tuple[str, str | None], ...] = (
    ("GET", "s"),
    ("SET", "s"),
    ("GETEX", "s"),
    ("EXPIRE", "s"),
    ("EXPIREAT", "i"),
    ("PTTL", "s"),
    ("MGET", "s"),
    ("EXISTS", "s"),
    ("UNLINK", "s"),
    ("UNLINK", "i"),
    ("WATCH", "s"),
    ("WATCH", "i"),
    ("UNWATCH", None),
    ("MULTI", None),
    ("EXEC", None),
    ("EVAL", "s"),
    ("EVALSHA", "s"),
    ("SCRIPT|LOAD", None),
    ("ZRANGE", "i"),
    ("ZREM", "i"),
    ("ZADD", "i"),
    ("ZREMRANGEBYSCORE", "l"),
    ("ZMSCORE", "l"),
    ("TYPE", "s"),  # inside the store's scripts, which run with the user's permissions
    ("ZCARD", "i"),
    ("PING", None),
    ("INFO", None),
)
_MIN_VERSION = (7, 0)
_PROBE_ID = "fmredis-doctor-probe"  # never written: ACL DRYRUN only asks whether the command would be allowed
_SCRIPT = "return 0"
_SHA = "0" * 40


@dataclass(frozen=True)
class Finding:
    """One line of the report: ``label: text``; ``exit_code`` is 0 unless the check failed, ``warning`` marks what
    works but deserves a look (no hiredis, TLS without verification)."""

    label: str
    text: str
    exit_code: int = 0
    warning: bool = False


def store_commands(settings: RedisSettings) -> list[str]:
    """The command names checked for ``settings`` (``CLIENT|SETNAME`` with a client name, ``SELECT`` off db 0)."""
    return list(dict.fromkeys(name for name, _key in _probes(settings)))


def examine(client: RedisClient, settings: RedisSettings, *, prefix: str, pings: int = 200) -> list[Finding]:
    """Run every check against the server behind ``client`` (one node of a cluster); see the module docstring."""
    report = diagnostics(client)
    node = _one_node(client)
    with redis_call("INFO"):
        server: dict[str, Any] = node.info("server")
        role = str(node.info("replication").get("role", "unknown"))
    return [
        _server(server, role),
        _mode(server, report),
        _parser(report),
        _latency(node, pings),
        _acl(node, settings, prefix),
        _tls(report, settings),
    ]


def _one_node(client: RedisClient) -> redis.Redis:
    if isinstance(client, RedisCluster):
        return client.get_default_node().redis_connection  # type: ignore[no-untyped-call,no-any-return]
    return client


def _server(server: dict[str, Any], role: str) -> Finding:
    version = str(server.get("redis_version", "unknown"))
    text = f"redis {version}, role {role}"
    try:
        too_old = tuple(int(part) for part in version.split(".")[:2]) < _MIN_VERSION
    except ValueError:
        too_old = False  # a vendor's version string: let the commands speak for themselves
    if too_old:
        return Finding("server", f"{text}: the store needs Redis >= 7.0", UNHEALTHY)
    if role != "master":
        return Finding("server", f"{text}: the store writes, and a replica refuses writes", UNHEALTHY)
    return Finding("server", text)


def _mode(server: dict[str, Any], report: dict[str, Any]) -> Finding:
    topology = report["topology"]
    where = {
        "sentinel": f"master {topology.get('service')} at {topology.get('master')}",
        "cluster": f"{len(topology.get('nodes', []))} nodes",
    }.get(report["mode"], str(topology.get("address")))
    server_mode = server.get("redis_mode", "unknown")
    return Finding("mode", f"{report['mode']} client ({where}), server redis_mode {server_mode}")


def _parser(report: dict[str, Any]) -> Finding:
    if report["hiredis_parser"]:
        return Finding("parser", f"hiredis {report['versions']['hiredis']} ({report['parser']})")
    return Finding("parser", f"{report['parser']}: hiredis is not in use (replies parse slower)", warning=True)


def _latency(node: redis.Redis, pings: int) -> Finding:
    rounds: list[float] = []
    with redis_call("PING"):
        for _ in range(pings):
            start = time.perf_counter()
            node.ping()
            rounds.append(time.perf_counter() - start)
    rounds.sort()
    p50, p99 = (rounds[min(len(rounds) - 1, int(len(rounds) * q))] * 1000 for q in (0.5, 0.99))
    return Finding("latency", f"p50 {p50:.3f} ms, p99 {p99:.3f} ms over {pings} PINGs")


def _acl(node: redis.Redis, settings: RedisSettings, prefix: str) -> Finding:
    """``ACL DRYRUN`` as the connected user for each command the store sends, on a key under ``prefix``."""
    index = "user-sessions:" + prefix
    keys = {"s": prefix + _PROBE_ID, "i": index + _PROBE_ID, "l": index}
    try:
        with redis_call("ACL WHOAMI"):
            user = _command(node, "ACL", "WHOAMI")
    except StoreUnavailable:
        raise
    except StoreError:  # may not ask: DRYRUN then says whether the name is right
        user = settings.username or "default"
    denied: list[str] = []
    try:
        with redis_call("ACL DRYRUN"):
            for name, key_kind in _probes(settings):
                command = [*name.split("|"), *_args(name, key_kind, keys)]
                reply = _command(node, "ACL", "DRYRUN", user, *command)
                if reply != "OK":
                    denied.append(f"{name} ({reply})")
    except StoreUnavailable:
        raise
    except StoreError as exc:
        # A denied command is a reply, not an error: an error here is about ACL DRYRUN itself.
        if "'acl|dryrun'" not in str(exc) and "unknown subcommand" not in str(exc).lower():
            raise
        return Finding("acl", f"not checked (user {user!r} may not run ACL DRYRUN, or the server lacks it)")
    patterns = f"{prefix}* and {index}*"
    if denied:
        return Finding("acl", f"user {user!r} may not run on {patterns}: " + "; ".join(denied), REFUSED)
    return Finding("acl", f"user {user!r} may run all {len(store_commands(settings))} store commands on {patterns}")


def _probes(settings: RedisSettings) -> list[tuple[str, str | None]]:
    """:data:`STORE_COMMANDS`, and ``CLIENT SETNAME`` / ``SELECT`` when the settings make the client send them."""
    probes = list(STORE_COMMANDS)
    if settings.client_name:
        probes.append(("CLIENT|SETNAME", None))
    if settings.db:
        probes.append(("SELECT", None))
    return probes


def _args(name: str, key_kind: str | None, keys: dict[str, str]) -> Sequence[object]:
    key = keys[key_kind] if key_kind else ""
    table: dict[str, list[object]] = {
        "GET": [key],
        "SET": [key, "{}", "EX", 1],
        "GETEX": [key, "EX", 1],
        "EXPIRE": [key, 1],
        "EXPIREAT": [key, 1, "GT"],
        "PTTL": [key],
        "MGET": [key],
        "EXISTS": [key],
        "UNLINK": [key],
        "WATCH": [key],
        "EVAL": [_SCRIPT, 2, key, keys["i"]],
        "EVALSHA": [_SHA, 2, key, keys["i"]],
        "SCRIPT|LOAD": [_SCRIPT],
        "ZRANGE": [key, 0, -1],
        "ZREM": [key, "m"],
        "ZADD": [key, 1, "m"],
        "ZREMRANGEBYSCORE": [key, "-inf", 0],
        "ZMSCORE": [key, "m"],
        "TYPE": [key],
        "ZCARD": [key],
        "CLIENT|SETNAME": ["fmredis-doctor"],
        "SELECT": [1],
    }
    return table.get(name, [])


def _tls(report: dict[str, Any], settings: RedisSettings) -> Finding:
    if not report["tls"]:
        return Finding("tls", "off")
    if settings.ssl_cert_reqs == "none":
        return Finding("tls", "on, the server's certificate is NOT verified (ssl_cert_reqs=none)", warning=True)
    ca = settings.ssl_ca_certs or "the system's CAs"
    return Finding("tls", f"on, the server's certificate checked against {ca} (ssl_cert_reqs={settings.ssl_cert_reqs})")


def _command(node: redis.Redis, *args: object) -> str:
    """One command's reply as text (redis-py leaves ``execute_command`` untyped)."""
    return _text(node.execute_command(*args))  # type: ignore[no-untyped-call]


def _text(reply: object) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
