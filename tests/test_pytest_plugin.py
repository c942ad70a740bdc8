"""The smtp_server_thread and smtp_server fixtures, used as an application's tests use them.

Every option (LMTP, STARTTLS, implicit TLS, AUTH users, maximum size) and every kind of
scripted failure is exercised with a real client (smtplib, or the library's scripted
client for what smtplib cannot do, such as several LMTP replies).
"""

from __future__ import annotations

import logging
import smtplib
import ssl
import threading
from email.message import EmailMessage

import pytest
import trio

from trio_smtpd.testing import TestClient
from trio_smtpd.testserver import SMTPTestServer, ThreadedSMTPTestServer

MESSAGE = (b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\n"
           b"Subject: =?utf-8?q?Caf=C3=A9?=\r\n\r\nHello Bob\r\n")


def connect(server: ThreadedSMTPTestServer | SMTPTestServer) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, timeout=10)


# ------------------------------------------------------------------ what is recorded


def test_a_message_is_recorded_before_the_client_hears_250(
        smtp_server_thread: ThreadedSMTPTestServer) -> None:
    with connect(smtp_server_thread) as client:
        client.sendmail("alice@example.org", ["bob@example.org", "carol@example.org"], MESSAGE)
        # No wait_for: the message was recorded before the 250 that ended sendmail().
        [message] = smtp_server_thread.messages
    assert message.sender == "alice@example.org"
    assert message.recipients == ["bob@example.org", "carol@example.org"]
    assert message.data == MESSAGE
    assert isinstance(message.message, EmailMessage)
    assert message.message["Subject"] == "Café"
    assert message.message.get_content() == "Hello Bob\n"
    assert message.helo is not None and message.tls is None
    assert message.authenticated_as is None


def test_null_sender_and_clear(smtp_server_thread: ThreadedSMTPTestServer) -> None:
    with connect(smtp_server_thread) as client:
        client.sendmail("<>", ["bob@example.org"], b"Subject: bounce\r\n\r\nx\r\n")
        assert smtp_server_thread.messages[0].sender == ""
        smtp_server_thread.clear()
        assert smtp_server_thread.messages == []
        client.sendmail("a@example.org", ["bob@example.org"], b"Subject: again\r\n\r\nx\r\n")
    assert [m.message["Subject"] for m in smtp_server_thread.messages] == ["again"]


def test_thread_wait_for_a_sender_in_the_background(
        smtp_server_thread: ThreadedSMTPTestServer) -> None:
    def send() -> None:
        with connect(smtp_server_thread) as client:
            for n in range(3):
                client.sendmail("a@example.org", ["b@example.org"], f"Subject: {n}\r\n\r\n")

    sender = threading.Thread(target=send)
    sender.start()
    try:
        messages = smtp_server_thread.wait_for(3)
    finally:
        sender.join()
    assert [m.message["Subject"] for m in messages] == ["0", "1", "2"]


def test_thread_wait_for_says_how_many_came(smtp_server_thread: ThreadedSMTPTestServer) -> None:
    with connect(smtp_server_thread) as client:
        client.sendmail("a@example.org", ["b@example.org"], b"x\r\n")
    with pytest.raises(TimeoutError, match=r"1 message.* waited for 2"):
        smtp_server_thread.wait_for(2, timeout=0.2)


async def test_trio_wait_for_a_sender_in_the_background(smtp_server: SMTPTestServer) -> None:
    async def send(n: int) -> None:
        stream = await trio.open_tcp_stream(smtp_server.host, smtp_server.port)
        client = TestClient(stream)
        await client.reply()
        replies = await client.send_message("a@example.org", ["b@example.org"],
                                            f"Subject: {n}\r\n\r\nbody\r\n".encode())
        assert replies[-1].code == 250
        await client.aclose()

    async with trio.open_nursery() as nursery:
        for n in range(3):
            nursery.start_soon(send, n)
        messages = await smtp_server.wait_for(3)
    assert sorted(m.message["Subject"] for m in messages) == ["0", "1", "2"]


async def test_trio_wait_for_says_how_many_came(smtp_server: SMTPTestServer) -> None:
    with pytest.raises(TimeoutError, match=r"0 message.* waited for 1"):
        await smtp_server.wait_for(1, timeout=0.1)


# ------------------------------------------------------------------ options


