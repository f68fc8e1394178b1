"""TTLRules: how long every write and refresh keeps a session, the one place each store takes its TTLs from."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from fmredis.checks import check_ttl
from fmredis.errors import InvalidTTLError
from fmredis.serialization import parse_utc
from fmredis.ttl_policy import SessionTTLManager

__all__ = ["TTLRules"]


def _max_ttl(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not int or value < 1:
        raise InvalidTTLError(f"max_ttl must be an int of at least 1 (got {value!r})")


def _max_lifetime(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (type(value) is not int or value < 1):
        raise InvalidTTLError(f"max_lifetime must be None (off) or an int number of seconds >= 1 (got {value!r})")


def _policy(_instance: Any, _attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, SessionTTLManager):
        raise TypeError(f"ttl_policy must be a SessionTTLManager or None, not {type(value).__name__}")


@attrs.frozen
class TTLRules:
    """The TTL rules of one store, validated once. Immutable and thread-safe.

    - A write given ``ttl`` uses it (an ``int`` in ``1..max_ttl``). A write given none uses ``ttl_policy``'s TTL
      when there is a policy (for a write that stamps ``last_activity`` now, its active TTL), else ``default_ttl``.
    - A refresh (``touch``, ``get(refresh=True)``) given no TTL uses the policy's TTL for a session active now, else
      ``default_ttl``; ``extend_ttl`` without a TTL uses ``default_ttl``.
    - ``max_lifetime`` (seconds, or ``None``: off, the default) caps every TTL so that a session whose document has a
      readable ``created_at`` never outlives ``created_at + max_lifetime``, counted on ``wall_clock`` (epoch seconds).
    """

    default_ttl: int = attrs.field(default=1800)
    max_ttl: int = attrs.field(default=86_400, validator=_max_ttl)
    ttl_policy: SessionTTLManager | None = attrs.field(default=None, validator=_policy)
    max_lifetime: int | None = attrs.field(default=None, validator=_max_lifetime)
    wall_clock: Callable[[], float] = attrs.field(default=time.time, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if type(self.default_ttl) is not int or not 0 < self.default_ttl <= self.max_ttl:
            raise InvalidTTLError(
                f"default_ttl must be an int in 1..max_ttl ({self.max_ttl}) (got {self.default_ttl!r})"
            )
        if self.ttl_policy is not None and self.ttl_policy.max_ttl > self.max_ttl:
            raise InvalidTTLError(
                f"ttl_policy.max_ttl {self.ttl_policy.max_ttl} exceeds the store's max_ttl {self.max_ttl}"
            )
        if not callable(self.wall_clock):
            raise TypeError(f"wall_clock must be callable, not {type(self.wall_clock).__name__}")

    def explicit(self, ttl: int | None) -> int:
        """``ttl`` checked against ``max_ttl``, or ``default_ttl`` when ``None`` (``extend_ttl``)."""
        return self.default_ttl if ttl is None else check_ttl(ttl, self.max_ttl)

    def for_touch(self, ttl: int | None) -> int:
        """The TTL a refresh gives before the lifetime cap: explicit, else the policy's for activity now, else the
        default."""
        if ttl is not None:
            return check_ttl(ttl, self.max_ttl)
        return self.default_ttl if self.ttl_policy is None else self.ttl_policy.ttl_for_age(0)

    def for_write(self, ttl: int | None, session: Mapping[str, Any], *, stamped: bool = True) -> int:
        """The TTL to write ``session`` with; ``0`` if it is past its lifetime (the caller removes it instead).

        ``stamped``: the write sets ``last_activity`` to now, so the policy sees an active session; otherwise the
        policy reads the session's own ``last_activity``.
        """
        if ttl is not None:
            seconds = check_ttl(ttl, self.max_ttl)
        elif self.ttl_policy is None:
            seconds = self.default_ttl
        elif stamped:
            seconds = self.ttl_policy.ttl_for_age(0)
        else:
            seconds = self.ttl_policy.calculate_ttl(session)
        return seconds if self.max_lifetime is None else self.capped(seconds, session)

    def capped(self, seconds: int, session: Mapping[str, Any]) -> int:
        """``seconds``, cut to what is left of the session's lifetime (``0`` when none is left)."""
        left = self.lifetime_left(session)
        return seconds if left is None or left >= seconds else max(0, int(left))

    def lifetime_left(self, session: Mapping[str, Any]) -> float | None:
        """Seconds until ``created_at + max_lifetime``; ``None`` when the cap is off or ``created_at`` is unreadable."""
        if self.max_lifetime is None:
            return None
        created = session.get("created_at")
        if created is None:
            return None
        epoch = _epoch(created) if type(created) is str else _epoch.__wrapped__(created)
        return None if epoch is None else epoch + self.max_lifetime - self.wall_clock()


# Every write of a session with created_at needs its epoch when the cap is on: cached, since the same few strings come
# back on every write of a session and parsing one costs about as much as encoding the whole seed session.
@functools.lru_cache(maxsize=4096)
def _epoch(created: object) -> float | None:
    parsed = parse_utc(created)
    return None if parsed is None else parsed.timestamp()
