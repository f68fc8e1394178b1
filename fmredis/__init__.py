"""fmredis: a synchronous, thread-safe Redis session store with as little per-operation overhead as possible."""

from fmredis.breaker import CircuitBreaker
from fmredis.checks import MAX_KEY_LENGTH
from fmredis.client import RedisClient, build_connection_pool, create_redis_client, diagnostics
from fmredis.config import ConfigManager, RedisSettings, resolve_settings
from fmredis.context_cache import ContextCache
from fmredis.context_values import FrozenDict, FrozenList, thaw
from fmredis.errors import (
    ConfigurationError,
    FencedOut,
    FmRedisError,
    InvalidKeyError,
    InvalidTTLError,
    JournalError,
    LockLost,
    LockTimeout,
    SerializationError,
    SessionExpired,
    SessionNotFound,
    StoreError,
    StoreUnavailable,
    UpdateConflict,
    ValueTooLarge,
)
from fmredis.fallback import FallbackSessionStore
from fmredis.lifecycle import session_ref
from fmredis.lock import HeldLock, RedisLock
from fmredis.memory_store import InMemorySessionStore
from fmredis.redis_store import RedisSessionStore
from fmredis.resilient import ResilientRedisSessionStore
from fmredis.store import ISessionStore
from fmredis.ttl_policy import SessionTTLManager
from fmredis.ttl_rules import TTLRules

__version__ = "0.7.0"

__all__ = [
    "MAX_KEY_LENGTH",
    "CircuitBreaker",
    "ConfigManager",
    "ConfigurationError",
    "ContextCache",
    "FallbackSessionStore",
    "FencedOut",
    "FmRedisError",
    "FrozenDict",
    "FrozenList",
    "HeldLock",
    "ISessionStore",
    "InMemorySessionStore",
    "InvalidKeyError",
    "InvalidTTLError",
    "JournalError",
    "LockLost",
    "LockTimeout",
    "RedisClient",
    "RedisLock",
    "RedisSessionStore",
    "RedisSettings",
    "ResilientRedisSessionStore",
    "SerializationError",
    "SessionExpired",
    "SessionNotFound",
    "SessionTTLManager",
    "StoreError",
    "StoreUnavailable",
    "TTLRules",
    "UpdateConflict",
    "ValueTooLarge",
    "__version__",
    "build_connection_pool",
    "create_redis_client",
    "diagnostics",
    "resolve_settings",
    "session_ref",
    "thaw",
]
