"""The "before": a re-creation of the comprehensive external-service client that fmredis's design replaced.

Every Redis call goes through ``BaseExternalClient.call_external``, which treats Redis as an external service: a circuit
breaker, per-method retry/timeout policies, and six structured JSON log records per call (service boundary inbound,
operation started, a duration metric, service boundary outbound, a success event, operation completed). Inside a
request scope the boundary and start/completed records are written once per operation name, so the first call of an
operation in a request logs 6 records and later ones 2. Benchmark code only: it is not part of the fmredis package.
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import redis

__all__ = [
    "BaseExternalClient",
    "CircuitBreaker",
    "CircuitOpenError",
    "JsonFormatter",
    "RedisClient",
    "production_logging",
    "request_scope",
]

LOGGER_NAME = "faultmaven.infrastructure.external"


@dataclass
class RequestContext:
    correlation_id: str
    logged_operations: set[str] = field(default_factory=set)


_request: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("request", default=None)


@contextmanager
def request_scope(correlation_id: str | None = None) -> Iterator[RequestContext]:
    """One HTTP request: a correlation id on every record, and per-operation de-duplication of boundary records."""
    context = RequestContext(correlation_id or uuid.uuid4().hex)
    token = _request.set(context)
    try:
        yield context
    finally:
        _request.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, logger, level, message, correlation id, the record's structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        context = _request.get()
        document: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "logger": record.name,
            "level": record.levelname,
            "message": record.getMessage(),
            "correlation_id": context.correlation_id if context else None,
            "module": record.module,
            "function": record.funcName,
            "line": record.lineno,
            "thread": record.threadName,
        }
        document.update(getattr(record, "fields", {}))
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


class RecordCounter(logging.Filter):
    """Counts the records a handler writes (a filter that lets everything through)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        self.count += 1
        return True


@contextmanager
def production_logging(path: str, *, stderr: bool = False) -> Iterator[RecordCounter]:
    """The old service's logging, process-wide on the root logger while the block runs: INFO, JSON lines to a real
    file (and to stderr when asked). Yields a counter of the records written to the file."""
    root = logging.getLogger()
    previous_level = root.level
    counter = RecordCounter()
    handlers: list[logging.Handler] = [logging.FileHandler(path, encoding="utf-8")]
    if stderr:
        handlers.append(logging.StreamHandler())
    for handler in handlers:
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    handlers[0].addFilter(counter)
    root.setLevel(logging.INFO)
    try:
        yield counter
    finally:
        root.setLevel(previous_level)
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()


class CircuitOpenError(ConnectionError):
    """The breaker is open: the call was refused without reaching Redis."""


class CircuitBreaker:
    """closed -> open after ``failure_threshold`` consecutive failures; open -> half-open after ``recovery_timeout``;
    half-open lets one call through, closing on success and re-opening on failure."""

    def __init__(self, failure_threshold: int = 5, recovery_timeout: float = 60.0) -> None:
        self.failure_threshold = failure_threshold
        self.recovery_timeout = recovery_timeout
        self.state = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            if self.state == "open" and time.monotonic() - self._opened_at >= self.recovery_timeout:
                self.state = "half-open"
                return True
            return self.state == "closed"

    def record_success(self) -> None:
        with self._lock:
            self._failures, self.state = 0, "closed"

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self.state == "half-open" or self._failures >= self.failure_threshold:
                self.state, self._opened_at = "open", time.monotonic()


@dataclass(frozen=True)
class CallPolicy:
    timeout: float
    retries: int
    base_delay: float


def _describe_payload(args: tuple[Any, ...]) -> dict[str, Any]:
    described: dict[str, Any] = {"arg_count": len(args), "types": [type(a).__name__ for a in args]}
    described["size"] = sum(len(a) if isinstance(a, (str, bytes)) else len(repr(a)) for a in args)
    described["keys"] = [a if isinstance(a, str) else None for a in args[:1]]
    return described


