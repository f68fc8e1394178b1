"""Issue 12, zero acknowledged writes lost in an outage: fault tests of the fallback's outage journal and its bounds,
with real redis-server processes (kill -9, SIGSTOP), real writer threads and real worker processes killed with -9.

"Acknowledged" means the call returned without raising; a write refused with ``StoreUnavailable`` was never
acknowledged and is counted apart. Nothing here asserts a duration: the tests count keys, rows and log records."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import redis

import fmredis.outage_log
from fmredis import JournalError, StoreUnavailable
from fmredis.fallback import FallbackSessionStore
from fmredis.resilient import ResilientRedisSessionStore
from tests.faults.test_resilience import factory, recovered, wait_until
from tests.harness.servers import RedisServer

pytestmark = [pytest.mark.fault, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "session:"  # RedisSessionStore's default key prefix


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer(persistent=True) as process:
        yield process


def fallback(url: str, **options: Any) -> FallbackSessionStore:
    return FallbackSessionStore(ResilientRedisSessionStore(factory(url)), **options)


def raw_client(server: RedisServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, protocol=2, socket_timeout=5)


def not_in_redis(server: RedisServer, expected: dict[str, dict[str, Any]]) -> list[str]:
    """The keys of ``expected`` whose session Redis does not hold with those fields (missing or another value)."""
    wrong: list[str] = []
    keys = list(expected)
    with raw_client(server) as client:
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            for key, payload in zip(chunk, client.mget([PREFIX + key for key in chunk]), strict=True):
                held = json.loads(payload) if payload is not None else None
                if held is None or any(held.get(name) != value for name, value in expected[key].items()):
                    wrong.append(key)
    return wrong


def held(server: RedisServer, keys: list[str]) -> list[str]:
    """Those of ``keys`` that Redis holds a session for."""
    missing = set(not_in_redis(server, {key: {} for key in keys}))
    return [key for key in keys if key not in missing]


def journal_rows(path: Path) -> int:
    """Rows in a journal file, read by a separate SQLite connection (the journal's lock is a separate file)."""
    with sqlite3.connect(path) as db:
        count: int = db.execute("SELECT count(*) FROM changes").fetchone()[0]
    db.close()
    return count


# --- 1. A new session every few ms from 10 threads, through kill -9 and SIGSTOP: every acknowledged write lands ------

THREADS = 12
PERIOD = 0.005  # each thread starts a write every 5 ms on a fixed schedule: 2,400 writes/s offered
# 2,200-2,400/s are achieved here; the floor only says the load did not collapse (writers stuck behind a lock or a
# frozen server would), with room for a slow machine: not a timing target (benchmarks/outage.py reports the rate).
MIN_RATE = 1_000


class ScheduledWriters:
    """``THREADS`` writers, each setting a NEW key ``w<n>-<i>`` on a fixed schedule (a late writer catches up rather
    than sliding its schedule). Acknowledged writes, refusals (``StoreUnavailable``) and other errors are kept apart."""

    def __init__(self, store: FallbackSessionStore) -> None:
        self.store = store
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked: dict[str, dict[str, Any]] = {}
        self.refused: list[str] = []
        self.errors: list[BaseException] = []
        self.started = self.ended = 0.0
        self.threads = [threading.Thread(target=self.run, args=(n,), daemon=True) for n in range(THREADS)]

    def run(self, n: int) -> None:
        i = 0
        due = self.started
        while not self.stop.is_set():
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            key, value = f"w{n}-{i}", {"n": n, "i": i}
            try:
                self.store.set(key, value, ttl=600)
            except StoreUnavailable:
                with self.lock:
                    self.refused.append(key)
            except BaseException as exc:
                with self.lock:
                    self.errors.append(exc)
                return
            else:
                with self.lock:
                    self.acked[key] = value
            i += 1
            due += PERIOD

    def __enter__(self) -> ScheduledWriters:
        self.started = time.monotonic()
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)
        self.ended = time.monotonic()

    def rate(self, count: int) -> float:
        return count / (self.ended - self.started)


