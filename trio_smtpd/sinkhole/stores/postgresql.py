"""The PostgreSQL store, for fleets: many hosts (and ``--workers``) write one database.

Each message is one statement, so one round trip and one transaction of its own (the
connections are in autocommit mode): its ``messages`` row (with the stored message in
``body`` when it is at most ``--store-body-limit`` octets; otherwise the body goes to the
Maildir as usual, fsynced first, and the row names its file and host), its recipients
and its listings. 250 is answered once that statement has returned, which with
PostgreSQL's default ``synchronous_commit = on`` means its commit is in the server's
fsynced WAL. Rows get their ids from an identity column and nothing is read back and
rewritten, so any number of writers can insert side by side; migrations take an
advisory lock, so hosts starting together apply each one once.

psycopg 3 has no trio support of its own. Its blocking API runs here in worker threads,
at most ``--store-connections`` at a time (a trio ``CapacityLimiter``, the size of the
connection pool, so no thread waits inside the pool), with ``psycopg_pool`` keeping the
connections: it replaces broken ones and reconnects in the background when the database
comes back. The alternative, driving libpq's non-blocking calls with
``trio.lowlevel.wait_readable``/``wait_writable``, was measured
(``benchmarks/pg_driver.py``; figures in docs/sinkhole.md): the same throughput (the
server's commits bound it), and less CPU per message, but the saving is mostly psycopg's
own Python layer (parameter adaptation, cursors), which trio's waits only avoid by
encoding parameters for libpq ourselves; the thread round trip itself is about 0.1 ms.
Threads keep psycopg's public API and its pool; the store interface keeps the choice
local to this module.

Every wait is bounded by ``--store-timeout``: for a connection from the pool, for
connecting, for a statement (``statement_timeout``), and, as a backstop for a database
that stops answering altogether, on the trio side (the thread is then abandoned: it
finishes or fails by itself, and the client has had its 451 meanwhile). A database that
is down or full answers the client 451 4.3.0 or 452 4.3.1, never 250.
"""

from __future__ import annotations

import math
import socket
import threading
from datetime import datetime
from typing import Any

import trio

from ...maildir import Maildir, MaildirWriter
from .base import MessageWriter, unavailable
from .schema import (
    CREATE_BOOKKEEPING,
    LISTING_COLUMNS,
    MESSAGE_COLUMNS,
    RECIPIENT_COLUMNS,
    Row,
    SchemaError,
    message_row,
    pending,
    statements,
)

try:  # an optional dependency: pip install 'trio-smtpd[postgresql]'
    import psycopg
    import psycopg_pool
except ImportError:  # pragma: no cover (the tests install it)
    psycopg = None  # type: ignore[assignment]
    psycopg_pool = None  # type: ignore[assignment]

__all__ = ["PostgresStore", "migrate_postgresql"]

#: pg_advisory_xact_lock key for migrations: b"trio-smt" as a number.
_MIGRATION_LOCK = 0x7472696F2D736D74
_DISK_FULL = "53100"

_PLACEHOLDERS = ", ".join("%s::jsonb" if c == "metadata" else "%s" for c in MESSAGE_COLUMNS)
#: A message, its recipients and its listings in one statement, so in one round trip and
#: one transaction of its own (the connections are in autocommit mode): the parameters
#: are the message's columns, then its recipients' addresses and domains as arrays, then
#: its listings' five columns as arrays.
INSERT = f"""WITH m AS (
    INSERT INTO messages ({', '.join(MESSAGE_COLUMNS)}) VALUES ({_PLACEHOLDERS}) RETURNING id
), r AS (
    INSERT INTO recipients ({', '.join(RECIPIENT_COLUMNS)})
    SELECT m.id, t.n - 1, t.address, t.domain
    FROM m, unnest(%s::text[], %s::text[]) WITH ORDINALITY AS t (address, domain, n)
), l AS (
    INSERT INTO listings ({', '.join(LISTING_COLUMNS)})
    SELECT m.id, x.* FROM m,
        unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[]) AS x
)
SELECT id FROM m"""


def insert_parameters(row: Row) -> list[Any]:
    """The parameters of INSERT for ``row``."""
    values: list[Any] = list(row.message)
    received = MESSAGE_COLUMNS.index("received")
    values[received] = datetime.fromisoformat(values[received])
    recipients = [[r[1] for r in row.recipients], [r[2] for r in row.recipients]]
    listings = [[x[i] for x in row.listings] for i in range(len(LISTING_COLUMNS) - 1)]
    return [*values, *recipients, *listings]


def available() -> bool:
    return psycopg is not None


def connection_options(timeout: float) -> dict[str, Any]:
    """libpq settings that bound every wait on the network (a URL's own win)."""
    return {"connect_timeout": max(1, math.ceil(timeout)), "keepalives": 1,
            "keepalives_idle": 10, "keepalives_interval": 3, "keepalives_count": 3,
            "tcp_user_timeout": int(timeout * 1000)}


