"""The client factory: ``redis.Redis`` on a thread-safe blocking pool, with hiredis parsing and no per-call logging."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.connection import (
    BlockingConnectionPool,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.retry import Retry

from fmredis.config import ConfigManager, RedisSettings, resolve_settings

__all__ = ["build_connection_pool", "create_redis_client", "diagnostics"]

logger = logging.getLogger(__name__)


def build_connection_pool(settings: RedisSettings) -> BlockingConnectionPool:
    """A ``BlockingConnectionPool`` carrying every connection-level setting (timeouts, keepalive, retry, TLS).

    They live on the pool because a ``redis.Redis`` handed ``connection_pool=`` ignores its own retry and timeout
    arguments. Creating the pool opens no connection.
    """
    kwargs: dict[str, Any] = {
        "db": settings.db,
        "username": settings.username,
        "password": settings.password,
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.socket_connect_timeout,
        "health_check_interval": settings.health_check_interval,
        "client_name": settings.client_name,
        "protocol": settings.protocol,
        # redis-py retries ConnectionError and TimeoutError (its defaults) on the same connection after reconnecting;
        # a command that fails on a stale pooled socket thus succeeds once without surfacing an error.
        "retry": Retry(
            ExponentialWithJitterBackoff(cap=settings.retry_backoff_cap, base=settings.retry_backoff_base),
            settings.retry_attempts,
        ),
    }
    connection_class: type[Connection] | type[UnixDomainSocketConnection]
    if settings.unix_socket_path is not None:
        connection_class = UnixDomainSocketConnection
        kwargs["path"] = settings.unix_socket_path
    else:
        connection_class = SSLConnection if settings.ssl else Connection
        kwargs.update(host=settings.host, port=settings.port, socket_keepalive=True)
        if settings.ssl:
            kwargs.update(
                ssl_ca_certs=settings.ssl_ca_certs,
                ssl_certfile=settings.ssl_certfile,
                ssl_keyfile=settings.ssl_keyfile,
                ssl_cert_reqs=settings.ssl_cert_reqs,
            )
    return BlockingConnectionPool(  # type: ignore[no-untyped-call]  # redis-py leaves the pool's __init__ untyped
        connection_class=connection_class,
        max_connections=settings.max_connections,
        timeout=settings.pool_timeout,
        **kwargs,
    )


def create_redis_client(
    settings: RedisSettings | None = None,
    *,
    url: str | None = None,
    config_manager: ConfigManager | None = None,
    environ: Mapping[str, str] | None = None,
    **explicit: object,
) -> redis.Redis:
    """A ``redis.Redis`` backed by a fresh ``BlockingConnectionPool`` built from resolved settings.

    Pass ready ``settings``, or let the factory resolve them from ``explicit`` keyword arguments, ``url`` /
    ``REDIS_URL``, ``config_manager``, ``REDIS_*`` variables and defaults (see :mod:`fmredis.config`). The client
    returns bytes (``decode_responses=False``), connects lazily on its first command, and is safe to share between
    threads; more threads than ``max_connections`` wait up to ``pool_timeout`` for a connection. It stays usable in a
    child after ``os.fork()`` (the pool notices the new pid and opens fresh connections). Logs one INFO line.
    """
    if settings is None:
        settings = resolve_settings(url=url, config_manager=config_manager, environ=environ, **explicit)
    elif url is not None or config_manager is not None or environ is not None or explicit:
        raise TypeError("create_redis_client() takes either settings or resolution arguments, not both")
    client = redis.Redis(connection_pool=build_connection_pool(settings))
    logger.info(
        "Redis client for %s (pool of %d, address from %s)",
        settings.address,
        settings.max_connections,
        settings.source_of("unix_socket_path" if settings.unix_socket_path else "host"),
    )
    return client


def diagnostics(client: redis.Redis) -> dict[str, Any]:
    """What the client really uses: parser class of a pooled connection, library versions, pool settings, server.

    Sends INFO, then borrows one pooled connection (connected by then) to read its parser. Raises redis-py's
    ``ConnectionError`` when the server cannot be reached. No credential is included.
    """
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
    return {
        "parser": f"{parser.__module__}.{parser.__qualname__}",
        "hiredis_parser": parser.__name__ == "_HiredisParser",
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
            "tls": issubclass(pool.connection_class, SSLConnection),
        },
    }
