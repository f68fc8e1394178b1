"""OutageJournal: a fallback's outage changes on local disk, so that a worker killed mid-outage loses none of them.

SQLite in WAL mode, from the standard library: one ``INSERT OR REPLACE`` per acknowledged change, committed before the
change is acknowledged. With ``synchronous=NORMAL`` (the default) a commit is a write into the WAL file, in the OS page
cache: it survives ``kill -9`` of the process, not a power loss. ``fsync=True`` (``synchronous=FULL``) syncs every
commit to the disk, which survives a power loss and costs a disk flush per outage write. Checkpoints run on a thread of
the journal's own, never in a writer. Measured against an append-only file with ``os.write`` per change
(benchmarks/outage.py): about 40 us against 3.5 us per change on this project's test machine, well inside an outage
write's budget, and SQLite gives for free what the log file would have to build (a key's change replaces its older
one, written-back changes are removed by key, torn tails are ignored, the space is reclaimed, and the file can be
inspected with the sqlite3 shell).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from typing import IO, Any

from fmredis.errors import JournalError, StoreUnavailable

__all__ = ["Change", "OutageJournal"]

logger = logging.getLogger("fmredis.fallback")

#: Bytes counted per change besides its key and payload (the row's own overhead, roughly).
ROW_OVERHEAD = 64

#: (key, op, payload, expires at, made at (both epoch seconds), seq): a journaled change; seq orders them and tells a
#: rewrite apart.
Change = tuple[str, str, "bytes | None", "float | None", float, int]

#: Commits between checkpoints (a few pages each: the WAL stays within a few MiB).
_CHECKPOINT_EVERY = 200

#: WAL bytes past which the checkpointer makes the WAL start over.
_WAL_RESTART = 16 * 2**20

_INSERT = "INSERT OR REPLACE INTO changes VALUES (?, ?, ?, ?, ?, ?, ?)"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS changes (
    key TEXT PRIMARY KEY,
    op TEXT NOT NULL,
    payload BLOB,
    expires REAL,
    at REAL NOT NULL,
    seq INTEGER NOT NULL,
    size INTEGER NOT NULL
) WITHOUT ROWID
"""


