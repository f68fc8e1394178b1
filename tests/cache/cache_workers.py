"""What the child processes of tests/cache/test_cache_processes.py run (spawn start method: module-level functions).

Each worker gets the test's report queue first and reports on it as ``(kind, payload)`` tuples; an exception is
reported as ``("error", traceback)`` before the process exits, so the test fails with it instead of waiting for a
report that never comes. Every worker builds its own client (an fmredis client, environment ignored) and its own
ContextCache on the test server's URL. Values are reported thawed (plain dicts), with the cache's ``stats()``.
Every wait here is bounded (``GUARD``): a child never outlives a test that forgot it.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.queues import Queue
from typing import Any

from fmredis import ContextCache, create_redis_client, thaw
from tests.cache.context_support import GUARD, NS, NaiveCache, eventually, settle

#: The raw key (outside the cache's namespace) every loader INCRs: how many loads ran, across processes.
LOAD_COUNTER = "test:loads"
#: How long a loader takes when the test does not hold it: long enough that concurrent callers overlap it.
LOAD_TIME = 0.3

Reports = Queue  # (kind, payload) tuples, to the test


def _reporting(worker: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(worker)
    def run(queue: Reports, *args: Any) -> None:
        try:
            worker(queue, *args)
        except BaseException:
            queue.put(("error", traceback.format_exc()))
            raise

    return run


def _client(url: str) -> Any:
    return create_redis_client(url=url, environ={})


def _cache(client: Any, **options: Any) -> ContextCache:
    cache = ContextCache(client, namespace=NS, **options)
    eventually(lambda: cache.stats()["tracking"], "the child's invalidation listener subscribed")
    return cache


@_reporting
def reader(queue: Reports, inbox: Queue, url: str, key: str, naive: bool) -> None:
    """Hold a warm local copy of ``key`` and answer the test's commands from ``inbox``.

    With ``naive``, the copy is a :class:`NaiveCache` (a plain dict memo, no invalidation) instead of a ContextCache.
    Reports ``("warm", value)`` once the copy is local (for a ContextCache: a read served by its local tier), then
    for each command: ``("get",)`` -> ``("value", (value, stats))``; ``("until", expected)`` -> ``("value", (value,
    stats))`` after polling ``get`` until it returns ``expected`` (bounded: the last value read otherwise);
    ``("stop",)`` ends the worker."""
    client = _client(url)
    cache: Any = NaiveCache(client) if naive else _cache(client)
    warm = cache.get(key) if naive else settle(cache, lambda: cache.get(key))
    queue.put(("warm", thaw(warm)))

    def stats() -> dict[str, Any]:
        return {} if naive else dict(cache.stats())

    while True:
        command = inbox.get(timeout=GUARD * 3)
        if command[0] == "stop":
            break
        value = cache.get(key)
        if command[0] == "until":
            deadline = time.monotonic() + GUARD
            while value != command[1] and time.monotonic() < deadline:
                time.sleep(0.01)
                value = cache.get(key)
        queue.put(("value", (thaw(value), stats())))
    if not naive:
        cache.close()


@_reporting
def load(
    queue: Reports, url: str, key: str, options: dict[str, Any], go: Any, release: Any, naive: bool = False
) -> None:
    """``get_or_load(key, loader)`` on a ContextCache built with ``options``; the loader INCRs ``LOAD_COUNTER``,
    reports ``("loading", pid)``, then waits for the ``release`` Event (bounded; if None: sleeps ``LOAD_TIME``) and
    returns ``{"by": pid}``.

    Reports ``("ready", pid)`` once its listener is subscribed, waits for ``go`` (an Event or a Barrier; None: no
    wait), reports ``("calling", pid)`` just before the call, ``("waiting", pid)`` if it waits for another process's
    load (``stats()["load_waits"]``), and ``("loaded", {"pid", "value", "stats"})`` after.
    ``naive``: the same load without single flight (``get``, then on a miss ``loader()`` and ``set``)."""
    client = _client(url)
    cache = _cache(client, **options)
    pid = os.getpid()

    def loader() -> dict[str, Any]:
        client.incr(LOAD_COUNTER)
        queue.put(("loading", pid))
        if release is None:
            time.sleep(LOAD_TIME)
        elif not release.wait(GUARD * 3):
            raise RuntimeError("the test never released the loader")
        return {"by": pid}

    done = threading.Event()

    def watch() -> None:  # reports ("waiting", pid) once the call waits for another process's load
        while not done.wait(0.005):
            if cache.stats()["load_waits"]:
                queue.put(("waiting", pid))
                return

    queue.put(("ready", pid))
    if go is not None:
        go.wait(GUARD * 3)
    queue.put(("calling", pid))
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        if naive:
            value = cache.get(key)
            if value is None:
                value = loader()
                cache.set(key, value)
        else:
            value = cache.get_or_load(key, loader)
    finally:
        done.set()
        watcher.join(GUARD)
    queue.put(("loaded", {"pid": pid, "value": thaw(value), "stats": dict(cache.stats())}))
    cache.close()


@_reporting
def forked_reader(queue: Reports, cache: ContextCache, key: str, new: Any) -> None:
    """(Runs in a fork child of the test process, on the parent's ``cache``.) Read ``key``, wait until the listener
    restarted in this process, report ``("ready", {"first", "warm", "stats"})``, wait until the parent's write of
    ``new`` is seen (bounded), close the cache and report ``("seen", {"value", "stats"})``."""
    report: dict[str, Any] = {"first": thaw(cache.get(key))}
    eventually(lambda: cache.stats()["tracking"], "the forked child's listener subscribed")
    report["warm"] = thaw(settle(cache, lambda: cache.get(key)))
    queue.put(("ready", {**report, "stats": dict(cache.stats())}))
    deadline = time.monotonic() + GUARD
    seen = cache.get(key)
    while seen != new and time.monotonic() < deadline:
        time.sleep(0.01)
        seen = cache.get(key)
    stats = dict(cache.stats())
    cache.close()
    queue.put(("seen", {"value": thaw(seen), "stats": stats}))
