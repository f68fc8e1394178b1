"""RedisSessionStore on a real 3-master Redis Cluster: what only a cluster tests.

The generic contract suites already run against ``cluster_store`` (test_store_contract.py, test_lifecycle_contract.py).
Here: bulk calls over keys in hundreds of slots on all three nodes (one MGET / UNLINK per slot), the per-user hash tag
that keeps create a single script and regenerate/"log out everywhere" single MULTI/EXECs on the user's node, WATCH in
cluster transactions, diagnostics, the per-node blocking pool bound, and - last, on a cluster of its own - what callers
see when a master is shut down.

Which node owns a key is worked out independently of the client under test: ``cluster_client.keyslot`` for the slot,
``CLUSTER SLOTS`` from a plain connection for its owner, and each node's own DBSIZE / commandstats as ground truth.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
import redis
from redis.cluster import RedisCluster
from redis.connection import BlockingConnectionPool
from redis.exceptions import ClusterCrossSlotError, ClusterDownError, RedisClusterException

from fmredis import RedisSessionStore, StoreError, StoreUnavailable, create_redis_client, diagnostics
from fmredis.client import RedisClient
from tests.fakes import ReplyLost
from tests.harness.cluster import RedisCluster3, info_fields
from tests.harness.servers import LOOPBACK, Address, NotReady, free_port, make_client, wait_until

pytestmark = pytest.mark.topology

PREFIX = "session:"
INDEX_PREFIX = "user-sessions:" + PREFIX


# --- helpers --------------------------------------------------------------------------------------------------------


def tag_of(user_id: str) -> str:
    """The hash tag the store gives a user's index and the sessions create() makes for them (computed here)."""
    return "{" + hashlib.sha256(user_id.encode("utf-8")).hexdigest()[:8] + "}"


def index_key(user_id: str) -> str:
    return INDEX_PREFIX + tag_of(user_id) + user_id


class SlotOwners:
    """slot -> owning master, from ``CLUSTER SLOTS`` on a plain connection (not from the client under test)."""

    def __init__(self, nodes: list[Address]) -> None:
        with make_client(nodes[0]) as probe:
            reply = probe.execute_command("CLUSTER", "SLOTS")
        self.ranges = [(int(start), int(end), (master[0], int(master[1]))) for start, end, master, *_ in reply]

    def of_slot(self, slot: int) -> Address:
        for start, end, owner in self.ranges:
            if start <= slot <= end:
                return owner
        raise AssertionError(f"slot {slot} is not covered: {self.ranges}")

    def of_key(self, client: RedisClient, key: str) -> Address:
        return self.of_slot(slot(client, key))


def slot(client: RedisClient, key: str) -> int:
    assert isinstance(client, RedisCluster)
    return int(client.keyslot(key))


def dbsizes(nodes: list[Address]) -> dict[Address, int]:
    sizes = {}
    for node in nodes:
        with make_client(node) as probe:
            sizes[node] = int(probe.dbsize())
    return sizes


def calls_per_node(nodes: list[Address], *commands: str) -> Counter[Address]:
    """How often ``commands`` succeeded so far on each node (INFO commandstats: calls minus failed calls, so that an
    EVALSHA answered NOSCRIPT, which redis-py follows with SCRIPT LOAD and EVALSHA again, is not counted)."""
    counts: Counter[Address] = Counter()
    for node in nodes:
        with make_client(node) as probe:
            stats = probe.info("commandstats")
        for command in commands:
            entry = stats.get(f"cmdstat_{command}", {})
            counts[node] += int(entry.get("calls", 0)) - int(entry.get("failed_calls", 0))
    return counts


def command_calls(nodes: list[Address], *commands: str) -> int:
    """How often ``commands`` succeeded so far, summed over the nodes."""
    return sum(calls_per_node(nodes, *commands).values())


SCRIPTS = ("evalsha", "eval")


