"""PROXY-protocol listeners in the server: the real client address, trust, bad headers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio

import trio_smtpd
from tests.test_proxy import V2_TCP4
from trio_smtpd import Config, ProxyProtocolListener, Server, serve
from trio_smtpd.testing import TestClient

# The whole file runs on both transports (see conftest.py).
pytestmark = pytest.mark.usefixtures("both_transports")


@asynccontextmanager
async def proxied(trusted: list[str], timeout: float = 10.0) -> AsyncIterator[
        tuple[Server, int, list[trio_smtpd.Transaction]]]:
    [tcp] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = tcp.socket.getsockname()[1]
    listener = ProxyProtocolListener(tcp, trusted, timeout=timeout)
    received: list[trio_smtpd.Transaction] = []
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve, Config(hostname="mx.test"),
                                             listeners=[listener]))

        async def consume() -> None:
            async for tx in server.transactions():
                received.append(tx)
                tx.accept()

        nursery.start_soon(consume)
        yield server, port, received
        server.shutdown()


async def test_bytes_in_the_headers_packet_are_the_clients_first_words() -> None:
    # A balancer may pass the header and the client's first bytes in one segment; the
    # session, which drives the socket itself once the header is read, must not lose them.
    async with proxied(["127.0.0.0/8"]) as (_, port, _received):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\nNOOP\r\n")
        client = TestClient(stream)
        assert (await client.reply()).code == 220
        assert (await client.reply()).code == 250  # the NOOP, answered after the greeting
        assert (await client.command("EHLO c")).code == 250
        await client.aclose()


async def closed_without_greeting(stream: trio.abc.Stream) -> bool:
    with trio.fail_after(10):
        try:
            return await stream.receive_some(100) == b""
        except trio.BrokenResourceError:
            return True


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n", V2_TCP4])
async def test_client_address_comes_from_the_header(header: bytes) -> None:
    async with proxied(["127.0.0.0/8"]) as (_, port, received):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(header)
        client = TestClient(stream)
        assert (await client.reply()).code == 220
        replies = await client.send_message("a@b.c", ["d@e.f"], b"hi\r\n")
        assert [r.code for r in replies] == [250, 250, 250, 354, 250], replies
        await client.aclose()
    [tx] = received
    assert tx.info.peer == ("192.0.2.7", 40000)
    assert tx.info.local == ("198.51.100.1", 25)


async def test_untrusted_peer_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "trio_smtpd")
    async with proxied(["192.0.2.0/24"]) as (_, port, received):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"PROXY TCP4 203.0.113.9 198.51.100.1 1 25\r\n")
        assert await closed_without_greeting(stream)
    assert received == []
    assert "untrusted" in caplog.text


async def test_malformed_or_missing_header_closes(caplog: pytest.LogCaptureFixture,
                                                  autojump_clock: object) -> None:
    caplog.set_level(logging.WARNING, "trio_smtpd")
    async with proxied(["127.0.0.0/8"], timeout=5) as (_, port, _received):
        bad = await trio.open_tcp_stream("127.0.0.1", port)
        await bad.send_all(b"EHLO i-forgot-the-header\r\n")
        assert await closed_without_greeting(bad)
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        assert await closed_without_greeting(silent)  # times out waiting for the header
    assert "no PROXY header" in caplog.text
    assert "timed out waiting for the PROXY header" in caplog.text
