"""RedisSettings: the connection settings, one frozen value, each field parsed and range-checked once.

:func:`fmredis.config.resolve_settings` builds one from the configuration hierarchy; constructing one directly also
validates every field. Durations are bounded (at most a day), so a value the socket layer cannot take fails here and
not on the first command.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from fmredis.checks import MAX_SECONDS
from fmredis.errors import ConfigurationError

__all__ = ["DEFAULT", "FIELDS", "FIELD_NAMES", "MODES", "PARSE", "SECRET", "RedisSettings"]

DEFAULT = "default"
_MASK = "***"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_CERT_REQS = frozenset({"required", "optional", "none"})
MODES = ("standalone", "sentinel", "cluster")


# --- parsing: turn a raw value (typed, or a string from a URL / environment) into the field's type --------------------


def _as_str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("must be a string")
    return value


def _as_lower(value: object) -> str:
    return _as_str(value).strip().lower()


def _as_int(value: object) -> int:
    if isinstance(value, bool):
        raise TypeError("must be an integer, not a bool")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise ValueError("must be an integer") from None
    raise TypeError("must be an integer")


def _as_float(value: object) -> float:
    if isinstance(value, bool):
        raise TypeError("must be a number of seconds, not a bool")
    if isinstance(value, (int, float)):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            raise ValueError("must be a number of seconds") from None
    else:
        raise TypeError("must be a number of seconds")
    if not math.isfinite(result):
        raise ValueError("must be a finite number of seconds")
    return result


def _as_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("must be one of true/false, yes/no, on/off, 1/0")


def _as_nodes(value: object) -> tuple[tuple[str, int], ...]:
    """``"host:port,host:port"`` (or a sequence of ``"host:port"`` / ``(host, port)``) as a tuple of pairs."""
    if isinstance(value, str):
        items: list[object] = [item for item in (part.strip() for part in value.split(",")) if item]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise TypeError('must be "host:port,host:port" or a sequence of (host, port)')
    if not items:
        raise ValueError("must name at least one host:port")
    nodes = []
    for item in items:
        if isinstance(item, str):
            host, colon, port = item.rpartition(":")
            if not colon or not host:
                raise ValueError("needs host:port entries")  # the text is not quoted: in a URL it may be a password
            item = (host[1:-1] if host.startswith("[") and host.endswith("]") else host, port)
        if not (isinstance(item, (list, tuple)) and len(item) == 2):
            raise TypeError('must be "host:port,host:port" or a sequence of (host, port)')
        host, port = item
        try:
            nodes.append((_as_str(host), _as_int(port)))
        except (TypeError, ValueError):
            raise ValueError("needs host:port entries with numeric ports") from None
    return tuple(nodes)


# --- range checks, run by attrs on every construction --------------------------------------------------------------


def _check(predicate: Callable[[Any], bool], problem: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def validator(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not predicate(value):
            raise ConfigurationError(f"{attribute.name} {problem}", key=attribute.name)

    return validator


_non_empty = _check(lambda v: bool(v.strip()), "must not be empty")
# A URL pasted into REDIS_HOST would otherwise reach log lines and error messages whole, password included.
_host = _check(
    lambda v: bool(v) and not any(c.isspace() or c in "/@?#" for c in v),
    "must be a bare host name or address (a URL belongs in REDIS_URL or url=)",
)
_port = _check(lambda v: 1 <= v <= 65535, "must be between 1 and 65535")
_non_negative = _check(lambda v: v >= 0, "must not be negative")
_positive = _check(lambda v: v > 0, "must be greater than 0")
_a_day_at_most = _check(lambda v: v <= MAX_SECONDS, f"must be at most {MAX_SECONDS:g} seconds (one day)")
_at_least_one = _check(lambda v: v >= 1, "must be at least 1")
_no_spaces = _check(lambda v: bool(v) and not any(c.isspace() for c in v), "must be non-empty, without spaces")
_cert_reqs = _check(lambda v: v in _CERT_REQS, "must be one of: required, optional, none")
_mode = _check(lambda v: v in MODES, "must be one of: " + ", ".join(MODES))


def _valid_node(node: object) -> bool:
    if not (isinstance(node, tuple) and len(node) == 2):
        return False
    host, port = node
    return (
        isinstance(host, str)
        and bool(host)
        and not any(c.isspace() or c in "/@?#," for c in host)
        and type(port) is int
        and 1 <= port <= 65535
    )


_nodes = _check(
    lambda v: bool(v) and all(_valid_node(node) for node in v),
    "must list bare host:port pairs (hosts without URL parts, ports 1-65535)",
)
_name = _check(
    lambda v: bool(v) and not any(c.isspace() or c in "/@:?#," for c in v),
    "must be a bare name (no spaces, '/', '@', ':', '?', '#' or ',')",
)


_TYPES: dict[Callable[[object], Any], tuple[type, ...]] = {
    _as_str: (str,),
    _as_lower: (str,),
    _as_int: (int,),
    _as_float: (int, float),
    _as_bool: (bool,),
    _as_nodes: (tuple,),
}


def _typed(parse: Callable[[object], Any], optional: bool) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    """Direct construction gets typed values only (resolution has already parsed strings)."""
    expected = _TYPES[parse]

    def validator(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and not optional:
            raise ConfigurationError(f"{attribute.name} must not be None", key=attribute.name)
        wrong_bool = isinstance(value, bool) and bool not in expected
        if value is not None and (wrong_bool or not isinstance(value, expected)):
            raise ConfigurationError(f"{attribute.name} must be {expected[-1].__name__}", key=attribute.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigurationError(f"{attribute.name} must be finite", key=attribute.name)

    return validator


def _setting(default: Any, parse: Callable[[object], Any], *checks: Any, secret: bool = False) -> Any:
    return attrs.field(
        default=default,
        validator=[_typed(parse, optional=default is None), *checks],
        repr=(lambda v: repr(_MASK) if v else repr(v)) if secret else True,
        metadata={"parse": parse, "secret": secret},
    )


def _mask_or_show(value: object, secret: bool) -> str:
    return _MASK if secret and value else repr(value)


@attrs.frozen
class RedisSettings:
    """Resolved, validated connection settings (immutable; safe to share between threads).

    Build one with :func:`resolve_settings`; constructing it directly also validates every field. The password is
    masked in ``repr`` and in :meth:`explain`.
    """

    host: str = _setting("localhost", _as_str, _host)
    port: int = _setting(6379, _as_int, _port)
    db: int = _setting(0, _as_int, _non_negative)
    username: str | None = _setting(None, _as_str)
    password: str | None = _setting(None, _as_str, secret=True)
    ssl: bool = _setting(False, _as_bool)
    ssl_ca_certs: str | None = _setting(None, _as_str)
    ssl_certfile: str | None = _setting(None, _as_str)
    ssl_keyfile: str | None = _setting(None, _as_str)
    ssl_cert_reqs: str = _setting("required", _as_lower, _cert_reqs)
    unix_socket_path: str | None = _setting(None, _as_str, _non_empty)
    #: RESP version. 2 works with every server; under 3 redis-py 8 adds a maintenance-notification handshake (and a
    #: DEBUG record when the server lacks it) to every new connection, and fmredis uses nothing RESP3 adds.
    protocol: int = _setting(2, _as_int, _check(lambda v: v in (2, 3), "must be 2 or 3"))
    #: Sent with CLIENT SETNAME on each new connection, so CLIENT LIST shows which worker a connection belongs to.
    client_name: str | None = _setting(None, _as_str, _no_spaces)
    max_connections: int = _setting(20, _as_int, _at_least_one)
    socket_connect_timeout: float = _setting(5.0, _as_float, _positive, _a_day_at_most)
    socket_timeout: float = _setting(10.0, _as_float, _positive, _a_day_at_most)
    #: How long a caller waits for a free pooled connection before StoreUnavailable.
    pool_timeout: float = _setting(5.0, _as_float, _non_negative, _a_day_at_most)
    #: A connection idle this many seconds is PINGed before reuse; 0 turns the check off.
    health_check_interval: int = _setting(30, _as_int, _non_negative, _a_day_at_most)
    #: Retries of a command after a connection error or timeout (redis-py's Retry on every pooled connection).
    retry_attempts: int = _setting(1, _as_int, _non_negative, _check(lambda v: v <= 100, "must be at most 100"))
    retry_backoff_base: float = _setting(0.05, _as_float, _non_negative, _a_day_at_most)
    retry_backoff_cap: float = _setting(1.0, _as_float, _non_negative, _a_day_at_most)
    #: standalone (one server at host:port or unix_socket_path), sentinel (the master Sentinel names), or cluster.
    mode: str = _setting("standalone", _as_lower, _mode)
    #: Sentinel mode: the sentinels to ask, ``"host:port,host:port"`` in a URL or variable (REDIS_SENTINELS).
    sentinels: tuple[tuple[str, int], ...] | None = _setting(None, _as_nodes, _nodes)
    #: Sentinel mode: the monitored master's name (``sentinel monitor <name> ...``).
    sentinel_master: str | None = _setting(None, _as_str, _name)
    #: Credentials for the sentinels themselves (their requirepass / ACL), when they differ from none.
    sentinel_username: str | None = _setting(None, _as_str)
    sentinel_password: str | None = _setting(None, _as_str, secret=True)
    #: Cluster mode: nodes to discover the cluster from (any reachable one will do); default ``host:port``.
    cluster_nodes: tuple[tuple[str, int], ...] | None = _setting(None, _as_nodes, _nodes)
    #: Which source supplied each field ("default", "argument", "REDIS_URL", ...); not part of equality.
    sources: Mapping[str, str] = attrs.field(factory=dict, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.ssl and self.unix_socket_path is not None:
            raise ConfigurationError("ssl cannot be used with unix_socket_path", key="ssl")
        if self.mode != "sentinel":
            for name in ("sentinels", "sentinel_master"):
                if getattr(self, name) is not None:
                    raise ConfigurationError(f"{name} is set but mode is {self.mode!r}; set mode=sentinel", key=name)
        if self.mode != "cluster" and self.cluster_nodes is not None:
            raise ConfigurationError(
                f"cluster_nodes is set but mode is {self.mode!r}; set mode=cluster", key="cluster_nodes"
            )
        if self.mode == "sentinel":
            for name in ("sentinels", "sentinel_master"):
                if getattr(self, name) is None:
                    mode_from = self.source_of("mode")
                    raise ConfigurationError(f"mode sentinel (from {mode_from}) needs {name}", key=name)
        if self.mode != "standalone" and self.unix_socket_path is not None:
            raise ConfigurationError(f"mode {self.mode} cannot use unix_socket_path", key="unix_socket_path")
        if self.mode == "cluster" and self.db != 0:
            raise ConfigurationError("mode cluster has only database 0", key="db")

    @property
    def nodes(self) -> tuple[tuple[str, int], ...]:
        """The addresses the client is given: the sentinels, the cluster's seed nodes, or the one server."""
        if self.mode == "sentinel" and self.sentinels:
            return self.sentinels
        if self.mode == "cluster" and self.cluster_nodes:
            return self.cluster_nodes
        return ((self.host, self.port),)

    @property
    def address(self) -> str:
        """Where connections go, for messages (never a credential): ``redis://host:port/db``, ``unix:path``,
        ``redis+sentinel://s1:p1,s2:p2/master/db`` or ``redis+cluster://n1:p1,n2:p2``."""
        scheme = "rediss" if self.ssl else "redis"
        if self.unix_socket_path:
            return f"{scheme}://unix:{self.unix_socket_path}/{self.db}"
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.nodes)
        if self.mode == "sentinel":
            return f"{scheme}+sentinel://{hosts}/{self.sentinel_master}/{self.db}"
        if self.mode == "cluster":
            return f"{scheme}+cluster://{hosts}"
        return f"{scheme}://{hosts}/{self.db}"

    def source_of(self, name: str) -> str:
        """The source that supplied field ``name``."""
        return self.sources.get(name, DEFAULT)

    def explain(self) -> str:
        """A table of every field, its value and the source that supplied it; the password is masked."""
        rows = [
            (f.name, _mask_or_show(getattr(self, f.name), f.metadata["secret"]), self.source_of(f.name)) for f in FIELDS
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        return "\n".join(f"{n:<{widths[0]}}  {v:<{widths[1]}}  {s}" for n, v, s in rows)


#: The settings fields (``sources`` aside), their names, parsers, and which hold secrets: for the resolution.
FIELDS = tuple(f for f in attrs.fields(RedisSettings) if f.name != "sources")
FIELD_NAMES = frozenset(f.name for f in FIELDS)
PARSE = {f.name: f.metadata["parse"] for f in FIELDS}
SECRET = frozenset(f.name for f in FIELDS if f.metadata["secret"])
