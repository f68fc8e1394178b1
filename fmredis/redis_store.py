"""RedisSessionStore: sessions as orjson bytes under ``prefix + key`` with ``SET ... EX``; nothing logged per call."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import redis
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fmredis.client import create_redis_client
from fmredis.errors import StoreError, StoreUnavailable
from fmredis.serialization import CorruptSession, decode_session, encode_for_write
from fmredis.store import ISessionStore, TTLDefaults, check_key, check_keys

__all__ = ["RedisSessionStore"]

logger = logging.getLogger(__name__)


def _failure(command: str, exc: RedisError) -> StoreError:
    """The fmredis error for a redis-py failure; a server error shows only its type and code (its text may echo
    data)."""
    # A refused login is a configuration problem, not an outage: no wrapper should retry it or fall back on it.
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)) and not isinstance(exc, AuthenticationError):
        return StoreUnavailable(f"Redis {command} failed: {type(exc).__name__}: {exc}")
    code = str(exc).split(" ", 1)[0]
    detail = f" {code}" if isinstance(exc, ResponseError) and code.isupper() else ""
    return StoreError(f"Redis {command} failed: {type(exc).__name__}{detail}")


def _is_wrong_type(exc: ResponseError) -> bool:
    return str(exc).startswith("WRONGTYPE")


class RedisSessionStore(TTLDefaults, ISessionStore):
    """Sessions in Redis: one string key per session holding its orjson document, with a TTL.

    ``client`` defaults to :func:`~fmredis.client.create_redis_client` (settings from the environment); the store then
    owns it and :meth:`close` releases its pool (``owns_client=True`` does the same for a client passed in). A client
    given here must return bytes (``decode_responses=False``).
    Every method makes one round trip, except :meth:`delete_many` (one per ``batch_size`` keys); all are thread-safe.
    Failures raise :class:`~fmredis.errors.StoreUnavailable` (unreachable, timed out) or
    :class:`~fmredis.errors.StoreError`, with redis-py's exception as the cause. Corrupt data (not a JSON object, or a
    key of another Redis type) reads as missing and logs one warning naming the key, never the payload.
    """

    def __init__(
        self,
        client: redis.Redis | None = None,
        *,
        prefix: str = "session:",
        default_ttl: int = 1800,
        max_ttl: int = 86_400,
        batch_size: int = 1000,
        owns_client: bool | None = None,
    ) -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        self._init_ttls(default_ttl, max_ttl)
        if type(batch_size) is not int or batch_size < 1:
            raise ValueError(f"batch_size must be an int of at least 1 (got {batch_size!r})")
        self._owns_client = client is None if owns_client is None else owns_client
        self._client = create_redis_client() if client is None else client
        # Bound once: redis-py's typed wrappers (get, set ...) only rebuild the same argument tuple, and skipping them
        # keeps the store within a few percent of raw redis-py.
        self._execute: Callable[..., Any] = self._client.execute_command
        self._prefix = prefix
        self._batch_size = batch_size

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(prefix={self._prefix!r}, default_ttl={self._default_ttl}, max_ttl={self._max_ttl})"
        )

    @property
    def client(self) -> redis.Redis:
        """The redis-py client this store sends its commands through."""
        return self._client

    @property
    def prefix(self) -> str:
        return self._prefix

    def close(self) -> None:
        """Disconnect the pool's idle connections if this store owns its client (a client passed in is left to its
        owner). Commands other threads are running finish; their connections close when garbage collected."""
        if self._owns_client:
            self._client.close()
            self._client.connection_pool.disconnect(inuse_connections=False)

    def _corrupt(self, full_key: str, reason: object) -> None:
        logger.warning(
            "Corrupt session data under %s (%s); treated as missing", full_key, reason, extra={"session_key": full_key}
        )

    def get(self, key: str) -> dict[str, Any] | None:
        full_key = self._prefix + check_key(key)
        try:
            payload = self._execute("GET", full_key)
        except ResponseError as exc:
            if _is_wrong_type(exc):
                self._corrupt(full_key, "not a string key")
                return None
            raise _failure("GET", exc) from exc
        except RedisError as exc:
            raise _failure("GET", exc) from exc
        if payload is None:
            return None
        try:
            return decode_session(payload)
        except CorruptSession as exc:
            self._corrupt(full_key, exc)
            return None

    def set(self, key: str, value: dict[str, Any], ttl: int | None = None) -> None:
        full_key = self._prefix + check_key(key)
        seconds = self._ttl_or_default(ttl)
        payload = encode_for_write(value)
        try:
            self._execute("SET", full_key, payload, "EX", seconds)
        except RedisError as exc:
            raise _failure("SET", exc) from exc

    def delete(self, key: str) -> bool:
        full_key = self._prefix + check_key(key)
        try:
            return bool(self._execute("UNLINK", full_key))
        except RedisError as exc:
            raise _failure("UNLINK", exc) from exc

    def exists(self, key: str) -> bool:
        full_key = self._prefix + check_key(key)
        try:
            return bool(self._execute("EXISTS", full_key))
        except RedisError as exc:
            raise _failure("EXISTS", exc) from exc

    def extend_ttl(self, key: str, ttl: int | None = None) -> bool:
        full_key = self._prefix + check_key(key)
        seconds = self._ttl_or_default(ttl)
        try:
            return bool(self._execute("EXPIRE", full_key, seconds))
        except RedisError as exc:
            raise _failure("EXPIRE", exc) from exc

    def ttl(self, key: str) -> int | None:
        full_key = self._prefix + check_key(key)
        try:
            seconds = int(self._execute("TTL", full_key))
        except RedisError as exc:
            raise _failure("TTL", exc) from exc
        return None if seconds == -2 else seconds

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """One MGET for all keys. A key of another Redis type reads as missing without a warning (MGET hides it)."""
        checked = check_keys(keys)
        if not checked:
            return {}
        prefix = self._prefix
        try:
            payloads = self._execute("MGET", *[prefix + key for key in checked])
        except RedisError as exc:
            raise _failure("MGET", exc) from exc
        found: dict[str, dict[str, Any]] = {}
        for key, payload in zip(checked, payloads, strict=True):
            if payload is None:
                continue
            try:
                found[key] = decode_session(payload)
            except CorruptSession as exc:
                self._corrupt(prefix + key, exc)
        return found

    def delete_many(self, keys: Iterable[str]) -> int:
        """UNLINK in batches of ``batch_size`` keys, one round trip each (bounded work per command on the server).

        If a batch fails, the error is raised and earlier batches stay deleted: the count is never reported for a
        partial run.
        """
        full_keys = [self._prefix + key for key in check_keys(keys)]
        removed = 0
        for start in range(0, len(full_keys), self._batch_size):
            try:
                removed += int(self._execute("UNLINK", *full_keys[start : start + self._batch_size]))
            except RedisError as exc:
                raise _failure("UNLINK", exc) from exc
        return removed
