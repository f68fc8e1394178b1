"""Pure-logic tests of the Sentinel / Cluster settings (fmredis.config) and of the clients they build (fmredis.client).

No Redis, no network: every resolution passes ``environ={...}``; the Sentinel client is built against addresses nobody
listens on with socket connects turned into failures, and no ``RedisCluster`` is ever constructed (it connects at once).
"""

from __future__ import annotations

import logging
import socket
import string
from typing import Any

import attrs
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.connection import BlockingConnectionPool
from redis.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

import fmredis.client as client_module
from fmredis.client import BlockingSentinelConnectionPool, build_connection_pool, create_redis_client
from fmredis.config import RedisSettings, resolve_settings
from fmredis.errors import ConfigurationError
from tests.fakes import FakeConfigManager

SECRET = "S3cr3t-pw"
SENTINEL_SECRET = "Sent1nel-S3cr3t"

no_db = settings(database=None, deadline=None, max_examples=200)

#: A complete Sentinel configuration in REDIS_* variables.
SENTINEL_ENV = {
    "REDIS_MODE": "sentinel",
    "REDIS_SENTINELS": "s1:26379,s2:26380",
    "REDIS_SENTINEL_MASTER": "mymaster",
}

#: Addresses where nothing listens (port 1 on loopback); only safe because nothing here connects.
UNREACHABLE = "127.0.0.1:1,127.0.0.1:2"


def explain_row(s: RedisSettings, name: str) -> str:
    (row,) = [line for line in s.explain().splitlines() if line.split()[0] == name]
    return row


