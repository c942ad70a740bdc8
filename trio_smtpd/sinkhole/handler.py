"""The sinkhole's session handler: ask the rules at each step, store what is accepted,
log it all.

DNS facts about the client (``lookups.ClientLookups``) start at connect, in the
session's own nursery; a decision waits only for the facts its rules name. The
``connect`` log line is written once the facts it reports are known (at most
``--dns-timeout`` after the connection arrived), without holding up the greeting.

Every refusal is logged by the session's watch (:mod:`.watch`); sinksmtp's habits beyond
the rules (a refused ``MAIL FROM:<>`` answered at RCPT, rule notes and savedirs,
do-nothing clients, settings per local address) are in :mod:`.tracking`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import trio

from .. import Connect, DataStart, Decision, Hello, Mail, Message, Rcpt, Session, Transaction
from ..dns import Resolver
from ..maildir import Maildir
from .conncfg import ConnConfig
from .dnsfacts import Wants
from .logs import log_event
from .lookups import ClientLookups
from .printing import Printer
from .records import log_connect, log_listing, log_policy, log_transaction, peer_text
from .rules import Facts, Pending, Phase, RuleSet, Verdict
from .stores import Store
from .storing import Incoming, MessageStore
from .tlsfallback import TLSFallback
from .tracking import SessionTrack
from .verifying import MessageChecks, VerifySettings, start_spf
from .watch import refusing, watch_session
from .yakkers import Yakkers

__all__ = ["SinkholeHandler"]

_PHASES: dict[type[Decision], Phase] = {Connect: "connect", Hello: "helo", Mail: "mail",
                                        Rcpt: "rcpt", DataStart: "data",
                                        Message: "message"}
_NO_WANTS = Wants()  # (without rules)


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
    #: with a 554 naming its file, so the sender believes delivery failed.
    save_then_reject: bool = False
    #: --rules: the policy; replaced as a whole on SIGHUP, so sessions see one or the other.
    rules: RuleSet | None = None
    #: --dns-server/--dns-timeout: DNS facts about clients, for rules, logs and trace
    #: headers. None (--no-dns): no lookup at all.
    resolver: Resolver | None = None
    #: --print/--print-raw: each message that arrived in full, on standard output.
    printer: Printer | None = None
    #: --verify/--no-verify: which authentication checks each message gets (needs DNS).
    verify: VerifySettings | None = None
    #: --smtplog: writes one transcript line (AUTH secrets redacted).
    smtplog: Callable[[str], None] | None = None
    #: --dncount/--dndur/--minphase: do-nothing clients, refused at connect.
    yakkers: Yakkers | None = None
    #: --conncfg: host name and certificate by local address; replaced on SIGHUP.
    conncfg: ConnConfig | None = None
    #: --save-hash: msg, full or all.
    save_hash: str | None = None
    #: --store: where messages and their records go (None: the Maildir and its sidecars,
    #: without an index).
    store: Store | None = None

    def __post_init__(self) -> None:
        self._store = MessageStore(self.maildir, self.hostname, self.save_then_reject,
                                   self.printer, self.save_hash, store=self.store)

    def __call__(self, session: Session) -> Awaitable[None]:
        client = session.info.peer[0] if session.info.peer else None
        if self.resolver is None:  # the session's coroutine is _serve's: a frame fewer
            return self._serve(session, ClientLookups(None, None, client, timeout=0))
        return self._serve_with_dns(session, client)

    async def _serve_with_dns(self, session: Session, client: str | None) -> None:
        assert self.resolver is not None
        async with trio.open_nursery() as nursery:
            lookups = ClientLookups(self.resolver, nursery, client,
                                    timeout=self.resolver.timeout,
                                    on_listing=partial(log_listing, session.info.id))
            await self._serve(session, lookups)
            nursery.cancel_scope.cancel()  # lookups that nobody will read now

    async def _serve(self, session: Session, lookups: ClientLookups) -> None:
        info, started = session.info, time.monotonic()
        ip = info.peer[0] if info.peer else None
        session.reply_delay = self.tarpit
        fallback = self.tls_fallback
        if fallback is not None and ip is not None and not fallback.offer_starttls(ip):
            session.offer_starttls = False
        connect_logged = log_connect(lookups, self.rules.wants if self.rules else _NO_WANTS,
                                     session=info.id, peer=peer_text(info.peer),
                                     starttls=None if session.offer_starttls else "withheld")
        client = _Client(lookups, SessionTrack(watch_session(session, self.smtplog)))
        async for decision in session:
            await self._decide(session, decision, client)
        await client.incoming.drop()  # (the client left mid-message)
        client.track.finish(session, self.yakkers)
        # Only a handshake that got a ClientHello and then failed says the client's TLS
        # does not work with ours; one abandoned earlier may be someone on the path.
        if session.info.tls_failed_after_hello and fallback is not None and ip is not None:
            fallback.record_failure(ip)
        if connect_logged is not None:  # (bounded by the DNS deadline) connect before close
            await connect_logged.wait()
        log_event("close", session=info.id, peer=peer_text(info.peer), helo=info.helo,
                  tls=info.tls.version if info.tls else None, auth=info.authenticated_as,
                  duration=round(time.monotonic() - started, 3))

    async def _decide(self, session: Session, decision: Decision, client: _Client) -> None:
        if isinstance(decision, Hello):
            client.helo_verb = decision.verb
        elif isinstance(decision, Mail):
            start_spf(self.verify, client.lookups, _sender(decision.sender),
                      session.info.helo)
        elif isinstance(decision, Message) and client.incoming.checks is not None:
            await client.incoming.checks.finish()  # (the message rules may use them)
        if isinstance(decision, Connect) and client.track.connect(session, decision,
                                                                  self.conncfg, self.yakkers):
            return
        phase = _PHASES.get(type(decision))
        # Without rules, no verdict to wait for (nor a coroutine to make for it), and
        # nothing to adjust unless a refusal of <> is deferred.
        verdict = None
        if phase is not None and self.rules is not None:
            verdict = await self._verdict(session, phase, decision, client)
        if verdict is not None or client.track.deferred is not None:
            verdict = client.track.adjust(phase, decision, verdict)
        if verdict is not None and verdict.action in ("reject", "tempfail"):
            await self._refuse(session, decision, verdict, phase, client)
        elif isinstance(decision, Message):
            incoming, client.incoming = client.incoming, Incoming()
            await self._store.finish(session, decision, incoming, verdict, client.lookups)
            if self.printer is not None:
                await self.printer.done(decision.transaction)
        else:
            accept_reply = verdict.reply if verdict is not None else None
            decision.accept(text=accept_reply.text if accept_reply else None)
            if isinstance(decision, Mail):  # (the transaction exists from DATA on)
                client.sender = str(decision.sender) if decision.sender else ""
            if isinstance(decision, DataStart):
                client.incoming = await self._store.receive(
                    session, decision.transaction, client.lookups,
                    self._checks(session, decision.transaction, client.lookups),
                    client.track.savedir)
        if self.yakkers is not None:  # (only do-nothing tracking reads the progress)
            client.track.answered(phase, decision)

    async def _refuse(self, session: Session, decision: Decision, verdict: Verdict,
                      phase: Phase | None, client: _Client) -> None:
        refusing(session, verdict.rule)
        _answer_refusal(decision, verdict)
        log_policy(session.info.id, phase, verdict, decision.reply)
        if isinstance(decision, Message):
            await client.incoming.drop()  # refused outright: nothing is kept
            tx = decision.transaction
            checks = client.incoming.checks
            log_transaction(tx, "rejected", str(tx.replies[0]), None, verdict.rule,
                            checks.log_fields() if checks else None)
            client.incoming = Incoming()

    def _checks(self, session: Session, tx: Transaction,
                lookups: ClientLookups) -> MessageChecks | None:
        if self.verify is None or self.resolver is None:
            return None
        return MessageChecks(self.verify, self.resolver, lookups, _sender(tx.sender),
                             session.info.helo)

    async def _verdict(self, session: Session, phase: Phase, decision: Decision,
                       client: _Client) -> Verdict | None:
        """Ask the rules (if any) about this step, waiting for the DNS facts the deciding
        rule needs (and only those); a rule's delay tarpits from now on."""
        rules = self.rules  # (one rule set throughout, even if SIGHUP swaps it meanwhile)
        if rules is None:  # (swapped for none since _decide looked)
            return None
        facts = _facts(session, decision, client)
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


