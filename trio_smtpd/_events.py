"""Events the protocol engine hands up, one per protocol step.

Two kinds:

* ``Request`` events stop the engine until the caller answers them with
  ``ServerConnection.respond()`` (or the AUTH calls). They are the points where an
  application decides: accept the client, its HELO, a sender, a recipient, the start of
  message data, the message itself.
* Plain events report what happened (a chunk of message data, a reset, the start of TLS,
  the end of the connection) and need no answer.

Events are small immutable values, so they can be logged, compared and kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._address import Address
from ._params import MailParams, RcptParams
from ._replies import Reply

__all__ = [
    "AuthResponse",
    "AuthStart",
    "BodyStart",
    "ConnectionClosed",
    "ConnectionOpened",
    "EndOfMessage",
    "Event",
    "HelloCommand",
    "MailCommand",
    "MessageAborted",
    "MessageData",
    "RcptCommand",
    "Recipient",
    "Request",
    "Reset",
    "StartTLS",
    "XclientCommand",
]


class Event:
    """Base class of everything ``ServerConnection.next_event()`` returns."""

    __slots__ = ()


class Request(Event):
    """An event the engine waits on: answer it before asking for the next event."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ConnectionOpened(Request):
    """A client connected; the answer is the greeting (220, or 554/421 to refuse it)."""


@dataclass(frozen=True, slots=True)
class HelloCommand(Request):
    """HELO, EHLO or LHLO; ``name`` is the client's claimed identity as sent."""

    verb: Literal["HELO", "EHLO", "LHLO"]
    name: str


@dataclass(frozen=True, slots=True)
class MailCommand(Request):
    """MAIL FROM; ``sender`` is None for the null reverse-path ``<>``."""

    sender: Address | None
    params: MailParams


@dataclass(frozen=True, slots=True)
class RcptCommand(Request):
    """RCPT TO for one recipient."""

    recipient: Address
    params: RcptParams


@dataclass(frozen=True, slots=True)
class Recipient:
    """A recipient the server accepted: its address and its RCPT TO parameters."""

    address: Address
    params: RcptParams


@dataclass(frozen=True, slots=True)
class BodyStart(Request):
    """DATA, or the first BDAT chunk: accepting it lets the message body flow."""

    method: Literal["DATA", "BDAT"]


@dataclass(frozen=True, slots=True)
class EndOfMessage(Request):
    """The whole message has arrived; the answer is the final reply (LMTP: one per recipient)."""

    size: int


@dataclass(frozen=True, slots=True)
class AuthStart(Request):
    """AUTH <mechanism> [initial-response]; ``initial_response`` is decoded from base64."""

    mechanism: str
    initial_response: bytes | None


@dataclass(frozen=True, slots=True)
class AuthResponse(Request):
    """The client's (base64-decoded) answer to the last AUTH challenge."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MessageData(Event):
    """A piece of the message body, already dot-unstuffed (DATA) or as sent (BDAT)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MessageAborted(Event):
    """The message being received was refused by the engine or abandoned by the client.

    Everything received for it must be discarded. ``reply`` is what the client was told,
    or None when the client went away before the end of the data.
    """

    reply: Reply | None


@dataclass(frozen=True, slots=True)
class Reset(Event):
    """The mail transaction was cleared (RSET, a new HELO/EHLO, STARTTLS, or its end)."""

    reason: Literal["RSET", "HELLO", "STARTTLS", "AUTH"]


@dataclass(frozen=True, slots=True)
class StartTLS(Event):
    """The client asked for TLS and was told 220: flush, then do the handshake.

    Call ``ServerConnection.tls_established()`` once it succeeds; the engine has already
    discarded any plaintext the client pipelined behind STARTTLS.
    """


@dataclass(frozen=True, slots=True)
class XclientCommand(Event):
    """A trusted proxy's XCLIENT (Postfix's XCLIENT_README): who the real client is.

    ``attributes`` are decoded and checked (``ADDR``, ``PORT``, ``NAME``, ``PROTO``,
    ``HELO``, ``LOGIN``, ``DESTADDR``, ``DESTPORT``; a value may be ``[UNAVAILABLE]``).
    The engine has already started the session over, as Postfix does: no hello, no AUTH
    (``authenticated_as`` is ``LOGIN``, if given), and a ``ConnectionOpened`` follows,
    whose answer is the new greeting.
    """

    attributes: dict[str, str]


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The session is over: flush what is left to send, then close the stream."""

    reason: Literal["QUIT", "EOF", "REFUSED", "ERRORS", "AUTH_FAILURES", "CLOSING"]