def assert_hidden(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text


# --- mode in every tier --------------------------------------------------------------------------------------------


class TestModeTiers:
    def test_default_is_standalone(self) -> None:
        s = resolve_settings(environ={})
        assert (s.mode, s.source_of("mode")) == ("standalone", "default")
        assert (s.sentinels, s.sentinel_master, s.cluster_nodes) == (None, None, None)
        assert s.source_of("sentinels") == "default"

    def test_explicit(self) -> None:
        s = resolve_settings(environ={}, mode="sentinel", sentinels="s1:26379", sentinel_master="mymaster")
        assert (s.mode, s.sentinels, s.sentinel_master) == ("sentinel", (("s1", 26379),), "mymaster")
        assert s.source_of("mode") == "argument mode"
        assert s.source_of("sentinels") == "argument sentinels"
        assert s.source_of("sentinel_master") == "argument sentinel_master"

    @pytest.mark.parametrize(
        ("url", "mode", "ssl", "nodes_field"),
        [
            ("redis+sentinel://s1:26379,s2:26380/mymaster", "sentinel", False, "sentinels"),
            ("rediss+sentinel://s1:26379,s2:26380/mymaster", "sentinel", True, "sentinels"),
            ("redis+cluster://s1:26379,s2:26380", "cluster", False, "cluster_nodes"),
            ("rediss+cluster://s1:26379,s2:26380", "cluster", True, "cluster_nodes"),
        ],
    )
    @pytest.mark.parametrize("via", ["url-argument", "REDIS_URL"])
    def test_url_scheme(self, url: str, mode: str, ssl: bool, nodes_field: str, via: str) -> None:
        if via == "url-argument":
            s, label = resolve_settings(environ={}, url=url), "argument url"
        else:
            s, label = resolve_settings(environ={"REDIS_URL": url}), "REDIS_URL"
        assert (s.mode, s.ssl) == (mode, ssl)
        assert getattr(s, nodes_field) == (("s1", 26379), ("s2", 26380))
        for name in ("mode", "ssl", nodes_field):
            assert s.source_of(name) == label
        if mode == "sentinel":
            assert (s.sentinel_master, s.source_of("sentinel_master")) == ("mymaster", label)

    def test_config_manager(self) -> None:
        manager = FakeConfigManager({"mode": "cluster", "cluster_nodes": [("n1", 7000), ("n2", "7001")]})
        s = resolve_settings(environ={}, config_manager=manager)
        assert (s.mode, s.cluster_nodes) == ("cluster", (("n1", 7000), ("n2", 7001)))
        assert s.source_of("mode") == "config manager key 'mode'"
        assert s.source_of("cluster_nodes") == "config manager key 'cluster_nodes'"

    def test_environment(self) -> None:
        s = resolve_settings(environ=SENTINEL_ENV)
        assert (s.mode, s.sentinels, s.sentinel_master) == ("sentinel", (("s1", 26379), ("s2", 26380)), "mymaster")
        assert s.source_of("mode") == "environment variable REDIS_MODE"
        assert s.source_of("sentinels") == "environment variable REDIS_SENTINELS"
        assert s.source_of("sentinel_master") == "environment variable REDIS_SENTINEL_MASTER"

    @pytest.mark.parametrize("given_mode", ["SENTINEL", "Sentinel", " sentinel ", "sEnTiNeL"])
    @pytest.mark.parametrize("tier", ["explicit", "environment", "config-manager"])
    def test_mode_is_case_insensitive(self, given_mode: str, tier: str) -> None:
        rest = {"sentinels": "s1:26379", "sentinel_master": "m"}
        if tier == "explicit":
            s = resolve_settings(environ={}, mode=given_mode, **rest)
        elif tier == "environment":
            s = resolve_settings(environ={**SENTINEL_ENV, "REDIS_MODE": given_mode})
        else:
            s = resolve_settings(environ={}, config_manager=FakeConfigManager({"mode": given_mode, **rest}))
        assert s.mode == "sentinel"

    def test_explicit_mode_beats_environment_mode(self) -> None:
        s = resolve_settings(environ={**SENTINEL_ENV, "REDIS_MODE": "cluster"}, mode="sentinel")
        assert (s.mode, s.source_of("mode")) == ("sentinel", "argument mode")
        assert s.source_of("sentinels") == "environment variable REDIS_SENTINELS"

    def test_explicit_mode_beats_config_manager_mode(self) -> None:
        manager = FakeConfigManager({"mode": "sentinel"})
        s = resolve_settings(environ={}, config_manager=manager, mode="cluster")
        assert (s.mode, s.source_of("mode")) == ("cluster", "argument mode")

    def test_url_scheme_beats_config_manager_and_environment(self) -> None:
        manager = FakeConfigManager({"mode": "sentinel"})
        s = resolve_settings(
            environ={"REDIS_URL": "redis+cluster://n1:7000", "REDIS_MODE": "sentinel"}, config_manager=manager
        )
        assert (s.mode, s.source_of("mode")) == ("cluster", "REDIS_URL")
        assert (s.cluster_nodes, s.source_of("cluster_nodes")) == ((("n1", 7000),), "REDIS_URL")

    def test_config_manager_beats_environment(self) -> None:
        manager = FakeConfigManager({"mode": "cluster"})
        s = resolve_settings(environ={"REDIS_MODE": "sentinel"}, config_manager=manager)
        assert (s.mode, s.source_of("mode")) == ("cluster", "config manager key 'mode'")

    def test_url_sentinels_beat_environment_sentinels(self) -> None:
        s = resolve_settings(environ={**SENTINEL_ENV, "REDIS_URL": "redis+sentinel://u1:1,u2:2/urlmaster"})
        assert (s.sentinels, s.source_of("sentinels")) == ((("u1", 1), ("u2", 2)), "REDIS_URL")
        assert (s.sentinel_master, s.source_of("sentinel_master")) == ("urlmaster", "REDIS_URL")
        assert s.source_of("mode") == "REDIS_URL"

    def test_explicit_sentinels_beat_url_sentinels(self) -> None:
        s = resolve_settings(environ={}, url="redis+sentinel://u1:1/m", sentinels=[("x", 9)])
        assert (s.sentinels, s.source_of("sentinels")) == ((("x", 9),), "argument sentinels")
        assert (s.mode, s.source_of("mode")) == ("sentinel", "argument url")

    def test_fields_merge_across_tiers(self) -> None:
        manager = FakeConfigManager({"sentinels": [("cm", 26379)]})
        s = resolve_settings(
            environ={"REDIS_SENTINEL_MASTER": "envmaster", "REDIS_SENTINELS": "env:1"},
            config_manager=manager,
            mode="SENTINEL",
        )
        assert (s.mode, s.sentinels, s.sentinel_master) == ("sentinel", (("cm", 26379),), "envmaster")
        assert s.source_of("sentinels") == "config manager key 'sentinels'"

    def test_standalone_url_is_not_silently_overridden_by_a_lower_tier_mode(self) -> None:
        # The redis:// scheme names one server (and its host, an address); a REDIS_MODE=sentinel further down must
        # not turn the settings into Sentinel ones that ignore the URL's host. Either the URL wins (standalone) or the
        # conflict is an error; silently connecting elsewhere is neither.
        try:
            s = resolve_settings(environ=SENTINEL_ENV, url="redis://url-host:6390")
        except ConfigurationError:
            return
        assert (s.mode, s.host, s.port) == ("standalone", "url-host", 6390)
        assert s.address == "redis://url-host:6390/0"


# --- parsing the node lists ----------------------------------------------------------------------------------------


class TestNodeParsing:
    def test_sentinel_environment_variables(self) -> None:
        environ = {
            **SENTINEL_ENV,
            "REDIS_SENTINEL_USERNAME": "sentinel-user",
            "REDIS_SENTINEL_PASSWORD": SENTINEL_SECRET,
        }
        s = resolve_settings(environ=environ)
        assert (s.sentinel_username, s.sentinel_password) == ("sentinel-user", SENTINEL_SECRET)
        assert s.source_of("sentinel_username") == "environment variable REDIS_SENTINEL_USERNAME"
        assert s.source_of("sentinel_password") == "environment variable REDIS_SENTINEL_PASSWORD"
        assert (s.username, s.password) == (None, None)  # the data nodes' credentials are separate

    def test_cluster_nodes_environment_variable(self) -> None:
        s = resolve_settings(environ={"REDIS_MODE": "cluster", "REDIS_CLUSTER_NODES": "n1:7000,n2:7001,n3:7002"})
        assert s.cluster_nodes == (("n1", 7000), ("n2", 7001), ("n3", 7002))
        assert s.source_of("cluster_nodes") == "environment variable REDIS_CLUSTER_NODES"

    @pytest.mark.parametrize(
        "text",
        ["a:1, b:2,", " a:1 ,b:2 ", ",a:1,,b:2", "a:1,\tb: 2\n", "a:1 , b:2 , , "],
    )
    @pytest.mark.parametrize("variable", ["REDIS_SENTINELS", "REDIS_CLUSTER_NODES"])
    def test_whitespace_and_empty_items_are_tolerated(self, text: str, variable: str) -> None:
        mode = "sentinel" if variable == "REDIS_SENTINELS" else "cluster"
        environ = {"REDIS_MODE": mode, variable: text}
        if mode == "sentinel":
            environ["REDIS_SENTINEL_MASTER"] = "m"
        s = resolve_settings(environ=environ)
        assert s.nodes == (("a", 1), ("b", 2))

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("[::1]:26379", (("::1", 26379),)),
            ("[::1]:26379,[fe80::1]:26380,h:1", (("::1", 26379), ("fe80::1", 26380), ("h", 1))),
            (" [2001:db8::7]:7000 ,", (("2001:db8::7", 7000),)),
        ],
    )
    def test_ipv6_in_brackets(self, text: str, expected: tuple[tuple[str, int], ...]) -> None:
        s = resolve_settings(environ={"REDIS_MODE": "cluster", "REDIS_CLUSTER_NODES": text})
        assert s.cluster_nodes == expected

    @pytest.mark.parametrize(
        "value",
        [
            pytest.param([("a", 1), ("b", 2)], id="list-of-tuples"),
            pytest.param((("a", 1), ("b", 2)), id="tuple-of-tuples"),
            pytest.param([["a", 1], ["b", "2"]], id="list-of-lists-string-port"),
            pytest.param(["a:1", "b:2"], id="list-of-strings"),
            pytest.param(("a:1", ("b", 2)), id="mixed"),
            pytest.param("a:1,b:2", id="string"),
        ],
    )
    @pytest.mark.parametrize("tier", ["explicit", "config-manager"])
    def test_sequences(self, value: object, tier: str) -> None:
        if tier == "explicit":
            s = resolve_settings(environ={}, mode="sentinel", sentinel_master="m", sentinels=value)
        else:
            manager = FakeConfigManager({"mode": "sentinel", "sentinel_master": "m", "sentinels": value})
            s = resolve_settings(environ={}, config_manager=manager)
        assert s.sentinels == (("a", 1), ("b", 2))
        assert isinstance(s.sentinels, tuple)
        assert all(isinstance(node, tuple) for node in s.sentinels)

    def test_ipv6_sequence_entries(self) -> None:
        s = resolve_settings(environ={}, mode="cluster", cluster_nodes=["[::1]:7000", ("::2", 7001)])
        assert s.cluster_nodes == (("::1", 7000), ("::2", 7001))

    @no_db
    @given(
        nodes=st.lists(
            st.tuples(
                st.text(string.ascii_letters + string.digits + "-.", min_size=1, max_size=20)
                | st.ip_addresses(v=6).map(str),
                st.integers(1, 65535),
            ),
            min_size=1,
            max_size=8,
        )
    )
    def test_formatted_list_round_trips(self, nodes: list[tuple[str, int]]) -> None:
        text = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in nodes)
        s = resolve_settings(environ={**SENTINEL_ENV, "REDIS_SENTINELS": text})
        assert s.sentinels == tuple(nodes)
        assert s.nodes == tuple(nodes)
        # ...and the address it reports reads back to the same settings.
        again = resolve_settings(environ={}, url=s.address)
        assert (again.mode, again.sentinels, again.sentinel_master, again.db) == (
            "sentinel",
            s.sentinels,
            "mymaster",
            0,
        )


