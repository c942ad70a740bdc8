"""The trio server: serving, both iterator styles, defaults, failures."""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

import trio_smtpd
from tests.operations import free_port
from tests.tcp import connect, tcp_server
from trio_smtpd import Config, Message, Rcpt, Session, serve
from trio_smtpd.testing import open_client

# The whole file runs on both transports (see conftest.py).
pytestmark = pytest.mark.usefixtures("both_transports")

MESSAGE = b"Subject: test\r\n\r\nHello\r\n..dot\r\n"


async def test_transactions_iterator_over_tcp_with_smtplib() -> None:
    received: list[trio_smtpd.Transaction] = []
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve, Config(hostname="mx.test"), 0,
                                             host="127.0.0.1"))
        port = server.port
        assert port

        async def consume() -> None:
            async for tx in server.transactions():
                received.append(tx)
                tx.accept(text="stored")

        nursery.start_soon(consume)

        def send() -> dict[str, tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                return client.sendmail("a@example.org", ["b@example.net", "c@example.net"],
                                       MESSAGE)

        assert await trio.to_thread.run_sync(send) == {}
        server.shutdown()
    [tx] = received
    assert str(tx.sender) == "a@example.org"
    assert [str(r.address) for r in tx.recipients] == ["b@example.net", "c@example.net"]
    assert tx.data == MESSAGE  # smtplib stuffed the dots; the server unstuffed them
    assert tx.info.peer is not None and tx.info.peer[0] == "127.0.0.1"
    assert tx.info.helo is not None
    assert not tx.info.lmtp


async def test_handler_decides_each_step() -> None:
    async def handler(session: Session) -> None:
        async for event in session:
            match event:
                case Rcpt(address=address) if address.local_part == "nobody":
                    event.reject(550, "No such user", "5.1.1")
                case Message(transaction=tx):
                    assert tx.data == b"hi\r\n"
                    event.accept(text="queued as 42")
                case _:
                    event.accept()

    async with open_client(handler=handler) as client:
        assert client.greeting is not None and client.greeting.code == 220
        assert (await client.command("EHLO c")).code == 250
        assert (await client.command("MAIL FROM:<a@b.c>")).code == 250
        reply = await client.command("RCPT TO:<nobody@mx.test>")
        assert (reply.code, reply.lines) == (550, ["5.1.1 No such user"])
        assert (await client.command("RCPT TO:<x@mx.test>")).code == 250
        assert (await client.command("DATA")).code == 354
        await client.send(b"hi\r\n.\r\n")
        reply = await client.reply()
        assert (reply.code, reply.lines) == (250, ["2.0.0 queued as 42"])


async def test_undecided_message_is_tempfailed_not_accepted() -> None:
    async def handler(session: Session) -> None:
        async for event in session:
            if not isinstance(event, Message):
                event.accept()

    async with open_client(handler=handler) as client:
        replies = await client.send_message("a@b.c", ["d@e.f"], b"x\r\n")
        assert [r.code for r in replies] == [250, 250, 250, 354, 451]


async def test_handler_that_raises_gets_451_and_server_survives() -> None:
    async def handler(session: Session) -> None:
        async for event in session:
            if isinstance(event, Rcpt):
                raise RuntimeError("application bug")
            event.accept()

    async with open_client(handler=handler) as client:
        assert (await client.command("EHLO c")).code == 250
        assert (await client.command("MAIL FROM:<a@b.c>")).code == 250
        reply = await client.command("RCPT TO:<d@e.f>")
        assert (reply.code, reply.lines[0][:5]) == (451, "4.3.0")
        # The session goes on without the handler, and nothing is accepted any more.
        assert (await client.command("RCPT TO:<g@e.f>")).code == 451
        assert (await client.command("DATA")).code == 554  # no valid recipients
        assert (await client.command("RSET")).code == 250
        assert (await client.command("MAIL FROM:<a@b.c>")).code == 451
        server = client.server
        assert server is not None
        other = await _second_client(server)
        assert other.code == 220


async def _second_client(server: trio_smtpd.Server) -> trio_smtpd.testing.ClientReply:
    listener = server.listeners[0]
    assert isinstance(listener, trio_smtpd.testing.MemoryListener)
    client = trio_smtpd.testing.TestClient(await listener.connect())
    reply = await client.reply()
    await client.aclose()
    return reply


async def test_a_greeting_with_the_applications_text_still_names_the_server() -> None:
    # Found by review (2026-12-02): Connect.accept(text=...) went out as "220 <text>",
    # where RFC 5321 4.2 (and docs/server.md) want "220 <hostname> ESMTP <text>".
    async def handler(session: Session) -> None:
        async for event in session:
            if isinstance(event, trio_smtpd.Connect):
                event.accept(text=["Welcome", "no spam please"])
            else:
                event.accept()

    async with open_client(Config(hostname="mx.test"), handler=handler,
                           greeting=False) as client:
        greeting = await client.reply()
        assert (greeting.code, greeting.lines) == (220, ["mx.test ESMTP Welcome",
                                                         "no spam please"])


def _hello_with(text: object) -> Callable[[Session], Awaitable[None]]:
    async def handler(session: Session) -> None:
        async for event in session:
            if isinstance(event, trio_smtpd.Hello):
                event.accept(text=text)  # type: ignore[arg-type]
            else:
                event.accept()
    return handler


async def test_hello_text_follows_the_servers_name_and_keeps_the_keywords() -> None:
    # Found by review (2026-12-02): Hello.accept(text=...) was taken and then dropped.
    # RFC 5321 4.1.1.1: "250 <domain> <greeting>" for HELO, and the EHLO reply's first
    # line likewise, its other lines still the extension keywords.
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve, Config(hostname="mx.test"), 0,
                                             host="127.0.0.1",
                                             handler=_hello_with("pleased to meet you")))

        def talk() -> tuple[tuple[int, bytes], tuple[int, bytes], dict[str, str]]:
            with smtplib.SMTP("127.0.0.1", server.port, local_hostname="c.test") as smtp:
                ehlo = smtp.ehlo()
                features = dict(smtp.esmtp_features)
                smtp.rset()
                helo = smtp.helo()
            return ehlo, helo, features

        ehlo, helo, features = await trio.to_thread.run_sync(talk)
        nursery.cancel_scope.cancel()
    assert ehlo[0] == 250 and ehlo[1].split(b"\n")[0] == b"mx.test pleased to meet you"
    assert "pipelining" in features and "8bitmime" in features
    assert helo == (250, b"mx.test pleased to meet you")


