"""Input checks shared by every store, wrapper and setting: keys, TTLs, durations and counts, each checked once."""

from __future__ import annotations

import math
from collections.abc import Iterable

from fmredis.errors import InvalidKeyError, InvalidTTLError

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_SECONDS",
    "check_count",
    "check_key",
    "check_keys",
    "check_seconds",
    "check_ttl",
    "check_user_id",
]

#: Longest session key accepted, in characters (the store's prefix is not counted).
MAX_KEY_LENGTH = 512

#: Longest duration any setting accepts (one day). Beyond some size a timeout makes the socket layer raise
#: OverflowError on the first call instead of at configuration time; no outage wait, probe or cool-down needs more.
MAX_SECONDS = 86_400.0


def check_key(key: object) -> str:
    """Return ``key`` if it is a non-empty ``str`` of at most :data:`MAX_KEY_LENGTH` characters, else raise."""
    if type(key) is str and 0 < len(key) <= MAX_KEY_LENGTH and (key.isascii() or _encodable(key)):
        return key
    if not isinstance(key, str):
        raise InvalidKeyError(f"session key must be a str, not {type(key).__name__}")
    if not key:
        raise InvalidKeyError("session key must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKeyError(f"session key is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}")
    if not _encodable(key):
        raise InvalidKeyError("session key is not valid UTF-8 text (it contains a lone surrogate)")
    return str(key)  # a str subclass: stored as the plain str it equals


def check_user_id(user_id: object) -> str:
    """Return ``user_id`` if it is a valid key (the same rules as session keys), else raise ``InvalidKeyError``."""
    try:
        return check_key(user_id)
    except InvalidKeyError as exc:
        raise InvalidKeyError(str(exc).replace("session key", "user_id", 1)) from None


def _encodable(key: str) -> bool:
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_keys(keys: Iterable[object]) -> list[str]:
    """Check every key of a bulk call before anything is sent; a bare ``str`` is refused (it would iterate chars)."""
    if isinstance(keys, (str, bytes)):
        raise InvalidKeyError("expected an iterable of session keys, not a single key")
    return [check_key(key) for key in keys]


def check_ttl(ttl: object, max_ttl: int) -> int:
    """Return ``ttl`` if it is an ``int`` (not a bool) in ``1..max_ttl``, else raise :class:`InvalidTTLError`."""
    if type(ttl) is int and 0 < ttl <= max_ttl:
        return ttl
    if not isinstance(ttl, int) or isinstance(ttl, bool):
        raise InvalidTTLError(f"ttl must be an int number of seconds, not {type(ttl).__name__}")
    if ttl <= 0:
        raise InvalidTTLError(f"ttl must be at least 1 second (got {ttl}); sessions never live forever")
    raise InvalidTTLError(f"ttl {ttl} exceeds max_ttl {max_ttl}")


def check_seconds(name: str, value: object, *, positive: bool = False, maximum: float = MAX_SECONDS) -> float:
    """Return ``value`` as a float if it is a finite number of seconds in range (``> 0`` when ``positive``, else
    ``>= 0``; at most ``maximum``), else raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    low_ok = seconds > 0 if positive else seconds >= 0
    if not (math.isfinite(seconds) and low_ok and seconds <= maximum):
        bound = "greater than 0" if positive else "at least 0"
        raise ValueError(f"{name} must be a number of seconds {bound} and at most {maximum:g} (got {value!r})")
    return seconds


def check_count(name: str, value: object, *, optional: bool = False) -> int | None:
    """Return ``value`` if it is an ``int`` of at least 1 (or ``None`` when ``optional``), else raise ``ValueError``."""
    if value is None and optional:
        return None
    if type(value) is not int or value < 1:
        allowed = "None or an int of at least 1" if optional else "an int of at least 1"
        raise ValueError(f"{name} must be {allowed} (got {value!r})")
    return value
