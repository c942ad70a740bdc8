"""The SQLite index beside a Maildir (the default store's second half).

One file, ``index.sqlite3`` in the Maildir's folder, in WAL mode (readers such as
``trio-smtpd report`` never block the writer, nor it them) with ``synchronous=NORMAL``:
a commit is written to the write-ahead log but not fsynced; the log is fsynced when
SQLite checkpoints it. A row is only ever added once its message is durable, so the
index is never ahead of the Maildir: a process that is killed loses no row (the log is
in the kernel's hands), and a power cut can lose the rows of the last moments before it,
never a message and never the consistency of the database. The 250 waits for the
message's fsyncs, not for one of the index's own (issue 22; benchmarks/README.md).

Written a batch at a time, in one transaction, by the Maildir's commit batch that made
their messages durable (``MaildirStore``, ``Maildir.after_commit``). If that transaction
fails for what may be one row's fault (a constraint), each row is written again in a
transaction of its own, so that only the faulty row's message is refused, never its
neighbours'. Several processes
(``--workers``) share the file: SQLite lets one write at a time, and each waits for the
others (``busy_timeout``) rather than fail.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path

from .base import StoreError, indexing_failed, unavailable
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


class SqliteIndex:
    """Rows for the messages of one Maildir, in ``PATH`` (an SQLite database)."""

    def __init__(self, path: Path, *, busy_timeout: float = 10.0) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._connection: sqlite3.Connection | None = None
        #: One thread at a time on the connection (``write``, ``holds``, ``close``).
        self._using = threading.Lock()

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
        with self._using:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def holds(self, name: str) -> bool:
        """Whether a message named ``name`` has a row (in a worker thread: it blocks).

        Raises StoreError."""
        with self._using:
            connection = self._connection
            if connection is None:
                raise unavailable("the index is closed")
            try:
                found = connection.execute("SELECT 1 FROM messages WHERE name = ?",
                                           (name,)).fetchone()
            except sqlite3.Error as exc:
                raise _error(exc) from None
        return found is not None

    def write(self, rows: list[Row]) -> list[OSError | None]:
        """Commit ``rows``; for each, None or the StoreError that refused it (in a worker
        thread: it blocks).

        One transaction for them all; if it fails, a row could be the cause (a
        constraint, a value that cannot be stored), and one row's fault must not refuse
        the other clients' messages: each row is tried again in its own transaction, so
        only the faulty one fails. An OperationalError is the database's, not a row's
        (busy past busy_timeout, full, an I/O error): every row would meet it again,
        after as long a wait, so the batch shares it."""
        with self._using:
            try:
                self._write(rows)
                return [None] * len(rows)
            except Exception as exc:
                if len(rows) == 1 or not _a_row_could_cause(exc):
                    return [_store_error(exc)] * len(rows)
            return [self._write_alone(row) for row in rows]

    def _write_alone(self, row: Row) -> OSError | None:
        try:
            self._write([row])
        except Exception as exc:
            return _store_error(exc)
        return None

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


def _store_error(exc: Exception) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, sqlite3.Error):
        return _error(exc)
    return indexing_failed(exc)


def _error(exc: sqlite3.Error) -> StoreError:
    full = getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL
    return unavailable(f"the SQLite index: {exc}", full=full)
