"""Client certificates over real TLS, and the TLSFailed report a handler gets when a
STARTTLS handshake fails, with its reason."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import partial
from pathlib import Path

import pytest
import trio
import trustme

import trio_smtpd
from trio_smtpd import Config, Session, serve
from trio_smtpd.testing import TestClient

# STARTTLS over each transport: the handshake takes over the plain connection.
pytestmark = pytest.mark.usefixtures("both_transports")


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[tuple[int, list[trio_smtpd.Decision],
                                                         list[Session]]]:
    seen: list[trio_smtpd.Decision] = []
    sessions: list[Session] = []
    done = trio.Semaphore(0)

    async def handler(session: Session) -> None:
        sessions.append(session)
        async for decision in session:
            seen.append(decision)
            decision.accept()
        done.release()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve, config, 0, host="127.0.0.1",
                                             handler=handler))
        assert server.port
        yield server.port, seen, sessions
        with trio.fail_after(30):  # every session's handler has seen its end
            for _ in sessions:
                await done.acquire()
        server.shutdown()


async def starttls(port: int, context: ssl.SSLContext) -> trio.SSLStream[trio.abc.Stream]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    client = TestClient(stream)
    assert (await client.reply()).code == 220
    assert (await client.command("EHLO client.test")).code == 250
    assert (await client.command("STARTTLS")).code == 220
    return trio.SSLStream(stream, context, server_hostname="localhost")


async def handshake_fails(port: int, context: ssl.SSLContext) -> None:
    tls = await starttls(port, context)
    with suppress(trio.BrokenResourceError, ssl.SSLError):
        await tls.do_handshake()
        await tls.receive_some(100)  # (TLS 1.3: the refusal of our certificate comes late)
    await trio.aclose_forcefully(tls)


def failures(seen: list[trio_smtpd.Decision]) -> list[str]:
    return [d.reason for d in seen if isinstance(d, trio_smtpd.TLSFailed)]


def client_certificate_config(server_tls: ssl.SSLContext, ca_file: Path,
                              policy: str) -> Config:
    return Config(hostname="mx.test", tls=server_tls, client_certificates=policy,  # type: ignore[arg-type]
                  client_ca=str(ca_file))


async def test_a_verified_client_certificate_reaches_the_handler(
        server_tls: ssl.SSLContext, ca: trustme.CA, cert_files: tuple[Path, Path, Path],
        client_tls: ssl.SSLContext) -> None:
    config = client_certificate_config(server_tls, cert_files[2], "optional")
    async with running(config) as (port, seen, _):
        def send(context: ssl.SSLContext) -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.starttls(context=context)
                client.ehlo("client.test")

        ca.issue_cert("carol@example.org", common_name="carol").configure_cert(client_tls)
        await trio.to_thread.run_sync(send, client_tls)
    hellos = [d for d in seen if isinstance(d, trio_smtpd.Hello)]
    assert len(hellos) == 2
    # (the handler sees it in session.info from the hello after STARTTLS on)
    connect = next(d for d in seen if isinstance(d, trio_smtpd.Connect))
    tls = connect.info.tls
    assert tls is not None and tls.client_verified
    assert tls.client_subject is not None and tls.client_subject.startswith("CN=carol,")
    assert tls.peer_certificate is not None


async def test_optional_without_a_certificate_is_fine(
        server_tls: ssl.SSLContext, cert_files: tuple[Path, Path, Path],
        client_tls: ssl.SSLContext) -> None:
    config = client_certificate_config(server_tls, cert_files[2], "optional")
    async with running(config) as (port, seen, _):
        def send() -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.starttls(context=client_tls)
                client.ehlo("client.test")

        await trio.to_thread.run_sync(send)
    connect = next(d for d in seen if isinstance(d, trio_smtpd.Connect))
    assert connect.info.tls is not None and not connect.info.tls.client_verified
    assert connect.info.tls.client_subject is None and failures(seen) == []


async def test_a_certificate_from_another_ca_is_a_bad_certificate(
        server_tls: ssl.SSLContext, cert_files: tuple[Path, Path, Path],
        client_tls: ssl.SSLContext) -> None:
    config = client_certificate_config(server_tls, cert_files[2], "optional")
    trustme.CA().issue_cert("eve@example.org", common_name="eve").configure_cert(client_tls)
    async with running(config) as (port, seen, sessions):
        await handshake_fails(port, client_tls)
    assert failures(seen) == ["bad certificate"]
    assert isinstance(seen[-1], trio_smtpd.TLSFailed) and sessions[0].tls_failed


async def test_required_without_a_certificate_is_a_bad_certificate(
        server_tls: ssl.SSLContext, cert_files: tuple[Path, Path, Path],
        client_tls: ssl.SSLContext) -> None:
    config = client_certificate_config(server_tls, cert_files[2], "required")
    async with running(config) as (port, seen, _):
        await handshake_fails(port, client_tls)
    assert failures(seen) == ["bad certificate"]


async def test_no_shared_protocol(server_tls: ssl.SSLContext,
                                  client_tls: ssl.SSLContext) -> None:
    server_tls.minimum_version = ssl.TLSVersion.TLSv1_3
    client_tls.maximum_version = ssl.TLSVersion.TLSv1_2
    async with running(Config(hostname="mx.test", tls=server_tls)) as (port, seen, _):
        await handshake_fails(port, client_tls)
    [failed] = [d for d in seen if isinstance(d, trio_smtpd.TLSFailed)]
    assert failed.reason == "no shared protocol" and failed.detail


async def test_client_gone_timeout_and_not_tls(server_tls: ssl.SSLContext,
                                               client_tls: ssl.SSLContext) -> None:
    config = Config(hostname="mx.test", tls=server_tls,
                    timeouts=trio_smtpd.Timeouts(tls_handshake=0.5))
    async with running(config) as (port, seen, _):
        gone = await starttls(port, client_tls)
        await gone.transport_stream.aclose()
        silent = await starttls(port, client_tls)  # says nothing: the handshake times out
        garbage = await starttls(port, client_tls)
        await garbage.transport_stream.send_all(b"this is not a TLS ClientHello\r\n" * 10)
        with trio.fail_after(10):
            while len(failures(seen)) < 3:
                await trio.sleep(0.01)
        await silent.transport_stream.aclose()
        await garbage.transport_stream.aclose()
    assert sorted(failures(seen)) == ["client gone", "protocol error", "timeout"]


async def test_a_report_needs_no_answer_and_takes_any(server_tls: ssl.SSLContext,
                                                     client_tls: ssl.SSLContext) -> None:
    answers: list[str] = []

    async def handler(session: Session) -> None:
        async for decision in session:
            if isinstance(decision, trio_smtpd.TLSFailed):
                decision.reject()  # sends nothing: nobody is there
                answers.append(repr(decision))
                with pytest.raises(trio_smtpd.UsageError):
                    decision.accept()
            else:
                decision.accept()
        answers.append("end")

    server_tls.minimum_version = ssl.TLSVersion.TLSv1_3
    client_tls.maximum_version = ssl.TLSVersion.TLSv1_2
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve, Config(hostname="mx.test", tls=server_tls),
                                             0, host="127.0.0.1", handler=handler))
        await handshake_fails(server.port, client_tls)
        with trio.fail_after(10):
            while "end" not in answers:
                await trio.sleep(0.01)
        server.shutdown()
    assert answers[0].startswith("TLSFailed(no shared protocol") and answers[1] == "end"
