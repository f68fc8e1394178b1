"""The documentation's Python examples run as written, against the test server.

Each file's ```python blocks run in order in one namespace (a later block may use what an earlier one defined), with
REDIS_URL pointed at the test's redis-server and every other REDIS_* variable removed, from the checkout's root.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]

_BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.DOTALL | re.MULTILINE)
# Where a runnable example could send a connection: the host part of every URL in it, and any IPv4 address.
_URL_HOSTS = re.compile(r"\b[a-z+]+://(?:[^@/\s\"']*@)?([^/\s\"'?]*)")
_IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")
_LOOPBACK = {"localhost", "127.0.0.1"}
# The password the configuration examples use: it must never reach the output.
_SECRET = "hunter2"


def blocks(path: Path) -> list[str]:
    return _BLOCK.findall(path.read_text(encoding="utf-8"))


def hosts(source: str) -> set[str]:
    """Every host an example names: URL hosts (each node of a multi-host URL) and IPv4 literals."""
    found = set(_IPV4.findall(source))
    for netloc in _URL_HOSTS.findall(source):
        for node in filter(None, netloc.split(",")):
            found.add(node.rsplit(":", 1)[0] if node.count(":") == 1 else node)
    return found


def test_docs_are_found() -> None:
    assert all(path.is_file() for path in DOCS)
    assert {path.name for path in DOCS} >= {"configuration.md", "lifecycle.md", "outages.md", "deployment.md"}


def test_the_loopback_guard_sees_other_hosts() -> None:
    # 203.0.113.1: a documentation address (RFC 5737), never a private-range one, even in a string no test connects to
    assert hosts('url = "redis+sentinel://:pw@127.0.0.1:26379,203.0.113.1:26379/m"') == {"127.0.0.1", "203.0.113.1"}
    assert hosts('RedisSessionStore.from_url("redis://cache.example:6380/0")') == {"cache.example"}
    assert hosts('"unix:///run/redis.sock"') == set()


@pytest.mark.parametrize("path", DOCS, ids=[str(path.relative_to(ROOT)) for path in DOCS])
def test_doc_examples_run(
    path: Path,
    redis_url: str,
    raw: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    examples = blocks(path)
    assert examples, f"{path.name} has no ```python example"
    for source in examples:
        assert hosts(source) <= _LOOPBACK, f"an example in {path.name} points past loopback: {hosts(source)}"
    for name in [name for name in os.environ if name.startswith("REDIS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.chdir(ROOT)
    namespace: dict[str, object] = {"__name__": f"docs_{path.stem}"}
    for number, source in enumerate(examples, start=1):
        exec(compile(source, f"{path.relative_to(ROOT)} (example {number})", "exec"), namespace)
    assert _SECRET not in capsys.readouterr().out
