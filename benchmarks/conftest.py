"""Benchmark fixtures: a throwaway redis-server on loopback (or REDIS_URL's server), versions in the saved JSON, and a
ratio table (each candidate against its group's baseline) at the end of the run."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pytest_redis import factories

from fmredis import create_redis_client, diagnostics

bench_redis_server = factories.redis_proc(host="127.0.0.1", port=None)
BENCH_PREFIX = "fmredis-bench:"


@pytest.fixture(scope="session")
def bench_url(request: pytest.FixtureRequest) -> str:
    """REDIS_URL when set (a server you point it at: only keys under the bench prefix are written and removed), else
    a redis-server started here on 127.0.0.1."""
    if os.environ.get("REDIS_URL"):
        return os.environ["REDIS_URL"]
    server = request.getfixturevalue("bench_redis_server")
    return f"redis://{server.host}:{server.port}/0"


@pytest.fixture(scope="session")
def bench_client(bench_url: str, pytestconfig: pytest.Config) -> Iterator[redis.Redis]:
    client = create_redis_client(url=bench_url, environ={})
    pytestconfig.stash[_DIAGNOSTICS] = diagnostics(client)
    yield client
    for key in client.scan_iter(match=BENCH_PREFIX + "*", count=1000):
        client.unlink(key)
    client.close()


@pytest.fixture(scope="session")
def bench_prefix() -> str:
    """Every key a benchmark writes starts with this; the session removes them all at the end."""
    return BENCH_PREFIX


_DIAGNOSTICS = pytest.StashKey[dict[str, Any]]()


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: Any, output_json: dict[str, Any]) -> None:
    output_json["fmredis"] = {
        "diagnostics": config.stash.get(_DIAGNOSTICS, None),
        "ratios": group_ratios(
            {"group": b["group"], "name": b["name"], "role": b["extra_info"].get("role"), **b["stats"]}
            for b in output_json["benchmarks"]
        ),
    }


def _variant(name: str, group: str) -> str:
    """``test_x[orjson-seed]`` -> ``orjson-seed``; ``test_get_store`` and ``test_set_store[<its group>]`` -> the
    function name (a parameter that only names the group tells the variants apart by nothing)."""
    function, _, param = name.partition("[")
    return param[:-1] if param and param[:-1] != group else function


def group_ratios(rows: Any) -> dict[str, dict[str, Any]]:
    """For each group, every candidate's median and min time divided by the group's baseline's (1.0 = same cost)."""
    groups: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        groups[row["group"]][row["name"]] = row
    result: dict[str, dict[str, Any]] = {}
    for group, members in sorted(groups.items()):
        baselines = [m for m in members.values() if m["role"] == "baseline"]
        if len(baselines) != 1:
            continue
        base = baselines[0]
        for name, member in members.items():
            if member is not base:
                result[f"{group}: {_variant(name, group)} vs {_variant(base['name'], group)}"] = {
                    "median_ratio": round(member["median"] / base["median"], 3),
                    "min_ratio": round(member["min"] / base["min"], 3),
                    "median_us": round(member["median"] * 1e6, 2),
                    "baseline_median_us": round(base["median"] * 1e6, 2),
                }
    return result


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is None or session.disabled or not session.benchmarks:
        return
    rows = (
        {
            "group": b.group,
            "name": b.name,
            "role": b.extra_info.get("role"),
            "median": b.stats.median,
            "min": b.stats.min,
        }
        for b in session.benchmarks
    )
    ratios = group_ratios(rows)
    if not ratios:
        return
    terminalreporter.section("fmredis: cost relative to the baseline of each group (1.00 = same)")
    for label, r in ratios.items():
        speed = f"  = {1 / r['median_ratio']:.1f}x faster" if r["median_ratio"] < 0.95 else ""
        terminalreporter.write_line(
            f"{label:<66} median x{r['median_ratio']:.3f} ({r['median_us']:.1f} vs {r['baseline_median_us']:.1f} us)"
            f"  min x{r['min_ratio']:.3f}{speed}"
        )
