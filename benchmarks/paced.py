"""The headline comparison: logging cost of the old client vs fmredis at 100 requests/s (200 Redis operations/s).

Each "request" reads a session and writes it back, as in the design document's workload, through three paths against
the same redis-server, under the same production logging setup (INFO, JSON lines to a real file):

- raw redis-py: GET / SET EX with orjson, no wrapper (the baseline);
- before: the old ``RedisClient(BaseExternalClient)`` from ``legacy_client.py`` (six log records per first call of an
  operation in a request, two for repeats), stdlib json as the old code used;
- after: ``fmredis.RedisSessionStore``.

The paths run in interleaved segments (rotating order), so machine noise shows up in every path. CPU is the process's
CPU seconds per wall second; logging overhead is a path's CPU minus the baseline's.

    python -m benchmarks.paced                  # 20 s per path in 4 segments each, results under benchmarks/results
    python -m benchmarks.paced --smoke          # a few seconds, for CI
    REDIS_URL=redis://127.0.0.1:6379/0 python -m benchmarks.paced   # another server (keys under fmredis-paced:)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import redis

from benchmarks.legacy_client import RedisClient, production_logging, request_scope
from fmredis import RedisSessionStore, create_redis_client, diagnostics
from tests.harness.servers import RedisServer, TopologyError

RESULTS = Path(__file__).resolve().parent / "results"
PREFIX = "fmredis-paced:"
REQUESTS_PER_SECOND = 100
SESSIONS = 500
TTL = 1800
PATHS = ("raw redis-py", "before: logging client", "after: fmredis")

Request = Callable[[int, list[float]], None]


def _timed(latencies: list[float], fn: Callable[..., Any], *args: Any) -> Any:
    start = time.perf_counter()
    result = fn(*args)
    latencies.append(time.perf_counter() - start)
    return result


def make_requests(client: redis.Redis) -> dict[str, Request]:
    """One request function per path: read session ``n % SESSIONS``, update it, write it back; latencies per op."""
    legacy = RedisClient(client)
    store = RedisSessionStore(client, prefix=PREFIX + "after:")

    def raw(n: int, latencies: list[float]) -> None:
        key = f"{PREFIX}raw:{n % SESSIONS}"
        payload = _timed(latencies, client.get, key)
        session = orjson.loads(payload) if payload else {"user_id": f"user_{n}"}
        session["requests"] = n
        _timed(latencies, client.set, key, orjson.dumps(session), TTL)

    def before(n: int, latencies: list[float]) -> None:
        key = f"{PREFIX}before:{n % SESSIONS}"
        with request_scope():
            payload = _timed(latencies, legacy.get, key)
            session = json.loads(payload) if payload else {"user_id": f"user_{n}"}
            session["requests"] = n
            _timed(latencies, legacy.set, key, json.dumps(session), TTL)

    def after(n: int, latencies: list[float]) -> None:
        key = str(n % SESSIONS)
        session = _timed(latencies, store.get, key) or {"user_id": f"user_{n}"}
        session["requests"] = n
        _timed(latencies, store.set, key, session)

    return dict(zip(PATHS, (raw, before, after), strict=True))


def run_segment(request: Request, seconds: float, log_path: Path, counter: Any) -> dict[str, Any]:
    """Drive ``request`` at REQUESTS_PER_SECOND for ``seconds``; measure CPU, wall, records and log bytes."""
    latencies: list[float] = []
    interval = 1.0 / REQUESTS_PER_SECOND
    total = max(1, round(seconds * REQUESTS_PER_SECOND))
    records0, bytes0 = counter.count, log_path.stat().st_size
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for n in range(total):
        delay = wall0 + n * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        request(n, latencies)
    # Wait out the last interval so every segment's wall time is the paced duration, not shorter.
    delay = wall0 + total * interval - time.perf_counter()
    if delay > 0:
        time.sleep(delay)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {
        "requests": total,
        "ops": len(latencies),
        "wall_s": wall,
        "cpu_s": cpu,
        "records": counter.count - records0,
        "log_bytes": log_path.stat().st_size - bytes0,
        "latencies": latencies,
    }


def summarize(segments: list[dict[str, Any]]) -> dict[str, Any]:
    wall = sum(s["wall_s"] for s in segments)
    ops = sum(s["ops"] for s in segments)
    records = sum(s["records"] for s in segments)
    latencies = sorted(x for s in segments for x in s["latencies"])
    cpu_pcts = [100 * s["cpu_s"] / s["wall_s"] for s in segments]
    return {
        "ops": ops,
        "ops_per_s": ops / wall,
        "records_per_op": records / ops,
        "records_per_s": records / wall,
        "log_bytes_per_s": sum(s["log_bytes"] for s in segments) / wall,
        "cpu_pct": 100 * sum(s["cpu_s"] for s in segments) / wall,
        "cpu_pct_segments": [round(p, 3) for p in cpu_pcts],
        "cpu_us_per_op": 1e6 * sum(s["cpu_s"] for s in segments) / ops,
        "p50_us": 1e6 * latencies[len(latencies) // 2],
        "p99_us": 1e6 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


@contextmanager
def redis_url_for_run(name: str = "paced") -> Iterator[str]:
    """REDIS_URL when set, else a throwaway redis-server on 127.0.0.1 (the harness's, named ``name``), stopped
    afterwards."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    try:
        server = RedisServer(name).start()
    except TopologyError as exc:
        sys.exit(f"{exc}; or set REDIS_URL")
    try:
        yield server.url
    finally:
        server.close()


def run(
    url: str,
    *,
    seconds: float = 20.0,
    segments: int = 4,
    out_dir: Path = RESULTS,
    stderr: bool = False,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the comparison against ``url``; writes paced.json and paced.png to ``out_dir`` and returns the results."""
    out_dir.mkdir(parents=True, exist_ok=True)
    client = create_redis_client(url=url, environ={})
    requests = make_requests(client)
    log_path = out_dir / "paced-app.log"
    log_path.write_text("")
    per_path: dict[str, list[dict[str, Any]]] = {name: [] for name in PATHS}
    segment_seconds = seconds / segments
    try:
        with production_logging(str(log_path), stderr=stderr) as counter:
            for name in PATHS:  # warm up connections and keys, outside the measurement
                for n in range(SESSIONS):
                    requests[name](n, [])
            order = list(PATHS)
            step, steps = 0, segments * len(PATHS)
            for _ in range(segments):
                for name in order:
                    step += 1
                    segment = run_segment(requests[name], segment_seconds, log_path, counter)
                    per_path[name].append(segment)
                    progress(
                        f"[{step:>2}/{steps}] {name:<24} {segment['ops']:>5} ops in {segment['wall_s']:.1f} s, "
                        f"CPU {100 * segment['cpu_s'] / segment['wall_s']:5.2f}%, {segment['records']:>5} log records"
                    )
                order = order[1:] + order[:1]  # rotate so no path always runs first
        report = diagnostics(client)
    finally:
        for key in client.scan_iter(match=PREFIX + "*", count=1000):
            client.unlink(key)
        client.close()
    results: dict[str, Any] = {name: summarize(segs) for name, segs in per_path.items()}
    baseline = results[PATHS[0]]["cpu_pct"]
    for summary in results.values():
        summary["logging_overhead_pct"] = summary["cpu_pct"] - baseline
    before, after = results[PATHS[1]], results[PATHS[2]]
    document = {
        "workload": {
            "requests_per_s": REQUESTS_PER_SECOND,
            "ops_per_request": 2,
            "seconds_per_path": seconds,
            "segments_per_path": segments,
            "log_handlers": "file" + (" + stderr" if stderr else ""),
        },
        "paths": results,
        "before_after_cpu_ratio": before["cpu_pct"] / after["cpu_pct"],
        "before_after_overhead_ratio": (
            before["logging_overhead_pct"] / after["logging_overhead_pct"]
            if after["logging_overhead_pct"] > 0
            else None
        ),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
        },
        "diagnostics": report,
    }
    (out_dir / "paced.json").write_text(json.dumps(document, indent=2))
    chart(document, out_dir / "paced.png")
    return document


def format_table(document: dict[str, Any]) -> str:
    header = (
        f"{'path':<24} {'ops/s':>7} {'rec/op':>7} {'rec/s':>7} {'logKB/s':>8} {'CPU %':>7} {'(range)':>13} "
        f"{'overhead':>9} {'us CPU/op':>10} {'p50 us':>8} {'p99 us':>8}"
    )
    lines = [header, "-" * len(header)]
    for name, r in document["paths"].items():
        spread = f"{min(r['cpu_pct_segments']):.2f}-{max(r['cpu_pct_segments']):.2f}"
        lines.append(
            f"{name:<24} {r['ops_per_s']:>7.1f} {r['records_per_op']:>7.2f} {r['records_per_s']:>7.1f} "
            f"{r['log_bytes_per_s'] / 1024:>8.1f} {r['cpu_pct']:>7.2f} {spread:>13} "
            f"{r['logging_overhead_pct']:>+8.2f}% "
            f"{r['cpu_us_per_op']:>10.1f} {r['p50_us']:>8.1f} {r['p99_us']:>8.1f}"
        )
    ratio = document["before_after_overhead_ratio"]
    lines.append(
        f"before/after CPU ratio: {document['before_after_cpu_ratio']:.2f}x; logging-overhead ratio: "
        + (f"{ratio:.1f}x" if ratio else "after's overhead is within noise of the baseline (<= 0)")
    )
    return "\n".join(lines)


def chart(document: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(document["paths"])
    cpu = [document["paths"][n]["cpu_pct"] for n in names]
    records = [document["paths"][n]["records_per_s"] for n in names]
    colors = ["#888888", "#d9534f", "#2e7d32"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.bar(names, cpu, color=colors)
    left.set_title("Process CPU, % of one core")
    right.bar(names, records, color=colors)
    right.set_title("Log records per second")
    for axis, values, fmt in ((left, cpu, "{:.2f}%"), (right, records, "{:.0f}")):
        for i, value in enumerate(values):
            axis.annotate(fmt.format(value), (i, value), ha="center", va="bottom")
        axis.tick_params(axis="x", labelsize=8)
    w = document["workload"]
    figure.suptitle(
        f"{w['requests_per_s']} requests/s x {w['ops_per_request']} Redis ops, {w['seconds_per_path']:.0f} s per path, "
        f"log handlers: {w['log_handlers']} "
        f"({document['machine']['cpus']} CPUs, Python {document['machine']['python']})"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per path (default 20)")
    parser.add_argument("--segments", type=int, default=4, help="interleaved segments per path (default 4)")
    parser.add_argument("--smoke", action="store_true", help="a short run (2 s per path in 2 segments)")
    parser.add_argument("--stderr", action="store_true", help="also log to stderr, as some deployments do")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    seconds, segments = (2.0, 2) if args.smoke else (args.seconds, args.segments)
    with redis_url_for_run() as url:
        document = run(url, seconds=seconds, segments=segments, out_dir=args.out, stderr=args.stderr)
    print()
    print(format_table(document))
    print(f"\nwrote {args.out / 'paced.json'} and {args.out / 'paced.png'}")


if __name__ == "__main__":
    main()
