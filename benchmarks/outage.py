"""Outage figures for the resilience wrappers, with the library's default breaker and probe settings.

Against a redis-server of its own on 127.0.0.1 (AOF on, so acknowledged writes survive kill -9):

1. kill -9 under load: 8 threads write sessions through FallbackSessionStore(ResilientRedisSessionStore(...)); the
   server is killed for ``--down`` seconds and restarted on the same port. Reported: caller wait p50/p99/max during
   the outage, errors seen by callers, seconds from restart until the store noticed, sessions written back, lost.
2. SIGSTOP: a ResilientRedisSessionStore (socket timeout 1 s) while the server is frozen: waits per call before and
   after the breaker opens.

    python -m benchmarks.outage            # about 30 s; writes benchmarks/results/outage.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import redis

from fmredis import (
    FallbackSessionStore,
    RedisSessionStore,
    ResilientRedisSessionStore,
    StoreUnavailable,
    create_redis_client,
)
from tests.harness.servers import RedisServer

RESULTS = Path(__file__).resolve().parent / "results"


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"count": 0}
    ordered = sorted(samples)
    pick = lambda q: round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)  # noqa: E731
    return {"count": len(ordered), "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": round(1000 * ordered[-1], 2)}


def factory(url: str, socket_timeout: float = 5.0) -> Any:
    def build() -> RedisSessionStore:
        client = create_redis_client(
            url=url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout, environ={}
        )
        return RedisSessionStore(client, owns_client=True)

    return build


def kill_under_load(down: float, threads: int = 8) -> dict[str, Any]:
    with RedisServer(persistent=True) as server:
        store = FallbackSessionStore(ResilientRedisSessionStore(factory(server.url)))
        stop = threading.Event()
        outage = threading.Event()
        waits: list[float] = []
        errors: list[str] = []
        last: dict[str, int] = {}
        lock = threading.Lock()

        def writer(n: int) -> None:
            i = 0
            while not stop.is_set():
                key = f"w{n}-{i % 200}"
                started = time.perf_counter()
                try:
                    store.set(key, {"writer": n, "i": i})
                except Exception as exc:  # every error reaching a caller is reported
                    errors.append(repr(exc))
                    return
                took = time.perf_counter() - started
                with lock:
                    last[key] = i
                    if outage.is_set():
                        waits.append(took)
                i += 1
                time.sleep(0.01)

        workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        time.sleep(1.0)
        server.kill()
        outage.set()
        time.sleep(down)
        outage.clear()
        server.restart()
        restarted = time.monotonic()
        while store.degraded and time.monotonic() - restarted < 30:
            time.sleep(0.01)  # the writers' own calls probe the server
        noticed = time.monotonic() - restarted
        time.sleep(0.5)
        stop.set()
        for worker in workers:
            worker.join()
        raw = redis.Redis(host="127.0.0.1", port=server.port, protocol=2)
        stored = raw.mget([f"session:{key}" for key in last])
        lost = [k for k, p in zip(last, stored, strict=True) if p is None or f'"i":{last[k]},'.encode() not in p]
        raw.close()
        store.close()
        return {
            "outage_seconds": down,
            "caller_waits_during_outage": percentiles(waits),
            "errors_seen_by_callers": len(errors),
            "recovery_noticed_after_restart_s": round(noticed, 3),
            "recovery": store.last_recovery,
            "sessions_checked": len(last),
            "sessions_lost": len(lost),
            "lost_unsynced_evictions": store.lost_unsynced,
        }


def freeze(calls: int = 12) -> dict[str, Any]:
    with RedisServer() as server:
        store = ResilientRedisSessionStore(factory(server.url, socket_timeout=1.0))
        store.set("k", {"v": 1})
        server.freeze()
        closed_waits, open_waits = [], []
        try:
            for _ in range(calls):
                was_open = store.breaker.state == "open"
                started = time.perf_counter()
                with contextlib.suppress(StoreUnavailable):
                    store.get("k")
                (open_waits if was_open else closed_waits).append(time.perf_counter() - started)
        finally:
            server.thaw()
        store.close()
        return {
            "socket_timeout_s": 1.0,
            "waits_before_breaker_opened": percentiles(closed_waits),
            "waits_while_breaker_open": percentiles(open_waits),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--down", type=float, default=3.0, help="seconds the server stays killed (default 3)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    print(f"kill -9 under load ({args.down:.0f} s down, default breaker and probe settings) ...", flush=True)
    killed = kill_under_load(args.down)
    print(json.dumps(killed, indent=2))
    print("SIGSTOP with a 1 s socket timeout ...", flush=True)
    frozen = freeze()
    print(json.dumps(frozen, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "outage.json").write_text(json.dumps({"kill_under_load": killed, "freeze": frozen}, indent=2))
    print(f"wrote {args.out / 'outage.json'}")


if __name__ == "__main__":
    main()
