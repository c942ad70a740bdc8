"""Issue 17 through the library: the connection rate limit, authenticators that refuse
with their own reply and see who asks, and TLS handshakes told apart by whether a
ClientHello arrived (an SNI name CPython cannot decode included)."""

from __future__ import annotations

import gc
import logging
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

import trio_smtpd
from tests.tcp import connect, tcp_server
from tests.tlshello import NON_ASCII, client_hello
from trio_smtpd import Config, Credentials, Reply, Server, Session, serve
from trio_smtpd._ratelimit import RateLimit
from trio_smtpd._socket_transport import SocketTransport
from trio_smtpd.core import UNSENT_REPLY_LIMIT
from trio_smtpd.testing import MemoryListener, TestClient, open_client

# --------------------------------------------------------------------------- RateLimit


def test_rate_allows_a_burst_then_the_steady_rate() -> None:
    rate = RateLimit(3, 60.0)
    assert [rate.take("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert rate.take("b", 0.0)  # each key has its own budget
    assert not rate.take("a", 19.0)  # a token comes back every 20 s
    assert rate.take("a", 20.0)
    assert not rate.take("a", 20.0)
    assert rate.used("a", 80.0) == pytest.approx(0.0)  # a full period later, all back


def test_rate_spend_counts_past_the_budget() -> None:
    rate = RateLimit(2, 3600.0)
    assert rate.allows("a", 0.0)
    assert [rate.spend("a", 0.0) for _ in range(4)] == [1.0, 2.0, 3.0, 4.0]
    assert rate.used("a", 0.0) == 4.0
    assert not rate.allows("a", 3600.0)  # two whole periods to pay back four
    assert rate.allows("a", 5400.0)


def test_rate_memory_is_bounded() -> None:
    rate = RateLimit(1, 60.0, max_keys=100)
    for n in range(1000):
        rate.take(f"192.0.2.{n}", 0.0)
    assert len(rate) == 100
    # Keys idle for a whole period are dropped as soon as they are the oldest.
    rate.take("late", 61.0)
    rate.take("later", 62.0)
    assert len(rate) < 100


@pytest.mark.parametrize("args", [(0, 60.0), (1, 0.0), (1, float("inf")), (1, float("nan"))])
def test_rate_refuses_nonsense(args: tuple[int, float]) -> None:
    with pytest.raises(ValueError):
        RateLimit(*args)


def test_config_connection_rate_is_checked() -> None:
    with pytest.raises(ValueError):
        Config(max_connection_rate=0)
    with pytest.raises(ValueError):
        Config(connection_rate_period=float("nan"))


# --------------------------------------------------------------------------- the rate, served


@asynccontextmanager
async def tcp(config: Config, **kw: Any) -> AsyncIterator[Server]:
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(partial(serve, config, 0, host="127.0.0.1",
                                                     **kw))
        yield server
        server.shutdown()


async def first_reply(port: int, source: str) -> trio_smtpd.Reply:
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    client = TestClient(trio.SocketStream(sock))
    try:
        with trio.fail_after(10):
            return await client.reply()
    finally:
        await client.aclose()


@pytest.mark.usefixtures("both_transports")
async def test_connection_rate_per_address() -> None:
    async with tcp(Config(hostname="mx.test", max_connection_rate=3)) as server:
        assert server.port
        codes = [(await first_reply(server.port, "127.0.0.2")).code for _ in range(4)]
        assert codes == [220, 220, 220, 421]  # closed at once: the rate, not the count
        refused = await first_reply(server.port, "127.0.0.2")
        assert refused.lines == ["4.7.0 Too many new connections from your address, slow down"]
        assert (await first_reply(server.port, "127.0.0.3")).code == 220


# --------------------------------------------------------------------------- AUTH


async def test_authenticator_sees_the_client_and_may_answer_its_own_refusal() -> None:
    seen: list[Credentials] = []

    async def authenticator(credentials: Credentials) -> str | Reply | None:
        seen.append(credentials)
        if credentials.username == "throttled":
            return Reply(454, "Too many failures from your address", "4.7.0")
        if credentials.username == "odd":
            return Reply(250, "a refusal must be 4xx or 5xx")
        return None

    config = Config(hostname="mx.test", authenticator=authenticator, auth_requires_tls=False)
    async with open_client(config) as client:
        await client.command("EHLO c")
        own = await client.command("AUTH PLAIN AHRocm90dGxlZABwdw==")  # throttled / pw
        assert (own.code, own.lines) == (454, ["4.7.0 Too many failures from your address"])
        assert (await client.command("AUTH PLAIN AHVzZXIAcHc=")).code == 535  # user / pw
        odd = await client.command("AUTH PLAIN AG9kZABwdw==")  # odd / pw
        assert (odd.code, odd.lines) == (454, ["4.7.0 Temporary authentication failure"])
    assert all(c.info is not None and c.info.id for c in seen)
    assert len({c.info.id for c in seen if c.info}) == 1


# --------------------------------------------------------------------------- TLS


@asynccontextmanager
async def tls_server(server_tls: ssl.SSLContext) -> AsyncIterator[tuple[Server, list[
        trio_smtpd.SessionInfo]]]:
    infos: list[trio_smtpd.SessionInfo] = []

    async def handler(session: Session) -> None:
        async for decision in session:
            decision.accept()
        infos.append(session.info)

    async with tcp(Config(hostname="mx.test", tls=server_tls), handler=handler,
                   tls_port=0) as server:
        yield server, infos


async def starttls(port: int) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    client = TestClient(stream)
    await client.reply()
    await client.command("EHLO c")
    assert (await client.command("STARTTLS")).code == 220
    return stream


async def until_closed(stream: trio.abc.Stream) -> None:
    with trio.fail_after(10):
        try:
            while await stream.receive_some(4096):
                pass
        except trio.BrokenResourceError:
            pass
    await stream.aclose()


async def wait_for(infos: list[trio_smtpd.SessionInfo], count: int) -> None:
    with trio.fail_after(10):
        while len(infos) < count:
            await trio.sleep(0.01)


@pytest.mark.usefixtures("both_transports")
async def test_only_a_handshake_past_its_clienthello_counts_as_failed(
        server_tls: ssl.SSLContext) -> None:
    async with tls_server(server_tls) as (server, infos):
        assert server.port
        # Gone right after the 220: no ClientHello.
        await (await starttls(server.port)).aclose()
        # Bytes that are no ClientHello at all.
        garbage = await starttls(server.port)
        await garbage.send_all(b"definitely not a TLS ClientHello\r\n" * 20)
        await until_closed(garbage)
        # A real ClientHello, then the client refuses our certificate.
        distrust = await starttls(server.port)
        client = trio.SSLStream(distrust, ssl.create_default_context(),
                                server_hostname="mx.test")
        with pytest.raises(trio.BrokenResourceError):
            await client.do_handshake()
        await distrust.aclose()
        await wait_for(infos, 3)
    assert [info.tls_failed_after_hello for info in infos] == [False, False, True]


async def test_a_non_ascii_sni_name_is_one_log_line_not_a_traceback(
        server_tls: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "trio_smtpd")
    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    async with tls_server(server_tls) as (server, infos):
        assert server.port
        stream = await starttls(server.port)
        await stream.send_all(client_hello(NON_ASCII))
        await until_closed(stream)
        # The same on the implicit TLS port.
        tls_port = server.listeners[-1].socket.getsockname()[1]  # type: ignore[attr-defined]
        implicit = await trio.open_tcp_stream("127.0.0.1", tls_port)
        await implicit.send_all(client_hello(NON_ASCII))
        await until_closed(implicit)
        await wait_for(infos, 1)
    assert unraisable == []
    assert caplog.text.count("not ASCII") == 2
    assert infos[0].tls_failed_after_hello


# --------------------------------------------------------------------------- backpressure


async def test_a_client_that_does_not_read_is_not_read_from() -> None:
    # Pipelined HELP that is never read: one read of commands used to become a megabyte
    # of replies held by the session. Now the session stops taking commands once
    # UNSENT_REPLY_LIMIT octets of replies are waiting, and goes on as they are read.
    commands: list[str] = []

    class Commands:
        wants_data = False

        def received(self, line: str) -> None:
            commands.append(line)

        def sent(self, reply: bytes) -> None: ...
        def data(self, chunk: bytes) -> None: ...
        def refused(self, command: str, reply: Reply) -> None: ...

    async def handler(session: Session) -> None:
        async for decision in session:
            session.observer = Commands()
            decision.accept()

    count = 20000
    listener = MemoryListener(lockstep=True)  # no buffer between us and the client
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve, Config(hostname="mx.test"),
                                             listeners=[listener], handler=handler))
        client = TestClient(await listener.connect())
        assert (await client.reply()).code == 220
        one_reply = sum(len(line) + 6 for line in (await client.command("HELP")).lines)
        commands.clear()
        nursery.start_soon(client.send, b"HELP\r\n" * count)
        await trio.testing.wait_all_tasks_blocked()
        # The first read held over 10000 commands; a bound's worth were taken.
        bound = UNSENT_REPLY_LIMIT / one_reply
        assert bound <= len(commands) <= bound + 1, (len(commands), bound)
        for _ in range(count):
            assert (await client.reply()).code == 214
        assert len(commands) == count
        assert (await client.command("QUIT")).code == 221
        server.shutdown()


