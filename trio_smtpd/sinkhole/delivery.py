"""The sinkhole's session handler: accept everything, store it durably, log it.

Each message body is streamed straight into a Maildir file (bounded memory whatever its
size), behind trace headers:

* ``Return-Path: <sender>`` — the envelope sender (RFC 5321 4.4).
* ``X-Original-To: <recipient>`` — one per envelope recipient, in RCPT order.
* ``Received:`` — RFC 5321 4.4 trace: HELO name, the client's forward-confirmed DNS
  name (``unknown`` if none) and address, as Postfix writes them, our host name, the
  protocol (RFC 3848: ESMTP, ESMTPS, ESMTPSA, LMTP...), the session id, TLS version and
  cipher, the recipient when there is only one, and the date.

DNS facts about the client (``lookups.ClientLookups``) start at connect, in the
session's own nursery; a decision waits only for the facts its rules name. The
``connect`` log line is written once the facts it reports are known (at most
``--dns-timeout`` after the connection arrived), without holding up the greeting.

250 is answered only after the file is fsynced into ``new/``. A write error answers 452
(disk full) or 451 and is logged; the server keeps running.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import format_datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from .. import Connect, DataStart, Decision, Hello, Mail, Message, Rcpt, Session, Transaction
from ..dns import Resolver
from ..maildir import Maildir, MaildirWriter
from .dnsfacts import Listing, Wants
from .logs import log_event
from .lookups import ClientLookups
from .printing import Printer
from .rules import Facts, Pending, Phase, RuleSet, Verdict
from .tlsfallback import TLSFallback

__all__ = ["SinkholeHandler", "trace_headers"]

if TYPE_CHECKING:
    from hashlib import _Hash as Hash  # the stubs' name for a hash object

log = logging.getLogger("trio_smtpd.sinkhole")


@dataclass
class SinkholeHandler:
    """Handles every session of the sinkhole server."""

    hostname: str
    maildir: Maildir | None  # None: --discard
    #: --tarpit: seconds before each batch of replies, for every client.
    tarpit: float = 0.0
    #: --tls-fallback: addresses whose STARTTLS handshakes keep failing get none offered.
    tls_fallback: TLSFallback | None = None
    #: --save-then-reject (sinksmtp's -M): store and log each message, then refuse it
    #: with a 554 naming its id, so the sender believes delivery failed.
    save_then_reject: bool = False
    #: --rules: the policy; replaced as a whole on SIGHUP, so sessions see one or the other.
    rules: RuleSet | None = None
    #: --dns-server/--dns-timeout: DNS facts about clients, for rules, logs and trace
    #: headers. None (--no-dns): no lookup at all.
    resolver: Resolver | None = None
    #: --print/--print-raw: each message that arrived in full, on standard output.
    printer: Printer | None = None

    async def __call__(self, session: Session) -> None:
        client = session.info.peer[0] if session.info.peer else None
        if self.resolver is None:
            await self._serve(session, ClientLookups(None, None, client, timeout=0))
            return
        async with trio.open_nursery() as nursery:
            lookups = ClientLookups(self.resolver, nursery, client,
                                    timeout=self.resolver.timeout,
                                    on_listing=partial(_log_listing, session.info.id))
            await self._serve(session, lookups)
            nursery.cancel_scope.cancel()  # lookups that nobody will read now

    async def _serve(self, session: Session, lookups: ClientLookups) -> None:
        info = session.info
        started = time.monotonic()
        ip = info.peer[0] if info.peer else None
        session.reply_delay = self.tarpit
        fallback = self.tls_fallback
        if fallback is not None and ip is not None and not fallback.offer_starttls(ip):
            session.offer_starttls = False
        connect_logged = _log_connect(lookups, self.rules.wants if self.rules else Wants(),
                                      session=info.id, peer=_peer(info.peer),
                                      starttls=None if session.offer_starttls else "withheld")
        writer: MaildirWriter | None = None
        error: OSError | None = None
        digest: Hash | None = None
        client = _Client(lookups)
        async for event in session:
            if isinstance(event, Hello):
                client.helo_verb = event.verb
            if isinstance(event, Message):
                verdict = await self._verdict(session, "message", event, client)
                await self._finish(event, writer, error, verdict, digest, lookups)
                if self.printer is not None:
                    await self.printer.done(event.transaction)
                writer, error = None, None
                continue
            phase = _PHASES.get(type(event))
            verdict = None if phase is None else await self._verdict(session, phase, event,
                                                                     client)
            if verdict is not None and verdict.action != "accept":
                _refuse(event, verdict)
                log_event("policy", session=info.id, phase=phase, rule=verdict.rule,
                          action=verdict.action, reply=str(verdict.reply),
                          dns="unknown" if verdict.unknown else None)
                continue
            accept_reply = verdict.reply if verdict is not None else None
            event.accept(text=accept_reply.text if accept_reply else None)
            if isinstance(event, DataStart):
                writer, error, digest = await self._receive(session, event.transaction,
                                                            lookups)
        if writer is not None:  # the client left mid-message
            await writer.abort()
        if session.tls_failed and fallback is not None and ip is not None:
            fallback.record_failure(ip)
        await connect_logged.wait()  # (bounded by the DNS deadline) connect before close
        log_event("close", session=info.id, peer=_peer(info.peer), helo=info.helo,
                  tls=info.tls.version if info.tls else None, auth=info.authenticated_as,
                  duration=round(time.monotonic() - started, 3))

    async def _receive(self, session: Session, tx: Transaction, lookups: ClientLookups
                       ) -> tuple[MaildirWriter | None, OSError | None, Hash | None]:
        """Stream the body into a Maildir file; keep reading even after a write error.
        With --discard, only count it."""
        if self.maildir is None:
            async for chunk in session.body():  # (the transaction counts the size)
                if self.printer is not None:
                    self.printer.keep(tx, chunk)
            if tx.aborted:
                _log_aborted(tx)
            return None, None, None
        # Looked up since connect: by now this rarely waits.
        client_name = await lookups.confirmed_name()
        writer = self.maildir.open()
        digest = hashlib.sha256()  # of the message as received, for the metadata
        error = await _write(writer, trace_headers(tx, self.hostname, client_name))
        async for chunk in session.body():
            digest.update(chunk)
            if self.printer is not None:
                self.printer.keep(tx, chunk)
            if error is None:
                error = await _write(writer, chunk)
        if tx.aborted:
            await writer.abort()
            _log_aborted(tx)
            return None, error, digest
        return writer, error, digest

    async def _verdict(self, session: Session, phase: Phase, event: Decision,
                       client: _Client) -> Verdict | None:
        """Ask the rules (if any) about this step, waiting for the DNS facts the deciding
        rule needs (and only those); a rule's delay tarpits from now on."""
        rules = self.rules  # (one rule set throughout, even if SIGHUP swaps it meanwhile)
        if rules is None:
            return None
        facts = _facts(session, event, client)
        client.lookups.prefetch(rules.wants, helo=facts.helo, sender=facts.sender,
                                recipient=facts.recipient)
        verdict = rules.decide(phase, facts)
        while isinstance(verdict, Pending):
            if all(key in client.lookups.values for key in verdict.keys):
                raise RuntimeError(f"rules wait for facts already known: {verdict.keys}")
            await client.lookups.wait(verdict.keys)
            verdict = rules.decide(phase, facts)
        if verdict is not None and verdict.delay:
            session.reply_delay = max(session.reply_delay, verdict.delay)
        return verdict

    async def _finish(self, event: Message, writer: MaildirWriter | None,
                      error: OSError | None, verdict: Verdict | None,
                      digest: Hash | None, lookups: ClientLookups) -> None:
        tx = event.transaction
        name = None
        if verdict is not None and verdict.action in ("reject", "tempfail"):
            if writer is not None:  # refused outright: nothing is kept
                await writer.abort()
            _refuse(event, verdict)
            first = tx.replies[0]
            _log_transaction(tx, "rejected", str(first), None, verdict.rule)
            return
        save_then_reject = self.save_then_reject or (
            verdict is not None and verdict.action == "save-then-reject")
        if error is None and writer is not None and self.maildir is not None:
            assert digest is not None
            # The sidecar records every DNS fact: one still being looked up (started at
            # MAIL, say, by a fast client's pipelined command) is worth its short wait.
            await lookups.settle()
            # The metadata sidecar is written in the commit's worker thread, after the
            # message is durable: one trip to a thread per message.
            metadata = _metadata_writer(self.maildir, writer.name, tx, digest.hexdigest(),
                                        verdict.rule if verdict is not None else None,
                                        lookups.summary())
            try:
                name = await writer.commit(then=metadata)
            except OSError as exc:
                error = exc
        if error is not None:
            if writer is not None:
                await writer.abort()
            full = error.errno in (errno.ENOSPC, errno.EDQUOT)
            if full:
                event.tempfail(452, "Insufficient system storage", "4.3.1")
            else:
                event.tempfail(451, "Local error in processing", "4.3.0")
            log.error("session %s: storing the message failed: %s", tx.info.id, error)
        elif save_then_reject:
            saved = f"saved as {name}" if name is not None else "not saved"
            base = verdict.reply if verdict is not None and verdict.reply else None
            text = base.text if base else "Message rejected"
            event.reject(base.code if base else 554, f"{text}; {saved}",
                         base.enhanced if base else "5.7.1")
        elif name is not None:
            event.accept(text=f"queued as {name}")
        else:
            event.accept(text="discarded")
        replies = tx.replies
        first = replies[0] if replies else None
        if first is None or first.is_positive:
            outcome = "accepted"
        else:
            outcome = "tempfailed" if first.is_transient else "saved-then-rejected"
        _log_transaction(tx, outcome, str(first) if first else "250", name,
                         verdict.rule if verdict else None)


