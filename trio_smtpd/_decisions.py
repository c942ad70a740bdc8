"""The decisions an application makes, as values it can inspect and answer.

Every decision has the same three answers with the same signature, ``accept()``,
``reject()`` and ``tempfail()``, each taking ``(code, text, enhanced)``, all optional and
keyword-friendly; ``text`` may be a list of lines for a multi-line reply. A decision is
answered once: a second answer, or an answer after the session moved on without it (its
deadline passed, the handler went away), raises ``UsageError``, so no later call can
turn a refusal into an acceptance.

What happens to a decision nobody answers is the session's business (``_session.py``):
envelope steps the application moved past are accepted, a message is never acknowledged
unless the application said so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from ._address import Address
from ._connection import UsageError
from ._events import Recipient
from ._info import SessionInfo
from ._params import MailParams, RcptParams
from ._replies import Reply
from ._sasl import Credentials
from ._tlsfailure import Reason
from ._transaction import Transaction

__all__ = [
    "Auth",
    "Connect",
    "DataStart",
    "Decision",
    "Hello",
    "Mail",
    "Message",
    "Rcpt",
    "TLSFailed",
]

Text = str | Sequence[str]


class Decision:
    """Base class of the events an application answers.

    ``accept()``, ``reject()`` (5xx by default) and ``tempfail()`` (4xx) each take
    ``code``, ``text`` and ``enhanced`` (RFC 3463); whatever is left out gets this kind of
    decision's default. Answer once: a second answer raises ``UsageError``.
    """

    __slots__ = ('_answered', '_reply', '_why_answered')

    #: Default (code, enhanced code) of accept(), reject() and tempfail().
    _ACCEPT: tuple[int, str | None] = (250, "2.0.0")
    _REJECT: tuple[int, str | None] = (550, "5.7.1")
    _TEMPFAIL: tuple[int, str | None] = (451, "4.3.0")
    _REJECT_TEXT = "Rejected"
    _TEMPFAIL_TEXT = "Temporary failure, try again later"
    #: The codes each answer may use, where the protocol allows only some.
    _ACCEPT_CODES: tuple[int, ...] = (250,)
    _REJECT_CODES: tuple[int, ...] = ()
    _TEMPFAIL_CODES: tuple[int, ...] = ()
    #: Its temporary failure is not 451 (421 at connect, 454 for AUTH): the server, when
    #: it answers for a gone application, uses that code instead of its own 451.
    _OWN_TEMPFAIL = False

    def __init__(self) -> None:
        self._answered = False
        self._reply: Reply | None = None
        self._why_answered = ""

    @property
    def decided(self) -> bool:
        """True once answered, by the application or, past its chance, by the server."""
        return self._answered

    @property
    def reply(self) -> Reply | None:
        """The answer given; None for the default positive reply (or not answered yet)."""
        return self._reply

    def accept(self, code: int | None = None, text: Text | None = None,
               enhanced: str | None = None) -> None:
        """Say yes. Without arguments the protocol's usual positive reply is sent."""
        if code is None and text is None and enhanced is None:
            self._answer(None)
            return
        code = self._ACCEPT[0] if code is None else code
        _check(code, self._ACCEPT_CODES, f"{type(self).__name__}.accept()")
        self._answer(_reply(code, text, enhanced, self._ACCEPT, "OK"))

    def reject(self, code: int | None = None, text: Text | None = None,
               enhanced: str | None = None) -> None:
        """Say no for good (5xx by default; a 4xx code is allowed)."""
        code = self._REJECT[0] if code is None else code
        if not 400 <= code < 600:
            raise ValueError(f"reject() takes a 4xx or 5xx code, not {code}")
        _check(code, self._REJECT_CODES, f"{type(self).__name__}.reject()")
        self._answer(_reply(code, text, enhanced, self._REJECT, self._REJECT_TEXT))

    def tempfail(self, code: int | None = None, text: Text | None = None,
                 enhanced: str | None = None) -> None:
        """Say not now (4xx): the client will try again later."""
        code = self._TEMPFAIL[0] if code is None else code
        if not 400 <= code < 500:
            raise ValueError(f"tempfail() takes a 4xx code, not {code}")
        _check(code, self._TEMPFAIL_CODES, f"{type(self).__name__}.tempfail()")
        self._answer(_reply(code, text, enhanced, self._TEMPFAIL, self._TEMPFAIL_TEXT))

    def _answer(self, reply: Reply | None) -> None:
        if self._answered:
            raise UsageError(f"{self!r} was already answered{self._why_answered}: "
                             f"{self._reply or 'accepted'}")
        self._answered = True
        self._reply = reply

    def _settle(self, reply: Reply | None, why: str) -> None:
        """The server answers for the application (its chance has passed)."""
        if not self._answered:
            self._answer(reply)
            self._why_answered = f" ({why})"

    def _give_up(self, code: int, enhanced: str, text: str) -> bool:
        """The application is gone: answer with the temporary failure the session fell
        back to (in this kind's own code, if it has one). True for a report, which is
        answered with nothing."""
        if self._OWN_TEMPFAIL:
            code, enhanced = self._TEMPFAIL[0], self._TEMPFAIL[1] or enhanced
        self._settle(Reply(code, text, enhanced), _GONE)
        return False


