"""The Maildir store: each message a file in ``new/``, its record a row in the SQLite index
beside them (the default) or, without an index, a sidecar in ``meta/``.

In the worker thread of the message's commit batch, once the batch is durable
(``Maildir.after_commit``, after the Maildir's own work: its write buffer, the batch's
fsyncs, its fsync timings for the metrics): the batch's index rows, in one transaction,
or their sidecars. Neither has an fsync of its own and neither is ever written before
its message is durable: a crash can lose the record of a message, never the message, and
never leaves a record without its message. If a row cannot be written, its file is taken
out of ``new/`` again and the client gets 451 (452 if the disk is full). A sidecar is
not written beside an index row: the row holds the same record, and a second file per
message is a second inode to allocate and a second directory to lock for every message
(issue 22; benchmarks/README.md).

The file work of every Maildir the store writes to (its own and the rules' savedirs) is
done by one commit process when the program gives it one (``open_store``; the sinkhole
does), which ``aclose()`` ends. The index's rows are then written by that process too,
in its own connection to the index, once it has made their messages durable
(``Maildir.records``); sidecars, and the rows of batches committed in their own thread
(hash-named messages), are written in the batch's thread.

A message for a rule's ``savedir`` is a file in that Maildir, and a row in this store's
index all the same (its record names the savedir), or a sidecar in the savedir's
``meta/`` without an index. With ``--save-hash`` the file is named by its hash
(``hashstore.HashedWriter``); a message stored under that name already is neither stored
nor recorded again. With the index, a name it has a row for counts as stored already,
even once its file has left ``new/`` and ``cur/`` or is in another Maildir: the row's
name is unique, so a second copy could never have a record of its own (it would be
refused with 451 every time it came back).
"""

from __future__ import annotations

import socket
from typing import Any

import trio

from ..._commitprocess import Statement
from ...maildir import CommitProcess, Maildir, MaildirWriter, RecordsInDatabase
from ..hashstore import HashedWriter, open_writer
from ..records import write_sidecar
from .base import MessageWriter, indexing_failed
from .schema import Row, message_row
from .sqlite import SqliteIndex, record_error, row_statements

__all__ = ["MaildirStore"]


class MaildirStore:
    """Messages in ``maildir``; rows in ``index`` too, unless it is None."""

    def __init__(self, maildir: Maildir, index: SqliteIndex | None = None,
                 commit_process: CommitProcess | None = None) -> None:
        self.maildir = maildir
        self.index = index
        #: Where the file work of every Maildir it writes to is done (None: in the
        #: commit batch's own thread), and the index's rows (``Maildir.records``);
        #: ended by ``aclose()``.
        self.commit_process = commit_process
        self._records = None if index is None else RecordsInDatabase(
            index.database, self._row_statements, record_error)
        self.host = socket.gethostname()
        self.description = "maildir" if index is None else f"sqlite:{index.path}"

    def open(self, maildir: Maildir | None = None, save_hash: str | None = None
             ) -> MessageWriter:
        target = maildir or self.maildir
        # The records are written in the commit's own batch: by the commit process
        # (Maildir.records), or else in the batch's thread (Maildir.after_commit).
        target.after_commit = _write_sidecars if self.index is None else self._write_rows
        target.commit_process = self.commit_process
        target.records = self._records
        writer = open_writer(target, save_hash)
        if isinstance(writer, HashedWriter) and self.index is not None:
            writer.recorded = self.index.holds
        return _MaildirMessage(self, writer)

    async def aclose(self) -> None:
        if self.index is not None:
            self.index.close()
        if self.commit_process is not None:
            await trio.to_thread.run_sync(self.commit_process.close)

    def _row(self, writer: MaildirWriter) -> Row:
        """``writer``'s message as the index records it."""
        return message_row(writer.record, host=self.host, file=writer.name, body=None)

    def _row_statements(self, writer: MaildirWriter) -> list[Statement]:
        """For the commit process: what records ``writer``'s message in the index."""
        return row_statements(self._row(writer))

    def _write_rows(self, writers: list[MaildirWriter]) -> list[OSError | None]:
        """In the commit batch's worker thread: each message's row, in one transaction;
        a message whose row is refused is taken back out of ``new/``."""
        assert self.index is not None
        try:
            errors = self.index.write([self._row(w) for w in writers])
        except Exception as exc:  # (a record that makes no row: a bug, never a 250)
            errors = [indexing_failed(exc)] * len(writers)
        for writer, error in zip(writers, errors, strict=True):
            if error is not None:  # never a message without its row
                (writer.maildir.path / "new" / writer.name).unlink(missing_ok=True)
        return errors


class _MaildirMessage:
    def __init__(self, store: MaildirStore, writer: MaildirWriter) -> None:
        self._store = store
        self._writer = writer

    @property
    def name(self) -> str:  # (a HashedWriter's changes once the hash is known)
        return self._writer.name

    @property
    def file(self) -> MaildirWriter:
        return self._writer

    async def write(self, data: bytes) -> None:
        await self._writer.write(data)

    async def prepend(self, data: bytes) -> None:
        await self._writer.prepend(data)

    async def abort(self) -> None:
        await self._writer.abort()

    async def commit(self, record: dict[str, Any]) -> str:
        self._writer.record = record  # (for the store's after_commit)
        return await self._writer.commit()


def _write_sidecars(writers: list[MaildirWriter]) -> list[OSError | None]:
    """In the commit batch's worker thread: each message's sidecar (a failure is logged,
    not raised: the message is stored)."""
    for writer in writers:
        write_sidecar(writer.maildir, writer.record)
    return [None] * len(writers)
