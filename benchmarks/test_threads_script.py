"""Smoke test of ``python -m benchmarks.threads``: every variant runs at two thread counts, the C reference is
measured, and the JSON and the chart are written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

VARIANTS = ("store", "store, pipelining off", "redis-py", "I/O thread sketch")


def test_threads_script_measures_every_variant(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "benchmarks.threads", "--threads", "1", "4", "--rounds", "1", "--ops", "200"]
    result = subprocess.run(
        [*command, "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    report = json.loads((tmp_path / "threads.json").read_text())
    assert set(report["threads"]) == {"1", "4"}
    for figures in report["threads"].values():
        assert all(figures[name] > 0 for name in VARIANTS)
        assert figures["redis-benchmark"] > 0  # redis-server's package brings redis-benchmark
        assert figures["store_vs_redis_py"] > 0
    assert (tmp_path / "threads.png").stat().st_size > 10_000
    assert "store vs redis-py" in result.stdout