# --- errors --------------------------------------------------------------------------------------------------------


class Raises:
    """One row of the error table: how to call resolve_settings, and the key and source the error must carry."""

    def __init__(self, key: str, source: str, *, says: str = "", **call: Any) -> None:
        self.key, self.source, self.says, self.call = key, source, says, call


S_ENV = "environment variable REDIS_SENTINELS"
C_ENV = "environment variable REDIS_CLUSTER_NODES"

ERROR_TABLE = [
    # unknown mode, in each tier
    pytest.param(Raises("mode", "argument mode", mode="replica"), id="mode-unknown-explicit"),
    pytest.param(Raises("mode", "environment variable REDIS_MODE", environ={"REDIS_MODE": "Replica"}), id="mode-env"),
    pytest.param(
        Raises("mode", "config manager key 'mode'", config_manager=FakeConfigManager({"mode": "clustered"})),
        id="mode-unknown-manager",
    ),
    pytest.param(Raises("mode", "argument mode", mode=""), id="mode-empty-explicit"),
    pytest.param(Raises("mode", "argument mode", mode=3), id="mode-int"),
    # malformed node lists
    pytest.param(Raises("sentinels", S_ENV, environ={**SENTINEL_ENV, "REDIS_SENTINELS": "s1"}), id="no-port"),
    pytest.param(Raises("sentinels", S_ENV, environ={**SENTINEL_ENV, "REDIS_SENTINELS": "s1:1,s2"}), id="2nd-no-port"),
    pytest.param(Raises("sentinels", S_ENV, environ={**SENTINEL_ENV, "REDIS_SENTINELS": "s1:"}), id="empty-port"),
    pytest.param(Raises("sentinels", S_ENV, environ={**SENTINEL_ENV, "REDIS_SENTINELS": ":26379"}), id="empty-host"),
    pytest.param(Raises("sentinels", S_ENV, environ={**SENTINEL_ENV, "REDIS_SENTINELS": "s1:abc"}), id="port-abc"),
    pytest.param(Raises("sentinels", S_ENV, environ={**SENTINEL_ENV, "REDIS_SENTINELS": "s1:0"}), id="port-0"),
    pytest.param(Raises("sentinels", S_ENV, environ={**SENTINEL_ENV, "REDIS_SENTINELS": "s1:70000"}), id="port-70000"),
    pytest.param(Raises("sentinels", S_ENV, environ={**SENTINEL_ENV, "REDIS_SENTINELS": "s1:-1"}), id="port-negative"),
    pytest.param(Raises("sentinels", S_ENV, environ={**SENTINEL_ENV, "REDIS_SENTINELS": "a/b:1"}), id="host-slash"),
    pytest.param(Raises("sentinels", S_ENV, environ={**SENTINEL_ENV, "REDIS_SENTINELS": "u@h:1"}), id="host-at"),
    pytest.param(Raises("sentinels", S_ENV, environ={**SENTINEL_ENV, "REDIS_SENTINELS": "a b:1"}), id="host-space"),
    pytest.param(Raises("sentinels", S_ENV, environ={**SENTINEL_ENV, "REDIS_SENTINELS": "[::1]"}), id="ipv6-no-port"),
    pytest.param(Raises("sentinels", S_ENV, environ={**SENTINEL_ENV, "REDIS_SENTINELS": " , ,"}), id="empty-list"),
    pytest.param(Raises("cluster_nodes", C_ENV, environ={"REDIS_MODE": "cluster", "REDIS_CLUSTER_NODES": ","}), id="c"),
    pytest.param(
        Raises("cluster_nodes", "argument cluster_nodes", mode="cluster", cluster_nodes=[]), id="explicit-empty-list"
    ),
    pytest.param(
        Raises("cluster_nodes", "argument cluster_nodes", mode="cluster", cluster_nodes=[("h", 0)]),
        id="explicit-tuple-port-0",
    ),
    pytest.param(
        Raises("cluster_nodes", "argument cluster_nodes", mode="cluster", cluster_nodes=[("h", 70000)]),
        id="explicit-tuple-port-70000",
    ),
    pytest.param(
        Raises("cluster_nodes", "argument cluster_nodes", mode="cluster", cluster_nodes=[("h", True)]),
        id="explicit-tuple-port-bool",
    ),
    pytest.param(
        Raises("cluster_nodes", "argument cluster_nodes", mode="cluster", cluster_nodes=[("h/0", 1)]),
        id="explicit-tuple-host-slash",
    ),
    pytest.param(
        Raises("cluster_nodes", "argument cluster_nodes", mode="cluster", cluster_nodes=[("h", 1, 2)]),
        id="explicit-triple",
    ),
    pytest.param(
        Raises("cluster_nodes", "argument cluster_nodes", mode="cluster", cluster_nodes=("h", 1)),
        id="explicit-flat-pair",
    ),
    pytest.param(
        Raises("cluster_nodes", "argument cluster_nodes", mode="cluster", cluster_nodes={("h", 1)}), id="explicit-set"
    ),
    pytest.param(
        Raises(
            "sentinels",
            "config manager key 'sentinels'",
            config_manager=FakeConfigManager({"mode": "sentinel", "sentinel_master": "m", "sentinels": [("h", "x")]}),
        ),
        id="manager-non-numeric-port",
    ),
    # cross-field rules
    pytest.param(
        Raises("sentinels", "default", says="needs sentinels", mode="sentinel", sentinel_master="m"),
        id="sentinel-without-sentinels",
    ),
    pytest.param(
        Raises("sentinel_master", "default", says="needs sentinel_master", mode="sentinel", sentinels="s:1"),
        id="sentinel-without-master",
    ),
    pytest.param(
        Raises("sentinels", S_ENV, says="set mode=sentinel", environ={"REDIS_SENTINELS": "s:1"}),
        id="sentinels-while-standalone",
    ),
    pytest.param(
        Raises("sentinel_master", "argument sentinel_master", says="set mode=sentinel", sentinel_master="m"),
        id="master-while-standalone",
    ),
    pytest.param(
        Raises("sentinels", "argument sentinels", says="set mode=sentinel", mode="cluster", sentinels="s:1"),
        id="sentinels-while-cluster",
    ),
    pytest.param(
        Raises("cluster_nodes", C_ENV, says="set mode=cluster", environ={**SENTINEL_ENV, "REDIS_CLUSTER_NODES": "n:1"}),
        id="cluster-nodes-while-sentinel",
    ),
    pytest.param(
        Raises("cluster_nodes", "argument cluster_nodes", says="set mode=cluster", cluster_nodes="n:1"),
        id="cluster-nodes-while-standalone",
    ),
    pytest.param(Raises("db", "argument db", mode="cluster", db=1), id="cluster-db-1"),
    pytest.param(
        Raises("db", "environment variable REDIS_DB", environ={"REDIS_DB": "2"}, url="redis+cluster://n:1"),
        id="cluster-url-env-db",
    ),
    pytest.param(Raises("db", "argument url", says="database 0", url="redis+cluster://n:1/3"), id="cluster-url-path"),
    pytest.param(Raises("db", "argument url", url="redis+cluster://n:1?db=1"), id="cluster-url-query-db"),
    pytest.param(
        Raises("unix_socket_path", "argument unix_socket_path", mode="cluster", unix_socket_path="/tmp/r.sock"),
        id="unix-socket-cluster",
    ),
    pytest.param(
        Raises(
            "unix_socket_path",
            "environment variable REDIS_UNIX_SOCKET_PATH",
            environ={**SENTINEL_ENV, "REDIS_UNIX_SOCKET_PATH": "/tmp/r.sock"},
        ),
        id="unix-socket-sentinel",
    ),
    # URL forms
    pytest.param(Raises("mode", "argument url", url="redis+sentinel://s:1/m?mode=cluster"), id="query-mode"),
    pytest.param(Raises("mode", "argument url", url="redis://h?mode=sentinel"), id="query-mode-standalone-url"),
    pytest.param(Raises("sentinels", "argument url", url="redis+sentinel://s:1/m?sentinels=t:2"), id="query-sentinels"),
    pytest.param(
        Raises("cluster_nodes", "argument url", url="redis+cluster://n:1?cluster_nodes=t:2"), id="query-cluster-nodes"
    ),
    pytest.param(Raises("host", "argument url", url="redis+cluster://n:1?host=t"), id="query-host"),
    pytest.param(Raises("sentinel_master", "argument url", url="redis+sentinel://s:1"), id="url-no-master"),
    pytest.param(Raises("sentinel_master", "argument url", url="redis+sentinel://s:1/m/0/x"), id="url-long-path"),
    pytest.param(Raises("db", "argument url", url="redis+sentinel://s:1/m/x"), id="url-db-not-int"),
    pytest.param(Raises("db", "argument url", url="redis+sentinel://s:1/m/1?db=2"), id="url-db-twice"),
    pytest.param(Raises("sentinels", "argument url", url="redis+sentinel:///m"), id="url-no-hosts"),
    pytest.param(Raises("sentinels", "argument url", url="redis+sentinel://s/m"), id="url-host-no-port"),
    pytest.param(Raises("cluster_nodes", "REDIS_URL", environ={"REDIS_URL": "redis+cluster://n:0"}), id="url-port-0"),
]


