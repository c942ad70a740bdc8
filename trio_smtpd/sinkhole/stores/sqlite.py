"""The SQLite index beside a Maildir (the default store's second half).

One file, ``index.sqlite3`` in the Maildir's folder, in WAL mode (readers such as
``trio-smtpd report`` never block the writer, nor it them) with ``synchronous=NORMAL``:
a commit is written to the write-ahead log but not fsynced; the log is fsynced when
SQLite checkpoints it. A row is only ever added once its message is durable, so the
index is never ahead of the Maildir: a process that is killed loses no row (the log is
in the kernel's hands), and a power cut can lose the rows of the last moments before it,
never a message and never the consistency of the database. The 250 waits for the
message's fsyncs, not for one of the index's own (issue 22; benchmarks/README.md).

Written a batch at a time, in one transaction, once the Maildir's commit batch has made
their messages durable: by the commit process that did the batch's files, or else in
the batch's worker thread (``MaildirStore``; ``Maildir.records``, ``after_commit``).
If that transaction fails for what may be one row's fault (a constraint), each row is
written again in a transaction of its own, so that only the faulty row's message is
refused, never its neighbours' (``write_records``). Several processes
(``--workers``) share the file: SQLite lets one write at a time, and each waits for the
others (``busy_timeout``) rather than fail.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path

from ..._commitprocess import Database, RecordError, Statement, write_records
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

__all__ = ["INDEX_NAME", "SqliteIndex", "connect_readonly", "record_error", "row_statements"]

INDEX_NAME = "index.sqlite3"
_SQLITE_FULL = 13

#: Run by each new connection that writes (this process's, and the commit process's).
_SETUP = ("PRAGMA synchronous=NORMAL", "PRAGMA foreign_keys=ON")
_NAME = MESSAGE_COLUMNS.index("name")
_MESSAGE_ID = "(SELECT id FROM messages WHERE name = ?)"
_INSERT_MESSAGE = (f"INSERT INTO messages ({', '.join(MESSAGE_COLUMNS)}) "
                   f"VALUES ({', '.join('?' for _ in MESSAGE_COLUMNS)})")
_INSERT_RECIPIENT = (f"INSERT INTO recipients ({', '.join(RECIPIENT_COLUMNS)}) "
                     f"VALUES ({_MESSAGE_ID}, ?, ?, ?)")
_INSERT_LISTING = (f"INSERT INTO listings ({', '.join(LISTING_COLUMNS)}) "
                   f"VALUES ({_MESSAGE_ID}, ?, ?, ?, ?, ?)")


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
            for statement in _SETUP:
                connection.execute(statement)
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

    @property
    def database(self) -> Database:
        """The file and connection settings, for a connection of another process's
        (the commit process writes the rows of the messages it commits)."""
        return Database(str(self.path), _SETUP, self._busy_timeout)

    def write(self, rows: list[Row]) -> list[OSError | None]:
        """Commit ``rows``; for each, None or the StoreError that refused it (in a worker
        thread: it blocks). One transaction for them all, unless one row's fault
        refuses it: then each row alone (``write_records``)."""
        with self._using:
            connection = self._connection
            if connection is None:
                return [unavailable("the index is closed")] * len(rows)
            written = write_records(connection, [row_statements(row) for row in rows])
        return [None if error is None else record_error(error) for error in written]


def row_statements(row: Row) -> list[Statement]:
    """The statements that record ``row``: its recipients and listings find their
    message by its name, which is unique (so one transaction can hold many rows)."""
    name = row.message[_NAME]
    found = [(_INSERT_MESSAGE, [row.message])]
    if row.recipients:
        found.append((_INSERT_RECIPIENT, [(name, *r) for r in row.recipients]))
    if row.listings:
        found.append((_INSERT_LISTING, [(name, *x) for x in row.listings]))
    return found


def record_error(error: RecordError) -> StoreError:
    """The StoreError for a row that was not written."""
    if error.database:
        return unavailable(f"the SQLite index: {error.text}",
                           full=error.code is not None and error.code & 0xFF == _SQLITE_FULL)
    return unavailable(f"indexing the message failed: {error.text}")


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


def _error(exc: sqlite3.Error) -> StoreError:
    return record_error(RecordError(getattr(exc, "sqlite_errorcode", None), str(exc), True))
