"""Smoke test of ``python -m benchmarks.context_cache --quick``: every part runs and reports what it claims to
measure. The hits are served without a command reaching the server (fmredis's as the same read-only object, redis-py's
as bytes the caller decodes), every write reached the other processes, ``get_or_load`` ran its loader once for 32
threads while the naive pattern ran it more than once, the codecs gave their input back smaller, and the local tier
stayed within its byte bound. No timing is asserted (the machine may be busy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # the checkout: `-m benchmarks.context_cache` imports from there

READS = {
    "fmredis hit 50KB",
    "redis-py cache hit + orjson.loads 50KB",
    "redis-py cache hit, bytes only 50KB",
    "GET + orjson.loads 50KB",
    "fmredis miss, compression=None 50KB",
    "fmredis miss, compression=zstd 50KB",
    "fmredis hit 1MB",
    "GET + orjson.loads 1MB",
    "fmredis miss, compression=None 1MB",
    "fmredis miss, compression=zstd 1MB",
}
WATCHERS = {"fmredis spin", "fmredis poll", "redis-py cache spin", "redis-py cache poll"}


@pytest.mark.timeout(120)
def test_context_cache_script_reports_every_part(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.context_cache", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads((tmp_path / "context_cache.json").read_text())
    assert {"reads", "codecs", "invalidation", "single_flight", "byte_bound", "targets", "settings", "versions"} <= set(
        report
    )
    settings = report["settings"]
    assert settings["quick"] is True
    assert {"redis-server", "redis-py", "fmredis", "zstandard", "lz4"} <= set(report["versions"])
    assert 50 * 1024 <= settings["sizes"]["50KB"] < 52 * 1024 and 1024 * 1024 <= settings["sizes"]["1MB"] < 1030 * 1024

    reads = report["reads"]
    assert set(reads["timed"]) == READS
    for name, figures in reads["timed"].items():
        assert 0 < figures["min_us"] <= figures["median_us"] <= figures["max_us"], (name, figures)
        assert figures["ratio"] > 0, (name, figures)
    assert reads["timed"]["GET + orjson.loads 50KB"]["ratio"] == 1.0
    fm, redis_py = reads["returns"]["fmredis"], reads["returns"]["redis-py cache"]
    assert fm == {
        "type": "FrozenDict",
        "same_object_every_hit": True,
        "mutation_refused": True,
        "equals_original": True,
        "caller_decodes": False,
    }
    assert redis_py["type"] == "bytes" and redis_py["caller_decodes"] is True
    assert redis_py["equals_original"] is True and redis_py["decoded_same_object"] is False
    # No command per hit (a listener's idle PING may land in the window: hence not exactly 0); a miss sends one.
    commands = reads["server_commands_per_call"]
    assert commands["fmredis"] < 0.1 and commands["redis-py cache"] < 0.1, commands
    assert commands["fmredis miss"] >= 1, commands
    assert reads["hot_cache_misses_during_rounds"] == 0 and reads["hot_cache_hits_during_rounds"] > 0, reads
    stored = reads["stored_bytes"]
    for size in ("50KB", "1MB"):
        assert stored[f"zstd {size}"] < stored[f"None {size}"] == reads["json_bytes"][size] + 1, stored  # + tag byte

    assert set(report["invalidation"]) == WATCHERS
    for name, figures in report["invalidation"].items():
        assert figures["writes"] == settings["writes"] and figures["missed"] == 0, (name, figures)
        latency = figures["from_write_call"]
        assert latency["count"] == settings["writes"], (name, latency)
        assert 0 < latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"] <= latency["max_ms"], (name, latency)
        assert figures["reads_per_write_median"] >= 1, (name, figures)
    for mode in ("spin", "poll"):  # each write reached the worker's cache as an invalidation
        assert report["invalidation"][f"fmredis {mode}"]["worker_stats"]["invalidations"] >= settings["writes"]

    flights = report["single_flight"]
    assert flights["get_or_load"]["loads_per_round"] == [1] * settings["flights"], flights
    assert flights["get_or_load"]["served_per_round"] == [32] * settings["flights"], flights
    assert all(loads > 1 for loads in flights["naive get, load, set"]["loads_per_round"]), flights
    assert flights["naive get, load, set"]["served_per_round"] == [32] * settings["flights"], flights
    assert flights["get_or_load"]["errors"] == [] and flights["naive get, load, set"]["errors"] == [], flights

    for size, part in report["codecs"].items():
        assert set(part["codecs"]) == {"none", "zstd-1", "zstd-3", "lz4"}, size
        for kind, figures in part["codecs"].items():
            if kind != "none":
                assert figures["roundtrip_ok"] is True and figures["bytes"] < part["json_bytes"], (size, kind)
                assert figures["ratio"] > 1 and figures["compress_us"] > 0 and figures["decompress_us"] > 0

    bound = report["byte_bound"]
    assert bound["values"] == settings["stream"] and bound["values"] * bound["value_json_bytes"] > 8 * 1024 * 1024
    assert bound["local_max_bytes"] // 2 < bound["max_local_bytes_seen"] <= bound["local_max_bytes"], bound
    assert bound["within_bound"] is True and bound["evictions"] > 0, bound
    assert bound["local_max_bytes"] // 2 < bound["tracemalloc_held_local_bytes"] <= bound["local_max_bytes"], bound
    assert bound["python_bytes_per_json_byte"] > 1, bound  # Python objects take more than their JSON

    assert len(report["targets"]) == 5
    assert all(isinstance(target["met"], bool) for target in report["targets"].values())
    assert report["targets"]["max local_bytes while streaming (bound 8 MiB)"]["met"] is True
    assert "write -> another process reads it" in result.stdout and "single flight" in result.stdout  # the table
    assert "MIN_ALLOWED_VERSION" in result.stdout  # the note on redis-py's version check
