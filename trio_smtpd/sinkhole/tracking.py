"""What a session's decisions add up to beyond each rule's verdict (sinksmtp's habits).

* **MAIL FROM:<> is never refused at MAIL.** A rule that refuses or tempfails the null
  sender is answered at each RCPT of that transaction instead, as sinksmtp does: RFC
  5321 6.1 says bounces must be accepted, and some MTAs handle a refused null sender
  badly. The refusal is kept until the next MAIL or HELO.
* **Rule options** (:mod:`.ruleoptions`): a ``note`` line each time a rule with one
  matches, the session's ``savedir`` from the moment a rule with one matched, and
  ``make_yakker``.
* **Progress** for do-nothing tracking (:mod:`.yakkers`): each phase whose step we
  accepted; at connect, a do-nothing client is refused with 421.
* **Settings per local address** (``--conncfg``, :mod:`.conncfg`), at connect.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import Connect, Decision, Mail, Message, Session
from ..maildir import Maildir
from .conncfg import ConnConfig
from .logs import log_event
from .rules import Phase, Verdict
from .watch import SessionWatch
from .yakkers import Progress, Yakkers

__all__ = ["YAKKER_REPLY", "SessionTrack"]

YAKKER_REPLY = (421, "Too many connections that delivered nothing; try again later", "4.7.0")


@dataclass
class SessionTrack:
    watch: SessionWatch
    progress: Progress = field(default_factory=Progress)
    #: A refusal of MAIL FROM:<>, given to every RCPT of the transaction instead.
    deferred: Verdict | None = None
    #: Where this session's messages go (a rule's savedir), if not the default.
    savedir: Maildir | None = None

    def connect(self, session: Session, decision: Connect, conncfg: ConnConfig | None,
                yakkers: Yakkers | None) -> bool:
        """This connection's settings; True if it was refused (a do-nothing client)."""
        if conncfg is not None:
            config = conncfg.config_for(session.config, session.info.local)
            if config is not None:
                session.config = config
        ip = session.info.peer[0] if session.info.peer else None
        if yakkers is not None and ip is not None and yakkers.refused(ip):
            self.progress.refused_at_connect = True
            decision.tempfail(*YAKKER_REPLY)
            return True
        return False

    def adjust(self, phase: Phase | None, decision: Decision, verdict: Verdict | None
               ) -> Verdict | None:
        """The verdict to act on: a deferred refusal of <> at RCPT, none at MAIL <>."""
        if phase in ("helo", "mail"):
            self.deferred = None
        elif phase == "rcpt" and self.deferred is not None:
            return self.deferred
        if verdict is None:
            return None
        self._options(phase, verdict)
        if (isinstance(decision, Mail) and decision.sender is None
                and verdict.action in ("reject", "tempfail")):
            self.deferred = verdict
            log_event("policy", session=self.watch.session_id, phase=phase,
                      rule=verdict.rule, action=verdict.action, reply=str(verdict.reply),
                      deferred="rcpt")
            return None
        return verdict

    def _options(self, phase: Phase | None, verdict: Verdict) -> None:
        options = verdict.options
        if options is None:
            return
        if options.note is not None:
            peer = self.watch.peer
            log_event("note", session=self.watch.session_id,
                      peer=None if peer is None else f"{peer[0]}:{peer[1]}", phase=phase,
                      rule=verdict.rule, note=options.note)
        if options.savedir is not None:
            self.savedir = options.savedir
        if options.make_yakker:
            self.progress.forced = True

    def answered(self, phase: Phase | None, decision: Decision) -> None:
        """Note how far the session got, once ``decision`` is answered."""
        if isinstance(decision, Message):
            self.progress.phases.add("message")
            first = (decision.transaction.replies or [None])[0]  # None: the default 250
            if first is None or first.is_positive:
                self.progress.phases.add("accepted")
        elif phase is not None and _accepted(decision):
            self.progress.phases.add(phase)

    def finish(self, session: Session, yakkers: Yakkers | None) -> None:
        """The session is over: count it for do-nothing tracking."""
        ip = session.info.peer[0] if session.info.peer else None
        if yakkers is not None and ip is not None:
            yakkers.session_ended(ip, self.progress, tls_failed=session.tls_failed)


def _accepted(decision: Decision) -> bool:
    reply = decision.reply
    return reply is None or reply.is_positive