class BaseExternalClient:
    """Wraps every call to an external service with breaker, retries and comprehensive structured logging."""

    RETRYABLE: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError)

    def __init__(
        self,
        client_name: str,
        service_name: str,
        *,
        enable_circuit_breaker: bool = True,
        policies: dict[str, CallPolicy] | None = None,
        default_policy: CallPolicy = CallPolicy(timeout=5.0, retries=2, base_delay=1.0),
    ) -> None:
        self.client_name = client_name
        self.service_name = service_name
        self.breaker = CircuitBreaker() if enable_circuit_breaker else None
        self.policies = policies or {}
        self.default_policy = default_policy
        self.logger = logging.getLogger(LOGGER_NAME)

    def _log(self, level: int, message: str, **fields: Any) -> None:
        self.logger.log(level, message, extra={"fields": fields}, stacklevel=2)

    def call_external(self, operation: str, fn: Callable[..., Any], *args: Any) -> Any:
        context = _request.get()
        first = context is None or operation not in context.logged_operations
        if context is not None:
            context.logged_operations.add(operation)
        policy = self.policies.get(operation, self.default_policy)
        started = time.time()
        if first:
            self._log(
                logging.INFO,
                f"Service boundary inbound: {self.service_name}.{operation}",
                boundary="inbound",
                service=self.service_name,
                operation=operation,
                payload=_describe_payload(args),
            )
            self._log(
                logging.INFO,
                f"Operation started: {operation}",
                operation=operation,
                start_time=started,
                client=self.client_name,
                service=self.service_name,
                timeout=policy.timeout,
                max_retries=policy.retries,
            )
        if self.breaker is not None and not self.breaker.allow():
            self._log(logging.ERROR, f"Circuit open for {self.service_name}", operation=operation)
            raise CircuitOpenError(f"circuit open for {self.service_name}")
        attempt = 0
        while True:
            attempt += 1
            begin = time.perf_counter()
            try:
                result = fn(*args)
                break
            except self.RETRYABLE as exc:
                if self.breaker is not None:
                    self.breaker.record_failure()
                self._log(logging.WARNING, f"External call failed: {operation}", attempt=attempt, error=repr(exc))
                if attempt > policy.retries:
                    raise
                time.sleep(policy.base_delay * 2 ** (attempt - 1))
        duration = time.perf_counter() - begin
        if self.breaker is not None:
            self.breaker.record_success()
        self._log(
            logging.INFO,
            "metric external_call_duration",
            metric="external_call_duration",
            value=duration,
            unit="seconds",
            tags={"service": self.service_name, "operation": operation, "client": self.client_name, "status": "ok"},
        )
        if first:
            self._log(
                logging.INFO,
                f"Service boundary outbound: {self.service_name}.{operation}",
                boundary="outbound",
                success=True,
                duration=duration,
                attempts=attempt,
            )
        self._log(
            logging.INFO,
            "event technical.external_call_success",
            event="technical.external_call_success",
            operation=operation,
            service=self.service_name,
            duration=duration,
        )
        if first:
            self._log(
                logging.WARNING if duration > 1.0 else logging.INFO,
                f"Operation completed: {operation}",
                operation=operation,
                duration=duration,
                end_time=time.time(),
            )
        return result


_FAST = CallPolicy(timeout=3.0, retries=1, base_delay=1.0)
_STANDARD = CallPolicy(timeout=5.0, retries=2, base_delay=1.0)


class RedisClient(BaseExternalClient):
    """The old session client: Redis as an external service, every call through ``call_external``."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(
            "redis_client",
            "Redis",
            enable_circuit_breaker=True,
            policies={
                "redis_get": _STANDARD,
                "redis_set": _STANDARD,
                "redis_delete": _STANDARD,
                "redis_exists": _FAST,
                "redis_expire": _FAST,
                "redis_ttl": _FAST,
            },
        )
        self.redis = client

    def get(self, key: str) -> bytes | None:
        return self.call_external("redis_get", self.redis.get, key)  # type: ignore[no-any-return]

    def set(self, key: str, value: str | bytes, ttl: int) -> bool:
        return bool(self.call_external("redis_set", self.redis.set, key, value, ttl))

    def delete(self, key: str) -> int:
        return int(self.call_external("redis_delete", self.redis.delete, key))

    def exists(self, key: str) -> bool:
        return bool(self.call_external("redis_exists", self.redis.exists, key))

    def expire(self, key: str, ttl: int) -> bool:
        return bool(self.call_external("redis_expire", self.redis.expire, key, ttl))

    def ttl(self, key: str) -> int:
        return int(self.call_external("redis_ttl", self.redis.ttl, key))
