"""The two :class:`~fmredis.backend.Transaction` implementations of :class:`~fmredis.RedisSessionStore`: one
optimistic attempt on one session, committed only if nobody wrote it since it was read.

- :class:`ComparedSession` (``update`` on the multiplexer): a ``GET``, then a script that writes only if the key still
  holds the bytes read. Both go on the shared connection: a ``WATCH`` needs a pooled connection and redis-py's
  pipeline, about 3.5 times the CPU. Only on the multiplexer, which never re-sends a script whose reply was lost
  (redis-py's retries and a cluster client's could, and a re-sent compare-and-set that lost to itself would apply
  ``fn`` twice).
- :class:`WatchedSession` (``regenerate``, and ``update`` without pipelining or in a cluster): ``WATCH``, ``GET``,
  then ``MULTI``...``EXEC``, which Redis refuses if anyone wrote the key since the ``WATCH``.

A fenced ``update`` (``fence=held``) checks the lock's fencing counter in the same step as its commit: inside the
compare-and-set script (:data:`~fmredis.redis_scripts.FENCED`), or by watching the counter too. Fenced ``set`` and
``delete`` are one script each (:func:`run_fenced`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from redis.exceptions import NoScriptError, WatchError

from fmredis.errors import FencedOut, InvalidKeyError
from fmredis.lifecycle import session_ref
from fmredis.multiplex import Multiplexer
from fmredis.redis_errors import lost_connection, redis_call
from fmredis.redis_index import RedisUserIndex
from fmredis.redis_scripts import COMPARE_AND_SET, FENCED
from fmredis.redis_slots import slot_of
from fmredis.store import Fence

__all__ = ["ComparedSession", "WatchedSession", "check_fence", "run_fenced"]

_GET = redis_call("GET", read=True)
_CAS = redis_call("update")
_CAS_READ = redis_call("update", read=True)  # errors name the call, as the WATCH path's do
_CAS_SHA = hashlib.sha1(COMPARE_AND_SET.encode()).hexdigest()
_FENCED = redis_call("fenced write")
_FENCED_SHA = hashlib.sha1(FENCED.encode()).hexdigest()


def check_fence(fence: Fence, full_key: str, cluster: bool) -> None:
    """Refuse what is not a fence, and in a cluster a session key outside its lock's slot (the script that checks the
    fence and writes must name keys of one slot)."""
    token, fence_key = getattr(fence, "token", None), getattr(fence, "fence_key", None)
    if type(token) is not int or not isinstance(fence_key, str) or not fence_key:
        raise TypeError("fence must be a HeldLock (an object with an int token and a str fence_key)")
    if cluster and slot_of(full_key) != slot_of(fence_key):
        raise InvalidKeyError(
            "in a Redis Cluster a fenced session must be in its lock's slot: give the session key the lock's hash tag "
            "(lock '{cart-42}', key '{cart-42}:...'); nothing was written"
        )


def fenced_out(key: str, fence: Fence) -> FencedOut:
    return FencedOut(
        f"Write to session {session_ref(key)} refused: a newer token than {fence.token} has been issued for its lock "
        "(another holder may have written); nothing was written"
    )


def run_fenced(execute: Callable[..., Any], fence: Fence, key: str, full_key: str, *args: Any) -> int:
    """The :data:`~fmredis.redis_scripts.FENCED` script's reply; :class:`~fmredis.errors.FencedOut` for its -1."""
    keys_and_token = (2, fence.fence_key, full_key, fence.token)
    with _FENCED:
        try:
            reply = int(execute("EVALSHA", _FENCED_SHA, *keys_and_token, *args))
        except NoScriptError:  # not cached on this server yet: it did not run
            reply = int(execute("EVAL", FENCED, *keys_and_token, *args))
    if reply == -1:
        raise fenced_out(key, fence)
    return reply


class ComparedSession:
    """``read`` is a plain ``GET``, ``write`` a compare-and-set against the SHA-1 of what it read
    (:data:`~fmredis.redis_scripts.COMPARE_AND_SET`); both on the multiplexer ``mux``."""

    def __init__(self, mux: Multiplexer, full_key: str, fence: Fence | None = None, key: str = "") -> None:
        self._mux, self._full_key, self._expected = mux, full_key, ""
        self._fence, self._key = fence, key

    def read(self) -> bytes | None:
        with _CAS_READ:
            payload: bytes | None = self._mux.execute("GET", self._full_key)
        if payload is not None:
            self._expected = hashlib.sha1(payload).hexdigest()
        return payload

    def write(self, payload: bytes, seconds: int) -> bool:
        if self._fence is not None:
            cas = ("cas", payload, seconds, self._expected)
            return run_fenced(self._mux.execute, self._fence, self._key, self._full_key, *cas) == 1
        args = (1, self._full_key, self._expected, payload, seconds)
        with _CAS:
            try:
                return int(self._mux.execute("EVALSHA", _CAS_SHA, *args)) == 1
            except NoScriptError:  # not cached on this server yet (or flushed): it did not run
                return int(self._mux.execute("EVAL", COMPARE_AND_SET, *args)) == 1

    def move(self, new_id: str, payload: bytes, seconds: int, user_id: str | None, created: float) -> bool:
        raise NotImplementedError("regenerate runs on a WatchedSession")


class WatchedSession:
    """On a redis-py pipeline that has ``WATCH``ed the session's key (``full_key``), and the ``fence``'s counter if
    any; ``index`` is the store's user index, which a ``move`` takes along."""

    def __init__(self, index: RedisUserIndex, pipe: Any, key: str, full_key: str, fence: Fence | None = None) -> None:
        self._index, self._pipe, self._key, self._full_key, self._fence = index, pipe, key, full_key, fence

    def read(self) -> bytes | None:
        with _GET:
            if self._fence is not None:  # watched: a token issued from here to EXEC makes the commit lose, and retry
                newest = self._pipe.execute_command("GET", self._fence.fence_key)
                if newest is not None and int(newest) > self._fence.token:
                    raise fenced_out(self._key, self._fence)
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
