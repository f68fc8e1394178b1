"""The client factory: ``redis.Redis`` on a thread-safe blocking pool, with hiredis parsing and no per-call logging."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, TypeAlias

import orjson
import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import (
    BlockingConnectionPool,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.exceptions import MaxConnectionsError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection, SentinelManagedSSLConnection

from fmredis.config import ConfigManager, RedisSettings, resolve_settings
from fmredis.redis_errors import RedisCall, redis_call

__all__ = ["RedisClient", "build_connection_pool", "create_redis_client", "diagnostics"]

#: What :func:`create_redis_client` returns: ``redis.Redis`` (standalone, sentinel) or ``RedisCluster`` (cluster).
RedisClient: TypeAlias = redis.Redis | RedisCluster

logger = logging.getLogger(__name__)


def _retry(settings: RedisSettings) -> Retry:
    return Retry(
        ExponentialWithJitterBackoff(cap=settings.retry_backoff_cap, base=settings.retry_backoff_base),
        settings.retry_attempts,
    )


def _connection_kwargs(settings: RedisSettings) -> dict[str, Any]:
    """What every connection to a data node carries: credentials, timeouts, retry, RESP version, TLS."""
    kwargs: dict[str, Any] = {
        "username": settings.username,
        "password": settings.password,
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.socket_connect_timeout,
        "health_check_interval": settings.health_check_interval,
        "client_name": settings.client_name,
        "protocol": settings.protocol,
        # redis-py retries ConnectionError and TimeoutError (its defaults) on the same connection after reconnecting;
        # a command that fails on a stale pooled socket thus succeeds once without surfacing an error.
        "retry": _retry(settings),
    }
    if settings.unix_socket_path is None:
        kwargs["socket_keepalive"] = True
    if settings.ssl:
        kwargs.update(
            ssl_ca_certs=settings.ssl_ca_certs,
            ssl_certfile=settings.ssl_certfile,
            ssl_keyfile=settings.ssl_keyfile,
            ssl_cert_reqs=settings.ssl_cert_reqs,
        )
    return kwargs


def build_connection_pool(settings: RedisSettings) -> BlockingConnectionPool:
    """A ``BlockingConnectionPool`` carrying every connection-level setting (timeouts, keepalive, retry, TLS), for
    standalone mode.

    They live on the pool because a ``redis.Redis`` handed ``connection_pool=`` ignores its own retry and timeout
    arguments. Creating the pool opens no connection.
    """
    if settings.mode != "standalone":
        raise ValueError(f"build_connection_pool() is for standalone mode, not {settings.mode}")
    kwargs = _connection_kwargs(settings)
    kwargs["db"] = settings.db
    connection_class: type[Connection] | type[UnixDomainSocketConnection]
    if settings.unix_socket_path is not None:
        connection_class = UnixDomainSocketConnection
        kwargs["path"] = settings.unix_socket_path
    else:
        connection_class = SSLConnection if settings.ssl else Connection
        kwargs.update(host=settings.host, port=settings.port)
    return BlockingConnectionPool(  # type: ignore[no-untyped-call]  # redis-py leaves the pool's __init__ untyped
        connection_class=connection_class,
        max_connections=settings.max_connections,
        timeout=settings.pool_timeout,
        **kwargs,
    )


class BlockingSentinelConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool (asks the sentinels for the master, drops connections to a demoted one) with the
    blocking pool's bound: at most ``max_connections``, and callers beyond it wait up to ``timeout`` seconds.

    redis-py has no such class: ``SentinelConnectionPool`` derives from the unbounded ``ConnectionPool``. The method
    resolution order puts the Sentinel logic first and the blocking queue under it; both call ``super()``.
    """

    def release(self, connection: Any) -> None:
        # BlockingConnectionPool.release drops a connection the pool does not own (one to a demoted master, or one
        # that never found a master) without forgetting it: it would stay in _connections for good, one per failed
        # call during an outage.
        if connection.pid == self.pid and not self.owns_connection(connection):  # type: ignore[no-untyped-call]
            with self._lock:
                if connection in self._connections:
                    self._connections.remove(connection)
        super().release(connection)  # type: ignore[no-untyped-call]


class BlockingClusterNodePool(BlockingConnectionPool):
    """A cluster node's blocking pool that reports a full pool the way RedisCluster recognises it.

    ``BlockingConnectionPool`` raises a plain ``ConnectionError("No connection available.")`` after ``timeout``;
    RedisCluster takes any ConnectionError for a dead node (it drops the node's connections, re-reads the topology and
    retries), and handles only ``MaxConnectionsError`` as "too busy".
    """

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except redis.ConnectionError as exc:
            if str(exc) != "No connection available.":
                raise
            raise MaxConnectionsError(
                f"no connection free within {self.timeout} s (pool of {self.max_connections})"
            ) from exc


