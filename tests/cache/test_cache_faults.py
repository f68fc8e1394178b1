"""ContextCache through real redis-server faults, on a server of the test's own.

What is proved: a killed tracking connection, a restarted server (data lost or kept) and an outage (stopped, killed
or SIGSTOPped server) leave no stale copy served afterwards, while during the outage local copies are served until
their TTL and misses and writes raise StoreUnavailable (a cache without the flush on resubscribing serves the
pre-fault value). Where a write must land before the listener resubscribes, the server refuses SUBSCRIBE (an ACL)
until the test has written and read, so that order is set, not left to the retry delay. Every wait is a bounded poll
(deadlock guards, never timing assertions).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from fmredis import StoreUnavailable, create_redis_client
from tests.cache.context_support import (
    REFUSING_SUBSCRIBE,
    drain,
    eventually,
    fragile_client,
    opened,
    plain,
    resubscribed,
    settle,
    subscribe_refused,
    value_key,
)
from tests.harness.servers import RedisServer

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own (no persistence: a restart loses the data), for kills and restarts."""
    with RedisServer("cache-faults") as server:
        yield server


@pytest.mark.fault
def test_killed_tracking_connection_leaves_no_stale_copy(own_server: RedisServer) -> None:
    """CLIENT KILL of the listener's connection, then a raw write, while the server refuses SUBSCRIBE (ACL): the write
    lands before the listener resubscribes, so its invalidation is never delivered (invalidations do not grow); the
    read while the listener is refused and the reads once it has resubscribed (subscriptions and flushes grew, after
    SUBSCRIBE is allowed again) are the new value, and the local tier serves again. The read right after the write
    races the listener noticing the kill, as any read races an invalidation in flight, so its outcome is only
    recorded."""
    raw = redis.Redis(host=own_server.address[0], port=own_server.port, protocol=2)
    racing = []
    with contextlib.closing(raw), opened(create_redis_client(url=own_server.url, environ={})) as cache:
        for round_ in range(3):
            eventually(lambda: cache.stats()["tracking"], "the listener subscribed")
            cache.set("k", {"round": round_})
            assert settle(cache, lambda: cache.get("k")) == {"round": round_}
            drain(cache, raw)  # every invalidation sent before now is applied
            before = cache.stats()
            raw.acl_log_reset()
            raw.execute_command("ACL", "SETUSER", "default", "-subscribe")  # the subscribed connection stays
            (listener,) = raw.client_list(_type="pubsub")
            assert raw.client_kill_filter(_id=listener["id"]) == 1
            raw.set(value_key("k"), plain({"round": round_, "by": "raw"}))
            racing.append(cache.get("k"))
            eventually(lambda: subscribe_refused(raw), "the listener's SUBSCRIBE refused")
            assert cache.stats()["subscriptions"] == before["subscriptions"]
            assert cache.get("k") == {"round": round_, "by": "raw"}
            raw.execute_command("ACL", "SETUSER", "default", "+subscribe")
            eventually(lambda b=before: resubscribed(cache, b["subscriptions"]), "the listener to resubscribe")
            after = cache.stats()
            assert cache.get("k") == {"round": round_, "by": "raw"}
            assert after["invalidations"] == before["invalidations"], "the lost write's invalidation arrived"
            assert after["flushes"] > before["flushes"]
            assert settle(cache, lambda: cache.get("k")) == {"round": round_, "by": "raw"}
        assert cache.stats()["subscriptions"] == 4
        assert all(seen in ({"round": n}, {"round": n, "by": "raw"}) for n, seen in enumerate(racing))


# --- 4. server restarted, data lost or kept -------------------------------------------------------------------------


