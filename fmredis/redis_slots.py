"""Redis Cluster hash slots: a short tag for every slot, and ``WATCH`` on the node that holds a key.

Both serve the rule that one script or ``MULTI``/``EXEC`` stays in one slot without leaking or growing keys, and that a
transaction's ``WATCH`` is never silently lost.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Iterator
from typing import Any

from redis.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import AskError, MovedError

__all__ = ["slot_of", "slot_tag", "watched"]


def slot_of(key: str) -> int:
    return int(key_slot(key.encode("utf-8", "surrogateescape")))


@functools.cache
def _tags() -> tuple[str, ...]:
    """The shortest decimal string in each slot (about 160,000 CRC16s, once per process, ~0.1 s)."""
    tags: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    missing = REDIS_CLUSTER_HASH_SLOTS
    for number in itertools.count():
        tag = str(number)
        slot = slot_of(tag)
        if tags[slot] is None:
            tags[slot], missing = tag, missing - 1
            if not missing:
                return tuple(tag for tag in tags if tag is not None)
    raise AssertionError("unreachable")  # pragma: no cover


def slot_tag(key: str) -> str:
    """A hash tag, braces included, that puts a key in ``key``'s slot: at most 7 characters that say nothing about
    ``key`` (a session id is a credential, and must not be copied into another key's name)."""
    return "{" + _tags()[slot_of(key)] + "}"


@contextlib.contextmanager
def watched(client: Any, key: str, *more: str) -> Iterator[Any]:
    """A ``MULTI``/``EXEC`` pipeline that has sent ``WATCH key`` (and ``more`` keys of its slot), reset (``UNWATCH``)
    on exit.

    In a cluster it runs on the node that holds ``key``, through that node's own client: the cluster client's
    transactions re-send ``MULTI``...``EXEC`` on a new connection after a connection error, without the ``WATCH``, so
    a lost ``EXEC`` reply could apply a write twice and a concurrent write could be overwritten. On the node client a
    lost connection while watching raises ``WatchError`` (outcome unknown) as in standalone mode. A slot that moved
    (``MOVED``/``ASK`` on the ``WATCH``) refreshes the cluster's layout once and watches on the new owner.
    """
    for attempt in range(2):
        owner = _owner(client, key)
        pipe = owner.pipeline(transaction=True)
        try:
            pipe.watch(key, *more)
            break
        except (MovedError, AskError):
            pipe.reset()
            if attempt or not isinstance(client, RedisCluster):
                raise
            client.nodes_manager.initialize()
    try:
        yield pipe
    finally:
        pipe.reset()


def _owner(client: Any, key: str) -> Any:
    if isinstance(client, RedisCluster):
        return client.get_redis_connection(client.get_node_from_key(key))  # type: ignore[no-untyped-call]
    return client
