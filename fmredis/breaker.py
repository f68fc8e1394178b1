"""A thread-safe circuit breaker: fail fast during an outage instead of stalling every caller on timeouts."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from fmredis.checks import check_count, check_seconds

__all__ = ["CircuitBreaker"]

logger = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitBreaker:
    """closed -> open after ``failure_threshold`` consecutive failures; open for ``cooldown`` seconds; then half-open,
    where exactly ONE caller is let through as a probe: its success closes the breaker, its failure re-opens it.

    The default cool-down is short (0.25 s) so that a returned server is found within it; the breaker still spares
    the server all but one attempt per cool-down. Logged at WARNING once when it opens after closed operation, at
    INFO when it closes; the half-open probes and re-openings in between are DEBUG (four a second during an outage).

    Callers ask :meth:`allow` before an attempt and report it with :meth:`record_success`, :meth:`record_failure` or,
    when the attempt never reached the server (bad input), :meth:`release`. Every method is thread-safe. Each state
    change is logged once (an application event), never each call.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        cooldown: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        name: str = "redis",
    ) -> None:
        self.failure_threshold: int = check_count("failure_threshold", failure_threshold)  # type: ignore[assignment]
        self.cooldown = check_seconds("cooldown", cooldown)
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self._probe_owner = 0  # the thread holding the half-open probe

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"`` (an open breaker whose cool-down is over reads half-open)."""
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown:
                return HALF_OPEN
            return self._state

    def allow(self) -> bool:
        """Whether a call may go through now; in half-open state only the first caller gets ``True``."""
        with self._lock:
            if self._state == CLOSED:
                return True
            if self._state == OPEN:
                if self._clock() - self._opened_at < self.cooldown:
                    return False
                self._state, self._probe_in_flight = HALF_OPEN, True
                self._probe_owner, transition = threading.get_ident(), True
            elif self._probe_in_flight:
                return False
            else:
                self._probe_in_flight, transition = True, False
                self._probe_owner = threading.get_ident()
        if transition:
            logger.debug("Circuit breaker %s half-open: probing", self.name)
        return True

    def trial(self) -> bool:
        """Take the half-open probe now, cool-down or not, for a caller that knows better when to probe (the fallback's
        recovery probe); ``False`` if the breaker is closed (no trial needed: just call) or another probe is in flight.
        Reported like any allowed call: success closes the breaker, failure re-opens it."""
        with self._lock:
            if self._state == CLOSED or self._probe_in_flight:
                return False
            self._state, self._probe_in_flight = HALF_OPEN, True
            self._probe_owner = threading.get_ident()
        return True

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            if self._state == CLOSED:
                return
            self._state, self._probe_in_flight = CLOSED, False
        logger.info("Circuit breaker %s closed: the server answers again", self.name)

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._state == HALF_OPEN or (self._state == CLOSED and self._failures >= self.failure_threshold):
                reopened = self._state == HALF_OPEN
                self._state, self._opened_at, self._probe_in_flight = OPEN, self._clock(), False
                failures = self._failures
            else:
                return
        (logger.debug if reopened else logger.warning)(
            "Circuit breaker %s open after %d consecutive failures: failing fast for %.2f s",
            self.name,
            failures,
            self.cooldown,
        )

    def release(self) -> None:
        """The allowed call did not reach the server: if it held the half-open probe, another caller may take it."""
        with self._lock:
            if self._probe_owner == threading.get_ident():
                self._probe_in_flight = False