def _metadata_writer(maildir: Maildir, name: str, tx: Transaction, sha256: str,
                     rule: str | None, dns: dict[str, Any] | None) -> Callable[[], None]:
    """A sidecar ``meta/<file>.json`` beside the Maildir: what sinksmtp records.

    Written after the message is durable and without an fsync of its own: losing a
    sidecar in a crash loses no mail. A failure is logged, not answered.
    """
    session = tx.info
    record = {
        "file": name, "session": session.id, "peer": _peer(session.peer),
        "helo": session.helo, "auth": session.authenticated_as,
        "tls": None if session.tls is None else {
            "version": session.tls.version, "cipher": session.tls.cipher,
            "server_name": session.tls.server_name},
        "sender": str(tx.sender) if tx.sender else "",
        "recipients": [str(r.address) for r in tx.recipients],
        "size": tx.size, "sha256": sha256, "rule": rule,
        "received": tx.received.isoformat(), "dns": dns,
    }
    path = maildir.path / "meta" / f"{name}.json"

    def write() -> None:  # in a worker thread
        try:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(record, ensure_ascii=False) + "\n")
            temporary.rename(path)
        except OSError as exc:
            log.error("session %s: writing metadata for %s failed: %s", session.id, name,
                      exc)

    return write


def _log_aborted(tx: Transaction) -> None:
    reply = tx.abort_reply
    _log_transaction(tx, "refused" if reply else "abandoned", str(reply) if reply else None,
                     None)


