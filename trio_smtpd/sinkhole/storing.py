"""Storing a message: its body streamed into a Maildir file behind the trace headers,
then committed (fsynced into ``new/``) or dropped, and the answer and log line for it.

250 is answered only after the file is fsynced into ``new/``. A write error answers 452
(disk full) or 451 and is logged; the server keeps running. With ``--discard`` nothing is
stored: the body is only counted. When messages are verified (``verifying.py``), the
chunks pass through the checks on their way to the file, and the trace headers, with
the results, are put in front once they are known.
"""

from __future__ import annotations

import errno
import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import Message, Session, Transaction
from ..maildir import Maildir
from .lookups import ClientLookups
from .printing import Printer
from .records import log_aborted, log_transaction, message_record
from .rules import Verdict
from .stores import MaildirStore, MessageWriter, Store, StoreError
from .trace import trace_headers
from .verifying import MessageChecks

if TYPE_CHECKING:
    from hashlib import _Hash as Hash  # the stubs' name for a hash object

__all__ = ["Incoming", "MessageStore"]

log = logging.getLogger("trio_smtpd.sinkhole")


@dataclass
class Incoming:
    """A message being received: where it goes, and what went wrong so far."""

    writer: MessageWriter | None = None
    error: OSError | None = None
    digest: Hash | None = field(default=None, repr=False)
    #: Its authentication checks, if messages are verified.
    checks: MessageChecks | None = None

    async def write(self, data: bytes) -> None:
        """Write on, unless an earlier write failed (the body is still read to its end)."""
        if self.writer is None or self.error is not None:
            return
        try:
            await self.writer.write(data)
        except OSError as exc:
            self.error = exc

    async def drop(self) -> None:
        if self.writer is not None:
            await self.writer.abort()
            self.writer = None


@dataclass
class MessageStore:
    """Where accepted messages go: a Maildir, or nowhere (``--discard``)."""

    maildir: Maildir | None
    hostname: str
    #: --save-then-reject (sinksmtp's -M): store and log each message, then refuse it
    #: with a 554 naming its file, so the sender believes delivery failed.
    save_then_reject: bool = False
    #: --print/--print-raw: keeps each body for printing once it is in.
    printer: Printer | None = None
    #: --store: where messages and their records go (None: the Maildir and sidecars).
    store: Store | None = None

    def __post_init__(self) -> None:
        if self.store is None and self.maildir is not None:
            self.store = MaildirStore(self.maildir)

    async def receive(self, session: Session, tx: Transaction, lookups: ClientLookups,
                      checks: MessageChecks | None = None) -> Incoming:
        """Stream the body in; keep reading even after a write error."""
        if self.store is None:
            async for chunk in session.body():  # (the transaction counts the size)
                if self.printer is not None:
                    self.printer.keep(tx, chunk)
                if checks is not None:
                    checks.feed(chunk)
            if tx.aborted:
                log_aborted(tx)
            return Incoming(checks=checks)
        incoming = Incoming(self.store.open(), None, hashlib.sha256(), checks)
        if checks is None:
            # Looked up since connect: by now this rarely waits.
            client_name = await lookups.confirmed_name()
            await incoming.write(trace_headers(tx, self.hostname, client_name))
        async for chunk in session.body():
            assert incoming.digest is not None
            incoming.digest.update(chunk)  # of the message as received, for the metadata
            if self.printer is not None:
                self.printer.keep(tx, chunk)
            await incoming.write(chunk if checks is None else checks.feed(chunk))
        if checks is not None:
            await incoming.write(checks.close())
        if tx.aborted:
            await incoming.drop()
            log_aborted(tx)
        return incoming

    async def finish(self, decision: Message, incoming: Incoming, verdict: Verdict | None,
                     lookups: ClientLookups) -> None:
        """Commit the message and answer it (or answer why not), and log it."""
        tx = decision.transaction
        name = await self._commit(tx, incoming, verdict, lookups)
        if incoming.error is not None:
            await incoming.drop()
            _answer_write_error(decision, incoming.error)
        elif self.save_then_reject or (verdict is not None
                                       and verdict.action == "save-then-reject"):
            _save_then_reject(decision, name, verdict)
        else:
            decision.accept(text=f"queued as {name}" if name is not None else "discarded")
        first = tx.replies[0] if tx.replies else None
        if first is None or first.is_positive:
            outcome = "accepted"
        else:
            outcome = "tempfailed" if first.is_transient else "saved-then-rejected"
        log_transaction(tx, outcome, str(first) if first else "250", name,
                        verdict.rule if verdict else None,
                        incoming.checks.log_fields() if incoming.checks else None)

    async def _commit(self, tx: Transaction, incoming: Incoming, verdict: Verdict | None,
                      lookups: ClientLookups) -> str | None:
        """fsync the message into ``new/`` (and its sidecar after it); its file name."""
        writer = incoming.writer
        if incoming.error is not None or writer is None or self.store is None:
            return None
        assert incoming.digest is not None
        # The sidecar records every DNS fact: one still being looked up (started at MAIL,
        # say, by a fast client's pipelined command) is worth its short wait.
        await lookups.settle()
        # Stored with the message, durably, by the store (stores/).
        checks = incoming.checks
        metadata = message_record(writer.name, tx, incoming.digest.hexdigest(),
                                  verdict.rule if verdict is not None else None,
                                  lookups.summary(), checks.summary() if checks else None)
        try:
            if checks is not None:  # the trace headers, now that the results are known
                await writer.prepend(trace_headers(tx, self.hostname,
                                                   await lookups.confirmed_name(),
                                                   checks.header()))
            return await writer.commit(metadata)
        except OSError as exc:
            incoming.error = exc
            return None


def _answer_write_error(decision: Message, error: OSError) -> None:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        decision.tempfail(452, "Insufficient system storage", "4.3.1")
    elif isinstance(error, StoreError):  # (a database, or the index, that cannot write)
        decision.tempfail(451, "Message store unavailable; try again later", "4.3.0")
    else:
        decision.tempfail(451, "Local error in processing", "4.3.0")
    log.error("session %s: storing the message failed: %s",
              decision.transaction.info.id, error)


def _save_then_reject(decision: Message, name: str | None, verdict: Verdict | None) -> None:
    saved = f"saved as {name}" if name is not None else "not saved"
    base = verdict.reply if verdict is not None and verdict.reply else None
    text = base.text if base else "Message rejected"
    decision.reject(base.code if base else 554, f"{text}; {saved}",
                    base.enhanced if base else "5.7.1")