_GONE = "the application is gone"


def _check(code: int, allowed: tuple[int, ...], what: str) -> None:
    if allowed and code not in allowed:
        raise ValueError(f"{what} takes {' or '.join(map(str, allowed))}, not {code}")


def _reply(code: int, text: Text | None, enhanced: str | None,
           defaults: tuple[int, str | None], default_text: str) -> Reply:
    if enhanced is None and defaults[1] is not None:
        # The default enhanced code only where it fits the code's class (RFC 3463).
        enhanced = defaults[1] if code == defaults[0] else f"{code // 100}.0.0"
    return Reply(code, default_text if text is None else text, enhanced)


class Connect(Decision):
    """A client connected. ``accept()`` greets it (220); ``reject()`` answers 554, after
    which only QUIT is accepted (RFC 5321 3.1); ``tempfail()`` answers 421 and closes."""

    __slots__ = ('info',)

    _ACCEPT = (220, None)
    _REJECT = (554, "5.7.1")
    _TEMPFAIL = (421, "4.3.2")
    _ACCEPT_CODES = (220,)
    _REJECT_CODES = (554,)
    _TEMPFAIL_CODES = (421,)
    _REJECT_TEXT = "No service for you"
    _TEMPFAIL_TEXT = "Service not available, try again later"
    _OWN_TEMPFAIL = True

    def __init__(self, info: SessionInfo) -> None:
        super().__init__()
        #: The connection (also ``session.info``).
        self.info = info

    def __repr__(self) -> str:
        return f"Connect(peer={self.info.peer!r})"


class Hello(Decision):
    """HELO, EHLO or LHLO: ``name`` is what the client calls itself (unverified)."""

    __slots__ = ('name', 'verb')

    def __init__(self, verb: Literal["HELO", "EHLO", "LHLO"], name: str) -> None:
        super().__init__()
        self.verb = verb
        self.name = name

    def accept(self, code: int | None = None, text: Text | None = None,
               enhanced: str | None = None) -> None:
        """Say yes (250). ``text`` follows the server's name on the reply's first line,
        where RFC 5321 4.1.1.1 has a greeting: ``250 <hostname> <text>`` (by default
        ``<hostname> greets <name>``). One line only: to EHLO the lines after the first
        are the extension keywords. No enhanced status code: RFC 2034 3 leaves them out
        of the reply to HELO and EHLO."""
        if enhanced is not None:
            raise ValueError("the reply to HELO or EHLO carries no enhanced status code")
        _check(250 if code is None else code, self._ACCEPT_CODES, "Hello.accept()")
        if text is None:
            self._answer(None)
            return
        lines = [text] if isinstance(text, str) else list(text)
        if len(lines) != 1:
            raise ValueError("Hello.accept() takes one line of text: to EHLO the lines "
                             "after the first are the extension keywords")
        self._answer(Reply(250, lines[0]))

    def __repr__(self) -> str:
        return f"Hello({self.verb} {self.name!r})"