class TestErrors:
    @pytest.mark.parametrize("row", ERROR_TABLE)
    def test_error_table(self, row: Raises) -> None:
        call = dict(row.call)
        environ = call.pop("environ", {})
        with pytest.raises(ConfigurationError) as info:
            resolve_settings(environ=environ, **call)
        err = info.value
        assert err.key == row.key
        assert err.source == row.source
        assert str(err).startswith(f"{row.source}: ")
        assert row.says in str(err)

    @pytest.mark.parametrize(
        ("environ", "explicit", "mode_source", "missing"),
        [
            (
                {"REDIS_MODE": "sentinel", "REDIS_SENTINEL_MASTER": "m"},
                {},
                "environment variable REDIS_MODE",
                "sentinels",
            ),
            ({"REDIS_SENTINELS": "s:1"}, {"mode": "sentinel"}, "argument mode", "sentinel_master"),
        ],
    )
    def test_a_missing_sentinel_setting_names_where_sentinel_mode_came_from(
        self, environ: dict[str, str], explicit: dict[str, Any], mode_source: str, missing: str
    ) -> None:
        # Nothing supplied the missing setting, so its own source is "default"; the message must still point at the
        # setting that asked for Sentinel mode, or the user cannot tell which of their configurations to fix.
        with pytest.raises(ConfigurationError) as info:
            resolve_settings(environ=environ, **explicit)
        assert info.value.key == missing
        assert mode_source in str(info.value)

    def test_query_mode_is_refused_even_when_it_restates_the_scheme(self) -> None:
        # ?mode= is refused even when it restates the scheme's mode.
        with pytest.raises(ConfigurationError) as info:
            resolve_settings(environ={}, url="redis+sentinel://s:1/m?mode=sentinel")
        assert info.value.key == "mode"

    @pytest.mark.parametrize(
        "url",
        ["REDIS+SENTINEL://s1:26379,s2:26380/m/2", "Redis+Sentinel://s1:26379,s2:26380/m/2"],
    )
    def test_scheme_is_case_insensitive_like_redis_scheme(self, url: str) -> None:
        # "REDIS://h" is accepted (urlsplit lower-cases schemes, RFC 3986 says they are case-insensitive); the
        # multi-host schemes are refused with "unknown URL scheme 'redis+sentinel'; use ... redis+sentinel://".
        assert resolve_settings(environ={}, url="REDIS://h:1").host == "h"
        s = resolve_settings(environ={}, url=url)
        assert (s.mode, s.sentinels, s.sentinel_master, s.db) == ("sentinel", (("s1", 26379), ("s2", 26380)), "m", 2)


