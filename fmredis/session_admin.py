"""What ``fmredis sessions`` does: count the sessions under a prefix, inspect one, list or log out a user's sessions.

Every function takes a client from :func:`~fmredis.create_redis_client` and the store's key prefix (``"session:"`` for
:class:`~fmredis.RedisSessionStore`'s default, ``"django-session:"`` and ``"flask-session:"`` for the framework
engines). Redis failures raise :class:`~fmredis.errors.StoreUnavailable` or :class:`~fmredis.errors.StoreError`.
Messages name a session by :func:`~fmredis.session_ref`, never by its id.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from redis.cluster import RedisCluster

from fmredis.checks import check_key, check_user_id
from fmredis.client import RedisClient
from fmredis.errors import SessionNotFound
from fmredis.lifecycle import session_ref
from fmredis.redis_errors import redis_call
from fmredis.redis_store import RedisSessionStore
from fmredis.serialization import CorruptSession, decode_session

__all__ = ["SCAN_COUNT", "SessionInfo", "count_sessions", "logout_user", "show_session", "user_sessions"]

#: Keys SCAN is asked to look at per call: bounded work for the server per round trip.
SCAN_COUNT = 1000
#: The document fields shown as metadata; every other top-level key is listed by name.
_META = ("created_at", "last_activity", "user_id")
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def count_sessions(client: RedisClient, prefix: str, progress: Callable[[int], None] | None = None) -> int:
    """How many keys start with ``prefix``: ``SCAN 0 MATCH <prefix>* COUNT 1000`` until the cursor comes back (on a
    cluster, on every master), never ``KEYS``. ``progress(found)`` is called after every round trip.

    On a keyspace that changes during the scan the count is a snapshot: SCAN returns every key present for the whole
    scan once, and may return a key twice when Redis resizes its table meanwhile.
    """
    found = 0
    for batch in _scan(client, _GLOB_SPECIAL.sub(r"\\\1", prefix) + "*"):
        found += batch
        if progress is not None:
            progress(found)
    return found


def _scan(client: RedisClient, pattern: str) -> Iterator[int]:
    """The number of keys each round trip of the scan returned."""
    with redis_call("SCAN"):
        if isinstance(client, RedisCluster):  # scan_iter walks every master; count in steps of SCAN_COUNT
            pending = 0
            for _key in client.scan_iter(match=pattern, count=SCAN_COUNT):
                pending += 1
                if pending == SCAN_COUNT:
                    yield pending
                    pending = 0
            yield pending
            return
        cursor = 0
        while True:
            cursor, keys = client.scan(cursor, match=pattern, count=SCAN_COUNT)
            yield len(keys)
            if int(cursor) == 0:
                return


@dataclass(frozen=True)
class SessionInfo:
    """One stored session: its TTL (seconds, ``-1`` for none), its size in bytes, its document (``payload``; show it
    only when asked)."""

    ref: str
    ttl: int
    size: int
    payload: dict[str, Any]

    def metadata(self) -> dict[str, object]:
        """What can be shown without the payload's values: times, owner, size, and the names of the other keys."""
        data = self.payload.get("data")
        names: dict[str, object] = {
            "ttl": self.ttl,
            **{name: self.payload.get(name) for name in _META},
            "size": self.size,
            "keys": sorted(name for name in self.payload if name not in _META),
        }
        if isinstance(data, dict):  # a web session (fmredis.contrib): its framework keys live under "data"
            names["data keys"] = sorted(data)
        return names


def show_session(client: RedisClient, prefix: str, session_id: str) -> SessionInfo:
    """The session under ``prefix + session_id``, read with ``GET`` and ``PTTL`` in one round trip, without refreshing
    its TTL. Raises :class:`~fmredis.errors.SessionNotFound` (naming its reference) when it is missing or not a
    session, and :class:`~fmredis.errors.InvalidKeyError` for an id no store accepts."""
    key = prefix + check_key(session_id)
    ref = session_ref(session_id)
    try:
        with redis_call("GET", read=True), client.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            payload, milliseconds = pipe.execute()
        if payload is None or int(milliseconds) == -2:  # -2: expired between the two commands
            raise SessionNotFound(f"no session {ref} under prefix {prefix!r}")
        document = decode_session(payload)
    except CorruptSession as exc:
        raise SessionNotFound(f"session {ref} under prefix {prefix!r} holds no session document ({exc})") from None
    milliseconds = int(milliseconds)
    ttl = -1 if milliseconds < 0 else max(1, -(-milliseconds // 1000))  # rounded up, as the stores report it
    return SessionInfo(ref=ref, ttl=ttl, size=len(payload), payload=document)


def _store(client: RedisClient, prefix: str) -> RedisSessionStore:
    # No multiplexer: one command at a time, and the caller closes the client.
    return RedisSessionStore(client, prefix=prefix, owns_client=False, pipelining=False, counters=False)


def user_sessions(client: RedisClient, prefix: str, user_id: str) -> list[str]:
    """The ids of the user's live sessions, oldest first (:meth:`~fmredis.RedisSessionStore.sessions_for_user`)."""
    return _store(client, prefix).sessions_for_user(check_user_id(user_id))


def logout_user(client: RedisClient, prefix: str, user_id: str) -> int:
    """Remove every session of the user (:meth:`~fmredis.RedisSessionStore.delete_user_sessions`); how many."""
    return _store(client, prefix).delete_user_sessions(check_user_id(user_id))