def keys_per_node(client: RedisClient, owners: SlotOwners, nodes: list[Address], stem: str) -> dict[Address, str]:
    """One key (``stem`` + n, without the prefix) owned by each node."""
    found: dict[Address, str] = {}
    for n in range(10_000):
        found.setdefault(owners.of_key(client, PREFIX + f"{stem}{n}"), f"{stem}{n}")
        if len(found) == len(nodes):
            return found
    raise AssertionError("10,000 keys did not reach every node")


def users_per_node(client: RedisClient, owners: SlotOwners, nodes: list[Address], stem: str) -> dict[Address, str]:
    """One user id whose index (and create()d sessions) each node owns."""
    found: dict[Address, str] = {}
    for n in range(10_000):
        found.setdefault(owners.of_key(client, index_key(f"{stem}{n}")), f"{stem}{n}")
        if len(found) == len(nodes):
            return found
    raise AssertionError("10,000 user ids did not reach every node")


def _append(item: str, session: dict[str, Any]) -> dict[str, Any]:
    return {**session, "items": [*session["items"], item]}


# --- bulk calls over many slots -------------------------------------------------------------------------------------


def test_bulk_calls_over_500_keys_in_many_slots_on_all_three_nodes(
    cluster_client: RedisClient, cluster_nodes: list[Address]
) -> None:
    store = RedisSessionStore(cluster_client, batch_size=64)  # delete_many then works in 8 batches
    owners = SlotOwners(cluster_nodes)
    keys = [f"bulk-{i}" for i in range(500)]
    for i, key in enumerate(keys):
        store.set(key, {"i": i})
    slots = {key: slot(cluster_client, PREFIX + key) for key in keys}
    placed = Counter(owners.of_slot(s) for s in slots.values())
    assert set(placed) == set(cluster_nodes)  # every node owns some of them
    assert len(set(slots.values())) > 450  # ... spread over hundreds of slots
    assert dbsizes(cluster_nodes) == dict(placed)  # and each node really holds the ones it owns

    missing = [f"never-{i}" for i in range(100)]
    asked = [key for pair in zip(keys[:100], missing, strict=True) for key in pair] + keys[100:]
    before = command_calls(cluster_nodes, "mget")
    found = store.get_many(asked)
    assert set(found) == set(keys)  # missing keys are left out, none is dropped
    assert {key: session["i"] for key, session in found.items()} == {key: i for i, key in enumerate(keys)}
    asked_slots = {slot(cluster_client, PREFIX + key) for key in asked}
    assert command_calls(cluster_nodes, "mget") - before == len(asked_slots)  # one MGET per slot

    before = command_calls(cluster_nodes, "unlink")
    assert store.delete_many(asked) == len(keys)  # the exact count: missing keys are not counted
    per_batch = [
        len({slot(cluster_client, PREFIX + key) for key in asked[start : start + 64]})
        for start in range(0, len(asked), 64)
    ]
    assert len(per_batch) == 10
    assert command_calls(cluster_nodes, "unlink") - before == sum(per_batch)  # one UNLINK per slot per batch
    assert dbsizes(cluster_nodes) == dict.fromkeys(cluster_nodes, 0)  # gone from every node
    assert store.delete_many(asked) == 0
    assert store.get_many(asked) == {}


