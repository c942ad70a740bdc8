"""The SQLite index beside a Maildir (the default store's second half).

One file, ``index.sqlite3`` in the Maildir's folder, in WAL mode (readers such as
``trio-smtpd report`` never block the writer, nor it them) with ``synchronous=NORMAL``:
a commit is written to the write-ahead log but not fsynced; the log is fsynced when
SQLite checkpoints it. A row is only ever added once its message is durable, so the
index is never ahead of the Maildir: a process that is killed loses no row (the log is
in the kernel's hands), and a power cut can lose the rows of the last moments before it,
never a message and never the consistency of the database. The 250 waits for the
message's fsyncs, not for one of the index's own (issue 22; benchmarks/README.md).

Written from worker threads with a group commit, as the Maildir's ``new/`` is fsynced:
a thread that brings a row while another is writing waits, and the next writer takes
every row waiting, in one transaction. If that transaction fails for what may be one
row's fault (a constraint), each row is written again in a transaction of its own, so
that only the faulty row's message is refused, never its neighbours'. Several processes
(``--workers``) share the file: SQLite lets one write at a time, and each waits for the
others (``busy_timeout``) rather than fail.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path

from .base import StoreError, unavailable
from .schema import (
    CREATE_BOOKKEEPING,
    LISTING_COLUMNS,
    MESSAGE_COLUMNS,
    RECIPIENT_COLUMNS,
    Row,
    pending,
    statements,
)

__all__ = ["INDEX_NAME", "SqliteIndex", "connect_readonly"]

INDEX_NAME = "index.sqlite3"
_SQLITE_FULL = 13

_INSERT_MESSAGE = (f"INSERT INTO messages ({', '.join(MESSAGE_COLUMNS)}) "
                   f"VALUES ({', '.join('?' for _ in MESSAGE_COLUMNS)})")
_INSERT_RECIPIENT = (f"INSERT INTO recipients ({', '.join(RECIPIENT_COLUMNS)}) "
                     "VALUES (?, ?, ?, ?)")
_INSERT_LISTING = (f"INSERT INTO listings ({', '.join(LISTING_COLUMNS)}) "
                   "VALUES (?, ?, ?, ?, ?, ?)")


class _Waiting:
    __slots__ = ("done", "error", "row")

    def __init__(self, row: Row) -> None:
        self.row = row
        self.done = False
        self.error: BaseException | None = None


class SqliteIndex:
    """Rows for the messages of one Maildir, in ``PATH`` (an SQLite database)."""

    def __init__(self, path: Path, *, busy_timeout: float = 10.0) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._connection: sqlite3.Connection | None = None
        self._changed = threading.Condition()
        self._waiting: list[_Waiting] = []
        self._writing = False

    def create(self) -> None:
        """Open (creating it if need be) and bring the schema up to date.

        Raises StoreError (or SchemaError for a database newer than this program)."""
        try:
            connection = sqlite3.connect(self.path, timeout=self._busy_timeout,
                                         isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA foreign_keys=ON")
            migrate(connection)
        except sqlite3.Error as exc:
            raise _error(exc) from None
        self._connection = connection

    def close(self) -> None:
        with self._changed:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def add(self, row: Row) -> None:
        """Insert ``row``; return once it is committed (in a worker thread: it blocks)."""
        waiting = _Waiting(row)
        with self._changed:
            self._waiting.append(waiting)
            while not waiting.done:
                if self._writing:
                    self._changed.wait()
                    continue
                batch, self._waiting = self._waiting, []
                self._writing = True
                self._changed.release()
                try:
                    self._write_batch(batch)
                finally:
                    self._changed.acquire()
                    self._writing = False
                    for done in batch:
                        done.done = True
                    self._changed.notify_all()
        if waiting.error is not None:
            if isinstance(waiting.error, sqlite3.Error):
                raise _error(waiting.error)
            raise waiting.error

    def holds(self, name: str) -> bool:
        """Whether a message named ``name`` has a row (in a worker thread: it blocks).

        Raises StoreError."""
        with self._changed:
            # One thread at a time on the connection: not in the middle of a batch.
            while self._writing:
                self._changed.wait()
            connection = self._connection
            if connection is None:
                raise unavailable("the index is closed")
            try:
                found = connection.execute("SELECT 1 FROM messages WHERE name = ?",
                                           (name,)).fetchone()
            except sqlite3.Error as exc:
                raise _error(exc) from None
        return found is not None

    def _write_batch(self, batch: list[_Waiting]) -> None:
        """Commit the rows of ``batch``, each ``error`` set to what refused its row.

        One transaction for them all; if it fails, a row could be the cause (a
        constraint, a value that cannot be stored), and one row's fault must not refuse
        the other clients' messages: each row is tried again in its own transaction, so
        only the faulty one fails. An OperationalError is the database's, not a row's
        (busy past busy_timeout, full, an I/O error): every row would meet it again,
        after as long a wait, so the batch shares it."""
        try:
            self._write([w.row for w in batch])
            return
        except BaseException as exc:
            if len(batch) == 1 or not _a_row_could_cause(exc):
                for waiting in batch:
                    waiting.error = exc
                return
        for waiting in batch:
            try:
                self._write([waiting.row])
            except BaseException as exc:
                waiting.error = exc

    def _write(self, rows: list[Row]) -> None:
        connection = self._connection
        if connection is None:
            raise unavailable("the index is closed")
        connection.execute("BEGIN IMMEDIATE")
        try:
            for row in rows:
                message_id = connection.execute(_INSERT_MESSAGE, row.message).lastrowid
                connection.executemany(_INSERT_RECIPIENT,
                                       [(message_id, *r) for r in row.recipients])
                if row.listings:
                    connection.executemany(_INSERT_LISTING,
                                           [(message_id, *x) for x in row.listings])
            connection.execute("COMMIT")
        except BaseException:
            with suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            raise


def migrate(connection: sqlite3.Connection) -> None:
    """Apply the missing migrations, each in a transaction with its bookkeeping."""
    connection.execute("BEGIN IMMEDIATE")  # one process migrates, the others wait
    try:
        connection.execute(CREATE_BOOKKEEPING)
        applied = {v for (v,) in connection.execute("SELECT version FROM schema_migrations")}
        for migration in pending("sqlite", applied):
            for statement in statements(migration.sql):
                connection.execute(statement)
            connection.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)",
                               (migration.version, migration.name,
                                datetime.now(UTC).isoformat()))
        connection.execute("COMMIT")
    except BaseException:
        with suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        raise


def connect_readonly(path: Path) -> sqlite3.Connection:
    """For reports: the index, read-only (a missing file is an error, not a new one)."""
    if not path.exists():
        raise StoreError(2, f"no index at {path}")
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


def _a_row_could_cause(exc: BaseException) -> bool:
    """Whether ``exc`` may be one row's fault rather than the database's or the
    process's (a closed index, a cancellation, KeyboardInterrupt)."""
    return (isinstance(exc, Exception) and not isinstance(exc, StoreError)
            and not isinstance(exc, sqlite3.OperationalError))


def _error(exc: sqlite3.Error) -> StoreError:
    full = getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL
    return unavailable(f"the SQLite index: {exc}", full=full)
