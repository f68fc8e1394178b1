"""The README's Python examples run as written, against the test server (REDIS_URL points them at it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_the_readme_has_examples() -> None:
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("source", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_readme_example_runs(
    source: str, redis_url: str, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)
    exec(compile(source, str(README), "exec"), {"__name__": "readme_example"})
    assert "hunter2" not in capsys.readouterr().out