class _FollowingConnection(SentinelManagedConnection):
    """A Sentinel connection that asks for the master on every (re)connect.

    redis-py 8.1 reconnects a dropped connection inside ``send_packed_command`` through ``connect_check_health``,
    which skips ``SentinelManagedConnection.connect`` and so the sentinels: after a failover, the retry of a command
    that met the demoted master reconnected to the same old address and failed again.
    """

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if not self._sock and self.connection_pool.is_master and retry_socket_connect:
            # connect_to() (redis-py's own path) passes retry_socket_connect=False with the address just looked up.
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)


class _FollowingSSLConnection(_FollowingConnection, SentinelManagedSSLConnection):
    pass


def _sentinel_client(settings: RedisSettings) -> redis.Redis:
    sentinel_kwargs: dict[str, Any] = {
        "username": settings.sentinel_username,
        "password": settings.sentinel_password,
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.socket_connect_timeout,
        "protocol": settings.protocol,
        # Without it each sentinel client gets redis-py's default retry (3 retries, backoff up to 10 s): a sentinel
        # that refuses connections, or a wrong sentinel password, would stall every master lookup for many seconds.
        "retry": _retry(settings),
    }
    # redis-py leaves Sentinel untyped.
    sentinel = Sentinel(list(settings.nodes), sentinel_kwargs=sentinel_kwargs, **_connection_kwargs(settings))  # type: ignore[no-untyped-call]
    return sentinel.master_for(  # type: ignore[no-untyped-call,no-any-return]
        settings.sentinel_master,
        connection_pool_class=BlockingSentinelConnectionPool,
        max_connections=settings.max_connections,
        timeout=settings.pool_timeout,
        db=settings.db,
        connection_class=_FollowingSSLConnection if settings.ssl else _FollowingConnection,
    )


def _cluster_client(settings: RedisSettings) -> RedisCluster:
    kwargs = _connection_kwargs(settings)
    # The cluster client retries (re-reading the topology between attempts) with this; its node clients do not retry.
    # Without it redis-py's default of 10 retries would hold a call on a frozen node for 11 socket timeouts.
    retry = kwargs.pop("retry")
    (host, port), *others = settings.nodes
    # The first node goes in as a URL on purpose: only on that path does RedisCluster build its node pools with
    # connection_pool_class (redis-py 8.1), and a BlockingConnectionPool makes threads beyond max_connections wait
    # up to pool_timeout instead of failing with MaxConnectionsError.
    seed = f"{'rediss' if settings.ssl else 'redis'}://{f'[{host}]' if ':' in host else host}:{port}"
    # RedisCluster reads the topology from the nodes when it is created: an outage is StoreUnavailable, a refused login
    # StoreError, as for every other call.
    with RedisCall(f"cluster discovery at {settings.address}"):
        return RedisCluster(
            url=seed,
            startup_nodes=[ClusterNode(h, p) for h, p in others],  # type: ignore[no-untyped-call]
            connection_pool_class=BlockingClusterNodePool,
            max_connections=settings.max_connections,
            timeout=settings.pool_timeout,
            retry=retry,
            **kwargs,
        )


def create_redis_client(
    settings: RedisSettings | None = None,
    *,
    url: str | None = None,
    config_manager: ConfigManager | None = None,
    environ: Mapping[str, str] | None = None,
    **explicit: object,
) -> RedisClient:
    """A client for the configured deployment, built from resolved settings.

    Pass ready ``settings``, or let the factory resolve them from ``explicit`` keyword arguments, ``url`` /
    ``REDIS_URL``, ``config_manager``, ``REDIS_*`` variables and defaults (see :mod:`fmredis.config`). By ``mode``:

    - standalone: ``redis.Redis`` on a ``BlockingConnectionPool``;
    - sentinel: ``redis.Redis`` from ``Sentinel.master_for`` on a :class:`BlockingSentinelConnectionPool`: it asks the
      sentinels for the master before connecting and follows a failover (connections to a demoted master are closed);
    - cluster: ``redis.cluster.RedisCluster`` (a pool of ``max_connections`` per node; it retries on topology changes).

    The client returns bytes (``decode_responses=False``) and is safe to share between threads; more threads than
    ``max_connections`` (per node in a cluster) wait up to ``pool_timeout`` for a connection. Standalone and sentinel
    clients connect lazily on their first command; a cluster client reads the topology when it is created and raises
    :class:`~fmredis.errors.StoreUnavailable` if no node answers. It stays usable in a child after ``os.fork()``.
    Logs one INFO line, without credentials.
    """
    if settings is None:
        settings = resolve_settings(url=url, config_manager=config_manager, environ=environ, **explicit)
    elif url is not None or config_manager is not None or environ is not None or explicit:
        raise TypeError("create_redis_client() takes either settings or resolution arguments, not both")
    client: RedisClient
    if settings.mode == "sentinel":
        client = _sentinel_client(settings)
    elif settings.mode == "cluster":
        client = _cluster_client(settings)
    else:
        client = redis.Redis(connection_pool=build_connection_pool(settings))
    address_field = {"sentinel": "sentinels", "cluster": "cluster_nodes"}.get(settings.mode, "host")
    logger.info(
        "Redis client for %s (%s, pool of %d, address from %s)",
        settings.address,
        settings.mode,
        settings.max_connections,
        settings.source_of("unix_socket_path" if settings.unix_socket_path else address_field),
    )
    return client