@pytest.mark.parametrize(
    ("journal", "max_entries", "kill_seconds"),
    [(True, None, 3.0), (False, 200_000, 3.0), (False, None, 7.0)],
    ids=["journal", "memory-only-large-bound", "memory-only-default-bound"],
)
def test_no_acknowledged_new_session_is_lost_through_kill_and_freeze_at_1500_per_second(
    server: RedisServer, tmp_path: Path, journal: bool, max_entries: int | None, kill_seconds: float
) -> None:
    """The default bound's variant kills Redis for longer (7 s at 2,400 new sessions/s: past 10,000), so that its
    bound really refuses writes."""
    bounded = not journal and max_entries is None
    options: dict[str, Any] = {"max_entries": max_entries}
    if journal:
        options["journal_path"] = tmp_path / "j.db"
    store = fallback(server.url, **options)
    degraded_seen: list[bool] = []
    with ScheduledWriters(store) as load:
        time.sleep(1.0)
        server.kill()
        time.sleep(kill_seconds)
        degraded_seen.append(store.degraded)
        server.start(rewrite_config=False)
        wait_until(lambda: not store.degraded)  # the writers' own calls probe and write the outage back
        first_recovery = store.last_recovery
        time.sleep(0.5)
        server.freeze()
        try:
            time.sleep(3.0)
            degraded_seen.append(store.degraded)
        finally:
            server.thaw()
        wait_until(lambda: not store.degraded)
        time.sleep(0.5)
    wait_until(lambda: recovered(store))

    assert load.errors == []
    assert degraded_seen == [True, True]  # both faults really were outages for the store
    assert first_recovery is not None and first_recovery["written_back"] > 0
    assert store.last_recovery is not None and store.last_recovery["written_back"] > 0
    attempted = len(load.acked) + len(load.refused)
    assert load.rate(attempted) >= MIN_RATE, f"the load offered only {load.rate(attempted):.0f} writes/s"
    if bounded:
        # The honest bound: past 10,000 pending outage writes new ones are refused, and nothing of them is written.
        assert load.refused and store.memory.max_entries == 10_000
        assert held(server, load.refused) == []
    else:
        if not journal:
            assert load.refused == []  # 200,000 is never reached; with the journal, memory's 10,000 still applies
        assert load.rate(len(load.acked)) >= MIN_RATE, f"only {load.rate(len(load.acked)):.0f} writes/s acknowledged"
    assert not_in_redis(server, load.acked) == []
    assert store.pending == 0 and store.lost_unsynced == 0
    if store.journal is not None:
        assert store.journal.bytes == 0 and journal_rows(tmp_path / "j.db") == 0
    # Control: the check above does see a lost write.
    some = next(iter(load.acked))
    with raw_client(server) as client:
        client.delete(PREFIX + some)
    assert not_in_redis(server, load.acked) == [some]
    store.close()


