"""The stats counters' cost per call: each store with counters off and on, in interleaved rounds.

pytest-benchmark times one variant after the other, and on a shared machine the load changes between them by more
than the sub-microsecond difference measured here; alternating short rounds of each variant, in both orders, and
taking the median of the per-round ratios cancels that drift. The stores run without I/O (the Redis store on a client
that answers at once, and the memory store), so what is timed is the store's own CPU per call, where a counter's cost
would show; a loopback round trip (~100 us) would hide it.

    python -m benchmarks.counters          # about 20 s; writes benchmarks/results/counters.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import redis

from benchmarks.sessions import SEED_SESSION
from fmredis import InMemorySessionStore, ISessionStore, RedisSessionStore

RESULTS = Path(__file__).resolve().parent / "results"
KEY = "counted"
PAYLOAD = orjson.dumps(SEED_SESSION)


class CannedClient(redis.Redis):
    """A redis-py client that never connects: every command is answered at once with a stored session's bytes (a
    RedisSessionStore takes nothing but a redis.Redis or RedisCluster)."""

    def execute_command(self, *args: Any, **options: Any) -> bytes:
        return PAYLOAD


def stores(counters: bool) -> dict[str, ISessionStore]:
    memory = InMemorySessionStore(counters=counters)
    memory.set(KEY, SEED_SESSION)
    # pipelining=False: the canned client answers through execute_command, the path without a socket.
    return {"redis": RedisSessionStore(CannedClient(), counters=counters, pipelining=False), "memory": memory}


def operations(store: ISessionStore) -> dict[str, Callable[[], object]]:
    return {"get": lambda: store.get(KEY), "set": lambda: store.set(KEY, SEED_SESSION, 1800)}


def timed(call: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls


def measure(rounds: int, calls: int) -> dict[str, Any]:
    off, on = stores(False), stores(True)
    report: dict[str, Any] = {}
    for store_name in off:
        for op_name in operations(off[store_name]):
            without = operations(off[store_name])[op_name]
            with_counters = operations(on[store_name])[op_name]
            timed(without, calls), timed(with_counters, calls)  # warm up
            pairs = []
            for round_number in range(rounds):
                order = (without, with_counters) if round_number % 2 else (with_counters, without)
                first, second = timed(order[0], calls), timed(order[1], calls)
                pairs.append((first, second) if order[0] is without else (second, first))
            ratios = [b / a for a, b in pairs]
            deltas = [(b - a) * 1e9 for a, b in pairs]
            report[f"{store_name} {op_name}"] = {
                "off_us": round(statistics.median(a for a, _ in pairs) * 1e6, 3),
                "on_us": round(statistics.median(b for _, b in pairs) * 1e6, 3),
                "median_ratio": round(statistics.median(ratios), 4),
                "median_delta_ns": round(statistics.median(deltas), 1),
                "rounds": rounds,
                "calls_per_round": calls,
            }
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=5000, help="calls per round and variant")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    report = measure(args.rounds, args.calls)
    header = f"{'store, call':<14} {'off us':>8} {'on us':>8} {'ratio':>7} {'delta ns':>9}"
    print(f"{header}   (medians of {args.rounds} interleaved rounds)")
    for name, row in report.items():
        print(
            f"{name:<14} {row['off_us']:>8.3f} {row['on_us']:>8.3f} {row['median_ratio']:>7.3f} "
            f"{row['median_delta_ns']:>9.1f}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "counters.json").write_text(json.dumps({"python": sys.version.split()[0], **report}, indent=2) + "\n")
    print(f"wrote {args.out / 'counters.json'}")


if __name__ == "__main__":
    main()