# --------------------------------------------------------------------------- security log


def logged(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    """The fields of each ``event`` the library logged (see trio_smtpd/_securitylog.py)."""
    return [record.smtp for record in caplog.records  # type: ignore[attr-defined]
            if getattr(record, "smtp_event", None) == event]


async def test_failed_handshakes_are_logged_with_the_client_and_the_facts(
        server_tls: ssl.SSLContext, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "trio_smtpd")
    async with tls_server(server_tls) as (server, infos):
        assert server.port
        garbage = await starttls(server.port)
        starttls_peer = garbage.socket.getsockname()
        await garbage.send_all(b"definitely not a TLS ClientHello\r\n" * 20)
        await until_closed(garbage)
        implicit_port = server.listeners[-1].socket.getsockname()[1]  # type: ignore[attr-defined]
        implicit = await trio.open_tcp_stream("127.0.0.1", implicit_port)
        implicit_peer = implicit.socket.getsockname()
        client = trio.SSLStream(implicit, ssl.create_default_context(),
                                server_hostname="mx.test")  # does not trust our CA
        with pytest.raises(trio.BrokenResourceError):
            await client.do_handshake()
        await implicit.aclose()
        with trio.fail_after(10):
            while len(logged(caplog, "tls_failed")) < 2:
                await trio.sleep(0.01)
    first, second = logged(caplog, "tls_failed")
    assert first["peer"] == tuple(starttls_peer) and first["mode"] == "starttls"
    assert (first["reason"], first["after_hello"]) == ("protocol error", False)
    assert first["session"] == infos[0].id
    assert second["peer"] == tuple(implicit_peer) and second["mode"] == "implicit"
    # (trio's client closes without sending its alert: to us, the client went away.)
    assert (second["reason"], second["after_hello"]) == ("client gone", True)
    text = [r.getMessage() for r in caplog.records if getattr(r, "smtp_event", None)]
    assert f"with 127.0.0.1:{starttls_peer[1]} failed before any ClientHello" in text[0]


async def test_failed_auth_is_logged_with_the_user_name_the_client_gave(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "trio_smtpd")

    async def nobody(credentials: Credentials) -> str | Reply | None:
        return None

    config = Config(hostname="mx.test", authenticator=nobody, auth_requires_tls=False)
    async with tcp(config) as server:
        client = await connect(server)
        await client.command("EHLO c")
        assert (await client.command("AUTH PLAIN AGFsaWNlAHB3")).code == 535  # alice / pw
        assert (await client.command("AUTH PLAIN YWxpY2U=")).code == 501  # no NULs
        peer = client.stream.socket.getsockname()  # type: ignore[attr-defined]
        await client.aclose()
    wrong, malformed = logged(caplog, "auth_failed")
    assert wrong == {"session": wrong["session"], "peer": tuple(peer), "mechanism": "PLAIN",
                     "user": "alice", "code": 535,
                     "reason": "'alice' refused by the authenticator"}
    assert (malformed["user"], malformed["code"]) == (None, 501)


async def test_a_connection_refused_by_a_limit_is_logged_with_its_client(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "trio_smtpd")
    async with tcp(Config(hostname="mx.test", max_connection_rate=1)) as server:
        assert server.port
        assert (await first_reply(server.port, "127.0.0.4")).code == 220
        assert (await first_reply(server.port, "127.0.0.4")).code == 421
    [refused] = logged(caplog, "connection_refused")
    assert refused["peer"][0] == "127.0.0.4" and refused["limit"] == "max_connection_rate"


# --------------------------------------------------------------------------- floods

async def test_a_flood_of_short_connections_leaves_nothing_of_them_behind() -> None:
    # The plain-socket path's deadlines wait in the watchdog's heap; the watchdog
    # sleeps until the first of them, a command timeout away. Connections that come and
    # go meanwhile must not be kept until then (about 400 bytes each: at a few thousand
    # connections a second, gigabytes over a five-minute timeout).
    def transports() -> int:
        gc.collect()
        return sum(isinstance(o, SocketTransport) for o in gc.get_objects())

    async with tcp_server() as server:
        before = transports()
        for _ in range(600):
            client = await connect(server)
            await client.command("QUIT")
            await client.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert transports() - before < 150