# --- 2. A worker killed with -9 mid-outage, and restarted on its journal ------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys, time
    from fmredis import FallbackSessionStore, RedisSessionStore, ResilientRedisSessionStore, create_redis_client

    url, journal, mode, pause = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])

    def build():
        client = create_redis_client(
            url=url, socket_timeout=0.5, socket_connect_timeout=0.5, retry_attempts=0, health_check_interval=0,
            environ={},
        )
        return RedisSessionStore(client, owns_client=True)

    store = FallbackSessionStore(ResilientRedisSessionStore(build), journal_path=journal)
    if mode == "hold":
        print("open", flush=True)
        sys.stdin.read()
        store.close()
        sys.exit(0)
    i = 0
    while True:
        store.set(f"c-{i}", {"i": i, "by": "child"}, ttl=600)
        print(f"c-{i}", flush=True)  # printed only once acknowledged
        i += 1
        if pause:
            time.sleep(pause)
    """
)


def child(tmp_path: Path, url: str, journal: Path, mode: str, pause: float = 0.0) -> subprocess.Popen[bytes]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return subprocess.Popen(
        [sys.executable, str(script), url, str(journal), mode, str(pause)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _stream(process: subprocess.Popen[bytes]) -> IO[bytes]:
    assert process.stdout is not None
    return process.stdout


def acked_by_child_killed_mid_outage(tmp_path: Path, url: str, journal: Path, count: int, pause: float) -> list[str]:
    """Run a writer child until it has acknowledged ``count`` writes, SIGKILL it while it still writes, and return
    every key it acknowledged (each printed, flushed, after its ``set`` returned)."""
    process = child(tmp_path, url, journal, "write", pause)
    try:
        stdout = _stream(process)
        seen = 0
        while seen < count:
            line = stdout.readline()
            if not line:
                assert process.stderr is not None
                raise AssertionError(f"the child stopped: {process.stderr.read().decode()[-2000:]}")
            seen += 1
        assert process.poll() is None  # still writing when killed
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        assert process.returncode == -signal.SIGKILL
        rest = stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
    lines = rest.split(b"\n")[:-1]  # a line is acknowledged only once it is complete
    acked = [f"c-{i}" for i in range(seen)] + [line.decode() for line in lines]
    assert acked == [f"c-{i}" for i in range(len(acked))]  # one writer: acknowledged in order
    return acked


def test_a_worker_killed_mid_outage_loses_nothing_once_restarted_on_its_journal(
    server: RedisServer, tmp_path: Path
) -> None:
    journal = tmp_path / "j.db"
    server.kill()  # the child never sees Redis up
    acked = acked_by_child_killed_mid_outage(tmp_path, server.url, journal, count=2_000, pause=0.0)
    assert len(acked) >= 2_000
    expected = {key: {"i": int(key[2:]), "by": "child"} for key in acked}

    # A store opened on the journal while Redis is still down starts degraded and serves the sessions from memory.
    store = fallback(server.url, journal_path=journal)
    assert store.degraded and store.pending >= len(acked)
    assert store.journal is not None and store.journal.bytes > 0
    served = {key for key in acked if (store.get(key) or {}).get("i") == expected[key]["i"]}
    assert sorted(set(acked) - served) == []
    assert store.degraded  # the probes (due at once) found Redis still down
    store.close()

    server.start(rewrite_config=False)
    store = fallback(server.url, journal_path=journal)
    assert store.degraded
    assert store.exists("anything") is False  # one call: it finds Redis up and writes the journal back
    assert not store.degraded and store.pending == 0
    assert not_in_redis(server, expected) == []
    assert store.last_recovery is not None and store.last_recovery["written_back"] >= len(acked)
    assert store.journal is not None and store.journal.bytes == 0 and journal_rows(journal) == 0
    store.close()


def test_control_without_resuming_the_journal_the_killed_workers_writes_are_lost(
    server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The naive restart (journal written, never taken up) fails the check the test above passes."""
    journal = tmp_path / "j.db"
    server.kill()
    acked = acked_by_child_killed_mid_outage(tmp_path, server.url, journal, count=200, pause=0.0)
    server.start(rewrite_config=False)
    monkeypatch.setattr(FallbackSessionStore, "_resume", lambda self, changes: None)
    store = fallback(server.url, journal_path=journal)
    store.exists("anything")
    expected = {key: {"i": int(key[2:])} for key in acked}
    assert len(not_in_redis(server, expected)) == len(acked)
    store.close()


# --- 3. The journal full: refused, not acknowledged, not kept -------------------------------------------------------


def test_a_full_journal_refuses_the_write_and_keeps_every_acknowledged_one(server: RedisServer, tmp_path: Path) -> None:
    store = fallback(server.url, journal_path=tmp_path / "j.db", journal_max_bytes=4_096)
    assert store.journal is not None
    server.kill()
    acked: dict[str, dict[str, Any]] = {}
    refusal = ""
    for i in range(1_000):
        try:
            store.set(f"s{i}", {"i": i}, ttl=600)
        except StoreUnavailable as exc:
            refusal, refused = str(exc), f"s{i}"
            break
        acked[f"s{i}"] = {"i": i}
    assert "journal full" in refusal and len(acked) >= 10
    assert store.degraded
    before = (store.pending, store.journal.bytes, journal_rows(tmp_path / "j.db"))
    assert before[0] == len(acked) == before[2]
    assert 0 < before[1] <= 4_096
    # Nothing of the refused write was kept: not in memory, not pending, not journaled; and it stays refused.
    assert store.get(refused) is None and not store.memory.exists(refused)
    with pytest.raises(StoreUnavailable, match="journal full"):
        store.set(refused, {"i": -1}, ttl=600)
    assert (store.pending, store.journal.bytes, journal_rows(tmp_path / "j.db")) == before
    # A session already pending may still be rewritten if it does not grow.
    first = next(iter(acked))
    store.set(first, {"i": 0}, ttl=600)
    assert store.pending == before[0]

    server.start(rewrite_config=False)
    wait_until(lambda: recovered(store))
    assert not_in_redis(server, acked) == []
    with raw_client(server) as client:
        assert client.exists(PREFIX + refused) == 0
    assert store.journal.bytes == 0 and store.pending == 0
    store.set(refused, {"i": 99})  # room again once written back
    assert not_in_redis(server, {refused: {"i": 99}}) == []
    store.close()


