"""ContextCache: what its local tier saves, how fast other processes see a write, single-flight loading, compression
and the local tier's byte bound, on one redis-server of this script's own (127.0.0.1, no persistence) or REDIS_URL's
(keys under ``fmredis-bench-ctx-<pid>:`` only, removed at the end). The values are deterministic conversation
contexts (``make_context``): messages with a role and English-like text, a summary, a system prompt and retrieved
documents, just over 50 KiB (51,966 bytes of JSON) and 1 MiB (1,048,636).

1. ``reads``: one thread, every variant in each of ``--rounds`` interleaved rounds (rotating order; figures are medians
   of the rounds' microseconds per call, each ratio the median of the per-round ratios against a ``GET`` and
   ``orjson.loads`` of the same JSON): a local hit (``cache.get`` of a warm key), redis-py's own client-side cache
   (RESP3, ``cache_config=redis.cache.CacheConfig(...)``) hit with and without the ``orjson.loads`` its caller still
   needs, and the end-to-end miss (``cache.get`` through a cache whose local tier keeps nothing,
   ``local_max_bytes=1``) with ``compression=None`` and ``"zstd"``, 50 KB and 1 MB. Untimed checks: the commands the
   server ran per hit (``INFO``), and what a hit returns (the same read-only object every time for fmredis; bytes
   for redis-py, which the caller decodes into a new dict each time).
2. ``invalidation``: four worker processes (multiprocessing, spawn), each holding a warm key: fmredis and redis-py's
   cache, each polling in a tight loop (``spin``) and with a ``POLL_SLEEP`` pause between reads (``poll``). Per
   write, in interleaved order: the worker starts reading, the parent writes a new version (``cache.set``; for
   redis-py a plain ``SET`` of pre-encoded JSON), and the worker reports the first read that returned it. Both sides
   stamp ``time.monotonic_ns`` (CLOCK_MONOTONIC, one clock for every process on the machine): latency from the
   write call and from its reply. ``--writes`` writes per worker.
3. ``single_flight``: ``THREADS`` threads released at once on one missing key with a ``LOAD_SECONDS`` loader:
   ``get_or_load`` against the naive ``get``, miss, load, ``set``; loader calls counted.
4. ``codecs``: zstandard levels 1 and 3 (3 is ContextCache's) and lz4 (``lz4.frame``, its default level) on the
   50 KB and 1 MB JSON: ratio, compress and decompress microseconds, interleaved rounds. The end-to-end miss with
   and without compression is in ``reads``.
5. ``byte_bound``: ``--stream`` values of 50 KB written and read through a cache with ``local_max_bytes=8 MiB``:
   the most ``stats()["local_bytes"]`` ever showed; then, under ``tracemalloc``, a fresh cache filled to the bound
   and closed: the Python memory its tier held per MB it counted (the JSON sizes), and the process's RSS growth
   while streaming. It runs first, so that memory the other parts freed but the process kept does not hide it.

redis-py's client-side cache refuses servers older than 7.4 (``CacheProxyConnection.MIN_ALLOWED_VERSION``); this
benchmark lowers that class attribute to 6.0.0 (CLIENT TRACKING exists since Redis 6.0) and says so in its output.

    python -m benchmarks.context_cache            # about 35 s; writes benchmarks/results/context_cache.json
    python -m benchmarks.context_cache --quick    # a smoke run, a few seconds (the test suite's)
    REDIS_URL=redis://127.0.0.1:6379/0 python -m benchmarks.context_cache   # another server
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import zstandard

import fmredis
from benchmarks.context_data import LOCAL_BOUND, MIB, SIZES, byte_bound, codecs, make_context
from benchmarks.context_readers import (
    CSC_NOTE,
    FM,
    LOAD_SECONDS,
    POLL_SLEEP,
    REDIS_PY,
    THREADS,
    WATCHERS,
    allow_redis_py_cache_on_older_servers,
    invalidation,
    reads,
    single_flight,
)
from benchmarks.paced import redis_url_for_run
from fmredis import create_redis_client, diagnostics

RESULTS = Path(__file__).resolve().parent / "results"


# -- report ---------------------------------------------------------------------------------------------------------


def targets(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    ratio = report["reads"]["timed"]["fmredis hit 50KB"]["ratio"]
    result: dict[str, dict[str, Any]] = {
        "fmredis local hit vs GET + orjson.loads, 50 KB (ratio)": {
            "target": "<= 0.05",
            "measured": ratio,
            "met": ratio <= 0.05,
        }
    }
    for lib, mode in WATCHERS:
        if lib != FM:
            continue
        figures = report["invalidation"][f"{lib} {mode}"]
        p99 = figures["from_write_call"].get("p99_ms")
        result[f"fmredis write seen by another process ({mode}), p99 from the write call (ms)"] = {
            "target": "<= 50",
            "measured": p99,
            "met": p99 is not None and p99 <= 50 and figures["missed"] == 0,
        }
    loads = report["single_flight"]["get_or_load"]["loads_per_round"]
    result[f"get_or_load loader calls, {THREADS} threads on one missing key"] = {
        "target": 1,
        "measured": " / ".join(str(n) for n in loads),
        "met": all(n == 1 for n in loads),
    }
    bound = report["byte_bound"]
    result["max local_bytes while streaming (bound 8 MiB)"] = {
        "target": f"<= {LOCAL_BOUND}",
        "measured": bound["max_local_bytes_seen"],
        "met": bound["within_bound"],
    }
    return result


def table(report: dict[str, Any]) -> str:
    reads_ = report["reads"]
    s = report["settings"]
    header = f"{'read (one thread)':<40} {'size':>5} {'median us':>10} {'range us':>19} {'vs GET+orjson':>13}"
    lines = [header, "-" * len(header)]
    for name, f in reads_["timed"].items():
        span = f"{f['min_us']:.1f}-{f['max_us']:.1f}"
        lines.append(
            f"{name.rsplit(' ', 1)[0]:<40} {f['size']:>5} {f['median_us']:>10.2f} {span:>19} {f['ratio']:>12.4f}x"
        )
    fm, rp = reads_["returns"][FM], reads_["returns"][REDIS_PY]
    commands = reads_["server_commands_per_call"]
    lines += [
        f"medians of {s['rounds']} interleaved rounds; ratio: median of the per-round ratios to GET + orjson.loads of "
        "the same JSON (fmredis's own client).",
        "miss: cache.get through a cache with local_max_bytes=1 (keeps nothing); stored bytes: "
        f"{reads_['stored_bytes']}",
        f"fmredis hit returns: the shared {fm['type']} (same object every hit: {fm['same_object_every_hit']}, "
        f"mutation refused: {fm['mutation_refused']}, == original: {fm['equals_original']}); no decode.",
        f"redis-py cache hit returns: copy.deepcopy of the cached {rp['type']} (same object every hit: "
        f"{rp['same_object_every_hit']}: deepcopy keeps bytes as they are); the caller decodes a new dict each time "
        f"(same object: {rp['decoded_same_object']}), so its figure includes orjson.loads.",
        f"server commands per call: fmredis hit {commands[FM]:g}, redis-py cache hit {commands[REDIS_PY]:g}, "
        f"fmredis miss {commands['fmredis miss']:g}; hot cache during the rounds: "
        f"{reads_['hot_cache_hits_during_rounds']} hits, {reads_['hot_cache_misses_during_rounds']} misses",
        f"note: {reads_['redis_py_cache_note']}; server {report['versions'].get('redis-server')}",
        "",
    ]
    header = (
        f"{'write -> another process reads it':<34} {'writes':>6} {'missed':>6} {'p50 ms':>7} {'p90 ms':>7} "
        f"{'p99 ms':>7} {'max ms':>7}  {'from reply p50/p99':>18} {'write us':>8} {'reads':>6}"
    )
    lines += [header, "-" * len(header)]
    for name, f in report["invalidation"].items():
        c, r = f["from_write_call"], f["from_write_reply"]
        lines.append(
            f"{name:<34} {f['writes']:>6} {f['missed']:>6} {c.get('p50_ms', '-'):>7} {c.get('p90_ms', '-'):>7} "
            f"{c.get('p99_ms', '-'):>7} {c.get('max_ms', '-'):>7}  "
            f"{str(r.get('p50_ms', '-')) + ' / ' + str(r.get('p99_ms', '-')):>18} "
            f"{f['write_call_us_median']:>8} {f['reads_per_write_median']:>6}"
        )
    lines += [
        "from the write call (cache.set for fmredis; a SET of pre-encoded JSON for redis-py) to the first read in the "
        "worker process that",
        f"returned the new version (time.monotonic_ns on both sides); spin: reads back to back; poll: "
        f"{POLL_SLEEP * 1e6:g} us sleep between reads;",
        f"reads: reads per write (median). GIL switch interval {s['switch_interval_s'] * 1000:g} ms. fmredis's "
        "invalidations arrive on a listener thread, which",
        "must take the GIL from a spinning reader; redis-py's cache handles them only when the client is next used",
        "(each hit first polls its connection's socket for pushes): a reader sees a write on its first read after the",
        "push arrived, and an idle one not at all.",
        "",
    ]
    header = f"{'single flight':<24} {'threads':>7} {'loader':>7} {'loads per round':>16} {'served':>14} {'wall ms':>8}"
    lines += [header, "-" * len(header)]
    for name, f in report["single_flight"].items():
        served = "/".join(str(n) for n in f["served_per_round"])
        loads = "/".join(str(n) for n in f["loads_per_round"])
        lines.append(
            f"{name:<24} {f['threads']:>7} {f['loader_s'] * 1000:>5g}ms {loads:>16} {served:>14} "
            f"{f['wall_ms_median']:>8}" + (f"  errors: {f['errors'][:2]}" if f["errors"] else "")
        )
    lines.append("")
    header = f"{'codec':<8} {'size':>5} {'bytes':>9} {'ratio':>6} {'compress us':>12} {'decompress us':>14}"
    lines += [header, "-" * len(header)]
    for label, part in report["codecs"].items():
        for kind, f in part["codecs"].items():
            lines.append(
                f"{kind:<8} {label:>5} {f['bytes']:>9} {f['ratio']:>6} {f['compress_us']:>12} {f['decompress_us']:>14}"
            )
    timed = reads_["timed"]
    for label in SIZES:
        plain, packed = (
            timed[f"fmredis miss, compression=None {label}"],
            timed[f"fmredis miss, compression=zstd {label}"],
        )
        lines.append(
            f"end-to-end miss {label}: compression=None {plain['median_us']:.1f} us, zstd {packed['median_us']:.1f} us "
            f"(GET + orjson.loads {timed[f'GET + orjson.loads {label}']['median_us']:.1f} us)"
        )
    b = report["byte_bound"]
    lines += [
        "",
        f"byte bound: {b['values']} values of {b['value_json_bytes']} bytes through "
        f"local_max_bytes={b['local_max_bytes']}: max local_bytes {b['max_local_bytes_seen']} "
        f"({b['max_local_entries_seen']} entries), within bound {b['within_bound']}, evictions {b['evictions']}",
        f"  first read after this process's own set kept locally: {b['first_read_after_own_set_kept']} of "
        f"{b['values']}",
        f"  Python memory the tier held (tracemalloc, fill then close): {b['tracemalloc_python_bytes'] / MIB:.1f} MiB "
        f"for {b['tracemalloc_held_local_bytes'] / MIB:.2f} MiB counted = {b['python_bytes_per_json_byte']}x",
        f"  RSS growth while streaming: {b['rss_growth_bytes'] / MIB:.1f} MiB "
        f"(peak {b['rss_peak_growth_bytes'] / MIB:.1f} MiB) = {b['rss_growth_per_held_mb']}x the bytes held",
        "",
    ]
    for name, t in report["targets"].items():
        lines.append(f"{'met    ' if t['met'] else 'MISSED '} {name}: {t['measured']} (target {t['target']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for context_cache.json (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few rounds, writes and values")
    parser.add_argument("--rounds", type=int, help="interleaved rounds of reads and of codecs (default 30; --quick 3)")
    parser.add_argument("--writes", type=int, help="writes per invalidation watcher (default 200; --quick 15)")
    parser.add_argument("--stream", type=int, help="values streamed through the byte bound (default 2000; --quick 250)")
    parser.add_argument("--flights", type=int, help="single-flight rounds per variant (default 3; --quick 1)")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (3 if args.quick else 30)
    args.writes = args.writes or (15 if args.quick else 200)
    args.stream = args.stream or (250 if args.quick else 2000)
    args.flights = args.flights or (1 if args.quick else 3)
    started = time.monotonic()
    allow_redis_py_cache_on_older_servers()
    contexts = {label: make_context(size, seed=index) for index, (label, size) in enumerate(SIZES.items())}
    base = contexts["50KB"]
    ns = f"fmredis-bench-ctx-{os.getpid()}"
    report: dict[str, Any] = {}
    with redis_url_for_run("context-cache") as url:
        client = create_redis_client(url=url, environ={})
        try:
            report["versions"] = dict(diagnostics(client)["versions"])
            # First, so that its RSS growth is not hidden in memory the other parts freed but the process kept.
            print(f"byte bound, {args.stream} values ...", flush=True)
            report["byte_bound"] = byte_bound(client, ns, base, args.stream)
            print(f"reads, {args.rounds} interleaved rounds ...", flush=True)
            report["reads"] = reads(url, client, ns, contexts, args)
            print(f"codecs, {args.rounds} interleaved rounds ...", flush=True)
            report["codecs"] = codecs(contexts, args.rounds, args.quick)
            print(f"invalidation to other processes, {args.writes} writes per watcher ...", flush=True)
            report["invalidation"] = invalidation(url, client, ns, base, args.writes)
            print(f"single flight, {THREADS} threads, {args.flights} round(s) per variant ...", flush=True)
            report["single_flight"] = single_flight(client, ns, base, args.flights)
        finally:
            for key in client.scan_iter(match=f"{ns}:*", count=1000):
                client.unlink(key)
            client.close()
    report["versions"].update(fmredis=fmredis.__version__, zstandard=zstandard.__version__, lz4=metadata.version("lz4"))
    report["settings"] = {
        "quick": args.quick,
        "rounds": args.rounds,
        "writes": args.writes,
        "stream": args.stream,
        "flights": args.flights,
        "threads": THREADS,
        "loader_s": LOAD_SECONDS,
        "poll_sleep_s": POLL_SLEEP,
        "local_max_bytes": LOCAL_BOUND,
        "switch_interval_s": sys.getswitchinterval(),
        "sizes": {label: report["reads"]["json_bytes"][label] for label in SIZES},
        "server": "REDIS_URL" if os.environ.get("REDIS_URL") else "redis-server on 127.0.0.1 started here",
        "redis_py_cache": "redis.Redis.from_url(url, protocol=3, cache_config=CacheConfig(max_size=1000)); " + CSC_NOTE,
        "cache": "ContextCache(create_redis_client(url=...), namespace=..., ttl=600) with its defaults unless named",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    report["targets"] = targets(report)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    print(table(report))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "context_cache.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out / 'context_cache.json'} ({report['elapsed_s']} s)")


if __name__ == "__main__":
    main()
