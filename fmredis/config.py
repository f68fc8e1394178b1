"""Connection settings: one frozen, validated value resolved once from five tiers.

Resolution, highest priority first, merged field by field:

1. explicit keyword arguments (``None`` means "not given");
2. a URL: the ``url=`` argument, else the ``REDIS_URL`` environment variable (``redis://``, ``rediss://``, ``unix://``,
   with query parameters named like the settings);
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


_TYPES: dict[Callable[[object], Any], tuple[type, ...]] = {
    _as_str: (str,),
    _as_lower: (str,),
    _as_int: (int,),
    _as_float: (int, float),
    _as_bool: (bool,),
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
    #: Which source supplied each field ("default", "argument", "REDIS_URL", ...); not part of equality.
    sources: Mapping[str, str] = attrs.field(factory=dict, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.ssl and self.unix_socket_path is not None:
            raise ConfigurationError("ssl cannot be used with unix_socket_path", key="ssl")

    @property
    def address(self) -> str:
        """Where connections go, for messages: ``host:port/db`` or ``unix:path/db`` (never a credential)."""
        where = f"unix:{self.unix_socket_path}" if self.unix_socket_path else f"{self.host}:{self.port}"
        return f"{'rediss' if self.ssl else 'redis'}://{where}/{self.db}"

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


def _describe(value: object, name: str, echo: bool) -> str:
    return f" (got {value!r})" if echo and name not in _SECRET else ""


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

    try:
        parts = urlsplit(url.strip())
        hostname, port = parts.hostname, parts.port
    except ValueError:
        # Not urlsplit's message: with an unencoded '#', '/' or '@' in the password, the "port" it quotes is part of
        # the password.
        raise fail("malformed URL: bad host or port (percent-encode '@', ':', '/', '#' in credentials)") from None
    raw: dict[str, object] = {}
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
        raise fail(f"unknown URL scheme {scheme!r}; use redis://, rediss:// or unix://")
    raw["username"] = unquote(parts.username) if parts.username else None
    raw["password"] = unquote(parts.password) if parts.password else None
    if parts.scheme != "unix" and parts.path.strip("/"):
        raw["db"] = parts.path.strip("/")
    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise fail("malformed query string") from None
    for key, value in query:
        if key not in _FIELD_NAMES or key in ("host", "port", "unix_socket_path"):
            # Named only when it looks like a setting name: an unencoded '?' in a password makes its tail a "key".
            shown = f" {key!r}" if _SETTING_LIKE.fullmatch(key) else ""
            raise fail(f"unknown or misplaced query parameter{shown}", key if shown else None)
        if key != "ssl" and raw.get(key) is not None:  # an explicit ?ssl= may restate or override the scheme's
            raise fail(f"{key} is given twice", key)
        raw[key] = value or None  # an empty value (?password=) is not given
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
