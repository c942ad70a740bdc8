"""Every reply the engine gives on its own, byte for byte, and the fields of its events.

Clients and their operators read these texts, and RFC 3463 codes are machine-read: a
changed code, enhanced code or text is a change of behaviour, so each is pinned here
(mutation testing showed many were only checked by their three-digit code). Also pinned:
the errors an application gets for driving the engine wrongly, with their messages.
"""

from __future__ import annotations

import base64

import pytest

from tests.engine import Engine, ready
from trio_smtpd._config import ProtocolConfig
from trio_smtpd._connection import NEED_DATA, ServerConnection, UsageError
from trio_smtpd._events import (
    AuthResponse,
    AuthStart,
    BodyStart,
    ConnectionClosed,
    ConnectionOpened,
    EndOfMessage,
    HelloCommand,
    MailCommand,
    MessageAborted,
    MessageData,
    RcptCommand,
    Request,
    Reset,
)
from trio_smtpd._replies import Reply

Script = list[tuple[bytes, list[str]]]

EHLO_KEYWORDS = ["250-PIPELINING", "250-8BITMIME", "250-SIZE 33554432",
                 "250-ENHANCEDSTATUSCODES", "250-SMTPUTF8", "250-CHUNKING", "250-BINARYMIME"]
HELP = ["214-2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY EXPN",
        "214 2.0.0 See RFC 5321"]


def play(engine: Engine, script: Script) -> None:
    for sent, expected in script:
        assert engine.lines(sent) == expected, sent


def test_greeting_and_commands_before_hello() -> None:
    engine = Engine(ProtocolConfig(hostname="mx.test"))
    assert engine.start() == b"220 mx.test ESMTP trio_smtpd ready\r\n"
    play(engine, [
        (b"NOOP\r\n", ["250 2.0.0 OK"]),
        (b"NOOP with an argument\r\n", ["250 2.0.0 OK"]),
        (b"MAIL FROM:<a@b.c>\r\n", ["503 5.5.1 Send HELO/EHLO first"]),
        (b"RCPT TO:<a@b.c>\r\n", ["503 5.5.1 Send HELO/EHLO first"]),
        (b"\n", ["500 5.5.2 Empty command line"]),
        (b"FOO\r\n", ["500 5.5.1 Command unrecognized"]),
        (b"HELO client.test\r\n", ["250 mx.test greets client.test"]),
        (b"EHLO client.test\r\n", ["250-mx.test greets client.test", *EHLO_KEYWORDS,
                                   "250-LIMITS RCPTMAX=100", "250 HELP"]),
    ])


def test_replies_to_each_command_in_a_session() -> None:
    engine = ready(ProtocolConfig(hostname="mx.test"))
    play(engine, [
        (b"HELP\r\n", HELP),
        (b"HELP DATA\r\n", HELP),
        (b"VRFY\r\n", ["501 5.5.4 Syntax: VRFY <address>"]),
        (b"VRFY someone@example.org\r\n",
         ["252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"]),
        (b"EXPN list\r\n", ["502 5.5.1 EXPN not available"]),
        (b"RSET now\r\n", ["501 5.5.4 Syntax: RSET takes no arguments"]),
        (b"QUIT now\r\n", ["501 5.5.4 Syntax: QUIT takes no arguments"]),
        (b"DATA\r\n", ["503 5.5.1 Need MAIL command first"]),
        (b"RCPT TO:<x@y.z>\r\n", ["503 5.5.1 Need MAIL command first"]),
        (b"BDAT 3\r\nabc", ["503 5.5.1 Need MAIL command first"]),
        (b"MAIL FROM a@b.c\r\n", ["501 5.5.4 Syntax: expected FROM:<address>"]),
        (b"MAIL FROM:<a@b.c>\r\n", ["250 2.1.0 Sender OK"]),
        (b"RCPT TO x@y.z\r\n", ["501 5.5.4 Syntax: expected TO:<address>"]),
        (b"DATA\r\n", ["554 5.5.1 No valid recipients"]),
        (b"BDAT x\r\n", ["501 5.5.4 Syntax: BDAT <chunk-size> [LAST]"]),
        (b"RCPT TO:<x@y.z>\r\n", ["250 2.1.5 Recipient OK"]),
        (b"DATA now\r\n", ["501 5.5.4 Syntax: DATA takes no arguments"]),
        (b"STARTTLS\r\n", ["502 5.5.1 STARTTLS not available"]),
        (b"AUTH PLAIN\r\n", ["502 5.5.1 AUTH not available"]),
        (b"DATA\r\n", ["354 End data with <CR><LF>.<CR><LF>"]),
        (b"body\r\n.\r\n", ["250 2.0.0 Message accepted"]),
        (b"RSET\r\n", ["250 2.0.0 OK"]),
        (b"QUIT\r\n", ["221 2.0.0 mx.test closing connection"]),
    ])


