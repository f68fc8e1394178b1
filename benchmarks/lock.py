"""Distributed locks: fmredis's ``RedisLock`` against redis-py's ``redis.lock.Lock`` (``client.lock(name, timeout=10)``)
and python-redis-lock's ``redis_lock.Lock(client, name, expire=10)``, all on one redis-server of this script's own
(127.0.0.1, no persistence) and one ``create_redis_client`` client per process. Two parts:

1. ``uncontended``: ``--cycles`` acquire + release of a lock nobody else wants, one thread, each variant in a worker
   process of its own (so that one variant's background thread cannot run during another's rounds), one at a time in
   ``--rounds`` interleaved rounds (rotating order; figures are medians of the rounds, each ratio the median of the
   per-round ratios), after an unrecorded warm-up (redis-py's ``Script`` sends ``SCRIPT LOAD`` on first use). fmredis
   twice: ``auto_renew=False`` and the default ``auto_renew=True`` (every acquisition is scheduled on the renewal
   thread). Wall and CPU microseconds per cycle: the process's during the rounds; the process's outside them, from the
   first round until ``DRAIN`` seconds after the last (what a background thread does later for the cycles: fmredis's
   renewal thread wakes ttl/3 after each acquisition, held or not); redis-server's (``INFO cpu``); commands per cycle
   counted by the server (``INFO commandstats`` before and after each timed round: every command executed, those a
   script runs included); and round trips per cycle, counted exactly in a separate pass of ``COUNT_CYCLES`` cycles
   under ``MONITOR``, which tells the commands a client sent (one request and one reply each: none of these variants
   pipelines) from those a Lua script ran.
2. ``contention``: 2 and 4 worker processes (multiprocessing, spawn: no shared GIL) contending for one lock, for
   ``--seconds`` per variant and process count, interleaved in the same way. A worker loops: acquire, hold ``--hold``
   seconds, release; then it waits until another worker has acquired (a shared counter) before it asks again, so a
   release always hands the lock to a worker already waiting (no barging: the releaser never re-takes its own lock).
   A hand-off is the time from the holder's ``release()`` call to the next holder's ``acquire()`` returning, where
   the next holder's ``acquire()`` started before that ``release()`` call (``time.monotonic_ns``: CLOCK_MONOTONIC,
   one clock for every process on the machine). Every variant keeps its defaults: redis-py's waiter sleeps 0.1 s
   between attempts (``sleep=0.1``), python-redis-lock's blocks in ``BLPOP`` on a signal list, fmredis's in ``BLPOP``
   on a wake list of its own (FIFO queue). fmredis with its defaults (``auto_renew=True``). Also counted: two
   holders at once (an acquisition returning before the previous holder's release call: must be 0) and errors.

    python -m benchmarks.lock            # about 60 s; writes benchmarks/results/lock.json
    python -m benchmarks.lock --quick    # 5 short rounds uncontended, 1 round of 1 s per contention phase (about 12 s)
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import multiprocessing
import os
import queue
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import redis
import redis_lock

import fmredis
from fmredis import HeldLock, RedisClient, RedisLock, create_redis_client, diagnostics
from tests.harness.servers import RedisServer

RESULTS = Path(__file__).resolve().parent / "results"
FM, FM_NO_RENEW, REDIS_PY, PY_REDIS_LOCK = "fmredis", "fmredis auto_renew=False", "redis-py Lock", "python-redis-lock"
UNCONTENDED = (FM_NO_RENEW, FM, REDIS_PY, PY_REDIS_LOCK)
CONTENDED = (FM, REDIS_PY, PY_REDIS_LOCK)
PROCESSES = (2, 4)
TTL = 10  # every variant's lease, seconds (python-redis-lock's expire is an int)
WAIT_LIMIT = 10  # a deadlock guard on every blocking acquire: a timeout is reported as an error, never waited out
COUNT_CYCLES = 20  # cycles per variant under MONITOR
WARMUP_CYCLES = 20  # per lock, unrecorded, in each worker before anything is measured
DRAIN = TTL / 3 + 0.5  # after the last timed round: fmredis's renewal thread handles each lock ttl/3 after it was taken
WORKERS = max(len(UNCONTENDED), *PROCESSES)
WAIT_TICK = 0.0002  # a releaser's poll of the shared counter while it waits for another worker to take the lock
BEGIN, END = "fmredis-bench-lock-begin", "fmredis-bench-lock-end"

Acquire = Callable[[], Any]
Release = Callable[[Any], Any]


class Variant(NamedTuple):
    acquire: Acquire  # returns what release takes; raises on a timeout
    release: Release
    lock: Any


def variants(client: RedisClient, prefix: str, names: tuple[str, ...]) -> dict[str, Variant]:
    """Each named variant's lock on ``client`` (a name of its own under ``prefix``), behind one acquire/release."""
    made: dict[str, Variant] = {}
    for variant in names:
        name = f"{prefix}{variant.replace(' ', '-')}"
        if variant in (FM, FM_NO_RENEW):
            fm = RedisLock(client, name, ttl=float(TTL), auto_renew=variant == FM)
            made[variant] = Variant(functools.partial(fm.acquire, timeout=WAIT_LIMIT), HeldLock.release, fm)
        elif variant == REDIS_PY:
            made[variant] = _checked(client.lock(name, timeout=TTL), {"blocking_timeout": WAIT_LIMIT})
        else:
            made[variant] = _checked(redis_lock.Lock(client, name, expire=TTL), {"timeout": WAIT_LIMIT})
    return made


