"""What a store is to the sinkhole: somewhere a message and its record go, durably.

``storing.MessageStore`` streams each message body into a :class:`MessageWriter` from
:meth:`Store.open`, then calls :meth:`MessageWriter.commit` with the message's record
(``records.message_record``). ``commit`` returns only once the message is durable and
its record written (never before its message; whether the record has an fsync of its
own is the store's choice: PostgreSQL's commit does, the SQLite index's and the sidecar
do not); only then is 250 answered. Any failure is a
:class:`StoreError`, an ``OSError``: the message is answered 452 4.3.1 when its
``errno`` is ``ENOSPC`` (the disk or the database is full) and 451 4.3.0 otherwise, and
the server goes on. With ``--save-hash``, a message already stored under its hash is
not stored again: ``commit`` returns that name and writes nothing (``hashstore``).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ...maildir import Maildir, MaildirWriter

__all__ = ["MessageWriter", "Store", "StoreError", "indexing_failed", "unavailable"]


class StoreError(OSError):
    """The store cannot take this message now (a temporary failure for the client)."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def unavailable(what: str, *, full: bool = False) -> StoreError:
    """A StoreError saying ``what``; ``full`` makes it a 452 (ENOSPC)."""
    return StoreError(errno.ENOSPC if full else errno.EIO, what)


def indexing_failed(error: BaseException) -> StoreError:
    """The StoreError for a record that ``error`` kept from the index (not one of the
    database's own errors, which say what they are)."""
    return unavailable(f"indexing the message failed: {error!r}")


class MessageWriter(Protocol):
    """One message on its way into a store."""

    @property
    def name(self) -> str:
        """Its name, unique across processes and hosts ("queued as NAME"). With
        ``--save-hash``, a placeholder until the hash is known (``file.name_it()``)."""

    @property
    def file(self) -> MaildirWriter | None:
        """The Maildir file it is written to, if it goes to one from the start (a
        ``hashstore.HashedWriter`` with ``--save-hash``); None while a database holds it."""

    async def write(self, data: bytes) -> None:
        """Append part of the message."""

    async def prepend(self, data: bytes) -> None:
        """Put ``data`` in front of what was written (header fields known at the end)."""

    async def commit(self, record: dict[str, Any]) -> str:
        """Store the message and ``record`` durably; its name. Raises StoreError."""

    async def abort(self) -> None:
        """Drop the message (nothing of it stays)."""


class Store(Protocol):
    """Where messages go: a Maildir, with or without an index, or a database."""

    #: For the ``listening`` log line: ``maildir``, ``sqlite:PATH``, ``postgresql``.
    description: str

    def open(self, maildir: Maildir | None = None, save_hash: str | None = None
             ) -> MessageWriter:
        """Start a new message: into ``maildir`` if given (a rule's ``savedir``) instead
        of the store's own; named by its hash (``--save-hash``) if ``save_hash`` is."""

    async def aclose(self) -> None:
        """Let go of connections and files (the server is stopping)."""