# --- URL forms -----------------------------------------------------------------------------------------------------


class TestUrlForms:
    def test_credentials_are_percent_decoded(self) -> None:
        url = "redis+sentinel://us%40er:p%2Fw%40%3A%23%20x@s1:26379,s2:26380/my%2Dmaster/2"
        s = resolve_settings(environ={}, url=url)
        assert (s.username, s.password) == ("us@er", "p/w@:# x")
        assert (s.sentinel_master, s.db) == ("my-master", 2)
        assert s.source_of("password") == "argument url"
        assert s.source_of("username") == "argument url"

    def test_password_only_in_cluster_url(self) -> None:
        s = resolve_settings(environ={}, url=f"rediss+cluster://:{SECRET}@n1:7000,[::1]:7001")
        assert (s.username, s.password, s.ssl) == (None, SECRET, True)
        assert s.cluster_nodes == (("n1", 7000), ("::1", 7001))

    @pytest.mark.parametrize(
        ("url", "db", "db_source"),
        [
            ("redis+sentinel://s:1/m/3", 3, "argument url"),
            ("redis+sentinel://s:1/m/3/", 3, "argument url"),
            ("redis+sentinel://s:1/m", 0, "default"),
            ("redis+sentinel://s:1/m/", 0, "default"),
            ("redis+sentinel://s:1/m?db=4", 4, "argument url"),
        ],
    )
    def test_db_from_the_sentinel_path(self, url: str, db: int, db_source: str) -> None:
        s = resolve_settings(environ={}, url=url)
        assert (s.sentinel_master, s.db, s.source_of("db")) == ("m", db, db_source)

    def test_sentinel_url_path_db_beats_environment_db(self) -> None:
        s = resolve_settings(environ={"REDIS_URL": "redis+sentinel://s:1/m/5", "REDIS_DB": "9"})
        assert (s.db, s.source_of("db")) == (5, "REDIS_URL")

    def test_query_parameters_are_applied(self) -> None:
        url = (
            "redis+sentinel://s1:26379/m?sentinel_password=sp%26w&sentinel_username=su"
            "&socket_timeout=2.5&max_connections=3&pool_timeout=0.5"
        )
        s = resolve_settings(environ={}, url=url)
        assert (s.sentinel_password, s.sentinel_username) == ("sp&w", "su")
        assert (s.socket_timeout, s.max_connections, s.pool_timeout) == (2.5, 3, 0.5)
        for name in ("sentinel_password", "sentinel_username", "socket_timeout", "max_connections", "pool_timeout"):
            assert s.source_of(name) == "argument url"

    def test_cluster_url_query_parameters(self) -> None:
        s = resolve_settings(environ={}, url="redis+cluster://n:7000?socket_timeout=3&ssl=true&client_name=w1")
        assert (s.socket_timeout, s.ssl, s.client_name) == (3.0, True, "w1")

    def test_an_empty_sentinel_password_in_the_query_is_not_given(self) -> None:
        s = resolve_settings(
            environ={"REDIS_URL": "redis+sentinel://s:1/m?sentinel_password=", "REDIS_SENTINEL_PASSWORD": "envpw"}
        )
        assert (s.sentinel_password, s.source_of("sentinel_password")) == (
            "envpw",
            "environment variable REDIS_SENTINEL_PASSWORD",
        )

    @pytest.mark.parametrize(
        "url",
        [
            pytest.param(f"redis+sentinel://:{SECRET}/x@h:1/m", id="slash-in-password"),
            pytest.param(f"redis+sentinel://:pa/{SECRET}@h:1/m", id="slash-before-secret"),
            pytest.param(f"redis+sentinel://:{SECRET}:w@h:x/m", id="colon-in-password-bad-port"),
            pytest.param(f"redis+sentinel://:{SECRET}#x@h:1/m", id="hash-in-password"),
            pytest.param(f"redis+sentinel://user:{SECRET}#x@h:1/m", id="hash-in-password-with-user"),
            pytest.param(f"redis+sentinel://user:12#{SECRET}@h:1/m", id="hash-after-digits"),
            pytest.param(f"redis+sentinel://:{SECRET}?x@h:1/m", id="question-mark-in-password"),
            pytest.param(f"redis+sentinel://:{SECRET}@@h:1/m", id="double-at"),
            pytest.param(f"redis+sentinel://user:12/{SECRET}@h:26379/mymaster", id="slash-after-digits"),
            # The password "12/S3cr3t-pw" makes "user:12" the sentinel and "S3cr3t-pw@h:26379" the master name.
            pytest.param(f"redis+sentinel://user:12/{SECRET}@h:26379/0", id="slash-after-digits-master-0"),
            pytest.param(f"rediss+sentinel://:{SECRET}/@h:1,h2:2/m", id="trailing-slash-in-password"),
            pytest.param(f"redis+sentinel://:{SECRET}@h:1,:2/m", id="bad-second-host"),
            pytest.param(f"redis+sentinel://:{SECRET}@/m", id="no-hosts"),
            pytest.param(f"redis+sentinel://:{SECRET}@h:1", id="no-master"),
            pytest.param(f"redis+cluster://user:12/{SECRET}@h:7000", id="cluster-slash-after-digits"),
            pytest.param(f"redis+cluster://:{SECRET}#x@h:7000", id="cluster-hash"),
            pytest.param(f"redis+cluster://:{SECRET}/x@h:7000", id="cluster-slash"),
            pytest.param(f"redis+cluster://:{SECRET}@h:7000/1", id="cluster-db-path"),
            pytest.param(f"redis+cluster://:{SECRET}@h:0", id="cluster-port-0"),
            pytest.param(f"redis+sentinel://:{SECRET}@h:1/m?socket_timeout=nan", id="bad-query-value"),
            pytest.param(f"redis+sentinel://h:1/m?sentinel_password={SECRET}&socket_timeout=x", id="query-secret"),
            pytest.param(f"redis+sentinel://h:1/m?sentinel_password={SECRET}&sentinel_password=x", id="query-twice"),
            pytest.param(f"redis+sentinel://h:1/m?sentinel_password={SECRET}&mode=x", id="query-secret-mode"),
            pytest.param(f"redis+sentinel://:{SECRET}@h:1/m?password=x", id="password-twice"),
            pytest.param(f"redis+sentinel://:{SECRET}@h:1/m/0/1", id="long-path"),
        ],
    )
    @pytest.mark.parametrize("via", ["url-argument", "REDIS_URL"])
    def test_malformed_url_never_shows_the_password(self, url: str, via: str) -> None:
        # Unencoded '/', '@', ':', '#', '?' in a password make the URL split in the wrong places. Whatever happens --
        # an error, or settings that resolve from the misread pieces -- the password must not show.
        environ = {"REDIS_URL": url} if via == "REDIS_URL" else {}
        try:
            s = resolve_settings(environ=environ, url=url if via == "url-argument" else None)
        except ConfigurationError as exc:
            assert_hidden(str(exc), SECRET)
            assert_hidden(repr(exc), SECRET)
            return
        for text in (repr(s), str(s), s.explain(), s.address):
            assert_hidden(text, SECRET)

    @pytest.mark.parametrize(
        "url",
        [
            f"redis+sentinel://:{SECRET}/x@h:1/m",
            f"redis+sentinel://:{SECRET}:w@h:x/m",
            f"redis+sentinel://:{SECRET}#x@h:1/m",
            f"redis+cluster://:{SECRET}/x@h:7000",
        ],
    )
    def test_malformed_url_is_an_error(self, url: str) -> None:
        with pytest.raises(ConfigurationError) as info:
            resolve_settings(environ={}, url=url)
        assert info.value.source == "argument url"

    def test_password_with_unencoded_colon_and_at_is_read_whole(self) -> None:
        # The host list starts after the last '@'; the password after the first ':'.
        s = resolve_settings(environ={}, url="redis+sentinel://user:p:w@x@h:1/m")
        assert (s.username, s.password, s.sentinels) == ("user", "p:w@x", (("h", 1),))


