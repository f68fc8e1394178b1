"""The reading parts of the ContextCache benchmark (``benchmarks/context_cache.py``), and redis-py's client-side
cache they compare fmredis with: part 1, reads in one thread (local hits, redis-py's cache hits, the end-to-end miss);
part 2, the invalidation latency to other processes (the spawned watcher processes, fmredis and redis-py's cache, and
the parent that writes); part 3, single flight (threads released at once on one missing key)."""

from __future__ import annotations

import multiprocessing
import random
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis
import redis.cache
import redis.connection

from benchmarks.context_data import TTL, interleaved, server_commands, summary, versioned, warm
from fmredis import ContextCache, create_redis_client

FM, REDIS_PY = "fmredis", "redis-py cache"
WATCHERS = ((FM, "spin"), (FM, "poll"), (REDIS_PY, "spin"), (REDIS_PY, "poll"))
POLL_SLEEP = 0.0002  # a "poll" watcher's pause between reads, seconds
WAIT_S = 5.0  # deadline guard: a worker that has not seen a write after this long reports it missed
THREADS, LOAD_SECONDS = 32, 0.05
CSC_MIN_VERSION = "6.0.0"
CSC_NOTE = (
    "redis-py's client-side cache refuses servers older than 7.4 (CacheProxyConnection.MIN_ALLOWED_VERSION = "
    f"'7.4.0'); lowered to '{CSC_MIN_VERSION}' in this benchmark only (CLIENT TRACKING exists since Redis 6.0)"
)


def allow_redis_py_cache_on_older_servers() -> None:
    # redis-py 8 refuses client-side caching below Redis 7.4 ("to maximize compatibility with all Redis products"),
    # although what it uses, CLIENT TRACKING with RESP3 invalidation pushes, exists since Redis 6.0 and our server
    # is 7.0. Lowered here, in this benchmark only (and in its worker processes), never in the package.
    redis.connection.CacheProxyConnection.MIN_ALLOWED_VERSION = CSC_MIN_VERSION


def redis_py_cache_client(url: str) -> redis.Redis:
    allow_redis_py_cache_on_older_servers()
    return redis.Redis.from_url(url, protocol=3, cache_config=redis.cache.CacheConfig(max_size=1000))


def quantiles_ms(samples: list[float]) -> dict[str, Any]:
    """count, p50/p90/p99/max in milliseconds of durations in nanoseconds."""
    if not samples:
        return {"count": 0}
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6, 3)

    return {
        "count": len(ordered),
        "p50_ms": pick(0.5),
        "p90_ms": pick(0.9),
        "p99_ms": pick(0.99),
        "max_ms": round(ordered[-1] / 1e6, 3),
    }


# -- 1. reads (and the end-to-end miss of part 4) -------------------------------------------------------------------


