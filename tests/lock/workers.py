"""What the child processes of tests/lock/test_lock_processes.py run (spawn start method: module-level functions).

Each worker gets the test's queue first and reports on it as ``(kind, payload)`` tuples. An exception is reported as
``("error", traceback)`` before the process exits, so the test fails with it instead of waiting for a message that
never comes. Every worker builds its own client (an fmredis client, environment ignored) on the test server's URL.
"""

from __future__ import annotations

import functools
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier, Event
from typing import Any

from fmredis import FencedOut, LockLost, RedisLock, RedisSessionStore, create_redis_client

#: The pause between a counter's read and its write: wide enough that unlocked writers reliably overlap.
RACE_WINDOW = 0.002


def _reporting(worker: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(worker)
    def run(queue: Queue[tuple[str, Any]], *args: Any) -> None:
        try:
            worker(queue, *args)
        except BaseException:
            queue.put(("error", traceback.format_exc()))
            raise

    return run


def _client(url: str) -> Any:
    return create_redis_client(url=url, environ={})


def increment(store: RedisSessionStore, key: str) -> int:
    """A deliberately racy read-modify-write of the counter session ``{"n": ...}``; returns the value it read."""
    session = store.get(key)
    assert session is not None
    value = int(session["n"])
    time.sleep(RACE_WINDOW)
    store.set(key, {"n": value + 1})
    return value


@_reporting
def count(
    queue: Queue[tuple[str, Any]], url: str, name: str, key: str, rounds: int, locked: bool, start: Barrier
) -> None:
    """``rounds`` increments, each under ``with RedisLock(...)`` if ``locked``; reports ``("done", [(read, token)])``
    (token 0 without the lock). All workers of a run start together at ``start``."""
    client = _client(url)
    store, lock = RedisSessionStore(client), RedisLock(client, name, ttl=5.0)
    seen: list[tuple[int, int]] = []
    start.wait(30)
    for _ in range(rounds):
        if locked:
            with lock as held:
                seen.append((increment(store, key), held.token))
        else:
            seen.append((increment(store, key), 0))
    queue.put(("done", seen))


@_reporting
def frozen_holder(queue: Queue[tuple[str, Any]], url: str, name: str, key: str, fenced: bool, go: Event) -> None:
    """Hold ``name`` (ttl 1 s, auto-renewed), report ``("holding", token)``, wait for ``go`` (the test SIGSTOPs this
    process meanwhile), then write ``{"writer": "A"}`` to ``key`` (with ``fence=held`` if ``fenced``) and report
    ``("done", {"token", "write": "written" | "FencedOut", "lost", "exit": "LockLost" | "clean"})``."""
    client = _client(url)
    store, lock = RedisSessionStore(client), RedisLock(client, name, ttl=1.0, auto_renew=True)
    report: dict[str, Any] = {}
    try:
        with lock as held:
            report["token"] = held.token
            queue.put(("holding", held.token))
            if not go.wait(30):
                raise RuntimeError("no go from the test within 30 s")
            try:
                if fenced:
                    store.set(key, {"writer": "A"}, fence=held)
                else:
                    store.set(key, {"writer": "A"})
                report["write"] = "written"
            except FencedOut:
                report["write"] = "FencedOut"
            report["lost"] = held.lost
    except LockLost:
        report["exit"] = "LockLost"
    else:
        report["exit"] = "clean"
    queue.put(("done", report))


@_reporting
def hold(queue: Queue[tuple[str, Any]], url: str, name: str, ttl: float) -> None:
    """Acquire ``name`` (auto-renewed), report ``("holding", token)`` and keep it until killed (at most 120 s)."""
    held = RedisLock(_client(url), name, ttl=ttl, auto_renew=True).acquire(timeout=10)
    queue.put(("holding", held.token))
    threading.Event().wait(120)


@_reporting
def wait_for(queue: Queue[tuple[str, Any]], url: str, name: str, timeout: float) -> None:
    """Wait for ``name`` (acquire with ``timeout``); report ``("acquired", token)`` and release it."""
    held = RedisLock(_client(url), name, ttl=2.0).acquire(timeout=timeout)
    queue.put(("acquired", held.token))
    held.release()