# --- masking -------------------------------------------------------------------------------------------------------


def _resolve_sentinel_password_via(where: str) -> RedisSettings:
    base = {"mode": "sentinel", "sentinels": "s:1", "sentinel_master": "m"}
    if where == "explicit":
        return resolve_settings(environ={}, sentinel_password=SENTINEL_SECRET, password=SECRET, **base)
    if where == "url-query":
        url = f"redis+sentinel://:{SECRET}@s:1/m?sentinel_password={SENTINEL_SECRET}"
        return resolve_settings(environ={}, url=url)
    if where == "config-manager":
        manager = FakeConfigManager({**base, "sentinel_password": SENTINEL_SECRET, "password": SECRET})
        return resolve_settings(environ={}, config_manager=manager)
    if where == "environment":
        environ = {**SENTINEL_ENV, "REDIS_SENTINEL_PASSWORD": SENTINEL_SECRET, "REDIS_PASSWORD": SECRET}
        return resolve_settings(environ=environ)
    raise AssertionError(where)


class TestMasking:
    @pytest.mark.parametrize("where", ["explicit", "url-query", "config-manager", "environment"])
    def test_passwords_are_resolved_but_never_shown(self, where: str) -> None:
        s = _resolve_sentinel_password_via(where)
        assert (s.sentinel_password, s.password) == (SENTINEL_SECRET, SECRET)
        for text in (repr(s), str(s), s.explain(), s.address):
            assert_hidden(text, SECRET, SENTINEL_SECRET)
        assert "sentinel_password='***'" in repr(s)
        assert explain_row(s, "sentinel_password").split()[1] == "***"
        assert explain_row(s, "password").split()[1] == "***"

    def test_unset_sentinel_password_shows_none(self) -> None:
        s = resolve_settings(environ=SENTINEL_ENV)
        assert "sentinel_password=None" in repr(s)
        assert explain_row(s, "sentinel_password").split()[1] == "None"

    def test_direct_construction_masks(self) -> None:
        s = RedisSettings(mode="sentinel", sentinels=(("s", 1),), sentinel_master="m", sentinel_password=SECRET)
        assert_hidden(repr(s), SECRET)
        assert_hidden(s.explain(), SECRET)

    @pytest.mark.parametrize(
        "call",
        [
            pytest.param({"environ": {**SENTINEL_ENV, "REDIS_SENTINELS": "s:x"}}, id="bad-sentinels"),
            pytest.param({"environ": {**SENTINEL_ENV, "REDIS_CLUSTER_NODES": "n:1"}}, id="cross-field"),
            pytest.param({"environ": {"REDIS_MODE": "cluster", "REDIS_DB": "1"}}, id="cluster-db"),
            pytest.param({"environ": {"REDIS_MODE": "sentinel"}}, id="missing-sentinels"),
            pytest.param({"environ": {**SENTINEL_ENV, "REDIS_MODE": "bogus"}}, id="bad-mode"),
            pytest.param({"environ": SENTINEL_ENV, "sentinel_password": SENTINEL_SECRET.encode()}, id="bytes"),
            pytest.param({"environ": SENTINEL_ENV, "sentinel_password": [SENTINEL_SECRET]}, id="list"),
            pytest.param(
                {"environ": {}, "config_manager": FakeConfigManager({"sentinel_password": (SENTINEL_SECRET,)})},
                id="manager-tuple",
            ),
        ],
    )
    def test_no_error_message_shows_a_password(self, call: dict[str, Any]) -> None:
        call = dict(call)
        environ = {"REDIS_PASSWORD": SECRET, **call.pop("environ")}
        call.setdefault("sentinel_password", SENTINEL_SECRET)
        if "config_manager" in call:
            call.pop("sentinel_password")
        with pytest.raises(ConfigurationError) as info:
            resolve_settings(environ=environ, **call)
        for text in (str(info.value), repr(info.value)):
            assert_hidden(text, SECRET, SENTINEL_SECRET)

    @pytest.mark.parametrize(
        "value",
        [
            f"redis+sentinel://:{SECRET}@h:26379/mymaster",
            f"redis://:{SECRET}@h:6379/0",
            f"rediss+cluster://user:{SECRET}@n1:7000,n2:7001",
            f"h:1,user:{SECRET}@h",
            f"user:{SECRET}@h:1",
        ],
    )
    @pytest.mark.parametrize(
        ("field", "mode"), [("sentinels", "sentinel"), ("cluster_nodes", "cluster")], ids=["sentinels", "cluster"]
    )
    @pytest.mark.parametrize("tier", ["environment", "explicit", "config-manager"])
    def test_a_url_in_a_node_list_is_refused_without_echoing_it(
        self, value: str, field: str, mode: str, tier: str
    ) -> None:
        # The host:port lists are where a URL is easily pasted (as into REDIS_HOST, which refuses it unquoted).
        base: dict[str, Any] = {"mode": mode, "sentinel_master": "m"} if mode == "sentinel" else {"mode": mode}

        def resolve() -> RedisSettings:
            if tier == "environment":
                env = {f"REDIS_{k.upper()}": v for k, v in base.items()}
                return resolve_settings(environ={**env, f"REDIS_{field.upper()}": value})
            if tier == "explicit":
                return resolve_settings(environ={}, **base, **{field: value})
            return resolve_settings(environ={}, config_manager=FakeConfigManager({**base, field: value}))

        with pytest.raises(ConfigurationError) as info:
            resolve()
        assert info.value.key == field
        assert_hidden(str(info.value), SECRET)
        assert_hidden(repr(info.value), SECRET)


