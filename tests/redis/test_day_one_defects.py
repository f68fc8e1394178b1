"""The traps a new user met on day one (issue 10, part A), each against a real Redis, each failing on fmredis 0.1.

1. a plain ``set`` destroyed the stored session when the document's ``created_at`` was old;
2. ``last_activity`` never moved after the first write;
3. the exception chain carried the session id and the payload;
4. a failed ``create`` (or ``regenerate``) left part of its writes behind, and a per-user cap that could not be
   applied failed the ``create`` that had written its session;
5. server errors lost their reason;
6. configuration that failed later, and ``diagnostics`` raising redis-py's errors;
7. construction: ``from_url``, context managers, ``close`` on the interface, wrappers over a store instance, a client
   that decodes replies;
8. ``exists``/``ttl``/``extend_ttl`` disagreeing with ``get`` on unreadable data.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from pytest_redis.executor import RedisExecutor

from fmredis import (
    CircuitBreaker,
    ConfigurationError,
    FallbackSessionStore,
    InMemorySessionStore,
    ISessionStore,
    RedisSessionStore,
    ResilientRedisSessionStore,
    SessionExpired,
    SessionNotFound,
    SessionTTLManager,
    StoreError,
    StoreUnavailable,
    create_redis_client,
    diagnostics,
    redis_index,
    resolve_settings,
)
from fmredis.redis_errors import translate
from tests.harness.acl import temporary_acl_user

# The design document's example session: created_at is from January 2025, far past any lifetime cap.
DESIGN_SESSION: dict[str, Any] = {
    "user_id": "user_123",
    "created_at": "2025-01-15T10:30:00Z",
    "last_activity": "2025-01-15T10:35:22.456Z",
    "investigation_id": "inv_789",
    "context": {"current_phase": "analysis", "uploaded_files": ["log1.txt", "metrics.json"]},
}

# Built at run time so that no traceback's source line can show them: only the data can leak them.
SECRET_ID = "sid-" + "7f3a9c" * 4
SECRET_PAYLOAD = "payload-" + "d41d8c" * 4


def chain_text(exc: BaseException) -> str:
    """Everything ``traceback.format_exception`` prints for ``exc``: causes, contexts and all."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def assert_no_leak(exc: BaseException, *secrets: str) -> str:
    text = chain_text(exc)
    for secret in (SECRET_ID, SECRET_PAYLOAD, *secrets):
        assert secret not in text, f"{secret!r} leaked into:\n{text}"
    return text


