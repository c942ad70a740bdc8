"""Scripted failures: each step fails as told, and smtplib raises the exception an
application would have to handle, carrying the scripted code and text."""

from __future__ import annotations

import smtplib
from collections.abc import Callable

import pytest

from trio_smtpd.testserver import ThreadedSMTPTestServer

SENDER, RECIPIENT = "alice@example.org", "bob@example.org"
BODY = b"Subject: hi\r\n\r\nhello\r\n"


def connect(server: ThreadedSMTPTestServer) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, timeout=10)


def send(server: ThreadedSMTPTestServer) -> None:
    with connect(server) as client:
        client.sendmail(SENDER, [RECIPIENT], BODY)


def smtp_code(error: smtplib.SMTPException) -> tuple[int, bytes]:
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return error.recipients[RECIPIENT]
    assert isinstance(error, smtplib.SMTPResponseException)
    return error.smtp_code, error.smtp_error


STEPS = [
    ("CONNECT", 421, "4.3.2 come back later", smtplib.SMTPConnectError),
    ("CONNECT", 554, "5.7.1 go away", smtplib.SMTPConnectError),
    ("MAIL", 451, "4.3.0 local problem", smtplib.SMTPSenderRefused),
    ("MAIL", 553, "5.1.8 bad sender domain", smtplib.SMTPSenderRefused),
    ("RCPT", 450, "4.2.1 mailbox busy", smtplib.SMTPRecipientsRefused),
    ("RCPT", 550, "5.1.1 no such user", smtplib.SMTPRecipientsRefused),
    ("DATA", 451, "4.3.0 not now", smtplib.SMTPDataError),
    ("DATA", 554, "5.7.1 no data for you", smtplib.SMTPDataError),
    ("MESSAGE", 452, "4.3.1 disk full", smtplib.SMTPDataError),
    ("MESSAGE", 552, "5.3.4 message too big", smtplib.SMTPDataError),
]


@pytest.mark.parametrize(("step", "code", "text", "error"), STEPS,
                         ids=[f"{s[0]}-{s[1]}" for s in STEPS])
def test_scripted_failure_reaches_smtplib_as_its_exception(
        smtp_server_thread: ThreadedSMTPTestServer, step: str, code: int, text: str,
        error: type[smtplib.SMTPException]) -> None:
    check_failure_then_retry(smtp_server_thread, step, code, text, error, send)


def login_and_send(server: ThreadedSMTPTestServer) -> None:
    with connect(server) as client:
        client.login("alice", "secret")
        client.sendmail(SENDER, [RECIPIENT], BODY)


@pytest.mark.smtp_server(users={"alice": "secret"})
@pytest.mark.parametrize("code", [535, 454])
def test_scripted_auth_failure(smtp_server_thread: ThreadedSMTPTestServer, code: int) -> None:
    server = smtp_server_thread
    text = f"{code // 100}.7.0 scripted"
    # smtplib's login() tries each mechanism offered (PLAIN, then LOGIN) before it gives
    # up, so that a single refusal never reaches the application: fail them all.
    server.fail_always("AUTH", code, text)
    with pytest.raises(smtplib.SMTPAuthenticationError) as raised:
        login_and_send(server)
    assert (raised.value.smtp_code, raised.value.smtp_error) == (code, text.encode())
    server.clear_failures()
    login_and_send(server)
    assert server.messages[0].authenticated_as == "alice"


@pytest.mark.smtp_server(users={"alice": "secret"})
def test_one_auth_failure_is_retried_by_smtplib(
        smtp_server_thread: ThreadedSMTPTestServer) -> None:
    smtp_server_thread.fail_next("AUTH", 535, "5.7.8 once")
    login_and_send(smtp_server_thread)  # PLAIN refused, LOGIN accepted
    assert smtp_server_thread.messages[0].authenticated_as == "alice"


def check_failure_then_retry(server: ThreadedSMTPTestServer, step: str, code: int, text: str,
                             error: type[smtplib.SMTPException],
                             action: Callable[[ThreadedSMTPTestServer], None]) -> None:
    server.fail_next(step, code, text)
    with pytest.raises(error) as raised:
        action(server)
    assert type(raised.value) is error
    assert smtp_code(raised.value) == (code, text.encode())
    assert server.messages == []
    action(server)  # a scripted failure happens once: the retry gets through
    assert [m.recipients for m in server.messages] == [[RECIPIENT]]


def test_a_refused_ehlo_and_helo_is_a_helo_error(
        smtp_server_thread: ThreadedSMTPTestServer) -> None:
    # smtplib tries HELO after a refused EHLO: both have to fail.
    smtp_server_thread.fail_next("EHLO", 550, "5.7.1 not you", times=2)
    with pytest.raises(smtplib.SMTPHeloError) as raised:
        send(smtp_server_thread)
    assert (raised.value.smtp_code, raised.value.smtp_error) == (550, b"5.7.1 not you")
    send(smtp_server_thread)
    assert len(smtp_server_thread.messages) == 1