class OutageJournal:
    """The pending outage changes of one :class:`~fmredis.FallbackSessionStore`, in the SQLite file ``path``.

    One process at a time: the journal holds an exclusive ``flock`` on ``path + ".lock"`` while open, and a second
    opener (another worker given the same path) gets :class:`~fmredis.errors.JournalError`. Give each worker its own
    path (a stable one per worker slot, so that a restarted worker finds its predecessor's journal).

    ``max_bytes`` bounds the pending changes (keys and payloads plus :data:`ROW_OVERHEAD` each); a change that would
    pass it raises ``StoreUnavailable`` and nothing is written. The file itself may be larger (the WAL, free pages).

    A file that is not a readable journal (corrupt, truncated) is moved aside to ``path + ".corrupt-<epoch>"``, with
    an ERROR record naming it, and a new journal is started: a worker never crash-loops on it. (A WAL torn by a crash
    mid-write is not corrupt: SQLite keeps every commit before the tear.)

    Thread-safe (one lock around the connection). Not usable in a child process forked after it was opened.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int, fsync: bool = False) -> None:
        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._lock_file = _exclusive(self.path + ".lock")
        try:
            self._db, rows = self._open(fsync)
        except (sqlite3.DatabaseError, _Damaged) as exc:
            if not isinstance(exc, _Damaged) and not _is_damage(exc):
                # Locked, an I/O error, no space: the file may be fine, and its changes must not be given up.
                self._lock_file.close()
                raise JournalError(f"cannot open the outage journal {self.path}: {exc}") from None
            # Moved aside, never opened again: a worker must not crash-loop on it. Rows still readable (a damaged
            # index, say) are carried over into the new journal.
            salvaged = exc.rows if isinstance(exc, _Damaged) else []
            aside = f"{self.path}.corrupt-{int(time.time())}"
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(self.path + suffix, aside + suffix)
            try:
                self._db, _empty = self._open(fsync)
                if salvaged:
                    with self._transaction():
                        self._db.executemany(_INSERT, salvaged)
            except sqlite3.Error as again:
                self._lock_file.close()
                raise JournalError(f"cannot open the outage journal {self.path}: {again}") from None
            rows = salvaged
            logger.error(
                "Outage journal %s is damaged (%s): moved aside to %s; %d changes read from it carried over, any "
                "others NOT written back; a new journal is started",
                self.path,
                exc,
                aside,
                len(rows),
            )
        except sqlite3.Error as exc:
            self._lock_file.close()
            raise JournalError(f"cannot open the outage journal {self.path}: {exc}") from None
        self._loaded: list[Change] = [row[:6] for row in rows]
        self._rows = {row[0]: (row[5], row[6]) for row in rows}  # key -> (seq, size) of its change on file
        self.bytes = sum(size for _seq, size in self._rows.values())
        self._applied: list[tuple[str, int]] = []  # (key, seq) written back, their rows not yet deleted
        self._seq = max((row[5] for row in rows), default=0)
        self._fsync = fsync
        self._commits = 0
        self._wake = threading.Event()
        self._closing = False
        self._checkpointer: threading.Thread | None = None
        _OPEN.add(self)

    def _open(self, fsync: bool) -> tuple[sqlite3.Connection, list[Any]]:
        # Owner-only: the journal holds session ids (bearer credentials) and session data. SQLite gives its -wal and
        # -shm files the database file's permissions, so creating that one first is enough.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            # Checkpoints (copying the WAL into the database, with a sync) run on a thread of their own: run by the
            # writer every 1,000 pages, they stalled an outage write for 10-30 ms. The WAL is cut back to 4 MiB after.
            db.execute("PRAGMA wal_autocheckpoint=0")
            db.execute(f"PRAGMA journal_size_limit={4 * 2**20}")
            db.execute("PRAGMA page_size=1024")  # (a new file only) a change is one small page: a small WAL
            db.execute(_SCHEMA)
            rows = db.execute("SELECT key, op, payload, expires, at, seq, size FROM changes ORDER BY seq").fetchall()
            # The scan above reads the table, not its key index: a damaged index would fail every later write.
            [(verdict,)] = db.execute("PRAGMA quick_check(1)").fetchall()
        except BaseException:
            db.close()
            raise
        if verdict != "ok":
            db.close()
            raise _Damaged(verdict, rows)
        return db, rows

    def loaded(self) -> list[Change]:
        """The changes found when the journal was opened (an earlier process's), oldest first; once."""
        loaded, self._loaded = self._loaded, []
        return loaded

    def record(self, changes: list[tuple[str, str, bytes | None, float | None]], at: float) -> list[int]:
        """Commit ``changes`` (each replacing the key's earlier one), made at ``at``, in one transaction; their sequence
        numbers. ``StoreUnavailable`` if they would pass ``max_bytes`` or the write fails: nothing is written then."""
        with self._lock:
            self._check_process()
            rows, grown, seq = [], self.bytes, self._seq
            latest = self._rows
            sizes: dict[str, int] = {}  # this call's own, so that a key given twice is counted once
            for key, op, payload, expires in changes:
                seq += 1
                size = len(key.encode("utf-8", "surrogatepass")) + len(payload or b"") + ROW_OVERHEAD
                grown += size - sizes.get(key, latest.get(key, (0, 0))[1])
                sizes[key] = size
                rows.append((key, op, payload, expires, at, seq, size))
            if grown > self.max_bytes:
                raise StoreUnavailable(
                    f"outage journal full ({self.bytes} of {self.max_bytes} bytes pending write-back): write refused"
                )
            try:
                if len(rows) == 1:  # the common case: one statement, committed on its own
                    self._db.execute(_INSERT, rows[0])
                else:
                    with self._transaction():
                        self._db.executemany(_INSERT, rows)
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"outage journal write failed ({exc}): write refused") from None
            self._seq, self.bytes = seq, grown
            for row in rows:
                latest[row[0]] = (row[5], row[6])
            self._commits += 1
            if self._commits >= _CHECKPOINT_EVERY:
                self._commits = 0
                self._checkpoint_soon()
            return [row[5] for row in rows]

    def _checkpoint_soon(self) -> None:
        """Wake the checkpointer (started on first need: no thread while there is no outage). Called locked."""
        if self._checkpointer is None:
            self._checkpointer = threading.Thread(
                target=self._checkpoints, name="fmredis-journal-checkpoint", daemon=True
            )
            self._checkpointer.start()
        self._wake.set()

    def _checkpoints(self) -> None:
        """The checkpointer: a connection of its own, running PASSIVE checkpoints (which never block writers)."""
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        except sqlite3.Error:
            return  # the writers' own WAL keeps everything; only its growth goes unchecked
        try:
            db.execute(f"PRAGMA synchronous={'FULL' if self._fsync else 'NORMAL'}")
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._closing:
                    return
                with contextlib.suppress(sqlite3.Error, OSError):
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    # A WAL only starts over once a checkpoint caught up between two writes, which a steady stream
                    # of outage writes may never allow: past _WAL_RESTART, one RESTART checkpoint makes it (it waits
                    # for the writer, briefly: the frames are copied already).
                    if os.path.getsize(self.path + "-wal") > _WAL_RESTART:
                        db.execute("PRAGMA wal_checkpoint(RESTART)")
        finally:
            db.close()

    def remove(self, done: list[tuple[str, int]]) -> None:
        """Count each ``(key, seq)`` written back as gone (unless the key was journaled again since: a newer seq); the
        rows themselves go at :meth:`flush`. A process that dies first writes them back again (idempotent)."""
        with self._lock:
            latest = self._rows
            for key, seq in done:
                row = latest.get(key)
                if row is not None and row[0] == seq:
                    del latest[key]
                    self.bytes -= row[1]
            if not latest:
                self.bytes = 0  # exact by construction; this only keeps a rounding of the books from lasting
            self._applied.extend(done)

    def flush(self) -> None:
        """Delete the rows :meth:`remove` counted gone: all of them in one statement once nothing is pending, else one
        by one."""
        with self._lock:
            if not self._applied:
                return
            self._check_process()
            try:
                if not self._rows:
                    self._db.execute("DELETE FROM changes")
                else:
                    with self._transaction():
                        self._db.executemany("DELETE FROM changes WHERE key = ? AND seq = ?", self._applied)
            except sqlite3.Error as exc:  # the rows stay: written back again next time (idempotent)
                logger.warning("Outage journal %s: could not drop written-back changes (%s)", self.path, exc)
                return
            self._applied = []
            self._checkpoint_soon()  # on the checkpointer's thread: the space comes back without holding anyone up

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._wake.set()
            checkpointer = self._checkpointer
        if checkpointer is not None and os.getpid() == self._pid:
            checkpointer.join(10.0)
        with self._lock:
            if os.getpid() == self._pid:
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
            self._lock_file.close()

    def __repr__(self) -> str:
        return f"OutageJournal({self.path!r}, bytes={self.bytes}, max_bytes={self.max_bytes})"

    @contextlib.contextmanager
    def _transaction(self) -> Any:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            # Also for a failed COMMIT: a transaction left open would swallow every later single-statement write.
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise JournalError(
                f"the outage journal {self.path} was opened in another process (before a fork): open the store in "
                "each worker, after forking"
            )