@pytest.mark.smtp_server(lmtp=True)
def test_lmtp_marker(smtp_server_thread: ThreadedSMTPTestServer) -> None:
    with smtplib.LMTP(smtp_server_thread.host, smtp_server_thread.port) as client:
        code, _ = client.ehlo()  # smtplib.LMTP sends LHLO
        assert code == 250
        client.sendmail("a@example.org", ["b@example.org"], b"Subject: lmtp\r\n\r\nx\r\n")
    assert smtp_server_thread.messages[0].recipients == ["b@example.org"]


@pytest.mark.smtp_server(lmtp=True)
async def test_lmtp_per_recipient_failures(smtp_server: SMTPTestServer) -> None:
    smtp_server.fail_next("MESSAGE", 552, "5.2.2 mailbox full", address="full@example.org")
    client = TestClient(await trio.open_tcp_stream(smtp_server.host, smtp_server.port))
    await client.reply()
    replies = await client.send_message("a@example.org", ["ok@example.org", "full@example.org"],
                                        b"Subject: lmtp\r\n\r\nx\r\n", hello="LHLO c.test")
    replies.append(await client.reply())  # LMTP: one reply per recipient after the data
    await client.aclose()
    assert [r.code for r in replies[-2:]] == [250, 552]
    assert replies[-1].lines == ["5.2.2 mailbox full"]
    [message] = smtp_server.messages
    assert message.recipients == ["ok@example.org"]


@pytest.mark.smtp_server(tls="starttls")
def test_starttls(smtp_server_thread: ThreadedSMTPTestServer) -> None:
    assert smtp_server_thread.ca_file is not None
    assert smtp_server_thread.ca_file.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    with connect(smtp_server_thread) as client:
        client.starttls(context=ssl.create_default_context(
            cafile=str(smtp_server_thread.ca_file)))
        client.sendmail("a@example.org", ["b@example.org"], b"Subject: tls\r\n\r\nx\r\n")
    tls = smtp_server_thread.messages[0].tls
    assert tls is not None and tls.version is not None and tls.version.startswith("TLS")


@pytest.mark.smtp_server(tls="implicit")
def test_implicit_tls(smtp_server_thread: ThreadedSMTPTestServer) -> None:
    context = smtp_server_thread.client_context()
    with smtplib.SMTP_SSL(smtp_server_thread.host, smtp_server_thread.port,
                          context=context, timeout=10) as client:
        client.sendmail("a@example.org", ["b@example.org"], b"Subject: tls\r\n\r\nx\r\n")
    assert smtp_server_thread.messages[0].tls is not None


@pytest.mark.smtp_server(tls="implicit")
def test_implicit_tls_refuses_a_client_that_does_not_trust_the_ca(
        smtp_server_thread: ThreadedSMTPTestServer) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        smtplib.SMTP_SSL(smtp_server_thread.host, smtp_server_thread.port,
                         context=ssl.create_default_context(), timeout=10)


def test_a_failed_starttls_handshake_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    """A client that does not trust the test CA is a normal thing to test: the server
    ends that connection without an error of its own, and goes on serving."""
    with ThreadedSMTPTestServer(tls="starttls") as server:
        with connect(server) as client, pytest.raises(ssl.SSLCertVerificationError):
            client.starttls(context=ssl.create_default_context())
        with connect(server) as client:
            client.starttls(context=server.client_context())
            client.sendmail("a@example.org", ["b@example.org"], b"x\r\n")
    # (After close(): every session, the failed one too, has ended.)
    assert len(server.messages) == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.smtp_server(users={"alice": "secret"})
def test_auth_users(smtp_server_thread: ThreadedSMTPTestServer) -> None:
    with connect(smtp_server_thread) as client:
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            client.sendmail("a@example.org", ["b@example.org"], b"x\r\n")  # no login
        assert refused.value.smtp_code == 530
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("alice", "wrong")
        client.login("alice", "secret")
        client.sendmail("a@example.org", ["b@example.org"], b"Subject: auth\r\n\r\nx\r\n")
    assert smtp_server_thread.messages[0].authenticated_as == "alice"


@pytest.mark.smtp_server(tls="starttls", users={"alice": "secret"})
def test_auth_with_tls_is_offered_only_after_starttls(
        smtp_server_thread: ThreadedSMTPTestServer) -> None:
    with connect(smtp_server_thread) as client:
        client.ehlo()
        assert not client.has_extn("auth")
        client.starttls(context=smtp_server_thread.client_context())
        client.ehlo()
        assert client.has_extn("auth")
        client.login("alice", "secret")
        client.sendmail("a@example.org", ["b@example.org"], b"x\r\n")
    message = smtp_server_thread.messages[0]
    assert message.authenticated_as == "alice" and message.tls is not None


