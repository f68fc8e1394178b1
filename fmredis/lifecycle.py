"""What every store does the same way for session lifecycle: new ids and documents, updates, and the event log."""

from __future__ import annotations

import hashlib
import logging
import secrets
from typing import Any

from fmredis.counters import CORRUPTIONS, CREATED, DELETED_FOR_USER, StoreCounters
from fmredis.errors import SerializationError, SessionExpired
from fmredis.serialization import utc_now
from fmredis.store import SessionUpdate

__all__ = [
    "PROTECTED_FIELDS",
    "apply_update",
    "events",
    "expired",
    "new_session_document",
    "new_session_id",
    "owner_of",
    "report_corrupt",
    "report_created",
    "report_regenerated",
    "session_ref",
]

#: Application events (created, regenerated, deleted for a user, lifetime reached, corrupt data): INFO/WARNING
#: records with structured ``extra`` and never a payload. Route or silence them by this logger's name.
events = logging.getLogger("fmredis.events")

#: Fields ``update`` keeps as stored: a lifetime cap counts from ``created_at``, and the user index from ``user_id``.
PROTECTED_FIELDS = ("created_at", "user_id")


def new_session_id() -> str:
    """43 URL-safe characters from :func:`secrets.token_urlsafe`: 256 bits, so ids can be neither guessed nor hit
    twice."""
    return secrets.token_urlsafe(32)


def session_ref(session_id: str) -> str:
    """What logs and messages show instead of a session id (which is a bearer credential): the first 16 hex digits of
    its SHA-256.

    Stable, so an application can compute the same reference to find a session's records.
    """
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def owner_of(session: dict[str, Any]) -> str | None:
    """The session's ``user_id`` if it is a non-empty ``str`` (so the session belongs in that user's index)."""
    owner = session.get("user_id")
    return owner if isinstance(owner, str) and owner else None


def new_session_document(user_id: str, data: object) -> dict[str, Any]:
    """``data`` plus ``user_id``, ``created_at`` and ``last_activity`` (now), as :meth:`ISessionStore.create` stores it.

    Raises :class:`SerializationError` if ``data`` is not a dict, and ``ValueError`` if it names another user.
    """
    if not isinstance(data, dict):
        raise SerializationError(f"a session must be a dict, not {type(data).__name__}")
    if data.get("user_id", user_id) != user_id:
        raise ValueError("data['user_id'] differs from the user_id the session is created for")
    now = utc_now()
    return {**data, "user_id": user_id, "created_at": now, "last_activity": now}


def apply_update(current: dict[str, Any], fn: SessionUpdate) -> dict[str, Any]:
    """``fn(current)`` checked and stamped for writing: a dict, protected fields unchanged, ``last_activity`` now.

    ``current`` must be the caller's own copy (``fn`` may change it in place). Raises :class:`SerializationError` or
    ``ValueError`` naming the problem; whatever ``fn`` raises propagates.
    """
    kept = {name: current[name] for name in PROTECTED_FIELDS if name in current}
    updated = fn(current)
    if not isinstance(updated, dict):
        raise SerializationError(f"update function returned {type(updated).__name__}, not a dict")
    for name, value in kept.items():
        if updated.get(name) != value:
            raise ValueError(f"update function changed or removed {name!r}, which update keeps as stored")
    return {**updated, "last_activity": utc_now()}


def expired(session_id: str) -> SessionExpired:
    """Log that a session was removed at its lifetime cap; returns the error a write that found it so raises."""
    ref = session_ref(session_id)
    events.info("Session reached its lifetime cap; removed", extra={"session_id": ref, "ttl": 0})
    return SessionExpired(
        f"Session {ref} has passed its lifetime (created_at plus max_lifetime) and was removed instead of written."
    )


def report_corrupt(counters: StoreCounters, session_id: str, reason: object) -> None:
    """Count and log stored data that is not a session (it reads as missing)."""
    counters.tick[CORRUPTIONS]()
    ref = session_ref(session_id)
    events.warning("Corrupt session data (session %s: %s); read as missing", ref, reason, extra={"session_id": ref})


def report_created(
    counters: StoreCounters, session_id: str, user_id: str, ttl: int, evicted: int, cap: int | None
) -> None:
    """Count and log a session made by ``create``, and the sessions the per-user cap removed for it."""
    counters.tick[CREATED]()
    events.info("Session created", extra={"session_id": session_ref(session_id), "user_id": user_id, "ttl": ttl})
    if evicted:
        counters.add(DELETED_FOR_USER, evicted)
        events.info(
            "Per-user session cap reached: removed the user's oldest sessions",
            extra={"user_id": user_id, "removed": evicted, "cap": cap},
        )


def report_regenerated(counters: StoreCounters, old_id: str, new_id: str, user_id: str | None, ttl: int) -> None:
    """Count and log a session moved to a new id by ``regenerate``."""
    counters.tick[CREATED]()
    events.info(
        "Session regenerated",
        extra={
            "session_id": session_ref(new_id),
            "previous_session_id": session_ref(old_id),
            "user_id": user_id,
            "ttl": ttl,
        },
    )
