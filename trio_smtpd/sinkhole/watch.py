"""Each session watched (the library's ``session.observer``): a ``refused`` log line for
every 4xx or 5xx reply, a ``starttls-injection`` line for plaintext pipelined behind
STARTTLS, and the ``--smtplog`` transcript.

Every refusal is logged once, whoever made it — the protocol engine (a syntax error, a
bad sequence, a message too large, a bare line ending, too many recipients, a failed
AUTH), a rule, or the storage — with the client's address, the command it answers
(``CONNECT`` for the greeting, ``""`` when the server speaks unprompted: a timeout, a
shutdown), the code, the enhanced code and the reason::

    {"time": "...", "event": "refused", "session": "2037.4", "peer": "192.0.2.7:41822",
     "ip": "192.0.2.7", "command": "AUTH", "code": 535, "enhanced": "5.7.8",
     "reason": "Authentication credentials invalid", "mechanism": "LOGIN", "user": "alice"}

and, where they apply, the ``rule`` that refused, the AUTH ``mechanism`` and ``user``
(from :mod:`.libraryevents`), and the ``size`` of a refused message as the client sent it.

Octets a client sent after STARTTLS, in plaintext, before the handshake (CVE-2011-0411's
command injection, or a broken client) are dropped unread by the engine, which tells the
observer how many: one ``starttls-injection`` line (``session``, ``peer``, ``ip``,
``octets``) says so.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from typing import Any

from .. import Reply, Session, Summary, Transaction, Transcript
from .logs import log_event

__all__ = ["SessionWatch", "message_size", "refusing", "watch_of", "watch_session"]

#: The watch of each session running, by session id (for :mod:`.libraryevents`, whose
#: records name the session); gone with the session.
_WATCHES: weakref.WeakValueDictionary[str, SessionWatch] = weakref.WeakValueDictionary()
_NEW_TRANSACTION = frozenset({"MAIL", "RSET", "HELO", "EHLO", "LHLO", "STARTTLS"})
_DATA_SUMMARY = "[message data: "
# The engine's summary of what it dropped (trio_smtpd.Observer.received).
_INJECTED = re.compile(r"\[(\d+) octets after STARTTLS discarded\]")


class SessionWatch:
    """The observer of one session (see ``trio_smtpd.Observer``)."""

    wants_data = False

    def __init__(self, session_id: str, peer: tuple[str, int] | None,
                 transcript: Transcript | None = None) -> None:
        self.session_id = session_id
        self.peer = peer
        self.transcript = transcript
        #: The rule whose refusal is being answered (set by the handler).
        self.rule: str | None = None
        #: The mechanism and user name of the AUTH attempt that just failed, and why.
        self.auth: tuple[str | None, str | None] | None = None
        self.auth_detail: str | None = None
        #: What the authenticator (:mod:`.authguard`) adds to that line: the address's
        #: failures and the delay, or why it refused without checking.
        self.auth_facts: dict[str, Any] = {}
        self._bdat: int | None = None  # octets announced by the transaction's BDATs
        self._data: int | None = None  # octets of the DATA just received

    @property
    def message_size(self) -> int | None:
        """The size of the current message as the client sent it, as far as the engine
        said: BDAT's announced sizes (refused chunks too), or DATA's count."""
        return self._bdat if self._bdat is not None else self._data

    def auth_failed(self, mechanism: str | None, user: str | None,
                    detail: str | None) -> None:
        """The AUTH whose refusal comes next: its ``refused`` line names these."""
        self.auth, self.auth_detail = (mechanism, user), detail

    def received(self, line: str) -> None:
        if self.transcript is not None:
            self.transcript.received(line)
        if isinstance(line, Summary) and self._summary(line):
            return
        self.rule = None
        self._data = None
        if self._bdat is None and line[:4].upper() != "BDAT":
            return  # no BDAT to count, none counted to forget: the verb does not matter
        verb, _, rest = line.partition(" ")
        verb = verb.upper()
        if verb == "BDAT":
            size = rest.split(" ", 1)[0]
            if size.isdigit():
                self._bdat = (self._bdat or 0) + int(size)
        elif verb in _NEW_TRANSACTION:
            self._bdat = None

    def _summary(self, line: Summary) -> bool:
        """Take in the engine's summary of something it did not pass on, if it is one
        of those the log counts."""
        if line.startswith(_DATA_SUMMARY):
            self._data = int(line[len(_DATA_SUMMARY):].split(" ", 1)[0])
            return True
        if (injected := _INJECTED.fullmatch(line)) is not None:
            self._log("starttls-injection", octets=int(injected.group(1)))
            return True
        return False

    def data(self, chunk: bytes) -> None:
        """(Message data is not asked for: ``wants_data`` is False.)"""

    def sent(self, reply: bytes) -> None:
        if self.transcript is not None:
            self.transcript.sent(reply)

    def refused(self, command: str, reply: Reply) -> None:
        fields: dict[str, Any] = {}
        if self.rule is not None:
            fields["rule"] = self.rule
        if command == "AUTH":
            fields.update(self._auth_fields())
        if command in ("DATA", "BDAT") and self.message_size is not None:
            fields["size"] = self.message_size
        self._log("refused", command=command, code=reply.code, enhanced=reply.enhanced,
                  reason=reply.text, **fields)

    def _auth_fields(self) -> dict[str, Any]:
        """The failed AUTH's facts, once: a failure is one ``refused`` line (issue 16)."""
        fields: dict[str, Any] = {}
        if self.auth is not None:
            fields["mechanism"], fields["user"] = self.auth
            if self.auth_detail is not None:
                fields["detail"] = self.auth_detail
        fields.update(self.auth_facts)  # the authenticator's detail says more than ours
        self.auth = self.auth_detail = None
        self.auth_facts = {}
        return fields

    def _log(self, event: str, **fields: Any) -> None:
        peer = self.peer
        log_event(event, session=self.session_id,
                  peer=None if peer is None else f"{peer[0]}:{peer[1]}",
                  ip=None if peer is None else peer[0], **fields)


def watch_session(session: Session, transcript: Callable[[str], None] | None
                  ) -> SessionWatch:
    """Watch ``session`` from its greeting on; ``transcript`` writes ``--smtplog`` lines."""
    info = session.info
    watch = SessionWatch(info.id, info.peer,
                         None if transcript is None else Transcript(transcript, info.id))
    session.observer = watch
    _WATCHES[info.id] = watch
    return watch


def watch_of(session_id: str) -> SessionWatch | None:
    """The watch of the session ``session_id``, while it runs."""
    return _WATCHES.get(session_id)


def refusing(session: Session, rule: str) -> None:
    """``rule`` is refusing the step being decided: its ``refused`` line names it."""
    watch = session.observer
    if isinstance(watch, SessionWatch):
        watch.rule = rule


def message_size(session: Session, tx: Transaction) -> int:
    """The size to log for a message that did not arrive whole (refused or abandoned):
    what the client sent, as the engine counted it, where it did."""
    watch = session.observer
    size = watch.message_size if isinstance(watch, SessionWatch) else None
    return tx.size if size is None else size