def _checked(lock: Any, wait: dict[str, Any]) -> Variant:
    """A lock whose acquire() returns False on a timeout (redis-py, python-redis-lock)."""

    def acquire() -> None:
        if not lock.acquire(**wait):
            raise TimeoutError("acquire timed out")

    return Variant(acquire, lambda _: lock.release(), lock)


# -- the worker processes -------------------------------------------------------------------------------------------


def worker(index: int, url: str, orders: Any, results: Any, turns: Any) -> None:
    """Child process (spawn): one client; ``UNCONTENDED[index]``'s lock of its own and one lock per contended variant.
    Answers each order on ``orders`` (see `Workers`) with one message on ``results``."""
    try:
        client = create_redis_client(url=url, environ={})
        own = variants(client, "bench-uncontended-", (UNCONTENDED[index],))[UNCONTENDED[index]]
        contended = variants(client, "bench-contended-", CONTENDED)
        for call in (own, *contended.values()):
            for _ in range(WARMUP_CYCLES):  # connection made, scripts loaded
                call.release(call.acquire())
        results.put(("ready", index, None))
        cpu_since, cpu_in_rounds, cycles_since = 0, 0.0, 0
        while (order := orders.get()) is not None:
            kind, *details = order
            if kind == "cycles":
                (cycles,) = details
                cpu_since = cpu_since or time.process_time_ns()
                wall_us, cpu_us = cycle(own, cycles)
                results.put(("done", index, (wall_us, cpu_us)))
                cpu_in_rounds += cpu_us * cycles
                cycles_since += cycles
            elif kind == "count":
                client.echo(BEGIN)
                cycle(own, COUNT_CYCLES)
                client.echo(END)
                results.put(("done", index, None))
            elif kind == "drain":
                time.sleep(details[0])  # whatever a background thread still does for the cycles, it does by now
                outside = (time.process_time_ns() - cpu_since) / 1000 - cpu_in_rounds
                results.put(("done", index, outside / max(1, cycles_since)))
            else:
                variant, start_ns, deadline_ns, hold = details
                results.put(("done", index, contend(contended, variant, start_ns, deadline_ns, hold, turns)))
        client.close()
    except BaseException as exc:  # the parent reports it: a dead worker must not pass for a slow one
        results.put(("failed", index, repr(exc)))


def cycle(call: Variant, cycles: int) -> tuple[float, float]:
    """``cycles`` acquire + release: (wall, CPU of this process, all its threads) microseconds per cycle."""
    cpu, wall = time.process_time_ns(), time.perf_counter_ns()
    for _ in range(cycles):
        call.release(call.acquire())
    return (time.perf_counter_ns() - wall) / cycles / 1000, (time.process_time_ns() - cpu) / cycles / 1000