@pytest.mark.parametrize("text", [["two", "lines"], "with\r\nbreak", "bell\x07"])
async def test_hello_text_that_would_break_the_reply_is_refused_at_accept(
        text: object) -> None:
    # The lines after the first are the extension keywords: a second line of text, or a
    # line break in it, would pass for one (or for a reply of its own).
    refused: list[BaseException] = []

    async def handler(session: Session) -> None:
        async for event in session:
            if isinstance(event, trio_smtpd.Hello):
                try:
                    event.accept(text=text)  # type: ignore[arg-type]
                except ValueError as exc:
                    refused.append(exc)
                    event.accept()
            else:
                event.accept()

    async with open_client(Config(hostname="mx.test"), handler=handler) as client:
        reply = await client.command("EHLO c.test")
    assert reply.code == 250 and reply.lines[0] == "mx.test greets c.test"
    assert len(refused) == 1


def test_hello_takes_no_enhanced_status_code() -> None:
    # RFC 2034 3: enhanced codes are not used in the reply to HELO or EHLO.
    with pytest.raises(ValueError, match="enhanced"):
        trio_smtpd.Hello("EHLO", "c.test").accept(enhanced="2.0.0")


async def test_connect_rejection() -> None:
    async def handler(session: Session) -> None:
        async for event in session:
            if isinstance(event, trio_smtpd.Connect):
                event.reject(554, "Go away", "5.7.1")
            else:
                event.accept()

    async with open_client(handler=handler, greeting=False) as client:
        greeting = await client.reply()
        assert (greeting.code, greeting.lines) == (554, ["5.7.1 Go away"])
        assert (await client.command("EHLO c")).code == 503
        assert (await client.command("QUIT")).code == 221


def test_config_rejects_unknown_mechanism() -> None:
    with pytest.raises(ValueError):
        Config(auth_mechanisms=("KERBEROS_V4",))
    with pytest.raises(ValueError):
        Config(max_recipients=0)


@pytest.mark.parametrize("hostname", ["", "mx.test\r\n250 injected", "mx test",
                                      "mx..test", "-mx.test", "[192.0.2.1", "x" * 256])
def test_config_rejects_a_hostname_no_greeting_could_carry(hostname: str) -> None:
    # Found by review (2026-12-02): any hostname was taken, and one with a line break
    # ended every connection at its greeting (a traceback, 421); "" greeted "220  ESMTP".
    with pytest.raises(ValueError, match="hostname"):
        Config(hostname=hostname)


@pytest.mark.parametrize("hostname", ["mx.test", "localhost", "mail-1.example.org.",
                                      "[192.0.2.1]", "[IPv6:2001:db8::1]", "_srv.test"])
def test_config_takes_a_domain_or_an_address_literal(hostname: str) -> None:
    assert Config(hostname=hostname).hostname == hostname


