"""Connection settings: one frozen, validated value resolved once from five tiers.

Resolution, highest priority first, merged field by field:

1. explicit keyword arguments (``None`` means "not given");
2. a URL: the ``url=`` argument, else the ``REDIS_URL`` environment variable (``redis://``, ``rediss://``, ``unix://``,
   ``redis+sentinel://`` and ``redis+cluster://`` (``rediss+...`` for TLS), with query parameters named like the
   settings);
3. a configuration manager: any object with ``get_redis_settings() -> Mapping[str, object]`` (:class:`ConfigManager`);
4. individual environment variables, ``REDIS_<SETTING>`` (``REDIS_HOST``, ``REDIS_PORT``, ``REDIS_PASSWORD`` ...);
5. the defaults below.

A tier that names an address (``host`` or ``unix_socket_path``) clears the other kind of address for the tiers below it,
so an explicit ``host=`` beats a ``unix://`` URL. Each resolved field remembers its source; ``explain()`` prints them.
Nothing downstream reads the environment again.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs

from fmredis.errors import ConfigurationError

__all__ = ["ConfigManager", "RedisSettings", "resolve_settings"]

DEFAULT = "default"
_MASK = "***"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_CERT_REQS = frozenset({"required", "optional", "none"})
MODES = ("standalone", "sentinel", "cluster")
_ADDRESS_FIELDS = ("host", "unix_socket_path")
_SETTING_LIKE = re.compile(r"[a-z_]{1,40}")


@runtime_checkable
class ConfigManager(Protocol):
    """What a pluggable configuration manager must provide.

    ``get_redis_settings()`` returns a mapping from setting names (the fields of :class:`RedisSettings`, e.g.
    ``"host"``, ``"port"``, ``"password"``) to values, either typed (``6380``) or strings as read from a file
    (``"6380"``). Keys it does not set may be absent or ``None``. An unknown key is a :class:`ConfigurationError`.
    It is called once per resolution.
    """

    def get_redis_settings(self) -> Mapping[str, object]: ...


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
    socket_connect_timeout: float = _setting(5.0, _as_float, _positive)
    socket_timeout: float = _setting(10.0, _as_float, _positive)
    #: How long a caller waits for a free pooled connection before StoreUnavailable.
    pool_timeout: float = _setting(5.0, _as_float, _non_negative)
    #: A connection idle this many seconds is PINGed before reuse; 0 turns the check off.
    health_check_interval: int = _setting(30, _as_int, _non_negative)
    #: Retries of a command after a connection error or timeout (redis-py's Retry on every pooled connection).
    retry_attempts: int = _setting(1, _as_int, _non_negative)
    retry_backoff_base: float = _setting(0.05, _as_float, _non_negative)
    retry_backoff_cap: float = _setting(1.0, _as_float, _non_negative)
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
            (f.name, _mask_or_show(getattr(self, f.name), f.metadata["secret"]), self.source_of(f.name))
            for f in _FIELDS
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        return "\n".join(f"{n:<{widths[0]}}  {v:<{widths[1]}}  {s}" for n, v, s in rows)


_FIELDS = tuple(f for f in attrs.fields(RedisSettings) if f.name != "sources")
_FIELD_NAMES = frozenset(f.name for f in _FIELDS)
_PARSE = {f.name: f.metadata["parse"] for f in _FIELDS}
_SECRET = frozenset(f.name for f in _FIELDS if f.metadata["secret"])


# Never quoted back: secrets, and node lists (a URL pasted into REDIS_SENTINELS would carry its password).
_NO_ECHO = _SECRET | {"sentinels", "cluster_nodes"}


def _describe(value: object, name: str, echo: bool) -> str:
    return f" (got {value!r})" if echo and name not in _NO_ECHO else ""


def _parse_tier(
    raw: Mapping[str, object], label: Callable[[str], str], *, echo: bool = True
) -> dict[str, tuple[Any, str]]:
    """Parse one tier's raw values; returns ``{field: (value, source label)}``. ``None`` means not given."""
    parsed: dict[str, tuple[Any, str]] = {}
    for name, value in raw.items():
        source = label(name)
        if name not in _FIELD_NAMES:
            raise ConfigurationError(f"{source}: unknown setting {name!r}", key=name, source=source)
        if value is None:
            continue
        try:
            parsed[name] = (_PARSE[name](value), source)
        except (TypeError, ValueError) as exc:
            message = f"{source}: {name} {exc}{_describe(value, name, echo)}"
            raise ConfigurationError(message, key=name, source=source) from None
    if all(name in parsed for name in _ADDRESS_FIELDS):
        source = parsed["host"][1]
        raise ConfigurationError(f"{source}: give host or unix_socket_path, not both", key="host", source=source)
    return parsed