@pytest.mark.fault
@pytest.mark.parametrize("persistent", [False, True], ids=["data-lost", "data-kept"])
def test_restarted_server_leaves_no_stale_copy(persistent: bool) -> None:
    """Restart redis-server under a cache with warm copies; the restarted server refuses SUBSCRIBE (ACL in its config)
    so another client's write to one key lands before the listener resubscribes, and so do the reads: they return
    what the restarted server holds (the new value; the other key gone or kept), none from the local tier. Once
    SUBSCRIBE is allowed and the listener has resubscribed, the tier holds nothing from before and reads stay right."""
    with (
        RedisServer("cache-restart", persistent=persistent) as server,
        opened(fragile_client(server.url), ping_interval=0.2) as cache,
    ):
        server.config.append(REFUSING_SUBSCRIBE)
        server.write_config()  # for the restarts only: the running server does not read it again
        for round_ in range(3):
            eventually(lambda: cache.stats()["tracking"], "the listener subscribed")
            for key in ("k", "other"):
                cache.set(key, {"round": round_})
                assert settle(cache, lambda key=key: cache.get(key)) == {"round": round_}
            subscriptions = cache.stats()["subscriptions"]
            server.restart()
            with contextlib.closing(server.client()) as writer:
                writer.set(value_key("k"), plain({"round": round_, "by": "raw"}))
                eventually(lambda w=writer: subscribe_refused(w), "the restarted server to refuse the listener")
                stats = cache.stats()
                assert not stats["tracking"] and stats["subscriptions"] == subscriptions
                assert cache.get("k") == {"round": round_, "by": "raw"}
                assert cache.get("other") == ({"round": round_} if persistent else None)
                assert cache.get("k") == {"round": round_, "by": "raw"}
                after = cache.stats()
                assert after["hits"] == stats["hits"], "a local copy was served before the listener resubscribed"
                assert after["subscriptions"] == subscriptions
                writer.execute_command("ACL", "SETUSER", "default", "+subscribe")
            eventually(lambda n=subscriptions: resubscribed(cache, n), "the listener to resubscribe")
            assert cache.stats()["local_entries"] == 0, "what was held before the restart is still held"
            assert settle(cache, lambda: cache.get("k")) == {"round": round_, "by": "raw"}


# --- 5. Redis down or hung: the local copy until its TTL, then StoreUnavailable; nothing stale afterwards ----------


@pytest.mark.fault
@pytest.mark.parametrize("fault", ["stop", "kill", "freeze"])
def test_outage_serves_local_copies_until_their_ttl(fault: str, own_server: RedisServer) -> None:
    """Redis stopped, killed or SIGSTOPped (found by the listener's unanswered PING, ping_interval=0.2): warm values
    keep being served as fallback reads, the one with ttl 4 s until its TTL, then StoreUnavailable; a miss, set and
    append raise StoreUnavailable, and the refused set's key is no longer served (outcome unknown). With the server
    back, a write another client made at once is what is read, before and after the listener resubscribes."""
    with opened(fragile_client(own_server.url), ping_interval=0.2) as cache:
        for key, ttl in (("short", 4), ("long", 60), ("written", 60)):
            cache.set(key, {"v": 1}, ttl=ttl)
            assert settle(cache, lambda key=key: cache.get(key)) == {"v": 1}
        subscriptions = cache.stats()["subscriptions"]
        {"stop": own_server.stop, "kill": own_server.kill, "freeze": own_server.freeze}[fault]()
        eventually(lambda: not cache.stats()["tracking"], "the listener to notice the outage")
        assert cache.get("short") == {"v": 1}
        assert cache.get("long") == {"v": 1}
        assert cache.stats()["fallback_reads"] >= 2
        with pytest.raises(StoreUnavailable):
            cache.get("never-read")
        with pytest.raises(StoreUnavailable):
            cache.set("written", {"v": 2})
        with pytest.raises(StoreUnavailable):
            cache.get("written")
        with pytest.raises(StoreUnavailable):
            cache.append("conversation", {"text": "hello"})
        served: list[Any] = []

        def expired() -> bool:
            try:
                served.append(cache.get("short"))
            except StoreUnavailable:
                return True
            return False

        eventually(expired, "the local copy to stop being served after its TTL")
        assert all(value == {"v": 1} for value in served)
        assert cache.get("long") == {"v": 1}, "an unexpired copy is no longer served"
        if fault == "freeze":
            own_server.thaw()
        else:
            own_server.start()
        with contextlib.closing(own_server.client()) as writer:
            writer.set(value_key("long"), plain({"v": 2, "by": "raw"}))
        assert cache.get("long") == {"v": 2, "by": "raw"}, "the pre-outage copy was served with Redis back"
        eventually(lambda: resubscribed(cache, subscriptions), "the listener to resubscribe")
        assert cache.get("long") == {"v": 2, "by": "raw"}
        assert cache.get("short") is None
        assert settle(cache, lambda: cache.get("long")) == {"v": 2, "by": "raw"}
