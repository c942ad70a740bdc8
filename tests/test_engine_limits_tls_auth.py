"""Limits, STARTTLS state changes and the AUTH exchange in the engine."""

from __future__ import annotations

import base64

import pytest

from tests.engine import Engine, ready
from trio_smtpd._config import ProtocolConfig
from trio_smtpd._connection import (
    NEED_DATA,
    PAUSED,
    UNSENT_REPLY_LIMIT,
    Mode,
    ServerConnection,
    UsageError,
)
from trio_smtpd._events import (
    AuthResponse,
    AuthStart,
    ConnectionClosed,
    Request,
    StartTLS,
)
from trio_smtpd._replies import Reply

# ----------------------------------------------------------------------- line limits


def test_command_line_at_and_past_512() -> None:
    engine = ready()
    at_limit = b"NOOP " + b"x" * (512 - 7) + b"\r\n"
    assert len(at_limit) == 512
    assert engine.codes(at_limit) == [250]
    past = b"NOOP " + b"x" * (513 - 7) + b"\r\n"
    assert engine.lines(past) == ["500 5.5.2 Line too long"]
    assert engine.codes(b"NOOP\r\n") == [250]


def test_mail_line_gets_the_allowance() -> None:
    config = ProtocolConfig(command_line_allowance=100)
    engine = ready(config)
    def mail_line(length: int) -> bytes:
        # Spaces between parameters are tolerated, so they pad the line to any length.
        fixed = b"MAIL FROM:<a@b.c>" + b"SIZE=10\r\n"
        return b"MAIL FROM:<a@b.c>" + b" " * (length - len(fixed)) + b"SIZE=10\r\n"

    assert len(mail_line(612)) == 612
    assert engine.codes(mail_line(612)) == [250]
    engine.send(b"RSET\r\n")
    assert engine.codes(mail_line(613)) == [500]
    assert engine.codes(b"RSET\r\nMAIL FROM:<a@b.c>\r\n") == [250, 250]


def test_gigabyte_line_without_newline_is_bounded() -> None:
    engine = ready()
    block = b"A" * 2**20
    for _ in range(1024):  # 1 GiB
        engine.conn.receive_data(block)
        assert engine.conn.next_event() is NEED_DATA
        assert engine.conn.buffered <= 2**20
    assert engine.conn.data_to_send() == b""
    assert engine.lines(b"\r\nNOOP\r\n") == ["500 5.5.2 Line too long", "250 2.0.0 OK"]


def test_the_engine_stops_taking_commands_while_its_replies_are_unsent() -> None:
    # A client pipelining HELP (6 octets, answered with about 120) that never reads:
    # what one read holds would become a megabyte of replies. RFC 2920 3.1 lets the
    # server stop reading instead; the engine stops at a bound and waits to be drained.
    engine = ready()
    one_reply = len(engine.send(b"HELP\r\n"))
    engine.conn.receive_data(b"HELP\r\n" * 10000)
    assert engine.conn.next_event() is PAUSED
    assert engine.conn.next_event() is PAUSED  # (until the replies are taken)
    unsent = engine.conn.data_to_send()
    assert UNSENT_REPLY_LIMIT <= len(unsent) < UNSENT_REPLY_LIMIT + one_reply
    assert engine.conn.buffered > 9000 * 6  # the rest is waiting, not parsed
    total = len(unsent)
    while (event := engine.conn.next_event()) is PAUSED:
        total += len(engine.conn.data_to_send())
    assert event is NEED_DATA and engine.conn.buffered == 0
    total += len(engine.conn.data_to_send())
    assert total == 10000 * one_reply  # every command answered once, none lost


def test_a_paused_engine_still_ends_the_session_at_end_of_file() -> None:
    engine = ready()
    engine.conn.receive_data(b"HELP\r\n" * 10000 + b"QUIT\r\n")
    engine.conn.receive_data(b"")
    assert engine.conn.next_event() is PAUSED
    replies = engine.send(b"")  # (the harness drains and goes on, as a driver must)
    assert replies.splitlines()[-1].startswith(b"221 2.0.0")
    assert sum(line.startswith(b"214 ") for line in replies.splitlines()) == 10000
    assert isinstance(engine.events[-1], ConnectionClosed)


def test_recipient_limit_at_and_past() -> None:
    engine = ready(ProtocolConfig(max_recipients=100))
    engine.send(b"MAIL FROM:<a@b.c>\r\n")
    rcpts = b"".join(b"RCPT TO:<u%d@x.y>\r\n" % i for i in range(100))
    assert engine.codes(rcpts) == [250] * 100
    assert engine.lines(b"RCPT TO:<u100@x.y>\r\n") == ["452 4.5.3 Too many recipients"]
    assert len(engine.conn.recipients) == 100
    assert engine.codes(b"DATA\r\nx\r\n.\r\n") == [354, 250]


