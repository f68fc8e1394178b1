"""The outage journal on its own and under a fallback whose primary fails on command (no server): restart, bounds,
corruption, exclusivity, durability settings."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from unittest.mock import ANY

import pytest

from fmredis import FallbackSessionStore, JournalError, StoreUnavailable
from fmredis.journal import ROW_OVERHEAD, OutageJournal
from tests.fakes import FakeClock, FakePrimary


def degraded(primary: FakePrimary, path: Path, clock: FakeClock, **kwargs: object) -> FallbackSessionStore:
    store = FallbackSessionStore(primary, journal_path=path, probe_interval=1.0, clock=clock, **kwargs)  # type: ignore[arg-type]
    primary.down = True
    store.set("first", {"n": 0})
    assert store.degraded
    return store


def test_a_store_opened_on_an_earlier_processs_journal_serves_and_writes_back_its_changes(
    tmp_path: Path, clock: FakeClock
) -> None:
    primary = FakePrimary()
    primary.inner.set("deleted-in-outage", {"n": -1})
    path = tmp_path / "journal"
    before = degraded(primary, path, clock)
    before.set("login", {"user_id": "u1"})
    before.delete("deleted-in-outage")
    before.journal.close()  # type: ignore[union-attr]  # the process dies: nothing is written back, the journal stays

    after = FallbackSessionStore(primary, journal_path=path, clock=clock)
    assert after.degraded and after.pending == 3
    assert after.get("login") == {"user_id": "u1", "last_activity": ANY}  # served from memory while Redis is down
    primary.down = False
    clock.advance(0.5)  # the get above probed (Redis was down): the next probe is due half a second later
    assert after.exists("first")  # the first call finds Redis up: the journal is written back before it runs
    assert not after.degraded and after.pending == 0
    assert primary.inner.get("login") == {"user_id": "u1", "last_activity": ANY}
    assert not primary.inner.exists("deleted-in-outage")  # the delete stays deleted
    assert after.journal is not None and after.journal.bytes == 0
    after.close()
    third = OutageJournal(path, max_bytes=10**6)
    assert third.loaded() == []  # nothing left for a third process
    third.close()


def test_a_journal_held_by_another_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    first = FallbackSessionStore(FakePrimary(), journal_path=path)
    with pytest.raises(JournalError, match=f"{path} is in use by another process: give each worker its own"):
        FallbackSessionStore(FakePrimary(), journal_path=path)
    first.close()
    FallbackSessionStore(FakePrimary(), journal_path=path).close()  # free again once closed


def test_an_unreadable_journal_is_moved_aside_and_a_new_one_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "journal"
    path.write_bytes(b"not a database at all" * 100)
    with caplog.at_level(logging.ERROR, logger="fmredis.fallback"):
        store = FallbackSessionStore(FakePrimary(), journal_path=path)
    assert not store.degraded and store.pending == 0
    [aside] = tmp_path.glob("journal.corrupt-*")
    assert aside.read_bytes().startswith(b"not a database")
    [record] = caplog.records
    assert str(aside) in record.getMessage() and "NOT written back" in record.getMessage()
    store.set("k", {"v": 1})  # the new journal works
    store.close()


def test_the_bound_counts_pending_bytes_and_a_written_back_key_gives_them_back(tmp_path: Path) -> None:
    journal = OutageJournal(tmp_path / "journal", max_bytes=3 * (ROW_OVERHEAD + 10))
    [one] = journal.record([("a", "set", b"x" * 9, 100.0)], 50.0)
    assert journal.bytes == ROW_OVERHEAD + 10
    journal.record([("a", "set", b"x" * 19, 100.0)], 50.0)  # replaces a's change: counted once, at its new size
    assert journal.bytes == ROW_OVERHEAD + 20
    with pytest.raises(StoreUnavailable, match="outage journal full"):
        journal.record([("b", "set", b"x" * 200, 100.0)], 50.0)
    assert journal.bytes == ROW_OVERHEAD + 20
    journal.remove([("a", one)])  # the older change was written back: the newer one stays
    journal.flush()
    assert journal.bytes == ROW_OVERHEAD + 20
    journal.remove([("a", one + 1)])
    journal.flush()
    assert journal.bytes == 0
    journal.close()


def test_changes_survive_a_reopen_in_order_with_their_payloads(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = OutageJournal(path, max_bytes=10**6)
    journal.record([("a", "set", b'{"v":1}', 123.5), ("b", "delete", None, None)], 50.0)
    journal.record([("a", "set", b'{"v":2}', 124.5)], 51.0)
    journal.close()
    again = OutageJournal(path, max_bytes=10**6)
    assert again.loaded() == [("b", "delete", None, None, 50.0, 2), ("a", "set", b'{"v":2}', 124.5, 51.0, 3)]
    assert again.record([("c", "delete", None, None)], 50.0) == [4]  # sequence numbers go on from the file's
    again.close()


@pytest.mark.parametrize(("fsync", "level"), [(False, 1), (True, 2)])
def test_fsync_chooses_sqlites_synchronous_level(tmp_path: Path, fsync: bool, level: int) -> None:
    journal = OutageJournal(tmp_path / "journal", max_bytes=10**6, fsync=fsync)
    assert journal._db.execute("PRAGMA synchronous").fetchone() == (level,)  # 1 NORMAL (kill -9), 2 FULL (power)
    assert journal._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    journal.close()


def test_a_failed_journal_write_is_refused_and_nothing_is_kept(tmp_path: Path, clock: FakeClock) -> None:
    primary = FakePrimary()
    store = degraded(primary, tmp_path / "journal", clock)
    journal = store.journal
    assert journal is not None
    journal._db.close()  # the file's connection is gone (a disk error, say)
    with pytest.raises(StoreUnavailable, match="outage journal write failed"):
        store.set("k", {"v": 1})
    assert store.get("k") is None and store.pending == 1
    journal._lock_file.close()


def test_a_journal_used_in_a_forked_child_refuses(tmp_path: Path) -> None:
    journal = OutageJournal(tmp_path / "journal", max_bytes=10**6)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's journal must not be written from here
        try:
            journal.record([("k", "delete", None, None)], 50.0)
            os.write(write, b"written")
        except JournalError as exc:
            os.write(write, str(exc).encode())
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    message = os.read(read, 1000).decode()
    assert "opened in another process (before a fork)" in message
    assert journal.loaded() == [] and journal.bytes == 0
    journal.close()


def test_the_journal_file_is_a_plain_sqlite_database(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = OutageJournal(path, max_bytes=10**6)
    journal.record([("a", "delete", None, None)], 50.0)
    db = sqlite3.connect(path)  # an operator can read what is pending with the sqlite3 shell
    try:
        assert db.execute("SELECT key, op FROM changes").fetchall() == [("a", "delete")]
    finally:
        db.close()
    journal.close()


def test_a_key_given_twice_in_one_call_is_counted_once(tmp_path: Path) -> None:
    journal = OutageJournal(tmp_path / "journal", max_bytes=10**6)
    seqs = journal.record([("a", "set", b"x" * 100, 1.0), ("a", "set", b"x" * 10, 1.0)], 50.0)
    assert journal.bytes == ROW_OVERHEAD + 11
    journal.remove([("a", seqs[-1])])
    assert journal.bytes == 0
    journal.close()


def test_a_journal_out_of_reach_is_an_error_and_is_not_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    OutageJournal(path, max_bytes=10**6).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")  # an operator's sqlite3 shell holds the file (5 s of waiting)
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("SELECT count(*) FROM changes").fetchall()
    try:
        with pytest.raises(JournalError, match="database is locked"):
            OutageJournal(path, max_bytes=10**6)
    finally:
        holder.close()
    assert not list(tmp_path.glob("journal.corrupt-*"))


def test_the_journal_files_are_private(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        journal = OutageJournal(tmp_path / "journal", max_bytes=10**6)
        journal.record([("a", "delete", None, None)], 50.0)
    finally:
        os.umask(previous)
    for name in ("journal", "journal-wal", "journal-shm", "journal.lock"):
        assert (tmp_path / name).stat().st_mode & 0o077 == 0, name
    journal.close()
