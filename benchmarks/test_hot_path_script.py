"""Smoke test of ``python -m benchmarks.hot_path``: it runs end to end with a compared checkout (this one) and writes
its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout: `-m benchmarks.hot_path` imports from there


def test_hot_path_script_times_every_path(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "benchmarks.hot_path", "--rounds", "3", "--calls", "5", "--out", str(tmp_path)]
    result = subprocess.run(
        [*command, "--compare", str(ROOT)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads((tmp_path / "hot_path.json").read_text())
    for operation in ("get", "set"):
        paths = {"raw", "store", "store-rp", "pooled", "floor", "compared"}
        assert set(report[operation]) == paths | {"store_vs_compared_cpu"}
        assert report[operation]["raw"]["cpu_vs_raw"] == 1.0
        assert all(report[operation][path]["cpu_us"] > 0 and report[operation][path]["wall_us"] > 0 for path in paths)
    assert "CPU vs raw" in result.stdout