def _url_tier(url: str, label: str) -> dict[str, object]:
    """Split a Redis URL into raw setting values (strings), without echoing the URL (it may hold a password)."""

    def fail(problem: str, key: str | None = None) -> ConfigurationError:
        return ConfigurationError(f"{label}: {problem}", key=key, source=label)

    scheme, plus, mode = url.strip().partition("://")[0].lower().partition("+")
    if plus and scheme in ("redis", "rediss") and mode in ("sentinel", "cluster"):
        return _multi_host_url(url.strip(), scheme == "rediss", mode, fail)
    try:
        parts = urlsplit(url.strip())
        hostname, port = parts.hostname, parts.port
    except ValueError:
        # Not urlsplit's message: with an unencoded '#', '/' or '@' in the password, the "port" it quotes is part of
        # the password.
        raise fail("malformed URL: bad host or port (percent-encode '@', ':', '/', '#' in credentials)") from None
    raw: dict[str, object] = {"mode": "standalone"}  # the scheme says what the URL points at
    if parts.scheme in ("redis", "rediss"):
        if not hostname:
            raise fail("the URL has no host", "host")
        raw.update(host=unquote(hostname), port=port, ssl=parts.scheme == "rediss")
    elif parts.scheme == "unix":
        if not parts.path:
            raise fail("a unix:// URL needs a socket path", "unix_socket_path")
        raw["unix_socket_path"] = unquote(parts.path)
    else:
        scheme = parts.scheme or "(none)"
        raise fail(
            f"unknown URL scheme {scheme!r}; use redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://"
        )
    raw["username"] = unquote(parts.username) if parts.username else None
    raw["password"] = unquote(parts.password) if parts.password else None
    if parts.scheme != "unix" and parts.path.strip("/"):
        raw["db"] = parts.path.strip("/")
    _add_query(raw, parts.query, fail)
    return raw


_IN_URL_ONLY_AS_ADDRESS = frozenset({"host", "port", "unix_socket_path", "sentinels", "cluster_nodes", "mode"})


def _add_query(raw: dict[str, object], query_text: str, fail: Callable[..., ConfigurationError]) -> None:
    try:
        query = parse_qsl(query_text, keep_blank_values=True, strict_parsing=bool(query_text))
    except ValueError:
        raise fail("malformed query string") from None
    for key, value in query:
        if key not in _FIELD_NAMES or key in _IN_URL_ONLY_AS_ADDRESS:
            # Named only when it looks like a setting name: an unencoded '?' in a password makes its tail a "key".
            shown = f" {key!r}" if _SETTING_LIKE.fullmatch(key) else ""
            raise fail(f"unknown or misplaced query parameter{shown}", key if shown else None)
        if key != "ssl" and raw.get(key) is not None:  # an explicit ?ssl= may restate or override the scheme's
            raise fail(f"{key} is given twice", key)
        raw[key] = value or None  # an empty value (?password=) is not given