def contend(
    contended: dict[str, Variant], variant: str, start_ns: int, deadline_ns: int, hold: float, turns: Any
) -> dict[str, Any]:
    """Acquire, hold, release until the deadline; after each release wait for another worker's acquisition.
    Records (pid, acquire called, acquire returned, release called) per acquisition in ns, errors by type, and the
    fmredis lock's stats() over the phase."""
    call, clock, pid = contended[variant], time.monotonic_ns, os.getpid()
    stats = call.lock.stats() if variant == FM else {}
    records: list[tuple[int, int, int, int]] = []
    errors: Counter[str] = Counter()
    time.sleep(max(0.0, (start_ns - clock()) / 1e9))
    while clock() < deadline_ns:
        called = clock()
        try:
            held = call.acquire()
        except Exception as exc:
            errors[type(exc).__name__] += 1
            continue
        acquired = clock()
        with turns.get_lock():
            turns.value += 1
            mine = turns.value
        time.sleep(hold)
        released = clock()
        call.release(held)
        records.append((pid, called, acquired, released))
        while turns.value == mine and clock() < deadline_ns:
            time.sleep(WAIT_TICK)
    if variant == FM:
        stats = {key: value - stats.get(key, 0) for key, value in call.lock.stats().items()}
    return {"records": records, "errors": dict(errors), "stats": stats}


class Workers:
    """``count`` spawned worker processes, each with its own order queue, one results queue and the shared counter.

    Orders: ``("cycles", n)`` -> (wall, CPU) us per cycle of its uncontended lock; ``("count",)`` -> None, after
    ``COUNT_CYCLES`` cycles between the two ECHO markers; ``("drain", seconds)`` -> its CPU us per timed cycle outside
    the rounds; ``("contend", variant, start_ns, deadline_ns, hold)`` -> `contend`'s records; ``None``: exit.
    """

    def __init__(self, url: str, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.turns = context.Value("q", 0)
        self.results = context.Queue()
        self.orders = [context.Queue() for _ in range(count)]
        self.processes = [
            context.Process(target=worker, args=(n, url, self.orders[n], self.results, self.turns), daemon=True)
            for n in range(count)
        ]
        for process in self.processes:
            process.start()
        self.collect(count, "ready", 60)

    def ask(self, indexes: range | list[int], order: tuple[Any, ...], timeout: float) -> list[Any]:
        """Send ``order`` to each worker in ``indexes``; their answers, by worker."""
        for index in indexes:
            self.orders[index].put(order)
        return self.collect(len(indexes), "done", timeout)

    def collect(self, count: int, kind: str, timeout: float) -> list[Any]:
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            try:
                what, index, payload = self.results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"{count - len(got)} worker(s) sent no {kind!r} in {timeout:g} s") from None
            if what == "failed":
                raise RuntimeError(f"worker {index} failed: {payload}")
            got.append((index, payload))
        return [payload for _, payload in sorted(got, key=lambda answer: answer[0])]

    def close(self) -> None:
        for orders in self.orders:
            orders.put(None)
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(5)


# -- 1. uncontended -------------------------------------------------------------------------------------------------


def _server(probe: redis.Redis) -> tuple[int, float]:
    """Commands the server has executed so far (those scripts ran included, INFO's own not), and its CPU seconds."""
    stats, cpu = probe.info("commandstats"), probe.info("cpu")
    commands = sum(int(s["calls"]) for name, s in stats.items() if name != "cmdstat_info")
    return commands, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def round_trips(workers: Workers, index: int, probe: redis.Redis) -> dict[str, Any]:
    """``COUNT_CYCLES`` cycles of worker ``index`` under MONITOR: the commands clients sent and those scripts ran, per
    cycle, by name."""
    sent: Counter[str] = Counter()
    scripted: Counter[str] = Counter()
    with probe.monitor() as monitor:
        workers.ask([index], ("count",), 30)
        inside = False
        while True:
            command = monitor.next_command()
            text = command["command"]
            if text in (f"ECHO {BEGIN}", f"ECHO {END}"):
                if inside:
                    break
                inside = True
            elif inside:
                (scripted if command["client_type"] == "lua" else sent)[text.split(" ", 1)[0].upper()] += 1
    return {
        "round_trips_per_cycle": round(sum(sent.values()) / COUNT_CYCLES, 2),
        "sent_per_cycle": {name: round(n / COUNT_CYCLES, 2) for name, n in sorted(sent.items())},
        "scripted_per_cycle": {name: round(n / COUNT_CYCLES, 2) for name, n in sorted(scripted.items())},
    }


