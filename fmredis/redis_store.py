"""RedisSessionStore: sessions as orjson bytes under ``prefix + key`` with ``SET ... EX``; nothing logged per call."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from redis.cluster import RedisCluster

from fmredis.backend import Transaction
from fmredis.client import RedisClient, create_redis_client
from fmredis.config import RedisSettings, resolve_settings
from fmredis.core import SessionStoreBase, conflict_pause
from fmredis.multiplex import Multiplexer
from fmredis.redis_errors import redis_call
from fmredis.redis_index import RedisUserIndex, watched
from fmredis.redis_transactions import ComparedSession, WatchedSession, check_fence, run_fenced
from fmredis.store import Fence
from fmredis.ttl_policy import SessionTTLManager

__all__ = ["RedisSessionStore"]

# One guard per command, made once: the hot path allocates nothing for error handling. A read's WRONGTYPE (a key of
# another Redis type under a session's name) reads as corrupt data, that is as missing.
_GET = redis_call("GET", read=True)
_GETEX = redis_call("GETEX", read=True)
_TTL = redis_call("TTL", read=True)
_SET = redis_call("SET")
_UNLINK = redis_call("UNLINK")
_EXPIRE = redis_call("EXPIRE")
_MGET = redis_call("MGET")
_EXPIREAT = redis_call("EXPIREAT")
_LOGOUTS = redis_call("ZMSCORE", read=True)
_INDEXED = redis_call("ZADD")


class RedisSessionStore(SessionStoreBase):
    """Sessions in Redis: one string key per session holding its orjson document, with a TTL.

    Build it with :meth:`from_url`, with no client (settings from the environment, see
    :func:`~fmredis.create_redis_client`), or on a redis-py client you made (``decode_responses=False``). A store that
    builds its client owns it: :meth:`close` (or leaving ``with``) releases its pool; ``owns_client=True`` does the
    same for a client passed in. Needs Redis >= 7.0.

    Round trips: one per call for get/set/delete/exists/ttl/get_many and for a refreshing get, touch or extend_ttl
    (``GETEX``; a second one when a refresh is cut short by a lifetime cap); ``delete_many`` one per ``batch_size``
    keys; ``update`` two per attempt (``GET``, then a compare-and-set script; without pipelining or in a cluster
    three: ``WATCH``, ``GET``, ``MULTI``...``EXEC``); ``create`` one script;
    ``regenerate`` three; the other user-index calls two to four. Without a lifetime cap, a write or refresh of a
    session with a ``user_id`` adds one ``EXPIREAT`` on the user's index when this process has not pushed that index's
    expiry far enough yet (about once per user per ``max_ttl``; a ``create`` counts). All methods are thread-safe.

    Failures raise :class:`~fmredis.errors.StoreUnavailable` (unreachable, timed out) or
    :class:`~fmredis.errors.StoreError` (the server's reason in the message; see :mod:`fmredis.redis_errors`).
    Corrupt data (not a JSON object, or a key of another Redis type) reads as missing and logs one warning with the
    session's reference, never the payload. The per-user index lives under ``"user-sessions:" + prefix + user_id``.
    ``pipelining`` (default on): the session commands (get, set, delete, exists, ttl, touch, the bulk calls) skip
    ``Redis.execute_command`` and go through one connection borrowed from the client's pool, which threads calling at
    once share, their commands written together and the replies matched back in order (see
    :mod:`fmredis.multiplex`: per-call timeout of ``socket_timeout``, a lost connection retried once for these
    idempotent commands). ``update``, ``create``, ``regenerate`` and the user-index calls keep redis-py's path, on the
    pool's other connections. Not used for a cluster client or a pool of one connection. Other options: see
    :class:`~fmredis.core.SessionStoreBase`.
    """

    def __init__(
        self,
        client: RedisClient | None = None,
        *,
        prefix: str = "session:",
        default_ttl: int = 1800,
        max_ttl: int = 86_400,
        ttl_policy: SessionTTLManager | None = None,
        max_lifetime: int | None = None,
        max_sessions_per_user: int | None = None,
        update_attempts: int = 64,
        batch_size: int = 1000,
        counters: bool = True,
        pipelining: bool = True,
        owns_client: bool | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(client, (str, bytes)):
            raise TypeError(
                "RedisSessionStore() takes a redis-py client, not a URL: use RedisSessionStore.from_url(url)"
            )
        if client is not None and not callable(getattr(client, "execute_command", None)):
            raise TypeError(
                f"client must be a redis-py client (redis.Redis, RedisCluster), not {type(client).__name__}"
            )
        if client is not None and _decodes(client):
            raise TypeError("client must return bytes: build it with decode_responses=False (create_redis_client does)")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        if type(pipelining) is not bool:
            raise TypeError(f"pipelining must be a bool, not {type(pipelining).__name__}")
        if type(batch_size) is not int or batch_size < 1:
            raise ValueError(f"batch_size must be an int of at least 1 (got {batch_size!r})")
        super().__init__(
            default_ttl=default_ttl,
            max_ttl=max_ttl,
            ttl_policy=ttl_policy,
            max_lifetime=max_lifetime,
            max_sessions_per_user=max_sessions_per_user,
            update_attempts=update_attempts,
            counters=counters,
            wall_clock=wall_clock,
        )
        self._options: dict[str, Any] = {
            "prefix": prefix,
            "default_ttl": default_ttl,
            "max_ttl": max_ttl,
            "ttl_policy": ttl_policy,
            "max_lifetime": max_lifetime,
            "max_sessions_per_user": max_sessions_per_user,
            "update_attempts": update_attempts,
            "batch_size": batch_size,
            "counters": counters,
            "pipelining": pipelining,
            "wall_clock": wall_clock,
        }
        self._settings: RedisSettings | None = None
        self._owns_client = client is None if owns_client is None else owns_client
        if client is None:
            self._settings = resolve_settings()
            client = create_redis_client(self._settings)
        self._client = client
        self._prefix = prefix
        self._batch_size = batch_size
        # A cluster client splits multi-key commands by slot only through its typed methods (mget_nonatomic, unlink).
        self._cluster = isinstance(client, RedisCluster)
        # The session commands go through a multiplexer on one of the client's pooled connections (the lean path,
        # pipelined across threads) where it can borrow one; else straight to redis-py's execute_command.
        self._mux = _multiplexer(client) if pipelining and not self._cluster else None
        self._execute: Callable[..., Any] = client.execute_command if self._mux is None else self._mux.execute
        self._logouts_key = "user-sessions:" + prefix
        self._index = RedisUserIndex(
            client,
            index_prefix="user-sessions:" + prefix,
            session_prefix=prefix,
            lifetime=max_lifetime,
            max_ttl=max_ttl,
            cluster=self._cluster,
        )
        self._indexes_expire = True  # with a lifetime cap, still for sessions whose created_at is unreadable

    @classmethod
    def from_url(cls, url: str, **store_options: Any) -> RedisSessionStore:
        """A store that owns a client for ``url`` (``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``,
        ``redis+cluster://``; client settings as query parameters). The URL takes ``REDIS_URL``'s place in the
        configuration hierarchy: explicit settings in it win, ``REDIS_*`` variables fill what it leaves out."""
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, not {type(url).__name__}")
        settings = resolve_settings(url=url)
        client = create_redis_client(settings)
        try:
            store = cls(client, owns_client=True, **store_options)
        except BaseException:
            _release(client)  # a bad store option: the client just made must not stay open
            raise
        store._settings = settings
        return store

    def rebuild(self) -> RedisSessionStore:
        """A store with a fresh connection pool, for :class:`~fmredis.ResilientRedisSessionStore`: a new store on the
        same settings and options when this one built its client, else this store, its pool's idle connections closed
        (the next call reconnects). Connections other threads are using are never cut: a ``WATCH`` they hold must
        not be lost to a silent reconnect."""
        if self._settings is not None:
            replacement = type(self)(create_redis_client(self._settings), owns_client=True, **self._options)
            replacement._settings = self._settings
            return replacement
        _release(self._client)
        if self._mux is not None:
            self._mux.release()
        return self

    def _repr_fields(self) -> str:
        return f"prefix={self._prefix!r}"

    @property
    def client(self) -> RedisClient:
        """The redis-py client this store sends its commands through."""
        return self._client

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def pipelined(self) -> bool:
        """Whether the session commands go through the shared, automatically pipelined connection."""
        return self._mux is not None

    def _close(self) -> None:
        """If this store owns its client: return the client's shared connection and disconnect the idle connections of
        its pools (a client passed in is left to its owner, and its shared connection to its other stores). Commands
        other threads are running finish; their connections close when garbage collected. A store used after
        ``close`` connects again."""
        if self._owns_client:
            if self._mux is not None:
                self._mux.release()  # the client's shared connection (other stores on a client passed in keep it)
            _release(self._client)

    # --- primitives --------------------------------------------------------------------------------------------------

    def _read(self, key: str) -> bytes | None:
        with _GET:
            return self._execute("GET", self._prefix + key)  # type: ignore[no-any-return]

    def _write(self, key: str, payload: bytes, seconds: int) -> None:
        with _SET:
            self._execute("SET", self._prefix + key, payload, "EX", seconds)

    def _pipelined(self, commands: list[tuple[Any, ...]]) -> None:
        """``commands`` in one round trip, not a transaction: on the multiplexer, or a redis-py pipeline (a cluster
        client's splits them by node). The first error reply is raised, after all of them ran."""
        if self._mux is not None:
            self._mux.execute_many(commands)
            return
        with self._client.pipeline(transaction=False) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            pipe.execute()

    def _write_many(self, writes: list[tuple[str, bytes, int]]) -> None:
        """``SET EX`` per session, ``batch_size`` a round trip (pipelined, not a transaction)."""
        prefix = self._prefix
        with _SET:
            for start in range(0, len(writes), self._batch_size):
                commands = [
                    ("SET", prefix + key, payload, "EX", seconds)
                    for key, payload, seconds in writes[start : start + self._batch_size]
                ]
                self._pipelined(commands)

    def _list_many(self, entries: list[tuple[str, str, float]]) -> None:
        """One ``ZADD NX`` per user with all its entries, and the index's expiry pushed past its newest session's end
        as ``create`` does (``NX`` for a new index, then ``GT``), in one round trip."""
        index = self._index
        by_user: dict[str, list[tuple[str, float]]] = {}
        for user_id, session_id, created in entries:
            by_user.setdefault(user_id, []).append((session_id, created))
        commands: list[tuple[Any, ...]] = []
        for user_id, sessions in by_user.items():
            key, expire_at = index.key(user_id), index.expire_at(max(created for _sid, created in sessions))
            members = [part for session_id, created in sessions for part in (created, session_id)]
            commands += [("ZADD", key, "NX", *members), ("EXPIREAT", key, expire_at, "NX")]
            commands.append(("EXPIREAT", key, expire_at, "GT"))
        with _INDEXED:
            self._pipelined(commands)

    def _note_logout(self, user_id: str, at: float, keep: int, what: str) -> None:
        """One sorted set of user id -> logout time, ``"user-sessions:" + prefix``: the index prefix itself, which is
        no user's index (a user id is never empty), so an ACL allowing the index keys allows it; trimmed to the last
        ``keep`` seconds on every write."""
        key = self._logouts_key
        commands = [
            ("ZADD", key, "GT", at, user_id),
            ("ZREMRANGEBYSCORE", key, "-inf", at - keep),
            ("EXPIRE", key, keep),
        ]
        with redis_call(what):
            self._pipelined(commands)

    def _logouts(self, user_ids: list[str]) -> list[float | None]:
        with _LOGOUTS:
            scores = self._execute("ZMSCORE", self._logouts_key, *user_ids)
        return [None if score is None else float(score) for score in scores]

    def _remove(self, key: str) -> bool:
        with _UNLINK:
            return bool(self._execute("UNLINK", self._prefix + key))

    def _read_with_ttl(self, key: str) -> tuple[bytes | None, int]:
        full_key = self._prefix + key
        with _TTL:
            if self._mux is not None:
                payload, milliseconds = self._mux.execute_many((("GET", full_key), ("PTTL", full_key)))
            else:
                with self._client.pipeline(transaction=False) as pipe:
                    pipe.execute_command("GET", full_key)
                    pipe.execute_command("PTTL", full_key)
                    payload, milliseconds = pipe.execute()
        milliseconds = int(milliseconds)
        if milliseconds == -2:  # expired between the two commands
            return None, 0
        # Rounded up, as the memory store does: a live session never reports 0 (TTL would round 0.4 s down to 0, and
        # PTTL reads 0 in the millisecond before the key expires).
        return payload, -1 if milliseconds < 0 else max(1, -(-milliseconds // 1000))

    def _read_and_expire(self, key: str, seconds: int) -> bytes | None:
        with _GETEX:
            return self._execute("GETEX", self._prefix + key, "EX", seconds)  # type: ignore[no-any-return]

    def _expire(self, key: str, seconds: int) -> None:
        with _EXPIRE:
            self._execute("EXPIRE", self._prefix + key, seconds)

    def _read_many(self, keys: list[str]) -> list[bytes | None]:
        """One ``MGET`` (in a cluster, one per slot, pipelined). MGET reads a key of another type as missing."""
        full_keys = [self._prefix + key for key in keys]
        with _MGET:
            if self._cluster:
                return self._client.mget_nonatomic(full_keys)  # type: ignore[union-attr]
            return self._execute("MGET", *full_keys)  # type: ignore[no-any-return]

    def _remove_many(self, keys: list[str]) -> int:
        """UNLINK in batches of ``batch_size`` keys, one round trip each (bounded work per command on the server).

        If a batch fails, the error is raised and earlier batches stay deleted: no count is reported for a partial run.
        """
        full_keys = [self._prefix + key for key in keys]
        removed = 0
        with _UNLINK:
            for start in range(0, len(full_keys), self._batch_size):
                batch = full_keys[start : start + self._batch_size]
                # A cluster client's unlink() sends one UNLINK per slot; a plain UNLINK of keys in several slots fails.
                removed += int(self._client.unlink(*batch) if self._cluster else self._execute("UNLINK", *batch))
        return removed

    @contextlib.contextmanager
    def _transaction(self, what: str, key: str, fence: Fence | None = None) -> Iterator[Transaction]:
        """``update`` on the multiplexer: a ``GET``, then a script that writes only if the key still holds what was read
        (:class:`~fmredis.redis_transactions.ComparedSession`). Otherwise ``WATCH`` the key on a pipeline of its own;
        commits are ``MULTI``/``EXEC``, which Redis refuses if anyone wrote the key since the ``WATCH``. A server-side
        script could not run ``update``'s ``fn``, and a lock would leave the session locked if this process died
        holding it."""
        full_key = self._prefix + key
        if what == "update" and self._mux is not None:
            yield ComparedSession(self._mux, full_key, fence, key)
            return
        fence_key = () if fence is None else (fence.fence_key,)
        with redis_call(what), watched(self._client, full_key, *fence_key) as pipe:
            yield WatchedSession(self._index, pipe, key, full_key, fence)

    def _check_fence(self, key: str, fence: Fence) -> None:
        check_fence(fence, self._prefix + key, self._cluster)

    def _fenced(self, key: str, fence: Fence, payload: bytes | None, seconds: int) -> bool:
        full_key = self._prefix + key
        if payload is None:
            return run_fenced(self._execute, fence, key, full_key, "delete") == 1
        return run_fenced(self._execute, fence, key, full_key, "set", payload, seconds) == 1

    def _new_id(self, user_id: str) -> str:
        return self._index.session_id_for(user_id, super()._new_id(user_id))

    def _successor_id(self, session_id: str) -> str:
        return self._index.session_id_beside(session_id, super()._successor_id(session_id))

    def _insert(self, session_id: str, payload: bytes, seconds: int, user_id: str, created: float) -> int | None:
        with redis_call("create"):
            return self._index.insert(session_id, payload, seconds, user_id, created)

    def _trim_user(self, user_id: str, keep: int, spare: str) -> list[str]:
        with redis_call("create"):
            return self._index.trim(user_id, keep, spare)

    def _user_sessions(self, user_id: str) -> list[str]:
        with redis_call("sessions_for_user"):
            return self._index.live(user_id)

    def _remove_user(self, user_id: str) -> int:
        with redis_call("delete_user_sessions"):
            return self._index.unlink_all(user_id, self._update_attempts, conflict_pause)

    def _keep_index(self, user_id: str, seconds: int) -> None:
        expire_at = self._index.keep_alive_due(user_id, seconds)  # no round trip: most writes stop here
        if expire_at is not None:
            with _EXPIREAT:
                self._index.push_expiry(user_id, expire_at)


def _release(client: RedisClient) -> None:
    """Close the idle connections of every pool of ``client`` (a cluster client's: one per node). Not
    ``client.close()``: on a client that owns its pool (Sentinel's ``master_for``) that also cuts the connections
    other threads are using, and redis-py reconnects them silently, dropping a ``WATCH`` they held."""
    if isinstance(client, RedisCluster):
        for node in client.get_nodes():  # type: ignore[no-untyped-call]
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect(inuse_connections=False)
    else:
        client.connection_pool.disconnect(inuse_connections=False)


def _multiplexer(client: RedisClient) -> Multiplexer | None:
    """A multiplexer on ``client``'s pool, or ``None`` when it has no pool to borrow from (a stand-in client) or a
    pool of one connection (holding it would leave none for ``update``'s ``WATCH``)."""
    pool = getattr(client, "connection_pool", None)
    if not callable(getattr(pool, "get_connection", None)) or not isinstance(
        getattr(pool, "connection_kwargs", None), dict
    ):
        return None
    if getattr(pool, "max_connections", 2) < 2:
        return None
    return Multiplexer.of(pool)


def _decodes(client: Any) -> bool:
    """Whether ``client`` was built with ``decode_responses=True`` (a stand-in without an encoder does not)."""
    try:
        return bool(client.get_encoder().decode_responses)
    except AttributeError:
        return False
