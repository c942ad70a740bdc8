"""Watching a session (issue 14): the engine's observer, transcripts, the greeting,
per-connection settings at Connect, and the strictness a sinkhole may relax."""

from __future__ import annotations

import base64
import dataclasses
import re

import pytest
import trio

import trio_smtpd
from tests.engine import Engine, ready
from tests.tcp import connect, tcp_server
from trio_smtpd import Config, Connect, Message, Reply, Session, Transcript, UsageError
from trio_smtpd.core import AuthResponse, AuthStart, ProtocolConfig, Request, ServerConnection

pytestmark = pytest.mark.usefixtures("both_transports")


class Recorder:
    def __init__(self, wants_data: bool = False) -> None:
        self.wants_data = wants_data
        self.lines: list[str] = []
        self.replies: list[bytes] = []
        self.refusals: list[tuple[str, int]] = []
        self.chunks: list[bytes] = []

    def received(self, line: str) -> None:
        self.lines.append(line)

    def data(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    def sent(self, reply: bytes) -> None:
        self.replies.append(reply)

    def refused(self, command: str, reply: Reply) -> None:
        self.refusals.append((command, reply.code))


def challenge_then_fail(conn: ServerConnection, decision: Request) -> None:
    if isinstance(decision, AuthStart):
        conn.auth_challenge(b"")
    elif isinstance(decision, AuthResponse):
        conn.auth_failure()
    else:
        conn.respond()


def test_the_engine_tells_its_observer_everything_with_secrets_redacted() -> None:
    recorder = Recorder()
    engine = Engine(ProtocolConfig(auth_mechanisms=("PLAIN",), auth_requires_tls=False,
                                   max_message_size=100), decide=challenge_then_fail)
    engine.conn.observer = recorder
    engine.start()
    secret = base64.b64encode(b"\0alice\0hunter2").decode()
    engine.codes(b"EHLO c\r\nAUTH PLAIN\r\n")
    engine.codes(secret.encode() + b"\r\n")
    engine.codes(b"FOO\r\nMAIL FROM:<a@b.c> SIZE=999\r\nMAIL FROM:<a@b.c>\r\n"
                 b"RCPT TO:<d@e.f>\r\nDATA\r\n" + b"x" * 120 + b"\r\n.\r\n")
    assert recorder.lines[:3] == ["EHLO c", "AUTH PLAIN", "[AUTH response: redacted]"]
    assert "hunter2" not in repr(recorder.__dict__) and secret not in repr(recorder.__dict__)
    assert recorder.lines[-1] == "[message data: 122 octets]"
    # Refusals of the engine, with the command they answer; the AUTH failure counts too.
    assert recorder.refusals == [("AUTH", 535), ("FOO", 500), ("MAIL", 552), ("DATA", 552)]
    assert b"".join(recorder.replies).startswith(b"220 localhost ESMTP")


def test_an_initial_response_is_redacted_and_data_is_given_when_asked_for() -> None:
    recorder = Recorder(wants_data=True)
    engine = Engine(ProtocolConfig(auth_mechanisms=("PLAIN",), auth_requires_tls=False))
    engine.conn.observer = recorder
    engine.start()
    engine.codes(b"EHLO c\r\nAUTH PLAIN AGFsaWNlAGh1bnRlcjI=\r\nAGFsaWNlAGh1bnRlcjI=\r\n")
    engine.codes(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nhello\r\n..dot\r\n.\r\n")
    assert recorder.lines[1:3] == ["AUTH PLAIN [redacted]", "[line after AUTH: redacted]"]
    assert b"".join(recorder.chunks) == b"hello\r\n.dot\r\n"


async def test_a_transcript_of_a_real_session_with_its_refusals_from_the_application(
        ) -> None:
    lines: list[str] = []
    recorder = Recorder()

    async def handler(session: Session) -> None:
        async for decision in session:
            if isinstance(decision, Connect):
                session.observer = Transcript(lines.append, session.info.id)
            if isinstance(decision, trio_smtpd.Rcpt) and decision.address.local_part == "no":
                decision.reject(550, "No such user", "5.1.1")
            elif isinstance(decision, Message):
                session.observer = recorder  # (observers can change mid-session)
                decision.tempfail(451, "Try later", "4.3.0")
            else:
                decision.accept()

    async with tcp_server(handler=handler) as server:
        client = await connect(server)
        await client.send_message("a@b.c", ["no@x.y", "ok@x.y"], b"Subject: \xe2\x80\xa8hi\r\n")
        await client.aclose()
    text = "\n".join(lines)
    assert re.search(r"\+00:00 \S+ > 220 mx.test ESMTP trio_smtpd ready$", lines[0])
    assert " < RCPT TO:<no@x.y>" in text and " > 550 5.1.1 No such user" in text
    assert " < [message data: " in text
    assert recorder.refusals == [("DATA", 451)]


def test_transcripts_escape_what_could_split_or_disguise_a_line() -> None:
    lines: list[str] = []
    transcript = Transcript(lines.append, "1")
    transcript.received("EHLO a\u2028b\u202ec\x1b[31m")
    transcript.data(b"x\xffy\r\n")
    assert lines[0].endswith(" 1 < EHLO a\\u2028b\\u202ec\\x1b[31m")
    assert lines[1:] == []  # bodies only when asked
    Transcript(lines.append, "1", bodies=True).data(b"x\xffy\r\n")
    assert lines[1].endswith(" 1 <| x\\xffy")
    # Replies echo the client's text (a HELO name, an address): escaped as well.
    transcript.sent("250 mx greets a\u202eb\x1bc\r\n".encode())
    assert lines[2].endswith(" 1 > 250 mx greets a\\u202eb\\x1bc")


def test_a_refused_message_is_told_at_the_size_the_client_sent() -> None:
    recorder = Recorder()
    engine = ready(ProtocolConfig(max_message_size=100))
    engine.conn.observer = recorder
    engine.codes(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n" + b"x" * 120 + b"\r\n")
    assert engine.codes(b"y" * 500 + b"\r\n.\r\n") == [552]
    assert recorder.lines[-1] == "[message data: 624 octets]"  # not 122: all of it


def test_plaintext_discarded_after_starttls_is_told() -> None:
    # CVE-2011-0411 class: commands pipelined behind STARTTLS are dropped; an operator
    # wants to know someone tried.
    recorder = Recorder()
    engine = ready(ProtocolConfig(tls_available=True))
    engine.conn.observer = recorder
    engine.codes(b"STARTTLS\r\nMAIL FROM:<evil@x.y>\r\n")
    assert recorder.lines[-2:] == ["STARTTLS", "[22 octets after STARTTLS discarded]"]
    engine.conn.tls_established()
    engine.codes(b"EHLO c\r\nSTARTTLS\r\n")  # (refused: TLS is on) nothing to tell
    assert not any("discarded" in line for line in recorder.lines[-2:])


def test_greeting_text_lines_and_time() -> None:
    engine = Engine(ProtocolConfig(hostname="mx", greeting=("Hello", "No UCE")))
    engine.conn.next_event()
    engine.conn.respond()
    assert engine.conn.data_to_send() == b"220-mx ESMTP Hello\r\n220 No UCE\r\n"
    engine = Engine(ProtocolConfig(hostname="mx", greeting_time=True))
    engine.conn.next_event()
    engine.conn.respond()
    assert re.fullmatch(rb"220 mx ESMTP trio_smtpd ready \w{3}, \d\d \w{3} \d{4} [\d:]{8} "
                        rb"[+-]\d{4}\r\n", engine.conn.data_to_send())
    with pytest.raises(ValueError):
        ProtocolConfig(greeting=("two\r\nlines",))


def test_8bit_helo_and_parameters_after_helo_are_a_choice() -> None:
    strict = Engine(ProtocolConfig())
    strict.start()
    assert strict.codes(b"HELO caf\xe9\r\nHELO c\r\nMAIL FROM:<a@b.c> BODY=8BITMIME\r\n"
                        ) == [500, 250, 555]
    lenient = Engine(ProtocolConfig(accept_8bit_helo=True, accept_params_after_helo=True))
    lenient.start()
    assert lenient.codes(b"HELO caf\xe9\r\nMAIL FROM:<a@b.c> BODY=8BITMIME\r\n"
                         b"RCPT TO:<d@e.f>\r\nFOO \xe9\r\n") == [250, 250, 250, 500]
    assert lenient.conn.hello_name == "caf\\xe9"


async def test_a_handler_changes_its_connections_settings_at_connect(
        server_tls: object) -> None:
    async def handler(session: Session) -> None:
        async for decision in session:
            if isinstance(decision, Connect) and session.info.peer is not None:
                session.config = dataclasses.replace(
                    session.config, tls=None, max_message_size=1000,
                    protocol=ProtocolConfig(greeting=("Welcome, special client",)))
            decision.accept()
            if not isinstance(decision, Connect):
                with pytest.raises(UsageError):
                    session.config = session.config

    config = Config(hostname="mx.test", tls=server_tls)  # type: ignore[arg-type]
    async with tcp_server(config, handler) as server:
        assert server.port is not None
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        client = trio_smtpd.testing.TestClient(stream)
        greeting = await client.reply()
        assert greeting.lines == ["mx.test ESMTP Welcome, special client"]
        ehlo = await client.command("EHLO c")
        assert "SIZE 1000" in ehlo.lines and "STARTTLS" not in ehlo.lines
        assert (await client.command("MAIL FROM:<a@b.c> SIZE=1001")).code == 552
        await client.aclose()


async def test_a_handler_changes_its_connections_auth_at_connect() -> None:
    async def everyone(credentials: trio_smtpd.Credentials) -> str | None:
        return "everyone"

    async def only_bob(credentials: trio_smtpd.Credentials) -> str | None:
        ok = isinstance(credentials, trio_smtpd.PlainCredentials) and (
            credentials.username, credentials.password) == ("bob", "pw")
        return "bob" if ok else None

    async def handler(session: Session) -> None:
        async for decision in session:
            if isinstance(decision, Connect):
                session.config = dataclasses.replace(
                    session.config, auth_mechanisms=("LOGIN",), authenticator=only_bob)
            decision.accept()

    config = Config(hostname="mx.test", authenticator=everyone, auth_requires_tls=False,
                    auth_mechanisms=("PLAIN", "LOGIN"))
    async with tcp_server(config, handler) as server:
        assert server.port is not None
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        client = trio_smtpd.testing.TestClient(stream)
        await client.reply()
        assert "AUTH LOGIN" in (await client.command("EHLO c")).lines
        plain = base64.b64encode(b"\0alice\0x").decode()
        assert (await client.command(f"AUTH PLAIN {plain}")).code == 504
        assert (await client.command("AUTH LOGIN")).code == 334
        assert (await client.command(base64.b64encode(b"alice").decode())).code == 334
        assert (await client.command(base64.b64encode(b"x").decode())).code == 535
        assert (await client.command("AUTH LOGIN")).code == 334
        assert (await client.command(base64.b64encode(b"bob").decode())).code == 334
        assert (await client.command(base64.b64encode(b"pw").decode())).code == 235
        await client.aclose()
