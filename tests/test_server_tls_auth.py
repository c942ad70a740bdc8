"""STARTTLS, implicit TLS and AUTH through real clients (smtplib, aiosmtplib) over loopback."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import aiosmtplib
import pytest
import trio

import trio_smtpd
import trio_smtpd.testing
from trio_smtpd import Config, Credentials, Server, Session, serve
from trio_smtpd.testing import TestClient

# The whole file runs on both transports (see conftest.py).
pytestmark = pytest.mark.usefixtures("both_transports")

MESSAGE = b"From: a@example.org\r\nSubject: tls\r\n\r\nsecret body\r\n"


async def check_password(credentials: Credentials) -> str | None:
    return credentials.username if credentials.check("s3cret") else None


@asynccontextmanager
async def running(config: Config, **kw: object) -> AsyncIterator[tuple[Server, list[
        trio_smtpd.Transaction]]]:
    received: list[trio_smtpd.Transaction] = []
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(partial(serve, config, host="127.0.0.1", **kw))

        async def consume() -> None:
            async for tx in server.transactions():
                received.append(tx)
                tx.accept()

        nursery.start_soon(consume)
        yield server, received
        server.shutdown()


def tls_config(server_tls: ssl.SSLContext, **kw: object) -> Config:
    return Config(hostname="localhost", tls=server_tls, authenticator=check_password,
                  auth_mechanisms=("PLAIN", "LOGIN", "CRAM-MD5"), **kw)  # type: ignore[arg-type]


async def test_smtplib_starttls_and_login(server_tls: ssl.SSLContext,
                                          client_tls: ssl.SSLContext) -> None:
    async with running(tls_config(server_tls), port=0) as (server, received):
        port = server.port
        assert port

        def send() -> tuple[bool, bool]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.ehlo("client.test")
                before = client.has_extn("auth")
                client.starttls(context=client_tls)
                client.ehlo("client.test")
                after = client.has_extn("auth") and not client.has_extn("starttls")
                client.login("alice", "s3cret")
                client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)
                return before, after

        before, after = await trio.to_thread.run_sync(send)
        assert (before, after) == (False, True)
    [tx] = received
    assert tx.info.tls is not None and tx.info.tls.version and tx.info.tls.cipher
    assert tx.info.authenticated_as == "alice"
    assert tx.data == MESSAGE


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN", "CRAM-MD5"])
async def test_smtplib_each_mechanism(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext,
                                      mechanism: str) -> None:
    async with running(tls_config(server_tls), port=0) as (server, _):
        port = server.port
        assert port

        def login(password: str) -> int:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.starttls(context=client_tls)
                client.ehlo("client.test")  # smtplib's auth() does not say EHLO itself
                client.user, client.password = "alice", password
                method = {"PLAIN": client.auth_plain, "LOGIN": client.auth_login,
                          "CRAM-MD5": client.auth_cram_md5}[mechanism]
                try:
                    code, _ = client.auth(mechanism, method)
                except smtplib.SMTPAuthenticationError as exc:
                    return exc.smtp_code
                return code

        assert await trio.to_thread.run_sync(login, "s3cret") == 235
        assert await trio.to_thread.run_sync(login, "wrong") == 535


async def test_auth_before_tls_is_refused_with_538(server_tls: ssl.SSLContext) -> None:
    async with running(tls_config(server_tls), port=0) as (server, _):
        port = server.port
        assert port

        def try_auth() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.ehlo("client.test")
                return client.docmd("AUTH", "PLAIN AGFsaWNlAHMzY3JldA==")

        code, text = await trio.to_thread.run_sync(try_auth)
        assert code == 538 and b"5.7.11" in text


async def test_aiosmtplib_starttls_and_login(server_tls: ssl.SSLContext,
                                             client_tls: ssl.SSLContext) -> None:
    async with running(tls_config(server_tls), port=0) as (server, received):
        port = server.port
        assert port

        def send() -> None:
            import asyncio

            async def go() -> None:
                await aiosmtplib.send(MESSAGE, sender="alice@example.org",
                                      recipients=["bob@example.net", "carol@example.net"],
                                      hostname="127.0.0.1", port=port, start_tls=True,
                                      tls_context=client_tls, username="alice",
                                      password="s3cret", timeout=10)

            asyncio.run(go())

        await trio.to_thread.run_sync(send)
    [tx] = received
    assert [str(r.address) for r in tx.recipients] == ["bob@example.net", "carol@example.net"]
    assert tx.info.authenticated_as == "alice" and tx.info.tls is not None


async def test_implicit_tls_listener(server_tls: ssl.SSLContext,
                                     client_tls: ssl.SSLContext) -> None:
    async with running(tls_config(server_tls), tls_port=0) as (server, received):
        port = server.port
        assert port

        def send() -> None:
            with smtplib.SMTP_SSL("127.0.0.1", port, context=client_tls, timeout=10) as client:
                client.login("alice", "s3cret")
                client.sendmail("alice@example.org", ["bob@example.net"], MESSAGE)

        await trio.to_thread.run_sync(send)
    [tx] = received
    assert tx.info.tls is not None and tx.info.authenticated_as == "alice"


async def test_starttls_pipelined_plaintext_is_discarded(server_tls: ssl.SSLContext,
                                                         client_tls: ssl.SSLContext) -> None:
    # CVE-2011-0411 class: commands sent in plaintext behind STARTTLS must not be executed
    # as if they had come through TLS, nor answered: the handshake must succeed, which it
    # cannot if the server writes a plaintext reply where its TLS records should be.
    async with running(tls_config(server_tls), port=0) as (server, received):
        port = server.port
        assert port
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = TestClient(stream)
        assert (await client.reply()).code == 220
        assert (await client.command("EHLO c")).code == 250
        await client.send(b"STARTTLS\r\nMAIL FROM:<evil@x.y>\r\nRCPT TO:<victim@x.y>\r\n")
        # Read the 220 a byte at a time: a reply to the injected commands sent in the same
        # segment must not be swallowed by a client-side buffer; it must reach the handshake.
        assert await _line_exactly(stream) == b"220 2.0.0 Ready to start TLS\r\n"
        tls = trio.SSLStream(stream, client_tls, server_hostname="localhost")
        with trio.fail_after(10):
            await tls.do_handshake()
        secure = TestClient(tls)
        # The session starts over: no injected transaction survived.
        assert (await secure.command("RCPT TO:<victim@x.y>")).code == 503
        assert (await secure.command("EHLO c")).code == 250
        assert (await secure.command("RCPT TO:<victim@x.y>")).code == 503
        await secure.aclose()
    assert received == []


async def test_an_auth_before_starttls_does_not_survive_the_handshake(
        server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    # Found by review (2026-12-02). RFC 3207 4.2: after the handshake the server discards
    # what it learnt from the client outside TLS; an identity proved in cleartext is such
    # knowledge (whoever wrote the plaintext AUTH need not be who is at the TLS end).
    config = tls_config(server_tls, auth_requires_tls=False, require_auth=True)
    async with running(config, port=0) as (server, received):
        assert server.port
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        client = TestClient(stream)
        assert (await client.reply()).code == 220
        assert (await client.command("EHLO c")).code == 250
        assert (await client.command("AUTH PLAIN AGFsaWNlAHMzY3JldA==")).code == 235
        assert (await client.command("STARTTLS")).code == 220
        tls = trio.SSLStream(stream, client_tls, server_hostname="localhost")
        with trio.fail_after(10):
            await tls.do_handshake()
        secure = TestClient(tls)
        assert (await secure.command("EHLO c")).code == 250
        assert (await secure.command("MAIL FROM:<alice@x.y>")).code == 530  # not signed in
        assert (await secure.command("AUTH PLAIN AGJvYgBzM2NyZXQ=")).code == 235  # again
        assert (await secure.command("MAIL FROM:<bob@x.y>")).code == 250
        assert (await secure.command("RCPT TO:<c@x.y>")).code == 250
        assert (await secure.command("DATA")).code == 354
        assert (await secure.command("hi\r\n.")).code == 250
        await secure.aclose()
    assert [tx.info.authenticated_as for tx in received] == ["bob"]


async def _line_exactly(stream: trio.abc.Stream) -> bytes:
    """One line, read without taking a single byte past its CRLF."""
    line = b""
    with trio.fail_after(10):
        while not line.endswith(b"\r\n"):
            byte = await stream.receive_some(1)
            assert byte, f"closed after {line!r}"
            line += byte
    return line


async def test_failed_handshake_is_quiet_and_server_goes_on(
        server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    async with running(tls_config(server_tls), port=0) as (server, _):
        port = server.port
        assert port
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = TestClient(stream)
        await client.reply()
        await client.command("EHLO c")
        assert (await client.command("STARTTLS")).code == 220
        await stream.send_all(b"this is not a TLS ClientHello\r\n" * 10)
        # The server ends that connection (perhaps after a TLS alert), without a reply.
        with trio.fail_after(10):
            rest = b""
            while chunk := await _receive_or_empty(stream):
                rest += chunk
        assert b"250" not in rest and b"220" not in rest
        await stream.aclose()
        # Another client is served normally.
        other = TestClient(await trio.open_tcp_stream("127.0.0.1", port))
        assert (await other.reply()).code == 220
        await other.aclose()


async def test_tls_details_and_auth_identity_reach_the_handler(
        server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    seen: list[trio_smtpd.SessionInfo] = []

    async def handler(session: Session) -> None:
        async for event in session:
            if isinstance(event, trio_smtpd.Auth):
                # smtplib.login() prefers CRAM-MD5 when it is offered.
                assert event.identity == "alice" and event.mechanism == "CRAM-MD5"
            if isinstance(event, trio_smtpd.Mail):
                seen.append(session.info.snapshot())
            event.accept()

    async with running(tls_config(server_tls), port=0, handler=handler) as (server, _):
        port = server.port
        assert port

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.starttls(context=client_tls)
                client.login("alice", "s3cret")
                client.mail("alice@example.org")
                client.rset()

        await trio.to_thread.run_sync(send)
    [info] = seen
    assert info.authenticated_as == "alice"
    assert info.tls is not None and info.tls.version in ("TLSv1.2", "TLSv1.3")


async def _receive_or_empty(stream: trio.abc.Stream) -> bytes:
    try:
        return await stream.receive_some(4096)
    except trio.BrokenResourceError:
        return b""


async def test_too_many_auth_failures_close_the_connection() -> None:
    config = Config(hostname="mx.test", authenticator=check_password, auth_requires_tls=False)
    async with trio_smtpd.testing.open_client(config) as client:
        await client.command("EHLO c")
        wrong = "AUTH PLAIN AGFsaWNlAHdyb25n"  # alice / wrong
        assert [(await client.command(wrong)).code for _ in range(3)] == [535, 535, 535]
        assert (await client.command(wrong)).code == 421
        with trio.fail_after(10):  # closed by the server, not left waiting for the client
            assert await client.closed()


async def test_sni_name_reaches_the_session(server_tls: ssl.SSLContext,
                                            client_tls: ssl.SSLContext) -> None:
    async with running(tls_config(server_tls), port=0) as (server, received):
        port = server.port
        assert port

        def send(name: str) -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client._host = name  # the name smtplib puts in SNI and checks
                client.starttls(context=client_tls)
                client.sendmail("a@example.org", ["b@example.net"], MESSAGE)

        await trio.to_thread.run_sync(send, "mx.test")
        await trio.to_thread.run_sync(send, "localhost")
    assert [tx.info.tls.server_name for tx in received if tx.info.tls] == [
        "mx.test", "localhost"]