# --- 4. Redis fails again during the write-back: it resumes, and the journal empties ------------------------------

SESSIONS = 20_000


def test_redis_killed_during_the_write_back_loses_nothing_and_the_journal_empties(
    server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "j.db"
    primary = ResilientRedisSessionStore(factory(server.url))
    store = FallbackSessionStore(primary, journal_path=path, max_entries=SESSIONS + 1_000)
    assert store.journal is not None
    server.kill()
    expected = {f"o{i}": {"i": i} for i in range(SESSIONS)}
    for key, value in expected.items():
        store.set(key, value, ttl=600)
    assert store.pending == SESSIONS == journal_rows(path)

    # Kill Redis between the MGET and the SETs of the write-back's 4th batch: 3 batches are written back.
    calls = 0
    set_many = primary.set_many

    def set_many_then_die(*args: Any, **kwargs: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 4:
            server.kill()
        return set_many(*args, **kwargs)

    monkeypatch.setattr(primary, "set_many", set_many_then_die)
    server.start(rewrite_config=False)
    wait_until(lambda: recovered(store) or calls >= 4)  # each call here may probe, and write back
    assert calls == 4 and store.degraded
    left = store.pending
    assert left == SESSIONS - 3 * fmredis.outage_log.BATCH  # resumable: exactly the unwritten rest is pending ...
    assert journal_rows(path) == left  # ... and still journaled
    assert store.journal.bytes > 0

    server.start(rewrite_config=False)
    written_before = SESSIONS - len(not_in_redis(server, expected))
    assert written_before == 3 * fmredis.outage_log.BATCH  # the first 3 batches were in Redis (AOF) before resuming
    wait_until(lambda: recovered(store))
    assert calls > 4
    assert not_in_redis(server, expected) == []
    assert store.pending == 0 and store.journal.bytes == 0 and journal_rows(path) == 0
    assert store.last_recovery is not None and store.last_recovery["written_back"] == SESSIONS
    store.close()


# --- 5. A corrupt or torn journal: moved aside or read up to the tear, never a crash ------------------------------


@pytest.mark.parametrize("damage", ["garbage", "half-a-database"])
def test_a_corrupt_journal_is_moved_aside_logged_and_replaced(
    server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    path = tmp_path / "j.db"
    if damage == "garbage":
        path.write_bytes(b"this is not an SQLite database\x00\xff" * 300)
    else:  # a real journal with rows, cut in half
        store = fallback(server.url, journal_path=path)
        server.kill()
        for i in range(300):
            store.set(f"old{i}", {"i": i, "pad": "x" * 200}, ttl=600)
        store.close()
        server.start(rewrite_config=False)
        db = sqlite3.connect(path)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        with open(path, "r+b") as handle:
            handle.truncate(path.stat().st_size // 2)
    damaged = path.read_bytes()
    with caplog.at_level(logging.ERROR, logger="fmredis.fallback"):
        store = fallback(server.url, journal_path=path)
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].name == "fmredis.fallback"
    aside = [name for name in os.listdir(tmp_path) if name.removeprefix("j.db.corrupt-").isdigit()]
    assert len(aside) == 1 and aside[0] in errors[0].getMessage()
    assert (tmp_path / aside[0]).read_bytes() == damaged  # kept, for a human to look at
    assert not store.degraded and store.pending == 0
    # The store works, and so does its fresh journal.
    store.set("ok", {"v": 1})
    assert (store.get("ok") or {}).get("v") == 1
    server.kill()
    store.set("during", {"v": 2}, ttl=600)
    assert journal_rows(path) == 1
    server.start(rewrite_config=False)
    wait_until(lambda: recovered(store))
    assert not_in_redis(server, {"ok": {"v": 1}, "during": {"v": 2}}) == []
    store.close()


def test_a_torn_wal_keeps_a_prefix_of_the_acknowledged_writes(server: RedisServer, tmp_path: Path) -> None:
    original = tmp_path / "orig" / "j.db"
    original.parent.mkdir()
    server.kill()
    # Few enough commits that SQLite's auto-checkpoint (1,000 WAL pages) leaves them all in the WAL, in order.
    acked = acked_by_child_killed_mid_outage(tmp_path, server.url, original, count=100, pause=0.002)
    wal = Path(f"{original}-wal")
    size = wal.stat().st_size
    assert size > 20_000

    def restored(cut: int | None) -> list[int]:
        """Open a copy of the child's journal (its WAL cut to ``cut`` bytes) with Redis down: the ``i`` it serves."""
        copy = tmp_path / f"cut-{cut}" / "j.db"
        copy.parent.mkdir()
        shutil.copy(original, copy)
        shutil.copy(wal, f"{copy}-wal")  # not the -shm: it is rebuilt from the WAL
        if cut is not None:
            os.truncate(f"{copy}-wal", cut)
        store = fallback(server.url, journal_path=copy)  # never raises
        try:
            found = [i for i in range(len(acked) + 5) if store.get(f"c-{i}") is not None]
            assert store.pending == len(found)
            for i in found:
                got = store.get(f"c-{i}") or {}
                assert (got.get("i"), got.get("by")) == (i, "child")
            assert not any(name.startswith("j.db.corrupt") for name in os.listdir(copy.parent))
        finally:
            store.close()
        return found

    whole = restored(None)
    # Untorn: every acknowledged write, plus at most the one in flight (committed, killed before it was printed).
    assert whole[: len(acked)] == list(range(len(acked))) and len(whole) <= len(acked) + 1
    for cut in (size - 100, size - 10_000, size // 2, 100, 31, 0):
        found = restored(cut)
        assert found == list(range(len(found)))  # a prefix, in write order
        assert len(found) <= len(whole)
        if cut >= size // 2:
            assert found, f"nothing recovered from a WAL cut to {cut} of {size} bytes"
        if cut <= size // 2:
            assert len(found) < len(whole)  # the tear did cost commits: the test really tore the WAL
    # And a prefix restored from a torn WAL is written back like any journal.
    copy = tmp_path / "cut-final" / "j.db"
    copy.parent.mkdir()
    shutil.copy(original, copy)
    shutil.copy(wal, f"{copy}-wal")
    os.truncate(f"{copy}-wal", size // 2)
    server.start(rewrite_config=False)
    store = fallback(server.url, journal_path=copy)
    store.exists("anything")
    assert not store.degraded
    written = store.last_recovery["written_back"] if store.last_recovery is not None else 0
    assert written > 0
    assert not_in_redis(server, {f"c-{i}": {"i": i} for i in range(written)}) == []
    store.close()


# --- 6. One journal, one process ------------------------------------------------------------------------------------


def test_a_second_process_on_the_same_journal_gets_journal_error(server: RedisServer, tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    holder = child(tmp_path, server.url, path, "hold")
    try:
        assert _stream(holder).readline() == b"open\n"
        for _attempt in range(2):  # a refused opener must not release the holder's lock
            with pytest.raises(JournalError, match=re.escape(str(path))):
                fallback(server.url, journal_path=path)
        assert holder.stdin is not None
        holder.stdin.close()  # the holder closes its store and exits
        assert holder.wait(10) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
        for pipe in (holder.stdin, holder.stdout, holder.stderr):
            if pipe is not None:
                pipe.close()
    store = fallback(server.url, journal_path=path)  # control: free again once the holder is gone
    store.close()


def test_a_second_store_in_the_same_process_gets_journal_error(server: RedisServer, tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    first = fallback(server.url, journal_path=path)
    with pytest.raises(JournalError, match=re.escape(str(path))):
        fallback(server.url, journal_path=path)
    server.kill()
    first.set("k", {"v": 1}, ttl=600)  # the first store's journal still works
    assert journal_rows(path) == 1
    first.close()
    second = fallback(server.url, journal_path=path)  # takes up the first's journal
    assert second.degraded and second.pending == 1
    second.close()


# --- Defects found while writing these tests, fixed since -----------------------------------------------------------


def test_the_journal_is_not_readable_by_other_users(server: RedisServer, tmp_path: Path) -> None:
    """The journal holds session ids (bearer credentials) and session payloads: other local users must not read it."""
    previous = os.umask(0o022)  # the usual umask, whatever the test runner's is
    try:
        store = fallback(server.url, journal_path=tmp_path / "j.db")
        server.kill()
        store.set("secret-session-id", {"v": 1}, ttl=600)
        modes = {name: os.stat(tmp_path / name).st_mode & 0o777 for name in ("j.db", "j.db-wal", "j.db-shm")}
        store.close()
    finally:
        os.umask(previous)
    assert {name: mode & 0o077 for name, mode in modes.items()} == dict.fromkeys(modes, 0), {
        n: oct(m) for n, m in modes.items()
    }


def corrupt_index(path: Path) -> None:
    """Damage the journal where a scan of its table does not look: the free-list pointers in the file's header (a
    first free-list trunk page far past the end of the file), so that only SQLite's integrity check sees it."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    with open(path, "r+b") as handle:
        handle.seek(32)
        handle.write((999_999).to_bytes(4, "big") + (5).to_bytes(4, "big"))
    check = sqlite3.connect(path)
    assert check.execute("SELECT count(*) FROM changes").fetchone()[0] > 0  # the table still reads ...
    assert check.execute("PRAGMA quick_check(1)").fetchone() != ("ok",)  # ... but the file is damaged
    check.close()


def test_a_journal_with_a_corrupt_index_is_moved_aside_too(server: RedisServer, tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    store = fallback(server.url, journal_path=path)
    server.kill()
    for i in range(300):
        store.set(f"k{i}", {"i": i, "pad": "x" * 300}, ttl=600)
    store.close()
    corrupt_index(path)
    server.start(rewrite_config=False)
    store = fallback(server.url, journal_path=path)  # the damaged file is moved aside; its readable rows carried over
    store.exists("anything")  # written back
    assert not store.degraded
    assert store.delete("k1") is True  # the user logs out, Redis up
    left = store.journal.bytes if store.journal is not None else 0
    server.kill()
    refusal = ""
    try:
        store.set("new", {"v": 1}, ttl=600)
    except StoreUnavailable as exc:
        refusal = str(exc)  # "outage journal write failed (database disk image is malformed)", every write, forever
    server.start(rewrite_config=False)
    wait_until(lambda: recovered(store))
    store.close()
    store = fallback(server.url, journal_path=path)  # the worker restarts
    store.exists("anything")
    resurrected = store.get("k1") is not None  # the stale rows are written back again, the deleted session included
    store.close()
    assert (left, refusal, resurrected) == (0, "", False)


def test_a_write_refused_at_the_memory_bound_does_not_scan_every_pinned_session(server: RedisServer) -> None:
    bound = 2_000
    store = fallback(server.url, max_entries=bound)
    server.kill()
    for i in range(bound):
        store.set(f"k{i}", {"i": i}, ttl=600)
    asked = 0
    pinned = store.memory.pinned
    assert pinned is not None

    def counting(key: str) -> bool:
        nonlocal asked
        asked += 1
        return pinned(key)

    store.memory.pinned = counting
    with pytest.raises(StoreUnavailable):
        store.set("one-too-many", {"i": -1}, ttl=600)
    store.close()
    # Refusing needs one count (pending == bound), not a walk over every session under the fallback's lock (one
    # pinned() call per held session, ~5 ms at 10,000, serializing the store, before the fix).
    assert asked <= 10, f"{asked} pinned() calls for one refused write"