def _log_transaction(tx: Transaction, outcome: str, reply: str | None,
                     name: str | None, rule: str | None = None) -> None:
    log_event(
        "message",
        session=tx.info.id,
        peer=_peer(tx.info.peer),
        helo=tx.info.helo,
        tls=tx.info.tls.version if tx.info.tls else None,
        sni=tx.info.tls.server_name if tx.info.tls else None,
        auth=tx.info.authenticated_as,
        sender=str(tx.sender) if tx.sender else "",
        recipients=[str(r.address) for r in tx.recipients],
        size=tx.size,
        outcome=outcome,
        reply=reply,
        file=name,
        rule=rule,
    )


_PHASES: dict[type[Decision], Phase] = {Connect: "connect", Hello: "helo", Mail: "mail",
                                        Rcpt: "rcpt", DataStart: "data"}


@dataclass
class _Client:
    """What a session's decisions need beyond the session itself."""

    lookups: ClientLookups
    helo_verb: str | None = None  # of the latest HELO/EHLO/LHLO


def _log_connect(lookups: ClientLookups, wants: Wants, **fields: Any) -> trio.Event:
    """The ``connect`` line, with the client's DNS facts once they are known."""
    logged = trio.Event()
    if not lookups.enabled:
        log_event("connect", **fields)
        logged.set()
        return logged
    lookups.prefetch(wants)

    async def when_known() -> None:
        await lookups.connect_facts(wants)
        summary = lookups.summary() or {}
        log_event("connect", **fields, rdns=summary.get("rdns") or None,
                  fcrdns=summary.get("fcrdns"),
                  listed=[x.describe() for x in lookups.listings()] or None)
        logged.set()

    lookups.spawn(when_known)
    return logged