def test_a_plain_multi_key_command_over_several_slots_fails_where_the_store_succeeds(
    cluster_client: RedisClient, cluster_nodes: list[Address], cluster_store: RedisSessionStore
) -> None:
    owners = SlotOwners(cluster_nodes)
    # Two keys owned by the same node but in different slots, and one key on another node.
    by_node: dict[Address, list[str]] = {}
    for n in range(10_000):
        key = f"cross-{n}"
        by_node.setdefault(owners.of_key(cluster_client, PREFIX + key), []).append(key)
        if len(by_node) == 3 and all(len(listed) >= 2 for listed in by_node.values()):
            break
    node, (first, second, *_) = next(iter(by_node.items()))
    other = next(listed[0] for owner, listed in by_node.items() if owner != node)
    assert slot(cluster_client, PREFIX + first) != slot(cluster_client, PREFIX + second)
    keys = [first, second, other]
    for key in keys:
        cluster_store.set(key, {"key": key})
    full = [PREFIX + key for key in keys]

    # redis-py's cluster client refuses to route one MGET / UNLINK to several slots ...
    with pytest.raises(RedisClusterException, match="MGET - all keys must map to the same key slot"):
        cluster_client.execute_command("MGET", *full)
    with pytest.raises(RedisClusterException, match="UNLINK - all keys must map to the same key slot"):
        cluster_client.execute_command("UNLINK", *full)
    # ... and the server refuses it even when one node owns every key.
    with make_client(node) as plain, pytest.raises(ClusterCrossSlotError, match="don't hash to the same slot"):
        plain.execute_command("MGET", PREFIX + first, PREFIX + second)

    # The store splits by slot itself.
    assert {key: session["key"] for key, session in cluster_store.get_many(keys).items()} == {k: k for k in keys}
    assert cluster_store.delete_many(keys) == 3
    assert sum(dbsizes(cluster_nodes).values()) == 0


# --- the per-user hash tag ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("user_id", ["alice", "{braces}", "a}b{c", "{}", "üser:42"])
def test_create_tags_the_session_id_into_the_slot_of_the_users_index(
    cluster_client: RedisClient, cluster_nodes: list[Address], cluster_store: RedisSessionStore, user_id: str
) -> None:
    tag = tag_of(user_id)  # the user's own braces come after the tag, so Redis hashes the tag
    home = SlotOwners(cluster_nodes).of_key(cluster_client, index_key(user_id))
    scripts, execs = calls_per_node(cluster_nodes, *SCRIPTS), command_calls(cluster_nodes, "exec")
    session_id = cluster_store.create(user_id, {"n": 1})
    assert calls_per_node(cluster_nodes, *SCRIPTS) - scripts == Counter({home: 1})  # index entry and session together
    assert command_calls(cluster_nodes, "exec") == execs  # in the script, not in a MULTI/EXEC
    assert session_id.startswith(tag) and len(session_id) >= len(tag) + 40
    assert slot(cluster_client, PREFIX + session_id) == slot(cluster_client, index_key(user_id))
    assert slot(cluster_client, index_key(user_id)) == slot(cluster_client, tag[1:-1])
    assert cluster_client.zrange(index_key(user_id), 0, -1) == [session_id.encode()]
    assert cluster_store.sessions_for_user(user_id) == [session_id]
    assert cluster_store.get(session_id)["n"] == 1  # type: ignore[index]


