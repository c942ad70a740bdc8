"""What the protocol engine is told about a session: extensions, policy and limits.

Every limit has a name and a default taken from the RFC that governs it; each is tested at
the limit and one past it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["ProtocolConfig"]


@dataclass(frozen=True, slots=True)
class ProtocolConfig:
    """Settings of the sans-I/O engine (the trio server builds one from its ``Config``)."""

    hostname: str = "localhost"
    #: Speak LMTP (RFC 2033): LHLO instead of HELO/EHLO, one reply per recipient after data.
    lmtp: bool = False

    # --- Extensions advertised in EHLO ---------------------------------------------------
    pipelining: bool = True
    eightbitmime: bool = True
    smtputf8: bool = True
    chunking: bool = True
    #: BINARYMIME is only offered together with CHUNKING (RFC 3030 3).
    binarymime: bool = True
    #: DSN (RFC 3461): offer it only if the application will send delivery reports, a
    #: duty that advertising it takes over from the client.
    dsn: bool = False
    enhanced_status_codes: bool = True
    #: REQUIRETLS (RFC 8689) is only ever offered once TLS is active.
    requiretls: bool = True
    #: The server layer sets this when it holds a TLS context (enables STARTTLS).
    tls_available: bool = False
    #: SASL mechanisms the server layer can verify, in the order advertised.
    auth_mechanisms: tuple[str, ...] = ()
    #: RFC 4954 14: by default AUTH is neither offered nor accepted over cleartext...
    auth_requires_tls: bool = True
    #: ...except these mechanisms (the Go smtpd's ``Mechanisms``, where
    #: ``auth_mechanisms`` is its ``TLSMechanisms``); others get 538 before TLS.
    cleartext_auth_mechanisms: tuple[str, ...] = ()
    #: Offer and accept XCLIENT (Postfix's extension): the server layer sets it for
    #: clients in its trusted networks. Others get 550.
    xclient: bool = False

    # --- Policy --------------------------------------------------------------------------
    #: Refuse MAIL (530) until STARTTLS has completed.
    require_tls: bool = False
    #: Refuse MAIL (530) until AUTH has succeeded (message submission, RFC 6409).
    require_auth: bool = False
    #: What to do with a CR or LF that is not part of CRLF inside DATA: "reject" the
    #: message after its end (the default, closing SMTP smuggling for good) or "keep" it
    #: as message data. Either way only CRLF.CRLF ends the data.
    bare_line_endings: Literal["reject", "keep"] = "reject"
    #: Take a HELO/EHLO/LHLO whose name is not UTF-8, its bytes escaped with backslashes
    #: (Postfix does; RFC 5321 wants a domain). Other commands stay strict.
    accept_8bit_helo: bool = False
    #: Take ESMTP parameters on MAIL and RCPT after HELO as after EHLO (Postfix and
    #: OpenSMTPD do; RFC 5321 4.1.1.1 reserves them for EHLO sessions).
    accept_params_after_helo: bool = False

    # --- The greeting --------------------------------------------------------------------
    #: Its text after ``"<hostname> ESMTP "``; more lines make a multi-line greeting.
    greeting: tuple[str, ...] = ()
    #: End the greeting with the date and time (RFC 5322), as Sendmail does.
    greeting_time: bool = False

    # --- Limits --------------------------------------------------------------------------
    #: RFC 5321 4.5.3.1.4: a command line is at most 512 octets including CRLF.
    max_command_line_length: int = 512
    #: Extra octets allowed on MAIL and RCPT lines only, for the parameters of extensions
    #: that raise the limit (SIZE +26, RFC 1870; AUTH= +500, RFC 4954; ENVID and ORCPT,
    #: RFC 3461; longer UTF-8 addresses, RFC 6531).
    command_line_allowance: int = 1024
    #: RFC 4954 4: a SASL response line may be up to 12288 octets.
    max_auth_line_length: int = 12288
    #: RFC 5321 4.5.3.1.6: a text line of message data is at most 1000 octets with CRLF.
    max_data_line_length: int = 1000
    #: Largest message accepted, in octets (advertised as SIZE); None for no limit.
    max_message_size: int | None = 32 * 2**20
    #: RFC 5321 4.5.3.1.8: at least 100 recipients must be accepted; more get 452.
    max_recipients: int = 100
    #: Protocol errors (500-504, 555) tolerated before 421 and close.
    max_bad_commands: int = 20
    #: Failed AUTH attempts tolerated before 421 and close.
    max_auth_failures: int = 3

    extra_ehlo_keywords: tuple[str, ...] = field(default=())

    # Replies that depend only on these settings, serialised at first use by the engine
    # (the greeting, the EHLO keywords...): each config serves many connections.
    _cache: dict[object, object] = field(default_factory=dict, init=False, repr=False,
                                         compare=False)

    def __post_init__(self) -> None:
        if self.max_command_line_length < 512:
            raise ValueError("max_command_line_length below RFC 5321's 512 octets")
        if self.max_data_line_length < 1000:
            raise ValueError("max_data_line_length below RFC 5321's 1000 octets")
        if self.max_recipients < 1 or self.max_bad_commands < 0 or self.max_auth_failures < 0:
            raise ValueError("limits must be positive")
        if self.command_line_allowance < 0:
            raise ValueError("command_line_allowance must not be negative")
        if self.max_message_size is not None and self.max_message_size < 1:
            # RFC 1870 reads "SIZE 0" as "no limit": say None for that instead.
            raise ValueError("max_message_size must be positive (None for no limit)")
        for line in self.greeting:
            if not line.isprintable():
                raise ValueError(f"greeting lines must be printable text: {line!r}")
        for keyword in self.extra_ehlo_keywords:
            if not keyword or any(c in keyword for c in "\r\n") or not keyword.isascii():
                raise ValueError(f"bad EHLO keyword {keyword!r}")
