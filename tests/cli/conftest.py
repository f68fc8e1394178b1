"""The CLI run as users run it: ``python -m fmredis ...`` in a subprocess, its environment holding only the ``REDIS_*``
variables a test gives (any on the machine are dropped, so they cannot redirect the tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def cli_environ(env: dict[str, str] | None = None) -> dict[str, str]:
    """The current environment without any ``REDIS_*`` variable, plus ``env``."""
    environ = {name: value for name, value in os.environ.items() if not name.startswith("REDIS_")}
    environ.update(env or {})
    return environ


def run_cli(*args: str, env: dict[str, str] | None = None) -> Run:
    """``python -m fmredis *args`` with the current environment minus every ``REDIS_*`` variable, plus ``env``
    (PYTHONPATH and the rest unchanged)."""
    done = subprocess.run(
        [sys.executable, "-m", "fmredis", *args],
        capture_output=True,
        text=True,
        env=cli_environ(env),
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def assert_one_line_failure(run: Run, code: int, *mentions: str) -> str:
    """A failure as promised: exit ``code``, nothing on stdout, one line on stderr naming ``mentions``, no traceback."""
    assert run.code == code, run
    assert run.stdout == "", run
    assert run.stderr.endswith("\n") and run.stderr.count("\n") == 1, run
    assert "Traceback" not in run.stderr
    for mention in mentions:
        assert mention in run.stderr, run
    return run.stderr


Cli = Callable[..., Run]


@pytest.fixture
def cli_run(redis_url: str) -> Cli:
    """``run_cli`` with REDIS_URL pointing at the test server (``env`` adds to or overrides it)."""

    def run(*args: str, env: dict[str, str] | None = None) -> Run:
        return run_cli(*args, env={"REDIS_URL": redis_url, **(env or {})})

    return run
