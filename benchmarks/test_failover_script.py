"""Smoke test of ``python -m benchmarks.failover``: it runs end to end with short settings and writes both scenarios."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent  # the checkout: `-m benchmarks.failover` imports from there


@pytest.mark.topology
@pytest.mark.timeout(240)
def test_failover_script_writes_both_scenarios(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.failover", "--out", str(tmp_path), "--warmup", "0.3", "--settle", "0.2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads((tmp_path / "failover.json").read_text())
    for fault in ("sentinel_failover", "sigkill_master"):
        for store in ("resilient", "bare"):
            run = report[fault][store]
            assert run["acknowledged_writes"] > 0
            assert run["serving_new_master_after_s"] is not None
            assert {"lost_writes", "errors_by_type", "longest_gap_between_successful_writes_s"} <= run.keys()
            assert "p99_ms" in run["caller_wait_during_fault"]
    assert "new master" in result.stdout  # the table
