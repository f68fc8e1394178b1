"""RedisUserIndex: which sessions each user has, as one sorted set per user (session id -> creation time)."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from typing import Any

import redis
from redis.crc import key_slot
from redis.exceptions import WatchError

from fmredis.errors import UpdateConflict

__all__ = ["RedisUserIndex", "lost_connection"]


class RedisUserIndex:
    """``index_prefix + user_id`` holds a sorted set of session ids scored by creation time (epoch seconds).

    Invariants the store relies on:

    - An entry and its session are written, moved (``regenerate``) and removed ("log out everywhere") in one
      ``MULTI``/``EXEC`` each, so no live session made by ``create``/``regenerate`` is ever missing from its user's set,
      and no concurrent create or regenerate can slip between a logout's read of the set and its deletes (the logout
      watches the set and starts again if it changed).
    - Reads check that each listed session exists and prune the entries whose sessions are gone (expired, or removed
      with ``delete``): such a session is never returned, and the set does not grow without bound.
    - The key's own expiry is kept at or past its newest session's lifetime cap plus one ``max_ttl`` (what a refresh
      can overshoot the cap by if its capping command is lost), so the index outlives every session it lists, as long
      as the sessions keep their ``created_at``.

    In a Redis Cluster (``cluster=True``) one ``MULTI`` must stay in one hash slot: the index key and the ids
    :meth:`session_id_for` makes carry the same hash tag (``{`` + 8 hex digits of the user id's SHA-256 + ``}``), so a
    user's index and the sessions made by ``create`` and ``regenerate`` share a slot. Keys in other slots (sessions
    written with ``set`` and regenerated later) are handled outside the ``MULTI``.

    Needs Redis >= 7.0 (``EXPIREAT ... NX/GT``). Thread-safe.
    """

    def __init__(
        self,
        client: Any,
        *,
        index_prefix: str,
        session_prefix: str,
        max_lifetime: int,
        max_ttl: int,
        cluster: bool = False,
    ) -> None:
        # Any: redis-py's pipeline methods are untyped, and zrange's return type is a union for RESP2/RESP3.
        self._client: Any = client
        self._index_prefix = index_prefix
        self._session_prefix = session_prefix
        self._max_lifetime = max_lifetime
        self._max_ttl = max_ttl
        self._cluster = cluster

    def key(self, user_id: str) -> str:
        return self._index_prefix + _tag(user_id) + user_id if self._cluster else self._index_prefix + user_id

    def session_id_for(self, user_id: str, token: str) -> str:
        """The id of a new session of ``user_id``: ``token``, tagged into the user's hash slot in a cluster."""
        return _tag(user_id) + token if self._cluster else token

    def session_id_beside(self, session_key: str, token: str) -> str:
        """The id of a session that replaces the one under ``session_key``: in a cluster, tagged into its slot, so one
        ``MULTI`` can write the new key and remove the old."""
        return "{" + _hash_tag(session_key) + "}" + token if self._cluster else token

    def add(self, user_id: str, session_id: str, created: float) -> None:
        """Index a session outside any other ``MULTI`` (in a cluster, for a session outside the index's slot)."""
        with self._client.pipeline(transaction=True) as pipe:
            self.queue_add(pipe, user_id, session_id, created)
            pipe.execute()

    def same_slot(self, session_id: str, user_id: str) -> bool:
        """Whether the session's key and the user's index key can share one ``MULTI``."""
        return not self._cluster or _slot(self._session_prefix + session_id) == _slot(self.key(user_id))

    def queue_add(self, pipe: Any, user_id: str, session_id: str, created: float) -> None:
        """Queue, in ``pipe``'s ``MULTI``, the entry for ``session_id`` and the key's expiry (three replies)."""
        index_key = self.key(user_id)
        expire_at = int(created) + self._max_lifetime + self._max_ttl + 1
        pipe.execute_command("ZADD", index_key, created, session_id)
        # NX sets a new key's expiry; GT only moves an existing one later (GT alone skips a key without one).
        pipe.execute_command("EXPIREAT", index_key, expire_at, "NX")
        pipe.execute_command("EXPIREAT", index_key, expire_at, "GT")

    def remove(self, user_id: str, session_ids: list[str]) -> None:
        if session_ids:
            self._client.execute_command("ZREM", self.key(user_id), *session_ids)

    def entries(self, user_id: str) -> list[tuple[str, float]]:
        """Every ``(session_id, created)`` indexed for the user, oldest first, gone sessions included."""
        return _decoded(self._client.zrange(self.key(user_id), 0, -1, withscores=True))

    def live(self, user_id: str) -> list[tuple[str, float]]:
        """``(session_id, created)`` of the user's existing sessions, oldest first; prunes entries of gone ones.

        Two round trips (three when something is pruned).
        """
        entries = self.entries(user_id)
        if not entries:
            return []
        with self._client.pipeline(transaction=False) as pipe:
            for session_id, _created in entries:
                pipe.execute_command("EXISTS", self._session_prefix + session_id)
            present = [bool(found) for found in pipe.execute()]
        self.remove(user_id, [session_id for (session_id, _), found in zip(entries, present, strict=True) if not found])
        return [entry for entry, found in zip(entries, present, strict=True) if found]

    def unlink_all(self, user_id: str, attempts: int, pause: Callable[[int], None]) -> int:
        """Remove every indexed session of the user and the index itself; returns how many sessions existed.

        ``WATCH`` the set, read it, then ``UNLINK`` the sessions and the set in one ``MULTI``/``EXEC``; a create or
        regenerate for the user in between makes Redis refuse the ``EXEC``, and the logout starts again. (In a
        cluster, sessions outside the index's slot are unlinked right after the ``EXEC``.)
        """
        index_key = self.key(user_id)
        for attempt in range(attempts):
            try:
                with self._client.pipeline(transaction=True) as pipe:
                    pipe.watch(index_key)
                    ids = [session_id for session_id, _ in _decoded(pipe.zrange(index_key, 0, -1, withscores=True))]
                    inside, outside = self._split(ids, user_id)
                    pipe.multi()
                    for session_id in inside:
                        pipe.execute_command("UNLINK", self._session_prefix + session_id)
                    pipe.execute_command("UNLINK", index_key)
                    removed = sum(int(count) for count in pipe.execute()[:-1])
                return removed + self._unlink(outside)
            except WatchError as exc:
                if lost_connection(exc):
                    raise  # the store reports it as an outage
                if attempt + 1 < attempts:
                    pause(attempt)
        raise UpdateConflict(f"delete_user_sessions lost to concurrent logins {attempts} times; nothing removed")

    def trim(self, user_id: str, keep: int) -> list[str]:
        """Remove the user's oldest live sessions beyond the newest ``keep``; returns the ids removed."""
        live = self.live(user_id)
        excess = [session_id for session_id, _created in live[: max(0, len(live) - keep)]]
        if excess:
            inside, outside = self._split(excess, user_id)
            with self._client.pipeline(transaction=True) as pipe:
                for session_id in inside:
                    pipe.execute_command("UNLINK", self._session_prefix + session_id)
                pipe.execute_command("ZREM", self.key(user_id), *excess)
                pipe.execute()
            self._unlink(outside)
        return excess

    def _split(self, session_ids: list[str], user_id: str) -> tuple[list[str], list[str]]:
        """The ids whose keys share the index's slot (one MULTI can hold them), and the others."""
        inside = [session_id for session_id in session_ids if self.same_slot(session_id, user_id)]
        return inside, [session_id for session_id in session_ids if not self.same_slot(session_id, user_id)]

    def _unlink(self, session_ids: list[str]) -> int:
        if not session_ids:
            return 0
        # RedisCluster.unlink splits the keys by slot; only cluster mode gets here.
        return int(self._client.unlink(*[self._session_prefix + session_id for session_id in session_ids]))


def _decoded(pairs: list[tuple[bytes, float]]) -> list[tuple[str, float]]:
    return [(member.decode("utf-8", "surrogateescape"), score) for member, score in pairs]


def lost_connection(exc: WatchError) -> bool:
    """redis-py reports a connection lost while keys are watched (the EXEC reply included) as a ``WatchError`` with the
    real error as its context: that is not a lost race, and whether the ``EXEC`` ran is unknown."""
    return isinstance(exc.__context__, (redis.ConnectionError, redis.TimeoutError))


def _tag(user_id: str) -> str:
    return "{" + hashlib.sha256(user_id.encode("utf-8")).hexdigest()[:8] + "}"


def _hash_tag(key: str) -> str:
    """A hash tag (without braces) for a key in ``key``'s slot: its own tag if it has one, else the key itself if it
    has no braces, else the first short string found in that slot."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    if end > start + 1:
        return key[start + 1 : end]
    if "{" not in key and "}" not in key:
        return key
    slot = _slot(key)
    return next(tag for tag in map(str, itertools.count()) if _slot(tag) == slot)  # ~16,000 tries on average


def _slot(key: str) -> int:
    return int(key_slot(key.encode("utf-8", "surrogateescape")))
