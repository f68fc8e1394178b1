"""Outage figures for FallbackSessionStore and ResilientRedisSessionStore, with the library's default fallback, probe
and breaker settings.

Every server is a redis-server of this script's own on 127.0.0.1, with an AOF fsynced on every write (acknowledged
writes survive kill -9). Four parts:

1. ``under_load``: 8 writer threads, each writing a NEW session every 5 ms on a fixed schedule (1,600/s in all; a late
   slot is written at once), through ``FallbackSessionStore(ResilientRedisSessionStore(factory))``, once with an
   outage journal and once memory-only. The server is killed (SIGKILL) for ``--down`` s and restarted on the same
   port, then frozen (SIGSTOP) for ``--down`` s and continued. The client's socket timeout is 1 s (``--socket-timeout``;
   create_redis_client's default of 10 s would make a frozen server a plain stall). Per fault: write rate, latency of
   the writes started during the outage (all, and those started once the store served from memory), refused writes;
   seconds from the server answering again (after a kill: its first PONG to a thread pinging every 2 ms; after a
   freeze: SIGCONT sent) until the first successful recovery probe ("noticed") and until the first writer ``set``
   served by Redis again (both noted by a ResilientRedisSessionStore subclass when its ``probe`` / ``set`` returns:
   the fallback calls them only to end an outage / for a caller's write); the write-back (``last_recovery``); and
   every acknowledged key and value read back from Redis (lost).
2. ``write_back``: ``--sessions`` sessions written during an outage (journal mode, no other load), then the server
   back: ``last_recovery["write_back_seconds"]`` (probe included) and ``written_back``, sessions/s.
3. ``write_cost``: the cost of one outage write, no other load, 1 and 8 threads writing back to back: the fallback
   memory-only, with the journal (synchronous=NORMAL) and with ``journal_fsync=True``; and as baselines
   ``OutageJournal.record`` alone and an append-only file, one ``os.write`` per record (with and without
   ``os.fdatasync``), for the same bytes.
4. ``sentinel_kill``: a master, a replica and three sentinels (tests/harness/sentinel.py, down-after 1000 ms); 4
   writers (``WriteLoad``: set + get, 5 ms pause) through ``ResilientRedisSessionStore`` on a Sentinel client; SIGKILL
   of the master. Seconds from the first sentinel naming the new master (each sentinel's GET-MASTER-ADDR-BY-NAME
   polled every 10 ms) to the first successful write; acknowledged writes the new master lacks.

    python -m benchmarks.outage            # about 50 s; writes benchmarks/results/outage.json
    python -m benchmarks.outage --quick    # short outages, small counts: a smoke run (about 20 s)
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fmredis import (
    FallbackSessionStore,
    RedisSessionStore,
    ResilientRedisSessionStore,
    StoreUnavailable,
    create_redis_client,
    diagnostics,
)
from fmredis.journal import OutageJournal
from fmredis.serialization import encode_session
from tests.harness.loads import WriteLoad, unreadable
from tests.harness.sentinel import SentinelSetup
from tests.harness.servers import Address, RedisServer, free_port, make_client

RESULTS = Path(__file__).resolve().parent / "results"
CART = [{"sku": f"item-{n}", "qty": n} for n in range(4)]  # a session of about 150 bytes, JSON-encoded
OK, REFUSED = "ok", "refused"
FAULTS = ("kill", "freeze")
MODES = ("journal", "memory_only")


def percentiles(samples: list[float]) -> dict[str, float]:
    """count, p50/p99/max in milliseconds of durations in seconds (failover.py uses it too)."""
    if not samples:
        return {"count": 0}
    ordered = sorted(samples)
    pick = lambda q: round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)  # noqa: E731
    return {"count": len(ordered), "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": round(1000 * ordered[-1], 2)}


def micros(samples: list[float]) -> dict[str, float]:
    """count, p50/p99/max in microseconds of durations in seconds."""
    if not samples:
        return {"count": 0}
    ordered = sorted(samples)
    pick = lambda q: round(1e6 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)  # noqa: E731
    return {"count": len(ordered), "p50_us": pick(0.5), "p99_us": pick(0.99), "max_us": round(1e6 * ordered[-1], 1)}


def factory(url: str, socket_timeout: float = 5.0) -> Callable[[], RedisSessionStore]:
    def build() -> RedisSessionStore:
        client = create_redis_client(
            url=url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout, environ={}
        )
        return RedisSessionStore(client, owns_client=True)

    return build


def first_at_or_after(instants: list[float], since: float) -> float | None:
    later = [instant for instant in list(instants) if instant >= since]
    return min(later) if later else None


class TimedStore(ResilientRedisSessionStore):
    """ResilientRedisSessionStore (default settings) noting when each successful ``set`` and ``probe`` returned: the
    fallback calls ``set`` on it only for a caller's write served by Redis, and ``probe`` only to end an outage."""

    def __init__(self, store: Callable[[], RedisSessionStore]) -> None:
        super().__init__(store)
        self.set_returns: list[float] = []
        self.probe_returns: list[float] = []

    def set(self, key: str, value: dict[str, Any], ttl: int | None = None, *, stamp: bool = True) -> None:
        super().set(key, value, ttl, stamp=stamp)
        self.set_returns.append(time.monotonic())

    def probe(self) -> None:
        super().probe()
        self.probe_returns.append(time.monotonic())