def reads(url: str, client: redis.Redis, ns: str, contexts: dict[str, dict[str, Any]], args: Any) -> dict[str, Any]:
    scale = 4 if args.quick else 1
    hot = ContextCache(client, namespace=ns, ttl=TTL)  # the defaults: zstd above 16 KB, 64 MiB local
    cold = {
        "None": ContextCache(client, namespace=ns, ttl=TTL, compression=None, local_max_bytes=1),
        "zstd": ContextCache(client, namespace=ns, ttl=TTL, compression="zstd", local_max_bytes=1),
    }
    csc = redis_py_cache_client(url)
    try:
        payloads = {label: orjson.dumps(context) for label, context in contexts.items()}
        for label, context in contexts.items():
            hot.set(f"hit-{label}", context)
            warm(hot, f"hit-{label}")
            for name, cache in cold.items():
                cache.set(f"{name}-{label}", context)
            client.set(f"{ns}:raw:{label}", payloads[label], ex=TTL)
        client.set(f"{ns}:csc:50KB", payloads["50KB"], ex=TTL)
        csc.get(f"{ns}:csc:50KB")  # cached from here on

        def raw(label: str) -> Callable[[], Any]:
            return lambda: orjson.loads(client.get(f"{ns}:raw:{label}"))

        csc_key = f"{ns}:csc:50KB"
        variants: dict[str, tuple[Callable[[], Any], int]] = {
            "fmredis hit 50KB": (lambda: hot.get("hit-50KB"), 2000 // scale),
            "redis-py cache hit + orjson.loads 50KB": (lambda: orjson.loads(csc.get(csc_key)), 100 // scale),
            "redis-py cache hit, bytes only 50KB": (lambda: csc.get(csc_key), 100 // scale),
            "GET + orjson.loads 50KB": (raw("50KB"), 60 // scale),
            "fmredis miss, compression=None 50KB": (lambda: cold["None"].get("None-50KB"), 60 // scale),
            "fmredis miss, compression=zstd 50KB": (lambda: cold["zstd"].get("zstd-50KB"), 60 // scale),
            "fmredis hit 1MB": (lambda: hot.get("hit-1MB"), 2000 // scale),
            "GET + orjson.loads 1MB": (raw("1MB"), 8 // scale),
            "fmredis miss, compression=None 1MB": (lambda: cold["None"].get("None-1MB"), 8 // scale),
            "fmredis miss, compression=zstd 1MB": (lambda: cold["zstd"].get("zstd-1MB"), 8 // scale),
        }
        for call, _ in variants.values():  # warm-up: scripts loaded, connections made
            call()
        before = hot.stats()
        figures = interleaved(variants, args.rounds)
        after = hot.stats()
        timed: dict[str, Any] = {}
        for name, rounds in figures.items():
            label = name.rsplit(" ", 1)[1]
            baseline = figures[f"GET + orjson.loads {label}"]
            timed[name] = {"size": label, **summary(rounds, baseline), "calls_per_round": variants[name][1]}

        # What a hit returns, and what the server does for it.
        first, second = hot.get("hit-50KB"), hot.get("hit-50KB")
        try:
            first["version"] = 1
            refused = False
        except TypeError:
            refused = True
        raw_first, raw_second = csc.get(csc_key), csc.get(csc_key)
        decoded_first, decoded_second = orjson.loads(raw_first), orjson.loads(raw_second)
        returns = {
            FM: {
                "type": type(first).__name__,
                "same_object_every_hit": first is second,
                "mutation_refused": refused,
                "equals_original": first == contexts["50KB"],
                "caller_decodes": False,
            },
            REDIS_PY: {
                "type": type(raw_first).__name__,
                "same_object_every_hit": raw_first is raw_second,  # copy.deepcopy of bytes is the bytes themselves
                "decoded_same_object": decoded_first is decoded_second,
                "equals_original": decoded_first == contexts["50KB"],
                "caller_decodes": True,
            },
        }
        commands = {
            FM: server_commands(client, lambda: hot.get("hit-50KB"), 100),
            REDIS_PY: server_commands(client, lambda: csc.get(csc_key), 100),
            "fmredis miss": server_commands(client, lambda: cold["zstd"].get("zstd-50KB"), 20),
        }
        stored = {
            f"{name} {label}": int(client.strlen(f"{ns}:v:{name}-{label}")) for name in cold for label in contexts
        }
        return {
            "timed": timed,
            "returns": returns,
            "server_commands_per_call": commands,
            "hot_cache_misses_during_rounds": after["misses"] - before["misses"],
            "hot_cache_hits_during_rounds": after["hits"] - before["hits"],
            "json_bytes": {label: len(payload) for label, payload in payloads.items()},
            "stored_bytes": stored,
            "redis_py_cache_note": CSC_NOTE,
        }
    finally:
        hot.close()
        for cache in cold.values():
            cache.close()
        csc.close()


# -- 2. invalidation latency to another process ---------------------------------------------------------------------


def watcher(lib: str, mode: str, url: str, ns: str, key: str, conn: Any) -> None:
    """Child process (spawn): holds ``key`` warm (fmredis ``ContextCache`` or redis-py's cache); for each order
    ``(version, limit_ns)`` it reports the version it holds, then reads until a read returns ``version``: answers
    ``("seen", monotonic ns right after that read returned, or None after limit_ns, reads made)``. ``None``: exit,
    after sending its cache's stats."""
    try:
        cache: ContextCache | None = None
        if lib == FM:
            cache = ContextCache(create_redis_client(url=url, environ={}), namespace=ns, ttl=TTL)
            fm_cache = cache

            def read() -> Any:
                return fm_cache.get(key)

            def version(value: Any) -> int:
                return int(value["version"])
        else:
            client = redis_py_cache_client(url)

            def read() -> Any:
                return client.get(key)

            def version(value: Any) -> int:
                return int(orjson.loads(value)["version"])

        deadline = time.monotonic() + 30
        while read() is None or (cache is not None and not cache.stats()["tracking"]):
            if time.monotonic() > deadline:
                raise RuntimeError("the key never appeared (or tracking never started)")
            time.sleep(0.01)
        if cache is not None:
            warm(cache, key)
        conn.send(("ready", None))
        pause = POLL_SLEEP if mode == "poll" else 0.0
        clock = time.monotonic_ns
        while (order := conn.recv()) is not None:
            wanted, limit_ns = order
            last = read()
            conn.send(("watching", version(last)))
            seen, polls, deadline_ns = None, 0, clock() + limit_ns
            while True:
                value = read()
                polls += 1
                if value is not last:
                    last = value
                    if version(value) >= wanted:  # redis-py's: decoded, as its caller must before using it
                        seen = clock()
                        break
                if clock() > deadline_ns:
                    break
                if pause:
                    time.sleep(pause)
            conn.send(("seen", seen, polls))
        conn.send(("stats", cache.stats() if cache is not None else {}))
        if cache is not None:
            cache.close()
    except BaseException as exc:  # the parent reports it: a dead worker must not pass for a slow one
        conn.send(("failed", repr(exc)))


def _answer(conn: Any, kind: str, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise RuntimeError(f"a watcher sent no {kind!r} in {timeout:g} s")
    try:
        what, *payload = conn.recv()
    except EOFError:
        raise RuntimeError(f"a watcher exited before sending {kind!r}") from None
    if what == "failed":
        raise RuntimeError(f"a watcher failed: {payload[0]}")
    if what != kind:
        raise RuntimeError(f"a watcher sent {what!r}, expected {kind!r}")
    return payload


def invalidation(url: str, client: redis.Redis, ns: str, base: dict[str, Any], writes: int) -> dict[str, Any]:
    writer = ContextCache(client, namespace=ns, ttl=TTL)
    context = multiprocessing.get_context("spawn")
    names = [f"{lib} {mode}" for lib, mode in WATCHERS]
    keys = {
        name: (f"inv-{mode}" if lib == FM else f"{ns}:inv-csc-{mode}")
        for name, (lib, mode) in zip(names, WATCHERS, strict=True)
    }

    def write(name: str, version: int) -> tuple[int, int]:
        value = versioned(base, version)
        if name.startswith(FM):
            started = time.monotonic_ns()
            writer.set(keys[name], value)
        else:
            encoded = orjson.dumps(value)
            started = time.monotonic_ns()
            client.set(keys[name], encoded, ex=TTL)
        return started, time.monotonic_ns()

    for name in names:
        write(name, 0)
    pipes, processes = {}, []
    try:
        for name, (lib, mode) in zip(names, WATCHERS, strict=True):
            parent_end, child_end = context.Pipe()
            process = context.Process(target=watcher, args=(lib, mode, url, ns, keys[name], child_end), daemon=True)
            process.start()
            pipes[name] = parent_end
            processes.append(process)
        for conn in pipes.values():
            _answer(conn, "ready", 60)
        samples: dict[str, list[tuple[int, int, int | None, int]]] = {name: [] for name in names}
        rng = random.Random(14)
        for version in range(1, writes + 1):
            shift = version % len(names)
            for name in names[shift:] + names[:shift]:
                conn = pipes[name]
                conn.send((version, int(WAIT_S * 1e9)))
                (holding,) = _answer(conn, "watching", 10)
                if holding != version - 1:
                    raise RuntimeError(f"{name} holds version {holding} before write {version}")
                time.sleep(rng.uniform(0.0005, 0.003))  # the worker is reading by now
                started, replied = write(name, version)
                seen, polls = _answer(conn, "seen", WAIT_S + 10)
                samples[name].append((started, replied, seen, polls))
        stats = {}
        for name, conn in pipes.items():
            conn.send(None)
            (stats[name],) = _answer(conn, "stats", 10)
    finally:
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(5)
        writer.close()
    report: dict[str, Any] = {}
    for name, rows in samples.items():
        seen_rows = [row for row in rows if row[2] is not None]
        report[name] = {
            "writes": len(rows),
            "missed": len(rows) - len(seen_rows),
            "from_write_call": quantiles_ms([seen - started for started, _, seen, _ in seen_rows]),
            "from_write_reply": quantiles_ms([seen - replied for _, replied, seen, _ in seen_rows]),
            "seen_before_reply": sum(1 for _, replied, seen, _ in seen_rows if seen < replied),
            "write_call_us_median": round(statistics.median((r - s) / 1000 for s, r, _, _ in rows), 1),
            "reads_per_write_median": statistics.median(row[3] for row in rows),
            "worker_stats": stats.get(name, {}),
        }
    return report


# -- 3. single flight -----------------------------------------------------------------------------------------------


def single_flight(client: redis.Redis, ns: str, base: dict[str, Any], rounds: int) -> dict[str, Any]:
    cache = ContextCache(client, namespace=ns, ttl=TTL)
    variants = ("get_or_load", "naive get, load, set")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    try:
        for round_number in range(rounds):
            shift = round_number % len(variants)
            for name in variants[shift:] + variants[:shift]:
                runs[name].append(_flight(cache, f"flight-{name[:5]}-{round_number}", base, round_number, name))
    finally:
        cache.close()
    return {
        name: {
            "threads": THREADS,
            "loader_s": LOAD_SECONDS,
            "loads_per_round": [run["loads"] for run in by_round],
            "served_per_round": [run["served"] for run in by_round],
            "wall_ms_median": round(statistics.median(run["wall_ms"] for run in by_round), 1),
            "load_waits": sum(run["load_waits"] for run in by_round),
            "errors": [error for run in by_round for error in run["errors"]],
        }
        for name, by_round in runs.items()
    }


def _flight(cache: ContextCache, key: str, base: dict[str, Any], version: int, variant: str) -> dict[str, Any]:
    cache.delete(key)
    loads, mutex = [0], threading.Lock()
    barrier = threading.Barrier(THREADS + 1)
    results: list[Any] = [None] * THREADS
    errors: list[str] = []

    def loader() -> dict[str, Any]:
        with mutex:
            loads[0] += 1
        time.sleep(LOAD_SECONDS)
        return versioned(base, version)

    def work(n: int) -> None:
        try:
            barrier.wait(30)
            if variant == "get_or_load":
                results[n] = cache.get_or_load(key, loader)
            else:
                value = cache.get(key)
                if value is None:
                    value = loader()
                    cache.set(key, value)
                results[n] = value
        except Exception as exc:
            errors.append(repr(exc))

    waits = cache.stats()["load_waits"]
    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    barrier.wait(30)
    started = time.perf_counter()
    for thread in threads:
        thread.join(30)
    wall = time.perf_counter() - started
    if any(thread.is_alive() for thread in threads):
        errors.append("a thread did not finish in 30 s")
    return {
        "loads": loads[0],
        "served": sum(1 for value in results if value is not None and value["version"] == version),
        "wall_ms": wall * 1000,
        "load_waits": cache.stats()["load_waits"] - waits,
        "errors": errors,
    }