async def test_slow_handler_gets_the_default_after_the_decision_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    async def handler(session: Session) -> None:
        async for event in session:
            if isinstance(event, Rcpt):
                await trio.sleep_forever()  # never decides
            event.accept()

    async with open_client(handler=handler) as client:
        assert (await client.command("EHLO c")).code == 250
        assert (await client.command("MAIL FROM:<a@b.c>")).code == 250
        start = trio.current_time()
        # A recipient nobody could check is never accepted: 451 once Timeouts.decision
        # has passed...
        reply = await client.command("RCPT TO:<d@e.f>")
        assert (reply.code, reply.lines[0][:5]) == (451, "4.4.3")
        assert trio.current_time() - start >= Config().timeouts.decision
        # ...and with the handler gone, neither is any later step.
        assert (await client.command("RCPT TO:<g@e.f>")).code == 451
        assert (await client.command("DATA")).code == 554


async def test_ipv6_and_unix_socket_listeners(tmp_path: object) -> None:
    import pathlib
    import socket

    path = str(pathlib.Path(str(tmp_path)) / "smtp.sock")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(path)
    unix.listen()
    unix_listener = trio.SocketListener(trio.socket.from_stdlib_socket(unix))
    received: list[trio_smtpd.Transaction] = []
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve, Config(hostname="mx.test"), 0,
                                             host="::1", listeners=[unix_listener]))

        async def consume() -> None:
            async for tx in server.transactions():
                received.append(tx)
                tx.accept()

        nursery.start_soon(consume)
        port = server.port
        assert port

        def send_v6() -> None:
            with smtplib.SMTP("::1", port, timeout=10) as client:
                client.sendmail("a@example.org", ["b@example.net"], b"over IPv6\r\n")

        await trio.to_thread.run_sync(send_v6)
        stream = await trio.open_unix_socket(path)
        client = trio_smtpd.testing.TestClient(stream)
        assert (await client.reply()).code == 220
        replies = await client.send_message("a@example.org", ["c@example.net"],
                                            b"over a Unix socket\r\n")
        assert replies[-1].code == 250
        await client.aclose()
        server.shutdown()
    assert [tx.data for tx in received] == [b"over IPv6\r\n", b"over a Unix socket\r\n"]
    assert received[0].info.peer is not None and received[0].info.peer[0] == "::1"
    assert received[1].info.peer is None  # a Unix socket has no IP peer


async def test_a_closed_transactions_iterator_gets_451_at_once() -> None:
    # Nobody will ever answer: the client is told to retry, not kept waiting for the
    # message decision timeout, and nothing is logged as an internal error.
    async with open_client(Config(hostname="mx.test")) as client:
        assert client.server is not None
        iterator = client.server.transactions()
        await iterator.aclose()
        with trio.fail_after(5):
            replies = await client.send_message("a@b.c", ["d@e.f"], b"x\r\n")
        assert replies[-1].code == 451
        assert (await client.command("NOOP")).code == 250  # the session goes on


async def test_the_transport_is_the_one_under_test(both_transports: str) -> None:
    from trio_smtpd._socket_transport import SocketTransport
    from trio_smtpd._transport import StreamTransport

    async with tcp_server() as server:
        client = await connect(server)
        [session] = server._sessions
        expected = SocketTransport if both_transports == "direct" else StreamTransport
        assert type(session._exchange.transport) is expected
        await client.aclose()


@pytest.mark.parametrize("ending", [b"QUIT\r\n", b""], ids=["quit", "eof"])
async def test_a_session_the_engine_ended_is_not_read_from_again(
        caplog: pytest.LogCaptureFixture, ending: bytes) -> None:
    # After QUIT or the client's close, the socket is closed: reading it again would fail
    # (EBADF, or a closed stream) and be logged as a lost connection.
    caplog.set_level(logging.INFO, "trio_smtpd")
    async with tcp_server() as server:
        client = await connect(server)
        if ending:
            await client.send(ending)
            assert (await client.reply()).code == 221
        else:
            assert isinstance(client.stream, trio.SocketStream)
            await client.stream.send_eof()
        assert await client.closed()
        await client.aclose()
    assert "connection lost" not in caplog.text


async def test_a_serve_that_cannot_start_leaves_no_port_bound(
        tmp_path: Path, server_tls: ssl.SSLContext) -> None:
    # Found by review (2026-12-02): serve() bound its ports, then failed building the
    # server (a client CA file that is not there), and the port stayed bound for as long
    # as the exception lived.
    port = free_port()
    config = Config(hostname="mx.test", tls=server_tls, client_certificates="optional",
                    client_ca=str(tmp_path / "missing-ca.pem"))
    with pytest.raises(OSError) as failed:
        await serve(config, port, host="127.0.0.1")
    assert failed.value is not None  # (kept alive: a listener it held would be too)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # EADDRINUSE while a listener holds it
