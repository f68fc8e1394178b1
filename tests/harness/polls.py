"""A bounded poll for tests: wait for a condition, fail naming it once a deadlock guard runs out (never a timing
expectation)."""

from __future__ import annotations

import time
from collections.abc import Callable

GUARD = 10.0  # seconds: a deadlock guard only, never an expectation


def eventually(condition: Callable[[], object], what: str, seconds: float = GUARD) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` if it is still false after ``seconds`` (a bound)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.01)