def _multi_host_url(url: str, tls: bool, mode: str, fail: Callable[..., ConfigurationError]) -> dict[str, object]:
    """``redis+sentinel://[user[:password]@]s1:p1,s2:p2/<master>[/<db>]`` or ``redis+cluster://[...@]n1:p1,n2:p2``
    (``rediss+`` for TLS to the data nodes), split by hand: ``urlsplit`` cannot read a list of hosts."""
    rest = url.partition("://")[2]
    rest, _, query = rest.partition("?")
    rest = rest.partition("#")[0]
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if not hosts:
        raise fail(
            f"a {mode} URL needs host:port[,host:port...]", "sentinels" if mode == "sentinel" else "cluster_nodes"
        )
    raw: dict[str, object] = {"mode": mode, "ssl": tls}
    raw["sentinels" if mode == "sentinel" else "cluster_nodes"] = unquote(hosts)
    if at:
        username, colon, password = userinfo.partition(":")
        raw["username"] = unquote(username) if username else None
        raw["password"] = unquote(password) if colon and password else None
    segments = [unquote(segment) for segment in path.split("/") if segment] if slash else []
    if mode == "sentinel":
        if not segments or len(segments) > 2:
            raise fail("a sentinel URL needs /<master name>[/<db>] after the hosts", "sentinel_master")
        raw["sentinel_master"] = segments[0]
        raw["db"] = segments[1] if len(segments) == 2 else None
    elif segments:
        raise fail("a cluster URL takes no path (a cluster has only database 0)", "db")
    _add_query(raw, query, fail)
    return raw


def resolve_settings(
    *,
    url: str | None = None,
    config_manager: ConfigManager | None = None,
    environ: Mapping[str, str] | None = None,
    **explicit: object,
) -> RedisSettings:
    """Resolve settings from the five tiers (see the module docstring) into a validated :class:`RedisSettings`.

    ``url`` takes the place of ``REDIS_URL``; ``environ`` defaults to ``os.environ``. Raises
    :class:`ConfigurationError` naming the source and the key of the first bad value.
    """
    env = os.environ if environ is None else environ
    if url is not None:
        url_label = "argument url"
    else:
        url, url_label = env.get("REDIS_URL") or None, "REDIS_URL"
    manager_raw: Mapping[str, object] = {}
    if config_manager is not None:
        manager_raw = config_manager.get_redis_settings()
        if not isinstance(manager_raw, Mapping):
            raise ConfigurationError(
                "config manager: get_redis_settings() must return a mapping", source="config manager"
            )

    tiers = [  # highest priority first
        _parse_tier(explicit, lambda name: f"argument {name}"),
        # URL values are never quoted back: with an unencoded '/', '#' or '@' in the password, what lands in the db
        # path or port is part of the password.
        _parse_tier(_url_tier(url, url_label), lambda _name: url_label, echo=False) if url else {},
        _parse_tier(manager_raw, lambda name: f"config manager key {name!r}"),
        _parse_tier(
            {f.name: env.get(f"REDIS_{f.name.upper()}") or None for f in _FIELDS},
            lambda name: f"environment variable REDIS_{name.upper()}",
        ),
    ]
    merged: dict[str, tuple[Any, str]] = {}
    for tier in tiers:
        for name, (value, source) in tier.items():
            merged.setdefault(name, (value, source))
        # An address named at this tier hides the other kind of address given by any lower tier.
        for name, other in (_ADDRESS_FIELDS, _ADDRESS_FIELDS[::-1]):
            if name in tier and other not in merged:
                merged[other] = (None if other == "unix_socket_path" else "localhost", tier[name][1])

    values = {name: value for name, (value, _source) in merged.items()}
    sources = {name: merged[name][1] if name in merged else DEFAULT for name in sorted(_FIELD_NAMES)}
    try:
        return RedisSettings(**values, sources=sources)
    except ConfigurationError as exc:
        source = sources.get(exc.key or "", DEFAULT)
        raise ConfigurationError(f"{source}: {exc}", key=exc.key, source=source) from None
