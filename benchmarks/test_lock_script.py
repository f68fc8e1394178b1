"""Smoke test of ``python -m benchmarks.lock --quick``: the three locks (fmredis twice uncontended) run both parts,
the round trips are counted from what the server saw, every contended lock handed over between processes without two
holders at once, and the JSON and the table are written. No timing is asserted (the machine may be busy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # the checkout: `-m benchmarks.lock` imports from there

UNCONTENDED = ("fmredis auto_renew=False", "fmredis", "redis-py Lock", "python-redis-lock")
CONTENDED = ("fmredis", "redis-py Lock", "python-redis-lock")


@pytest.mark.timeout(120)
def test_lock_script_reports_every_variant(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.lock", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads((tmp_path / "lock.json").read_text())
    assert {"uncontended", "contention", "targets", "settings", "versions"} <= set(report)
    assert report["settings"]["quick"] is True
    assert {"redis-server", "redis-py", "python-redis-lock", "fmredis"} <= set(report["versions"])

    assert set(report["uncontended"]) == set(UNCONTENDED)
    for name, figures in report["uncontended"].items():
        assert figures["wall_us"] > 0 and figures["cpu_us"] > 0 and figures["redis_cpu_us"] > 0, (name, figures)
        assert "background_cpu_us" in figures, name
        assert figures["wall_vs_redis_py"] > 0, (name, figures)
        # The MONITOR pass: what the client sent, plus what its scripts ran, is what the server's counters saw.
        sent, ran = figures["sent_per_cycle"], figures["scripted_per_cycle"]
        assert figures["round_trips_per_cycle"] == pytest.approx(sum(sent.values())) and sent, (name, figures)
        assert figures["commands_per_cycle"] >= figures["round_trips_per_cycle"], (name, figures)
        assert figures["commands_per_cycle"] == pytest.approx(sum(sent.values()) + sum(ran.values()), abs=0.5), name
    # Known shapes of the two peers: redis-py sends SET NX PX then the release script; python-redis-lock a GET first.
    assert report["uncontended"]["redis-py Lock"]["sent_per_cycle"] == {"EVALSHA": 1.0, "SET": 1.0}
    assert report["uncontended"]["python-redis-lock"]["sent_per_cycle"] == {"EVALSHA": 1.0, "GET": 1.0, "SET": 1.0}

    assert set(report["contention"]) == {"2", "4"}
    for count, variants in report["contention"].items():
        assert set(variants) == set(CONTENDED), count
        for name, figures in variants.items():
            handoff = figures["handoff"]
            assert handoff["count"] > 0, (count, name, figures)
            assert 0 < handoff["p50_ms"] <= handoff["p90_ms"] <= handoff["max_ms"], (count, name, handoff)
            assert figures["acquisitions"] > handoff["count"], (count, name)  # the first one is no hand-off
            assert figures["overlaps"] == 0, (count, name, figures)  # never two holders at once
            assert figures["errors"] == {}, (count, name, figures)
        stats = variants["fmredis"]["fmredis_stats"]
        assert stats["acquisitions"] == variants["fmredis"]["acquisitions"], stats
        assert stats["contended"] > 0, stats  # the workers really queued for the lock

    assert len(report["targets"]) == 5
    assert all(isinstance(target["met"], bool) for target in report["targets"].values())
    assert "hand-off under contention" in result.stdout and "round trips" in result.stdout  # the table
