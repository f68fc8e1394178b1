"""A writer workload for failover tests and benchmarks: `WriteLoad` remembers every write a caller saw succeed, and
`unreadable` reads them back from a master (plain redis-py: the stores are driven through what they have in common)."""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Iterable
from typing import Any, Protocol

from tests.harness.servers import Address, make_client

SESSION_PREFIX = "session:"  # RedisSessionStore's default key prefix, for reading what it wrote with a plain client


class SessionStoreLike(Protocol):
    """What `WriteLoad` needs of a store (fmredis' ISessionStore, without importing fmredis here)."""

    def set(self, key: str, value: dict[str, Any], /) -> object: ...

    def get(self, key: str, /) -> dict[str, Any] | None: ...


class WriteLoad:
    """`threads` writers, each looping: ``set`` a new key ``w<thread>-<i>`` to ``{"thread", "i"}``, ``get`` it back,
    pause `pause` s. Every call's start, end and outcome is recorded; an exception never ends a writer.

    Use as a context manager: the writers run inside the ``with`` block and are joined when it ends.
    """

    def __init__(self, store: SessionStoreLike, *, threads: int = 4, pause: float = 0.005) -> None:
        self.store = store
        self.pause = pause
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.acked: dict[str, tuple[int, float]] = {}  # key -> (i, when the set returned)
        self.writes: list[tuple[float, float, bool]] = []  # (started, ended, succeeded) of every set
        self.calls: list[tuple[float, float]] = []  # (started, ended) of every call, set and get
        self.errors: list[tuple[float, str, str]] = []  # (when, exception type, message) of every failed call
        self.mismatches: list[str] = []  # a get right after an acknowledged set did not return it
        self.missed_acks: list[float] = []  # for each of those, when its set was acknowledged
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def __enter__(self) -> WriteLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _call(self, operation: str, key: str, i: int) -> bool:
        started = time.monotonic()
        try:
            if operation == "set":
                self.store.set(key, {"thread": key, "i": i})
            else:
                found = self.store.get(key)
        except Exception as exc:  # every error reaching a caller is recorded, whatever its type
            ended = time.monotonic()
            with self._lock:
                self.errors.append((ended, type(exc).__name__, str(exc)))
                self.calls.append((started, ended))
                if operation == "set":
                    self.writes.append((started, ended, False))
            return False
        ended = time.monotonic()
        with self._lock:
            self.calls.append((started, ended))
            if operation == "set":
                self.writes.append((started, ended, True))
                self.acked[key] = (i, ended)
            elif found is None or found.get("i") != i:
                self.mismatches.append(f"{key}: read back {found!r}")
                self.missed_acks.append(self.acked[key][1])
        return True

    def _run(self, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            key = f"w{n}-{i}"
            if self._call("set", key, i):
                self._call("get", key, i)
            i += 1
            time.sleep(self.pause)

    def wait_for_writes(self, count: int, timeout: float = 10.0) -> None:
        """Until `count` writes have succeeded (the workload is running against a healthy store)."""
        deadline = time.monotonic() + timeout
        while len(self.acked) < count:
            assert time.monotonic() < deadline, f"only {len(self.acked)} writes succeeded in {timeout} s"
            time.sleep(0.01)

    def first_success_started_after(self, instant: float) -> float | None:
        """When the first successful write that started at or after `instant` returned, or None."""
        with self._lock:
            ends = [end for start, end, ok in self.writes if ok and start >= instant]
        return min(ends) if ends else None

    def wait_for_success_after(self, instant: float, deadline: float) -> float | None:
        """Until a write started at or after `instant` has succeeded (then return when it returned), or `deadline`."""
        while time.monotonic() < deadline:
            found = self.first_success_started_after(instant)
            if found is not None:
                return found
            time.sleep(0.01)
        return self.first_success_started_after(instant)

    def longest_gap(self, since: float) -> float:
        """The longest time between two consecutive successful writes (by return time), counted from the last one
        before `since`; the tail after the last one counts too (the workload has stopped by then)."""
        ends = sorted(end for _start, end, ok in self.writes if ok)
        before = [end for end in ends if end < since]
        previous = before[-1] if before else since
        last = max((end for _start, end in self.calls), default=since)
        gap = 0.0
        for end in [*(end for end in ends if end >= since), last]:
            gap = max(gap, end - previous)
            previous = end
        return gap

    def errors_by_type(self) -> tuple[dict[str, int], dict[str, str]]:
        """Errors seen by callers, counted by "Type (redis-py error | breaker open)" (the redis-py error named in the
        message when there is one), and the first message (up to 200 characters) of each."""
        counts: collections.Counter[str] = collections.Counter()
        samples: dict[str, str] = {}
        for _when, kind, message in self.errors:
            if "circuit breaker" in message:
                detail = "breaker open"
            else:
                detail = message.split("failed: ", 1)[1].split(":", 1)[0] if "failed: " in message else ""
            label = f"{kind} ({detail})" if detail else kind
            counts[label] += 1
            samples.setdefault(label, message[:200])
        return dict(counts), samples

    def error_summary(self) -> dict[str, int]:
        """The counts of `errors_by_type`."""
        return self.errors_by_type()[0]

    def acknowledged_between(self, keys: Iterable[str], since: float) -> tuple[float, float] | None:
        """The first and last time, in seconds from `since`, at which a write of `keys` was acknowledged (None when
        there are no keys)."""
        when = sorted(self.acked[key][1] - since for key in keys)
        return (when[0], when[-1]) if when else None


def unreadable(
    master: Address, acked: dict[str, tuple[int, float]], *, password: str | None = None, prefix: str = SESSION_PREFIX
) -> list[str]:
    """The acknowledged keys (`WriteLoad.acked`) whose last acknowledged value the master does not hold."""
    missing: list[str] = []
    keys = list(acked)
    with make_client(master, password=password) as client:
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            for key, payload in zip(chunk, client.mget([prefix + key for key in chunk]), strict=True):
                if payload is None or json.loads(payload).get("i") != acked[key][0]:
                    missing.append(key)
    return missing