def _log_listing(session_id: str, listing: Listing) -> None:
    log_event("policy", session=session_id, list=listing.zone, kind=listing.kind,
              subject=listing.subject, codes=list(listing.codes), reason=listing.reason)


def _facts(session: Session, event: Decision, client: _Client) -> Facts:
    """What the rules may look at, including what the pending event is about to add."""
    info, tx = session.info, session.transaction
    sender: str | None = None
    if isinstance(event, Mail):
        sender = str(event.sender) if event.sender else ""
    elif tx is not None:
        sender = str(tx.sender) if tx.sender else ""
    return Facts(
        ip=info.peer[0] if info.peer else None,
        tls=info.tls is not None,
        authenticated=info.authenticated_as is not None,
        helo=event.name if isinstance(event, Hello) else info.helo,
        sender=sender,
        recipient=str(event.address) if isinstance(event, Rcpt) else None,
        recipients=tuple(str(r.address) for r in tx.recipients) if tx else (),
        helo_verb=event.verb if isinstance(event, Hello) else client.helo_verb,
        local_ip=info.local[0] if info.local else None,
        dns=client.lookups.values,
    )


def _refuse(event: Decision, verdict: Verdict) -> None:
    reply = verdict.reply
    text = reply.text if reply else "Rejected by policy"
    enhanced = reply.enhanced if reply else None
    if isinstance(event, Connect):
        # RFC 5321 3.1: refuse with 554 (the client may still QUIT), or 421 and close.
        if verdict.action == "tempfail":
            event.tempfail(421, text, enhanced and "4" + enhanced[1:])
        else:
            event.reject(554, text, enhanced and "5" + enhanced[1:])
    elif verdict.action == "tempfail":
        event.tempfail(reply.code if reply else 451, text, enhanced)
    else:
        event.reject(reply.code if reply else 550, text, enhanced)


async def _write(writer: MaildirWriter, data: bytes) -> OSError | None:
    try:
        await writer.write(data)
    except OSError as exc:
        return exc
    return None


def trace_headers(tx: Transaction, hostname: str, client_name: str | None = None) -> bytes:
    """Return-Path, X-Original-To and Received headers for one stored message.

    ``client_name``: the client's forward-confirmed DNS name, if it has one."""
    session = tx.info
    ip = session.peer[0] if session.peer else "unknown"
    helo = session.helo or "unknown"
    protocol = "LMTP" if tx.lmtp else "UTF8SMTP" if tx.mail_params.smtputf8 else "ESMTP"
    if session.tls:
        protocol += "S"
    if session.authenticated_as:
        protocol += "A"
    clauses = [f"from {helo} ({client_name or 'unknown'} [{ip}])", f"by {hostname} (trio_smtpd)",
               f"with {protocol}", f"id {session.id}"]
    if session.tls:
        clauses.append(f"(using {session.tls.version} with cipher {session.tls.cipher})")
    if len(tx.recipients) == 1:
        clauses.append(f"for <{tx.recipients[0].address}>")
    received = _fold("Received: " + "\r\n\t".join(clauses) + ";\r\n\t"
                     + format_datetime(tx.received.astimezone()))
    lines = [f"Return-Path: <{tx.sender or ''}>"]
    lines += [f"X-Original-To: <{r.address}>" for r in tx.recipients]
    lines.append(received)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _fold(header: str) -> str:
    # Client-supplied HELO names are long at most one command line; keep each header
    # line within RFC 5322's 998 octets regardless.
    return "\r\n\t".join(line[:990] for line in header.split("\r\n\t"))


def _peer(peer: Any) -> str | None:
    return None if peer is None else f"{peer[0]}:{peer[1]}"
