"""The data of the ContextCache benchmark (``benchmarks/context_cache.py``) and its in-process parts: the deterministic
conversation contexts (``make_context``), the timing helpers its parts share, the codec measurements (part 4) and the
local tier's byte bound (part 5)."""

from __future__ import annotations

import gc
import os
import random
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import lz4.frame
import orjson
import redis
import zstandard

from fmredis import ContextCache

KB, MIB = 1024, 1024 * 1024
SIZES = {"50KB": 50 * KB, "1MB": MIB}
LOCAL_BOUND = 8 * MIB
TTL = 600  # every value this script writes expires by itself too


# -- the contexts ---------------------------------------------------------------------------------------------------

_COMMON_TEXT = """
the of and to a in is that for it as with was on be by this are or not from at have an which you but can they we
their has more one all will there been also if would its about other when what so these some into time only new use
may such first any than then two like our over how most very after could should where well system data user model
answer question request order account payment service issue error support team policy customer product price
delivery refund invoice plan update change feature report page email number date today week please thanks help need
want know think make take see look find give tell work call try ask seem feel leave keep
"""
COMMON = _COMMON_TEXT.split()
_SYLLABLE_TEXT = "ka ri to ne sa mo lu vi de ra po te shi an el or in ul ar en is om ex pre con tra ble tion ment ing"
SYLLABLES = _SYLLABLE_TEXT.split()


def make_context(target: int, seed: int = 0) -> dict[str, Any]:
    """A conversation context whose JSON is just over ``target`` bytes, the same for the same arguments: common
    English words and made-up ones (a 3,000-word vocabulary, Zipf-like frequencies: zstd-3 compresses it about 2.8x,
    like English prose), in messages, a summary, a system prompt and retrieved documents."""
    rng = random.Random(seed)
    words, seen = list(COMMON), set(COMMON)
    while len(words) < 3000:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    cumulative, total = [], 0.0
    for rank in range(len(words)):
        total += 1 / (rank + 1) ** 1.07
        cumulative.append(total)

    def sentence() -> str:
        picked = rng.choices(words, cum_weights=cumulative, k=rng.randint(5, 22))
        if rng.random() < 0.2:
            picked.insert(rng.randrange(len(picked)), str(rng.randint(2, 9999)))
        if rng.random() < 0.3:
            picked[rng.randrange(len(picked))] += ","
        text = " ".join(picked)
        return text[0].upper() + text[1:] + rng.choice(".....?!")

    def paragraph(low: int, high: int) -> str:
        return " ".join(sentence() for _ in range(rng.randint(low, high)))

    context: dict[str, Any] = {
        "conversation_id": f"conv-{seed:06d}",
        "version": 0,
        "user": {"id": f"user-{rng.randint(1, 10**6)}", "locale": "en-GB", "plan": "pro"},
        "model": "assistant-large-2026-11",
        "system": paragraph(3, 6),
        "summary": paragraph(6, 12),
        "messages": [],
        "retrieved": [],
    }
    size, n = len(orjson.dumps(context)), 0
    while size < target:
        item: dict[str, Any]
        if n % 4 == 3:
            item = {
                "doc_id": f"kb-{rng.randint(1, 99999):05d}",
                "title": sentence()[:-1],
                "score": round(rng.uniform(0.5, 0.99), 4),
                "url": f"https://docs.example.com/articles/{rng.randint(1, 9999)}",
                "chunk": paragraph(3, 8),
            }
            context["retrieved"].append(item)
        else:
            role = "user" if len(context["messages"]) % 2 == 0 else "assistant"
            item = {
                "id": len(context["messages"]) + 1,
                "role": role,
                "content": paragraph(1, 3 if role == "user" else 7),
                "created_at": f"2026-12-02T{10 + n // 3600 % 12:02d}:{n // 60 % 60:02d}:{n % 60:02d}Z",
                "tokens": rng.randint(5, 600),
            }
            context["messages"].append(item)
        size += len(orjson.dumps(item)) + 1
        n += 1
    return context


def versioned(base: dict[str, Any], version: int) -> dict[str, Any]:
    return {**base, "version": version}


# -- timing helpers -------------------------------------------------------------------------------------------------


def interleaved(variants: dict[str, tuple[Callable[[], Any], int]], rounds: int) -> dict[str, list[float]]:
    """Each variant's ``(call, calls per round)`` timed in every round, in rotating order: microseconds per call."""
    names = list(variants)
    figures: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            call, calls = variants[name]
            started = time.perf_counter_ns()
            for _ in range(calls):
                call()
            figures[name].append((time.perf_counter_ns() - started) / calls / 1000)
    return figures