def test_create_regenerate_and_log_out_for_users_on_every_node(
    cluster_client: RedisClient, cluster_nodes: list[Address], cluster_store: RedisSessionStore
) -> None:
    store, owners = cluster_store, SlotOwners(cluster_nodes)
    users = [f"user-{n}" for n in range(24)]
    homes = {user: owners.of_key(cluster_client, index_key(user)) for user in users}
    assert set(homes.values()) == set(cluster_nodes)

    before = calls_per_node(cluster_nodes, *SCRIPTS)
    ids = {user: [store.create(user, {"user": user, "n": n}) for n in range(3)] for user in users}
    assert calls_per_node(cluster_nodes, *SCRIPTS) - before == Counter(3 * [homes[user] for user in users])  # 1 each
    for user, sessions in ids.items():
        assert {owners.of_key(cluster_client, PREFIX + sid) for sid in sessions} == {homes[user]}

    before = command_calls(cluster_nodes, "exec")
    for user, sessions in ids.items():
        old = sessions[1]
        sessions[1] = new = store.regenerate(old)
        # in the index's slot, through a short slot tag that copies nothing of the old id (a bearer credential)
        assert owners.of_key(cluster_client, PREFIX + new) == homes[user]
        assert new.startswith("{") and old.partition("}")[2][:8] not in new and len(new) <= len(old) + 4
        assert store.exists(old) is False
        session = store.get(new)
        assert session is not None and (session["user"], session["n"]) == (user, 1)
    assert command_calls(cluster_nodes, "exec") - before == len(users)  # session and index entry in one MULTI/EXEC
    for user, sessions in ids.items():
        assert store.sessions_for_user(user) == sessions  # the regenerated one keeps its place, oldest first

    before = command_calls(cluster_nodes, "exec")
    logged_out, kept = users[::2], users[1::2]
    assert [store.delete_user_sessions(user) for user in logged_out] == [3] * len(logged_out)
    assert command_calls(cluster_nodes, "exec") - before == len(logged_out)  # one MULTI/EXEC per user
    for user in logged_out:
        assert store.sessions_for_user(user) == []
        assert store.get_many(ids[user]) == {}
        assert cluster_client.exists(index_key(user)) == 0
    for user in kept:
        assert store.sessions_for_user(user) == ids[user]
    expected = Counter(homes[user] for user in kept for _key in range(4))  # 3 sessions + the index per user kept
    expected[owners.of_key(cluster_client, INDEX_PREFIX)] += 1  # and the logout notes: one key, the index prefix
    assert dbsizes(cluster_nodes) == {node: expected[node] for node in cluster_nodes}


