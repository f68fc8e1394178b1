"""Smoke test of ``python -m benchmarks.outage --quick``: every part runs end to end and writes its figures, and no
acknowledged write is lost. No timing is asserted (the machine may be busy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # the checkout: `-m benchmarks.outage` imports from there


@pytest.mark.fault
@pytest.mark.topology
@pytest.mark.timeout(240)
def test_outage_script_reports_every_part(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.outage", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads((tmp_path / "outage.json").read_text())
    assert {"under_load", "write_back", "write_cost", "sentinel_kill", "targets", "settings", "versions"} <= set(report)

    for mode in ("journal", "memory_only"):
        run = report["under_load"][mode]
        assert run["acknowledged_writes"] > 0
        assert run["lost"] == 0, run
        assert run["other_errors"] == 0, run["outcomes"]
        assert run["pending_at_check"] == 0
        for fault in ("kill", "freeze"):
            phase = run[fault]
            assert phase["lost_so_far"] == 0, phase
            assert phase["served_by_redis_after_answer_s"] is not None  # Redis served the writers again
            assert "p99_ms" in phase["write_during_outage"]
            assert {"probe_ok_after_answer_s", "refused_during_outage", "recovery"} <= phase.keys()
        assert run["kill"]["recovery"]["written_back"] > 0  # a kill is always noticed: connections are refused

    back = report["write_back"]
    assert back["lost"] == 0
    assert back["recovery"]["written_back"] == back["sessions"]
    assert back["sessions_per_s"] > 0

    for name in ("fallback memory-only", "fallback journal", "fallback journal fsync", "append-only file, os.write"):
        for threads in ("1", "8"):
            assert "p99_us" in report["write_cost"][name][threads]

    sentinel = report["sentinel_kill"]
    assert sentinel["acknowledged_writes"] > 0
    assert sentinel["serving_after_first_sentinel_named_s"] is not None
    assert "lost" in sentinel  # not asserted 0: replication is asynchronous, a write may die with the old master

    assert "write-back alone" in result.stdout  # the table