# --- nodes and address ---------------------------------------------------------------------------------------------


class TestNodesAndAddress:
    @pytest.mark.parametrize(
        ("kwargs", "nodes", "address"),
        [
            pytest.param({}, (("localhost", 6379),), "redis://localhost:6379/0", id="standalone-default"),
            pytest.param(
                {"host": "::1", "port": 6380, "db": 2, "ssl": True},
                (("::1", 6380),),
                "rediss://[::1]:6380/2",
                id="standalone-ipv6-ssl",
            ),
            pytest.param(
                {"mode": "sentinel", "sentinels": "s1:26379,[::1]:26380", "sentinel_master": "mymaster", "db": 2},
                (("s1", 26379), ("::1", 26380)),
                "redis+sentinel://s1:26379,[::1]:26380/mymaster/2",
                id="sentinel",
            ),
            pytest.param(
                {"mode": "sentinel", "sentinels": "s1:26379", "sentinel_master": "m", "ssl": True},
                (("s1", 26379),),
                "rediss+sentinel://s1:26379/m/0",
                id="sentinel-ssl",
            ),
            pytest.param(
                {"mode": "cluster", "cluster_nodes": [("n1", 7000), ("n2", 7001)], "host": "ignored"},
                (("n1", 7000), ("n2", 7001)),
                "redis+cluster://n1:7000,n2:7001",
                id="cluster",
            ),
            pytest.param(
                {"mode": "cluster", "cluster_nodes": "[fe80::1]:7000", "ssl": True},
                (("fe80::1", 7000),),
                "rediss+cluster://[fe80::1]:7000",
                id="cluster-ssl-ipv6",
            ),
            pytest.param(
                {"mode": "cluster", "host": "seed", "port": 7005},
                (("seed", 7005),),
                "redis+cluster://seed:7005",
                id="cluster-seed-from-host",
            ),
        ],
    )
    def test_nodes_and_address(self, kwargs: dict[str, Any], nodes: tuple[tuple[str, int], ...], address: str) -> None:
        s = resolve_settings(environ={}, **kwargs)
        assert s.nodes == nodes
        assert s.address == address

    @pytest.mark.parametrize(
        "url",
        [
            "redis+sentinel://s1:26379,[::1]:26380/mymaster/3",
            "rediss+sentinel://s1:26379/m",
            "redis+cluster://n1:7000,[::1]:7001",
            "rediss+cluster://n1:7000",
        ],
    )
    def test_address_reads_back_as_the_same_settings(self, url: str) -> None:
        s = resolve_settings(environ={}, url=url.replace("://", f"://alice:{SECRET}@"))
        assert s.password == SECRET
        assert_hidden(s.address, SECRET, "alice")
        again = resolve_settings(environ={}, url=s.address)
        assert again == RedisSettings(**{**attrs_values(s), "username": None, "password": None})


def attrs_values(s: RedisSettings) -> dict[str, Any]:
    return {k: v for k, v in attrs.asdict(s, recurse=False).items() if k != "sources"}


class TestDirectConstruction:
    @pytest.mark.parametrize(
        "kwargs",
        [
            pytest.param({"mode": "cluster", "cluster_nodes": ()}, id="cluster-empty"),
            pytest.param({"mode": "sentinel", "sentinels": (), "sentinel_master": "m"}, id="sentinel-empty"),
            pytest.param({"mode": "cluster", "cluster_nodes": (("h", "1"),)}, id="string-port"),
            pytest.param({"mode": "cluster", "cluster_nodes": (("h", True),)}, id="bool-port"),
            pytest.param({"mode": "cluster", "cluster_nodes": ("h:1",)}, id="unparsed-string"),
            pytest.param({"mode": "cluster", "cluster_nodes": ((1, 1),)}, id="int-host"),
            pytest.param({"mode": "cluster", "cluster_nodes": (("h", 0),)}, id="port-0"),
            pytest.param({"mode": "SENTINEL", "sentinels": (("s", 1),), "sentinel_master": "m"}, id="upper-mode"),
        ],
    )
    def test_invalid_node_lists_are_configuration_errors(self, kwargs: dict[str, Any]) -> None:
        # The class validates every field on construction; an empty list would make .nodes fall back to
        # localhost:6379 (a sentinel or cluster seed nobody configured).
        with pytest.raises(ConfigurationError):
            RedisSettings(**kwargs)

    def test_valid_direct_construction(self) -> None:
        s = RedisSettings(mode="sentinel", sentinels=(("s", 1), ("::1", 2)), sentinel_master="m", db=4)
        assert s.address == "redis+sentinel://s:1,[::1]:2/m/4"
        assert s.source_of("mode") == "default"  # nothing recorded on direct construction


# --- the clients ---------------------------------------------------------------------------------------------------


