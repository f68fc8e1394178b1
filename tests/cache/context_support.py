"""Helpers the ContextCache test modules share: bounded polls, round-trip counting, a barrier for the invalidation
listener, a naive dict cache to contrast with, and a factory that closes every cache a test builds."""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import redis

from fmredis import ContextCache, create_redis_client
from fmredis.context_values import Codec
from tests.harness.polls import GUARD, eventually

NS = "ctx"
MISSING: Any = object()
_DECODER = Codec(compression=None, compress_above=0, max_bytes=1 << 30)


def value_key(key: str, ns: str = NS) -> str:
    return f"{ns}:v:{key}"


def history_keys(conversation_id: str, ns: str = NS) -> tuple[str, str]:
    """The Redis list of a conversation and its byte count."""
    return f"{ns}:h:{{{conversation_id}}}", f"{ns}:hb:{{{conversation_id}}}"


def plain(value: Any) -> bytes:
    """What ContextCache stores for ``value`` uncompressed: tag byte 0, then the JSON."""
    return b"\x00" + orjson.dumps(value)


def decode(stored: bytes) -> Any:
    """A stored value (either tag) decoded as the cache would."""
    return _DECODER.decode(stored)[0]


def data_commands(raw: redis.Redis) -> int:
    """Commands the server has run, not counting INFO (these probes) and PING (the listener's keep-alive)."""
    stats = raw.info("commandstats")
    return sum(int(entry["calls"]) for name, entry in stats.items() if name not in ("cmdstat_info", "cmdstat_ping"))


def settle(cache: ContextCache, read: Callable[[], Any], expected: Any = MISSING) -> Any:
    """Repeat ``read`` (a cache read) until one is served locally (and equals ``expected``, if given); return it.

    A fill can be dropped by a late invalidation of a write before it, so the first read after a write may not stay
    local; one after that invalidation does."""
    found: list[Any] = []

    def hit() -> bool:
        hits = cache.stats()["hits"]
        found[:] = [read()]
        return cache.stats()["hits"] > hits and (expected is MISSING or found[0] == expected)

    eventually(hit, "a read served by the local tier" + ("" if expected is MISSING else f" giving {expected!r}"))
    return found[0]


_rounds = itertools.count()


def drain(cache: ContextCache, raw: redis.Redis, ns: str = NS) -> None:
    """Return once the cache's listener has applied every invalidation Redis sent it before now.

    Has a barrier key (new contents each time) served locally, rewrites it with ``raw``, and waits until the cache
    serves the new contents: the listener reads its messages in order, so every earlier invalidation has been applied
    by then."""
    barrier, first = "__drain__", {"round": next(_rounds)}
    raw.set(value_key(barrier, ns), plain(first))
    settle(cache, lambda: cache.get(barrier), first)
    raw.set(value_key(barrier, ns), plain({**first, "then": True}))
    eventually(lambda: cache.get(barrier) == {**first, "then": True}, "the barrier's invalidation")


class NaiveCache:
    """A per-process dict in front of Redis with no invalidation and no expiry: what the cache must not behave like."""

    def __init__(self, raw: redis.Redis, ns: str = NS) -> None:
        self.raw, self.ns, self.copies = raw, ns, dict[str, Any]()

    def get(self, key: str) -> Any:
        if key not in self.copies:
            stored = self.raw.get(value_key(key, self.ns))
            self.copies[key] = None if stored is None else decode(stored)
        return self.copies[key]


class Caches:
    """Builds ContextCaches on a client, waits until each one's listener is subscribed, and closes them all."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.made: list[ContextCache] = []

    def make(self, client: redis.Redis | None = None, **options: Any) -> ContextCache:
        options.setdefault("namespace", NS)
        cache = ContextCache(client if client is not None else self.client, **options)
        self.made.append(cache)
        eventually(lambda: cache.stats()["tracking"], "the invalidation listener subscribed")
        return cache

    def close(self) -> None:
        for cache in self.made:
            cache.close()


class Threads:
    """Runs ``target(index)`` in ``count`` threads released together; keeps each one's result or exception."""

    def __init__(self, count: int, target: Callable[[int], Any]) -> None:
        self.results: list[Any] = [None] * count
        self.errors: list[BaseException | None] = [None] * count
        start = threading.Barrier(count)

        def run(index: int) -> None:
            start.wait(GUARD)
            try:
                self.results[index] = target(index)
            except BaseException as exc:
                self.errors[index] = exc

        self.threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]

    def run(self) -> Threads:
        for thread in self.threads:
            thread.start()
        for thread in self.threads:
            thread.join(GUARD * 2)
        assert not any(thread.is_alive() for thread in self.threads), "a thread is stuck"
        return self


@contextlib.contextmanager
def opened(client: Any, **options: Any) -> Iterator[ContextCache]:
    """A ContextCache on ``client`` with its listener subscribed; closed afterwards, and the client too."""
    made = ContextCache(client, namespace=NS, **options)
    try:
        eventually(lambda: made.stats()["tracking"], "the invalidation listener subscribed")
        yield made
    finally:
        made.close()
        client.close()


def fragile_client(url: str) -> Any:
    """A client for outages: short socket timeouts and no retry, so that each failed call costs ~0.3 s."""
    return create_redis_client(url=url, environ={}, socket_timeout=0.3, socket_connect_timeout=0.3, retry_attempts=0)


def resubscribed(cache: ContextCache, before: int) -> bool:
    stats = cache.stats()
    return bool(stats["tracking"]) and stats["subscriptions"] > before


#: The default user with every right but SUBSCRIBE: the listener cannot (re)subscribe, reads and writes go on.
REFUSING_SUBSCRIBE = ("user", "default", "on", "nopass", "~*", "&*", "+@all", "-subscribe")


def subscribe_refused(raw: redis.Redis) -> bool:
    """Whether the server refused a SUBSCRIBE (the listener's: nothing else subscribes) since it started."""
    return any(entry["object"] == "subscribe" for entry in raw.acl_log())
