"""What callers see when the Redis master behind Sentinel changes, with the library's default settings.

Against a Sentinel setup of its own on 127.0.0.1 (tests/harness/sentinel.py: a master, a replica, three sentinels with
down-after-milliseconds 1000), 4 writer threads each loop: ``set`` a new session key, ``get`` it back, pause 5 ms. Two
faults, each once through ``ResilientRedisSessionStore(lambda: RedisSessionStore(client))`` and once through a bare
``RedisSessionStore(client)``:

1. ``sentinel_failover``: SENTINEL FAILOVER (a planned switch); the old master is demoted as soon as every sentinel
   names the new one (the harness does what the sentinels would do a few seconds later).
2. ``sigkill_master``: SIGKILL of the master; the sentinels elect the replica. The dead master is restarted as a
   replica afterwards, for the next run.

Reported per run, times in seconds from the fault: when every sentinel named a new (writable) master; the first
successful write started after the fault, and the first one started after the new master was named (the store
serving the new master); the longest gap between successful writes; errors seen by callers, by type (and the
redis-py error or "breaker open" behind a StoreUnavailable); acknowledged writes that the master does not hold
afterwards; caller wait p50/p99/max of the calls started between the fault and that first write on the new master.

    python -m benchmarks.failover            # about 40 s; writes benchmarks/results/failover.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.outage import percentiles  # the same caller-wait summary as the outage figures
from fmredis import RedisSessionStore, ResilientRedisSessionStore, create_redis_client, diagnostics
from tests.harness.loads import WriteLoad, unreadable
from tests.harness.sentinel import SentinelSetup

RESULTS = Path(__file__).resolve().parent / "results"
FAULTS = ("sentinel_failover", "sigkill_master")
STORES = ("resilient", "bare")


def run(setup: SentinelSetup, fault: str, wrapper: str, args: argparse.Namespace) -> dict[str, Any]:
    setup.wait_ready()
    setup.flush()
    client = create_redis_client(
        mode="sentinel", sentinels=setup.sentinels, sentinel_master=setup.master_name, environ={}
    )
    store: RedisSessionStore | ResilientRedisSessionStore
    if wrapper == "resilient":
        store = ResilientRedisSessionStore(lambda: RedisSessionStore(client))
    else:
        store = RedisSessionStore(client)
    with WriteLoad(store, threads=args.threads, pause=args.pause) as load:
        time.sleep(args.warmup)
        if fault == "sentinel_failover":
            fault_at = time.monotonic()
            new_master_after = setup.failover()  # then (untimed) demotes the old master and waits until healthy
        else:
            old = setup.kill_master()
            fault_at = time.monotonic()
            setup.wait_for_new_master(old, fault_at + 30)
            new_master_after = time.monotonic() - fault_at
        switched = time.monotonic()
        serving = load.wait_for_success_after(switched, fault_at + 30)
        time.sleep(args.settle)
    lost = unreadable(setup.master_address(), load.acked)
    if fault == "sigkill_master":
        setup.restart_killed_master()
    client.close()
    client.connection_pool.disconnect()
    first = load.first_success_started_after(fault_at)
    end = serving if serving is not None else switched
    counts, samples = load.errors_by_type()
    lost_when = load.acknowledged_between(lost, fault_at)
    return {
        "new_master_after_s": round(new_master_after, 3),
        "first_success_after_fault_s": None if first is None else round(first - fault_at, 3),
        "serving_new_master_after_s": None if serving is None else round(serving - fault_at, 3),
        "longest_gap_between_successful_writes_s": round(load.longest_gap(fault_at), 3),
        "errors_seen_by_callers": len(load.errors),
        "errors_by_type": counts,
        "error_samples": samples,
        "acknowledged_writes": len(load.acked),
        "lost_writes": len(lost),
        "lost_acknowledged_between_s": None if lost_when is None else [round(when, 3) for when in lost_when],
        "read_mismatches": len(load.mismatches),
        "caller_wait_during_fault": percentiles([e - s for s, e in load.calls if fault_at <= s <= end]),
        "rebuilds": store.rebuilds if isinstance(store, ResilientRedisSessionStore) else None,
    }


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    header = (
        f"{'fault':<18} {'store':<9} {'new master':>10} {'1st ok':>7} {'serving':>7} {'max gap':>7} {'errors':>6} "
        f"{'acked':>6} {'lost':>5} {'wait p50/p99/max ms':>22}"
    )
    lines = [header, "-" * len(header)]
    for fault, by_store in results.items():
        for wrapper, r in by_store.items():
            wait = r["caller_wait_during_fault"]
            waits = f"{wait['p50_ms']:.1f}/{wait['p99_ms']:.0f}/{wait['max_ms']:.0f}" if wait["count"] else "-"
            lines.append(
                f"{fault:<18} {wrapper:<9} {_seconds(r['new_master_after_s']):>10} "
                f"{_seconds(r['first_success_after_fault_s']):>7} {_seconds(r['serving_new_master_after_s']):>7} "
                f"{_seconds(r['longest_gap_between_successful_writes_s']):>7} {r['errors_seen_by_callers']:>6} "
                f"{r['acknowledged_writes']:>6} {r['lost_writes']:>5} {waits:>22}"
            )
    lines.append("")
    lines.append("seconds from the fault; 1st ok: first successful write started after the fault; serving: first one")
    lines.append("started after every sentinel named the new master; max gap: longest time without a successful write")
    for fault, by_store in results.items():
        for wrapper, r in by_store.items():
            if r["errors_by_type"]:
                lines.append(f"errors, {fault} / {wrapper}: {r['errors_by_type']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for failover.json (default %(default)s)")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--pause", type=float, default=0.005, help="seconds each writer pauses between rounds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before the fault")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds of load after the store serves again")
    args = parser.parse_args()
    started = time.monotonic()
    results: dict[str, dict[str, dict[str, Any]]] = {fault: {} for fault in FAULTS}
    with SentinelSetup("fmbench") as setup:
        probe = create_redis_client(
            mode="sentinel", sentinels=setup.sentinels, sentinel_master=setup.master_name, environ={}
        )
        versions = diagnostics(probe)["versions"]
        probe.close()
        probe.connection_pool.disconnect()
        for fault in FAULTS:
            for wrapper in STORES:
                print(f"{fault} through {wrapper} store ...", flush=True)
                results[fault][wrapper] = run(setup, fault, wrapper, args)
    print(table(results))
    report = {
        **results,
        "settings": {
            "threads": args.threads,
            "pause_s": args.pause,
            "warmup_s": args.warmup,
            "settle_s": args.settle,
            "sentinel_down_after_ms": 1000,
            "client": "create_redis_client defaults (socket_timeout 10 s, retry_attempts 1, pool 20)",
            "resilient": "ResilientRedisSessionStore defaults (3 attempts, deadline 5 s, breaker 5 failures / 5 s)",
        },
        "versions": versions,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "failover.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'failover.json'} ({report['elapsed_s']} s)")


if __name__ == "__main__":
    main()
