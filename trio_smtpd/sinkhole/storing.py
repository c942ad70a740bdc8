"""Storing a message: its body streamed into the store (a Maildir file, or a row)
behind the trace headers, then committed or dropped, and the answer and log line for it.

250 is answered only once the store has the message durably: its file fsynced into
``new/`` (and its index row committed), or its row committed in PostgreSQL
(:mod:`.stores`). A write error answers 452 (disk full) or 451 and is logged; a store
that cannot take the message now answers 451; the server keeps running. With
``--discard`` nothing is stored: the body is only counted. When messages are verified
(``verifying.py``), the chunks pass through the checks on their way to the store, and
the trace headers, with the results, are put in front once they are known. A rule's
``savedir`` stores the session's messages in another Maildir; ``--save-hash`` names
files by their hash (:mod:`.hashstore`).
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass, field

from .. import Message, Session, Transaction
from ..maildir import Maildir
from ..verify import AuthenticationResultsFilter
from .hashstore import MessageDigest, name_by_hash
from .lookups import ClientLookups
from .printing import Printer
from .records import log_aborted, log_policy, log_transaction, message_record
from .rules import Verdict
from .stores import MaildirStore, MessageWriter, Store, StoreError
from .trace import trace_headers
from .verifying import MessageChecks
from .watch import message_size, refusing

__all__ = ["Incoming", "MessageStore"]

log = logging.getLogger("trio_smtpd.sinkhole")


@dataclass
class Incoming:
    """A message being received: where it goes, and what went wrong so far."""

    writer: MessageWriter | None = None
    error: OSError | None = None
    digest: MessageDigest | None = field(default=None, repr=False)
    #: Its authentication checks, if messages are verified.
    checks: MessageChecks | None = None
    #: The host name of the session's settings (``--conncfg``), for the trace headers.
    hostname: str | None = None
    #: The rule's savedir it goes to, if any (its record says so).
    savedir: Maildir | None = None

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
    """Where accepted messages go: a store (``--store``), or nowhere (``--discard``)."""

    maildir: Maildir | None
    hostname: str
    #: --save-then-reject (sinksmtp's -M): store and log each message, then refuse it
    #: with a 554 naming its file, so the sender believes delivery failed.
    save_then_reject: bool = False
    #: --print/--print-raw: keeps each body for printing once it is in.
    printer: Printer | None = None
    #: --save-hash: msg, full or all (None: Maildir's unique names).
    save_hash: str | None = None
    #: --store: where messages and their records go (None: the Maildir and its
    #: sidecars, without an index).
    store: Store | None = None

    def __post_init__(self) -> None:
        if self.store is None and self.maildir is not None:
            self.store = MaildirStore(self.maildir)

    async def receive(self, session: Session, tx: Transaction, lookups: ClientLookups,
                      checks: MessageChecks | None = None,
                      savedir: Maildir | None = None) -> Incoming:
        """Stream the body in (into ``savedir``, a rule's, if given); keep reading even
        after a write error."""
        store = self.store
        if store is None and savedir is not None:  # (--discard, but the rule saves)
            store = MaildirStore(savedir)
        if store is None:
            async for chunk in session.body():  # (the transaction counts the size)
                if self.printer is not None:
                    self.printer.keep(tx, chunk)
                if checks is not None:
                    checks.feed(chunk)
            if tx.aborted:
                log_aborted(tx, message_size(session, tx))
            return Incoming(checks=checks)
        writer = store.open(savedir, self.save_hash)
        hostname = session.config.hostname
        incoming = Incoming(writer, None, MessageDigest(), checks, hostname, savedir)
        # Unverified, fields claiming our name still go (RFC 8601 5): nobody added them
        # here, and a reader of the Maildir would take them for ours.
        forged: MessageChecks | AuthenticationResultsFilter = (
            checks or AuthenticationResultsFilter(hostname))
        if checks is None:
            # Looked up since connect: by now this rarely waits.
            client_name = await lookups.confirmed_name()
            await incoming.write(trace_headers(tx, hostname, client_name,
                                               file_id=writer.name))
        async for chunk in session.body():
            assert incoming.digest is not None
            incoming.digest.update(chunk)  # of the message as received, for the metadata
            if self.printer is not None:
                self.printer.keep(tx, chunk)
            await incoming.write(forged.feed(chunk))
        await incoming.write(forged.close())
        if tx.aborted:
            await incoming.drop()
            log_aborted(tx, message_size(session, tx))
        return incoming

    async def finish(self, session: Session, decision: Message, incoming: Incoming,
                     verdict: Verdict | None, lookups: ClientLookups) -> None:
        """Commit the message and answer it (or answer why not), and log it."""
        tx = decision.transaction
        name = None  # (--discard: nothing to commit)
        if incoming.writer is not None:
            name = await self._commit(tx, incoming, verdict, lookups)
        by_rule = verdict if verdict is not None and verdict.action == "save-then-reject" \
            else None
        if incoming.error is not None:  # (then the refusal is the store's, not the rule's)
            await incoming.drop()
            _answer_write_error(decision, incoming.error)
        elif self.save_then_reject or by_rule is not None:
            if by_rule is not None:
                # A rule's refusal answered here rather than by the handler's _refuse:
                # logged as every other rule's (its refused line names it, a policy line).
                refusing(session, by_rule.rule)
                log_policy(session.info.id, "message", by_rule)
            _save_then_reject(decision, name, verdict)
        else:
            decision.accept(text=f"queued as {name}" if name is not None else "discarded")
        replies = tx.replies  # (a list made on each read)
        first = replies[0] if replies else None
        if first is None or first.is_positive:
            outcome = "accepted"
        else:
            outcome = "tempfailed" if first.is_transient else "saved-then-rejected"
        log_transaction(tx, outcome, str(first) if first else "250", name,
                        verdict.rule if verdict else None,
                        incoming.checks.log_fields() if incoming.checks else None)

    async def _commit(self, tx: Transaction, incoming: Incoming, verdict: Verdict | None,
                      lookups: ClientLookups) -> str | None:
        """Store the message and its record durably (``stores/``); its name."""
        writer = incoming.writer
        if incoming.error is not None or writer is None:
            return None
        assert incoming.digest is not None
        # The record has every DNS fact: one still being looked up (started at MAIL,
        # say, by a fast client's pipelined command) is worth its short wait.
        await lookups.settle()
        if writer.file is not None:
            name_by_hash(writer.file, tx, incoming.digest, lookups.summary())
        checks = incoming.checks
        extra = {"body_sha256": incoming.digest.body_hexdigest()}
        if incoming.savedir is not None:
            extra["savedir"] = str(incoming.savedir.path)
        record = message_record(writer.name, tx, incoming.digest.hexdigest(),
                                verdict.rule if verdict is not None else None,
                                lookups.summary(), checks.summary() if checks else None,
                                extra)
        try:
            if checks is not None:  # the trace headers, now that the results are known
                await writer.prepend(trace_headers(
                    tx, incoming.hostname or self.hostname, await lookups.confirmed_name(),
                    authentication_results=checks.header(), file_id=writer.name))
            # Stored with its record, durably, in one commit of the store's.
            return await writer.commit(record)
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
