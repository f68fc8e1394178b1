"""The configuration hierarchy: connection settings resolved once, from five tiers, into one :class:`RedisSettings`.

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

import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, unquote, urlsplit

from fmredis.errors import ConfigurationError
from fmredis.settings import DEFAULT, FIELD_NAMES, FIELDS, PARSE, SECRET, RedisSettings

__all__ = ["ConfigManager", "RedisSettings", "resolve_settings"]

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


# Never quoted back: secrets, and node lists (a URL pasted into REDIS_SENTINELS would carry its password).
_NO_ECHO = SECRET | {"sentinels", "cluster_nodes"}


def _describe(value: object, name: str, echo: bool) -> str:
    return f" (got {value!r})" if echo and name not in _NO_ECHO else ""


def _parse_tier(
    raw: Mapping[str, object], label: Callable[[str], str], *, echo: bool = True
) -> dict[str, tuple[Any, str]]:
    """Parse one tier's raw values; returns ``{field: (value, source label)}``. ``None`` means not given."""
    parsed: dict[str, tuple[Any, str]] = {}
    for name, value in raw.items():
        source = label(name)
        if name not in FIELD_NAMES:
            raise ConfigurationError(f"{source}: unknown setting {name!r}", key=name, source=source)
        if value is None:
            continue
        try:
            parsed[name] = (PARSE[name](value), source)
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
        if key not in FIELD_NAMES or key in _IN_URL_ONLY_AS_ADDRESS:
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
            {f.name: env.get(f"REDIS_{f.name.upper()}") or None for f in FIELDS},
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
    sources = {name: merged[name][1] if name in merged else DEFAULT for name in sorted(FIELD_NAMES)}
    try:
        return RedisSettings(**values, sources=sources)
    except ConfigurationError as exc:
        source = sources.get(exc.key or "", DEFAULT)
        raise ConfigurationError(f"{source}: {exc}", key=exc.key, source=source) from None