class PacedWriters:
    """`threads` writers, each writing a new session ``w<n>-<i>`` every `period` s on a fixed schedule (a late slot is
    written at once, so a stall is followed by a catch-up burst). Records (started, ended, outcome, store degraded
    right after) per call, and the acknowledged keys as `WriteLoad.acked` does (for `unreadable`)."""

    def __init__(self, store: FallbackSessionStore, threads: int, period: float) -> None:
        self.store = store
        self.period = period
        self.acked: dict[str, tuple[int, float]] = {}
        self._records: list[list[tuple[float, float, str, bool]]] = [[] for _ in range(threads)]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]
        self.started = self.stopped = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        self.stopped = time.monotonic()

    @property
    def records(self) -> list[tuple[float, float, str, bool]]:
        return [record for records in self._records for record in list(records)]

    def _run(self, n: int) -> None:
        records, store = self._records[n], self.store
        next_at = self.started + n * self.period / len(self._threads)
        i = 0
        while not self._stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            key = f"w{n}-{i}"
            started = time.monotonic()
            try:
                store.set(key, {"writer": n, "i": i, "cart": CART})
                outcome = OK
            except StoreUnavailable:
                outcome = REFUSED
            except Exception as exc:  # every other error reaching a caller is counted by type
                outcome = type(exc).__name__
            ended = time.monotonic()
            records.append((started, ended, outcome, store.degraded))
            if outcome == OK:
                self.acked[key] = (i, ended)
            i += 1
            next_at += self.period


def _wait_recovered(store: FallbackSessionStore, primary: TimedStore, since: float, timeout: float = 20.0) -> None:
    """Until Redis serves the writers again (a set returned after `since`) with nothing left to write back."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not store.degraded and not store.pending and first_at_or_after(primary.set_returns, since) is not None:
            return
        time.sleep(0.005)


class _Events(logging.Handler):
    """The fallback's log records (switch to memory, recovery), with when they were logged (monotonic)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((time.monotonic(), record.getMessage()))

    def since(self, instant: float) -> list[str]:
        return [f"+{when - instant:.3f} s {message[:110]}" for when, message in list(self.seen) if when >= instant]


def _after(instant: float | None, since: float) -> float | None:
    return None if instant is None else round(instant - since, 3)


def _restart(server: RedisServer) -> tuple[float, float]:
    """Restart the killed server: when it first answered PING (polled every 2 ms meanwhile, from a thread) and when
    ``restart()`` returned (it polls INFO every 50 ms, so a client may be served before it returns)."""
    answered: list[float] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            try:
                with make_client(server.address, socket_timeout=0.1, socket_connect_timeout=0.1) as client:
                    if client.ping():
                        answered.append(time.monotonic())
                        return
            except Exception:  # refused, or loading: not answering yet
                pass
            time.sleep(0.002)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    server.restart()
    returned = time.monotonic()
    poller.join(1.0)
    done.set()
    return min([*answered, returned]), returned