@contextlib.contextmanager
def server_config(raw: redis.Redis, **settings: str) -> Iterator[None]:
    """CONFIG SET for the duration of the block, restored afterwards."""
    before = {name: raw.config_get(name)[name] for name in settings}
    for name, value in settings.items():
        raw.config_set(name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            raw.config_set(name, value)


@contextlib.contextmanager
def acl_user(raw: redis.Redis, *patterns: str, rules: Sequence[str] = ("+@all",)) -> Iterator[tuple[str, str]]:
    """An ACL user allowed ``rules`` (default: every command) on keys matching ``patterns`` only; yields (name,
    password)."""
    name, password = "day-one-user", "day-one-password"
    with temporary_acl_user(raw, name, password, patterns, rules=rules):
        yield name, password


def unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- 1. a plain set never destroys a session ------------------------------------------------------------------------


def test_a_set_of_the_design_documents_session_is_stored_with_the_ttl_asked_for(
    redis_store: RedisSessionStore, raw: redis.Redis
) -> None:
    redis_store.set("k", {"user_id": "user_123", "step": 1})
    redis_store.set("k", DESIGN_SESSION, ttl=600)  # raised SessionNotFound and deleted "k" in 0.1
    stored = orjson.loads(raw.get("session:k"))
    assert {name: stored[name] for name in DESIGN_SESSION if name != "last_activity"} == {
        name: value for name, value in DESIGN_SESSION.items() if name != "last_activity"
    }
    assert 590 <= raw.ttl("session:k") <= 600


def test_max_lifetime_is_off_by_default_in_every_store(redis_store: RedisSessionStore) -> None:
    stores: list[ISessionStore] = [redis_store, InMemorySessionStore(), ResilientRedisSessionStore(redis_store)]
    stores.append(FallbackSessionStore(redis_store))
    for store in stores:
        assert store.ttl_rules.max_lifetime is None, type(store).__name__


def test_with_max_lifetime_on_a_set_past_it_raises_session_expired_in_a_sentence(
    client: redis.Redis, raw: redis.Redis
) -> None:
    store = RedisSessionStore(client, max_lifetime=3600)
    store.set("k", {"user_id": "user_123"})
    with pytest.raises(SessionExpired) as caught:
        store.set("k", DESIGN_SESSION, ttl=600)
    assert isinstance(caught.value, SessionNotFound)  # callers catching the old error keep working
    message = str(caught.value)
    assert message[0].isupper() and message.endswith(".") and not message.startswith("'")
    assert "lifetime" in message and "k" not in message.split()
    assert raw.exists("session:k") == 0  # as documented: the cap removes the session instead of writing it


def test_the_readme_set_row_documents_the_lifetime_cap_and_the_stamp() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    [row] = [line for line in readme.splitlines() if line.startswith("| `set(")]
    for needed in ("max_lifetime", "SessionExpired", "last_activity", "stamp=False"):
        assert needed in row, f"the set row of the README's method table does not mention {needed}"


# --- 2. every write stamps last_activity ----------------------------------------------------------------------------


def _stamp(store: ISessionStore, key: str) -> datetime:
    session = store.get(key)
    assert session is not None
    return datetime.fromisoformat(session["last_activity"])


def test_get_modify_set_moves_last_activity(redis_store: RedisSessionStore) -> None:
    redis_store.set("k", {"user_id": "u", "n": 0})
    first = _stamp(redis_store, "k")
    time.sleep(0.002)
    session = redis_store.get("k")
    assert session is not None
    session["n"] = 1
    redis_store.set("k", session)  # kept the first stamp for ever in 0.1
    assert _stamp(redis_store, "k") > first


def test_update_create_and_regenerate_stamp_last_activity(redis_store: RedisSessionStore) -> None:
    session_id = redis_store.create("u", {"n": 0})
    stamps = [_stamp(redis_store, session_id)]
    time.sleep(0.002)
    redis_store.update(session_id, lambda s: {**s, "n": 1})
    stamps.append(_stamp(redis_store, session_id))
    time.sleep(0.002)
    session_id = redis_store.regenerate(session_id)
    stamps.append(_stamp(redis_store, session_id))
    assert stamps == sorted(stamps) and len(set(stamps)) == 3


def test_set_with_stamp_false_keeps_the_callers_last_activity(redis_store: RedisSessionStore) -> None:
    redis_store.set("k", DESIGN_SESSION, ttl=600, stamp=False)
    assert redis_store.get("k") == DESIGN_SESSION


def test_an_active_session_keeps_the_active_ttl_of_the_policy(client: redis.Redis, raw: redis.Redis) -> None:
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    policy = SessionTTLManager(clock=lambda: later)  # the policy's clock says an hour has passed since the first write
    store = RedisSessionStore(client, ttl_policy=policy)
    store.set("k", {"user_id": "u"})
    session = store.get("k")
    assert session is not None
    store.set("k", session)  # the session is in use right now: active, whatever its old stamp says
    assert raw.ttl("session:k") > policy.default_ttl  # 0.1 decayed it to the idle TTL (900 s)


def test_the_fallback_write_back_keeps_the_outage_writes_own_stamp(redis_store: RedisSessionStore) -> None:
    class Cut(ResilientRedisSessionStore):
        down = False

        def set(self, key: str, value: dict[str, Any], ttl: int | None = None, *, stamp: bool = True) -> None:
            if self.down:
                raise StoreUnavailable("cut off")
            super().set(key, value, ttl, stamp=stamp)

        def exists(self, key: str) -> bool:
            if self.down:
                raise StoreUnavailable("cut off")
            return super().exists(key)

    primary = Cut(redis_store)
    fallback = FallbackSessionStore(primary, probe_interval=0)
    primary.down = True
    fallback.set("k", {"n": 1})
    assert fallback.degraded
    during = _stamp(fallback, "k")
    time.sleep(0.002)
    primary.down = False
    assert fallback.exists("k") and not fallback.degraded  # the probe wrote the outage back
    assert _stamp(redis_store, "k") == during


# --- 3. nothing in an exception chain names a session or its data ---------------------------------------------------


def test_an_oom_set_shows_the_reason_and_not_the_session(redis_store: RedisSessionStore, raw: redis.Redis) -> None:
    with server_config(raw, maxmemory="1", **{"maxmemory-policy": "noeviction"}), pytest.raises(StoreError) as caught:
        redis_store.set(SECRET_ID, {"data": SECRET_PAYLOAD})
    text = assert_no_leak(caught.value)
    assert "OOM" in str(caught.value) and "SET" in str(caught.value)
    assert isinstance(caught.value.__cause__, redis.exceptions.OutOfMemoryError)  # the class survives the scrubbing
    assert "OutOfMemoryError" in text


def test_an_oom_update_inside_multi_shows_the_reason_and_not_the_session(
    redis_store: RedisSessionStore, raw: redis.Redis
) -> None:
    redis_store.set(SECRET_ID, {"data": "before"})
    with server_config(raw, maxmemory="1", **{"maxmemory-policy": "noeviction"}), pytest.raises(StoreError) as caught:
        redis_store.update(SECRET_ID, lambda s: {**s, "data": SECRET_PAYLOAD})
    assert_no_leak(caught.value, "Command # ")  # 0.1: "Command # 1 (SET session:<id> {...} EX 1800) of pipeline"
    assert "OOM" in str(caught.value)


def test_a_readonly_replica_refusal_shows_the_reason_and_not_the_session(
    redis_store: RedisSessionStore, raw: redis.Redis
) -> None:
    raw.execute_command("REPLICAOF", "127.0.0.1", unused_port())  # a replica of a master that never answers
    try:
        with pytest.raises(StoreError) as caught:
            redis_store.set(SECRET_ID, {"data": SECRET_PAYLOAD})
    finally:
        raw.execute_command("REPLICAOF", "NO", "ONE")
    assert_no_leak(caught.value)
    assert "READONLY" in str(caught.value)


def test_a_noperm_refusal_shows_the_reason_and_not_the_session(redis_url: str, raw: redis.Redis) -> None:
    with acl_user(raw, "other:*") as (name, password):
        client = create_redis_client(url=redis_url, environ={}, username=name, password=password)
        with RedisSessionStore(client, owns_client=True) as store, pytest.raises(StoreError) as caught:
            store.set(SECRET_ID, {"data": SECRET_PAYLOAD})
    assert_no_leak(caught.value, password)
    assert "NOPERM" in str(caught.value)


def test_a_server_echo_of_the_arguments_is_cut(raw: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError) as caught:
        raw.execute_command("NOSUCHCOMMAND", "session:" + SECRET_ID, SECRET_PAYLOAD)
    assert SECRET_ID in str(caught.value)  # the server really echoes them
    error = translate("NOSUCHCOMMAND", caught.value)
    assert "unknown command" in str(error)
    assert_no_leak(error)
    assert_no_leak(error.__cause__)  # type: ignore[arg-type]


# --- 4. create and regenerate are all or nothing --------------------------------------------------------------------


def test_a_create_refused_by_the_index_writes_nothing(redis_store: RedisSessionStore, raw: redis.Redis) -> None:
    raw.set("user-sessions:session:u1", "a string where the index belongs")
    with pytest.raises(StoreError) as caught:
        redis_store.create("u1", {"data": SECRET_PAYLOAD})
    assert "WRONGTYPE" in str(caught.value)
    assert_no_leak(caught.value)
    assert raw.keys("session:*") == []  # 0.1 left the session behind, unindexed


def test_a_regenerate_refused_by_the_index_leaves_the_session_where_it_was(
    redis_store: RedisSessionStore, raw: redis.Redis
) -> None:
    session_id = redis_store.create("u1", {"n": 1})
    before = raw.get("session:" + session_id)
    raw.delete("user-sessions:session:u1")
    raw.set("user-sessions:session:u1", "a string where the index belongs")
    with pytest.raises(StoreError) as caught:
        redis_store.regenerate(session_id)
    assert "WRONGTYPE" in str(caught.value)
    assert raw.keys("session:*") == [b"session:" + session_id.encode()]  # no new key, old one in place
    assert raw.get("session:" + session_id) == before


def test_a_create_without_permission_on_the_index_writes_nothing(redis_url: str, raw: redis.Redis) -> None:
    with acl_user(raw, "session:*") as (name, password):
        client = create_redis_client(url=redis_url, environ={}, username=name, password=password)
        with RedisSessionStore(client, owns_client=True) as store, pytest.raises(StoreError) as caught:
            store.create("u1", {"n": 1})
    assert "NOPERM" in str(caught.value)
    assert raw.keys("session:*") == []


#: The keys of a store with the default prefixes: its sessions and its users' indexes.
STORE_KEYS = ("session:*", "user-sessions:*")
#: The commands of create's script after its first write (SET), and of regenerate's after the new key's SET.
CREATE_LATER_COMMANDS = ["zadd", "expireat", "zcard"]
REGENERATE_LATER_COMMANDS = ["unlink", "zrem", "zadd", "expireat"]


@contextlib.contextmanager
def store_without(redis_url: str, raw: redis.Redis, command: str, **options: Any) -> Iterator[RedisSessionStore]:
    """A store logged in as an ACL user who may run every command on the store's keys except ``command``."""
    with acl_user(raw, *STORE_KEYS, rules=("+@all", f"-{command}")) as (name, password):
        client = create_redis_client(url=redis_url, environ={}, username=name, password=password)
        with RedisSessionStore(client, owns_client=True, **options) as store:
            yield store


def without_permission_checks(script: str) -> str:
    """``script`` as it ran before the fix: each command's ACL permission checked only when it runs, after the writes
    before it (a ``refused`` that refuses nothing, defined after the real one, shadows it)."""
    naive = script.replace("local no = refused(", "local function refused() end\nlocal no = refused(", 1)
    assert naive != script
    return naive


def every_key(raw: redis.Redis) -> dict[bytes, tuple[bytes | None, int]]:
    """Each key on the server with its value (``DUMP``) and expiry (``EXPIRETIME``): equal only if nothing changed."""
    return {key: (raw.dump(key), raw.expiretime(key)) for key in raw.keys("*")}


@pytest.mark.parametrize("command", CREATE_LATER_COMMANDS)
def test_a_create_the_acl_refuses_half_way_writes_nothing(redis_url: str, raw: redis.Redis, command: str) -> None:
    with store_without(redis_url, raw, command) as store, pytest.raises(StoreError) as caught:
        store.create("u1", {"data": SECRET_PAYLOAD})
    assert "NOPERM" in str(caught.value) and command in str(caught.value).lower()
    assert_no_leak(caught.value)
    assert every_key(raw) == {}  # no session, no index


@pytest.mark.parametrize("command", CREATE_LATER_COMMANDS)
def test_without_the_permission_checks_the_refused_create_left_its_session_behind(
    redis_url: str, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.setattr(redis_index, "INSERT", without_permission_checks(redis_index.INSERT))  # before it is loaded
    with store_without(redis_url, raw, command) as store, pytest.raises(StoreError, match="can't run this command"):
        store.create("u1", {"n": 1})  # the refused command stops the script, not at its start but where it stands
    assert len(raw.keys("session:*")) == 1  # SET ran before it


def regenerate_without(
    redis_store: RedisSessionStore, redis_url: str, raw: redis.Redis, command: str
) -> tuple[dict[bytes, tuple[bytes | None, int]], dict[bytes, tuple[bytes | None, int]], StoreError]:
    """Regenerate a session of user u1 as an ACL user without ``command``: every key before, every key after, and the
    error."""
    session_id = redis_store.create("u1", {"n": 1})
    redis_store.create("u1", {"n": 2})  # the index holds another entry, which must stay as it is too
    before = every_key(raw)
    with store_without(redis_url, raw, command) as store, pytest.raises(StoreError) as caught:
        store.regenerate(session_id)
    return before, every_key(raw), caught.value


@pytest.mark.parametrize("command", REGENERATE_LATER_COMMANDS)
def test_a_regenerate_the_acl_refuses_half_way_changes_nothing(
    redis_store: RedisSessionStore, redis_url: str, raw: redis.Redis, command: str
) -> None:
    before, after, error = regenerate_without(redis_store, redis_url, raw, command)
    assert "NOPERM" in str(error) and command in str(error).lower()
    assert after == before  # the old session unchanged (value and expiry), no new key, the index unchanged


@pytest.mark.parametrize("command", REGENERATE_LATER_COMMANDS)
def test_without_the_permission_checks_the_refused_regenerate_left_half_a_move(
    redis_store: RedisSessionStore, redis_url: str, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.setattr(redis_index, "MOVE", without_permission_checks(redis_index.MOVE))
    before, after, error = regenerate_without(redis_store, redis_url, raw, command)
    assert "can't run this command" in str(error)
    assert after != before  # the new key written, or the old one removed, or the index moved on: part of the move


def test_a_per_user_cap_the_acl_keeps_from_applying_is_a_warning_not_a_failed_create(
    redis_url: str, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        store_without(redis_url, raw, "zrange", max_sessions_per_user=1) as store,
        caplog.at_level(logging.INFO, logger="fmredis.events"),
    ):
        first = store.create("u1", {"n": 1})
        second = store.create("u1", {"n": 2})  # over the cap: its trim reads the index with ZRANGE, which is refused
        with pytest.raises(StoreError, match="NOPERM"):  # the control: the trim itself fails here, so the naive
            store._trim_user("u1", 1, second)  # create, which let the trim's error through, raised
    assert raw.exists(f"session:{first}", f"session:{second}") == 2  # written, and neither trimmed
    assert set(raw.zrange("user-sessions:session:u1", 0, -1)) == {first.encode(), second.encode()}
    [warning] = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert warning.name == "fmredis.events"
    message = warning.getMessage()
    assert "cap not applied" in message and "NOPERM" in message
    assert (warning.user_id, warning.cap) == ("u1", 1)  # type: ignore[attr-defined]
    assert first not in message and second not in message


# --- 5. server errors keep their reason -----------------------------------------------------------------------------


def test_a_database_out_of_range_names_the_reason(redis_url: str) -> None:
    with (
        RedisSessionStore.from_url(redis_url.rsplit("/", 1)[0] + "/99999") as store,
        pytest.raises(StoreError) as caught,
    ):
        store.get("k")
    assert "DB index is out of range" in str(caught.value)  # 0.1: "ResponseError DB"


def test_a_value_over_proto_max_bulk_len_names_the_reason(redis_store: RedisSessionStore, raw: redis.Redis) -> None:
    big = {"data": "x" * 1_200_000}
    messages = []
    with server_config(raw, **{"proto-max-bulk-len": "1mb"}):
        for _attempt in range(10):
            # The server replies with the error and closes the connection, often while the value is still being
            # written, so the write fails with a reset: the reply that came before it still names the reason.
            with pytest.raises(StoreError) as caught:
                redis_store.set("big", big)
            messages.append(str(caught.value))
    assert all("Protocol error: invalid bulk length" in message for message in messages), messages
    assert raw.exists("session:big") == 0


# --- 6. configuration fails at configuration time -------------------------------------------------------------------

DURATIONS = [
    "socket_timeout",
    "socket_connect_timeout",
    "pool_timeout",
    "health_check_interval",
    "retry_backoff_base",
    "retry_backoff_cap",
]


@pytest.mark.parametrize("name", DURATIONS)
def test_a_duration_too_long_for_the_socket_layer_is_refused_when_resolved(name: str) -> None:
    value: object = 10**10 if name == "health_check_interval" else 1e10
    with pytest.raises(ConfigurationError) as caught:
        resolve_settings(environ={}, **{name: value})
    assert caught.value.key == name and name in str(caught.value)


@pytest.mark.parametrize(
    "build",
    [
        lambda: CircuitBreaker(cooldown=1e10),
        lambda: ResilientRedisSessionStore(InMemorySessionStore(), deadline=1e10),
        lambda: ResilientRedisSessionStore(InMemorySessionStore(), backoff_cap=float("inf")),
        lambda: FallbackSessionStore(InMemorySessionStore(), probe_interval=1e10),
    ],
    ids=["breaker cooldown", "resilient deadline", "resilient backoff_cap", "fallback probe_interval"],
)
def test_a_wrapper_duration_out_of_range_is_refused_at_construction(build: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match="at most"):
        build()


def test_diagnostics_of_a_dead_server_raise_store_unavailable() -> None:
    client = create_redis_client(url=f"redis://127.0.0.1:{unused_port()}/0", environ={}, socket_connect_timeout=1)
    with pytest.raises(StoreUnavailable):  # 0.1: redis-py's ConnectionError
        diagnostics(client)


# --- 7. natural construction ----------------------------------------------------------------------------------------


def _named_connections(raw: redis.Redis, name: str) -> int:
    return sum(1 for entry in raw.client_list() if entry.get("name") == name)


def _closed(raw: redis.Redis, name: str) -> bool:
    """Whether the server has seen every connection named ``name`` close (it notices a close within moments)."""
    deadline = time.monotonic() + 5
    while _named_connections(raw, name) and time.monotonic() < deadline:
        time.sleep(0.01)
    return _named_connections(raw, name) == 0


def test_from_url_builds_a_store_that_owns_its_client_and_with_closes_it(redis_url: str, raw: redis.Redis) -> None:
    with RedisSessionStore.from_url(f"{redis_url}?client_name=day-one-owner", prefix="app:") as store:
        store.set("k", {"n": 1})
        assert raw.exists("app:k") and _named_connections(raw, "day-one-owner") == 1
    assert _closed(raw, "day-one-owner")


def test_leaving_a_wrappers_with_closes_the_store_inside(redis_url: str, raw: redis.Redis) -> None:
    inner = RedisSessionStore.from_url(f"{redis_url}?client_name=day-one-wrapped")
    with FallbackSessionStore(ResilientRedisSessionStore(inner)) as store:
        store.set("k", {"n": 1})
        assert _named_connections(raw, "day-one-wrapped") == 1
    assert _closed(raw, "day-one-wrapped")


def test_close_is_part_of_the_interface() -> None:
    assert "close" in ISessionStore.__abstractmethods__
    assert hasattr(ISessionStore, "__enter__") and hasattr(ISessionStore, "__exit__")


def test_a_url_given_as_the_client_says_to_use_from_url() -> None:
    url = "redis://:hunter2@127.0.0.1:6379/0"
    with pytest.raises(TypeError, match="from_url") as caught:
        RedisSessionStore(url)  # type: ignore[arg-type]
    assert "hunter2" not in str(caught.value)


def test_resilient_over_a_store_instance_rebuilds_its_client_after_failures(redis_url: str, raw: redis.Redis) -> None:
    original = RedisSessionStore.from_url(f"{redis_url}?socket_timeout=0.2&retry_attempts=0&client_name=day-one")
    store = ResilientRedisSessionStore(original, attempts=1, rebuild_after=1, breaker=CircuitBreaker(cooldown=0))
    store.set("k", {"n": 1})
    raw.execute_command("CLIENT", "PAUSE", "1000", "ALL")  # every client's next command waits past its socket timeout
    try:
        with pytest.raises(StoreUnavailable):
            store.get("k")
    finally:
        raw.execute_command("CLIENT", "UNPAUSE")
    assert store.rebuilds == 1 and store.store is not original
    assert store.get("k") is not None  # the new client, on the settings the instance was built with
    store.close()


def test_rebuilding_a_store_on_a_given_client_reconnects_its_pool(redis_url: str, raw: redis.Redis) -> None:
    client = create_redis_client(url=f"{redis_url}?client_name=day-one-given", environ={})
    inner = RedisSessionStore(client, owns_client=True)
    inner.set("k", {"n": 1})
    assert _named_connections(raw, "day-one-given") == 1
    assert inner.rebuild() is inner  # no settings to build a new client from: the same store, its sockets closed
    assert _closed(raw, "day-one-given")
    assert inner.get("k") is not None
    inner.close()


def test_a_client_that_decodes_responses_is_refused(redis_server: RedisExecutor, raw: redis.Redis) -> None:
    decoding = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)  # connects lazily
    with pytest.raises(TypeError, match="decode_responses"):
        RedisSessionStore(decoding)  # its replies would be str where the store reads bytes
    decoding.close()
    plain = redis.Redis(host="127.0.0.1", port=redis_server.port)
    with RedisSessionStore(plain, owns_client=True) as store:  # the control: the same client returning bytes is taken
        store.set("k", {"n": 1})
        assert store.get("k") is not None and raw.exists("session:k")


# --- 8. unreadable data is missing to every read --------------------------------------------------------------------

UNREADABLE: dict[str, Callable[[redis.Redis, str], object]] = {
    "hash": lambda raw, key: raw.hset(key, "a", "1"),
    "list": lambda raw, key: raw.rpush(key, "a"),
    "not json": lambda raw, key: raw.set(key, b"\x00not json", ex=300),
    "json array": lambda raw, key: raw.set(key, b"[1, 2]", ex=300),
}


@pytest.mark.parametrize("store", ["redis_store", "resilient_store", "fallback_store"], indirect=True)
@pytest.mark.parametrize("kind", UNREADABLE)
def test_unreadable_data_is_missing_to_get_exists_ttl_touch_and_extend_ttl(
    store: ISessionStore, raw: redis.Redis, kind: str
) -> None:
    UNREADABLE[kind](raw, "session:k")
    before = raw.dump("session:k"), raw.ttl("session:k")
    assert store.get("k") is None
    assert store.exists("k") is False
    assert store.ttl("k") is None
    assert store.touch("k") is False
    assert store.extend_ttl("k", 60) is False
    assert store.get("k", refresh=True) is None
    assert store.get_many(["k"]) == {}
    assert raw.dump("session:k") == before[0]  # the data is left in place
    if kind in ("hash", "list"):  # refused by GETEX itself; a string's expiry is restarted before it is decoded
        assert raw.ttl("session:k") == before[1] == -1