def test_regenerate_of_a_set_session_moves_its_index_entry_across_slots(
    cluster_client: RedisClient, cluster_nodes: list[Address], cluster_store: RedisSessionStore
) -> None:
    store, owners, user = cluster_store, SlotOwners(cluster_nodes), "dora"
    home = owners.of_key(cluster_client, index_key(user))
    legacy = next(f"legacy-{n}" for n in range(10_000) if owners.of_key(cluster_client, PREFIX + f"legacy-{n}") != home)
    created = store.create(user, {})
    earlier = (datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat()
    store.set(legacy, {"user_id": user, "created_at": earlier, "v": 1})  # plain set(): untagged, not indexed

    before = command_calls(cluster_nodes, "exec")
    new = store.regenerate(legacy)
    # The session's own move is one MULTI/EXEC in the old key's slot; the index entry moves in a second one.
    assert command_calls(cluster_nodes, "exec") - before == 2
    assert slot(cluster_client, PREFIX + new) == slot(cluster_client, PREFIX + legacy)
    assert slot(cluster_client, PREFIX + new) != slot(cluster_client, index_key(user))
    assert store.exists(legacy) is False
    assert store.get(new)["v"] == 1  # type: ignore[index]
    assert store.sessions_for_user(user) == [new, created]  # by created_at: the set() session is older
    assert cluster_client.zrange(index_key(user), 0, -1) == [new.encode(), created.encode()]

    again = store.regenerate(new)  # stays in that slot
    assert slot(cluster_client, PREFIX + again) == slot(cluster_client, PREFIX + legacy)
    assert store.sessions_for_user(user) == [again, created]
    assert store.delete_user_sessions(user) == 2  # one inside the index's slot, one outside it
    assert sum(dbsizes(cluster_nodes).values()) == 1  # all gone but the logout notes (one key, the index prefix)
    assert cluster_client.exists(INDEX_PREFIX) == 1


@pytest.mark.parametrize("key", ["a}b", "a{}b", "{}x", "}"])
def test_regenerate_of_a_set_session_whose_key_has_a_closing_brace(
    cluster_client: RedisClient, cluster_nodes: list[Address], cluster_store: RedisSessionStore, key: str
) -> None:
    """A key Redis hashes whole (no ``{...}`` tag, or an empty ``{}``) that contains ``}`` cannot be copied into a
    tag (Redis stops the tag at the first ``}``): the new id gets a short tag found in the same slot instead, so the
    MULTI stays in one slot."""
    cluster_store.set(key, {"v": 1})
    new = cluster_store.regenerate(key)
    assert slot(cluster_client, PREFIX + new) == slot(cluster_client, PREFIX + key)
    assert cluster_store.exists(key) is False
    assert cluster_store.get(new)["v"] == 1  # type: ignore[index]


# --- WATCH in cluster transactions ----------------------------------------------------------------------------------


def test_update_retries_when_the_watched_key_changes_before_exec(
    cluster_client: RedisClient, cluster_store: RedisSessionStore
) -> None:
    cluster_store.set("watched", {"items": []})
    calls = 0

    def fn(session: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 1:  # another writer gets in between the WATCH/GET and the EXEC
            cluster_client.set(PREFIX + "watched", orjson.dumps({"items": ["other"]}))
        return _append("mine", session)

    assert cluster_store.update("watched", fn)["items"] == ["other", "mine"]
    assert calls == 2
    assert cluster_store.stats()["conflicts"] == 1
    assert cluster_store.get("watched")["items"] == ["other", "mine"]  # type: ignore[index]


def test_update_from_8_threads_keeps_every_append_on_every_node(
    cluster_client: RedisClient, cluster_nodes: list[Address], cluster_store: RedisSessionStore
) -> None:
    threads, per_thread = 8, 15
    keys = list(keys_per_node(cluster_client, SlotOwners(cluster_nodes), cluster_nodes, "shared-").values())
    for key in keys:
        cluster_store.set(key, {"items": []})
    start = threading.Barrier(threads, timeout=10)

    def work(n: int) -> None:
        start.wait()
        for i in range(per_thread):
            for key in keys:  # the three nodes' keys in turn
                cluster_store.update(key, functools.partial(_append, f"{n}:{i}"))

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(work, n) for n in range(threads)]:
            future.result()
    for key in keys:
        items = cluster_store.get(key)["items"]  # type: ignore[index]
        assert sorted(items) == sorted(f"{n}:{i}" for n in range(threads) for i in range(per_thread))
        for n in range(threads):
            assert [item for item in items if item.startswith(f"{n}:")] == [f"{n}:{i}" for i in range(per_thread)]


# --- client: diagnostics, URL, pool bound ---------------------------------------------------------------------------


def test_diagnostics_reports_cluster_mode_and_the_three_nodes(
    cluster_client: RedisClient, cluster_nodes: list[Address]
) -> None:
    report = diagnostics(cluster_client)
    assert report["mode"] == "cluster"
    assert report["topology"] == {"nodes": sorted(f"{host}:{port} primary" for host, port in cluster_nodes)}
    assert report["pool"]["class"] == "BlockingClusterNodePool"  # a BlockingConnectionPool (see fmredis.client)
    assert report["pool"]["address"] in {f"{host}:{port}" for host, port in cluster_nodes}
    assert report["versions"]["redis-server"]


def test_a_cluster_url_naming_two_nodes_discovers_all_three(cluster_nodes: list[Address]) -> None:
    url = "redis+cluster://" + ",".join(f"{host}:{port}" for host, port in cluster_nodes[:2])
    client = create_redis_client(url=url, environ={})
    try:
        assert isinstance(client, RedisCluster)
        assert sorted((node.host, node.port) for node in client.get_nodes()) == sorted(cluster_nodes)
        store = RedisSessionStore(client)
        keys = list(keys_per_node(client, SlotOwners(cluster_nodes), cluster_nodes, "url-").values())
        for key in keys:
            store.set(key, {"k": key})
        assert set(store.get_many(keys)) == set(keys)
    finally:
        client.close()


def test_node_pools_of_two_make_12_threads_wait_instead_of_failing(cluster_nodes: list[Address]) -> None:
    name = "fmredis-cluster-bound"
    client = create_redis_client(
        mode="cluster", cluster_nodes=cluster_nodes, max_connections=2, client_name=name, environ={}
    )
    assert isinstance(client, RedisCluster)
    store = RedisSessionStore(client)
    stop = threading.Event()
    peak: dict[Address, int] = dict.fromkeys(cluster_nodes, 0)

    def watch_connections() -> None:
        probes = {node: make_client(node) for node in cluster_nodes}
        try:
            while not stop.is_set():
                for node, probe in probes.items():
                    named = sum(1 for entry in probe.client_list() if entry["name"] == name)
                    peak[node] = max(peak[node], named)
                stop.wait(0.005)
        finally:
            for probe in probes.values():
                probe.close()

    def worker(n: int) -> None:
        for i in range(50):
            store.set(f"bound-{n}-{i}", {"n": n, "i": i})
            session = store.get(f"bound-{n}-{i}")
            assert session is not None and (session["n"], session["i"]) == (n, i)

    watcher = threading.Thread(target=watch_connections)
    watcher.start()
    try:
        with ThreadPoolExecutor(12) as pool:
            for future in [pool.submit(worker, n) for n in range(12)]:
                future.result()  # re-raises a worker's error (MaxConnectionsError without the blocking pools)
    finally:
        stop.set()
        watcher.join()
        pools = [node.redis_connection.connection_pool for node in client.get_nodes()]
        client.close()
    assert sum(dbsizes(cluster_nodes).values()) == 12 * 50
    assert all(1 <= seen <= 2 for seen in peak.values()), peak
    assert len(pools) == 3
    for pool in pools:
        assert isinstance(pool, BlockingConnectionPool)
        assert pool.max_connections == 2
        assert len(pool._connections) <= 2  # never made more than it may


def test_a_cluster_client_without_a_reachable_node_fails_at_creation_as_an_outage() -> None:
    """``RedisCluster`` reads the topology in its constructor, so (as documented) a cluster client is not lazy: with no
    node reachable, creating it raises ``StoreUnavailable`` naming the address, with redis-py's error as the cause."""
    port = free_port()
    with pytest.raises(StoreUnavailable) as info:
        create_redis_client(mode="cluster", cluster_nodes=[(LOOPBACK, port)], environ={})
    message = str(info.value)
    assert message.startswith(f"Redis cluster discovery at redis+cluster://{LOOPBACK}:{port} failed")
    assert "RedisClusterException" in message and "Connection refused" in message
    assert isinstance(info.value.__cause__, RedisClusterException)


# --- transactions whose reply is lost, and what a store releases -----------------------------------------------------


def test_an_update_whose_exec_reply_is_lost_is_applied_once_and_reported_unknown(
    cluster_store: RedisSessionStore, cluster_client: RedisClient, reply_lost: ReplyLost
) -> None:
    """redis-py's cluster transactions re-send MULTI...EXEC on a new connection, without the WATCH, after a lost reply:
    the store runs them on the node's own client, where a lost connection while watching is an unknown outcome."""
    cluster_store.set("counter", {"n": 0})
    reply_lost.arm()
    with pytest.raises(StoreUnavailable, match="outcome unknown"):
        cluster_store.update("counter", lambda s: {**s, "n": s["n"] + 1})
    assert reply_lost.dropped == 1
    assert orjson.loads(cluster_client.get(PREFIX + "counter"))["n"] == 1  # applied once, not re-sent
    assert cluster_store.update("counter", lambda s: {**s, "n": s["n"] + 1})["n"] == 2  # and it works on afterwards


def test_a_regenerate_whose_exec_reply_is_lost_is_reported_unknown_not_missing(
    cluster_store: RedisSessionStore, reply_lost: ReplyLost
) -> None:
    old = cluster_store.create("gus", {})
    reply_lost.arm()
    with pytest.raises(StoreUnavailable, match="outcome unknown"):  # not SessionNotFound: the move did happen
        cluster_store.regenerate(old)
    assert reply_lost.dropped == 1
    [new] = cluster_store.sessions_for_user("gus")  # moved once, and listed
    assert new != old and cluster_store.exists(new) and not cluster_store.exists(old)


def test_a_refused_login_is_a_configuration_error_not_an_outage(cluster_nodes: list[Address]) -> None:
    clients = [make_client(node) for node in cluster_nodes]
    try:
        for client in clients:
            client.execute_command("ACL", "SETUSER", "app", "reset", "on", ">right", "~*", "+@all")
        with pytest.raises(StoreError) as info:
            create_redis_client(
                mode="cluster", cluster_nodes=cluster_nodes, username="app", password="wrong", environ={}
            )
        assert not isinstance(info.value, StoreUnavailable)  # the wrappers must neither retry nor fall back on it
        assert "check username and password" in str(info.value) and "wrong" not in str(info.value)
    finally:
        for client in clients:
            client.execute_command("ACL", "DELUSER", "app")
            client.close()


def _named(nodes: list[Address], name: str) -> int:
    count = 0
    for node in nodes:
        with make_client(node) as probe:
            count += sum(1 for entry in probe.client_list() if entry.get("name") == name)
    return count


def test_close_releases_the_connections_of_every_node(cluster_nodes: list[Address]) -> None:
    host, port = cluster_nodes[0]
    with RedisSessionStore.from_url(f"redis+cluster://{host}:{port}?client_name=closing-cluster") as store:
        store.get_many([f"k{n}" for n in range(60)])  # keys on every node
        assert _named(cluster_nodes, "closing-cluster") >= 3
    wait_until(
        lambda: _named(cluster_nodes, "closing-cluster") == 0 or _raise_not_ready(), time.monotonic() + 5, "close"
    )


def test_a_bad_store_option_leaves_no_cluster_client_open(cluster_nodes: list[Address]) -> None:
    host, port = cluster_nodes[0]
    with pytest.raises(ValueError, match="batch_size"):
        RedisSessionStore.from_url(f"redis+cluster://{host}:{port}?client_name=refused-cluster", batch_size=0)
    wait_until(
        lambda: _named(cluster_nodes, "refused-cluster") == 0 or _raise_not_ready(), time.monotonic() + 5, "gone"
    )


def _raise_not_ready() -> bool:
    raise NotReady("connections still open")


# --- a master shut down (a cluster of its own, torn down at the end of the module: keep these tests last) -----------


@dataclass
class BrokenCluster:
    cluster: RedisCluster3
    store: RedisSessionStore
    dead: Address
    live: list[Address]
    keys: dict[Address, str]  # a session key owned by each node
    users: dict[Address, str]  # a user whose index each node owns


def _cluster_state(node: Address) -> str:
    with make_client(node) as probe:
        return info_fields(probe.execute_command("CLUSTER", "INFO"))["cluster_state"]


def _refuses(node: Address) -> None:
    try:
        with make_client(node) as probe:
            probe.ping()
    except redis.ConnectionError:
        return
    raise NotReady(f"{node} still answers")


def _all_fail(nodes: list[Address]) -> None:
    states = {node: _cluster_state(node) for node in nodes}
    if set(states.values()) != {"fail"}:
        raise NotReady(f"cluster_state per live node: {states}")


def _shut_down(node: Address) -> None:
    with make_client(node) as probe:
        probe.shutdown(nosave=True)
    wait_until(lambda: _refuses(node), time.monotonic() + 10, f"{node} to stop")


@pytest.fixture(scope="module")
def broken_cluster() -> Iterator[BrokenCluster]:
    """An own 3-master cluster (default cluster-require-full-coverage yes, node timeout 2 s) with one master shut down
    (SHUTDOWN NOSAVE), once the two others report cluster_state:fail; one session key and one user per node were
    written before."""
    with RedisCluster3() as cluster:
        client = create_redis_client(mode="cluster", cluster_nodes=cluster.nodes, environ={})
        try:
            store, owners = RedisSessionStore(client), SlotOwners(cluster.nodes)
            keys = keys_per_node(client, owners, cluster.nodes, "k")
            users = users_per_node(client, owners, cluster.nodes, "u")
            for key in keys.values():
                store.set(key, {"key": key})
            for user in users.values():
                store.create(user, {})
            dead, *live = cluster.nodes
            _shut_down(dead)
            wait_until(lambda: _all_fail(live), time.monotonic() + 20, "the live nodes to report cluster_state:fail")
            yield BrokenCluster(cluster, store, dead, live, keys, users)
        finally:
            client.close()


def _raised(call: Callable[[], object]) -> StoreError:
    started = time.monotonic()
    with pytest.raises(StoreError) as info:
        call()
    print(f"{info.value!r} after {time.monotonic() - started:.2f} s")
    return info.value


def test_a_master_shut_down_takes_the_whole_cluster_down(broken_cluster: BrokenCluster) -> None:
    """With cluster-require-full-coverage yes (the default), one master down stops the whole cluster.

    - keys in the dead master's slots: ``StoreUnavailable`` at once, naming the node and "Connection refused";
    - keys on the live masters: ``StoreUnavailable`` ``"Redis <COMMAND> failed: ClusterDownError"`` (redis-py's
      ``ClusterDownError`` as the cause), after redis-py's own retries (about 3 s per call here);
    - the live masters themselves report cluster_state:fail.
    """
    b = broken_cluster
    host, port = b.dead
    dead_key, dead_user = b.keys[b.dead], b.users[b.dead]
    for call, command in (
        (functools.partial(b.store.get, dead_key), "GET"),
        (functools.partial(b.store.set, dead_key, {"v": 2}), "SET"),
        (functools.partial(b.store.create, dead_user, {}), "create"),
    ):
        error = _raised(call)
        assert isinstance(error, StoreUnavailable)
        assert str(error).startswith(f"Redis {command} failed: ConnectionError: ")
        assert f"{host}:{port}" in str(error) and "Connection refused" in str(error)
        assert isinstance(error.__cause__, redis.ConnectionError)

    for node in b.live:
        error = _raised(functools.partial(b.store.get, b.keys[node]))
        assert isinstance(error, StoreUnavailable)
        assert str(error).startswith("Redis GET failed: ClusterDownError")
        assert isinstance(error.__cause__, ClusterDownError)
    error = _raised(functools.partial(b.store.create, b.users[b.live[0]], {}))
    assert isinstance(error, StoreUnavailable)
    assert str(error).startswith("Redis create failed: ClusterDownError")
    assert isinstance(error.__cause__, ClusterDownError)
    assert [_cluster_state(node) for node in b.live] == ["fail", "fail"]


def test_clusterdown_is_reported_as_an_outage(broken_cluster: BrokenCluster) -> None:
    """CLUSTERDOWN is an outage of the deployment (it also covers the window while a cluster with replicas fails
    over): ``StoreUnavailable``, as for keys in the dead master's own slots, so the wrappers retry or fall back."""
    b = broken_cluster
    with pytest.raises(StoreUnavailable, match=r"^Redis GET failed: ClusterDownError"):
        b.store.get(b.keys[b.live[0]])


def test_with_every_master_down_calls_raise_store_unavailable(broken_cluster: BrokenCluster) -> None:
    """Shuts the two remaining masters down, so it must stay the last test on this cluster.

    With no node left, redis-py's cluster client raises ``RedisClusterException`` ("Redis Cluster cannot be
    connected"), which is not a ``redis.RedisError``; the store reports it as ``StoreUnavailable`` all the same."""
    b = broken_cluster
    for node in b.live:
        _shut_down(node)
    key = b.keys[b.live[0]]
    with pytest.raises(StoreUnavailable):
        b.store.get(key)
    with pytest.raises(StoreUnavailable):
        b.store.get_many(list(b.keys.values()))
