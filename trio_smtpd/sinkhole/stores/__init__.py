"""Where the sinkhole stores messages (``--store``).

- ``sqlite`` (the default): the Maildir, and a row per message in an SQLite index
  beside it (``MAILDIR/index.sqlite3``);
- ``maildir``: the Maildir, and each message's record in a sidecar file (``meta/``);
- ``postgresql://...``: rows and (up to ``--store-body-limit``) bodies in PostgreSQL,
  which many hosts can share; larger bodies in the Maildir.

The interface is in ``base``; the schema and migrations, the same for both databases,
in ``schema`` and ``migrations/``.
"""

from __future__ import annotations

from ...maildir import CommitProcess, Maildir
from .base import MessageWriter, Store, StoreError
from .maildir import MaildirStore
from .postgresql import PostgresStore
from .sqlite import INDEX_NAME, SqliteIndex

__all__ = ["INDEX_NAME", "MaildirStore", "MessageWriter", "PostgresStore", "Store",
           "StoreError", "is_postgresql", "open_store"]


def is_postgresql(spec: str) -> bool:
    return spec.startswith(("postgresql://", "postgres://"))


def open_store(spec: str, maildir: Maildir, *, body_limit: int, timeout: float,
               connections: int, commit_process: CommitProcess | None = None) -> Store:
    """The store ``--store`` names, ready (its schema up to date). A Maildir store's
    files are committed by ``commit_process`` if it is given, which it then owns.

    Raises ValueError for a ``spec`` that names no store, StoreError for one that
    cannot be used (no database, a schema newer than this program, no psycopg)."""
    if spec == "maildir":
        return MaildirStore(maildir, commit_process=commit_process)
    if spec == "sqlite":
        index = SqliteIndex(maildir.path / INDEX_NAME)
        index.create()
        return MaildirStore(maildir, index, commit_process)
    if is_postgresql(spec):
        from .postgresql import available

        if not available():
            raise StoreError(2, "--store postgresql needs psycopg: "
                                "pip install 'trio-smtpd[postgresql]'")
        store = PostgresStore(spec, maildir, body_limit=body_limit, timeout=timeout,
                              connections=connections)
        store.create()
        return store
    raise ValueError(f"--store {spec!r}: expected sqlite, maildir or postgresql://...")