def test_without_enhanced_status_codes() -> None:
    engine = ready(ProtocolConfig(hostname="mx.test", enhanced_status_codes=False),
                   hello=b"")
    play(engine, [
        (b"EHLO c\r\n", ["250-mx.test greets c", *[k for k in EHLO_KEYWORDS
                                                    if k != "250-ENHANCEDSTATUSCODES"],
                         "250-LIMITS RCPTMAX=100", "250 HELP"]),
        (b"NOOP\r\n", ["250 OK"]),
        (b"BDAT 3\r\nabc", ["503 Need MAIL command first"]),
        (b"MAIL FROM:<a@b.c>\r\n", ["250 Sender OK"]),
        (b"RCPT TO:<d@e.f>\r\n", ["250 Recipient OK"]),
        (b"DATA\r\n", ["354 End data with <CR><LF>.<CR><LF>"]),
        (b"x\r\n.\r\n", ["250 Message accepted"]),
        (b"HELP\r\n", [HELP[0].replace("-2.0.0 ", "-"), "214 See RFC 5321"]),
        (b"QUIT\r\n", ["221 mx.test closing connection"]),
    ])


def test_tls_and_auth_replies() -> None:
    config = ProtocolConfig(hostname="mx.test", tls_available=True,
                            auth_mechanisms=("PLAIN", "LOGIN"))
    plain = ready(config)
    play(plain, [
        (b"AUTH PLAIN\r\n",
         ["538 5.7.11 Encryption required for requested authentication mechanism"]),
        (b"STARTTLS now\r\n", ["501 5.5.4 Syntax: STARTTLS takes no arguments"]),
        (b"HELO c\r\n", ["250 mx.test greets c"]),
        (b"MAIL FROM:<a@b.c> SIZE=10\r\n", ["555 5.5.4 Parameters need EHLO, not HELO"]),
    ])
    secure = ready(config, tls_active=True)
    play(secure, [
        (b"STARTTLS\r\n", ["503 5.5.1 TLS already active"]),
        (b"AUTH\r\n", ["501 5.5.4 Syntax: AUTH <mechanism> [initial-response]"]),
        (b"AUTH PLAIN a b\r\n", ["501 5.5.4 Syntax: AUTH <mechanism> [initial-response]"]),
        (b"AUTH FOO\r\n", ["504 5.5.4 Unrecognized authentication mechanism"]),
        (b"AUTH PLAIN !!!\r\n", ["501 5.5.2 Invalid base64 data"]),
        (b"MAIL FROM:<a@b.c>\r\n", ["250 2.1.0 Sender OK"]),
        (b"AUTH PLAIN\r\n", ["503 5.5.1 AUTH not allowed during a mail transaction"]),
        (b"RCPT TO:<d@e.f>\r\n", ["250 2.1.5 Recipient OK"]),
        (b"BDAT 2\r\nab", ["250 2.0.0 2 octets received"]),
        (b"RCPT TO:<g@h.i>\r\n", ["503 5.5.1 Message data already started"]),
        (b"DATA\r\n", ["503 5.5.1 DATA not allowed: message data already started"]),
        (b"BDAT 2 LAST\r\ncd", ["250 2.0.0 Message accepted"]),
    ])


def challenge_then(finish: str) -> object:
    """A decider that answers AuthStart with a challenge and AuthResponse with ``finish``."""

    def decide(conn: ServerConnection, decision: Request) -> None:
        if isinstance(decision, AuthStart):
            conn.auth_challenge(b"go on")
        elif isinstance(decision, AuthResponse):
            if finish == "success":
                conn.auth_success("alice")
            else:
                conn.auth_failure()
        else:
            conn.respond()

    return decide


