"""Throughput against thread count: threads sharing one store (automatic pipelining on its shared connection) against
the same threads on raw redis-py, with the same pool, and the C ``redis-benchmark`` with as many clients.

Each worker thread alternates a ``get`` and a ``set`` of its own sessions (the design document's request, without
the application around it). Variants, all on one redis-server and one pool size, interleaved per thread count in
rotating order so that the machine's drift shows up in every variant (figures are medians over the rounds):

- ``store``: ``RedisSessionStore`` (default: pipelined);
- ``store, pipelining off``: the same store on redis-py's ``execute_command`` (every thread its own pooled connection);
- ``redis-py``: ``GET`` + ``orjson.loads`` and ``orjson.dumps`` + ``SET EX`` on a ``redis.Redis`` of the same pool;
- ``I/O thread sketch``: the other design the issue named (:mod:`benchmarks.io_thread`), raw ``GET``/``SET`` with
  orjson on one shared socket whose replies a dedicated thread reads;
- ``redis-benchmark -c N``: the C client, ``GET`` and ``SET`` of the same value size, N connections, no pipelining,
  as a reference line (its rate is the mean of its GET and SET rates).

    python -m benchmarks.threads                    # about 90 s; writes threads.json and threads.png
    python -m benchmarks.threads --threads 1 32 --rounds 3 --ops 2000
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

import fmredis
from benchmarks.io_thread import IOThreadConnection
from benchmarks.sessions import SEED_SESSION
from fmredis.serialization import stamped
from tests.harness.servers import RedisServer

RESULTS = Path(__file__).resolve().parent / "results"
POOL = 20
TTL = 1800
KEYS_PER_THREAD = 10
PAYLOAD = orjson.dumps(stamped(SEED_SESSION))  # what the store writes (it stamps last_activity)

Worker = Callable[[int, int], None]  # (thread number, operations)


def workers(url: str, port: int) -> tuple[dict[str, Worker], Callable[[], None]]:
    """One worker function per variant, and a function that closes what they use."""
    pooled = f"{url}?max_connections={POOL}"
    store = fmredis.RedisSessionStore.from_url(pooled, prefix="threads:store:")
    plain = fmredis.RedisSessionStore.from_url(pooled, prefix="threads:plain:", pipelining=False)
    raw = fmredis.create_redis_client(url=url, max_connections=POOL, environ={})
    sketch = IOThreadConnection(port)
    assert store.pipelined and not plain.pipelined

    def on_store(chosen: fmredis.RedisSessionStore) -> Worker:
        def work(thread: int, operations: int) -> None:
            for i in range(operations // 2):
                key = f"{thread}:{i % KEYS_PER_THREAD}"
                chosen.get(key)
                chosen.set(key, SEED_SESSION, TTL)

        return work

    def on_raw(thread: int, operations: int) -> None:
        for i in range(operations // 2):
            key = f"threads:raw:{thread}:{i % KEYS_PER_THREAD}"
            value = raw.get(key)
            if value is not None:
                orjson.loads(value)
            raw.set(key, PAYLOAD, ex=TTL)

    def on_sketch(thread: int, operations: int) -> None:
        for i in range(operations // 2):
            key = f"threads:sketch:{thread}:{i % KEYS_PER_THREAD}"
            value = sketch.execute("GET", key)
            if value is not None:
                orjson.loads(value)
            sketch.execute("SET", key, PAYLOAD, "EX", TTL)

    def close() -> None:
        store.close()
        plain.close()
        raw.close()
        sketch.close()

    variants = {
        "store": on_store(store),
        "store, pipelining off": on_store(plain),
        "redis-py": on_raw,
        "I/O thread sketch": on_sketch,
    }
    return variants, close


def ops_per_second(work: Worker, threads: int, operations: int) -> float:
    """``threads`` threads each doing ``operations`` operations, started together: total operations per second."""
    per_thread = max(2, operations // threads)
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def run(thread: int) -> None:
        barrier.wait()
        try:
            work(thread, per_thread)
        except BaseException as exc:  # reported below: a failed worker must not pass for a fast one
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} worker(s) failed: {errors[0]!r}")
    return threads * (per_thread // 2 * 2) / elapsed


def redis_benchmark(port: int, clients: int, requests: int) -> float | None:
    """The C client's mean GET/SET rate with ``clients`` connections (None if redis-benchmark is not installed)."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    command = [binary, "-h", "127.0.0.1", "-p", str(port), "-c", str(clients), "-n", str(requests)]
    command += ["-d", str(len(PAYLOAD)), "-t", "get,set", "--csv"]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300).stdout
    rates = [float(row["rps"]) for row in csv.DictReader(io.StringIO(output))]
    return statistics.mean(rates) if rates else None