def test_bad_command_limit_at_and_past() -> None:
    engine = ready(ProtocolConfig(max_bad_commands=3))
    assert engine.codes(b"X\r\nY\r\nRCPT TO:<a@b.c>\r\n") == [500, 500, 503]
    assert not engine.conn.closed
    assert engine.lines(b"Z\r\nNOOP\r\n") == ["421 4.7.0 Too many errors, closing connection"]
    closed = engine.events[-1]
    assert isinstance(closed, ConnectionClosed) and closed.reason == "ERRORS"


def test_config_refuses_limits_below_the_rfc() -> None:
    with pytest.raises(ValueError):
        ProtocolConfig(max_command_line_length=511)
    with pytest.raises(ValueError):
        ProtocolConfig(max_data_line_length=999)
    with pytest.raises(ValueError):
        ProtocolConfig(extra_ehlo_keywords=("X\r\n250 INJECTED",))


# ----------------------------------------------------------------------- replies


def test_reply_text_cannot_inject_lines() -> None:
    with pytest.raises(ValueError):
        Reply(250, "ok\r\n250 injected")
    with pytest.raises(ValueError):
        Reply(250, ["fine", "bad\nline"])
    with pytest.raises(ValueError):
        Reply(250, "ok", "5.0.0")  # class mismatch
    with pytest.raises(ValueError):
        Reply(600, "no such code")
    assert Reply(250, ["a", "b", "c"], "2.0.0").to_bytes() == (
        b"250-2.0.0 a\r\n250-2.0.0 b\r\n250 2.0.0 c\r\n")


# ----------------------------------------------------------------------- STARTTLS

TLS = ProtocolConfig(tls_available=True, auth_mechanisms=("PLAIN",))


def test_starttls_discards_pipelined_plaintext_and_resets() -> None:
    engine = ready(TLS)
    engine.send(b"MAIL FROM:<a@b.c>\r\n")
    out = engine.send(b"STARTTLS\r\nMAIL FROM:<evil@x.y>\r\nRCPT TO:<v@x.y>\r\n")
    assert out == b"220 2.0.0 Ready to start TLS\r\n"
    assert isinstance(engine.events[-1], StartTLS)
    assert engine.conn.mode is Mode.TLS_HANDSHAKE
    assert engine.conn.buffered == 0
    with pytest.raises(UsageError):
        engine.conn.receive_data(b"plaintext during handshake")
    engine.conn.tls_established()
    assert engine.conn.tls_active and engine.conn.hello_name is None
    assert not engine.conn.in_transaction
    # Nothing of the injected commands survived; the session starts over.
    assert engine.codes(b"MAIL FROM:<a@b.c>\r\n") == [503]
    lines = engine.lines(b"EHLO again\r\n")
    assert "250-STARTTLS" not in lines and "250-AUTH PLAIN" in lines
    assert engine.lines(b"STARTTLS\r\n") == ["503 5.5.1 TLS already active"]


def test_starttls_not_configured_and_syntax() -> None:
    assert ready().lines(b"STARTTLS\r\n") == ["502 5.5.1 STARTTLS not available"]
    assert ready(TLS).codes(b"STARTTLS now\r\n") == [501]
    assert ready(TLS, hello=b"").codes(b"STARTTLS\r\n") == [503]


def test_require_tls_and_require_auth() -> None:
    assert ready(ProtocolConfig(require_tls=True)).lines(b"MAIL FROM:<a@b.c>\r\n") == [
        "530 5.7.0 Must issue a STARTTLS command first"]
    assert ready(ProtocolConfig(require_tls=True), tls_active=True).codes(
        b"MAIL FROM:<a@b.c>\r\n") == [250]
    assert ready(ProtocolConfig(require_auth=True)).lines(b"MAIL FROM:<a@b.c>\r\n") == [
        "530 5.7.0 Authentication required"]


# ----------------------------------------------------------------------- AUTH

SECRET = b"\x00user\x00pass"


def plain_auth(conn: ServerConnection, decision: Request) -> None:
    if isinstance(decision, AuthStart):
        if decision.initial_response is None:
            conn.auth_challenge(b"")
        elif decision.initial_response == SECRET:
            conn.auth_success("user")
        else:
            conn.auth_failure()
    elif isinstance(decision, AuthResponse):
        if decision.data == SECRET:
            conn.auth_success("user")
        else:
            conn.auth_failure()
    else:
        conn.respond()


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_auth_over_cleartext_is_538() -> None:
    engine = ready(TLS, decide=plain_auth)
    assert engine.lines(b"AUTH PLAIN " + b64(SECRET) + b"\r\n") == [
        "538 5.7.11 Encryption required for requested authentication mechanism"]
    assert engine.conn.authenticated_as is None


