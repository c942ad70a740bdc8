"""The Maildir store: each message a file in ``new/``, its record a row in the SQLite
index beside them (the default) or, without an index, a sidecar in ``meta/``.

Once the message's commit has returned (the Maildir's own: its write buffer, its batch's
fsyncs, its fsync timings for the metrics): the index row, or the sidecar, each written
in batches of their own (``_groupcommit``). Neither has an fsync of its own and neither
is ever written before its message is durable: a crash can lose the record of a message,
never the message, and never leaves a record without its message. If the row cannot be
written, the file is taken out of ``new/`` again and the client gets 451 (452 if the
disk is full). A sidecar is not written beside an index row: the row holds the same
record, and a second file per message is a second inode to allocate and a second
directory to lock for every message (issue 22; benchmarks/README.md).

A message for a rule's ``savedir`` is a file in that Maildir, and a row in this store's
index all the same (its record names the savedir), or a sidecar in the savedir's
``meta/`` without an index. With ``--save-hash`` the file is named by its hash
(``hashstore.HashedWriter``); a message stored under that name already is neither
stored nor recorded again. With the index, a name it has a row for counts as stored
already, even once its file has left ``new/`` and ``cur/`` or is in another Maildir: the
row's name is unique, so a second copy could never have a record of its own (it would
be refused with 451 every time it came back).
"""

from __future__ import annotations

import socket
from functools import partial
from typing import Any

import trio

from ..._groupcommit import GroupCommit
from ...maildir import Maildir, MaildirWriter
from ..hashstore import HashedWriter, open_writer
from ..records import write_sidecar
from .base import MessageWriter, StoreError, unavailable
from .schema import message_row
from .sqlite import SqliteIndex

__all__ = ["MaildirStore"]


class MaildirStore:
    """Messages in ``maildir``; rows in ``index`` too, unless it is None."""

    def __init__(self, maildir: Maildir, index: SqliteIndex | None = None) -> None:
        self.maildir = maildir
        self.index = index
        self.host = socket.gethostname()
        self.description = "maildir" if index is None else f"sqlite:{index.path}"
        self.sidecars = GroupCommit[tuple[Maildir, dict[str, Any]]](_write_sidecars)

    def open(self, maildir: Maildir | None = None, save_hash: str | None = None
             ) -> MessageWriter:
        writer = open_writer(maildir or self.maildir, save_hash)
        if isinstance(writer, HashedWriter) and self.index is not None:
            writer.recorded = self.index.holds
        return _MaildirMessage(self, writer)

    async def aclose(self) -> None:
        if self.index is not None:
            self.index.close()


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
        writer, store = self._writer, self._store
        name = await writer.commit()
        if not writer.published:
            return name  # (a hash-named message stored already, with its record)
        if store.index is None:
            await store.sidecars((writer.maildir, record))
            return name
        try:
            await store.index.add(message_row(record, host=store.host, file=name, body=None))
        except Exception as error:
            # Never a row without its message, nor a message without its row.
            await trio.to_thread.run_sync(
                partial((writer.maildir.path / "new" / name).unlink, missing_ok=True))
            if isinstance(error, StoreError):
                raise
            raise unavailable(f"indexing the message failed: {error!r}") from error
        return name


def _write_sidecars(batch: list[tuple[Maildir, dict[str, Any]]]) -> list[None]:
    """In a worker thread: each message's sidecar (a failure is logged, not raised: the
    message is stored)."""
    for maildir, record in batch:
        write_sidecar(maildir, record)
    return [None] * len(batch)
