"""The "before" client stays faithful (records per call, their order and shape, the breaker); the paced run's facts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from benchmarks.legacy_client import CircuitBreaker, CircuitOpenError, RedisClient, production_logging, request_scope
from benchmarks.paced import PATHS, format_table, run

ORDER = [
    "Service boundary inbound: Redis.redis_get",
    "Operation started: redis_get",
    "metric external_call_duration",
    "Service boundary outbound: Redis.redis_get",
    "event technical.external_call_success",
    "Operation completed: redis_get",
]


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_six_records_per_call_outside_a_request(bench_client: redis.Redis, tmp_path: Path) -> None:
    legacy = RedisClient(bench_client)
    log = tmp_path / "app.log"
    with production_logging(str(log)) as counter:
        legacy.get("fmredis-bench:legacy:missing")
        legacy.get("fmredis-bench:legacy:missing")
    assert counter.count == 12
    records = lines(log)
    assert [r["message"] for r in records[:6]] == ORDER
    assert {"timestamp", "logger", "level", "correlation_id"} <= set(records[0])
    assert records[2]["metric"] == "external_call_duration"
    assert records[2]["tags"]["operation"] == "redis_get"  # type: ignore[index]


def test_inside_a_request_the_first_call_of_an_operation_logs_six_and_repeats_two(
    bench_client: redis.Redis, tmp_path: Path
) -> None:
    legacy = RedisClient(bench_client)
    log = tmp_path / "app.log"
    key = "fmredis-bench:legacy:k"
    with production_logging(str(log)) as counter, request_scope("req-1"):
        counts = []
        for call in (lambda: legacy.get(key), lambda: legacy.get(key), lambda: legacy.set(key, "{}", 60)):
            before = counter.count
            call()
            counts.append(counter.count - before)
    assert counts == [6, 2, 6]
    assert {r["correlation_id"] for r in lines(log)} == {"req-1"}
    bench_client.unlink(key)


def test_the_breaker_opens_after_five_failures_and_probes_once() -> None:
    breaker = CircuitBreaker(failure_threshold=5, recovery_timeout=0.05)
    for _ in range(4):
        breaker.record_failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    time.sleep(0.06)
    assert breaker.allow() and breaker.state == "half-open"
    assert not breaker.allow()  # only one probe
    breaker.record_success()
    assert breaker.state == "closed"


def test_an_open_breaker_refuses_calls(bench_client: redis.Redis, tmp_path: Path) -> None:
    legacy = RedisClient(bench_client)
    assert legacy.breaker is not None
    for _ in range(5):
        legacy.breaker.record_failure()
    with production_logging(str(tmp_path / "app.log")), pytest.raises(CircuitOpenError):
        legacy.get("k")


def test_a_short_paced_run_reports_the_deterministic_facts(bench_url: str, tmp_path: Path) -> None:
    shown: list[str] = []
    document = run(bench_url, seconds=0.3, segments=1, out_dir=tmp_path, progress=shown.append)
    paths = document["paths"]
    assert list(paths) == list(PATHS)
    assert paths["raw redis-py"]["records_per_op"] == 0
    assert paths["after: fmredis"]["records_per_op"] == 0
    assert paths["before: logging client"]["records_per_op"] == 6  # one get and one set per request: both first calls
    assert all(p["ops"] == 60 for p in paths.values())
    assert len(shown) == 3
    assert (tmp_path / "paced.png").stat().st_size > 0
    assert json.loads((tmp_path / "paced.json").read_text())["paths"]["after: fmredis"]["records_per_s"] == 0
    assert "before/after CPU ratio" in format_table(document)