def measure(url: str, port: int, counts: list[int], rounds: int, operations: int) -> dict[str, Any]:
    variants, close = workers(url, port)
    names = list(variants)
    report: dict[str, Any] = {"threads": {}}
    try:
        for work in variants.values():
            ops_per_second(work, 4, 400)  # warm up: connections made, keys written
        for count in counts:
            rates: dict[str, list[float]] = {name: [] for name in names}
            for round_number in range(rounds):
                shift = round_number % len(names)
                for name in names[shift:] + names[:shift]:
                    rates[name].append(ops_per_second(variants[name], count, operations))
            figures: dict[str, Any] = {name: round(statistics.median(values)) for name, values in rates.items()}
            figures["store_vs_redis_py"] = round(
                statistics.median(a / b for a, b in zip(rates["store"], rates["redis-py"], strict=True)), 2
            )
            reference = redis_benchmark(port, count, max(20_000, operations * 2))
            figures["redis-benchmark"] = None if reference is None else round(reference)
            if reference:
                figures["store_vs_redis_benchmark"] = round(figures["store"] / reference, 2)
            report["threads"][str(count)] = figures
            print(format_row(count, figures), flush=True)
    finally:
        close()
    return report


def format_row(count: int, figures: dict[str, Any]) -> str:
    reference = figures.get("redis-benchmark")
    return (
        f"{count:3} threads: store {figures['store']:7} ops/s, pipelining off {figures['store, pipelining off']:7}, "
        f"redis-py {figures['redis-py']:7}, I/O thread sketch {figures['I/O thread sketch']:7}, "
        f"redis-benchmark -c {count} {reference if reference else '-':>7}; "
        f"store vs redis-py {figures['store_vs_redis_py']}x"
    )


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [int(n) for n in report["threads"]]
    figure, axis = plt.subplots(figsize=(8, 4.5))
    styles = {
        "store": ("#2e7d32", "-", "o"),
        "store, pipelining off": ("#9e9d24", "-", "^"),
        "redis-py": ("#888888", "-", "s"),
        "I/O thread sketch": ("#1565c0", ":", "x"),
        "redis-benchmark": ("#d9534f", "--", "."),
    }
    for name, (color, line, marker) in styles.items():
        values = [report["threads"][str(n)].get(name) for n in counts]
        if any(value is None for value in values):
            continue
        label = "redis-benchmark -c N (C, reference)" if name == "redis-benchmark" else name
        axis.plot(counts, values, color=color, linestyle=line, marker=marker, label=label)
    axis.set_xscale("log", base=2)
    axis.set_xticks(counts, [str(n) for n in counts])
    axis.set_xlabel("threads (redis-benchmark: connections)")
    axis.set_ylabel("operations per second (get + set)")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    machine = report["machine"]
    axis.set_title(
        f"One store shared by N threads, pool of {POOL} ({machine['cpus']} CPUs, Python {machine['python']})"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=6000, help="operations per variant per round (all threads)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-chart", action="store_true")
    args = parser.parse_args()
    with RedisServer("threads") as server:
        report = measure(server.url, server.port, args.threads, args.rounds, args.ops)
    report["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    report["settings"] = {"rounds": args.rounds, "ops": args.ops, "pool": POOL}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "threads.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if not args.no_chart:
        chart(report, args.out / "threads.png")


if __name__ == "__main__":
    main()