def diagnostics(client: RedisClient) -> dict[str, Any]:
    """What the client really uses: mode and topology, parser class of a pooled connection, library versions, pool
    settings, TLS, server version.

    Sends INFO, then borrows one pooled connection (connected by then) to read its parser; a Sentinel client also asks
    the sentinels for the master, a cluster client reports the nodes it knows. Raises
    :class:`~fmredis.errors.StoreUnavailable` when the server cannot be reached (and
    :class:`~fmredis.errors.StoreError` when it refuses), like the stores. No credential is included.
    """
    with redis_call("diagnostics"):
        return _diagnostics(client)


def _diagnostics(client: RedisClient) -> dict[str, Any]:
    if isinstance(client, RedisCluster):
        nodes = client.get_nodes()  # type: ignore[no-untyped-call]
        node = client.get_default_node().redis_connection  # type: ignore[no-untyped-call]
        report = _node_report(node)
        report["mode"] = "cluster"
        report["topology"] = {"nodes": sorted(f"{n.host}:{n.port} {n.server_type}" for n in nodes)}
        return report
    report = _node_report(client)
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        host, port = pool.get_master_address()  # type: ignore[no-untyped-call]
        report["mode"] = "sentinel"
        report["topology"] = {
            "service": pool.service_name,
            "master": f"{host}:{port}",
            "sentinels": [
                f"{s.connection_pool.connection_kwargs.get('host')}:{s.connection_pool.connection_kwargs.get('port')}"
                for s in pool.sentinel_manager.sentinels
            ],
        }
        report["pool"]["address"] = f"{host}:{port}"
    else:
        report["mode"] = "standalone"
        report["topology"] = {"address": report["pool"]["address"]}
    return report


def _node_report(client: redis.Redis) -> dict[str, Any]:
    pool = client.connection_pool
    # INFO first, on its own connection: holding one while asking for another could wait on a pool of one.
    server_version = client.info("server").get("redis_version")
    connection = pool.get_connection()
    try:
        parser = type(connection._parser)  # redis-py keeps the parser it chose per connection here
    finally:
        pool.release(connection)
    hiredis_version: str | None
    try:
        import hiredis

        hiredis_version = getattr(hiredis, "__version__", "unknown")
    except ImportError:
        hiredis_version = None
    connection_kwargs = pool.connection_kwargs
    tls = isinstance(connection, SSLConnection)
    return {
        "parser": f"{parser.__module__}.{parser.__qualname__}",
        "hiredis_parser": parser.__name__ == "_HiredisParser",
        "tls": tls,
        "versions": {
            "redis-py": redis.__version__,
            "hiredis": hiredis_version,
            "orjson": orjson.__version__,
            "redis-server": server_version,
        },
        "pool": {
            "class": type(pool).__name__,
            "connection_class": pool.connection_class.__name__,
            "max_connections": pool.max_connections,
            "timeout": getattr(pool, "timeout", None),
            "socket_timeout": connection_kwargs.get("socket_timeout"),
            "socket_connect_timeout": connection_kwargs.get("socket_connect_timeout"),
            "health_check_interval": connection_kwargs.get("health_check_interval"),
            "retries": connection.retry.get_retries(),
            "protocol": connection_kwargs.get("protocol"),
            "address": (
                f"unix:{connection_kwargs['path']}"
                if "path" in connection_kwargs
                else f"{connection_kwargs.get('host')}:{connection_kwargs.get('port')}"
            ),
            "db": connection_kwargs.get("db"),
            "tls": tls,
        },
    }
