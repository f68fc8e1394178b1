"""The two :class:`~fmredis.backend.Transaction` implementations of :class:`~fmredis.RedisSessionStore`: one
optimistic attempt on one session, committed only if nobody wrote it since it was read.

- :class:`ComparedSession` (``update`` on the multiplexer): a ``GET``, then a script that writes only if the key still
  holds the bytes read. Both go on the shared connection: a ``WATCH`` needs a pooled connection and redis-py's
  pipeline, about 3.5 times the CPU. Only on the multiplexer, which never re-sends a script whose reply was lost
  (redis-py's retries and a cluster client's could, and a re-sent compare-and-set that lost to itself would apply
  ``fn`` twice).
- :class:`WatchedSession` (``regenerate``, and ``update`` without pipelining or in a cluster): ``WATCH``, ``GET``,
  then ``MULTI``...``EXEC``, which Redis refuses if anyone wrote the key since the ``WATCH``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from redis.exceptions import NoScriptError, WatchError

from fmredis.multiplex import Multiplexer
from fmredis.redis_errors import lost_connection, redis_call
from fmredis.redis_index import RedisUserIndex
from fmredis.redis_scripts import COMPARE_AND_SET

__all__ = ["ComparedSession", "WatchedSession"]

_GET = redis_call("GET", read=True)
_CAS = redis_call("update")
_CAS_READ = redis_call("update", read=True)  # errors name the call, as the WATCH path's do
_CAS_SHA = hashlib.sha1(COMPARE_AND_SET.encode()).hexdigest()


class ComparedSession:
    """``read`` is a plain ``GET``, ``write`` a compare-and-set against the SHA-1 of what it read
    (:data:`~fmredis.redis_scripts.COMPARE_AND_SET`); both on the multiplexer ``mux``."""

    def __init__(self, mux: Multiplexer, full_key: str) -> None:
        self._mux, self._full_key, self._expected = mux, full_key, ""

    def read(self) -> bytes | None:
        with _CAS_READ:
            payload: bytes | None = self._mux.execute("GET", self._full_key)
        if payload is not None:
            self._expected = hashlib.sha1(payload).hexdigest()
        return payload

    def write(self, payload: bytes, seconds: int) -> bool:
        args = (1, self._full_key, self._expected, payload, seconds)
        with _CAS:
            try:
                return int(self._mux.execute("EVALSHA", _CAS_SHA, *args)) == 1
            except NoScriptError:  # not cached on this server yet (or flushed): it did not run
                return int(self._mux.execute("EVAL", COMPARE_AND_SET, *args)) == 1

    def move(self, new_id: str, payload: bytes, seconds: int, user_id: str | None, created: float) -> bool:
        raise NotImplementedError("regenerate runs on a WatchedSession")


class WatchedSession:
    """On a redis-py pipeline that has ``WATCH``ed the session's key (``full_key``); ``index`` is the store's user
    index, which a ``move`` takes along."""

    def __init__(self, index: RedisUserIndex, pipe: Any, key: str, full_key: str) -> None:
        self._index, self._pipe, self._key, self._full_key = index, pipe, key, full_key

    def read(self) -> bytes | None:
        with _GET:
            return self._pipe.execute_command("GET", self._full_key)  # type: ignore[no-any-return]

    def write(self, payload: bytes, seconds: int) -> bool:
        pipe = self._pipe
        pipe.multi()
        if seconds:
            pipe.execute_command("SET", self._full_key, payload, "EX", seconds)
        else:
            pipe.execute_command("UNLINK", self._full_key)
        return self._commit() is not None

    def move(self, new_id: str, payload: bytes, seconds: int, user_id: str | None, created: float) -> bool:
        index = self._index
        inside = index.in_script(new_id, user_id)
        if user_id is not None and not inside and seconds:
            # A cluster session outside its user's slot: list the new id first, so that no outcome of the move leaves
            # the moved session unlisted (an entry of an id never written is pruned by the next listing).
            index.add(user_id, new_id, created)
        self._pipe.multi()
        expire_at = index.queue_move(
            self._pipe, self._key, new_id, payload, seconds, user_id if inside else None, created
        )
        replies = self._commit()
        moved = replies is not None and int(replies[0]) == 1
        if moved and user_id is not None:
            if inside:
                index.noted(user_id, expire_at)
            else:
                index.forget_quietly(user_id, [self._key])
        return moved

    def _commit(self) -> list[Any] | None:
        """``EXEC``'s replies, or ``None`` if the session changed since the ``WATCH`` (the race was lost)."""
        try:
            return self._pipe.execute()  # type: ignore[no-any-return]
        except WatchError as exc:
            if lost_connection(exc):  # EXEC may or may not have run: the guard reports "outcome unknown"
                raise
            return None