def under_load(journal: bool, args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    """Part 1, one mode: kill -9 then SIGSTOP under 8 paced writers."""
    with RedisServer(persistent=True) as server:
        primary = TimedStore(factory(server.url, args.socket_timeout))
        path = os.path.join(workdir, "under-load.journal") if journal else None
        store = FallbackSessionStore(primary, journal_path=path)
        events, log = _Events(), logging.getLogger("fmredis.fallback")
        level = log.level
        log.setLevel(logging.INFO)  # the recovery record is INFO (nothing more reaches stderr: lastResort is WARNING)
        log.addHandler(events)
        load = PacedWriters(store, args.threads, args.period)
        load.start()
        time.sleep(args.settle)
        phases: dict[str, dict[str, Any]] = {}
        for fault in FAULTS:
            before = store.last_recovery
            fault_at = time.monotonic()
            if fault == "kill":
                server.kill()
                time.sleep(args.down)
                back_at, returned = _restart(server)
            else:
                server.freeze()
                time.sleep(args.down)
                server.thaw()
                back_at = returned = time.monotonic()
            _wait_recovered(store, primary, back_at)
            time.sleep(args.settle)
            # A call that started during the fault may still fail after the server answers and switch the store to
            # memory (see "events"): the acknowledged writes are checked once nothing is pending.
            _wait_recovered(store, primary, back_at)
            served = first_at_or_after(primary.set_returns, back_at)
            noticed = first_at_or_after(primary.probe_returns, back_at)
            records = load.records
            during = [r for r in records if fault_at <= r[0] < back_at]
            to_memory = min((end for _s, end, outcome, degraded in during if outcome == OK and degraded), default=None)
            recovering = [end - start for start, end, _o, _d in records if back_at <= start <= (served or back_at)]
            lost = unreadable(server.address, dict(load.acked))
            late = [r for r in records if r[0] >= back_at and r[2] == OK and r[3]]
            phases[fault] = {
                "down_s": args.down,
                "writes_started_during_outage": len(during),
                "write_rate_during_outage_per_s": round(len(during) / (back_at - fault_at)),
                "served_from_memory_after_s": _after(to_memory, fault_at),
                "write_during_outage": percentiles([end - start for start, end, _o, _d in during]),
                "write_once_serving_from_memory": percentiles(
                    [end - start for start, end, _o, _d in during if to_memory is not None and start >= to_memory]
                ),
                "write_between_answer_and_served": percentiles(recovering),
                "refused_during_outage": sum(1 for r in during if r[2] == REFUSED),
                "restart_returned_after_answer_s": round(returned - back_at, 3),
                "probe_ok_after_answer_s": _after(noticed, back_at),
                "served_by_redis_after_answer_s": _after(served, back_at),
                "acknowledged_from_memory_after_answer": len(late),
                "recovery": None if store.last_recovery is before else store.last_recovery,
                "events": events.since(fault_at),
                "acknowledged_so_far": len(load.acked),
                "lost_so_far": len(lost),
            }
        load.stop()
        records = load.records
        lost = unreadable(server.address, load.acked)
        outcomes: dict[str, int] = {}
        for record in records:
            outcomes[record[2]] = outcomes.get(record[2], 0) + 1
        result = {
            "mode": "journal" if journal else "memory-only",
            "achieved_writes_per_s": round(len(records) / (load.stopped - load.started)),
            "scheduled_writes_per_s": round(args.threads / args.period),
            "outcomes": outcomes,
            "refused_writes": outcomes.get(REFUSED, 0),
            "other_errors": sum(count for name, count in outcomes.items() if name not in (OK, REFUSED)),
            **phases,
            "acknowledged_writes": len(load.acked),
            "lost": len(lost),
            "degraded_at_check": store.degraded,
            "pending_at_check": store.pending,
        }
        store.close()
        log.removeHandler(events)
        log.setLevel(level)
        return result


def write_back(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    """Part 2: `args.sessions` outage writes (journal mode), then the server back, no other load."""
    count = args.sessions
    with RedisServer(persistent=True) as server:
        primary = TimedStore(factory(server.url))
        # max_entries: the memory store's default bound (10,000 sessions) refuses outage writes past it, journal or not.
        store = FallbackSessionStore(
            primary, journal_path=os.path.join(workdir, "write-back.journal"), max_entries=count + 10
        )
        store.set("before", {"i": -1})
        server.kill()
        started = time.monotonic()
        for i in range(count):
            store.set(f"wb-{i}", {"writer": 0, "i": i, "cart": CART})
        writing = time.monotonic() - started
        degraded, pending = store.degraded, store.pending
        journal_bytes = store.journal.bytes if store.journal is not None else 0
        server.restart()
        time.sleep(0.55)  # the next probe is due (probe_interval 0.5 s): the call below writes the outage back
        called = time.monotonic()
        store.exists("before")
        call_s = time.monotonic() - called
        recovery = store.last_recovery or {}
        lost = unreadable(server.address, {f"wb-{i}": (i, 0.0) for i in range(count)})
        store.close()
    seconds = recovery.get("write_back_seconds") or 0.0
    return {
        "sessions": count,
        "degraded_while_writing": degraded,
        "pending_before_write_back": pending,
        "journal_bytes": journal_bytes,
        "outage_writes_s": round(writing, 3),
        "recovery": recovery,
        "write_back_seconds": seconds,
        "call_that_wrote_back_s": round(call_s, 3),
        "sessions_per_s": round(recovery.get("written_back", 0) / seconds) if seconds else None,
        "lost": len(lost),
    }


Maker = Callable[[], tuple[Callable[[str], None], Callable[[], None]]]  # builds (write(key), close) for one run


def _timed(threads: int, per_thread: int, write: Callable[[str], None]) -> tuple[list[float], float]:
    """`threads` threads each call write(key) `per_thread` times back to back: every call's duration, and writes/s."""
    samples: list[list[float]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def run(t: int) -> None:
        mine, clock = samples[t], time.perf_counter
        barrier.wait()
        for i in range(per_thread):
            started = clock()
            write(f"t{t}-{i}")
            mine.append(clock() - started)

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    return [s for mine in samples for s in mine], threads * per_thread / elapsed


def write_cost(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    """Part 3: one outage write's cost, and baselines for the same bytes."""
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: every call to Redis is refused at once
    value = {"writer": 0, "i": 0, "cart": CART}
    payload = encode_session(value)
    results: dict[str, dict[str, Any]] = {}
    serial = 0

    def measure(name: str, ops: int, make: Maker) -> None:
        results[name] = {}
        for threads in args.cost_threads:
            write, close = make()
            samples, rate = _timed(threads, max(1, ops // threads), write)
            close()
            results[name][str(threads)] = {**micros(samples), "writes_per_s": round(rate)}

    def fallback(journal: bool, fsync: bool, ops: int) -> Maker:
        def make() -> tuple[Callable[[str], None], Callable[[], None]]:
            nonlocal serial
            serial += 1
            path = os.path.join(workdir, f"cost-{serial}.journal") if journal else None
            store = FallbackSessionStore(
                ResilientRedisSessionStore(factory(url)), max_entries=ops + 100, journal_path=path, journal_fsync=fsync
            )
            store.set("first", value)  # Redis refuses: from here on every write is an outage write
            assert store.degraded
            return lambda key: store.set(key, value), store.close

        return make

    def journal_alone(fsync: bool) -> Maker:
        def make() -> tuple[Callable[[str], None], Callable[[], None]]:
            nonlocal serial
            serial += 1
            journal = OutageJournal(os.path.join(workdir, f"cost-{serial}.journal"), max_bytes=2**30, fsync=fsync)
            expires = time.time() + 3600

            def write(key: str) -> None:
                journal.record([(key, "set", payload, expires)], *stamp())

            return write, journal.close

        return make

    def append_only(sync: bool) -> Maker:
        def make() -> tuple[Callable[[str], None], Callable[[], None]]:
            nonlocal serial
            serial += 1
            fd = os.open(os.path.join(workdir, f"cost-{serial}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            expires = time.time() + 3600

            def write(key: str) -> None:
                raw = key.encode()
                body = b"".join((struct.pack("<BHId", 1, len(raw), len(payload), expires), raw, payload))
                os.write(fd, struct.pack("<I", len(body)) + body)  # one record, framed, O_APPEND: one write call
                if sync:
                    os.fdatasync(fd)

            return write, lambda: os.close(fd)

        return make

    # OutageJournal.record's signature is being extended (an ``at`` wall-clock time): pass it when it is there.
    wants_at = "at" in inspect.signature(OutageJournal.record).parameters

    def stamp() -> tuple[float, ...]:
        return (time.time(),) if wants_at else ()

    ops, synced = args.ops, max(50, args.ops // 4)
    measure("fallback memory-only", ops, fallback(False, False, ops))
    measure("fallback journal", ops, fallback(True, False, ops))
    measure("fallback journal fsync", synced, fallback(True, True, synced))
    measure("OutageJournal.record alone", ops, journal_alone(False))
    measure("OutageJournal.record alone, fsync", synced, journal_alone(True))
    measure("append-only file, os.write", ops, append_only(False))
    measure("append-only file, os.write + fdatasync", synced, append_only(True))
    return {"payload_bytes": len(payload), "journal_dir": workdir, **results}


def _master_seen(sentinels: list[Any], name: str) -> list[Address]:
    seen: list[Address] = []
    for client in sentinels:
        try:
            host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", name)
            seen.append((host, int(port)))
        except Exception:  # a sentinel busy or slow to answer: not seen this round
            seen.append(("", 0))
    return seen


def sentinel_kill(args: argparse.Namespace) -> dict[str, Any]:
    """Part 4: SIGKILL of the Sentinel master under 4 writers through ResilientRedisSessionStore (default settings)."""
    with SentinelSetup("fmoutage") as setup:
        setup.wait_ready()
        client = create_redis_client(
            mode="sentinel", sentinels=setup.sentinels, sentinel_master=setup.master_name, environ={}
        )
        store = ResilientRedisSessionStore(lambda: RedisSessionStore(client))
        polls = [make_client(address, socket_timeout=0.2) for address in setup.sentinels]
        named_first = named_all = first_ok = None
        with WriteLoad(store, threads=4, pause=0.005) as load:
            time.sleep(args.sentinel_warmup)
            old = setup.kill_master()
            fault_at = time.monotonic()
            deadline = fault_at + 30
            while time.monotonic() < deadline and (named_all is None or first_ok is None):
                seen = _master_seen(polls, setup.master_name)
                now = time.monotonic()
                moved = [address != old and address[1] != 0 for address in seen]
                if named_first is None and any(moved):
                    named_first = now
                if named_all is None and all(moved):
                    named_all = now
                if first_ok is None:
                    first_ok = min((end for _s, end, ok in list(load.writes) if ok and end > fault_at), default=None)
                time.sleep(0.01)
            time.sleep(args.sentinel_settle)
        for poll in polls:
            poll.close()
        master = setup.master_address()
        lost = unreadable(master, load.acked)
        client.close()
        client.connection_pool.disconnect()
    counts, _samples = load.errors_by_type()
    return {
        "first_sentinel_named_new_master_after_kill_s": _after(named_first, fault_at),
        "all_sentinels_named_it_after_kill_s": _after(named_all, fault_at),
        "first_ok_write_after_kill_s": _after(first_ok, fault_at),
        "serving_after_first_sentinel_named_s": None if named_first is None else _after(first_ok, named_first),
        "serving_after_all_sentinels_named_s": None if named_all is None else _after(first_ok, named_all),
        "errors_by_type": counts,
        "acknowledged_writes": len(load.acked),
        "lost": len(lost),
        "writers": "4 threads: set a new key, get it back, pause 5 ms (tests/harness/loads.py WriteLoad)",
    }


def targets(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    loads = report["under_load"]
    lost = sum(loads[mode]["lost"] for mode in MODES) + report["write_back"]["lost"]
    # Only the faults the store noticed at all (a freeze shorter than it takes to give up on Redis is a plain stall).
    noticed = [
        loads[mode][fault]["probe_ok_after_answer_s"]
        for mode in MODES
        for fault in FAULTS
        if loads[mode][fault]["recovery"] is not None
    ]
    wanted = report["sentinel_kill"]["serving_after_first_sentinel_named_s"]
    p99 = report["write_cost"]["fallback journal"]["1"].get("p99_us")
    rate = report["write_back"]["sessions_per_s"]
    return {
        "acknowledged writes lost (under load, write-back)": {"target": 0, "measured": lost, "met": not lost},
        f"recovery probe ok after the server answers, worst of {len(noticed)} outages (s)": {
            "target": 1.0,
            "measured": None if not noticed or None in noticed else max(noticed),
            "met": bool(noticed) and None not in noticed and max(noticed) <= 1.0,
        },
        "sentinel kill: serving after the first sentinel names the new master (s)": {
            "target": 0.5,
            "measured": wanted,
            "met": wanted is not None and wanted <= 0.5,
        },
        "outage write with the journal, 1 thread, p99 (ms)": {
            "target": 1.0,
            "measured": None if p99 is None else round(p99 / 1000, 3),
            "met": p99 is not None and p99 <= 1000,
        },
        "write-back (sessions/s)": {"target": 20_000, "measured": rate, "met": rate is not None and rate >= 20_000},
    }


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def _pct(summary: dict[str, float], unit: str = "ms") -> str:
    if not summary.get("count"):
        return "-"
    return f"{summary[f'p50_{unit}']:.2f}/{summary[f'p99_{unit}']:.2f}/{summary[f'max_{unit}']:.0f}"


def table(report: dict[str, Any]) -> str:
    lines = []
    header = (
        f"{'mode':<12} {'fault':<7} {'rate/s':>6} {'memory':>6} {'outage write ms':>18} {'from memory ms':>16} "
        f"{'refused':>7} {'probe':>5} {'served':>6} {'late':>4} {'wb s':>5} {'wb n':>5} {'lost':>4}"
    )
    lines += [header, "-" * len(header)]
    for mode in MODES:
        run = report["under_load"][mode]
        for fault in FAULTS:
            p = run[fault]
            recovery = p["recovery"] or {}
            lines.append(
                f"{run['mode']:<12} {fault:<7} {p['write_rate_during_outage_per_s']:>6} "
                f"{_ms(p['served_from_memory_after_s']):>6} {_pct(p['write_during_outage']):>18} "
                f"{_pct(p['write_once_serving_from_memory']):>16} {p['refused_during_outage']:>7} "
                f"{_ms(p['probe_ok_after_answer_s']):>5} {_ms(p['served_by_redis_after_answer_s']):>6} "
                f"{p['acknowledged_from_memory_after_answer']:>4} "
                f"{_ms(recovery.get('write_back_seconds')):>5} {recovery.get('written_back', '-'):>5} "
                f"{p['lost_so_far']:>4}"
            )
        lines.append(
            f"{'':<12} {'all':<7} {run['achieved_writes_per_s']:>6} (of {run['scheduled_writes_per_s']} scheduled); "
            f"acknowledged {run['acknowledged_writes']}, refused {run['refused_writes']}, other errors "
            f"{run['other_errors']}, lost {run['lost']}"
        )
    lines += [
        "memory: s from the fault to the first write acknowledged from memory; outage write / from memory: ms",
        "p50/p99/max of the writes started during the outage (all / once the store served from memory); probe, served:",
        "s from the server answering again to the first successful recovery probe / the first writer set served by",
        "Redis; late: writes started after it answered, acknowledged from memory; wb: write-back s and sessions",
    ]
    wb = report["write_back"]
    lines.append("")
    lines.append(
        f"write-back alone (journal): {wb['recovery'].get('written_back')} of {wb['sessions']} sessions in "
        f"{wb['write_back_seconds']} s = {wb['sessions_per_s']}/s (the call that ran it took "
        f"{wb['call_that_wrote_back_s']} s), lost {wb['lost']}"
    )
    lines.append("")
    cost = report["write_cost"]
    threads = list(report["settings"]["cost_threads"])
    header = f"{'one outage write, no other load (us p50/p99/max)':<42}" + "".join(
        f" {f'{t} thread(s)':>20} {'writes/s':>9}" for t in threads
    )
    lines += [header, "-" * len(header)]
    for name, by_threads in cost.items():
        if not isinstance(by_threads, dict):
            continue
        cells = "".join(
            f" {_pct(by_threads[str(t)], 'us'):>20} {by_threads[str(t)]['writes_per_s']:>9}" for t in threads
        )
        lines.append(f"{name:<42}{cells}")
    lines.append(f"payload {cost['payload_bytes']} bytes; files in {cost['journal_dir']}")
    sk = report["sentinel_kill"]
    lines.append("")
    lines.append(
        f"sentinel master SIGKILL (ResilientRedisSessionStore): first sentinel names the new master "
        f"{_ms(sk['first_sentinel_named_new_master_after_kill_s'])} s after the kill, all "
        f"{_ms(sk['all_sentinels_named_it_after_kill_s'])} s; first write ok "
        f"{_ms(sk['first_ok_write_after_kill_s'])} s "
        f"= {_ms(sk['serving_after_first_sentinel_named_s'])} s after the first sentinel named it "
        f"({_ms(sk['serving_after_all_sentinels_named_s'])} s after all); acknowledged {sk['acknowledged_writes']}, "
        f"lost {sk['lost']}"
    )
    lines.append("")
    for name, t in report["targets"].items():
        lines.append(f"{'met    ' if t['met'] else 'MISSED '} {name}: {t['measured']} (target {t['target']})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for outage.json (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="short outages and small counts (a smoke run)")
    parser.add_argument("--down", type=float, help="seconds each fault lasts (default 3; --quick 1.5)")
    parser.add_argument("--socket-timeout", type=float, default=1.0, help="client socket timeout under load (1 s)")
    parser.add_argument("--sessions", type=int, help="sessions written back alone (default 20000; --quick 2000)")
    parser.add_argument("--ops", type=int, help="writes per cost measurement (default 8000, fsync a quarter)")
    args = parser.parse_args()
    quick = args.quick
    args.down = args.down if args.down is not None else (1.5 if quick else 3.0)
    args.sessions = args.sessions if args.sessions is not None else (2000 if quick else 20_000)
    args.ops = args.ops if args.ops is not None else (400 if quick else 8000)
    args.settle = 0.3 if quick else 0.5
    args.threads, args.period, args.cost_threads = 8, 0.005, (1, 8)
    args.sentinel_warmup, args.sentinel_settle = (0.3, 0.2) if quick else (1.0, 0.5)
    started = time.monotonic()
    report: dict[str, Any] = {"under_load": {}}
    with tempfile.TemporaryDirectory(prefix="fmredis-outage-") as workdir:
        for mode in MODES:
            print(f"kill -9 then SIGSTOP, {args.down:g} s each, under 8 paced writers ({mode}) ...", flush=True)
            report["under_load"][mode] = under_load(mode == "journal", args, workdir)
        print(f"write-back of {args.sessions} sessions alone ...", flush=True)
        report["write_back"] = write_back(args, workdir)
        print("one outage write's cost ...", flush=True)
        report["write_cost"] = write_cost(args, workdir)
    print("Sentinel master kill ...", flush=True)
    report["sentinel_kill"] = sentinel_kill(args)
    with RedisServer() as server:
        probe = create_redis_client(url=server.url, environ={})
        versions = diagnostics(probe)["versions"]
        probe.close()
    report["settings"] = {
        "quick": quick,
        "down_s": args.down,
        "writers": f"{args.threads} threads, a new session every {args.period * 1000:g} ms each",
        "socket_timeout_s": args.socket_timeout,
        "cost_threads": list(args.cost_threads),
        "ops": args.ops,
        "server": "redis-server on 127.0.0.1, appendonly yes, appendfsync always",
        "fallback": "FallbackSessionStore defaults (probe_interval 0.5 s, max_entries 10000, journal fsync off)",
        "resilient": "ResilientRedisSessionStore defaults (3 attempts, deadline 5 s, breaker 5 failures / 0.25 s)",
    }
    report["targets"] = targets(report)
    report["versions"] = versions
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    print(table(report))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "outage.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'outage.json'} ({report['elapsed_s']} s)")


if __name__ == "__main__":
    main()
