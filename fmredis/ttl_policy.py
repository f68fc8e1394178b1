"""SessionTTLManager: the adaptive TTL policy (recently active sessions live longer, idle ones shorter)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import attrs

from fmredis.serialization import parse_utc, utc_now

__all__ = ["SessionTTLManager"]


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"{attribute.name} must be an int number of seconds of at least 1 (got {value!r})")


@attrs.frozen
class SessionTTLManager:
    """Chooses a session's TTL from its ``last_activity``.

    - active within ``active_window`` seconds (5 minutes): ``active_ttl`` (1 hour);
    - within ``idle_window`` seconds (30 minutes): ``default_ttl`` (30 minutes);
    - older: ``max(default_ttl // 2, min_ttl)`` (15 minutes);
    - no ``last_activity``, or one that is not an ISO-8601 timestamp: ``default_ttl`` (the session is treated as
      neither active nor idle rather than failing the write that asked);
    - a timestamp in the future (clock skew between workers) counts as active now.

    The result never exceeds ``max_ttl`` (2 hours). Timestamps may be aware or naive datetimes or ISO-8601 strings
    (naive means UTC; a trailing ``Z`` is accepted on every supported Python). The age is the full difference, days
    included. ``clock`` returns the current aware UTC time (injectable for tests). Immutable and thread-safe.
    """

    default_ttl: int = attrs.field(default=1800, validator=_positive)
    active_ttl: int = attrs.field(default=3600, validator=_positive)
    max_ttl: int = attrs.field(default=7200, validator=_positive)
    min_ttl: int = attrs.field(default=900, validator=_positive)
    active_window: int = attrs.field(default=300, validator=_positive)
    idle_window: int = attrs.field(default=1800, validator=_positive)
    clock: Callable[[], datetime] = attrs.field(default=utc_now, repr=False)

    def __attrs_post_init__(self) -> None:
        for name in ("default_ttl", "active_ttl", "min_ttl"):
            if getattr(self, name) > self.max_ttl:
                raise ValueError(f"{name} ({getattr(self, name)}) exceeds max_ttl ({self.max_ttl})")
        if self.active_window > self.idle_window:
            raise ValueError(f"active_window ({self.active_window}) exceeds idle_window ({self.idle_window})")
        if not callable(self.clock):
            raise TypeError(f"clock must be callable, not {type(self.clock).__name__}")

    def calculate_ttl(self, session: Mapping[str, Any]) -> int:
        """The TTL in seconds for ``session``, from its ``last_activity`` (see the class docstring for the rules)."""
        last_activity = parse_utc(session.get("last_activity"))
        if last_activity is None:
            return self.default_ttl
        return self.ttl_for_age((self.clock() - last_activity).total_seconds())

    def ttl_for_age(self, age_seconds: float) -> int:
        """The TTL for a session last active ``age_seconds`` ago (``0`` for one in use now, as on a touch)."""
        if age_seconds < self.active_window:
            ttl = self.active_ttl
        elif age_seconds < self.idle_window:
            ttl = self.default_ttl
        else:
            ttl = max(self.default_ttl // 2, self.min_ttl)
        return min(ttl, self.max_ttl)
