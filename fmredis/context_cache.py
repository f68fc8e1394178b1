"""ContextCache: conversation contexts in Redis, with a local copy per process that Redis keeps coherent.

Reads are served from the process's :class:`~fmredis.local_tier.LocalTier` (a dictionary lookup, no parse, no round
trip) while the :class:`~fmredis.tracking.InvalidationListener` is subscribed to Redis's invalidations of the cache's
keys; a miss is one round trip (the value and its remaining TTL, pipelined, so the local copy never outlives the
Redis key).
``get_or_load`` runs the loader once per process (concurrent callers wait for the same result) and, through a short
lease in Redis, once across processes. ``append``/``history`` keep a bounded conversation history in a Redis list,
one round trip each, cached locally like values. docs/context.md has the guarantees and the figures.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any

import orjson
import redis

from fmredis.checks import check_count, check_key, check_seconds, check_ttl
from fmredis.context_core import CacheCore
from fmredis.context_scripts import APPEND, DELETE, LEASE, RELEASE_LEASE, SET, WRITE_AND_RELEASE
from fmredis.context_values import Codec, FrozenList, freeze
from fmredis.errors import ConfigurationError, InvalidKeyError, StoreUnavailable, ValueTooLarge
from fmredis.local_tier import MISSING, LocalTier
from fmredis.redis_errors import redis_call
from fmredis.redis_scripts import script
from fmredis.tracking import InvalidationListener

__all__ = ["ContextCache"]

_MAX_TTL = 366 * 86_400
_APPEND = script(APPEND)
_WRITE_AND_RELEASE, _RELEASE_LEASE = script(WRITE_AND_RELEASE), script(RELEASE_LEASE)
_SET_SCRIPT, _DELETE_SCRIPT, _LEASE_SCRIPT = script(SET), script(DELETE), script(LEASE)
_GET, _SET, _DEL = redis_call("cache get", read=True), redis_call("cache set"), redis_call("cache delete")
_LEASE, _HIST, _APP = redis_call("cache lease"), redis_call("cache history", read=True), redis_call("cache append")
_MIN_PING, _MIN_LEASE = 0.01, 0.001
_caches: weakref.WeakSet[ContextCache] = weakref.WeakSet()


class _Flight:
    """One load in progress in this process: the callers that asked meanwhile wait for its result."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class ContextCache(CacheCore):
    """JSON values and conversation histories under ``namespace`` in Redis, with a per-process local tier.

    ``client``: a redis-py ``Redis`` (standalone or Sentinel, RESP2, as :func:`~fmredis.create_redis_client` makes;
    Redis 6.0 or later). ``ttl``: seconds a value lives (and a history after its last append). ``local_max_bytes``:
    what the local tier may hold, counted as the values' JSON sizes (Python objects take a few times more); a value
    over a quarter of it is never kept locally. Thread-safe; one instance per process and namespace is enough.
    """

    def __init__(
        self,
        client: Any,
        namespace: str = "ctx",
        ttl: int = 3600,
        local_max_bytes: int = 64 * 1024 * 1024,
        *,
        max_value_bytes: int = 16 * 1024 * 1024,
        compression: str | None = "zstd",
        compress_above: int = 16 * 1024,
        lease: float = 10.0,
        stale_ttl: int = 0,
        ping_interval: float = 1.0,
        start_wait: float = 1.0,
    ) -> None:
        if not isinstance(client, redis.Redis):
            raise ConfigurationError(
                f"client must be a redis-py Redis (standalone or Sentinel), not {type(client).__name__}; "
                "a cluster's invalidations come from each node and are not supported yet",
                key="client",
            )
        pool = client.connection_pool
        kwargs = getattr(pool, "connection_kwargs", {})
        if kwargs.get("protocol") not in (None, 2, "2"):
            raise ConfigurationError("ContextCache needs a RESP2 client (protocol=2)", key="protocol")
        if kwargs.get("decode_responses"):
            raise ConfigurationError("ContextCache needs a client with decode_responses=False", key="decode_responses")
        if not isinstance(namespace, str) or not namespace or any(c.isspace() or c in "{}:" for c in namespace):
            # (a ':' would let namespaces alias each other: "a" with key "v:x" is "a:v" with key "x")
            raise ConfigurationError(
                f"namespace must be a non-empty str without spaces, braces or ':' ({namespace!r})", key="namespace"
            )
        self.namespace = namespace
        seconds = check_ttl(ttl, _MAX_TTL)
        self.stale_ttl = 0 if stale_ttl == 0 else check_ttl(stale_ttl, _MAX_TTL)
        local_max = check_count("local_max_bytes", local_max_bytes)
        codec = Codec(
            compression=compression,
            compress_above=check_count("compress_above", compress_above) or 0,
            max_bytes=check_count("max_value_bytes", max_value_bytes) or 0,
        )
        self.lease = check_seconds("lease", lease, positive=True)
        if self.lease < _MIN_LEASE:  # Redis takes it in whole milliseconds
            raise ConfigurationError(f"lease must be at least {_MIN_LEASE} s (got {lease!r})", key="lease")
        ping = check_seconds("ping_interval", ping_interval, positive=True)
        if ping < _MIN_PING:
            raise ConfigurationError(
                f"ping_interval must be at least {_MIN_PING} s (got {ping_interval!r})", key="ping_interval"
            )
        super().__init__(client, LocalTier(local_max or 0, (local_max or 0) // 4), codec, seconds)
        self._values, self._leases = f"{namespace}:v:", f"{namespace}:l:"
        self._hist, self._hist_bytes = f"{namespace}:h:", f"{namespace}:hb:"
        self._flights: dict[str, _Flight] = {}
        self._waiters: dict[str, threading.Event] = {}
        _caches.add(self)
        self._listener = InvalidationListener(
            pool,
            (self._values, self._hist, self._leases),
            self._tier,
            weakref.WeakMethod(self._wake),  # the listener must not keep a dropped cache alive
            ping_interval=ping,
        )
        # A cache dropped without close() still stops its thread and gives its connection back.
        weakref.finalize(self, self._listener.stop, False)
        self._listener.start(check_seconds("start_wait", start_wait))

    def __repr__(self) -> str:
        return f"ContextCache(namespace={self.namespace!r}, ttl={self.ttl}, tracking={self._tier.serving})"

    # -- values ------------------------------------------------------------------------------------------------------

    def get(self, key: str) -> Any:
        """The value under ``key`` (read-only: :class:`~fmredis.FrozenDict`/``FrozenList`` for objects/arrays), or
        ``None``. From the local tier when it holds it; else one round trip (``StoreUnavailable`` if Redis cannot be
        reached and no unexpired local copy exists)."""
        name = self._values + _checked(key, "cache key")
        value = self._tier.get(name)
        if value is not MISSING:
            return value
        value, fresh = self._fetch(name)
        return value if fresh else None

    def set(self, key: str, value: Any, ttl: int | None = None) -> None:
        """Store ``value`` (JSON data) for ``ttl`` seconds (default: the cache's). ``SerializationError`` or
        ``ValueTooLarge`` before anything is sent; this process's copy is dropped at once, others' by Redis."""
        name = self._values + _checked(key, "cache key")
        ttl_ms = self._ttl_ms(ttl)
        stored, _ = self.codec.encode(value, "cache value")
        args = (stored, ttl_ms + self.stale_ttl * 1000)
        self._write(name, _SET, lambda: _SET_SCRIPT(self._client, (name, self._leases + key), args))

    def delete(self, key: str) -> bool:
        """Remove ``key``; whether it existed."""
        name = self._values + _checked(key, "cache key")
        deleted = self._write(name, _DEL, lambda: _DELETE_SCRIPT(self._client, (name, self._leases + key), ()))
        return bool(deleted)

    def get_or_load(self, key: str, loader: Callable[[], Any], ttl: int | None = None) -> Any:
        """The value under ``key``; if there is none, ``loader()``'s result, stored for ``ttl`` seconds.

        In this process concurrent callers for one key run ``loader`` once and all get its result (or its exception).
        Across processes a lease of ``lease`` seconds lets one load while the others wait for its write (woken by
        the invalidation), or, with ``stale_ttl``, return the expired value meanwhile. A waiter whose loader has not
        written within ``lease`` seconds loads itself.
        """
        name = self._values + _checked(key, "cache key")
        if not callable(loader):
            raise TypeError(f"loader must be callable, not {type(loader).__name__}")
        ttl_ms = self._ttl_ms(ttl)
        value = self._tier.get(name)
        if value is not MISSING:
            return value
        with self._mutex:
            flight = self._flights.get(name)
            leader = flight is None
            if flight is None:
                flight = self._flights[name] = _Flight()
        if not leader:
            flight.done.wait()
            if flight.error is None:
                return flight.value
            if isinstance(flight.error, Exception):
                raise flight.error  # as concurrent.futures does: every waiter gets the loader's exception
            return self.get_or_load(key, loader, ttl)  # the leader was interrupted: load again
        try:
            flight.value = self._load(name, key, loader, ttl_ms)
            return flight.value
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._mutex:
                del self._flights[name]
            flight.done.set()

    def _load(self, name: str, key: str, loader: Callable[[], Any], ttl_ms: int) -> Any:
        value, fresh = self._fetch(name)
        if fresh:
            return value
        lease, token = self._leases + key, secrets.token_hex(8)
        deadline = time.monotonic() + self.lease
        wake = threading.Event()
        pause, force = 0.01, False
        while True:
            with _LEASE:
                answer = _LEASE_SCRIPT(
                    self._client, (lease, name), (token, int(self.lease * 1000), self.stale_ttl * 1000, int(force))
                )
            if answer == 2:  # written since this caller's read
                value, fresh = self._fetch(name)
                if fresh:
                    return value
                force = True  # fresh in Redis but not readable here (corrupt, over max_value_bytes): load over it
                continue
            leased = answer == 1
            if leased or time.monotonic() >= deadline:
                return self._run_loader(name, lease, token, leased, loader, ttl_ms)
            if value is not None:  # stale, and someone else is loading: serve the stale copy meanwhile
                self._count("stale_served")
                return value
            self._count("load_waits")
            with self._mutex:
                self._waiters[name] = self._waiters[lease] = wake
            try:
                wake.wait(min(pause, max(deadline - time.monotonic(), 0)))  # woken by the write (or the lease's end)
            finally:
                with self._mutex:
                    self._waiters.pop(name, None)
                    self._waiters.pop(lease, None)
                wake.clear()
            pause = min(pause * 2, 0.25)  # the wake-up is the norm; this is for a missed one
            value, fresh = self._fetch(name)
            if fresh:
                return value

    def _run_loader(
        self, name: str, lease: str, token: str, leased: bool, loader: Callable[[], Any], ttl_ms: int
    ) -> Any:
        """Run ``loader`` and write its value, unless a write or delete came meanwhile (the lease is then not ours)."""
        self._count("loads")
        try:
            loaded = loader()
            stored, payload = self.codec.encode(loaded, "loaded value")
        except BaseException:
            if leased:
                try:
                    with _LEASE:
                        _RELEASE_LEASE(self._client, (lease,), (token,))
                except StoreUnavailable:
                    pass  # the lease ends by itself
            raise
        args = (stored, ttl_ms + self.stale_ttl * 1000, token, self.stale_ttl * 1000)
        self._write(name, _SET, lambda: _WRITE_AND_RELEASE(self._client, (name, lease), args))
        return freeze(orjson.loads(payload))

    def _fetch(self, name: str) -> tuple[Any, bool]:
        """``(value, fresh)`` read from Redis (``(None, False)`` if missing or unreadable), filling the local tier
        when fresh."""
        return self._read_through(name, _GET, (("GET", name), ("PTTL", name)), self._decode_value, self.stale_ttl)

    def _decode_value(self, replies: list[Any]) -> tuple[Any, int] | None:
        return None if replies[0] is None or replies[1] == -2 else self.codec.decode(replies[0])

    # -- conversation history ----------------------------------------------------------------------------------------

    def append(
        self, conversation_id: str, message: Any, max_messages: int | None = None, max_bytes: int | None = None
    ) -> int:
        """Append ``message`` (JSON data) to the conversation's history and drop its oldest messages until at most
        ``max_messages`` remain and they take at most ``max_bytes`` stored bytes; restart its TTL (``ttl`` seconds
        after the last append). One round trip; returns how many messages are kept."""
        cid = _checked(conversation_id, "conversation_id")
        keep = check_count("max_messages", max_messages, optional=True)
        bound = check_count("max_bytes", max_bytes, optional=True)
        stored, _ = self.codec.encode(message, "message")
        nonce = secrets.token_hex(8)  # a re-sent call (redis-py retries after a lost reply) appends nothing
        if bound is not None and len(stored) > bound:
            raise ValueTooLarge(f"message takes {len(stored)} bytes stored; max_bytes is {bound}")
        name = self._hist + "{" + cid + "}"
        keys, args = (name, self._hist_bytes + "{" + cid + "}"), (stored, keep or 0, bound or 0, self.ttl * 1000, nonce)
        kept = self._write(name, _APP, lambda: _APPEND(self._client, keys, args))
        return int(kept[0])

    def history(self, conversation_id: str, last: int | None = None) -> FrozenList:
        """The conversation's messages, oldest first (the ``last`` ones only, if given); empty if it has none. From
        the local tier when it holds them, else one round trip."""
        cid = _checked(conversation_id, "conversation_id")
        count = check_count("last", last, optional=True)
        name = self._hist + "{" + cid + "}"
        messages = self._tier.get(name)
        if messages is MISSING:
            messages = self._fetch_history(name)
        return FrozenList(messages[-count:] if count is not None else messages)

    def delete_history(self, conversation_id: str) -> bool:
        """Remove the conversation's history; whether it had one."""
        cid = _checked(conversation_id, "conversation_id")
        name = self._hist + "{" + cid + "}"
        names = (name, self._hist_bytes + "{" + cid + "}")
        deleted = self._write(name, _DEL, lambda: self._client.execute_command("DEL", *names))
        return bool(deleted)

    def _fetch_history(self, name: str) -> FrozenList:
        commands = (("LRANGE", name, 0, -1), ("PTTL", name))
        messages, _ = self._read_through(name, _HIST, commands, self._decode_history, 0)
        return FrozenList() if messages is None else messages

    def _decode_history(self, replies: list[Any]) -> tuple[Any, int] | None:
        if replies[1] == -2:
            return None
        decoded = [self.codec.decode(stored) for stored in replies[0]]
        return FrozenList([value for value, _ in decoded]), sum(size for _, size in decoded)

    # -- the rest ----------------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters since the cache was built: local ``hits``/``misses``, ``loads`` (loader calls), ``load_waits``,
        ``stale_served``, ``fallback_reads`` (local copies served because Redis could not be reached), ``evictions``,
        ``expirations``, ``invalidations``, ``flushes``, ``unreadable``; and now: ``local_entries``, ``local_bytes``,
        ``tracking`` (whether the listener is subscribed: local copies are served only then)."""
        entries, size = self._tier.sizes()
        with self._mutex:
            counts = dict(self._counts)
        return {
            **self._tier.counts,
            **counts,
            "local_entries": entries,
            "local_bytes": size,
            "tracking": self._tier.serving,
            "subscriptions": self._listener.subscriptions,
        }

    def close(self) -> None:
        """Stop the listener (its connection goes back to the pool) and empty the local tier; reads and writes go on
        working, each one a round trip."""
        self._listener.stop()
        self._tier.flush()

    def __enter__(self) -> ContextCache:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _forked(self) -> None:
        # In a child only the forking thread exists: loads and waits of the parent's other threads never finish here.
        self._core_forked()
        self._flights.clear()
        self._waiters.clear()

    def _wake(self, names: list[str] | None) -> None:
        """(Listener thread.) Wake the loads waiting for ``names`` (``None``: all)."""
        with self._mutex:
            wakes = list(self._waiters.values()) if names is None else [self._waiters.get(n) for n in names]
        for wake in wakes:
            if wake is not None:
                wake.set()

    def _ttl_ms(self, ttl: int | None) -> int:
        return (self.ttl if ttl is None else check_ttl(ttl, _MAX_TTL)) * 1000


def _checked(key: object, what: str) -> str:
    try:
        return check_key(key)
    except InvalidKeyError as exc:
        raise InvalidKeyError(str(exc).replace("session key", what, 1)) from None


def _after_fork_in_child() -> None:
    for cache in list(_caches):
        cache._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)