def test_per_address_rules_apply_every_time_until_cleared(
        smtp_server_thread: ThreadedSMTPTestServer) -> None:
    server = smtp_server_thread
    server.fail_always("RCPT", 550, "5.1.1 no such user", address="<Nobody@Example.org>")
    server.fail_always("RCPT", 450, "4.2.1 busy", address="@busy.example")
    with connect(server) as client:
        for _ in range(2):
            refused = client.sendmail(SENDER, ["nobody@example.org", RECIPIENT,
                                               "x@busy.example", "x@sub.busy.example"], BODY)
            assert refused == {"nobody@example.org": (550, b"5.1.1 no such user"),
                               "x@busy.example": (450, b"4.2.1 busy")}  # not a subdomain
        server.clear_failures()
        assert client.sendmail(SENDER, ["nobody@example.org"], BODY) == {}
    delivered = [RECIPIENT, "x@sub.busy.example"]
    assert [m.recipients for m in server.messages] == [delivered, delivered,
                                                       ["nobody@example.org"]]


def test_a_sender_rule_and_the_null_sender(smtp_server_thread: ThreadedSMTPTestServer) -> None:
    server = smtp_server_thread
    server.fail_next("MAIL", 550, "5.7.1 no bounces", address="<>")
    with connect(server) as client:
        client.sendmail(SENDER, [RECIPIENT], BODY)  # not the null sender: accepted
        with pytest.raises(smtplib.SMTPSenderRefused) as raised:
            client.sendmail("<>", [RECIPIENT], BODY)
        assert raised.value.smtp_code == 550
        client.sendmail("<>", [RECIPIENT], BODY)  # used up
    assert [m.sender for m in server.messages] == [SENDER, ""]


def test_times_and_rule_order(smtp_server_thread: ThreadedSMTPTestServer) -> None:
    server = smtp_server_thread
    server.fail_next("RCPT", 451, "4.3.0 first", times=2)
    server.fail_next("RCPT", 452, "4.5.3 second")
    replies = []
    with connect(server) as client:
        for _ in range(4):
            client.ehlo_or_helo_if_needed()
            client.mail(SENDER)
            replies.append(client.rcpt(RECIPIENT))
            client.rset()
    assert replies == [(451, b"4.3.0 first"), (451, b"4.3.0 first"),
                       (452, b"4.5.3 second"), (250, b"2.1.5 Recipient OK")]


def test_a_message_rule_for_one_recipient_fails_the_whole_smtp_message(
        smtp_server_thread: ThreadedSMTPTestServer) -> None:
    smtp_server_thread.fail_next("MESSAGE", 550, "5.7.1 not for carol",
                                 address="carol@example.org")
    with connect(smtp_server_thread) as client, pytest.raises(smtplib.SMTPDataError):
        client.sendmail(SENDER, [RECIPIENT, "carol@example.org"], BODY)
    assert smtp_server_thread.messages == []


def test_enhanced_code_and_text_forms(smtp_server_thread: ThreadedSMTPTestServer) -> None:
    server = smtp_server_thread
    server.fail_next("RCPT", 450, "mailbox busy", "4.2.1")
    server.fail_next("RCPT", 550, ["no such user", "see https://example.org/help"], "5.1.1")
    server.fail_next("RCPT", 451)
    with connect(server) as client:
        client.ehlo()
        client.mail(SENDER)
        assert client.rcpt(RECIPIENT) == (450, b"4.2.1 mailbox busy")
        assert client.rcpt(RECIPIENT) == (550, b"5.1.1 no such user\n"
                                               b"5.1.1 see https://example.org/help")
        code, text = client.rcpt(RECIPIENT)
    assert code == 451 and b"Scripted failure" in text


@pytest.mark.parametrize(("args", "kwargs", "complaint"), [
    (("VRFY", 550), {}, "cannot script a failure for 'VRFY'"),
    (("RCPT", 250), {}, "4xx or 5xx code"),
    (("RCPT", "550"), {}, "4xx or 5xx code"),
    (("CONNECT", 550), {}, "CONNECT fails with 421 or 554"),
    (("DATA", 550), {"address": "a@b.c"}, "an address narrows down"),
    (("RCPT", 550), {"times": 0}, "times must be at least 1"),
    (("RCPT", 450, "5.1.1 wrong class"), {}, "does not match class"),
    (("RCPT", 550, "two\r\nlines"), {}, "control character"),
])
def test_bad_rules_are_refused_at_once(smtp_server_thread: ThreadedSMTPTestServer,
                                       args: tuple[object, ...], kwargs: dict[str, object],
                                       complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        smtp_server_thread.fail_next(*args, **kwargs)  # type: ignore[arg-type]
    send(smtp_server_thread)  # nothing was scripted
    assert len(smtp_server_thread.messages) == 1


@pytest.mark.smtp_server(lmtp=True)
def test_lmtp_message_rule_without_address_fails_every_recipient(
        smtp_server_thread: ThreadedSMTPTestServer) -> None:
    smtp_server_thread.fail_next("MESSAGE", 451, "4.3.0 not now")
    with smtplib.LMTP(smtp_server_thread.host, smtp_server_thread.port) as client:
        client.ehlo()
        client.mail(SENDER)
        client.rcpt(RECIPIENT)
        assert client.data(BODY) == (451, b"4.3.0 not now")
    assert smtp_server_thread.messages == []