def test_auth_initial_response_success_then_second_auth_503() -> None:
    engine = ready(TLS, decide=plain_auth, tls_active=True)
    assert engine.lines(b"AUTH PLAIN " + b64(SECRET) + b"\r\n") == [
        "235 2.7.0 Authentication successful"]
    assert engine.conn.authenticated_as == "user"
    assert engine.lines(b"AUTH PLAIN " + b64(SECRET) + b"\r\n") == [
        "503 5.5.1 Already authenticated"]


def test_auth_challenge_response() -> None:
    engine = ready(TLS, decide=plain_auth, tls_active=True)
    assert engine.send(b"AUTH plain\r\n") == b"334 \r\n"
    assert engine.codes(b64(SECRET) + b"\r\n") == [235]


def test_auth_cancel_bad_base64_and_unknown_mechanism() -> None:
    engine = ready(TLS, decide=plain_auth, tls_active=True)
    assert engine.send(b"AUTH PLAIN\r\n") == b"334 \r\n"
    assert engine.lines(b"*\r\n") == ["501 5.0.0 Authentication cancelled"]
    assert engine.send(b"AUTH PLAIN\r\n") == b"334 \r\n"
    assert engine.lines(b"!!notbase64\r\n") == [
        "501 5.5.2 Invalid base64 in authentication response"]
    assert engine.lines(b"AUTH PLAIN !!\r\n") == ["501 5.5.2 Invalid base64 data"]
    assert engine.lines(b"AUTH CRAM-MD5\r\n") == [
        "504 5.5.4 Unrecognized authentication mechanism"]
    assert engine.codes(b"AUTH\r\n") == [501]
    assert engine.codes(b"NOOP\r\n") == [250]


def test_auth_empty_initial_response() -> None:
    seen: list[bytes | None] = []

    def decide(conn: ServerConnection, decision: Request) -> None:
        if isinstance(decision, AuthStart):
            seen.append(decision.initial_response)
            conn.auth_failure()
        else:
            conn.respond()

    engine = ready(TLS, decide=decide, tls_active=True)
    assert engine.codes(b"AUTH PLAIN =\r\n") == [535]
    assert seen == [b""]


def test_auth_failure_limit_at_and_past() -> None:
    config = ProtocolConfig(auth_mechanisms=("PLAIN",), max_auth_failures=2)
    engine = ready(config, decide=plain_auth, tls_active=True)
    wrong = b"AUTH PLAIN " + b64(b"\x00user\x00nope") + b"\r\n"
    assert engine.lines(wrong * 2) == ["535 5.7.8 Authentication credentials invalid"] * 2
    assert engine.lines(wrong) == ["421 4.7.0 Too many authentication failures"]
    assert engine.conn.closed
    closed = engine.events[-1]
    assert isinstance(closed, ConnectionClosed) and closed.reason == "AUTH_FAILURES"


def test_auth_not_during_transaction_and_not_configured() -> None:
    engine = ready(TLS, decide=plain_auth, tls_active=True)
    engine.send(b"MAIL FROM:<a@b.c>\r\n")
    assert engine.codes(b"AUTH PLAIN =\r\n") == [503]
    assert ready(tls_active=True).lines(b"AUTH PLAIN =\r\n") == ["502 5.5.1 AUTH not available"]


def test_auth_line_limit() -> None:
    engine = ready(TLS, decide=plain_auth, tls_active=True)
    assert engine.send(b"AUTH PLAIN\r\n") == b"334 \r\n"
    assert engine.lines(b"A" * 12289 + b"\r\n") == [
        "500 5.5.6 Authentication exchange line is too long"]
    assert engine.codes(b"NOOP\r\n") == [250]


def test_auth_calls_need_a_pending_auth() -> None:
    engine = Engine()
    engine.start()
    with pytest.raises(UsageError):
        engine.conn.auth_success("x")
    with pytest.raises(UsageError):
        engine.conn.respond()
    with pytest.raises(UsageError):
        engine.conn.tls_established()


def test_close_with_sends_a_last_reply() -> None:
    engine = ready()
    engine.send(b"MAIL FROM:<a@b.c>\r\n")
    engine.conn.close_with(Reply(421, "timeout", "4.4.2"))
    assert engine.conn.data_to_send() == b"421 4.4.2 timeout\r\n"
    assert engine.conn.closed
    closed = engine.conn.next_event()
    assert isinstance(closed, ConnectionClosed) and closed.reason == "CLOSING"
