"""What only Redis shows of RedisSessionStore's session lifecycle: the commands a refresh sends, the adaptive TTL as the
key's expiry, WATCH/MULTI updates under contention, the per-user sorted set and the one script or MULTI/EXEC each index
change rides in, a reply lost after EXEC or a script (outcome unknown, never retried by fmredis), the event log and the
counters.

The behaviour every store shares is in test_store_contract.py; this file looks at the server itself (through ``raw``).
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
import redis

from fmredis import (
    InvalidTTLError,
    RedisSessionStore,
    ResilientRedisSessionStore,
    StoreUnavailable,
    create_redis_client,
)
from fmredis.counters import COUNTER_NAMES
from fmredis.errors import SessionExpired, SessionNotFound, UpdateConflict
from fmredis.lifecycle import new_session_id, session_ref
from fmredis.serialization import parse_utc
from fmredis.ttl_policy import SessionTTLManager
from tests.fakes import ReplyLost

LIFETIME = 86_400  # the lifetime the tests of the cap turn on (it is off by default)
LIFETIME_CAP = pytest.mark.store_options(max_lifetime=LIFETIME)
MAX_TTL = 86_400  # the store's default max_ttl
DEFAULT_TTL = 1800
ACTIVE_TTL = 3600  # SessionTTLManager's active_ttl
INDEX = "user-sessions:session:"  # "user-sessions:" + the default prefix
LOGOUT_NOTE = ["ZADD", "ZREMRANGEBYSCORE", "EXPIRE"]
SECRET = "PAYLOAD-SECRET-123"
ZEROS = dict.fromkeys(COUNTER_NAMES, 0)


# --- helpers ----------------------------------------------------------------------------------------------------------


def commandstats(raw: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in raw.info("commandstats").items()}


def commands_sent(raw: redis.Redis, call: Callable[[], object]) -> dict[str, int]:
    """The commands the server received while ``call`` ran (CONFIG RESETSTAT first; INFO and CONFIG left out)."""
    raw.config_resetstat()
    call()
    return {
        name: calls for name, calls in commandstats(raw).items() if not name.startswith(("info", "config")) and calls
    }


def monitored(raw: redis.Redis, call: Callable[[], object]) -> tuple[list[str], list[str]]:
    """The commands the server ran while ``call`` ran, by name and in order (MONITOR): those clients sent (the round
    trips), and those scripts ran."""
    marker = "end-of-call-" + new_session_id()
    with raw.monitor() as monitor:
        call()
        raw.echo(marker)
        seen: list[dict[str, Any]] = []
        while not (entry := monitor.next_command())["command"].endswith(marker):
            seen.append(entry)
    marker_client = (entry["client_address"], entry["client_port"])  # raw's own commands are not the call's
    names = [(e["client_type"], (e["client_address"], e["client_port"]), e["command"].split()[0].upper()) for e in seen]
    sent = [name for kind, client, name in names if kind != "lua" and client != marker_client]
    return sent, [name for kind, _client, name in names if kind == "lua"]


def iso_ago(seconds: float, now: datetime | None = None) -> str:
    return ((now or datetime.now(timezone.utc)) - timedelta(seconds=seconds)).isoformat()


def put_raw(raw: redis.Redis, key: str, document: dict[str, Any], ttl: int) -> bytes:
    """Write a session document straight into Redis (bypassing the store's TTL rules); returns the bytes written."""
    payload = orjson.dumps(document)
    raw.set("session:" + key, payload, ex=ttl)
    return payload


def index_entries(raw: redis.Redis, user_id: str) -> dict[str, float]:
    pairs: Any = raw.zrange(INDEX + user_id, 0, -1, withscores=True)  # Any: redis-py types the reply as a union
    return {member.decode(): score for member, score in pairs}


def session_keys(raw: redis.Redis) -> set[str]:
    return {key.decode().removeprefix("session:") for key in raw.scan_iter("session:*", count=1000)}


def run_threads(workers: Sequence[Callable[[], object]]) -> None:
    """Start every worker at once (behind a barrier) and re-raise the first exception any of them raised."""
    barrier = threading.Barrier(len(workers))

    def start(worker: Callable[[], object]) -> object:
        barrier.wait()
        return worker()

    with ThreadPoolExecutor(max_workers=len(workers)) as pool:
        futures = [pool.submit(start, worker) for worker in workers]
    for future in futures:
        future.result()


@pytest.fixture
def events(root_records: list[logging.LogRecord]) -> Callable[[], list[logging.LogRecord]]:
    """The records of logger ``fmredis.events`` so far."""
    return lambda: [record for record in root_records if record.name == "fmredis.events"]


FORMATTER = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(threadName)s %(message)s")


def assert_reveals_nothing(record: logging.LogRecord, *secrets: str) -> None:
    """None of ``secrets`` (session ids, payload values) in the formatted record or in any of its attributes."""
    texts = [FORMATTER.format(record), record.getMessage()]
    texts += [text for value in record.__dict__.values() for text in (str(value), repr(value))]
    for secret in secrets:
        leaks = [text for text in texts if secret in text]
        assert not leaks, f"{secret!r} appears in the log record: {leaks}"


# --- 1. one round trip for a refresh, the lifetime cap ----------------------------------------------------------------


def touch(store: RedisSessionStore, key: str) -> bool:
    return store.touch(key)


def refreshing_get(store: RedisSessionStore, key: str) -> bool:
    return store.get(key, refresh=True) is not None


def extend_ttl(store: RedisSessionStore, key: str) -> bool:
    return store.extend_ttl(key)


def extend_ttl_600(store: RedisSessionStore, key: str) -> bool:
    return store.extend_ttl(key, 600)


#: The refreshes that give the policy's TTL for a session active now (extend_ttl gives the default instead).
REFRESHES = pytest.mark.parametrize("refresh", [touch, refreshing_get], ids=["touch", "get_refresh"])
#: Every refresh that restarts a session's expiry to the default TTL.
DEFAULT_REFRESHES = pytest.mark.parametrize(
    "refresh", [touch, refreshing_get, extend_ttl], ids=["touch", "get_refresh", "extend_ttl"]
)
#: Every refresh, each of which is cut to the session's lifetime.
CAPPED_REFRESHES = pytest.mark.parametrize(
    "refresh",
    [touch, refreshing_get, extend_ttl, extend_ttl_600],
    ids=["touch", "get_refresh", "extend_ttl", "extend_ttl_600"],
)


@DEFAULT_REFRESHES
def test_a_refresh_is_one_getex_and_never_rewrites_the_session(
    redis_store: RedisSessionStore, raw: redis.Redis, refresh: Callable[[RedisSessionStore, str], bool]
) -> None:
    session_id = redis_store.create("u1", {"cart": [1, 2, 3], "note": "é"})  # also opens the pooled connection
    raw.expire("session:" + session_id, 100)
    stored = raw.get("session:" + session_id)
    assert commands_sent(raw, lambda: refresh(redis_store, session_id)) == {"getex": 1}
    assert raw.get("session:" + session_id) == stored  # byte for byte: a refresh never rewrites the document
    assert DEFAULT_TTL - 2 <= raw.ttl("session:" + session_id) <= DEFAULT_TTL


@LIFETIME_CAP
@CAPPED_REFRESHES
def test_a_refresh_near_the_lifetime_cap_adds_one_expire_down_to_the_cap(
    redis_store: RedisSessionStore, raw: redis.Redis, refresh: Callable[[RedisSessionStore, str], bool]
) -> None:
    redis_store.set("warm", {})
    stored = put_raw(raw, "old", {"user_id": "u1", "created_at": iso_ago(LIFETIME - 30)}, ttl=20)
    found: list[bool] = []
    assert commands_sent(raw, lambda: found.append(refresh(redis_store, "old"))) == {"getex": 1, "expire": 1}
    assert found == [True]
    assert 27 <= raw.ttl("session:old") <= 30
    assert raw.get("session:old") == stored


@LIFETIME_CAP
@CAPPED_REFRESHES
def test_a_refresh_past_the_lifetime_cap_removes_the_session(
    redis_store: RedisSessionStore,
    raw: redis.Redis,
    refresh: Callable[[RedisSessionStore, str], bool],
    events: Callable[[], list[logging.LogRecord]],
) -> None:
    put_raw(raw, "expired", {"user_id": "u1", "created_at": iso_ago(LIFETIME + 5), "v": SECRET}, ttl=3600)
    assert refresh(redis_store, "expired") is False
    assert raw.exists("session:expired") == 0
    [record] = events()
    assert record.levelno == logging.INFO
    assert record.session_id == session_ref("expired")  # type: ignore[attr-defined]
    assert_reveals_nothing(record, SECRET)


@LIFETIME_CAP
def test_set_past_the_lifetime_cap_removes_the_session_and_raises(
    redis_store: RedisSessionStore, raw: redis.Redis, events: Callable[[], list[logging.LogRecord]]
) -> None:
    redis_store.set("old", {"user_id": "u1", "v": 1})
    assert raw.exists("session:old") == 1
    with pytest.raises(SessionExpired):
        redis_store.set("old", {"user_id": "u1", "created_at": iso_ago(LIFETIME + 5), "v": SECRET}, ttl=600)
    assert raw.exists("session:old") == 0  # the session there before is removed, not kept
    [record] = events()
    assert record.levelno == logging.INFO
    assert record.session_id == session_ref("old")  # type: ignore[attr-defined]
    assert_reveals_nothing(record, SECRET)


@LIFETIME_CAP
def test_update_past_the_lifetime_cap_removes_the_session_and_raises(
    redis_store: RedisSessionStore, raw: redis.Redis, events: Callable[[], list[logging.LogRecord]]
) -> None:
    put_raw(raw, "old", {"user_id": "u1", "created_at": iso_ago(LIFETIME + 5)}, ttl=3600)
    calls: list[int] = []

    def fn(session: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        return {**session, "v": 2}

    with pytest.raises(SessionExpired):
        redis_store.update("old", fn)
    assert raw.exists("session:old") == 0
    assert calls == [1]
    assert len(events()) == 1


@LIFETIME_CAP
def test_regenerate_past_the_lifetime_cap_removes_the_session_and_its_index_entry(
    redis_store: RedisSessionStore, raw: redis.Redis, events: Callable[[], list[logging.LogRecord]]
) -> None:
    """As for set and update: SessionExpired, and the session (with its index entry) removed, as the event says."""
    created = time.time() - LIFETIME - 5
    put_raw(raw, "old", {"user_id": "u1", "created_at": iso_ago(LIFETIME + 5)}, ttl=3600)
    raw.zadd(INDEX + "u1", {"old": created})
    with pytest.raises(SessionExpired):
        redis_store.regenerate("old")
    assert [record.getMessage() for record in events()] == ["Session reached its lifetime cap; removed"]
    assert session_keys(raw) == set()  # neither the old session nor a new one
    assert index_entries(raw, "u1") == {}


# --- 2. the adaptive TTL policy ---------------------------------------------------------------------------------------

#: The policy's clock: years in the past, so an age measured on the wall clock would always give the idle TTL.
FAKE_NOW = datetime(2021, 3, 4, 5, 6, 7, tzinfo=timezone.utc)


@pytest.fixture
def policy_store(client: redis.Redis) -> RedisSessionStore:
    return RedisSessionStore(client, ttl_policy=SessionTTLManager(clock=lambda: FAKE_NOW))


@pytest.mark.parametrize(
    ("idle_seconds", "expected_ttl"), [(10, 3600), (10 * 60, 1800), (2 * 3600, 900)], ids=["active", "idle", "stale"]
)
def test_set_without_stamp_takes_its_ttl_from_the_policy_and_its_clock(
    policy_store: RedisSessionStore, raw: redis.Redis, idle_seconds: int, expected_ttl: int
) -> None:
    """stamp=False keeps the document's last_activity, so the policy measures its age (on the policy's clock)."""
    document = {"last_activity": iso_ago(idle_seconds, FAKE_NOW)}
    policy_store.set("k", document, stamp=False)
    assert expected_ttl - 2 <= raw.ttl("session:k") <= expected_ttl
    policy_store.set("k", document)  # stamped: active now, whatever the document said
    assert ACTIVE_TTL - 2 <= raw.ttl("session:k") <= ACTIVE_TTL


@REFRESHES
def test_a_refresh_gives_the_policys_ttl_for_a_session_active_now(
    policy_store: RedisSessionStore, raw: redis.Redis, refresh: Callable[[RedisSessionStore, str], bool]
) -> None:
    policy_store.set("k", {"last_activity": iso_ago(2 * 3600, FAKE_NOW)}, stamp=False)
    assert raw.ttl("session:k") <= 900
    assert refresh(policy_store, "k") is True
    assert 3598 <= raw.ttl("session:k") <= 3600


@pytest.mark.parametrize("clock", [None, lambda: FAKE_NOW], ids=["wall-clock", "fake-clock"])
def test_set_without_last_activity_gets_the_policys_active_ttl_like_update_and_create(
    client: redis.Redis, raw: redis.Redis, clock: Callable[[], datetime] | None
) -> None:
    """set() stamps last_activity now, so the session is as active as can be: the policy's active TTL, not its
    default one (which a policy gives a document whose last_activity it cannot read)."""
    policy = SessionTTLManager() if clock is None else SessionTTLManager(clock=clock)
    assert policy.default_ttl != ACTIVE_TTL
    store = RedisSessionStore(client, ttl_policy=policy)
    store.set("plain", {"v": 1})
    store.set("updated", {"v": 1}, ttl=60)
    store.update("updated", lambda session: {**session, "v": 2})
    created = store.create("kim", {})
    for key in ("plain", "updated", created):
        assert ACTIVE_TTL - 2 <= raw.ttl("session:" + key) <= ACTIVE_TTL, key
    document = orjson.loads(raw.get("session:plain"))  # type: ignore[arg-type]
    assert parse_utc(document["last_activity"]) is not None  # and the stamp the TTL was chosen for is stored


@pytest.mark.parametrize(("policy_max_ttl", "accepted"), [(3600, True), (3601, False)])
def test_a_policy_may_not_exceed_the_stores_max_ttl(client: redis.Redis, policy_max_ttl: int, accepted: bool) -> None:
    policy = SessionTTLManager(max_ttl=policy_max_ttl, active_ttl=3600)

    def build() -> RedisSessionStore:
        return RedisSessionStore(client, max_ttl=3600, ttl_policy=policy)

    if accepted:
        assert build().ttl_policy is policy
    else:
        with pytest.raises(InvalidTTLError, match="3601"):
            build()


# --- 3. update: WATCH/MULTI against a naive read-modify-write ---------------------------------------------------------

THREADS, APPENDS = 16, 30


def naive_update(store: RedisSessionStore, key: str, item: str) -> None:
    """Read, modify, write: what update exists to replace (the pause widens the window another writer can hit)."""
    session = store.get(key)
    assert session is not None
    time.sleep(0.001)
    session["items"].append(item)
    store.set(key, session)


def atomic_update(store: RedisSessionStore, key: str, item: str) -> None:
    store.update(key, lambda session: {**session, "items": [*session["items"], item]})


def append_from_many_threads(
    store: RedisSessionStore, append: Callable[[RedisSessionStore, str, str], None]
) -> list[str]:
    store.set("shared", {"items": []})

    def worker(thread: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(APPENDS):
                append(store, "shared", f"{thread}-{i}")

        return run

    run_threads([worker(thread) for thread in range(THREADS)])
    session = store.get("shared")
    assert session is not None
    return list(session["items"])


def test_a_naive_read_modify_write_loses_appends(redis_store: RedisSessionStore) -> None:
    """The control for the test below: the workload really races, so keeping every append there means something."""
    items = append_from_many_threads(redis_store, naive_update)
    assert len(items) < THREADS * APPENDS


def test_update_keeps_every_append_under_contention(redis_store: RedisSessionStore) -> None:
    items = append_from_many_threads(redis_store, atomic_update)
    assert sorted(items) == sorted(f"{thread}-{i}" for thread in range(THREADS) for i in range(APPENDS))
    for thread in range(THREADS):  # and each thread's appends in the order it made them
        assert [item for item in items if item.startswith(f"{thread}-")] == [f"{thread}-{i}" for i in range(APPENDS)]
    stats = redis_store.stats()
    assert stats["conflicts"] > 0
    assert stats["hits"] == THREADS * APPENDS + 1  # every update once, plus the final get


@pytest.mark.parametrize("attempts", [1, 3])
def test_update_raises_update_conflict_when_every_attempt_loses(
    client: redis.Redis, raw: redis.Redis, attempts: int
) -> None:
    store = RedisSessionStore(client, update_attempts=attempts)
    store.set("k", {"owner": "store"})
    calls: list[int] = []

    def meddling(session: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        # Writes the key after the read (new bytes each time): the compare-and-set (or the WATCH) must refuse.
        raw.set("session:k", orjson.dumps({"owner": "raw", "write": len(calls)}))
        return {**session, "owner": "fn"}

    with pytest.raises(UpdateConflict):
        store.update("k", meddling)
    assert orjson.loads(raw.get("session:k")) == {"owner": "raw", "write": attempts}  # type: ignore[arg-type]
    assert len(calls) == attempts
    assert store.stats()["conflicts"] == attempts


# --- 4. the per-user index as a sorted set ----------------------------------------------------------------------------


def test_the_index_is_a_sorted_set_scored_by_creation_time_that_outlives_its_sessions(
    redis_store: RedisSessionStore, raw: redis.Redis
) -> None:
    before = time.time()
    first = redis_store.create("alice", {"n": 1})
    longest = redis_store.create("alice", {"n": 2}, ttl=MAX_TTL)
    after = time.time()
    assert raw.type(INDEX + "alice") == b"zset"
    entries = index_entries(raw, "alice")
    assert list(entries) == [first, longest]
    for session_id, score in entries.items():
        document = orjson.loads(raw.get("session:" + session_id))  # type: ignore[arg-type]
        created = parse_utc(document["created_at"])
        assert created is not None
        assert score == pytest.approx(created.timestamp(), abs=1e-3)
        assert before - 0.01 <= score <= after + 0.01
    index_ttl = raw.ttl(INDEX + "alice")
    assert index_ttl >= MAX_TTL
    assert index_ttl >= max(raw.ttl("session:" + session_id) for session_id in entries)
    assert raw.ttl("session:" + longest) >= MAX_TTL - 2


def test_regenerate_moves_the_index_entry_and_keeps_the_creation_score(
    redis_store: RedisSessionStore, raw: redis.Redis
) -> None:
    old = redis_store.create("alice", {"n": 1})
    score = index_entries(raw, "alice")[old]
    index_ttl = raw.ttl(INDEX + "alice")
    new = redis_store.regenerate(old)
    assert index_entries(raw, "alice") == {new: score}
    assert raw.ttl(INDEX + "alice") >= index_ttl - 1
    assert redis_store.sessions_for_user("alice") == [new]


def test_listing_prunes_the_entry_of_a_gone_session_at_once(redis_store: RedisSessionStore, raw: redis.Redis) -> None:
    kept = redis_store.create("bob", {})
    gone = redis_store.create("bob", {})  # just created: no grace period keeps its entry once the session is gone
    raw.delete("session:" + gone)
    assert list(index_entries(raw, "bob")) == [kept, gone]
    assert redis_store.sessions_for_user("bob") == [kept]
    assert list(index_entries(raw, "bob")) == [kept]


def test_an_expired_session_is_not_listed(redis_store: RedisSessionStore, raw: redis.Redis) -> None:
    expiring = redis_store.create("bob", {})
    kept = redis_store.create("bob", {})
    raw.pexpire("session:" + expiring, 1)
    time.sleep(0.05)
    assert redis_store.sessions_for_user("bob") == [kept]


def test_delete_user_sessions_removes_the_users_sessions_and_the_index_itself(
    redis_store: RedisSessionStore, raw: redis.Redis
) -> None:
    live = [redis_store.create("carol", {}) for _ in range(2)]
    raw.zadd(INDEX + "carol", {new_session_id(): time.time()})  # an entry whose session is gone: not counted
    other_user = redis_store.create("dave", {})
    assert redis_store.sessions_for_user("carol") == live

    assert redis_store.delete_user_sessions("carol") == 2
    assert raw.exists(INDEX + "carol") == 0
    assert session_keys(raw) == {other_user}
    assert list(index_entries(raw, "dave")) == [other_user]
    again = redis_store.create("carol", {})  # a new login starts a new index, with its expiry
    assert list(index_entries(raw, "carol")) == [again]
    assert raw.ttl(INDEX + "carol") >= MAX_TTL


def test_create_writes_the_session_and_its_index_entry_in_one_script(
    redis_store: RedisSessionStore, raw: redis.Redis
) -> None:
    redis_store.create("warm", {})  # opens the pooled connection and loads the script
    made: list[str] = []
    sent, scripted = monitored(raw, lambda: made.append(redis_store.create("alice", {"n": 1})))
    assert sent == ["EVALSHA"]  # one round trip, no MULTI
    assert scripted[:2] == ["TYPE", "TYPE"]  # both keys checked before anything is written: all or nothing
    assert {name: scripted.count(name) for name in ("SET", "ZADD")} == {"SET": 1, "ZADD": 1}
    [session_id] = made
    assert list(index_entries(raw, "alice")) == [session_id]
    assert raw.exists("session:" + session_id) == 1


@pytest.mark.parametrize(
    ("call", "sent", "written_by_script"),
    [
        # The logout note (the fallback's guard against reviving a logged-out session) is a round trip of its own,
        # after a regenerate and before a logout.
        (
            "regenerate",
            ["WATCH", "GET", "MULTI", "EVAL", "EXEC", *LOGOUT_NOTE],
            {"SET": 1, "UNLINK": 1, "ZREM": 1, "ZADD": 1},
        ),
        (
            "delete_user_sessions",
            [*LOGOUT_NOTE, "WATCH", "ZRANGE", "MULTI", *["UNLINK"] * 4, "EXEC"],
            {},
        ),  # 3 sessions, the index
    ],
)
def test_each_other_index_change_is_one_multi_exec(
    redis_store: RedisSessionStore,
    raw: redis.Redis,
    call: str,
    sent: list[str],
    written_by_script: dict[str, int],
) -> None:
    made = [redis_store.create("alice", {"n": n}) for n in range(3)]
    calls: dict[str, Callable[[], object]] = {
        "regenerate": lambda: redis_store.regenerate(made[0]),
        "delete_user_sessions": lambda: redis_store.delete_user_sessions("alice"),
    }
    commands, scripted = monitored(raw, calls[call])
    # (redis-py may PING a pooled connection that sat idle: a health check, not a write)
    assert [name for name in commands if name != "PING"] == sent  # every write between one MULTI and its EXEC
    assert {name: scripted.count(name) for name in written_by_script} == written_by_script, scripted


def test_the_per_user_cap_evicts_the_oldest_sessions(
    client: redis.Redis, raw: redis.Redis, events: Callable[[], list[logging.LogRecord]]
) -> None:
    store = RedisSessionStore(client, max_sessions_per_user=3)
    made = [store.create("erin", {"device": n}) for n in range(5)]
    assert store.sessions_for_user("erin") == made[2:]
    assert list(index_entries(raw, "erin")) == made[2:]
    assert session_keys(raw) == set(made[2:])
    evictions = [record for record in events() if "cap" in record.getMessage()]
    assert [(record.levelno, record.user_id, record.removed) for record in evictions] == [  # type: ignore[attr-defined]
        (logging.INFO, "erin", 1),
        (logging.INFO, "erin", 1),
    ]
    for record in evictions:
        assert_reveals_nothing(record, *made)


def test_sessions_evicted_by_the_per_user_cap_count_as_deleted_for_user(client: redis.Redis) -> None:
    """COUNTER_NAMES: ``deleted_for_user`` counts sessions removed by delete_user_sessions *and the per-user cap*."""
    store = RedisSessionStore(client, max_sessions_per_user=3)
    for n in range(5):
        store.create("erin", {"device": n})
    assert store.stats()["deleted_for_user"] == 2


def draw_ids(monkeypatch: pytest.MonkeyPatch, *ids: str) -> Iterator[str]:
    """Make the next new session ids ``ids``, in order (the random token every new id is); returns what is left."""
    left = iter(ids)
    monkeypatch.setattr(secrets, "token_urlsafe", lambda nbytes=None: next(left))
    return left


def test_a_colliding_session_id_never_enters_another_users_index(
    redis_store: RedisSessionStore, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """create tries another id when its script finds the id taken; the taken id belongs to someone else and must not
    be indexed."""
    victim = redis_store.create("victim", {"v": SECRET})
    victims_session, victims_index = raw.get("session:" + victim), index_entries(raw, "victim")
    fresh = new_session_id()
    left = draw_ids(monkeypatch, victim, fresh)
    mine = redis_store.create("mallory", {})
    assert next(left, None) is None  # both ids were drawn: the script refused the first
    assert mine == fresh
    assert list(index_entries(raw, "mallory")) == [mine]  # read raw: no entry naming the victim's session
    assert raw.get("session:" + victim) == victims_session  # the script left the victim's session as it was
    assert index_entries(raw, "victim") == victims_index
    assert redis_store.delete_user_sessions("mallory") == 1
    assert raw.get("session:" + victim) == victims_session


def test_a_colliding_id_on_regenerate_leaves_the_other_session_alone_and_unlisted(
    redis_store: RedisSessionStore, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The move script writes nothing when the new id is taken; regenerate tries again with another id."""
    victim = redis_store.create("victim", {"v": SECRET})
    victims_session = raw.get("session:" + victim)
    old = redis_store.create("mallory", {"n": 1})
    fresh = new_session_id()
    left = draw_ids(monkeypatch, victim, fresh)
    new = redis_store.regenerate(old)
    assert next(left, None) is None  # both ids were drawn: the script refused the first
    assert new == fresh
    assert list(index_entries(raw, "mallory")) == [new]  # the victim's session never listed as mallory's
    assert raw.exists("session:" + old) == 0
    assert orjson.loads(raw.get("session:" + new))["n"] == 1  # type: ignore[arg-type]
    assert raw.get("session:" + victim) == victims_session
    assert list(index_entries(raw, "victim")) == [victim]


# --- 5. races against "log out everywhere", and a connection lost after EXEC ------------------------------------------


@pytest.mark.parametrize("login", ["regenerate", "create"])
def test_a_login_between_a_logouts_read_and_its_exec_makes_the_logout_start_again(
    redis_store: RedisSessionStore, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch, login: str
) -> None:
    """delete_user_sessions WATCHes the index before it reads it: a regenerate (or a create) landing between its ZRANGE
    and its EXEC makes Redis refuse the EXEC, and the logout reads the index again, so the new session goes too."""
    old = redis_store.create("frank", {})
    other_worker = RedisSessionStore(raw)  # another client: its own connection, as another process would have
    logins: list[str] = []
    reads: list[list[str]] = []
    zrange = redis.client.Pipeline.zrange

    def zrange_then_login(self: redis.client.Pipeline, *args: Any, **kwargs: Any) -> Any:
        result: Any = zrange(self, *args, **kwargs)
        reads.append([member.decode() for member in result])
        if len(reads) == 1:  # the first time the logout reads the index, another worker logs in before it goes on
            logins.append(other_worker.regenerate(old) if login == "regenerate" else other_worker.create("frank", {}))
        return result

    monkeypatch.setattr(redis.client.Pipeline, "zrange", zrange_then_login)
    removed = redis_store.delete_user_sessions("frank")
    monkeypatch.undo()

    [made] = logins
    if login == "regenerate":
        assert reads == [[old], [made]]
        assert removed == 1
    else:
        assert reads == [[old], [old, made]]
        assert removed == 2
    assert session_keys(raw) == set()  # neither the old id nor the new one survives "log out everywhere"
    assert raw.exists(INDEX + "frank") == 0


class Increment:
    """An update function adding 1 to ``n``, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, session: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        return {**session, "n": session["n"] + 1}


def stored_n(raw: redis.Redis, key: str) -> int:
    return int(orjson.loads(raw.get("session:" + key))["n"])  # type: ignore[arg-type]


@pytest.mark.parametrize("resilient", [False, True], ids=["store", "resilient"])
def test_an_update_whose_exec_reply_is_lost_raises_store_unavailable_and_is_applied_once(
    client: redis.Redis, raw: redis.Redis, reply_lost: ReplyLost, resilient: bool
) -> None:
    """The EXEC ran, but the client cannot know: retrying would apply fn twice, so the outcome is reported unknown.
    (Without pipelining update watches; the compare-and-set's lost reply is in tests/redis/test_multiplex_faults.py.)"""
    redis_store = RedisSessionStore(client, pipelining=False)
    store = ResilientRedisSessionStore(lambda: redis_store) if resilient else redis_store
    redis_store.set("counter", {"n": 0})
    fn = Increment()
    reply_lost.arm()
    with pytest.raises(StoreUnavailable, match="outcome unknown"):
        store.update("counter", fn)
    assert reply_lost.dropped == 1
    assert fn.calls == 1  # a single attempt, in the store and in the wrapper
    assert stored_n(raw, "counter") == 1  # applied once, not twice
    assert redis_store.stats()["conflicts"] == 0  # not taken for a lost race either
    assert store.update("counter", fn)["n"] == 2  # and the store works on afterwards (a new connection)


def test_a_regenerate_whose_exec_reply_is_lost_raises_store_unavailable_and_is_applied_once(
    redis_store: RedisSessionStore, raw: redis.Redis, reply_lost: ReplyLost
) -> None:
    old = redis_store.create("gus", {})
    reply_lost.arm()
    with pytest.raises(StoreUnavailable, match="outcome unknown"):
        redis_store.regenerate(old)
    assert reply_lost.dropped == 1
    [new] = session_keys(raw)  # moved once: one new session, the old one gone
    assert new != old
    assert list(index_entries(raw, "gus")) == [new]
    assert redis_store.sessions_for_user("gus") == [new]


def test_a_logout_whose_exec_reply_is_lost_raises_store_unavailable(
    redis_store: RedisSessionStore, raw: redis.Redis, reply_lost: ReplyLost
) -> None:
    for _ in range(2):
        redis_store.create("gus", {})
    reply_lost.arm()
    with pytest.raises(StoreUnavailable):
        redis_store.delete_user_sessions("gus")
    assert reply_lost.dropped == 1
    assert session_keys(raw) == set()
    assert raw.exists(INDEX + "gus") == 0


def test_a_create_whose_script_reply_is_lost_leaves_no_unindexed_session(
    redis_store: RedisSessionStore, raw: redis.Redis, reply_lost: ReplyLost
) -> None:
    """create is one script that watches nothing, so redis-py's own Retry (retry_attempts, 1 by default) sends it again
    after a lost reply (the script finds its own payload and writes the same again). Whatever create then does (return
    an id, or raise StoreUnavailable: outcome unknown), every live session it wrote must be in the user's index, or
    "log out everywhere" cannot reach it."""
    reply_lost.arm("EVALSHA")  # the reply of the EVALSHA that runs (a NOSCRIPT refusal before it raises first)
    try:
        made = [redis_store.create("hugo", {})]
    except StoreUnavailable:
        made = []
    assert reply_lost.dropped == 1
    live = session_keys(raw)
    assert set(made) <= live
    assert set(index_entries(raw, "hugo")) == live, "a live session of the user is missing from its index"
    assert len(live) == 1  # one create, one session


@pytest.fixture
def one_connection_store(redis_url: str, raw: redis.Redis) -> Iterator[RedisSessionStore]:
    """A store whose pool holds ONE connection; a call needing a second one at once fails after pool_timeout (1 s)."""
    store = RedisSessionStore(
        create_redis_client(url=redis_url, environ={}, max_connections=1, pool_timeout=1), owns_client=True
    )
    yield store
    store.close()


def test_the_index_calls_need_one_connection_only(one_connection_store: RedisSessionStore, raw: redis.Redis) -> None:
    store = one_connection_store
    session_id = store.create("lena", {"n": 0})
    for _ in range(20):
        session_id = store.regenerate(session_id)
        store.update(session_id, lambda session: {**session, "n": session["n"] + 1})
    assert store.sessions_for_user("lena") == [session_id]
    assert session_keys(raw) == {session_id}
    assert stored_n(raw, session_id) == 20
    assert store.delete_user_sessions("lena") == 1
    assert session_keys(raw) == set()


def test_threads_regenerate_through_a_pool_of_one_connection(
    one_connection_store: RedisSessionStore, raw: redis.Redis
) -> None:
    store = one_connection_store
    finals: dict[str, str] = {}

    def worker(user_id: str) -> Callable[[], object]:
        def run() -> None:
            session_id = store.create(user_id, {})
            for _ in range(5):
                session_id = store.regenerate(session_id)
            finals[user_id] = session_id

        return run

    run_threads([worker(f"user{n}") for n in range(4)])
    assert len(finals) == 4
    for user_id, session_id in finals.items():
        assert store.sessions_for_user(user_id) == [session_id]
    assert session_keys(raw) == set(finals.values())


# --- 6. the index under concurrency -----------------------------------------------------------------------------------


def test_the_index_stays_exact_under_concurrent_creates_deletes_and_listings(
    redis_store: RedisSessionStore, raw: redis.Redis
) -> None:
    created: list[str] = []
    deleted: set[str] = set()
    listed_ever: set[str] = set()
    lock = threading.Lock()
    creators_left = [8]

    def creating() -> bool:
        with lock:
            return creators_left[0] > 0

    def creator() -> None:
        try:
            for n in range(20):
                session_id = redis_store.create("gina", {"n": n})
                with lock:
                    created.append(session_id)
        finally:  # so the other workers stop even if this one fails
            with lock:
                creators_left[0] -= 1

    def deleter(seed: int) -> Callable[[], None]:
        rng = random.Random(seed)

        def run() -> None:
            while creating():
                with lock:
                    candidates = [session_id for session_id in created if session_id not in deleted]
                if candidates and rng.random() < 0.5:
                    victim = rng.choice(candidates)
                    if redis_store.delete(victim):
                        with lock:
                            deleted.add(victim)
                time.sleep(0.001)

        return run

    def lister() -> None:
        while creating():
            listed = redis_store.sessions_for_user("gina")
            assert len(listed) == len(set(listed))
            with lock:
                listed_ever.update(listed)

    run_threads([creator] * 8 + [deleter(seed) for seed in range(4)] + [lister] * 2)

    assert len(created) == 160 and deleted
    live = set(created) - deleted
    assert session_keys(raw) == live
    listed = redis_store.sessions_for_user("gina")
    assert sorted(listed) == sorted(live)
    entries = index_entries(raw, "gina")
    assert set(entries) == live  # the listing pruned every deleted session's entry
    assert listed == sorted(live, key=lambda session_id: (entries[session_id], session_id))  # oldest first, as ZRANGE
    assert listed_ever <= set(created)


# --- 7. events --------------------------------------------------------------------------------------------------------


def test_create_logs_one_event_with_the_reference_user_and_ttl(
    redis_store: RedisSessionStore, events: Callable[[], list[logging.LogRecord]]
) -> None:
    session_id = redis_store.create("hana", {"token": SECRET}, ttl=900)
    [record] = events()
    assert record.levelno == logging.INFO
    assert record.session_id == session_ref(session_id)  # type: ignore[attr-defined]
    assert record.user_id == "hana"  # type: ignore[attr-defined]
    assert record.ttl == 900  # type: ignore[attr-defined]
    assert_reveals_nothing(record, session_id, SECRET)


def test_regenerate_logs_one_event_with_both_references(
    redis_store: RedisSessionStore, events: Callable[[], list[logging.LogRecord]]
) -> None:
    old = redis_store.create("hana", {"token": SECRET})
    new = redis_store.regenerate(old)
    [_created, record] = events()
    assert record.levelno == logging.INFO
    assert record.session_id == session_ref(new)  # type: ignore[attr-defined]
    assert record.previous_session_id == session_ref(old)  # type: ignore[attr-defined]
    assert record.user_id == "hana"  # type: ignore[attr-defined]
    assert record.ttl == DEFAULT_TTL  # type: ignore[attr-defined]
    assert_reveals_nothing(record, old, new, SECRET)


def test_delete_user_sessions_logs_one_event_with_the_count(
    redis_store: RedisSessionStore, events: Callable[[], list[logging.LogRecord]]
) -> None:
    made = [redis_store.create("hana", {"token": SECRET}) for _ in range(2)]
    assert redis_store.delete_user_sessions("hana") == 2
    [record] = events()[2:]
    assert record.levelno == logging.INFO
    assert record.user_id == "hana"  # type: ignore[attr-defined]
    assert record.removed == 2  # type: ignore[attr-defined]
    assert_reveals_nothing(record, *made, SECRET)


def read_get(store: RedisSessionStore, key: str) -> None:
    assert store.get(key) is None


def read_refresh(store: RedisSessionStore, key: str) -> None:
    assert store.get(key, refresh=True) is None


def read_touch(store: RedisSessionStore, key: str) -> None:
    assert store.touch(key) is False


def read_many(store: RedisSessionStore, key: str) -> None:
    assert store.get_many([key]) == {}


def read_update(store: RedisSessionStore, key: str) -> None:
    with pytest.raises(SessionNotFound):
        store.update(key, dict)


def read_exists(store: RedisSessionStore, key: str) -> None:
    assert store.exists(key) is False


def read_ttl(store: RedisSessionStore, key: str) -> None:
    assert store.ttl(key) is None


def read_extend(store: RedisSessionStore, key: str) -> None:
    assert store.extend_ttl(key, 600) is False


@pytest.mark.parametrize(
    "read", [read_get, read_refresh, read_touch, read_many, read_update, read_exists, read_ttl, read_extend]
)
def test_corrupt_data_logs_one_warning_with_the_reference_only(
    redis_store: RedisSessionStore,
    raw: redis.Redis,
    events: Callable[[], list[logging.LogRecord]],
    read: Callable[[RedisSessionStore, str], None],
) -> None:
    session_id = new_session_id()
    corrupt = b'{"token": "' + SECRET.encode() + b'", "cut'
    raw.set("session:" + session_id, corrupt)
    read(redis_store, session_id)
    [record] = events()
    assert record.levelno == logging.WARNING
    assert record.session_id == session_ref(session_id)  # type: ignore[attr-defined]
    assert_reveals_nothing(record, session_id, SECRET)
    assert raw.get("session:" + session_id) == corrupt


def test_the_everyday_calls_log_nothing_at_any_level(
    redis_store: RedisSessionStore, root_records: list[logging.LogRecord]
) -> None:
    document = {"user_id": "ivan", "created_at": iso_ago(60), "token": SECRET}
    for i in range(100):
        key = f"s{i}"
        redis_store.set(key, document)
        assert redis_store.get(key) is not None
        assert redis_store.get(key, refresh=True) is not None
        assert redis_store.touch(key) is True
        redis_store.update(key, lambda session: {**session, "n": 1})
        assert redis_store.exists(key) is True
        assert DEFAULT_TTL - 2 <= redis_store.ttl(key) <= DEFAULT_TTL  # type: ignore[operator]
        assert redis_store.extend_ttl(key) is True
        assert set(redis_store.get_many([key, "missing"])) == {key}
        assert redis_store.delete(key) is True
    assert root_records == [], [f"{record.name}: {record.getMessage()}" for record in root_records]
    redis_store.create("ivan", {})  # the control: the same handler sees an event
    assert [record.name for record in root_records] == ["fmredis.events"]


# --- 8. counters ------------------------------------------------------------------------------------------------------


def test_stats_count_hits_misses_and_corruptions_exactly(redis_store: RedisSessionStore, raw: redis.Redis) -> None:
    assert redis_store.stats() == ZEROS
    redis_store.set("a", {"v": 1})
    assert redis_store.get("a") is not None
    assert redis_store.get("a", refresh=True) is not None
    assert redis_store.get("missing") is None
    raw.set("session:bad", b"{bad")
    assert redis_store.get("bad") is None
    assert redis_store.stats() == {**ZEROS, "ops": 5, "hits": 2, "misses": 2, "corruptions": 1}


def test_a_store_without_counters_reports_zeros(client: redis.Redis, raw: redis.Redis) -> None:
    store = RedisSessionStore(client, counters=False, update_attempts=1)
    store.set("a", {"v": 1})
    store.get("a")
    store.get("missing")
    raw.set("session:bad", b"{bad")
    store.get("bad")
    session_id = store.regenerate(store.create("jo", {}))
    store.update(session_id, dict)

    def meddling(session: dict[str, Any]) -> dict[str, Any]:
        raw.set("session:a", b"{}")
        return session

    with pytest.raises(UpdateConflict):
        store.update("a", meddling)
    store.delete_user_sessions("jo")
    assert store.stats() == ZEROS


def test_counting_is_exact_across_threads(redis_store: RedisSessionStore) -> None:
    redis_store.set("hot", {"v": 1})
    before = redis_store.stats()

    def reader() -> None:
        for _ in range(500):
            redis_store.get("hot")

    run_threads([reader] * 8)
    after = redis_store.stats()
    assert after["ops"] - before["ops"] == 4000
    assert after["hits"] - before["hits"] == 4000
    assert after["misses"] == before["misses"]


def test_an_update_that_finds_its_key_turned_into_another_type_reads_it_as_missing(
    client: redis.Redis, raw: redis.Redis
) -> None:
    # Between the update's read and its write: the compare-and-set refuses (as EXEC after a WATCH would), and the
    # retry reads a key of another type as missing, instead of failing on the script's GET with WRONGTYPE.
    store = RedisSessionStore(client)
    store.set("k", {"n": 1})

    def meddling(session: dict[str, Any]) -> dict[str, Any]:
        raw.delete("session:k")
        raw.hset("session:k", "a", "1")
        return session

    with pytest.raises(SessionNotFound):
        store.update("k", meddling)
    assert raw.type("session:k") == b"hash"  # left in place
