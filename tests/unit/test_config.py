"""Pure-logic tests of fmredis.config: five-tier resolution, URL parsing, validation, secrets. No Redis, no network.

Every resolution passes ``environ={...}`` so the machine's environment cannot leak in, except the two tests that are
about ``os.environ`` itself (and those use ``monkeypatch``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fmredis.config as config_module
from fmredis.config import ConfigManager, RedisSettings, resolve_settings
from fmredis.errors import ConfigurationError, FmRedisError
from tests.fakes import FakeConfigManager

SECRET = "S3cr3t-pw"

FIELD_DEFAULTS = {f.name: f.default for f in attrs.fields(RedisSettings) if f.name != "sources"}

no_db = settings(database=None, deadline=None, max_examples=200)


def assert_rest_default(s: RedisSettings, *, except_: set[str]) -> None:
    """Every field not in ``except_`` has its default value and is recorded as coming from the default."""
    for name, default in FIELD_DEFAULTS.items():
        if name in except_:
            continue
        assert getattr(s, name) == default, name
        assert s.source_of(name) == "default", name
        assert s.sources[name] == "default", name


def explain_row(s: RedisSettings, name: str) -> str:
    (row,) = [line for line in s.explain().splitlines() if line.split()[0] == name]
    return row


# --- defaults ------------------------------------------------------------------------------------------------------


class TestDefaults:
    def test_documented_defaults(self) -> None:
        s = resolve_settings(environ={})
        assert s.host == "localhost"
        assert s.port == 6379
        assert s.db == 0
        assert s.max_connections == 20
        assert s.socket_connect_timeout == 5.0
        assert s.socket_timeout == 10.0
        assert s.password is None
        assert s.unix_socket_path is None
        assert s.ssl is False

    def test_every_source_is_default_when_nothing_is_given(self) -> None:
        s = resolve_settings(environ={})
        assert set(s.sources) == set(FIELD_DEFAULTS)
        assert set(s.sources.values()) == {"default"}
        assert_rest_default(s, except_=set())

    def test_resolved_defaults_equal_a_bare_construction(self) -> None:
        # sources is excluded from equality; the values are the same.
        assert resolve_settings(environ={}) == RedisSettings()

    def test_explain_lists_every_field_with_default_source(self) -> None:
        s = resolve_settings(environ={})
        lines = s.explain().splitlines()
        assert [line.split()[0] for line in lines] == list(FIELD_DEFAULTS)
        assert all(line.endswith("  default") for line in lines)
        assert explain_row(s, "port").split()[1] == "6379"


# --- each tier on its own ------------------------------------------------------------------------------------------


class TestSingleTier:
    def test_explicit_argument(self) -> None:
        s = resolve_settings(environ={}, host="cache.internal")
        assert s.host == "cache.internal"
        assert s.source_of("host") == "argument host"
        assert_rest_default(s, except_={"host", "unix_socket_path"})

    def test_url_argument(self) -> None:
        s = resolve_settings(environ={}, url="redis://from-url:6390/4")
        assert (s.host, s.port, s.db) == ("from-url", 6390, 4)
        for name in ("host", "port", "db", "ssl", "mode"):  # the scheme says standalone
            assert s.source_of(name) == "argument url"
        assert_rest_default(s, except_={"host", "port", "db", "ssl", "unix_socket_path", "mode"})

    def test_redis_url_environment_variable(self) -> None:
        s = resolve_settings(environ={"REDIS_URL": "redis://from-env-url:6391/5"})
        assert (s.host, s.port, s.db) == ("from-env-url", 6391, 5)
        for name in ("host", "port", "db", "ssl", "mode"):  # the scheme says standalone
            assert s.source_of(name) == "REDIS_URL"
        assert_rest_default(s, except_={"host", "port", "db", "ssl", "unix_socket_path", "mode"})

    def test_config_manager(self) -> None:
        manager = FakeConfigManager({"port": 6392})
        s = resolve_settings(environ={}, config_manager=manager)
        assert s.port == 6392
        assert s.source_of("port") == "config manager key 'port'"
        assert manager.calls == 1
        assert_rest_default(s, except_={"port"})

    def test_config_manager_string_values_are_parsed(self) -> None:
        manager = FakeConfigManager({"port": "6393", "socket_timeout": "2.5", "ssl": "yes"})
        s = resolve_settings(environ={}, config_manager=manager)
        assert (s.port, s.socket_timeout, s.ssl) == (6393, 2.5, True)
        assert s.source_of("ssl") == "config manager key 'ssl'"

    def test_fake_manager_satisfies_the_protocol(self) -> None:
        assert isinstance(FakeConfigManager({}), ConfigManager)

    def test_individual_environment_variable(self) -> None:
        s = resolve_settings(environ={"REDIS_PORT": "6394"})
        assert s.port == 6394
        assert s.source_of("port") == "environment variable REDIS_PORT"
        assert_rest_default(s, except_={"port"})

    def test_environment_variables_for_several_field_types(self) -> None:
        s = resolve_settings(
            environ={
                "REDIS_HOST": "env-host",
                "REDIS_DB": " 3 ",
                "REDIS_SSL": "On",
                "REDIS_SOCKET_TIMEOUT": "1.5",
                "REDIS_MAX_CONNECTIONS": "7",
            }
        )
        assert (s.host, s.db, s.ssl, s.socket_timeout, s.max_connections) == ("env-host", 3, True, 1.5, 7)
        assert s.source_of("max_connections") == "environment variable REDIS_MAX_CONNECTIONS"
        assert s.source_of("ssl") == "environment variable REDIS_SSL"

    def test_unrelated_environment_variables_are_ignored(self) -> None:
        s = resolve_settings(environ={"PORT": "1", "REDISPORT": "2", "redis_port": "3", "REDIS_COLOUR": "blue"})
        assert s.port == 6379
        assert s.source_of("port") == "default"


# --- field-by-field merge ------------------------------------------------------------------------------------------


class TestMerge:
    def test_every_tier_contributes_a_different_field(self) -> None:
        environ = {
            "REDIS_URL": "redis://url-host:6390",
            "REDIS_HOST": "env-host",
            "REDIS_PORT": "1111",
            "REDIS_DB": "9",
            "REDIS_PASSWORD": "env-pw",
        }
        manager = FakeConfigManager({"host": "cm-host", "port": 2222, "db": 4})
        s = resolve_settings(environ=environ, config_manager=manager, host="explicit-host")

        assert (s.host, s.source_of("host")) == ("explicit-host", "argument host")
        assert (s.port, s.source_of("port")) == (6390, "REDIS_URL")
        assert (s.db, s.source_of("db")) == (4, "config manager key 'db'")
        assert (s.password, s.source_of("password")) == ("env-pw", "environment variable REDIS_PASSWORD")
        assert (s.ssl, s.source_of("ssl")) == (False, "REDIS_URL")
        assert s.unix_socket_path is None
        assert_rest_default(s, except_={"host", "port", "db", "password", "ssl", "unix_socket_path", "mode"})

    def test_explicit_host_beats_url_host_but_url_port_and_db_still_apply(self) -> None:
        s = resolve_settings(environ={"REDIS_URL": "redis://url-host:6390/3"}, host="mine")
        assert (s.host, s.port, s.db) == ("mine", 6390, 3)
        assert s.source_of("host") == "argument host"
        assert s.source_of("port") == "REDIS_URL"
        assert s.source_of("db") == "REDIS_URL"

    def test_url_without_port_lets_lower_tiers_supply_it(self) -> None:
        s = resolve_settings(environ={"REDIS_URL": "redis://url-host", "REDIS_PORT": "7000"})
        assert (s.host, s.port) == ("url-host", 7000)
        assert s.source_of("port") == "environment variable REDIS_PORT"

    def test_url_beats_config_manager_beats_environment(self) -> None:
        environ = {"REDIS_URL": "redis://h/1", "REDIS_DB": "3", "REDIS_MAX_CONNECTIONS": "9"}
        manager = FakeConfigManager({"db": 2, "max_connections": 8})
        s = resolve_settings(environ=environ, config_manager=manager)
        assert (s.db, s.source_of("db")) == (1, "REDIS_URL")
        assert (s.max_connections, s.source_of("max_connections")) == (8, "config manager key 'max_connections'")

    def test_explicit_beats_everything(self) -> None:
        environ = {"REDIS_URL": "redis://h:6390?max_connections=5", "REDIS_MAX_CONNECTIONS": "7"}
        manager = FakeConfigManager({"max_connections": 6})
        s = resolve_settings(environ=environ, config_manager=manager, max_connections=4, port=6400)
        assert (s.max_connections, s.source_of("max_connections")) == (4, "argument max_connections")
        assert (s.port, s.source_of("port")) == (6400, "argument port")

    def test_url_argument_replaces_redis_url_entirely(self) -> None:
        environ = {"REDIS_URL": "redis://:envpw@env-url-host:7000/5?max_connections=7"}
        s = resolve_settings(environ=environ, url="redis://arg-host")
        assert s.host == "arg-host"
        assert s.source_of("host") == "argument url"
        # Nothing of REDIS_URL survives, not even the fields the url= argument leaves out.
        assert (s.port, s.db, s.max_connections, s.password) == (6379, 0, 20, None)
        assert "REDIS_URL" not in s.sources.values()

    def test_url_argument_hides_a_broken_redis_url(self) -> None:
        s = resolve_settings(environ={"REDIS_URL": "http://not-redis:notaport"}, url="redis://ok")
        assert s.host == "ok"

    def test_config_manager_is_called_once(self) -> None:
        manager = FakeConfigManager({"db": 1})
        resolve_settings(environ={}, config_manager=manager)
        assert manager.calls == 1

    @no_db
    @given(
        explicit=st.none() | st.integers(1, 65535),
        url_present=st.booleans(),
        url_port=st.none() | st.integers(1, 65535),
        manager=st.none() | st.integers(1, 65535),
        env=st.none() | st.integers(1, 65535),
    )
    def test_highest_tier_that_gives_port_wins(
        self, explicit: int | None, url_present: bool, url_port: int | None, manager: int | None, env: int | None
    ) -> None:
        environ: dict[str, str] = {}
        if url_present:
            environ["REDIS_URL"] = "redis://h" + (f":{url_port}" if url_port is not None else "")
        if env is not None:
            environ["REDIS_PORT"] = f" {env} "
        s = resolve_settings(environ=environ, config_manager=FakeConfigManager({"port": manager}), port=explicit)

        candidates = [
            (explicit, "argument port"),
            (url_port if url_present else None, "REDIS_URL"),
            (manager, "config manager key 'port'"),
            (env, "environment variable REDIS_PORT"),
            (6379, "default"),
        ]
        expected = next(c for c in candidates if c[0] is not None)
        assert (s.port, s.source_of("port")) == expected


# --- URL forms -----------------------------------------------------------------------------------------------------


class TestUrlForms:
    def test_user_password_host_port_db(self) -> None:
        s = resolve_settings(environ={}, url="redis://alice:S3cr3t-pw@cache.example:6380/2")
        assert (s.username, s.password) == ("alice", SECRET)
        assert (s.host, s.port, s.db, s.ssl) == ("cache.example", 6380, 2, False)
        assert s.source_of("password") == "argument url"
        assert s.source_of("username") == "argument url"

    def test_password_only(self) -> None:
        s = resolve_settings(environ={}, url="redis://:S3cr3t-pw@h")
        assert (s.username, s.password) == (None, SECRET)

    def test_percent_encoded_password(self) -> None:
        s = resolve_settings(environ={}, url="redis://:p%40ss%3Aw%2Frd%23%20x@h")
        assert s.password == "p@ss:w/rd# x"

    def test_db_path_with_trailing_slash(self) -> None:
        assert resolve_settings(environ={}, url="redis://h/7/").db == 7

    def test_query_parameters(self) -> None:
        s = resolve_settings(environ={}, url="redis://h?socket_timeout=3&max_connections=5")
        assert s.socket_timeout == 3.0
        assert isinstance(s.socket_timeout, float)
        assert s.max_connections == 5
        assert s.source_of("socket_timeout") == "argument url"
        assert s.source_of("max_connections") == "argument url"

    def test_rediss_sets_ssl(self) -> None:
        s = resolve_settings(environ={"REDIS_URL": "rediss://secure.example:6380"})
        assert s.ssl is True
        assert s.source_of("ssl") == "REDIS_URL"
        assert s.address == "rediss://secure.example:6380/0"

    def test_redis_scheme_sets_ssl_false_over_lower_tiers(self) -> None:
        s = resolve_settings(environ={"REDIS_URL": "redis://h", "REDIS_SSL": "true"})
        assert s.ssl is False
        assert s.source_of("ssl") == "REDIS_URL"

    def test_unix_socket_with_db_query(self) -> None:
        s = resolve_settings(environ={}, url="unix:///path/to.sock?db=2")
        assert s.unix_socket_path == "/path/to.sock"
        assert s.db == 2
        assert s.ssl is False
        assert s.source_of("unix_socket_path") == "argument url"
        assert s.source_of("db") == "argument url"
        assert s.address == "redis://unix:/path/to.sock/2"

    def test_unix_socket_with_password(self) -> None:
        s = resolve_settings(environ={}, url="unix://:S3cr3t-pw@/run/redis.sock")
        assert (s.unix_socket_path, s.password) == ("/run/redis.sock", SECRET)

    def test_ipv6_host(self) -> None:
        s = resolve_settings(environ={}, url="redis://[::1]:6380")
        assert (s.host, s.port) == ("::1", 6380)

    def test_surrounding_whitespace_is_ignored(self) -> None:
        s = resolve_settings(environ={"REDIS_URL": "  redis://h:6390  "})
        assert (s.host, s.port) == ("h", 6390)

    @no_db
    @given(suffix=st.text(st.characters(codec="utf-8"), max_size=20))
    def test_any_percent_encoded_password_round_trips_and_stays_hidden(self, suffix: str) -> None:
        password = SECRET + suffix
        s = resolve_settings(environ={}, url=f"redis://user:{quote(password, safe='')}@h:6390/1")
        assert s.password == password
        assert (s.username, s.host, s.port, s.db) == ("user", "h", 6390, 1)
        for text in (repr(s), str(s), s.explain()):
            assert SECRET not in text


# --- address rule --------------------------------------------------------------------------------------------------


class TestAddressRule:
    def test_explicit_host_beats_unix_url(self) -> None:
        s = resolve_settings(environ={}, url="unix:///tmp/redis.sock?db=3", host="tcp-host")
        assert (s.host, s.unix_socket_path) == ("tcp-host", None)
        assert s.db == 3  # the URL still supplies what the higher tier left open
        assert s.address == "redis://tcp-host:6379/3"

    def test_explicit_unix_socket_beats_url_host(self) -> None:
        s = resolve_settings(environ={"REDIS_URL": "redis://url-host:6390/1"}, unix_socket_path="/tmp/r.sock")
        assert s.unix_socket_path == "/tmp/r.sock"
        assert s.host == "localhost"
        assert s.source_of("unix_socket_path") == "argument unix_socket_path"
        assert s.address == "redis://unix:/tmp/r.sock/1"

    def test_url_host_hides_config_manager_unix_socket(self) -> None:
        manager = FakeConfigManager({"unix_socket_path": "/tmp/cm.sock"})
        s = resolve_settings(environ={"REDIS_URL": "redis://url-host"}, config_manager=manager)
        assert (s.host, s.unix_socket_path) == ("url-host", None)

    def test_unix_url_hides_environment_host(self) -> None:
        s = resolve_settings(environ={"REDIS_URL": "unix:///tmp/u.sock", "REDIS_HOST": "env-host"})
        assert s.unix_socket_path == "/tmp/u.sock"
        assert s.host == "localhost"

    def test_config_manager_host_hides_environment_unix_socket(self) -> None:
        manager = FakeConfigManager({"host": "cm-host"})
        s = resolve_settings(environ={"REDIS_UNIX_SOCKET_PATH": "/tmp/env.sock"}, config_manager=manager)
        assert (s.host, s.unix_socket_path) == ("cm-host", None)

    def test_config_manager_unix_socket_hides_environment_host(self) -> None:
        manager = FakeConfigManager({"unix_socket_path": "/tmp/cm.sock"})
        s = resolve_settings(environ={"REDIS_HOST": "env-host"}, config_manager=manager)
        assert (s.host, s.unix_socket_path) == ("localhost", "/tmp/cm.sock")

    def test_lower_tier_address_applies_when_no_higher_tier_names_one(self) -> None:
        manager = FakeConfigManager({"port": 6390})  # names no address
        s = resolve_settings(environ={"REDIS_UNIX_SOCKET_PATH": "/tmp/env.sock"}, config_manager=manager, db=2)
        assert s.unix_socket_path == "/tmp/env.sock"
        assert s.source_of("unix_socket_path") == "environment variable REDIS_UNIX_SOCKET_PATH"

    @pytest.mark.parametrize(
        ("kwargs", "source"),
        [
            pytest.param({"host": "h", "unix_socket_path": "/s"}, "argument host", id="explicit"),
            pytest.param(
                {"config_manager": FakeConfigManager({"host": "h", "unix_socket_path": "/s"})},
                "config manager key 'host'",
                id="config-manager",
            ),
            pytest.param(
                {"environ_extra": {"REDIS_HOST": "h", "REDIS_UNIX_SOCKET_PATH": "/s"}},
                "environment variable REDIS_HOST",
                id="environment",
            ),
            pytest.param({"url": "redis://h?unix_socket_path=/s"}, "argument url", id="url-query"),
            pytest.param({"url": "unix:///s?host=h"}, "argument url", id="unix-url-query"),
        ],
    )
    def test_host_and_unix_socket_in_one_tier_is_an_error(self, kwargs: dict[str, Any], source: str) -> None:
        kwargs = dict(kwargs)
        environ = kwargs.pop("environ_extra", {})
        with pytest.raises(ConfigurationError) as info:
            resolve_settings(environ=environ, **kwargs)
        assert info.value.source == source
        assert info.value.key in ("host", "unix_socket_path")
        assert source in str(info.value)


# --- errors --------------------------------------------------------------------------------------------------------


class Raises:
    """One row of the error table: how to call resolve_settings, and the key and source the error must carry."""

    def __init__(self, key: str | None, source: str, **call: Any) -> None:
        self.key, self.source, self.call = key, source, call


ERROR_TABLE = [
    pytest.param(Raises("port", "environment variable REDIS_PORT", environ={"REDIS_PORT": "abc"}), id="port-abc-env"),
    pytest.param(Raises("port", "argument port", port=70000), id="port-70000-explicit"),
    pytest.param(Raises("port", "argument url", url="redis://h:0"), id="port-0-url"),
    pytest.param(
        Raises("port", "config manager key 'port'", config_manager=FakeConfigManager({"port": 0})), id="port-0-manager"
    ),
    pytest.param(Raises("port", "argument port", port=True), id="port-bool"),
    pytest.param(Raises("port", "argument port", port=6379.0), id="port-float"),
    pytest.param(Raises("socket_timeout", "argument socket_timeout", socket_timeout=-1), id="timeout-negative"),
    pytest.param(
        Raises("socket_timeout", "environment variable REDIS_SOCKET_TIMEOUT", environ={"REDIS_SOCKET_TIMEOUT": "soon"}),
        id="timeout-non-numeric",
    ),
    pytest.param(
        Raises(
            "socket_connect_timeout",
            "config manager key 'socket_connect_timeout'",
            config_manager=FakeConfigManager({"socket_connect_timeout": "nan"}),
        ),
        id="timeout-nan",
    ),
    pytest.param(
        Raises("socket_timeout", "argument socket_timeout", socket_timeout=math.inf), id="timeout-inf-explicit"
    ),
    pytest.param(Raises("socket_timeout", "argument socket_timeout", socket_timeout=0), id="timeout-zero"),
    pytest.param(Raises("socket_timeout", "argument socket_timeout", socket_timeout=1e10), id="timeout-beyond-a-day"),
    pytest.param(
        Raises("pool_timeout", "environment variable REDIS_POOL_TIMEOUT", environ={"REDIS_POOL_TIMEOUT": "86401"}),
        id="pool-timeout-beyond-a-day-env",
    ),
    pytest.param(
        Raises("retry_attempts", "argument url", url="redis://h?retry_attempts=101"), id="retry-attempts-over-100"
    ),
    pytest.param(
        Raises("max_connections", "argument url", url="redis://h?max_connections=0"), id="max-connections-0-url"
    ),
    pytest.param(
        Raises("max_connections", "environment variable REDIS_MAX_CONNECTIONS", environ={"REDIS_MAX_CONNECTIONS": "0"}),
        id="max-connections-0-env",
    ),
    pytest.param(Raises("ssl", "environment variable REDIS_SSL", environ={"REDIS_SSL": "maybe"}), id="ssl-maybe"),
    pytest.param(Raises("db", "argument url", url="redis://h/notadb"), id="db-path-not-int"),
    pytest.param(Raises(None, "argument url", url="http://h:6379"), id="scheme-http"),
    pytest.param(Raises(None, "REDIS_URL", environ={"REDIS_URL": "localhost:6379"}), id="scheme-missing"),
    pytest.param(Raises(None, "REDIS_URL", environ={"REDIS_URL": "redis://host:notaport"}), id="url-port-not-int"),
    pytest.param(Raises(None, "argument url", url="redis://host:99999"), id="url-port-out-of-range"),
    pytest.param(Raises("host", "argument url", url="redis://"), id="url-no-host"),
    pytest.param(Raises("unix_socket_path", "argument url", url="unix://"), id="unix-url-no-path"),
    pytest.param(Raises("colour", "argument url", url="redis://h?colour=blue"), id="url-unknown-query"),
    pytest.param(Raises("port", "argument url", url="redis://h?port=1"), id="url-misplaced-query"),
    pytest.param(Raises("db", "argument url", url="redis://h/1?db=2"), id="url-db-twice"),
    pytest.param(Raises("colour", "argument colour", colour="blue"), id="explicit-unknown-kwarg"),
    pytest.param(Raises("sources", "argument sources", sources={}), id="explicit-sources-kwarg"),
    pytest.param(
        Raises("colour", "config manager key 'colour'", config_manager=FakeConfigManager({"colour": "blue"})),
        id="manager-unknown-key",
    ),
    pytest.param(
        Raises(None, "config manager", config_manager=FakeConfigManager(["port", 6379])), id="manager-non-mapping"
    ),
    pytest.param(Raises("host", "argument host", host=""), id="host-empty"),
    pytest.param(Raises("host", "argument host", host=42), id="host-int"),
    pytest.param(Raises("ssl_cert_reqs", "argument ssl_cert_reqs", ssl_cert_reqs="sometimes"), id="cert-reqs"),
    pytest.param(Raises("ssl", "argument ssl", ssl=True, unix_socket_path="/tmp/r.sock"), id="ssl-with-unix"),
    pytest.param(
        Raises("ssl", "REDIS_URL", environ={"REDIS_URL": "rediss://h"}, unix_socket_path="/tmp/r.sock"),
        id="rediss-url-with-explicit-unix",
    ),
]


class TestErrors:
    @pytest.mark.parametrize("row", ERROR_TABLE)
    def test_error_table(self, row: Raises) -> None:
        call = dict(row.call)
        environ = call.pop("environ", {})
        with pytest.raises(ConfigurationError) as info:
            resolve_settings(environ=environ, **call)
        err = info.value
        assert isinstance(err, ValueError)
        assert isinstance(err, FmRedisError)
        assert err.key == row.key
        assert err.source == row.source
        assert str(err).startswith(f"{row.source}: ")

    def test_the_bounds_themselves_are_accepted(self) -> None:
        """The control for the rows beyond a day and over 100 attempts."""
        s = resolve_settings(environ={}, socket_timeout=86_400, pool_timeout=86_400, retry_attempts=100)
        assert (s.socket_timeout, s.pool_timeout, s.retry_attempts) == (86_400, 86_400, 100)

    def test_bad_value_is_quoted_for_non_secret_fields(self) -> None:
        with pytest.raises(ConfigurationError, match="'abc'"):
            resolve_settings(environ={"REDIS_PORT": "abc"})

    def test_error_from_an_overridden_lower_tier_is_still_reported(self) -> None:
        # Every tier is parsed, so a broken REDIS_PORT is reported even though an explicit port wins.
        with pytest.raises(ConfigurationError) as info:
            resolve_settings(environ={"REDIS_PORT": "abc"}, port=6380)
        assert info.value.source == "environment variable REDIS_PORT"


# --- secrets -------------------------------------------------------------------------------------------------------


def _resolve_password_via(where: str) -> RedisSettings:
    if where == "url-argument":
        return resolve_settings(environ={}, url=f"redis://:{SECRET}@h")
    if where == "redis-url":
        return resolve_settings(environ={"REDIS_URL": f"redis://alice:{SECRET}@h"})
    if where == "environment":
        return resolve_settings(environ={"REDIS_PASSWORD": SECRET})
    if where == "explicit":
        return resolve_settings(environ={}, password=SECRET)
    if where == "config-manager":
        return resolve_settings(environ={}, config_manager=FakeConfigManager({"password": SECRET}))
    raise AssertionError(where)


PASSWORD_SOURCES = ["url-argument", "redis-url", "environment", "explicit", "config-manager"]


class TestSecrets:
    @pytest.mark.parametrize("where", PASSWORD_SOURCES)
    def test_password_is_resolved_but_never_shown(self, where: str) -> None:
        s = _resolve_password_via(where)
        assert s.password == SECRET
        assert SECRET not in repr(s)
        assert SECRET not in str(s)
        assert SECRET not in s.explain()
        assert SECRET not in s.address
        assert "password='***'" in repr(s)

    @pytest.mark.parametrize("where", PASSWORD_SOURCES)
    def test_explain_masks_a_set_password(self, where: str) -> None:
        row = explain_row(_resolve_password_via(where), "password")
        assert row.split()[1] == "***"

    def test_explain_shows_none_for_an_unset_password(self) -> None:
        s = resolve_settings(environ={})
        assert explain_row(s, "password").split()[1] == "None"
        assert "password=None" in repr(s)

    def test_direct_construction_masks_too(self) -> None:
        s = RedisSettings(password=SECRET)
        assert SECRET not in repr(s)
        assert SECRET not in s.explain()

    @pytest.mark.parametrize(
        "url",
        [
            f"redis://:{SECRET}@host:99999",
            f"redis://:{SECRET}@host:notaport",
            f"redis://user:{SECRET}@host:6379/notadb",
            f"redis://:{SECRET}@host?colour=blue",
            f"redis://:{SECRET}@host?max_connections=0",
            f"redis://:{SECRET}@host?password=other",
            f"redis://:{SECRET}@host?socket_timeout=nan",
            f"http://:{SECRET}@host",
            f"redis://:{SECRET}@",
        ],
    )
    def test_url_error_does_not_echo_the_password(self, url: str) -> None:
        with pytest.raises(ConfigurationError) as info:
            resolve_settings(environ={}, url=url)
        assert SECRET not in str(info.value)
        assert SECRET not in repr(info.value)
        with pytest.raises(ConfigurationError) as info:
            resolve_settings(environ={"REDIS_URL": url})
        assert SECRET not in str(info.value)

    @pytest.mark.parametrize(
        "url",
        [
            pytest.param(f"redis://default:{SECRET}", id="host-forgotten"),
            pytest.param(f"redis://:{SECRET}#1@host:6379", id="unencoded-hash-in-password"),
            pytest.param(f"redis://:{SECRET}/1@host:6379", id="unencoded-slash-in-password"),
            pytest.param(f"unix://user:{SECRET}/run/redis.sock", id="unix-url-missing-at"),
            # A password such as "12/S3cr3t-pw" parses as port 12 of host "user"; the rest becomes the db path.
            pytest.param(f"redis://user:12/{SECRET}@host:6379/0", id="unencoded-slash-after-digits-in-password"),
        ],
    )
    def test_malformed_userinfo_does_not_echo_the_password(self, url: str) -> None:
        # A password that is not percent-encoded (or a URL missing its host) makes urlsplit misread the URL: the
        # password lands in the "port" or in the db path, and no message may quote either.
        with pytest.raises(ConfigurationError) as info:
            resolve_settings(environ={}, url=url)
        assert SECRET not in str(info.value)

    @pytest.mark.parametrize(
        "call",
        [
            pytest.param({"password": SECRET.encode()}, id="explicit-bytes"),
            pytest.param({"password": [SECRET]}, id="explicit-list"),
            pytest.param({"config_manager": FakeConfigManager({"password": (SECRET,)})}, id="manager-tuple"),
        ],
    )
    def test_wrong_type_password_is_not_echoed(self, call: dict[str, Any]) -> None:
        with pytest.raises(ConfigurationError) as info:
            resolve_settings(environ={}, **call)
        assert info.value.key == "password"
        assert SECRET not in str(info.value)
        assert SECRET not in repr(info.value)

    def test_valid_password_not_echoed_when_another_tier_field_is_bad(self) -> None:
        with pytest.raises(ConfigurationError) as info:
            resolve_settings(environ={"REDIS_PASSWORD": SECRET, "REDIS_PORT": "99999"}, password=SECRET)
        assert SECRET not in str(info.value)

    @no_db
    @given(
        suffix=st.text(st.characters(codec="utf-8"), max_size=12),
        bad=st.sampled_from([":99999", ":notaport", ":0", "/x", "?colour=1", "?max_connections=-1", "?db"]),
    )
    def test_any_encoded_password_stays_out_of_url_errors(self, suffix: str, bad: str) -> None:
        url = f"redis://user:{quote(SECRET + suffix, safe='')}@host{bad}"
        with pytest.raises(ConfigurationError) as info:
            resolve_settings(environ={}, url=url)
        assert SECRET not in str(info.value)


# --- "not given" ---------------------------------------------------------------------------------------------------


class TestNotGiven:
    @pytest.mark.parametrize("name", ["REDIS_PASSWORD", "REDIS_PORT", "REDIS_HOST", "REDIS_SSL", "REDIS_URL"])
    def test_empty_environment_value_counts_as_not_given(self, name: str) -> None:
        s = resolve_settings(environ={name: ""})
        assert s == RedisSettings()
        assert set(s.sources.values()) == {"default"}

    def test_empty_password_env_leaves_the_default(self) -> None:
        s = resolve_settings(environ={"REDIS_PASSWORD": ""})
        assert s.password is None
        assert s.source_of("password") == "default"

    def test_empty_redis_url_does_not_hide_individual_variables(self) -> None:
        s = resolve_settings(environ={"REDIS_URL": "", "REDIS_HOST": "env-host"})
        assert (s.host, s.source_of("host")) == ("env-host", "environment variable REDIS_HOST")

    def test_none_explicit_kwargs_count_as_not_given(self) -> None:
        s = resolve_settings(environ={}, host=None, port=None, password=None, ssl=None, socket_timeout=None)
        assert s == RedisSettings()
        assert set(s.sources.values()) == {"default"}

    def test_none_explicit_kwarg_lets_a_lower_tier_through(self) -> None:
        s = resolve_settings(environ={"REDIS_PORT": "7000"}, port=None)
        assert (s.port, s.source_of("port")) == (7000, "environment variable REDIS_PORT")

    def test_none_explicit_host_does_not_hide_a_lower_unix_socket(self) -> None:
        s = resolve_settings(environ={"REDIS_UNIX_SOCKET_PATH": "/tmp/env.sock"}, host=None)
        assert s.unix_socket_path == "/tmp/env.sock"

    def test_none_in_config_manager_counts_as_not_given(self) -> None:
        s = resolve_settings(environ={"REDIS_DB": "5"}, config_manager=FakeConfigManager({"db": None, "host": None}))
        assert (s.db, s.source_of("db")) == (5, "environment variable REDIS_DB")
        assert s.source_of("host") == "default"

    def test_none_url_argument_falls_back_to_redis_url(self) -> None:
        s = resolve_settings(environ={"REDIS_URL": "redis://env-url"}, url=None)
        assert s.source_of("host") == "REDIS_URL"


# --- RedisSettings itself ------------------------------------------------------------------------------------------


class TestRedisSettingsClass:
    @pytest.mark.parametrize("name", ["host", "port", "password", "sources"])
    def test_frozen(self, name: str) -> None:
        s = resolve_settings(environ={})
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(s, name, "x")

    def test_evolve_revalidates(self) -> None:
        with pytest.raises(ConfigurationError):
            attrs.evolve(RedisSettings(), port=0)

    @pytest.mark.parametrize(
        ("kwargs", "key"),
        [
            ({"port": 0}, "port"),
            ({"port": 65536}, "port"),
            ({"db": -1}, "db"),
            ({"host": ""}, "host"),
            ({"host": "   "}, "host"),
            ({"unix_socket_path": ""}, "unix_socket_path"),
            ({"max_connections": 0}, "max_connections"),
            ({"socket_timeout": 0.0}, "socket_timeout"),
            ({"socket_connect_timeout": -1.0}, "socket_connect_timeout"),
            ({"socket_timeout": math.nan}, "socket_timeout"),
            ({"pool_timeout": -0.5}, "pool_timeout"),
            ({"ssl_cert_reqs": "sometimes"}, "ssl_cert_reqs"),
            ({"ssl": True, "unix_socket_path": "/tmp/r.sock"}, "ssl"),
        ],
    )
    def test_direct_construction_validates_ranges(self, kwargs: dict[str, Any], key: str) -> None:
        with pytest.raises(ConfigurationError) as info:
            RedisSettings(**kwargs)
        assert info.value.key == key

    @pytest.mark.parametrize(
        ("kwargs", "key"),
        [
            # Wrong types crash inside a validator (TypeError / AttributeError) instead of a ConfigurationError.
            pytest.param({"port": "6379"}, "port", id="port-str-raises-TypeError"),
            pytest.param({"host": 42}, "host", id="host-int-raises-AttributeError"),
            # Wrong types with no validator at all are stored as given: ssl="no" is truthy, so address says rediss.
            pytest.param({"ssl": "no"}, "ssl", id="ssl-str-accepted"),
            # Values that resolve_settings rejects (see the error table) are accepted by a direct construction.
            pytest.param({"port": True}, "port", id="port-bool-accepted"),
            pytest.param({"socket_timeout": math.inf}, "socket_timeout", id="timeout-inf-accepted"),
        ],
    )
    def test_direct_construction_rejects_wrong_types(self, kwargs: dict[str, Any], key: str) -> None:
        # The class docstring says a direct construction "also validates every field", and errors.py says fmredis
        # raises only its own hierarchy: each of these should be a ConfigurationError naming the field.
        with pytest.raises(ConfigurationError) as info:
            RedisSettings(**kwargs)
        assert info.value.key == key

    def test_direct_construction_accepts_valid_values(self) -> None:
        s = RedisSettings(host="h", port=1, db=15, max_connections=1, socket_timeout=0.001, pool_timeout=0)
        assert (s.host, s.port, s.db) == ("h", 1, 15)
        assert set(s.sources) == set()  # nothing recorded...
        assert s.source_of("host") == "default"  # ...so every field reports the default source

    def test_sources_do_not_take_part_in_equality(self) -> None:
        a = resolve_settings(environ={"REDIS_PORT": "6390"})
        b = resolve_settings(environ={}, port=6390)
        assert a == b
        assert a.sources != b.sources

    def test_address_never_contains_credentials(self) -> None:
        s = resolve_settings(environ={}, url=f"redis://alice:{SECRET}@h:6390/2")
        assert s.address == "redis://h:6390/2"


# --- the process environment ---------------------------------------------------------------------------------------


class _EnvironTripwire:
    """Stands in for the ``os`` module inside fmredis.config; touching ``environ`` fails the test."""

    @property
    def environ(self) -> Mapping[str, str]:
        raise AssertionError("os.environ was read although environ= was passed")


class TestProcessEnvironment:
    def test_environ_argument_means_os_environ_is_ignored(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("REDIS_PORT", "not-a-port")
        monkeypatch.setenv("REDIS_HOST", "bogus-host")
        monkeypatch.setenv("REDIS_URL", "http://bogus")
        monkeypatch.setenv("REDIS_SSL", "maybe")
        s = resolve_settings(environ={})
        assert (s.host, s.port, s.ssl) == ("localhost", 6379, False)
        s = resolve_settings(environ={"REDIS_PORT": "7000"})
        assert (s.port, s.source_of("port")) == (7000, "environment variable REDIS_PORT")

    def test_environ_argument_never_touches_os_environ(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(config_module, "os", _EnvironTripwire())
        s = resolve_settings(environ={"REDIS_DB": "3"}, config_manager=FakeConfigManager({"port": 6390}), host="h")
        assert (s.host, s.port, s.db) == ("h", 6390, 3)

    def test_os_environ_is_read_when_environ_is_omitted(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import os

        for name in [n for n in os.environ if n.upper().startswith("REDIS_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("REDIS_PORT", "7001")
        monkeypatch.setenv("REDIS_PASSWORD", SECRET)
        s = resolve_settings()
        assert (s.port, s.source_of("port")) == (7001, "environment variable REDIS_PORT")
        assert s.password == SECRET

    def test_redis_url_from_os_environ(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import os

        for name in [n for n in os.environ if n.upper().startswith("REDIS_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("REDIS_URL", "rediss://os-env-host:6390/4")
        s = resolve_settings()
        assert (s.host, s.port, s.db, s.ssl) == ("os-env-host", 6390, 4, True)
        assert s.source_of("host") == "REDIS_URL"


class TestReviewFindings:
    @pytest.mark.parametrize(
        "host", ["redis://:S3cr3t-pw@127.0.0.1:6379/0", "user:S3cr3t-pw@cache", "my host", " h ", "cache/0", "h?x#y"]
    )
    def test_a_url_or_junk_in_host_is_refused_without_echoing_it(self, host: str) -> None:
        for call in (
            lambda: resolve_settings(environ={"REDIS_HOST": host}),
            lambda: resolve_settings(environ={}, host=host),
        ):
            with pytest.raises(ConfigurationError) as info:
                call()
            assert info.value.key == "host"
            assert "S3cr3t-pw" not in str(info.value) and host not in str(info.value)

    def test_ipv6_and_dotted_hosts_are_accepted(self) -> None:
        assert resolve_settings(environ={}, host="::1").host == "::1"
        assert resolve_settings(environ={}, host="cache-1.internal").host == "cache-1.internal"

    def test_an_empty_query_password_is_not_given(self) -> None:
        settings = resolve_settings(environ={"REDIS_URL": "redis://h/0?password=", "REDIS_PASSWORD": "envpw"})
        assert settings.password == "envpw"
        assert settings.source_of("password") == "environment variable REDIS_PASSWORD"

    @pytest.mark.parametrize(("url", "ssl"), [("rediss://h?ssl=true", True), ("redis://h?ssl=true", True)])
    def test_ssl_in_the_query_may_restate_or_set_tls(self, url: str, ssl: bool) -> None:
        assert resolve_settings(environ={}, url=url).ssl is ssl

    @pytest.mark.parametrize("given", ["NONE", "Optional", " required "])
    def test_ssl_cert_reqs_is_case_insensitive(self, given: str) -> None:
        settings = resolve_settings(environ={"REDIS_SSL_CERT_REQS": given})
        assert settings.ssl_cert_reqs == given.strip().lower()
