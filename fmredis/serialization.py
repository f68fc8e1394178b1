"""Session documents to bytes and back with orjson: strict JSON objects, no silent changes of value."""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime, timezone
from typing import Any

import orjson

from fmredis.errors import SerializationError

__all__ = ["CorruptSession", "decode_session", "encode_json", "encode_session", "parse_utc", "stamped", "utc_now"]

_NULL = b"null"


class CorruptSession(Exception):
    """Stored data that is not a JSON object (or, in Redis, a key of another type). Internal: the store core turns it
    into a miss plus one warning."""


def utc_now() -> datetime:
    """The current time, timezone-aware UTC, for a ``last_activity`` stamp.

    Stores put the datetime itself in the document: orjson writes it as ISO-8601 (``2026-11-26T09:13:14.123456+00:00``,
    the same text as ``isoformat()``) in native code, about 2.5 us less per ``set`` than ``isoformat()`` here.
    """
    return datetime.now(timezone.utc)


def parse_utc(value: object) -> datetime | None:
    """A stored timestamp as an aware UTC datetime, or ``None`` if it is absent or not ISO-8601.

    Accepts what stores write (``isoformat()`` text), a trailing ``Z`` (``fromisoformat`` takes it only from Python
    3.11), naive text or datetimes (taken as UTC) and aware datetimes.
    """
    if isinstance(value, str):
        text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is timezone.utc:  # what fromisoformat gives for "+00:00": skip astimezone, the costly part
        return value
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:  # year 1 or 9999 shifted past datetime's range: as unusable as malformed text
        return None


def _has_non_finite(value: Any) -> bool:
    """Whether a NaN or infinity hides anywhere in ``value``, dataclass fields included.

    An explicit stack with exact-type dispatch: about 3x faster than recursion with isinstance on large documents.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str or kind is int or kind is bool or item is None:
            continue
        if kind is float:
            if not math.isfinite(item):
                return True
        elif kind is dict:
            stack.extend(item.values())
        elif kind is list or kind is tuple:
            stack.extend(item)
        elif isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            stack.extend(getattr(item, f.name) for f in dataclasses.fields(item))
    return False


def encode_session(value: Any) -> bytes:
    """Serialize a session dict; raises :class:`SerializationError` (a ``TypeError``) naming the problem.

    Accepted: a ``dict`` with ``str`` keys whose values are JSON types (str, 64-bit int, finite float, bool, None,
    list/tuple, dict), plus what orjson serializes natively (datetime, date, UUID, enum, dataclass), which read back as
    their JSON form. Rejected: other objects, sets, bytes, non-str keys, NaN and infinities (orjson would write them
    as ``null``, silently changing the value).
    """
    if not isinstance(value, dict):
        raise SerializationError(f"a session must be a dict, not {type(value).__name__}")
    return encode_json(value, "session")


def encode_json(value: Any, what: str) -> bytes:
    """Serialize any JSON value with orjson, with :func:`encode_session`'s rules (``what`` names it in errors).

    The error has no cause: orjson's exception, in its frames, holds the value."""
    try:
        payload = orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise SerializationError(f"{what} is not JSON-serializable: {exc}") from None
    # A NaN or infinity can only hide behind a "null" in the output: scan the document only then (rarely), so the
    # common case pays one C-speed bytes search instead of a Python walk.
    if _NULL in payload and _has_non_finite(value):
        raise SerializationError(f"{what} contains NaN or infinity, which JSON cannot represent")
    return payload


def decode_session(payload: bytes) -> dict[str, Any]:
    """Parse stored bytes into a session dict; raises :class:`CorruptSession` if they are not a JSON object."""
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise CorruptSession(f"invalid JSON ({exc.msg})") from exc
    if type(value) is not dict:
        raise CorruptSession(f"JSON {type(value).__name__}, not an object")
    return value


def stamped(value: Any) -> Any:
    """``value`` with ``last_activity`` set to now, as a new dict (the caller's is never mutated); anything that is no
    dict is returned as it is, for :func:`encode_session` to refuse."""
    return {**value, "last_activity": utc_now()} if isinstance(value, dict) else value