def uncontended(workers: Workers, probe: redis.Redis, rounds: int, cycles: int) -> dict[str, Any]:
    """Worker n runs ``UNCONTENDED[n]``, one worker at a time, in rotating order."""
    counted = {name: round_trips(workers, index, probe) for index, name in enumerate(UNCONTENDED)}
    figures: dict[str, dict[str, list[float]]] = {
        name: {"wall": [], "cpu": [], "commands": [], "server_cpu": []} for name in UNCONTENDED
    }
    order = list(range(len(UNCONTENDED)))
    for round_number in range(rounds):
        shift = round_number % len(order)
        for index in order[shift:] + order[:shift]:
            commands, server_cpu = _server(probe)
            ((wall, cpu),) = workers.ask([index], ("cycles", cycles), 60)
            commands_after, server_cpu_after = _server(probe)
            mine = figures[UNCONTENDED[index]]
            mine["wall"].append(wall)
            mine["cpu"].append(cpu)
            mine["commands"].append((commands_after - commands) / cycles)
            mine["server_cpu"].append(1e6 * (server_cpu_after - server_cpu) / cycles)
    # The process's CPU outside its rounds, from its first until DRAIN after its last, per timed cycle: what a
    # background thread spends on the cycles later (fmredis's renewal thread: once per lock taken, ttl/3 after it).
    background = workers.ask(range(len(UNCONTENDED)), ("drain", DRAIN), DRAIN + 30)
    base = figures[REDIS_PY]["wall"]
    return {
        name: {
            "wall_us": round(statistics.median(f["wall"]), 1),
            "cpu_us": round(statistics.median(f["cpu"]), 1),
            "background_cpu_us": round(background[index], 1),
            "redis_cpu_us": round(statistics.median(f["server_cpu"]), 1),
            "wall_vs_redis_py": round(statistics.median(a / b for a, b in zip(f["wall"], base, strict=True)), 3),
            "wall_us_rounds": [round(w, 1) for w in f["wall"]],
            "commands_per_cycle": round(statistics.median(f["commands"]), 2),
            **counted[name],
        }
        for index, (name, f) in enumerate(figures.items())
    }


# -- 2. contention --------------------------------------------------------------------------------------------------


def quantiles_ms(samples: list[float]) -> dict[str, Any]:
    """count, p50/p90/max in milliseconds of durations in seconds."""
    if not samples:
        return {"count": 0}
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"count": len(ordered), "p50_ms": pick(0.5), "p90_ms": pick(0.9), "max_ms": round(1000 * ordered[-1], 3)}


def handoffs(records: list[tuple[int, int, int, int]]) -> tuple[list[float], int, int]:
    """Hand-off seconds (release call -> a waiting worker's acquire returning), two-holder overlaps, idle gaps."""
    ordered = sorted(records, key=lambda record: record[2])
    samples, overlaps, idle = [], 0, 0
    for previous, following in itertools.pairwise(ordered):
        if following[2] < previous[3]:
            overlaps += 1  # returned while the previous holder had not yet called release(): two holders
        elif following[1] < previous[3]:
            samples.append((following[2] - previous[3]) / 1e9)
        else:
            idle += 1  # nobody was waiting when it was released: not a hand-off
    return samples, overlaps, idle


def phase(workers: Workers, variant: str, count: int, seconds: float, hold: float) -> dict[str, Any]:
    """Workers 0 .. count-1 contending for ``variant``'s lock for ``seconds``."""
    workers.turns.value = 0
    start_ns = time.monotonic_ns() + 100_000_000  # every worker has its order by then
    deadline_ns = start_ns + int(seconds * 1e9)
    done = workers.ask(range(count), ("contend", variant, start_ns, deadline_ns, hold), seconds + 3 * WAIT_LIMIT)
    records = [record for part in done for record in part["records"]]
    samples, overlaps, idle = handoffs(records)
    errors: Counter[str] = sum((Counter(part["errors"]) for part in done), Counter())
    stats: Counter[str] = sum((Counter(part["stats"]) for part in done), Counter())
    span = (max(r[3] for r in records) - start_ns) / 1e9 if records else seconds
    return {
        "acquisitions": len(records),
        "acquisitions_per_s": round(len(records) / span, 1),
        "handoff": quantiles_ms(samples),
        "overlaps": overlaps,
        "idle": idle,
        "errors": dict(errors),
        "fmredis_stats": dict(stats),
        "_samples": samples,
    }


