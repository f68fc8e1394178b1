"""Django's own session-backend tests (``SessionTestsMixin``, tests/sessions_tests/ of Django's source), importable as
``sessions_tests``.

They ship in Django's sdist, not in the wheel: `install` downloads the sdist of the installed version with pip (one
download per version, kept under the checkout's gitignored ``.cache/django-<version>/``), extracts that one test
package next to it and puts the folder on ``sys.path``. A failed download raises `SuiteUnavailable` saying why: the
mixin test then fails, it is never skipped.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import django

PACKAGE = "sessions_tests"
#: The checkout's root (tests/contrib/ is two levels down); its ``.cache/`` is gitignored.
ROOT = Path(__file__).resolve().parents[2]
_DOWNLOAD_TIMEOUT = 300.0


class SuiteUnavailable(RuntimeError):
    """Django's session tests could not be fetched (no network, no such sdist); the message says why."""


def cache_dir(version: str = django.__version__) -> Path:
    return ROOT / ".cache" / f"django-{version}"


def install(version: str = django.__version__) -> Path:
    """Make ``import sessions_tests`` load Django `version`'s session tests, fetching them on first use; returns the
    folder put on ``sys.path``. Safe to run from several processes at once (tox envs of one Django version)."""
    folder = cache_dir(version)
    if not (folder / PACKAGE / "tests.py").is_file():
        _fetch(version, folder)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return folder


def _fetch(version: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fetch-", dir=folder))
    try:
        sdist = _download(version, work)
        _extract(sdist, work / PACKAGE)
        try:
            os.rename(work / PACKAGE, folder / PACKAGE)  # atomic: a reader sees the whole package or none
        except OSError:
            if not (folder / PACKAGE / "tests.py").is_file():  # not just another process having got there first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty: a failed first fetch leaves nothing behind


def _download(version: str, into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-input"]
    command += ["--disable-pip-version-check", "--quiet", f"django=={version}", "-d", str(into)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_DOWNLOAD_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SuiteUnavailable(f"could not run pip to download Django {version}'s sdist: {exc}") from exc
    sdists = sorted(into.glob("[Dd]jango-*.tar.gz"))
    if done.returncode != 0 or not sdists:
        raise SuiteUnavailable(
            f"could not download Django {version}'s sdist, which holds SessionTestsMixin (tests/{PACKAGE}/; the wheel "
            f"does not): `{' '.join(command[2:])}` exited with {done.returncode}:\n{_tail(done.stderr + done.stdout)}"
        )
    return sdists[0]


def _extract(sdist: Path, package: Path) -> None:
    """Copy the files of tests/sessions_tests/ (only those, and no links or folders from the archive) to `package`."""
    pattern = re.compile(rf"^[^/]+/tests/{PACKAGE}/([A-Za-z0-9_]+\.py)$")
    package.mkdir()
    with tarfile.open(sdist, "r:gz") as archive:
        for member in archive:
            found = pattern.match(member.name)
            if found and member.isfile():
                source = archive.extractfile(member)
                assert source is not None
                with source, open(package / found.group(1), "wb") as target:
                    shutil.copyfileobj(source, target)
    if not (package / "tests.py").is_file():
        raise SuiteUnavailable(f"{sdist.name} has no tests/{PACKAGE}/tests.py")


def _tail(text: str, lines: int = 6, width: int = 300) -> str:
    """The end of pip's output (long lines cut), with any credentials in index URLs masked."""
    masked = re.sub(r"(//)[^/@\s]+@", r"\1***@", text.strip())
    return "\n".join(line[:width] for line in masked.splitlines()[-lines:]) or "(no output)"
