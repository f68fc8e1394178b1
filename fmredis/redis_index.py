"""RedisUserIndex: which sessions each user has, as one sorted set per user (session id -> creation time)."""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import WatchError

from fmredis.errors import UpdateConflict
from fmredis.redis_errors import REDIS_ERRORS, lost_connection
from fmredis.redis_scripts import INSERT, MOVE
from fmredis.redis_slots import slot_of, slot_tag, watched

__all__ = ["RedisUserIndex", "watched"]

_KEPT_NOTES = 10_000


class RedisUserIndex:
    """``index_prefix + user_id`` holds a sorted set of session ids scored by creation time (epoch seconds).

    Invariants the store relies on:

    - An entry and its session are written (``create``), moved (``regenerate``) and removed ("log out everywhere")
      together, by one script or one ``MULTI``/``EXEC``, or not at all: no live session made by ``create`` or
      ``regenerate`` is ever missing from its user's set, and no concurrent create or regenerate can slip between a
      logout's read of the set and its deletes (the logout watches the set and starts again if it changed).
    - Reads check that each listed session exists and prune the entries whose sessions are gone (expired, or removed
      with ``delete``): such a session is never returned, and the set does not grow without bound.
    - The key's own expiry stays past the end of every session it lists. Every write of an entry pushes it to at least
      the newest session's lifetime cap (with one) or two ``max_ttl`` from now, plus one ``max_ttl``. A session without
      a cap (no ``max_lifetime``, or no readable ``created_at``) can slide for ever, so the store calls
      :meth:`keep_alive_due` whenever it gives such a session a new TTL; a per-process note of how far it last pushed
      each key keeps that to about one ``EXPIREAT`` per user per ``max_ttl``.

    In a Redis Cluster (``cluster=True``) one script or ``MULTI`` must stay in one hash slot: the index key and the ids
    :meth:`session_id_for` makes carry the same hash tag (``{`` + 8 hex digits of the user id's SHA-256 + ``}``), so a
    user's index and the sessions made by ``create`` and ``regenerate`` share a slot. A session in another slot (one
    written with ``set`` and regenerated later) is indexed outside the script: its new entry before the move, the old
    one removed after it, so a failure never leaves the moved session unlisted.

    Needs Redis >= 7.0 (``EXPIREAT ... NX/GT``). Thread-safe. Callers translate redis-py's errors.
    """

    def __init__(
        self,
        client: Any,
        *,
        index_prefix: str,
        session_prefix: str,
        lifetime: int | None,
        max_ttl: int,
        cluster: bool,
    ) -> None:
        # Any: redis-py's pipeline methods are untyped, and zrange's return type is a union for RESP2/RESP3.
        self._client: Any = client
        self._index_prefix = index_prefix
        self._session_prefix = session_prefix
        self._lifetime = lifetime
        self._max_ttl = max_ttl
        self._cluster = cluster
        self._insert = client.register_script(INSERT)
        # user_id -> epoch second this process last pushed the index's expiry to. A note that is stale (the index was
        # deleted and made again since) is still safe: a new index expires at least two max_ttl after it was made,
        # later than any note made before it (a note is at most two max_ttl after the time it was made).
        self.kept: dict[str, int] = {}

    def expire_at(self, created: float) -> int:
        """When the index must expire at the earliest, for an entry written now of a session created at ``created``."""
        end = time.time() + self._max_ttl
        if self._lifetime is not None:
            end = max(end, created + self._lifetime)
        return int(end) + self._max_ttl + 1

    def keep_alive_due(self, user_id: str, seconds: int) -> int | None:
        """The expiry to push the user's index to (:meth:`push_expiry`) so that it outlives a session of the user just
        given ``seconds`` more, or ``None`` if this process already pushed it far enough (only needed without a
        lifetime cap; due about once per ``max_ttl``). No round trip."""
        until = time.time() + seconds
        if self.kept.get(user_id, 0) >= until:
            return None
        return int(until) + self._max_ttl + 1

    def push_expiry(self, user_id: str, expire_at: int) -> None:
        """``EXPIREAT ... GT``: move the index's expiry later, never earlier (a missing index stays missing)."""
        self._client.execute_command("EXPIREAT", self.key(user_id), expire_at, "GT")
        self.noted(user_id, expire_at)

    def noted(self, user_id: str, expire_at: int) -> None:
        """Remember that the user's index expires at ``expire_at`` or later (it was just pushed there)."""
        if len(self.kept) >= _KEPT_NOTES:  # bounded: forgetting only costs an EXPIREAT more
            self.kept.clear()
        self.kept[user_id] = expire_at

    def key(self, user_id: str) -> str:
        return self._index_prefix + _tag(user_id) + user_id if self._cluster else self._index_prefix + user_id

    def session_id_for(self, user_id: str, token: str) -> str:
        """The id of a new session of ``user_id``: ``token``, tagged into the user's hash slot in a cluster."""
        return _tag(user_id) + token if self._cluster else token

    def session_id_beside(self, session_id: str, token: str) -> str:
        """The id of a session that replaces ``session_id``: in a cluster, tagged into its slot (with a short tag that
        says nothing about ``session_id``), so one script can write the new key and remove the old."""
        return slot_tag(self._session_prefix + session_id) + token if self._cluster else token

    def insert(self, session_id: str, payload: bytes, seconds: int, user_id: str, created: float) -> int | None:
        """Write a new session and its entry in one script; the index's size after it, or ``None`` if the id is
        taken."""
        expire_at = self.expire_at(created)
        count = self._insert(
            keys=[self._session_prefix + session_id, self.key(user_id)],
            args=[payload, seconds, created, session_id, expire_at],
        )
        if int(count) < 0:
            return None
        self.noted(user_id, expire_at)
        return int(count)

    def in_script(self, session_id: str, user_id: str | None) -> bool:
        """Whether a move to ``session_id`` can carry the user's index entry in its script (same slot)."""
        return user_id is not None and self.same_slot(session_id, user_id)

    def queue_move(
        self,
        pipe: Any,
        old_id: str,
        new_id: str,
        payload: bytes,
        seconds: int,
        user_id: str | None,
        created: float,
    ) -> int:
        """Queue, in ``pipe``'s ``MULTI``, the script that moves a session and, if ``user_id`` is given, its entry
        (see :meth:`in_script`); returns the index expiry it sets."""
        keys = [self._session_prefix + old_id, self._session_prefix + new_id]
        if user_id is not None:
            keys.append(self.key(user_id))
        expire_at = self.expire_at(created)
        pipe.execute_command("EVAL", MOVE, len(keys), *keys, payload, seconds, created, old_id, new_id, expire_at)
        return expire_at

    def forget_quietly(self, user_id: str, session_ids: list[str]) -> None:
        """:meth:`remove`, for after a move has succeeded: a failure must not turn the move into an error (the entry
        of a gone session is pruned by the next :meth:`live`)."""
        with contextlib.suppress(*REDIS_ERRORS):
            self.remove(user_id, session_ids)

    def add(self, user_id: str, session_id: str, created: float) -> None:
        """Index a session outside any script (in a cluster, for a session outside the index's slot)."""
        index_key, expire_at = self.key(user_id), self.expire_at(created)
        with self._client.pipeline(transaction=True) as pipe:
            pipe.execute_command("ZADD", index_key, created, session_id)
            pipe.execute_command("EXPIREAT", index_key, expire_at, "NX")
            pipe.execute_command("EXPIREAT", index_key, expire_at, "GT")
            pipe.execute()
        self.noted(user_id, expire_at)

    def same_slot(self, session_id: str, user_id: str) -> bool:
        """Whether the session's key and the user's index key can share one script or ``MULTI``."""
        return not self._cluster or slot_of(self._session_prefix + session_id) == slot_of(self.key(user_id))

    def remove(self, user_id: str, session_ids: list[str]) -> None:
        if session_ids:
            self._client.execute_command("ZREM", self.key(user_id), *session_ids)

    def live(self, user_id: str) -> list[str]:
        """Ids of the user's existing sessions, oldest first; prunes entries of gone ones.

        Two round trips (three when something is pruned).
        """
        entries = _decoded(self._client.zrange(self.key(user_id), 0, -1))
        if not entries:
            return []
        with self._client.pipeline(transaction=False) as pipe:
            for session_id in entries:
                pipe.execute_command("EXISTS", self._session_prefix + session_id)
            present = [bool(found) for found in pipe.execute()]
        self.remove(user_id, [session_id for session_id, found in zip(entries, present, strict=True) if not found])
        return [session_id for session_id, found in zip(entries, present, strict=True) if found]

    def unlink_all(self, user_id: str, attempts: int, pause: Callable[[int], None]) -> int:
        """Remove every indexed session of the user and the index itself; returns how many sessions existed.

        ``WATCH`` the set, read it, then ``UNLINK`` the sessions and the set in one ``MULTI``/``EXEC``; a create or
        regenerate for the user in between makes Redis refuse the ``EXEC``, and the logout starts again. (In a
        cluster, sessions outside the index's slot are unlinked right after the ``EXEC``.)
        """
        index_key = self.key(user_id)
        for attempt in range(attempts):
            try:
                with watched(self._client, index_key) as pipe:
                    inside, outside = self._split(_decoded(pipe.zrange(index_key, 0, -1)), user_id)
                    pipe.multi()
                    for session_id in inside:
                        pipe.execute_command("UNLINK", self._session_prefix + session_id)
                    pipe.execute_command("UNLINK", index_key)
                    removed = sum(int(count) for count in pipe.execute()[:-1])
                return removed + self._unlink(outside)
            except WatchError as exc:
                if lost_connection(exc):
                    raise  # the store reports it as an outage, outcome unknown
                if attempt + 1 < attempts:
                    pause(attempt)
        raise UpdateConflict(f"delete_user_sessions lost to concurrent logins {attempts} times; nothing removed")

    def trim(self, user_id: str, keep: int, spare: str) -> list[str]:
        """Remove the user's oldest live sessions beyond the newest ``keep``, never ``spare`` (the session just made:
        entries are scored by each worker's clock, which may run behind another's); returns the ids removed."""
        live = [session_id for session_id in self.live(user_id) if session_id != spare]
        excess = live[: max(0, len(live) + 1 - keep)]
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


def _decoded(members: list[bytes]) -> list[str]:
    return [member.decode("utf-8", "surrogateescape") for member in members]


def _tag(user_id: str) -> str:
    return "{" + hashlib.sha256(user_id.encode("utf-8")).hexdigest()[:8] + "}"