def migrate_postgresql(url: str, timeout: float) -> None:
    """Bring the database's schema up to date (blocking; at start)."""
    with (psycopg.connect(url, **connection_options(timeout)) as connection,
          connection.transaction()):
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        connection.execute(CREATE_BOOKKEEPING)
        applied = {v for (v,) in connection.execute(
            "SELECT version FROM schema_migrations").fetchall()}
        for migration in pending("postgresql", applied):
            for statement in statements(migration.sql):
                connection.execute(statement.encode())
            connection.execute("INSERT INTO schema_migrations VALUES (%s, %s, now())",
                               (migration.version, migration.name))


class PostgresStore:
    """Messages and their rows in PostgreSQL; large bodies in ``maildir``."""

    description = "postgresql"

    def __init__(self, url: str, maildir: Maildir, *, body_limit: int, timeout: float,
                 connections: int) -> None:
        self.url = url
        self.maildir = maildir
        self.body_limit = body_limit
        self.timeout = timeout
        self.host = socket.gethostname()
        self._connections = connections
        self._limiter = trio.CapacityLimiter(connections)
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] | None = None
        self._pool_lock = threading.Lock()

    def create(self) -> None:
        """Check that the database answers and has our schema (at start, blocking)."""
        try:
            migrate_postgresql(self.url, self.timeout)
        except psycopg.Error as exc:
            raise unavailable(f"PostgreSQL: {exc}".strip()) from None
        except SchemaError as exc:
            raise unavailable(str(exc)) from None

    def open(self, maildir: Maildir | None = None, save_hash: str | None = None
             ) -> MessageWriter:
        """A message for a rule's ``savedir`` (``maildir``) is a file there, whatever
        its size, and its row names it. ``--save-hash`` is refused at start with this
        store (a name is a file's, in one Maildir; not a fleet's)."""
        if save_hash is not None:
            raise ValueError("--save-hash is for the Maildir stores, not PostgreSQL")
        return _PostgresMessage(self, maildir)

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await trio.to_thread.run_sync(pool.close)

    async def insert(self, row: Row) -> None:
        """Insert ``row`` and commit; StoreError if the database cannot, in time."""
        with trio.move_on_after(2 * self.timeout + 1):
            await trio.to_thread.run_sync(self._insert, row, limiter=self._limiter,
                                          abandon_on_cancel=True)
            return
        raise unavailable(f"PostgreSQL did not answer within {2 * self.timeout + 1:g} s")

    def _get_pool(self) -> psycopg_pool.ConnectionPool[psycopg.Connection[Any]]:
        with self._pool_lock:  # opened at first use, in the worker process
            if self._pool is None:
                timeout_ms = int(self.timeout * 1000)

                def configure(connection: psycopg.Connection[Any]) -> None:
                    connection.execute(f"SET statement_timeout = {timeout_ms}")

                self._pool = psycopg_pool.ConnectionPool(
                    self.url, min_size=1, max_size=self._connections, open=True,
                    timeout=self.timeout,
                    kwargs={**connection_options(self.timeout), "autocommit": True},
                    configure=configure,
                    reconnect_timeout=3600.0, name="trio-smtpd")
            return self._pool

    def _insert(self, row: Row) -> None:  # in a worker thread
        try:
            with self._get_pool().connection() as connection:
                connection.execute(INSERT, insert_parameters(row))
        except psycopg_pool.PoolTimeout:
            raise unavailable(f"no PostgreSQL connection within {self.timeout:g} s") from None
        except psycopg.Error as exc:
            full = getattr(exc, "sqlstate", None) == _DISK_FULL
            raise unavailable(f"PostgreSQL: {exc}".strip(), full=full) from None


class _PostgresMessage:
    """The body in memory up to the limit, else in a Maildir file; then the row."""

    def __init__(self, store: PostgresStore, savedir: Maildir | None) -> None:
        self._store = store
        self._maildir = savedir or store.maildir
        self.name = self._maildir.unique_name()
        self._chunks: list[bytes] = []
        self._size = 0
        # A savedir's messages are files there from the start.
        self._limit = -1 if savedir is not None else store.body_limit
        self.file: MaildirWriter | None = (
            None if savedir is None else MaildirWriter(savedir, self.name))

    async def write(self, data: bytes) -> None:
        if self.file is None and self._size + len(data) <= self._limit:
            self._chunks.append(data)
            self._size += len(data)
            return
        if self.file is None:  # too big for the database: a Maildir file from now on
            self.file = MaildirWriter(self._maildir, self.name)
            chunks, self._chunks = self._chunks, []
            for chunk in chunks:
                await self.file.write(chunk)
        await self.file.write(data)

    async def prepend(self, data: bytes) -> None:
        if self.file is None:
            self._chunks.insert(0, data)
            self._size += len(data)
        else:
            await self.file.prepend(data)

    async def abort(self) -> None:
        self._chunks = []
        if self.file is not None:
            await self.file.abort()

    async def commit(self, record: dict[str, Any]) -> str:
        store = self._store
        if self.file is None:
            body, self._chunks = b"".join(self._chunks), []
            await store.insert(message_row(record, host=store.host, file=None, body=body))
            return self.name
        # The file first (fsynced into new/), then the row that names it. If the row
        # fails, the file stays (a commit whose outcome is unknown may have written it).
        name = await self.file.commit()
        await store.insert(message_row(record, host=store.host, file=name, body=None))
        return name
