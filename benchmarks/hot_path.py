"""The hot path: ``RedisSessionStore.get``/``set`` against raw redis-py on the same server, interleaved, CPU and wall
time per call.

pytest-benchmark times one variant after the other, and on a shared machine its ratios move by 10-40% between runs;
here short rounds of every variant alternate in rotating order and each ratio is the median of the per-round ratios,
so the machine's drift cancels. CPU is this process's own (the client side: redis-py, hiredis, orjson and the store);
wall time includes the loopback round trip. The raw baseline decodes (get) or encodes (set) with orjson too, so the
ratio is what the store adds: key checks, the ``last_activity`` stamp, TTL rules, error translation, counters.

``--compare PATH`` also loads the fmredis package of another checkout (a ``git worktree`` of an earlier commit, say)
under another name and times its store in the same rounds: the before/after of a change to the hot path.

    python -m benchmarks.hot_path                  # about 20 s; writes benchmarks/results/hot_path.json
    git worktree add /tmp/fmredis-0.1 01716b9 && python -m benchmarks.hot_path --compare /tmp/fmredis-0.1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hiredis
import orjson

import fmredis
from benchmarks.sessions import SEED_SESSION
from tests.harness.servers import RedisServer

RESULTS = Path(__file__).resolve().parent / "results"
TTL = 1800


def load_other(checkout: Path) -> Any:
    """``checkout``'s fmredis package, imported as ``fmredis_compare`` (its own imports rewritten to that name)."""
    target = Path(tempfile.mkdtemp(prefix="fmredis-compare-"))
    package = target / "fmredis_compare"
    shutil.copytree(checkout / "fmredis", package)
    for source in package.rglob("*.py"):
        text = source.read_text(encoding="utf-8")
        source.write_text(re.sub(r"\bfmredis(?=[.\s])", "fmredis_compare", text), encoding="utf-8")
    spec = importlib.util.spec_from_file_location(
        "fmredis_compare", package / "__init__.py", submodule_search_locations=[str(package)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fmredis_compare"] = module  # before it runs: its own imports of fmredis_compare.* resolve to it
    spec.loader.exec_module(module)
    return module


class Floor:
    """The floor for Python: a plain socket, hiredis' packer and a ``hiredis.Reader``, nothing else."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.reader = hiredis.Reader()
        self.buffer = bytearray(65536)

    def call(self, *args: Any) -> Any:
        self.sock.sendall(hiredis.pack_command(args))
        reply = self.reader.gets()
        while reply is False:
            count = self.sock.recv_into(self.buffer)
            self.reader.feed(self.buffer, 0, count)
            reply = self.reader.gets()
        return reply


def variants(url: str, other: Any) -> dict[str, dict[str, Callable[[], object]]]:
    raw = fmredis.create_redis_client(url=url, environ={})
    store = fmredis.RedisSessionStore(fmredis.create_redis_client(url=url, environ={}), prefix="hot:store:")
    plain = fmredis.RedisSessionStore(
        fmredis.create_redis_client(url=url, environ={}), prefix="hot:plain:", pipelining=False
    )
    assert store.pipelined and not plain.pipelined
    # redis-py's own Connection, kept out of its pool: what is left of redis-py without Redis.execute_command.
    connection = fmredis.create_redis_client(url=url, environ={}).connection_pool.get_connection()
    floor = Floor(int(url.rsplit(":", 1)[1].split("/")[0]))
    raw.set("hot:raw:k", orjson.dumps(SEED_SESSION))
    store.set("k", SEED_SESSION)
    plain.set("k", SEED_SESSION)

    def pooled(*args: Any) -> Any:
        connection.send_packed_command(connection.pack_command(*args))
        return connection.read_response()

    get: dict[str, Callable[[], object]] = {
        "raw": lambda: orjson.loads(raw.get("hot:raw:k")),
        "store": lambda: store.get("k"),
        "store-rp": lambda: plain.get("k"),
        "pooled": lambda: orjson.loads(pooled("GET", "hot:raw:k")),
        "floor": lambda: orjson.loads(floor.call("GET", "hot:raw:k")),
    }
    put: dict[str, Callable[[], object]] = {
        "raw": lambda: raw.set("hot:raw:k", orjson.dumps(SEED_SESSION), ex=TTL),
        "store": lambda: store.set("k", SEED_SESSION, TTL),
        "store-rp": lambda: plain.set("k", SEED_SESSION, TTL),
        "pooled": lambda: pooled("SET", "hot:raw:k", orjson.dumps(SEED_SESSION), "EX", TTL),
        "floor": lambda: floor.call("SET", "hot:raw:k", orjson.dumps(SEED_SESSION), "EX", TTL),
    }
    if other is not None:
        old = other.RedisSessionStore(other.create_redis_client(url=url, environ={}), prefix="hot:other:")
        old.set("k", SEED_SESSION)
        get["compared"] = lambda: old.get("k")
        put["compared"] = lambda: old.set("k", SEED_SESSION, TTL)
    return {"get": get, "set": put}


def timed(call: Callable[[], object], calls: int) -> tuple[float, float]:
    """(CPU, wall) microseconds per call over ``calls`` calls."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        call()
    return (time.process_time() - cpu) / calls * 1e6, (time.perf_counter() - wall) / calls * 1e6


def measure(url: str, other: Any, rounds: int, calls: int) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for operation, calls_by_name in variants(url, other).items():
        names = list(calls_by_name)
        for name in names:
            timed(calls_by_name[name], calls)  # warm up
        cpu: dict[str, list[float]] = {name: [] for name in names}
        wall: dict[str, list[float]] = {name: [] for name in names}
        for round_number in range(rounds):
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                spent, elapsed = timed(calls_by_name[name], calls)
                cpu[name].append(spent)
                wall[name].append(elapsed)
        report[operation] = {
            name: {
                "cpu_us": round(statistics.median(cpu[name]), 2),
                "wall_us": round(statistics.median(wall[name]), 2),
                "cpu_vs_raw": round(statistics.median(a / b for a, b in zip(cpu[name], cpu["raw"], strict=True)), 3),
                "wall_vs_raw": round(statistics.median(a / b for a, b in zip(wall[name], wall["raw"], strict=True)), 3),
            }
            for name in names
        }
        if other is not None:
            report[operation]["store_vs_compared_cpu"] = round(
                statistics.median(a / b for a, b in zip(cpu["store"], cpu["compared"], strict=True)), 3
            )
    return report


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{'call':5} {'path':9} {'CPU us':>8} {'wall us':>8} {'CPU vs raw':>11} {'wall vs raw':>12}"]
    for operation, by_name in report.items():
        for name, figures in by_name.items():
            if isinstance(figures, dict):
                lines.append(
                    f"{operation:5} {name:9} {figures['cpu_us']:8.1f} {figures['wall_us']:8.1f} "
                    f"{figures['cpu_vs_raw']:10.3f}x {figures['wall_vs_raw']:11.3f}x"
                )
        if "store_vs_compared_cpu" in by_name:
            ratio = by_name["store_vs_compared_cpu"]
            lines.append(f"{operation:5} this tree's store vs the compared one, CPU: {ratio}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=200, help="calls per variant per round")
    parser.add_argument("--compare", type=Path, help="another checkout whose fmredis store to time alongside")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    other = load_other(args.compare) if args.compare else None
    with RedisServer("hot-path") as server:
        report = measure(server.url, other, args.rounds, args.calls)
    report["settings"] = {"rounds": args.rounds, "calls": args.calls, "compared": str(args.compare or "")}
    print(format_table({k: v for k, v in report.items() if k != "settings"}))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hot_path.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