def test_sasl_exchanges() -> None:
    config = ProtocolConfig(hostname="mx.test", auth_mechanisms=("PLAIN", "LOGIN"))
    engine = ready(config, challenge_then("failure"), tls_active=True)  # type: ignore[arg-type]
    play(engine, [
        (b"AUTH plain\r\n", ["334 " + base64.b64encode(b"go on").decode()]),
        (b"*\r\n", ["501 5.0.0 Authentication cancelled"]),
        (b"AUTH PLAIN\r\n", ["334 Z28gb24="]),
        (b"not base64!\r\n", ["501 5.5.2 Invalid base64 in authentication response"]),
        (b"AUTH LOGIN =\r\n", ["334 Z28gb24="]),
        (b"YWxpY2U=\r\n", ["535 5.7.8 Authentication credentials invalid"]),
    ])
    starts = engine.of_type(AuthStart)
    assert [(s.mechanism, s.initial_response) for s in starts  # type: ignore[attr-defined]
            ] == [("PLAIN", None), ("PLAIN", None), ("LOGIN", b"")]
    assert [r.data for r in engine.of_type(AuthResponse)] == [b"alice"]  # type: ignore[attr-defined]
    # A SASL response may be far longer than a command line (RFC 4954 4: 12288 octets).
    long = ready(config, challenge_then("success"), tls_active=True)  # type: ignore[arg-type]
    token = base64.b64encode(b"t" * 6000)
    play(long, [(b"AUTH PLAIN\r\n", ["334 Z28gb24="]),
                (token + b"\r\n", ["235 2.7.0 Authentication successful"]),
                (b"AUTH PLAIN\r\n", ["503 5.5.1 Already authenticated"])])
    assert long.of_type(AuthResponse)[0].data == b"t" * 6000  # type: ignore[attr-defined]


def test_chunking_off_and_lmtp() -> None:
    off = ready(ProtocolConfig(hostname="mx.test", chunking=False))
    play(off, [(b"BDAT 3 LAST\r\nabcNOOP\r\n", ["502 5.5.1 BDAT not implemented",
                                                 "250 2.0.0 OK"])])
    lmtp = ready(ProtocolConfig(hostname="mx.test", lmtp=True), hello=b"")
    play(lmtp, [
        (b"HELO c\r\n", ["500 5.5.1 Use LHLO in LMTP"]),
        (b"EHLO c\r\n", ["500 5.5.1 Use LHLO in LMTP"]),
        (b"MAIL FROM:<a@b.c>\r\n", ["503 5.5.1 Send LHLO first"]),
        (b"LHLO c\r\n", ["250-mx.test greets c", *EHLO_KEYWORDS, "250-LIMITS RCPTMAX=100",
                         "250 HELP"]),
        (b"HELP\r\n", [HELP[0].replace("HELO EHLO", "LHLO"), HELP[1]]),
    ])
    smtp = ready(ProtocolConfig(hostname="mx.test"))
    play(smtp, [(b"LHLO c\r\n", ["500 5.5.1 Command unrecognized"])])


def test_help_lists_only_what_this_session_offers() -> None:
    def offered(engine: Engine) -> list[str]:
        return engine.lines(b"HELP\r\n")[0].split("Commands: ")[1].split()

    basic = ["HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "HELP", "VRFY",
             "EXPN"]
    assert offered(ready(ProtocolConfig(chunking=False))) == basic
    tls = ProtocolConfig(tls_available=True, auth_mechanisms=("PLAIN",), xclient=True)
    # Before TLS: STARTTLS, and no AUTH (none of its mechanisms is offered in cleartext).
    assert offered(ready(tls))[-3:] == ["EXPN", "STARTTLS", "XCLIENT"]
    assert offered(ready(tls, tls_active=True))[-3:] == ["EXPN", "AUTH", "XCLIENT"]


def test_too_many_errors_close_the_connection() -> None:
    engine = ready(ProtocolConfig(hostname="mx.test", max_bad_commands=2))
    play(engine, [(b"FOO\r\n", ["500 5.5.1 Command unrecognized"]),
                  (b"BAR\r\n", ["500 5.5.1 Command unrecognized"]),
                  (b"BAZ\r\n", ["421 4.7.0 Too many errors, closing connection"])])
    assert engine.of_type(ConnectionClosed)


def test_events_say_why_and_how() -> None:
    engine = ready(ProtocolConfig(hostname="mx.test", tls_available=True))
    envelope = b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n"
    engine.send(envelope + b"RSET\r\n")
    engine.send(envelope + b"EHLO again\r\n")
    engine.send(envelope + b"DATA\r\n" + b"x\r\n.\r\n")
    engine.send(envelope + b"BDAT 1 LAST\r\ny")
    engine.send(envelope + b"STARTTLS\r\n")
    assert [e.reason for e in engine.of_type(Reset)] == [  # type: ignore[attr-defined]
        "RSET", "HELLO", "STARTTLS"]
    assert [e.method for e in engine.of_type(BodyStart)] == [  # type: ignore[attr-defined]
        "DATA", "BDAT"]
    assert [e.size for e in engine.of_type(EndOfMessage)] == [3, 1]  # type: ignore[attr-defined]
    hello = engine.of_type(HelloCommand)[-1]
    assert (hello.verb, hello.name) == ("EHLO", "again")  # type: ignore[attr-defined]