class Auth(Decision):
    """AUTH whose credentials the authenticator accepted, as ``identity``; ``accept()``
    (235) lets it stand, ``reject()`` refuses it anyway (535)."""

    __slots__ = ('credentials', 'identity', 'mechanism')

    _ACCEPT = (235, "2.7.0")
    _REJECT = (535, "5.7.8")
    _TEMPFAIL = (454, "4.7.0")
    _ACCEPT_CODES = (235,)
    _REJECT_TEXT = "Authentication credentials invalid"
    _OWN_TEMPFAIL = True

    def __init__(self, mechanism: str, identity: str, credentials: Credentials) -> None:
        super().__init__()
        self.mechanism = mechanism
        self.identity = identity
        self.credentials = credentials

    def __repr__(self) -> str:
        return f"Auth({self.mechanism} {self.identity!r})"


class Mail(Decision):
    """MAIL FROM: ``sender`` is None for the null reverse-path ``<>`` (bounces)."""

    __slots__ = ('params', 'sender')

    _ACCEPT = (250, "2.1.0")

    def __init__(self, sender: Address | None, params: MailParams) -> None:
        super().__init__()
        self.sender = sender
        self.params = params

    def __repr__(self) -> str:
        return f"Mail(<{self.sender or ''}>)"


class Rcpt(Decision):
    """RCPT TO: one ``recipient`` (its ``address`` and ``params``); ``accept()`` may also
    give 251 or 252."""

    __slots__ = ('recipient',)

    _ACCEPT = (250, "2.1.5")
    _ACCEPT_CODES = (250, 251, 252)

    def __init__(self, recipient: Recipient) -> None:
        super().__init__()
        self.recipient = recipient

    @property
    def address(self) -> Address:
        """The recipient's address (``recipient.address``)."""
        return self.recipient.address

    @property
    def params(self) -> RcptParams:
        """The RCPT TO parameters: NOTIFY and ORCPT (``recipient.params``)."""
        return self.recipient.params

    def __repr__(self) -> str:
        return f"Rcpt(<{self.recipient.address}>)"


class DataStart(Decision):
    """DATA or the first BDAT chunk. After ``accept()`` the body is collected into
    ``transaction.data``, or read as it arrives with ``session.body()``."""

    __slots__ = ('method', 'transaction')

    _ACCEPT = (354, None)
    _REJECT = (554, "5.7.1")
    _ACCEPT_CODES = (354,)

    def __init__(self, method: Literal["DATA", "BDAT"], transaction: Transaction) -> None:
        super().__init__()
        self.method = method
        self.transaction = transaction

    def __repr__(self) -> str:
        return f"DataStart({self.method})"


class Message(Decision):
    """The message has arrived. Accept it only once it is safe (stored, relayed...).

    Its answers are its ``transaction``'s: for LMTP, answer each recipient with
    ``transaction.accept_recipient(i)`` and the like, or all of them at once here.
    """

    __slots__ = ('transaction',)

    _REJECT_TEXT = "Message rejected"

    def __init__(self, transaction: Transaction) -> None:
        super().__init__()
        self.transaction = transaction

    @property
    def decided(self) -> bool:
        return self.transaction.decided

    def accept(self, code: int | None = None, text: Text | None = None,
               enhanced: str | None = None) -> None:
        self.transaction.accept(code, text, enhanced)

    def reject(self, code: int | None = None, text: Text | None = None,
               enhanced: str | None = None) -> None:
        self.transaction.reject(code, text, enhanced)

    def tempfail(self, code: int | None = None, text: Text | None = None,
                 enhanced: str | None = None) -> None:
        self.transaction.tempfail(code, text, enhanced)

    def _give_up(self, code: int, enhanced: str, text: str) -> bool:
        self.transaction._close_answers((code, enhanced, text), _GONE)
        return False

    def __repr__(self) -> str:
        return f"Message({self.transaction.size} octets)"


class TLSFailed(Decision):
    """A STARTTLS handshake failed, and the connection is closed: the session's last
    decision. ``reason`` is one of ``"no shared protocol"``, ``"bad certificate"`` (the
    client's, or ours as the client saw it), ``"timeout"``, ``"client gone"`` and
    ``"protocol error"`` (what came was not TLS); ``detail`` is OpenSSL's word for it.

    A report: it needs no answer, and any answer sends nothing (there is nobody left to
    send it to). ``session.tls_failed`` says the same after the session.
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__()
        self.reason = reason
        self.detail = detail

    def _give_up(self, code: int, enhanced: str, text: str) -> bool:
        self._settle(None, "a report needs no answer")
        return True

    def __repr__(self) -> str:
        return f"TLSFailed({self.reason}: {self.detail})"
