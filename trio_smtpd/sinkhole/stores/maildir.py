"""The Maildir store: each message a file in ``new/``, its record a sidecar in ``meta/``
and, by default, a row in the SQLite index beside them.

In the commit's worker thread, once the file is fsynced into ``new/``: the index row
(durable before this returns), then the sidecar. If the row cannot be written, the file
is taken out of ``new/`` again and the client gets 451 (452 if the disk is full), so that
every file in ``new/`` that was acknowledged has its row. The sidecar has no fsync of its
own: losing one in a crash loses no mail, and the index has the same record.
"""

from __future__ import annotations

import socket
from typing import Any

from ...maildir import Maildir, MaildirWriter
from ..records import sidecar_writer
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

    def open(self) -> MessageWriter:
        return _MaildirMessage(self, self.maildir.open())

    async def aclose(self) -> None:
        if self.index is not None:
            self.index.close()


class _MaildirMessage:
    def __init__(self, store: MaildirStore, writer: MaildirWriter) -> None:
        self._store = store
        self._writer = writer
        self.name = writer.name

    async def write(self, data: bytes) -> None:
        await self._writer.write(data)

    async def prepend(self, data: bytes) -> None:
        await self._writer.prepend(data)

    async def abort(self) -> None:
        await self._writer.abort()

    async def commit(self, record: dict[str, Any]) -> str:
        store, name = self._store, self.name
        sidecar = sidecar_writer(store.maildir, record)
        index = store.index

        def then() -> None:  # in the commit's worker thread, once the file is durable
            if index is not None:
                try:
                    index.add(message_row(record, host=store.host, file=name, body=None))
                except BaseException:
                    (store.maildir.path / "new" / name).unlink(missing_ok=True)
                    raise
            sidecar()

        await self._writer.commit(then=then)
        error = self._writer.then_error
        if isinstance(error, StoreError):
            raise error
        if error is not None:
            raise unavailable(f"indexing the message failed: {error!r}") from error
        return name