@dataclass
class _Client:
    """What a session's decisions need beyond the session itself."""

    lookups: ClientLookups
    track: SessionTrack
    helo_verb: str | None = None  # of the latest HELO/EHLO/LHLO
    sender: str | None = None  # of the MAIL accepted last ("" for <>), for rules at RCPT
    #: The message being received, if any.
    incoming: Incoming = field(default_factory=Incoming)


def _facts(session: Session, decision: Decision, client: _Client) -> Facts:
    """What the rules may look at, including what the pending decision is about to add."""
    info, tx = session.info, session.transaction
    sender: str | None = None
    if isinstance(decision, Mail):
        sender = str(decision.sender) if decision.sender else ""
    elif tx is not None:
        sender = str(tx.sender) if tx.sender else ""
    else:  # at RCPT: the sender of the MAIL accepted
        sender = client.sender
    return Facts(
        ip=info.peer[0] if info.peer else None,
        tls=info.tls is not None,
        authenticated=info.authenticated_as is not None,
        helo=decision.name if isinstance(decision, Hello) else info.helo,
        sender=sender,
        recipient=str(decision.address) if isinstance(decision, Rcpt) else None,
        recipients=tuple(str(r.address) for r in tx.recipients) if tx else (),
        helo_verb=decision.verb if isinstance(decision, Hello) else client.helo_verb,
        local_ip=info.local[0] if info.local else None,
        dns=client.lookups.values,
    )


def _sender(address: object) -> str:
    return str(address) if address else ""


def _answer_refusal(decision: Decision, verdict: Verdict) -> None:
    reply = verdict.reply
    text = reply.text if reply else "Rejected by policy"
    enhanced = reply.enhanced if reply else None
    if isinstance(decision, Connect):
        # RFC 5321 3.1: refuse with 554 (the client may still QUIT), or 421 and close.
        if verdict.action == "tempfail":
            decision.tempfail(421, text, enhanced and "4" + enhanced[1:])
        else:
            decision.reject(554, text, enhanced and "5" + enhanced[1:])
    elif verdict.action == "tempfail":
        decision.tempfail(reply.code if reply else 451, text, enhanced)
    else:
        decision.reject(reply.code if reply else 550, text, enhanced)