def contention(workers: Workers, rounds: int, seconds: float, hold: float) -> dict[str, Any]:
    runs: dict[tuple[int, str], list[dict[str, Any]]] = {(n, v): [] for n in PROCESSES for v in CONTENDED}
    for round_number in range(rounds):
        for count in PROCESSES:
            shift = round_number % len(CONTENDED)
            for variant in CONTENDED[shift:] + CONTENDED[:shift]:
                print(f"round {round_number + 1}/{rounds}: {count} processes, {variant} ...", flush=True)
                runs[count, variant].append(phase(workers, variant, count, seconds, hold))
    report: dict[str, Any] = {}
    for (count, variant), by_round in runs.items():
        samples = [s for run in by_round for s in run.pop("_samples")]
        stats: Counter[str] = sum((Counter(run["fmredis_stats"]) for run in by_round), Counter())
        errors: Counter[str] = sum((Counter(run["errors"]) for run in by_round), Counter())
        report.setdefault(str(count), {})[variant] = {
            "handoff": quantiles_ms(samples),
            "handoff_p50_ms_rounds": [run["handoff"].get("p50_ms") for run in by_round],
            "acquisitions": sum(run["acquisitions"] for run in by_round),
            "acquisitions_per_s_median": statistics.median(run["acquisitions_per_s"] for run in by_round),
            "overlaps": sum(run["overlaps"] for run in by_round),
            "idle": sum(run["idle"] for run in by_round),
            "errors": dict(errors),
            **({"fmredis_stats": dict(stats)} if variant == FM else {}),
            "rounds": by_round,
        }
    return report


# -- report ---------------------------------------------------------------------------------------------------------


