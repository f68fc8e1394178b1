"""The calls :mod:`fmredis.multiplex` queues and completes: their states, their errors, and which commands may be sent
twice."""

from __future__ import annotations

import copy
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

__all__ = ["IDEMPOTENT", "Call", "copy_error"]

#: Commands that have the same effect if Redis runs them twice (as the store sends them: SET with a fixed value and EX,
#: EXPIRE with a fixed number of seconds, EXPIREAT to a fixed time; UNLINK's second reply counts 0). Only these are
#: re-sent after a connection is lost with them in flight.
IDEMPOTENT = frozenset({"GET", "SET", "UNLINK", "EXISTS", "GETEX", "TTL", "PTTL", "MGET", "EXPIRE", "EXPIREAT"})

_QUEUED, _TAKEN, _DONE, _FAILED, _ABANDONED = range(5)


class Call:
    """One caller's commands (``count`` of them, packed together) and, once done, their replies or failure."""

    __slots__ = ("count", "error", "payload", "pinged", "replies", "sent", "state", "wake")

    def __init__(self, payload: bytes, count: int) -> None:
        self.payload = payload
        self.count = count
        self.state = _QUEUED
        self.sent = False  # taken for sending at least once (whether Redis got it is then unknown until a reply)
        self.replies: Any = None
        self.error: BaseException | None = None
        self.wake: Any = None  # a lock held until the leader has news for a waiting caller (made only for waiters)
        self.pinged = False  # (under the mutex) the wake lock was, or is about to be, released: one release at a time


def copy_error(exc: BaseException) -> BaseException:
    """A fresh exception per caller (one raised object shared by threads would mix their tracebacks)."""
    if isinstance(exc, RedisError):
        try:
            clone = copy.copy(exc)  # its class, args and attributes (an AuthenticationError's status_code)
        except Exception:
            return RedisConnectionError(f"{type(exc).__name__} while talking to Redis")
        # Cause and context kept: the translation reads them (an SSL certificate error behind a ConnectionError).
        clone.__cause__, clone.__context__, clone.__traceback__ = exc.__cause__, exc.__context__, None
        return clone
    if isinstance(exc, OSError):
        return RedisConnectionError(f"{type(exc).__name__}: {exc}")
    return RedisConnectionError(f"{type(exc).__name__} while talking to Redis")
