"""fmredis: a synchronous, thread-safe Redis session store with as little per-operation overhead as possible."""

from fmredis.breaker import CircuitBreaker
from fmredis.client import RedisClient, build_connection_pool, create_redis_client, diagnostics
from fmredis.config import ConfigManager, RedisSettings, resolve_settings
from fmredis.errors import (
    ConfigurationError,
    FmRedisError,
    InvalidKeyError,
    InvalidTTLError,
    SerializationError,
    SessionNotFound,
    StoreError,
    StoreUnavailable,
    UpdateConflict,
)
from fmredis.fallback import FallbackSessionStore
from fmredis.lifecycle import session_ref
from fmredis.memory_store import InMemorySessionStore
from fmredis.redis_store import RedisSessionStore
from fmredis.resilient import ResilientRedisSessionStore
from fmredis.store import MAX_KEY_LENGTH, ISessionStore
from fmredis.ttl_policy import SessionTTLManager

__version__ = "0.1.0"

__all__ = [
    "MAX_KEY_LENGTH",
    "CircuitBreaker",
    "ConfigManager",
    "ConfigurationError",
    "FallbackSessionStore",
    "FmRedisError",
    "ISessionStore",
    "InMemorySessionStore",
    "InvalidKeyError",
    "InvalidTTLError",
    "RedisClient",
    "RedisSessionStore",
    "RedisSettings",
    "ResilientRedisSessionStore",
    "SerializationError",
    "SessionNotFound",
    "SessionTTLManager",
    "StoreError",
    "StoreUnavailable",
    "UpdateConflict",
    "__version__",
    "build_connection_pool",
    "create_redis_client",
    "diagnostics",
    "resolve_settings",
    "session_ref",
]