@pytest.mark.smtp_server(max_size=1000)
def test_max_size(smtp_server_thread: ThreadedSMTPTestServer) -> None:
    big = b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * 25
    with connect(smtp_server_thread) as client:
        client.ehlo()
        assert client.esmtp_features["size"] == "1000"
        with pytest.raises(smtplib.SMTPSenderRefused) as declared:  # SIZE=... in MAIL
            client.sendmail("a@example.org", ["b@example.org"], big)
        assert declared.value.smtp_code == 552
        client.rset()
        client.mail("a@example.org")  # no SIZE: refused once the data is too long
        client.rcpt("b@example.org")
        code, _ = client.data(big)
        assert code == 552
        client.sendmail("a@example.org", ["b@example.org"], b"Subject: small\r\n\r\nx\r\n")
    assert [m.message["Subject"] for m in smtp_server_thread.messages] == ["small"]


@pytest.mark.smtp_server(lmtp=True, hostname="mx.example.test")
@pytest.mark.parametrize("smtp_server_thread", [{"lmtp": False}], indirect=True)
def test_parameters_win_over_the_marker(smtp_server_thread: ThreadedSMTPTestServer) -> None:
    assert smtp_server_thread.options.lmtp is False
    assert smtp_server_thread.options.hostname == "mx.example.test"
    with connect(smtp_server_thread) as client:
        assert client.ehlo()[1].startswith(b"mx.example.test")


@pytest.mark.smtp_server(users={"u": "p"})
class TestMarkersMerge:
    @pytest.mark.smtp_server(max_size=5000)
    def test_class_and_function_markers_merge(
            self, smtp_server_thread: ThreadedSMTPTestServer) -> None:
        assert smtp_server_thread.options.users == {"u": "p"}
        assert smtp_server_thread.options.max_size == 5000


@pytest.mark.parametrize("smtp_server", [{"tls": "starttls"}], indirect=True)
async def test_trio_fixture_takes_parameters(smtp_server: SMTPTestServer) -> None:
    client = TestClient(await trio.open_tcp_stream(smtp_server.host, smtp_server.port))
    await client.reply()
    ehlo = await client.command("EHLO c.test")
    await client.aclose()
    assert "STARTTLS" in ehlo.lines
    assert smtp_server.ca_file is not None and smtp_server.ca_file.exists()


@pytest.mark.smtp_server(host="127.0.0.2")
def test_host(smtp_server_thread: ThreadedSMTPTestServer) -> None:
    assert smtp_server_thread.host == "127.0.0.2"
    with smtplib.SMTP("127.0.0.2", smtp_server_thread.port, timeout=10) as client:
        client.sendmail("a@example.org", ["b@example.org"], b"x\r\n")
    with pytest.raises(ConnectionRefusedError):  # only there
        smtplib.SMTP("127.0.0.1", smtp_server_thread.port, timeout=10)
    assert len(smtp_server_thread.messages) == 1


@pytest.mark.parametrize(("options", "complaint"), [
    ({"tls": "ssl"}, "tls must be None, 'starttls' or 'implicit'"),
    ({"max_size": 0}, "max_size must be positive"),
    ({"host": "localhost"}, "host must be an IP address"),
    ({"lmpt": True}, "unexpected keyword argument 'lmpt'"),
    ({"lmtp": "no"}, "lmtp must be True or False, not 'no'"),
    ({"users": ["alice"]}, "users must be a mapping of names to passwords"),
    ({"users": {"alice": 1}}, "users: the password of 'alice' must be a string, not 1"),
    ({"users": {1: "secret"}}, "users: a name must be a string, not 1"),
    ({"max_size": "10"}, "max_size must be an int or None, not '10'"),
    ({"max_size": True}, "max_size must be an int or None, not True"),
    ({"hostname": ""}, "hostname must be a domain name or an address literal"),
    ({"hostname": "bad\r\n250 injected"}, "hostname must be a domain name"),
    ({"host": 1}, "host must be an IP address"),
])
def test_bad_options(options: dict[str, object], complaint: str) -> None:
    with pytest.raises((ValueError, TypeError), match=complaint):
        ThreadedSMTPTestServer(**options)