def _is_damage(exc: sqlite3.Error) -> bool:
    """Whether SQLite says the file itself is damaged (not a database, malformed), rather than out of reach."""
    name = getattr(exc, "sqlite_errorname", None)  # Python 3.11+
    if name is not None:
        return name in ("SQLITE_CORRUPT", "SQLITE_NOTADB")
    text = str(exc)
    return "malformed" in text or "not a database" in text


class _Damaged(Exception):
    """The journal's integrity check failed; ``rows`` is what its table scan could still read."""

    def __init__(self, verdict: str, rows: list[Any]) -> None:
        super().__init__(verdict)
        self.rows = rows


#: Open journals, so that a forked child lets go of their locks (weakly).
_OPEN: weakref.WeakSet[OutageJournal] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The child shares the parent's lock (flock follows the open file): closing its copy lets a restarted worker open
    # the journal once the parent is gone, even while this child lives. (The child cannot use the journal anyway.)
    for journal in list(_OPEN):
        with contextlib.suppress(OSError):
            journal._lock_file.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _exclusive(path: str) -> IO[bytes]:
    """Open and ``flock`` ``path`` exclusively, without waiting; :class:`JournalError` if another process holds it."""
    handle = os.fdopen(
        os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab"
    )  # held for the journal's life
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process guard (documented)
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise JournalError(
            f"the outage journal {path.removesuffix('.lock')} is in use by another process: give each worker its "
            "own journal_path"
        ) from None
    return handle