def targets(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    free = report["uncontended"]
    trips = [free[name]["round_trips_per_cycle"] for name in (FM_NO_RENEW, FM)]
    result = {
        f"fmredis round trips per uncontended acquire + release ({FM_NO_RENEW} / default)": {
            "target": 2,
            "measured": " / ".join(str(t) for t in trips),
            "met": all(t <= 2 for t in trips),
        },
    }
    for name in (FM_NO_RENEW, FM):
        ratio = free[name]["wall_vs_redis_py"]
        result[f"{name} uncontended acquire + release, time vs redis-py Lock"] = {
            "target": "<= 1.0",
            "measured": ratio,
            "met": ratio <= 1.0,
        }
    for count, variants in report["contention"].items():
        p50 = variants[FM]["handoff"].get("p50_ms")
        result[f"fmredis median hand-off, {count} processes (ms)"] = {
            "target": 2.0,
            "measured": p50,
            "met": p50 is not None and p50 <= 2.0,
        }
    return result


def table(report: dict[str, Any]) -> str:
    header = (
        f"{'uncontended acquire + release':<26} {'wall us':>7} {'vs redis-py':>11} {'cpu us':>6} {'bg us':>6} "
        f"{'redis us':>8} {'round trips':>11} {'commands':>8}  sent per cycle (scripts ran)"
    )
    lines = [header, "-" * len(header)]
    for name, f in report["uncontended"].items():
        sent = " ".join(f"{k} {v:g}" for k, v in f["sent_per_cycle"].items())
        ran = " ".join(f"{k} {v:g}" for k, v in f["scripted_per_cycle"].items())
        lines.append(
            f"{name:<26} {f['wall_us']:>7} {f['wall_vs_redis_py']:>10}x {f['cpu_us']:>6} "
            f"{f['background_cpu_us']:>6} {f['redis_cpu_us']:>8} {f['round_trips_per_cycle']:>11} "
            f"{f['commands_per_cycle']:>8}  {sent} ({ran})"
        )
    lines.append("")
    header = (
        f"{'hand-off under contention':<30} {'procs':>5} {'hand-offs':>9} {'p50 ms':>8} {'p90 ms':>8} "
        f"{'max ms':>8} {'acq/s':>7} {'overlaps':>8} {'errors':>6}"
    )
    lines += [header, "-" * len(header)]
    for count, variants in report["contention"].items():
        for name, f in variants.items():
            h = f["handoff"]
            lines.append(
                f"{name:<30} {count:>5} {h['count']:>9} {h.get('p50_ms', '-'):>8} {h.get('p90_ms', '-'):>8} "
                f"{h.get('max_ms', '-'):>8} {f['acquisitions_per_s_median']:>7} {f['overlaps']:>8} "
                f"{sum(f['errors'].values()):>6}"
            )
    s = report["settings"]
    lines += [
        f"uncontended: each variant in a worker process of its own, medians of {s['rounds']} interleaved rounds of "
        f"{s['cycles']} cycles; cpu us: the process's",
        f"CPU per cycle during the rounds; bg us: its CPU outside them, from the first until {DRAIN:.1f} s after the "
        "last, per cycle (what",
        "background threads do later for the cycles); redis us: redis-server's CPU per cycle; round trips: commands",
        f"sent per cycle, under MONITOR ({COUNT_CYCLES} cycles); commands: all the server executed per cycle, "
        "scripts' own included.",
        f"contention: worker processes (spawn) holding the lock {s['hold_s'] * 1000:g} ms each time, "
        f"{s['seconds']:g} s x {s['contention_rounds']} rounds per line; hand-off:",
        "release() called -> a waiting worker's acquire() returned; overlaps: an acquire() returned before the",
        "previous holder called release() (two holders at once)",
        "",
    ]
    for name, t in report["targets"].items():
        lines.append(f"{'met    ' if t['met'] else 'MISSED '} {name}: {t['measured']} (target {t['target']})")
    return "\n".join(lines)


def _versions(url: str) -> dict[str, Any]:
    probe = create_redis_client(url=url, environ={})
    versions = dict(diagnostics(probe)["versions"])
    probe.close()
    versions["fmredis"] = fmredis.__version__
    versions["python-redis-lock"] = metadata.version("python-redis-lock")
    return versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for lock.json (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="short rounds (a smoke run)")
    parser.add_argument("--rounds", type=int, help="uncontended rounds per variant (default 30; --quick 5)")
    parser.add_argument("--cycles", type=int, help="uncontended cycles per variant per round (default 200; --quick 50)")
    parser.add_argument("--contention-rounds", type=int, help="rounds of each contention phase (default 3; --quick 1)")
    parser.add_argument("--seconds", type=float, help="seconds per contention phase (default 2.5; --quick 1)")
    parser.add_argument("--hold", type=float, default=0.005, help="seconds a worker holds the lock (default 0.005)")
    args = parser.parse_args()
    args.rounds = args.rounds or (5 if args.quick else 30)
    args.cycles = args.cycles or (50 if args.quick else 200)
    args.contention_rounds = args.contention_rounds or (1 if args.quick else 3)
    args.seconds = args.seconds or (1.0 if args.quick else 2.5)
    started = time.monotonic()
    report: dict[str, Any] = {}
    with RedisServer("lock") as server:
        probe = server.client()
        workers = Workers(server.url, WORKERS)
        try:
            print(f"uncontended acquire + release, {args.rounds} rounds of {args.cycles} cycles ...", flush=True)
            report["uncontended"] = uncontended(workers, probe, args.rounds, args.cycles)
            report["contention"] = contention(workers, args.contention_rounds, args.seconds, args.hold)
        finally:
            workers.close()
        probe.close()
        report["versions"] = _versions(server.url)
    report["settings"] = {
        "quick": args.quick,
        "rounds": args.rounds,
        "cycles": args.cycles,
        "count_cycles": COUNT_CYCLES,
        "contention_rounds": args.contention_rounds,
        "seconds": args.seconds,
        "hold_s": args.hold,
        "processes": list(PROCESSES),
        "ttl_s": TTL,
        "variants": {
            FM_NO_RENEW: f"RedisLock(client, name, ttl={TTL}.0, auto_renew=False); lock.acquire().release()",
            FM: f"RedisLock(client, name, ttl={TTL}.0) (auto_renew=True); lock.acquire().release()",
            REDIS_PY: f"client.lock(name, timeout={TTL}) (sleep=0.1: a waiter polls); lock.acquire(); lock.release()",
            PY_REDIS_LOCK: f"redis_lock.Lock(client, name, expire={TTL}) (BLPOP signalling); acquire(); release()",
        },
        "client": "create_redis_client(url=...) per worker process, shared by its locks",
        "uncontended": f"worker n runs variant n alone, one worker at a time; warm-up {WARMUP_CYCLES} cycles per lock",
        "background_drain_s": DRAIN,
        "contention": "worker processes (multiprocessing spawn); after a release a worker waits for another's acquire",
        "server": "redis-server on 127.0.0.1, no persistence, used by this script alone",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    report["targets"] = targets(report)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    print(table(report))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lock.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out / 'lock.json'} ({report['elapsed_s']} s)")


if __name__ == "__main__":
    main()
