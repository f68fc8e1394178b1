"""RedisSessionStore: sessions as orjson bytes under ``prefix + key`` with ``SET ... EX``; nothing logged per call."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import redis
from redis.cluster import RedisCluster
from redis.exceptions import (
    AuthenticationError,
    ClusterDownError,
    RedisClusterException,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
    WatchError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import MasterNotFoundError

from fmredis.client import RedisClient, create_redis_client
from fmredis.counters import CONFLICTS, CORRUPTIONS, DELETED_FOR_USER, HITS, MISSES, OPS, StoreCounters
from fmredis.errors import SessionNotFound, StoreError, StoreUnavailable, UpdateConflict
from fmredis.lifecycle import (
    apply_update,
    conflict_pause,
    events,
    lifetime_reached,
    new_session_document,
    new_session_id,
    report_created,
    report_regenerated,
    session_ref,
)
from fmredis.redis_index import RedisUserIndex, lost_connection
from fmredis.serialization import (
    CorruptSession,
    decode_session,
    encode_for_write,
    encode_session,
    parse_utc,
    utc_now,
)
from fmredis.store import ISessionStore, SessionUpdate, TTLDefaults, check_key, check_keys, check_user_id
from fmredis.ttl_policy import SessionTTLManager

__all__ = ["RedisSessionStore"]

T = TypeVar("T")


#: What redis-py raises: its RedisError tree, and a cluster client's RedisClusterException tree (not a RedisError).
REDIS_ERRORS = (RedisError, RedisClusterException)
_MAX_DETAIL = 400
# A cluster that is failing over a master, or cannot reach any node: an outage the wrappers may wait out.
_CLUSTER_OUTAGES = (ClusterDownError, TryAgainError, SlotNotCoveredError)


def _failure(command: str, exc: Exception) -> StoreError:
    """The fmredis error for a redis-py failure; a server error shows only its type and code (its text may echo
    data)."""
    # A refused login or an untrusted TLS certificate is a configuration problem, not an outage: no wrapper should
    # retry it or fall back on it.
    reason = exc.__cause__ or exc.__context__
    if isinstance(reason, ssl.SSLCertVerificationError):
        return StoreError(
            f"Redis {command} failed: the server's TLS certificate was not accepted ({reason.verify_message}); "
            "check ssl_ca_certs and ssl_cert_reqs"
        )
    if isinstance(reason, ssl.SSLError) and reason.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED":
        return StoreError(
            f"Redis {command} failed: the server requires a TLS client certificate; check ssl_certfile and ssl_keyfile"
        )
    if isinstance(exc, MasterNotFoundError) and "AuthenticationError" in str(exc):
        return StoreError(
            f"Redis {command} failed: AuthenticationError: the sentinels refused the login; "
            "check sentinel_username and sentinel_password"
        )
    if isinstance(exc, _CLUSTER_OUTAGES) or _cluster_unreachable(exc, reason):
        return StoreUnavailable(f"Redis {command} failed: {type(exc).__name__}: {exc}")
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)) and not isinstance(exc, AuthenticationError):
        # Under TLS 1.3 a server that refuses a client without a certificate often just ends the connection.
        hint = "; if the server requires client certificates, check ssl_certfile" if _ssl_eof(exc) else ""
        text = str(exc)
        if len(text) > _MAX_DETAIL:  # a failed Sentinel lookup lists every sentinel's error, redis-py reprs included
            text = text[:_MAX_DETAIL] + "..."
        return StoreUnavailable(f"Redis {command} failed: {type(exc).__name__}: {text}{hint}")
    code = str(exc).split(" ", 1)[0]
    detail = f" {code}" if isinstance(exc, ResponseError) and code.isupper() else ""
    return StoreError(f"Redis {command} failed: {type(exc).__name__}{detail}")


def _outcome_unknown(command: str, exc: WatchError) -> StoreError:
    """For a WatchError that hides a lost connection: whether the EXEC ran is unknown, so it must not be retried."""
    if lost_connection(exc):
        return StoreUnavailable(f"Redis {command} failed, outcome unknown: {exc.__context__}")
    return StoreError(f"Redis {command} failed: {type(exc).__name__}")


def _cluster_unreachable(exc: Exception, reason: BaseException | None) -> bool:
    """A cluster client that cannot reach its nodes, or re-read the topology after a connection error (as during a
    failover), raises a bare RedisClusterException: an outage, not a bad request."""
    if type(exc) is not RedisClusterException:
        return False
    text = str(exc)
    return (
        isinstance(reason, (RedisConnectionError, RedisTimeoutError))
        or "cannot be connected" in text
        or "slots" in text
    )


def _ssl_eof(exc: BaseException) -> bool:
    return isinstance(exc.__cause__ or exc.__context__, ssl.SSLEOFError) or "EOF occurred in violation" in str(exc)


def _is_wrong_type(exc: ResponseError) -> bool:
    return str(exc).startswith("WRONGTYPE")


class RedisSessionStore(TTLDefaults, ISessionStore):
    """Sessions in Redis: one string key per session holding its orjson document, with a TTL.

    ``client`` defaults to :func:`~fmredis.client.create_redis_client` (settings from the environment); the store then
    owns it and :meth:`close` releases its pool (``owns_client=True`` does the same for a client passed in). A client
    given here must return bytes (``decode_responses=False``). Needs Redis >= 7.0.

    Round trips: one per call for get/set/delete/exists/extend_ttl/ttl/get_many and for a refreshing get or touch
    (``GETEX``; a second one only when the refresh is cut short by the lifetime cap); ``delete_many`` one per
    ``batch_size`` keys; ``update`` three per attempt (``WATCH``/``GET``, then ``MULTI``...``EXEC``); the user-index
    calls two to four. All methods are thread-safe.

    Failures raise :class:`~fmredis.errors.StoreUnavailable` (unreachable, timed out) or
    :class:`~fmredis.errors.StoreError`, with redis-py's exception as the cause. Corrupt data (not a JSON object, or a
    key of another Redis type) reads as missing and logs one warning with the session's reference, never the payload.

    Lifecycle: ``ttl_policy`` (a :class:`~fmredis.ttl_policy.SessionTTLManager`) picks the TTL of writes given none;
    ``max_lifetime`` caps sessions that have ``created_at``; ``update`` retries a lost race up to ``update_attempts``
    times with jittered backoff. The per-user index lives under ``"user-sessions:" + prefix + user_id``. With
    ``max_sessions_per_user``, a create that takes a user past the cap removes that user's oldest sessions (a new
    login logs out the oldest device) and logs it. ``counters=False`` turns the :meth:`stats` counters off.
    """

    def __init__(
        self,
        client: RedisClient | None = None,
        *,
        prefix: str = "session:",
        default_ttl: int = 1800,
        max_ttl: int = 86_400,
        ttl_policy: SessionTTLManager | None = None,
        max_lifetime: int = 86_400,
        max_sessions_per_user: int | None = None,
        update_attempts: int = 64,
        batch_size: int = 1000,
        counters: bool = True,
        owns_client: bool | None = None,
    ) -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        self._init_ttls(default_ttl, max_ttl, ttl_policy, max_lifetime)
        for name, value in (("batch_size", batch_size), ("update_attempts", update_attempts)):
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be an int of at least 1 (got {value!r})")
        if max_sessions_per_user is not None and (type(max_sessions_per_user) is not int or max_sessions_per_user < 1):
            raise ValueError(f"max_sessions_per_user must be None or an int >= 1 (got {max_sessions_per_user!r})")
        self._owns_client = client is None if owns_client is None else owns_client
        self._client = create_redis_client() if client is None else client
        # Bound once: redis-py's typed wrappers (get, set ...) only rebuild the same argument tuple, and skipping them
        # keeps the store within a few percent of raw redis-py.
        self._execute: Callable[..., Any] = self._client.execute_command
        self._prefix = prefix
        self._batch_size = batch_size
        self._update_attempts = update_attempts
        self._max_per_user = max_sessions_per_user
        self._counters = counted = StoreCounters(enabled=counters)
        self._op, self._hit, self._miss = counted.tick[OPS], counted.tick[HITS], counted.tick[MISSES]
        # A cluster client splits multi-key commands by slot only through its typed methods (mget_nonatomic, unlink).
        self._cluster = isinstance(self._client, RedisCluster)
        self._index = RedisUserIndex(
            self._client,
            index_prefix="user-sessions:" + prefix,
            session_prefix=prefix,
            max_lifetime=max_lifetime,
            max_ttl=max_ttl,
            cluster=self._cluster,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(prefix={self._prefix!r}, default_ttl={self._default_ttl}, max_ttl={self._max_ttl})"
        )

    @property
    def client(self) -> RedisClient:
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
            if isinstance(self._client, redis.Redis):  # a cluster client's close() disconnects its node pools
                self._client.connection_pool.disconnect(inuse_connections=False)

    def stats(self) -> dict[str, int]:
        return self._counters.snapshot()

    def _corrupt(self, key: str, reason: object) -> None:
        self._counters.tick[CORRUPTIONS]()
        ref = session_ref(key)
        events.warning("Corrupt session data (session %s: %s); read as missing", ref, reason, extra={"session_id": ref})

    def _read(self, execute: Callable[..., Any], command: str, full_key: str, key: str, *args: object) -> Any:
        """The reply to a reading ``command``; a key of another Redis type reads as missing, with a warning.

        (``get`` does the same inline: it is the hot path.)"""
        try:
            return execute(command, full_key, *args)
        except WatchError:
            raise  # a connection lost while watching: the caller's retry loop decides
        except ResponseError as exc:
            if not _is_wrong_type(exc):
                raise _failure(command, exc) from exc
            self._corrupt(key, "not a string key")
            return None
        except REDIS_ERRORS as exc:
            raise _failure(command, exc) from exc

    def _decode(self, key: str, payload: bytes | None) -> dict[str, Any] | None:
        if payload is None:
            return None
        try:
            return decode_session(payload)
        except CorruptSession as exc:
            self._corrupt(key, exc)
            return None

    # --- ISessionStore: the hot path -------------------------------------------------------------------------------

    def get(self, key: str, *, refresh: bool = False) -> dict[str, Any] | None:
        if refresh:
            return self._refresh(key, self._touch_ttl(None))
        full_key = self._prefix + check_key(key)
        try:
            payload = self._execute("GET", full_key)
        except ResponseError as exc:
            if _is_wrong_type(exc):
                self._op()
                self._miss()
                self._corrupt(key, "not a string key")
                return None
            raise _failure("GET", exc) from exc
        except REDIS_ERRORS as exc:
            raise _failure("GET", exc) from exc
        if payload is None:
            self._op()
            self._miss()
            return None
        try:
            session = decode_session(payload)
        except CorruptSession as exc:
            self._op()
            self._miss()
            self._corrupt(key, exc)
            return None
        self._op()
        self._hit()
        return session

    def set(self, key: str, value: dict[str, Any], ttl: int | None = None) -> None:
        """See :meth:`ISessionStore.set`."""
        full_key = self._prefix + check_key(key)
        payload = encode_for_write(value)
        seconds = self._write_ttl(ttl, value)
        try:
            if seconds:
                self._execute("SET", full_key, payload, "EX", seconds)
            else:
                self._execute("UNLINK", full_key)
        except REDIS_ERRORS as exc:
            raise _failure("SET", exc) from exc
        self._op()
        if not seconds:
            raise lifetime_reached(key)

    def delete(self, key: str) -> bool:
        full_key = self._prefix + check_key(key)
        try:
            removed = bool(self._execute("UNLINK", full_key))
        except REDIS_ERRORS as exc:
            raise _failure("UNLINK", exc) from exc
        self._op()
        return removed

    def exists(self, key: str) -> bool:
        full_key = self._prefix + check_key(key)
        try:
            found = bool(self._execute("EXISTS", full_key))
        except REDIS_ERRORS as exc:
            raise _failure("EXISTS", exc) from exc
        self._op()
        return found

    def extend_ttl(self, key: str, ttl: int | None = None) -> bool:
        """See :meth:`ISessionStore.extend_ttl`: one ``GETEX`` like :meth:`touch` (the document is read to find its
        lifetime cap), with ``ttl`` or the default rather than the policy's TTL."""
        return self._refresh(key, self._ttl_or_default(ttl)) is not None

    def ttl(self, key: str) -> int | None:
        full_key = self._prefix + check_key(key)
        try:
            seconds = int(self._execute("TTL", full_key))
        except REDIS_ERRORS as exc:
            raise _failure("TTL", exc) from exc
        self._op()
        return None if seconds == -2 else seconds

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """One MGET for all keys. A key of another Redis type reads as missing without a warning (MGET hides it)."""
        checked = check_keys(keys)
        if not checked:
            return {}
        prefix = self._prefix
        try:
            if isinstance(self._client, RedisCluster):  # one MGET per slot, pipelined
                payloads = self._client.mget_nonatomic([prefix + key for key in checked])
            else:
                payloads = self._execute("MGET", *[prefix + key for key in checked])
        except REDIS_ERRORS as exc:
            raise _failure("MGET", exc) from exc
        found: dict[str, dict[str, Any]] = {}
        for key, payload in zip(checked, payloads, strict=True):
            session = self._decode(key, payload)
            if session is not None:
                found[key] = session
        self._op()
        self._counters.add(HITS, len(found))
        self._counters.add(MISSES, len(checked) - len(found))
        return found

    def delete_many(self, keys: Iterable[str]) -> int:
        """UNLINK in batches of ``batch_size`` keys, one round trip each (bounded work per command on the server).

        If a batch fails, the error is raised and earlier batches stay deleted: the count is never reported for a
        partial run.
        """
        full_keys = [self._prefix + key for key in check_keys(keys)]
        if not full_keys:
            return 0
        removed = 0
        for start in range(0, len(full_keys), self._batch_size):
            try:
                batch = full_keys[start : start + self._batch_size]
                # A cluster client's unlink() sends one UNLINK per slot; a plain UNLINK of keys in several slots fails.
                removed += int(self._client.unlink(*batch) if self._cluster else self._execute("UNLINK", *batch))
            except REDIS_ERRORS as exc:
                raise _failure("UNLINK", exc) from exc
        self._op()
        return removed

    # --- sliding expiry ----------------------------------------------------------------------------------------------

    def touch(self, key: str, ttl: int | None = None) -> bool:
        """See :meth:`ISessionStore.touch`: one ``GETEX`` (the document is read to find its lifetime cap)."""
        return self._refresh(key, self._touch_ttl(ttl)) is not None

    def _refresh(self, key: str, seconds: int) -> dict[str, Any] | None:
        """GETEX: read the session and restart its expiry at ``seconds``, cut to its lifetime cap."""
        full_key = self._prefix + check_key(key)
        session = self._decode(key, self._read(self._execute, "GETEX", full_key, key, "EX", seconds))
        if session is not None:
            left = self._lifetime_left(session)
            if left is not None and left < seconds:
                session = self._cap(full_key, key, session, left)
        self._op()
        (self._miss if session is None else self._hit)()
        return session

    def _cap(self, full_key: str, key: str, session: dict[str, Any], left: float) -> dict[str, Any] | None:
        """Pull the expiry just refreshed back to the lifetime cap, or remove a session already past it."""
        try:
            if left >= 1:
                self._execute("EXPIRE", full_key, int(left))
                return session
            self._execute("UNLINK", full_key)
        except REDIS_ERRORS as exc:
            raise _failure("EXPIRE", exc) from exc
        lifetime_reached(key)
        return None

    # --- atomic read-modify-write ------------------------------------------------------------------------------------

    def update(self, key: str, fn: SessionUpdate, ttl: int | None = None) -> dict[str, Any]:
        """See :meth:`ISessionStore.update`.

        Optimistic: ``WATCH`` the key, read it, run ``fn`` here, then write in ``MULTI``/``EXEC``, which Redis refuses
        if anyone wrote the key since the ``WATCH``; then retry after a short jittered pause. A server-side script
        could not run ``fn``, and a lock would leave the session locked if this process died holding it.
        """
        full_key = self._prefix + check_key(key)
        if ttl is not None:
            self._ttl_or_default(ttl)  # bad input raises before anything is read

        def attempt(pipe: Any) -> tuple[bytes, int]:
            updated = apply_update(self._watched_session(pipe, full_key, key), fn)
            payload, seconds = encode_session(updated), self._write_ttl(ttl, updated)
            pipe.multi()
            if seconds:
                pipe.execute_command("SET", full_key, payload, "EX", seconds)
            else:
                pipe.execute_command("UNLINK", full_key)
            pipe.execute()
            return payload, seconds

        payload, seconds = self._optimistic("update", full_key, key, attempt)
        if not seconds:
            raise lifetime_reached(key)
        return decode_session(payload)  # as a read returns it (datetimes as text, tuples as lists)

    def _optimistic(self, what: str, full_key: str, key: str, attempt: Callable[[Any], T]) -> T:
        """``attempt(pipe)`` with ``full_key`` watched, until it gets through ``EXEC`` or the attempts run out."""
        for number in range(self._update_attempts):
            try:
                with self._transaction() as pipe:
                    pipe.watch(full_key)
                    result = attempt(pipe)
            except WatchError as exc:
                if lost_connection(exc):  # EXEC may or may not have run: retrying could apply it twice
                    raise _outcome_unknown(what, exc) from exc
                self._counters.tick[CONFLICTS]()
                if number + 1 < self._update_attempts:
                    conflict_pause(number)
                continue
            except REDIS_ERRORS as exc:
                raise _failure(what, exc) from exc
            self._op()
            self._hit()
            return result
        raise UpdateConflict(
            f"{what} of session {session_ref(key)} lost to other writers {self._update_attempts} times; not applied"
        )

    def _transaction(self) -> Any:
        """A MULTI/EXEC pipeline (typed ``Any``: redis-py's ``watch`` and ``execute_command`` are untyped)."""
        return self._client.pipeline(transaction=True)

    def _watched_session(self, pipe: Any, full_key: str, key: str) -> dict[str, Any]:
        session = self._decode(key, self._read(pipe.execute_command, "GET", full_key, key))
        if session is None:
            self._op()
            self._miss()
            raise SessionNotFound(f"no session {session_ref(key)}")
        return session

    # --- creation and the per-user index -----------------------------------------------------------------------------

    def create(self, user_id: str, data: dict[str, Any], ttl: int | None = None) -> str:
        """See :meth:`ISessionStore.create`: the index entry and ``SET ... NX`` in one ``MULTI``/``EXEC``."""
        user_id = check_user_id(user_id)
        session = new_session_document(user_id, data)
        payload = encode_session(session)
        seconds = max(1, self._write_ttl(ttl, session))  # new: only a max_lifetime under 1 s could make it 0
        created = session["created_at"].timestamp()
        try:
            for _attempt in range(3):  # a collision of 256-bit random ids does not happen; NX proves it each time
                session_id = self._index.session_id_for(user_id, new_session_id())
                with self._transaction() as pipe:
                    # Watched only so that a connection lost around the EXEC surfaces (as a WatchError) instead of
                    # redis-py re-sending the whole MULTI, whose SET NX would then fail against its own first write.
                    pipe.watch(self._prefix + session_id)
                    pipe.multi()
                    self._index.queue_add(pipe, user_id, session_id, created)
                    pipe.execute_command("SET", self._prefix + session_id, payload, "EX", seconds, "NX")
                    pipe.execute_command("ZCARD", self._index.key(user_id))
                    *_, written, count = pipe.execute()
                if written:
                    break
                self._index.remove(user_id, [session_id])  # the id is someone else's session: not this user's
            else:
                raise StoreError("could not find an unused session id in 3 attempts")
            cap = self._max_per_user
            evicted = self._index.trim(user_id, cap) if cap is not None and count > cap else []
        except WatchError as exc:
            raise _outcome_unknown("create", exc) from exc
        except REDIS_ERRORS as exc:
            raise _failure("create", exc) from exc
        self._op()
        report_created(self._counters, session_id, user_id, seconds, len(evicted), cap)
        return session_id

    def regenerate(self, session_id: str) -> str:
        """See :meth:`ISessionStore.regenerate`: ``WATCH`` the old key, then ``SET NX`` the new one and ``UNLINK`` the
        old one in one ``MULTI``/``EXEC`` (retried like :meth:`update` if the old session changes meanwhile)."""
        old_key = self._prefix + check_key(session_id)

        def attempt(pipe: Any) -> tuple[str, str | None, int, bool]:
            session = self._watched_session(pipe, old_key, session_id)
            session["last_activity"] = now = utc_now()
            seconds = self._write_ttl(None, session)
            new_id = self._index.session_id_beside(old_key, new_session_id())
            owner = session.get("user_id")
            user_id = owner if isinstance(owner, str) and owner else None
            created = (parse_utc(session.get("created_at")) or now).timestamp()
            # One MULTI moves session and index entry, unless (in a cluster) the index is in another slot: a session
            # made by create() never is; one written with set() may be, and its index is then moved after the EXEC.
            atomic_index = user_id is not None and self._index.same_slot(new_id, user_id)
            pipe.multi()
            if seconds:
                pipe.execute_command("SET", self._prefix + new_id, encode_session(session), "EX", seconds, "NX")
            pipe.execute_command("UNLINK", old_key)
            if user_id is not None and atomic_index:
                if seconds:
                    self._index.queue_add(pipe, user_id, new_id, created)
                pipe.execute_command("ZREM", self._index.key(user_id), session_id)
            replies = pipe.execute()
            written = bool(seconds) and bool(replies[0])
            if user_id is not None and not atomic_index:
                if written:
                    self._index.add(user_id, new_id, created)
                self._index.remove(user_id, [session_id])
            elif seconds and not written and user_id is not None:  # 256 random bits collided: unlist the other one
                self._index.remove(user_id, [new_id])
            return new_id, user_id, seconds, written

        new_id, user_id, seconds, written = self._optimistic("regenerate", old_key, session_id, attempt)
        if not seconds:
            raise lifetime_reached(session_id)
        if not written:
            raise StoreError("session id collision on regenerate; the old session is removed")
        report_regenerated(self._counters, session_id, new_id, user_id, seconds)
        return new_id

    def sessions_for_user(self, user_id: str) -> list[str]:
        """See :meth:`ISessionStore.sessions_for_user`; prunes entries of gone sessions on the way."""
        user_id = check_user_id(user_id)
        try:
            live = self._index.live(user_id)
        except REDIS_ERRORS as exc:
            raise _failure("sessions_for_user", exc) from exc
        self._op()
        return [session_id for session_id, _created in live]

    def delete_user_sessions(self, user_id: str) -> int:
        user_id = check_user_id(user_id)
        try:
            removed = self._index.unlink_all(user_id, self._update_attempts, conflict_pause)
        except WatchError as exc:
            raise _outcome_unknown("delete_user_sessions", exc) from exc
        except REDIS_ERRORS as exc:
            raise _failure("delete_user_sessions", exc) from exc
        self._op()
        self._counters.add(DELETED_FOR_USER, removed)
        events.info("Sessions deleted for user", extra={"user_id": user_id, "removed": removed})
        return removed
