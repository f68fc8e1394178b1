"""The one place redis-py failures become fmredis errors, scrubbed of session ids, keys and payloads.

Every store call site wraps its redis-py calls in a :class:`RedisCall` (``with redis_call("GET"):``). Inside it,
a redis-py exception becomes:

- :class:`~fmredis.errors.StoreUnavailable` for an outage (connection refused or lost, timeout, exhausted pool, a
  cluster failing over), which the wrappers may retry or serve from memory;
- :class:`~fmredis.errors.StoreError` for everything the server refused (``WRONGTYPE``, ``OOM``, ``NOPERM``,
  ``READONLY``, a bad database, a refused login, an untrusted TLS certificate): waiting would not help;
- the internal ``CorruptSession`` for ``WRONGTYPE`` on a read, when the call site says it reads (such a key reads as
  missing).

The message names the command, redis-py's exception class and the server's reason. The cause is a copy of redis-py's
exception (same class, so ``isinstance`` checks keep working) whose text is scrubbed, with no traceback and no chain:
redis-py's own message may quote the command with its arguments (``Command # 1 (SET session:<id> {...} EX 1800) of
pipeline caused error``, ``unknown command ..., with args beginning with: ...``), and the original exception's frames
hold the payload. Nothing that ``traceback.format_exception`` prints for an fmredis error names a key or a payload.
"""

from __future__ import annotations

import functools
import re
import ssl
from types import TracebackType

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

from fmredis.errors import StoreError, StoreUnavailable
from fmredis.serialization import CorruptSession

__all__ = ["REDIS_ERRORS", "RedisCall", "lost_connection", "redis_call", "server_reason", "translate"]

#: What redis-py raises: its RedisError tree, and a cluster client's RedisClusterException tree (not a RedisError).
REDIS_ERRORS = (RedisError, RedisClusterException)

_MAX_REASON = 300
# A cluster that is failing over a master, or cannot reach any node: an outage the wrappers may wait out.
_CLUSTER_OUTAGES = (ClusterDownError, TryAgainError, SlotNotCoveredError)
_PIPELINE_NOTE = " of pipeline caused error: "
# Where a message starts quoting the command's arguments: everything from there on is cut.
_ECHOES = re.compile(r",? with args beginning with:.*|Invalid args in command:.*|\nCommand:.*", re.DOTALL)


class RedisCall:
    """A reusable, thread-safe context manager that turns redis-py failures raised inside it into fmredis errors.

    ``read``: the command only reads. A ``WRONGTYPE`` reply (a key of another Redis type) then raises
    ``CorruptSession``, so that the store reads the key as missing, and a connection lost while watching wrote
    nothing. Costs two method calls when nothing fails.
    """

    __slots__ = ("command", "read")

    def __init__(self, command: str, *, read: bool = False) -> None:
        self.command = command
        self.read = read

    def __enter__(self) -> RedisCall:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc is None or not isinstance(exc, REDIS_ERRORS):
            return
        if self.read and isinstance(exc, ResponseError) and server_reason(exc).startswith("WRONGTYPE"):
            error: Exception = CorruptSession("not a string key")
            error.__cause__, error.__suppress_context__ = None, True
        else:
            error = translate(self.command, exc, reading=self.read)
        try:
            raise error
        finally:
            error.__context__ = None  # the original still holds the payload, in its message and its frames


@functools.cache
def redis_call(command: str, *, read: bool = False) -> RedisCall:
    """The shared :class:`RedisCall` for ``command`` (one instance per name: nothing is allocated per call)."""
    return RedisCall(command, read=read)


def translate(command: str, exc: BaseException, *, reading: bool = False) -> StoreError:
    """The fmredis error for redis-py's ``exc`` raised by ``command``, its cause set to a scrubbed copy of ``exc``.

    ``reading``: the command writes nothing (a lost connection then cannot leave an unknown outcome)."""
    error = _classify(command, exc, reading)
    error.__cause__ = _scrubbed_copy(exc)
    error.__suppress_context__ = True
    return error


def _classify(command: str, exc: BaseException, reading: bool) -> StoreError:
    kind = type(exc).__name__
    reason = exc.__cause__ or exc.__context__
    if isinstance(exc, WatchError) and lost_connection(exc):
        lost = exc.__context__
        outcome = "nothing was written" if reading else "outcome unknown"
        return StoreUnavailable(
            f"Redis {command} failed, {outcome}: the connection was lost while keys were watched "
            f"({type(lost).__name__}: {server_reason(lost) if lost is not None else ''})"
        )
    # A refused login or an untrusted TLS certificate is a configuration problem, not an outage: no wrapper should
    # retry it or fall back on it.
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
    text = server_reason(exc)
    if isinstance(exc, AuthenticationError) or isinstance(reason, AuthenticationError):
        # (a cluster client reports a refused login as a RedisClusterException caused by it)
        return StoreError(f"Redis {command} failed: {kind}: {text} (check username and password)")
    if isinstance(exc, _CLUSTER_OUTAGES) or _cluster_unreachable(exc, reason):
        return StoreUnavailable(f"Redis {command} failed: {kind}: {text}")
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        # Under TLS 1.3 a server that refuses a client without a certificate often just ends the connection.
        hint = "; if the server requires client certificates, check ssl_certfile" if _ssl_eof(exc) else ""
        return StoreUnavailable(f"Redis {command} failed: {kind}: {text}{hint}")
    return StoreError(f"Redis {command} failed: {kind}: {text}" if text else f"Redis {command} failed: {kind}")


def server_reason(exc: BaseException) -> str:
    """``exc``'s text as the server (or redis-py) gave it, error code first, with any echo of the command's arguments
    cut and at most a few hundred characters."""
    text = str(exc.args[0]) if exc.args else ""
    head, note, tail = text.rpartition(_PIPELINE_NOTE)
    if note and head.startswith("Command # "):  # redis-py put the command, arguments included, before the reason
        text = tail
    code = getattr(exc, "status_code", None)  # redis-py strips known codes (ERR, OOM, NOPERM ...) from the text
    if isinstance(code, str) and code and not text.startswith(code):
        text = f"{code} {text}"
    text = _ECHOES.sub("", text).strip()
    return text if len(text) <= _MAX_REASON else text[:_MAX_REASON] + "..."


def _scrubbed_copy(exc: BaseException) -> BaseException:
    """An exception of ``exc``'s class holding only :func:`server_reason`: no traceback, no cause, no context."""
    cls = type(exc)
    try:
        clean = cls.__new__(cls)  # not __init__: some redis-py errors parse their text there (MovedError)
        BaseException.__init__(clean, server_reason(exc))
        for name in ("error_type", "status_code"):  # what redis-py's __repr__ and callers read
            if hasattr(exc, name):
                setattr(clean, name, getattr(exc, name))
    except Exception:  # an exotic class that cannot be built this way: the base class says enough
        clean = RedisError(server_reason(exc))
    return clean


def lost_connection(exc: WatchError) -> bool:
    """redis-py reports a connection lost while keys are watched (the EXEC reply included) as a ``WatchError`` with the
    real error as its context: that is not a lost race, and whether the ``EXEC`` ran is unknown."""
    return isinstance(exc.__context__, (RedisConnectionError, RedisTimeoutError))


def _cluster_unreachable(exc: BaseException, reason: BaseException | None) -> bool:
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