@pytest.fixture
def no_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a socket connection fails the test."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def sentinel_settings(**overrides: Any) -> RedisSettings:
    values: dict[str, Any] = {
        "mode": "sentinel",
        "sentinels": UNREACHABLE,
        "sentinel_master": "mymaster",
        "username": "data-user",
        "password": SECRET,
        "sentinel_username": "sentinel-user",
        "sentinel_password": SENTINEL_SECRET,
        "max_connections": 7,
        "pool_timeout": 2.5,
        "socket_timeout": 1.5,
        "socket_connect_timeout": 0.75,
        "retry_attempts": 3,
        "db": 4,
    }
    values.update(overrides)
    return resolve_settings(environ={}, **values)


@pytest.mark.usefixtures("no_connect")
class TestSentinelClient:
    def test_client_and_pool(self) -> None:
        client = create_redis_client(sentinel_settings())
        pool = client.connection_pool
        assert type(client) is redis.Redis
        assert type(pool) is BlockingSentinelConnectionPool
        assert isinstance(pool, BlockingConnectionPool)
        assert (pool.max_connections, pool.timeout) == (7, 2.5)
        assert pool.service_name == "mymaster"
        assert pool.is_master
        # A subclass that asks the sentinels on every reconnect (redis-py's own skips them on a retry).
        assert issubclass(pool.connection_class, SentinelManagedConnection)
        assert not issubclass(pool.connection_class, SentinelManagedSSLConnection)

    def test_data_connection_kwargs(self) -> None:
        kwargs = create_redis_client(sentinel_settings()).connection_pool.connection_kwargs
        assert (kwargs["username"], kwargs["password"]) == ("data-user", SECRET)
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (1.5, 0.75)
        assert kwargs["protocol"] == 2
        assert kwargs["db"] == 4
        assert kwargs["retry"].get_retries() == 3
        assert "ssl_cert_reqs" not in kwargs

    def test_protocol_follows_settings(self) -> None:
        kwargs = create_redis_client(sentinel_settings(protocol=3)).connection_pool.connection_kwargs
        assert kwargs["protocol"] == 3

    def test_ssl_uses_the_ssl_connection_class(self) -> None:
        pool = create_redis_client(sentinel_settings(ssl=True, ssl_cert_reqs="none")).connection_pool
        assert issubclass(pool.connection_class, SentinelManagedSSLConnection)
        assert pool.connection_kwargs["ssl_cert_reqs"] == "none"

    def test_a_made_connection_has_the_settings_but_is_not_connected(self) -> None:
        pool = create_redis_client(sentinel_settings(ssl=True)).connection_pool
        connection = pool.make_connection()
        assert isinstance(connection, SentinelManagedSSLConnection)
        assert (connection.socket_timeout, connection.db) == (1.5, 4)
        assert connection._sock is None

    def test_sentinels_carry_their_own_credentials(self) -> None:
        manager = create_redis_client(sentinel_settings()).connection_pool.sentinel_manager
        assert len(manager.sentinels) == 2
        for sentinel, port in zip(manager.sentinels, (1, 2), strict=True):
            kwargs = sentinel.connection_pool.connection_kwargs
            assert (kwargs["host"], kwargs["port"]) == ("127.0.0.1", port)
            assert (kwargs["username"], kwargs["password"]) == ("sentinel-user", SENTINEL_SECRET)
            assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (1.5, 0.75)
            assert kwargs["protocol"] == 2

    def test_sentinels_without_credentials_get_none(self) -> None:
        settings_ = sentinel_settings(sentinel_username=None, sentinel_password=None)
        manager = create_redis_client(settings_).connection_pool.sentinel_manager
        for sentinel in manager.sentinels:
            kwargs = sentinel.connection_pool.connection_kwargs
            assert (kwargs["username"], kwargs["password"]) == (None, None)  # not the data nodes' password

    def test_ipv6_sentinel(self) -> None:
        manager = create_redis_client(sentinel_settings(sentinels="[::1]:1")).connection_pool.sentinel_manager
        (sentinel,) = manager.sentinels
        assert sentinel.connection_pool.connection_kwargs["host"] == "::1"

    def test_resolution_arguments(self) -> None:
        url = f"rediss+sentinel://:{SECRET}@{UNREACHABLE}/mymaster/2?sentinel_password={SENTINEL_SECRET}"
        client = create_redis_client(url=url, environ={}, max_connections=3)
        pool = client.connection_pool
        assert isinstance(pool, BlockingSentinelConnectionPool)
        assert (pool.max_connections, pool.connection_kwargs["db"]) == (3, 2)
        assert issubclass(pool.connection_class, SentinelManagedSSLConnection)
        for sentinel in pool.sentinel_manager.sentinels:
            assert sentinel.connection_pool.connection_kwargs["password"] == SENTINEL_SECRET

    def test_nothing_shows_a_password(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.DEBUG):
            client = create_redis_client(sentinel_settings())
        assert "redis+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster/4" in caplog.text
        pool = client.connection_pool
        for text in (caplog.text, repr(client), repr(pool), repr(pool.sentinel_manager)):
            assert_hidden(text, SECRET, SENTINEL_SECRET)


class TestModeDispatch:
    @pytest.mark.parametrize(
        "settings_",
        [
            pytest.param(sentinel_settings(), id="sentinel"),
            pytest.param(RedisSettings(mode="cluster", cluster_nodes=(("127.0.0.1", 1),)), id="cluster"),
        ],
    )
    def test_build_connection_pool_refuses_non_standalone(self, settings_: RedisSettings) -> None:
        with pytest.raises(ValueError, match=settings_.mode):
            build_connection_pool(settings_)

    def test_cluster_client_arguments(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # RedisCluster connects on construction, so a recorder stands in for it.
        seen: dict[str, Any] = {}

        class Recorder:
            def __init__(self, **kwargs: Any) -> None:
                seen.update(kwargs)

        monkeypatch.setattr(client_module, "RedisCluster", Recorder)
        s = resolve_settings(environ={}, url="rediss+cluster://[::1]:7000,n2:7001", max_connections=5, pool_timeout=1.5)
        assert isinstance(create_redis_client(s), Recorder)
        assert seen["url"] == "rediss://[::1]:7000"
        assert [(n.host, n.port) for n in seen["startup_nodes"]] == [("n2", 7001)]
        assert issubclass(seen["connection_pool_class"], BlockingConnectionPool)
        assert seen["retry"].get_retries() == 1  # fmredis's retry_attempts, not redis-py's default of 10
        assert (seen["max_connections"], seen["timeout"]) == (5, 1.5)
        assert "db" not in seen