def test_an_aborted_message_carries_its_reply() -> None:
    engine = ready(ProtocolConfig(hostname="mx.test", max_message_size=10))
    engine.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n")
    play(engine, [(b"BDAT 6\r\n123456", ["250 2.0.0 6 octets received"]),
                  (b"BDAT 6\r\n123456",
                   ["552 5.3.4 Message exceeds fixed maximum message size"])])
    [aborted] = engine.of_type(MessageAborted)
    assert str(aborted.reply) == (  # type: ignore[attr-defined]
        "552 5.3.4 Message exceeds fixed maximum message size")
    engine.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n")
    assert engine.lines(b"a\rb\r\n.\r\n") == [
        "550 5.6.0 Message refused: bare CR or LF in data; lines must end with CRLF"]
    assert str(engine.of_type(MessageAborted)[1].reply).startswith(  # type: ignore[attr-defined]
        "550 5.6.0 Message refused: bare CR")


# ------------------------------------------------------------------ the application's side


def answer_with(replies: dict[type, Reply]) -> object:
    def decide(conn: ServerConnection, decision: Request) -> None:
        conn.respond(replies.get(type(decision)))

    return decide


@pytest.mark.parametrize(("kind", "code", "what"), [
    (HelloCommand, 251, "HELO"), (MailCommand, 251, "MAIL"), (RcptCommand, 253, "RCPT"),
    (EndOfMessage, 251, "message"), (BodyStart, 250, "DATA"),
])
def test_a_positive_reply_with_the_wrong_code_is_refused(kind: type, code: int,
                                                          what: str) -> None:
    engine = Engine(ProtocolConfig(hostname="mx.test"),
                    answer_with({kind: Reply(code, "fine", "2.0.0")}))  # type: ignore[arg-type]
    engine.start()
    with pytest.raises(UsageError, match=rf"^{code} is not a positive reply to {what}$"):
        engine.send(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nx\r\n.\r\n")


@pytest.mark.parametrize("code", [250, 251, 252])
def test_rcpt_may_be_accepted_with_250_251_or_252(code: int) -> None:
    engine = ready(ProtocolConfig(hostname="mx.test"),
                   answer_with({RcptCommand: Reply(code, "fine", "2.1.5")}))  # type: ignore[arg-type]
    assert engine.lines(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n") == [
        "250 2.1.0 Sender OK", f"{code} 2.1.5 fine"]


@pytest.mark.parametrize(("kind", "script", "then"), [
    (HelloCommand, b"EHLO c\r\n", "503 5.5.1 Send HELO/EHLO first"),
    (MailCommand, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\n", "503 5.5.1 Need MAIL command first"),
    (RcptCommand, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n",
     "554 5.5.1 No valid recipients"),
])
def test_a_refusal_at_400_is_a_refusal(kind: type, script: bytes, then: str) -> None:
    # 400 is the lowest failure code: it refuses, it is not a strange acceptance.
    engine = Engine(ProtocolConfig(hostname="mx.test"),
                    answer_with({kind: Reply(400, "not now", "4.0.0")}))  # type: ignore[arg-type]
    engine.start()
    assert engine.lines(script)[-1] == "400 4.0.0 not now"
    next_step = (b"DATA\r\n" if kind is RcptCommand
                 else b"MAIL FROM:<a@b.c>\r\n" if kind is HelloCommand
                 else b"RCPT TO:<d@e.f>\r\n")
    assert engine.lines(next_step) == [then]


def until(conn: ServerConnection, kind: type) -> object:
    """Pull events, accepting every decision on the way, up to the first ``kind``."""
    while True:
        event = conn.next_event()
        if isinstance(event, kind):
            return event
        if isinstance(event, Request):
            conn.respond()


def test_usage_errors_say_what_was_wrong() -> None:
    conn = ServerConnection(ProtocolConfig(hostname="mx.test"))
    with pytest.raises(UsageError, match=r"^no decision is pending$"):
        conn.respond()
    assert isinstance(conn.next_event(), ConnectionOpened)
    with pytest.raises(UsageError, match=r"^answer ConnectionOpened before the next event$"):
        conn.next_event()
    with pytest.raises(UsageError, match=r"^per-recipient replies answer EndOfMessage only$"):
        conn.respond_per_recipient([])
    with pytest.raises(UsageError, match=r"^a greeting is 220, 554, or 421$"):
        conn.respond(Reply(250, "hi", "2.0.0"))
    with pytest.raises(UsageError, match=r"^no STARTTLS handshake is under way$"):
        conn.tls_established()
    conn.respond()
    conn.receive_data(b"")
    with pytest.raises(UsageError, match=r"^data received after end of file$"):
        conn.receive_data(b"NOOP\r\n")

    auth = ServerConnection(ProtocolConfig(auth_mechanisms=("PLAIN",), auth_requires_tls=False))
    auth.receive_data(b"EHLO c\r\nAUTH PLAIN\r\n")
    until(auth, AuthStart)
    with pytest.raises(UsageError,
                       match=r"^answer AUTH with auth_challenge/auth_success/auth_failure$"):
        auth.respond()
    with pytest.raises(UsageError, match=r"^an AUTH failure needs a 4xx or 5xx reply$"):
        auth.auth_failure(Reply(334, "go on"))
    auth.auth_failure(Reply(400, "try later", "4.0.0"))  # 400 is a failure: taken
    assert auth.data_to_send().endswith(b"400 4.0.0 try later\r\n")

    tls = ready(ProtocolConfig(tls_available=True))
    tls.send(b"STARTTLS\r\n")
    with pytest.raises(UsageError,
                       match=r"^bytes received during the TLS handshake belong to the TLS "
                             "layer$"):
        tls.conn.receive_data(b"NOOP\r\n")

    smtp = ServerConnection(ProtocolConfig())
    smtp.receive_data(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nx\r\n.\r\n")
    until(smtp, EndOfMessage)
    with pytest.raises(UsageError, match=r"^per-recipient replies are for LMTP sessions$"):
        smtp.respond_per_recipient([None])


def lmtp_at_end_of_message() -> ServerConnection:
    conn = ServerConnection(ProtocolConfig(lmtp=True))
    conn.receive_data(b"LHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n"
                      b"RCPT TO:<g@h.i>\r\nDATA\r\nx\r\n.\r\n")
    until(conn, EndOfMessage)
    conn.data_to_send()
    return conn


def test_a_wrong_lmtp_reply_sends_nothing_and_leaves_the_decision_open() -> None:
    # Checked before any reply goes out: a wrong code for the second recipient must not
    # leave the first one's 250 sent and the client waiting for the rest.
    conn = lmtp_at_end_of_message()
    with pytest.raises(UsageError, match=r"^251 is not a positive reply to message$"):
        conn.respond_per_recipient([None, Reply(251, "odd", "2.0.0")])
    assert conn.data_to_send() == b""
    conn.respond_per_recipient([None, Reply(452, "full", "4.2.2")])
    assert conn.data_to_send() == b"250 2.1.5 <d@e.f> delivered\r\n452 4.2.2 full\r\n"


def test_close_with_drops_a_message_decision_not_yet_pulled() -> None:
    # The body's last bytes and its end in one read: MessageData comes first, with
    # EndOfMessage queued behind it. After a 421 (timeout, shutdown), that decision must
    # not be pulled: the client, told 421, will send the message again.
    conn = ServerConnection(ProtocolConfig())
    conn.receive_data(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n"
                      b"body\r\n.\r\n")
    until(conn, MessageData)
    conn.close_with(Reply(421, "shutting down", "4.3.2"))
    assert isinstance(conn.next_event(), ConnectionClosed)
    assert conn.data_to_send().endswith(b"421 4.3.2 shutting down\r\n")


def test_lmtp_needs_one_reply_per_accepted_recipient() -> None:
    conn = lmtp_at_end_of_message()
    with pytest.raises(UsageError, match=r"^1 replies for 2 accepted recipients$"):
        conn.respond_per_recipient([None])
    with pytest.raises(UsageError, match=r"^251 is not a positive reply to message$"):
        conn.respond_per_recipient([Reply(251, "odd", "2.0.0"), None])
    conn = lmtp_at_end_of_message()
    conn.respond(Reply(450, "busy", "4.2.0"))  # one reply for all: each recipient gets it
    assert conn.data_to_send() == b"450 4.2.0 busy\r\n" * 2
    conn = lmtp_at_end_of_message()
    conn.respond()
    assert conn.data_to_send() == (b"250 2.1.5 <d@e.f> delivered\r\n"
                                   b"250 2.1.5 <g@h.i> delivered\r\n")


# ------------------------------------------------------------------ BDAT refusals and limits


def test_refusals_of_the_server_are_not_client_errors() -> None:
    # A chunk refused for size, or by the application, does not count towards
    # max_bad_commands; a BDAT out of sequence does.
    size = ready(ProtocolConfig(max_bad_commands=1, max_message_size=5))
    size.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n")
    for _ in range(3):
        assert size.lines(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nBDAT 6\r\n123456")[-1] \
            == "552 5.3.4 Message exceeds fixed maximum message size"
    assert size.lines(b"NOOP\r\n") == ["250 2.0.0 OK"]

    # (503 is one of the codes that count when the engine itself answers them.)
    refuse = answer_with({BodyStart: Reply(503, "not in this order", "5.5.1")})
    app = Engine(ProtocolConfig(max_bad_commands=1), refuse)  # type: ignore[arg-type]
    app.start()
    app.send(b"EHLO c\r\n")
    for _ in range(3):
        assert app.lines(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nBDAT 3\r\nabc")[-1] \
            == "503 5.5.1 not in this order"
    assert app.lines(b"NOOP\r\n") == ["250 2.0.0 OK"]

    sequence = ready(ProtocolConfig(max_bad_commands=1))
    assert sequence.lines(b"BDAT 3\r\nabc") == ["503 5.5.1 Need MAIL command first"]
    assert sequence.lines(b"BDAT 3\r\nabc") == ["421 4.7.0 Too many errors, closing connection"]


def test_a_first_chunk_over_the_limit_starts_no_message() -> None:
    engine = ready(ProtocolConfig(max_message_size=5))
    engine.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n")
    assert engine.lines(b"BDAT 6 LAST\r\n123456") == [
        "552 5.3.4 Message exceeds fixed maximum message size"]
    assert engine.of_type(BodyStart) == [] and engine.of_type(MessageAborted) == []


def test_bdat_when_chunking_is_off_leaves_the_transaction_alone() -> None:
    engine = ready(ProtocolConfig(chunking=False))
    engine.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n")
    assert engine.lines(b"BDAT 3\r\nabc") == ["502 5.5.1 BDAT not implemented"]
    assert engine.lines(b"DATA\r\n") == ["354 End data with <CR><LF>.<CR><LF>"]


def test_a_refused_session_consumes_bdat_chunks_and_answers_only_quit() -> None:
    refuse = answer_with({ConnectionOpened: Reply(554, "no service", "5.7.1")})
    engine = Engine(ProtocolConfig(hostname="mx.test"), refuse)  # type: ignore[arg-type]
    assert engine.start() == b"554 5.7.1 no service\r\n"
    play(engine, [
        (b"BDAT x\r\n", ["503 5.5.1 No service here; only QUIT is accepted"]),
        (b"BDAT 4\r\nNOOPNOOP\r\n", ["503 5.5.1 No service here; only QUIT is accepted",
                                     "503 5.5.1 No service here; only QUIT is accepted"]),
        (b"QUIT\r\n", ["221 2.0.0 mx.test closing connection"]),
    ])


def test_binarymime_needs_chunking_and_requiretls_needs_tls() -> None:
    off = ready(ProtocolConfig(chunking=False, binarymime=True))
    assert off.lines(b"MAIL FROM:<a@b.c> BODY=BINARYMIME\r\n") == [
        "555 5.5.4 BODY=BINARYMIME not offered"]
    # The same connection before and after STARTTLS: what is offered follows TLS.
    engine = ready(ProtocolConfig(tls_available=True))
    assert engine.lines(b"MAIL FROM:<a@b.c> REQUIRETLS\r\n") == [
        "555 5.5.4 Parameter REQUIRETLS not offered"]
    engine.send(b"STARTTLS\r\n")
    engine.conn.tls_established()
    engine.send(b"EHLO c\r\n")
    assert engine.lines(b"MAIL FROM:<a@b.c> REQUIRETLS\r\n") == ["250 2.1.0 Sender OK"]


@pytest.mark.parametrize("method", [b"DATA\r\n", b"BDAT 3\r\nabc"])
def test_data_start_refused_at_400_or_accepted_with_its_own_354(method: bytes) -> None:
    later = answer_with({BodyStart: Reply(400, "not now", "4.0.0")})
    engine = ready(ProtocolConfig(), later)  # type: ignore[arg-type]
    engine.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n")
    assert engine.lines(method) == ["400 4.0.0 not now"]
    assert engine.lines(b"NOOP\r\n") == ["250 2.0.0 OK"]
    if method == b"DATA\r\n":
        own = answer_with({BodyStart: Reply(354, "Go ahead")})
        engine = ready(ProtocolConfig(), own)  # type: ignore[arg-type]
        engine.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n")
        assert engine.lines(method) == ["354 Go ahead"]


def test_lmtp_per_recipient_failures_at_400() -> None:
    conn = lmtp_at_end_of_message()
    conn.respond_per_recipient([Reply(400, "not now", "4.0.0"), None])
    assert conn.data_to_send() == (b"400 4.0.0 not now\r\n"
                                   b"250 2.1.5 <g@h.i> delivered\r\n")


def test_need_data_reads_as_its_name() -> None:
    # What a driver's debug log shows when the engine waits for bytes.
    assert repr(NEED_DATA) == "NEED_DATA"


def test_why_each_connection_closed() -> None:
    def reason(engine: Engine) -> str:
        [closed] = engine.of_type(ConnectionClosed)
        return closed.reason  # type: ignore[attr-defined,no-any-return]

    quit_ = ready()
    quit_.send(b"QUIT\r\n")
    assert reason(quit_) == "QUIT"
    errors = ready(ProtocolConfig(max_bad_commands=0))
    errors.send(b"FOO\r\n")
    assert reason(errors) == "ERRORS"
    eof = ready()
    eof.send(b"", eof=True)
    assert reason(eof) == "EOF"
    busy = Engine(ProtocolConfig(), answer_with(  # type: ignore[arg-type]
        {MailCommand: Reply(421, "shutting down", "4.3.2")}))
    busy.start()
    assert busy.lines(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\n")[-1] == "421 4.3.2 shutting down"
    assert reason(busy) == "CLOSING"
    guesses = ready(ProtocolConfig(auth_mechanisms=("PLAIN",), max_auth_failures=0),
                    tls_active=True)
    assert guesses.lines(b"AUTH PLAIN AGEAYg==\r\n") == [
        "421 4.7.0 Too many authentication failures"]
    assert reason(guesses) == "AUTH_FAILURES"


def test_nothing_happens_after_the_close() -> None:
    conn = ServerConnection(ProtocolConfig())
    conn.receive_data(b"EHLO c\r\nQUIT\r\n")
    assert isinstance(until(conn, ConnectionClosed), ConnectionClosed)
    conn.receive_data(b"")  # the client hangs up in turn: no second ConnectionClosed
    assert conn.next_event() is NEED_DATA
    assert conn.next_event() is NEED_DATA


def test_the_transaction_as_the_engine_shows_it() -> None:
    conn = ServerConnection(ProtocolConfig())
    assert (conn.sender, conn.mail_params, conn.recipients, conn.recipient_count,
            conn.in_transaction) == (None, None, [], 0, False)
    conn.receive_data(b"EHLO c\r\nMAIL FROM:<a@b.c> SIZE=10\r\nRCPT TO:<d@e.f>\r\nNOOP\r\n")
    until(conn, RcptCommand)
    conn.respond()
    assert str(conn.sender) == "a@b.c" and conn.mail_params is not None
    assert conn.mail_params.size == 10 and conn.recipient_count == 1 and conn.in_transaction
    conn.receive_data(b"RSET\r\n")
    until(conn, Reset)
    assert (conn.sender, conn.mail_params, conn.recipients, conn.recipient_count,
            conn.in_transaction) == (None, None, [], 0, False)


def test_sasl_response_lines_are_taken_exactly() -> None:
    # Only the CRLF is removed: a trailing space makes the base64 invalid, and a final
    # "X" is part of it.
    config = ProtocolConfig(auth_mechanisms=("PLAIN",))
    engine = ready(config, challenge_then("success"), tls_active=True)  # type: ignore[arg-type]
    play(engine, [(b"AUTH PLAIN\r\n", ["334 Z28gb24="]),
                  (b"YWFX \r\n", ["501 5.5.2 Invalid base64 in authentication response"]),
                  (b"AUTH PLAIN\r\n", ["334 Z28gb24="]),
                  (b"YWFX\r\n", ["235 2.7.0 Authentication successful"])])
    assert engine.of_type(AuthResponse)[0].data == b"aaW"  # type: ignore[attr-defined]


def test_mail_and_rcpt_lines_may_exceed_512_octets() -> None:
    # RFC 1870/3461/4954 raise the limit for MAIL and RCPT parameters, not for others.
    engine = ready(ProtocolConfig(dsn=True))
    long_orcpt = "rfc822;" + "a" * 60 + "@" + ".".join(["b" * 60] * 8)
    assert engine.lines(f"MAIL FROM:<a@b.c> ENVID={'e' * 90}\r\n".encode()) == [
        "250 2.1.0 Sender OK"]
    rcpt = f"RCPT TO:<d@e.f> ORCPT={long_orcpt}\r\n".encode()
    assert len(rcpt) > 512
    assert engine.lines(rcpt) == ["250 2.1.5 Recipient OK"]
    assert engine.lines(b"NOOP " + b"x" * 510 + b"\r\n") == ["500 5.5.2 Line too long"]


def test_parameters_after_helo_are_refused_whatever_they_are() -> None:
    engine = ready(hello=b"HELO c\r\n")
    assert engine.lines(b"MAIL FROM:<a@b.c> X\r\n") == [
        "555 5.5.4 Parameters need EHLO, not HELO"]
    assert engine.lines("MAIL FROM:<a@b.c> \u2003\r\n".encode()) == [  # not a space
        "555 5.5.4 Parameters need EHLO, not HELO"]
    assert engine.lines(b"MAIL FROM:<a@b.c>  \r\n") == ["250 2.1.0 Sender OK"]


def test_auth_answers_need_an_auth_exchange() -> None:
    conn = ServerConnection(ProtocolConfig())
    for answer in (lambda: conn.auth_challenge(b"x"), lambda: conn.auth_success("a"),
                   lambda: conn.auth_failure()):
        with pytest.raises(UsageError, match=r"^no AUTH exchange is pending$"):
            answer()


def test_no_partial_line_is_left_after_a_close() -> None:
    # The server layer times a client by the partial line it is sending: a connection
    # closed in the middle of an overlong line has none left.
    conn = ServerConnection(ProtocolConfig())
    conn.receive_data(b"EHLO c\r\n" + b"x" * 4000)
    until(conn, HelloCommand)
    conn.respond()
    assert conn.next_event() is NEED_DATA and conn.partial_line  # discarding the long line
    conn.close_with(Reply(421, "bye", "4.4.2"))
    assert isinstance(conn.next_event(), ConnectionClosed)
    assert not conn.partial_line


def test_lmtp_greets_as_lmtp_and_tls_is_off_by_default() -> None:
    assert Engine(ProtocolConfig(hostname="mx.test", lmtp=True)).start() == (
        b"220 mx.test LMTP trio_smtpd ready\r\n")
    assert ServerConnection(ProtocolConfig()).tls_active is False


# Found by review (2026-12-02): a 421 closes the connection (RFC 5321 3.8, 4.2.2) on every
# path, not only through respond(): LMTP's per-recipient replies and AUTH's failure.
def test_a_421_among_lmtp_recipient_replies_closes_after_all_of_them() -> None:
    def decide(conn: ServerConnection, decision: Request) -> None:
        if isinstance(decision, EndOfMessage):
            conn.respond_per_recipient([None, Reply(421, "shutting down", "4.3.2")])
        else:
            conn.respond()

    engine = ready(ProtocolConfig(lmtp=True), decide=decide, hello=b"LHLO c\r\n")
    engine.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<one@x.y>\r\nRCPT TO:<two@x.y>\r\nDATA\r\n")
    assert engine.codes(b"hi\r\n.\r\nNOOP\r\n") == [250, 421]
    closed = [e for e in engine.events if isinstance(e, ConnectionClosed)]
    assert [c.reason for c in closed] == ["CLOSING"]  # type: ignore[attr-defined]


def test_an_auth_failure_answered_421_closes() -> None:
    def decide(conn: ServerConnection, decision: Request) -> None:
        if isinstance(decision, AuthStart | AuthResponse):
            conn.auth_failure(Reply(421, "authentication service down", "4.7.0"))
        else:
            conn.respond()

    engine = ready(ProtocolConfig(auth_mechanisms=("PLAIN",)), decide=decide,
                   tls_active=True)
    assert engine.codes(b"AUTH PLAIN AGEAYg==\r\nNOOP\r\n") == [421]
    closed = [e for e in engine.events if isinstance(e, ConnectionClosed)]
    assert [c.reason for c in closed] == ["CLOSING"]  # type: ignore[attr-defined]