def summary(rounds: list[float], base: list[float] | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {
        "median_us": round(statistics.median(rounds), 3),
        "min_us": round(min(rounds), 3),
        "max_us": round(max(rounds), 3),
    }
    if base is not None:
        result["ratio"] = round(statistics.median(a / b for a, b in zip(rounds, base, strict=True)), 4)
    return result


def server_commands(client: redis.Redis, call: Callable[[], Any], calls: int) -> float:
    """Commands the server executed per ``call`` (INFO's total_commands_processed; the INFO itself subtracted)."""
    before = int(client.info("stats")["total_commands_processed"])
    for _ in range(calls):
        call()
    after = int(client.info("stats")["total_commands_processed"])
    return (after - before - 1) / calls


def warm(cache: ContextCache, key: str, tries: int = 20) -> None:
    """Read ``key`` until a read is a local hit (a read right after a write may not be kept: see the report)."""
    for _ in range(tries):
        hits = cache.stats()["hits"]
        cache.get(key)
        if cache.stats()["hits"] > hits:
            return
        time.sleep(0.01)
    raise RuntimeError(f"{key} never became a local hit (tracking: {cache.stats()['tracking']})")


# -- 4. codecs ------------------------------------------------------------------------------------------------------


def codecs(contexts: dict[str, dict[str, Any]], rounds: int, quick: bool) -> dict[str, Any]:
    scale = 4 if quick else 1
    kinds: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
        "zstd-1": (zstandard.ZstdCompressor(level=1).compress, zstandard.ZstdDecompressor().decompress),
        "zstd-3": (zstandard.ZstdCompressor(level=3).compress, zstandard.ZstdDecompressor().decompress),
        "lz4": (lz4.frame.compress, lz4.frame.decompress),
    }
    variants: dict[str, tuple[Callable[[], Any], int]] = {}
    compressed: dict[tuple[str, str], bytes] = {}
    payloads = {label: orjson.dumps(context) for label, context in contexts.items()}
    for label, payload in payloads.items():
        calls = (60 if label == "50KB" else 4) // scale or 1
        for kind, (compress, decompress) in kinds.items():
            packed = compressed[kind, label] = compress(payload)
            if decompress(packed) != payload:
                raise RuntimeError(f"{kind} did not give {label} back")
            variants[f"{kind} compress {label}"] = (lambda c=compress, p=payload: c(p), calls)
            variants[f"{kind} decompress {label}"] = (lambda d=decompress, p=packed: d(p), calls)
    figures = interleaved(variants, rounds)
    report: dict[str, Any] = {}
    for label, payload in payloads.items():
        rows: dict[str, Any] = {"none": {"bytes": len(payload), "ratio": 1.0, "compress_us": 0, "decompress_us": 0}}
        for kind in kinds:
            packed = compressed[kind, label]
            rows[kind] = {
                "bytes": len(packed),
                "ratio": round(len(payload) / len(packed), 3),
                "compress_us": round(statistics.median(figures[f"{kind} compress {label}"]), 1),
                "decompress_us": round(statistics.median(figures[f"{kind} decompress {label}"]), 1),
                "roundtrip_ok": True,
            }
        report[label] = {"json_bytes": len(payload), "codecs": rows}
    return report


# -- 5. the byte bound ----------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak instead
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def byte_bound(client: redis.Redis, ns: str, base: dict[str, Any], count: int) -> dict[str, Any]:
    gc.collect()
    rss_before = rss_peak = rss_bytes()
    cache = ContextCache(client, namespace=ns, ttl=TTL, local_max_bytes=LOCAL_BOUND)
    most_bytes = most_entries = first_read_kept = 0
    try:
        for n in range(count):
            key = f"stream-{n}"
            cache.set(key, versioned(base, n))
            hits = cache.stats()["hits"]
            cache.get(key)  # a miss: the set dropped this process's copy
            cache.get(key)  # a hit if the first read was kept
            stats = cache.stats()
            first_read_kept += stats["hits"] - hits
            if stats["hits"] == hits:
                cache.get(key)  # the second read was a miss; this one is kept unless it raced again
                stats = cache.stats()
            most_bytes = max(most_bytes, stats["local_bytes"])
            most_entries = max(most_entries, stats["local_entries"])
            if n % 50 == 0:
                rss_peak = max(rss_peak, rss_bytes())
        rss_after = rss_bytes()
        rss_peak = max(rss_peak, rss_after)
        final = cache.stats()
    finally:
        cache.close()

    # What the tier's Python objects take: a fresh cache filled to the bound under tracemalloc, then closed.
    gc.collect()
    tracemalloc.start()
    try:
        probe = ContextCache(client, namespace=ns, ttl=TTL, local_max_bytes=LOCAL_BOUND)
        try:
            for n in range(max(0, count - (LOCAL_BOUND // len(orjson.dumps(base))) - 20), count):
                for _ in range(3):
                    hits = probe.stats()["hits"]
                    probe.get(f"stream-{n}")
                    if probe.stats()["hits"] > hits:
                        break
            gc.collect()
            filled, _ = tracemalloc.get_traced_memory()
            held = probe.stats()
        finally:
            probe.close()
        gc.collect()
        emptied, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    python_bytes = filled - emptied
    return {
        "values": count,
        "value_json_bytes": len(orjson.dumps(base)),
        "local_max_bytes": LOCAL_BOUND,
        "max_local_bytes_seen": most_bytes,
        "max_local_entries_seen": most_entries,
        "within_bound": most_bytes <= LOCAL_BOUND,
        "evictions": final["evictions"],
        "first_read_after_own_set_kept": first_read_kept,
        "rss_growth_bytes": rss_after - rss_before,
        "rss_peak_growth_bytes": rss_peak - rss_before,
        "rss_growth_per_held_mb": round((rss_after - rss_before) / max(1, final["local_bytes"]), 2),
        "tracemalloc_held_local_bytes": held["local_bytes"],
        "tracemalloc_held_entries": held["local_entries"],
        "tracemalloc_python_bytes": python_bytes,
        "python_bytes_per_json_byte": round(python_bytes / max(1, held["local_bytes"]), 2),
    }
