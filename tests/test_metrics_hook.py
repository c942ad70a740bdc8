"""``Config(metrics=...)``: what the library reports to an application's counters.

Every test runs real clients over loopback against a server holding a recording
``Metrics``, and checks the calls it got: how many, and with what labels.
"""

from __future__ import annotations

import ssl
from collections import Counter
from collections.abc import Callable
from functools import partial

import pytest
import trio

import trio_smtpd
from tests.tcp import connect, tcp_server
from trio_smtpd import Config, Credentials, Metrics, Reply, Session, Transaction
from trio_smtpd.core import ProtocolConfig
from trio_smtpd.testing import TestClient

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("both_transports")]


class Recording(Metrics):
    """Every call, as (method, labels...) tuples."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[object, ...]] = Counter()
        self.durations: list[float] = []

    def connection_accepted(self) -> None:
        self.calls["accepted",] += 1

    def connection_refused(self, limit: str) -> None:
        self.calls["refused-connection", limit] += 1

    def session_closed(self, outcome: str, seconds: float) -> None:
        self.calls["session", outcome] += 1
        self.durations.append(seconds)

    def tls_handshake(self, mode: str, version: str | None, failure: str | None) -> None:
        self.calls["tls", mode, version, failure] += 1

    def auth(self, mechanism: str, result: str) -> None:
        self.calls["auth", mechanism, result] += 1

    def refused(self, command: str, reply: Reply) -> None:
        self.calls["refusal", command, reply.code, reply.enhanced] += 1

    def transaction(self, transaction: Transaction, outcome: str) -> None:
        self.calls["transaction", outcome, len(transaction.recipients)] += 1

    def of(self, kind: str) -> Counter[tuple[object, ...]]:
        return Counter({k: v for k, v in self.calls.items() if k[0] == kind})


async def until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(10):
        while not condition():
            await trio.sleep(0.01)


async def no_mail_to_nobody(session: Session) -> None:
    async for decision in session:
        if isinstance(decision, trio_smtpd.Rcpt) and decision.address.local_part == "nobody":
            decision.reject(550, "No such user", "5.1.1")
        elif isinstance(decision, trio_smtpd.Message):
            if b"reject me" in decision.transaction.data:
                decision.reject(554, "Spam", "5.7.1")
            else:
                decision.accept()
        else:
            decision.accept()


async def test_connections_sessions_refusals_and_transactions_are_counted() -> None:
    metrics = Recording()
    config = Config(hostname="mx.test", metrics=metrics, max_message_size=1000)
    async with tcp_server(config, no_mail_to_nobody) as server:
        client = await connect(server)
        await client.command("EHLO client.test")
        assert (await client.command("FROB")).code == 500
        replies = await client.send_message("a@example.org", ["b@example.net",
                                                              "nobody@example.net"],
                                            b"Subject: hi\r\n\r\nhello\r\n", hello="")
        assert [r.code for r in replies] == [250, 250, 550, 354, 250]
        replies = await client.send_message("a@example.org", ["b@example.net"],
                                            b"Subject: hi\r\n\r\nreject me\r\n", hello="")
        assert replies[-1].code == 554
        replies = await client.send_message("a@example.org", ["b@example.net"],
                                            (b"x" * 98 + b"\r\n") * 20, hello="")
        assert replies[-1].code == 552
        assert (await client.command("QUIT")).code == 221
        await client.aclose()
        # A second client that leaves without QUIT, in the middle of a message.
        client = await connect(server)
        await client.command("EHLO client.test")
        await client.command("MAIL FROM:<a@example.org>")
        await client.command("RCPT TO:<b@example.net>")
        assert (await client.command("DATA")).code == 354
        await client.send(b"Subject: cut\r\n")
        await client.aclose()
        await until(lambda: sum(metrics.of("session").values()) == 2)
    assert metrics.of("accepted") == {("accepted",): 2}
    assert metrics.of("session") == {("session", "quit"): 1, ("session", "disconnected"): 1}
    assert all(d >= 0 for d in metrics.durations)
    assert metrics.of("refusal") == {
        ("refusal", "FROB", 500, "5.5.1"): 1,
        ("refusal", "RCPT", 550, "5.1.1"): 1,
        ("refusal", "DATA", 554, "5.7.1"): 1,  # the message's answer: the data's verb
        ("refusal", "DATA", 552, "5.3.4"): 1,
    }
    assert metrics.of("transaction") == {
        ("transaction", "accepted", 1): 1,
        ("transaction", "rejected", 1): 1,
        ("transaction", "aborted", 1): 2,  # too large; the client left during it
    }


async def test_connection_limits_are_counted_by_name() -> None:
    metrics = Recording()
    config = Config(hostname="mx.test", metrics=metrics, max_connections=3,
                    max_connections_per_ip=2)
    async with tcp_server(config) as server:
        assert server.port is not None
        held = [await connect(server) for _ in range(2)]
        # A third from the same address: refused by the per-address limit.
        assert await greeting_code(server, "127.0.0.1") == 421
        # One from another loopback address fills the server; a fourth is one too many.
        held.append(await connect_from(server, "127.0.0.2"))
        assert await greeting_code(server, "127.0.0.3") == 421
        for client in held:
            await client.aclose()
        await until(lambda: sum(metrics.of("session").values()) == 3)
    assert metrics.of("refused-connection") == {
        ("refused-connection", "max_connections_per_ip"): 1,
        ("refused-connection", "max_connections"): 1}
    assert metrics.of("accepted") == {("accepted",): 3}


async def connect_from(server: trio_smtpd.Server, source: str) -> TestClient:
    """A client from ``source`` that has read the greeting (``greeting``)."""
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    assert server.port is not None
    await sock.connect(("127.0.0.1", server.port))
    client = TestClient(trio.SocketStream(sock))
    client.greeting = await client.reply()
    return client


async def greeting_code(server: trio_smtpd.Server, source: str) -> int:
    client = await connect_from(server, source)
    await client.aclose()
    assert client.greeting is not None
    return client.greeting.code


async def test_timeouts_and_too_many_errors_end_sessions_by_name() -> None:
    metrics = Recording()
    config = Config(hostname="mx.test", metrics=metrics,
                    timeouts=trio_smtpd.Timeouts(command=0.2),
                    protocol=ProtocolConfig(max_bad_commands=1))
    async with tcp_server(config) as server:
        idle = await connect(server)
        assert (await idle.reply()).code == 421  # timed out
        noisy = await connect(server)
        await noisy.command("FROB")
        assert (await noisy.command("FROB")).code == 421
        await until(lambda: sum(metrics.of("session").values()) == 2)
    assert metrics.of("session") == {("session", "timeout"): 1,
                                     ("session", "too_many_errors"): 1}
    # The last words are refusals too, spoken unprompted or to the command.
    assert metrics.of("refusal")["refusal", "", 421, "4.4.2"] == 1
    assert metrics.of("refusal")["refusal", "FROB", 421, "4.7.0"] == 1


async def test_shutdown_ends_idle_sessions_as_shutdown() -> None:
    metrics = Recording()
    async with tcp_server(Config(hostname="mx.test", metrics=metrics)) as server:
        client = await connect(server)
        server.shutdown()
        assert (await client.reply()).code == 421
        await server.wait_closed()
    assert metrics.of("session") == {("session", "shutdown"): 1}


async def test_lmtp_answers_of_two_kinds_are_a_partial_transaction() -> None:
    metrics = Recording()

    async def per_recipient(session: Session) -> None:
        async for decision in session:
            if isinstance(decision, trio_smtpd.Message):
                decision.transaction.accept_recipient(0)
                decision.transaction.tempfail_recipient(1, 452, "Full", "4.2.2")
            else:
                decision.accept()

    config = Config(hostname="mx.test", lmtp=True, metrics=metrics)
    async with tcp_server(config, per_recipient) as server:
        client = await connect(server)
        await client.command("LHLO client.test")
        await client.command("MAIL FROM:<a@example.org>")
        await client.command("RCPT TO:<b@example.net>")
        await client.command("RCPT TO:<c@example.net>")
        await client.command("DATA")
        await client.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        assert [(await client.reply()).code for _ in range(2)] == [250, 452]
        await client.command("QUIT")
    assert metrics.of("transaction") == {("transaction", "partial", 2): 1}
    assert metrics.of("refusal") == {("refusal", "DATA", 452, "4.2.2"): 1}


async def check_password(credentials: Credentials) -> str | None:
    return credentials.username if credentials.check("s3cret") else None


async def test_tls_handshakes_and_auth_results(server_tls: ssl.SSLContext,
                                               client_tls: ssl.SSLContext) -> None:
    metrics = Recording()
    config = Config(hostname="localhost", tls=server_tls, authenticator=check_password,
                    metrics=metrics)
    async with tcp_server(config) as server:
        client = await connect(server)
        await client.command("EHLO client.test")
        assert (await client.command("STARTTLS")).code == 220
        tls = trio.SSLStream(client.stream, client_tls, server_hostname="localhost")
        await tls.do_handshake()
        client.stream = tls
        await client.command("EHLO client.test")
        assert (await client.command("AUTH PLAIN AGFsaWNlAHdyb25n")).code == 535  # wrong
        assert (await client.command("AUTH PLAIN AGFsaWNlAA==")).code == 501  # no password
        assert (await client.command("AUTH PLAIN AGFsaWNlAHMzY3JldA==")).code == 235
        await client.command("QUIT")
        # A client that speaks plaintext into the handshake.
        plain = await connect(server)
        await plain.command("EHLO client.test")
        await plain.command("STARTTLS")
        await plain.send(b"EHLO this is not TLS\r\n" * 20)
        await until(lambda: sum(metrics.of("session").values()) == 2)
    [(_, mode, version, _)] = [k for k in metrics.of("tls") if k[3] is None]
    assert mode == "starttls" and str(version).startswith("TLSv1.")
    failures = [k for k in metrics.of("tls") if k[3] is not None]
    assert [(k[1], k[2]) for k in failures] == [("starttls", None)]
    assert failures[0][3] in ("http_request", "wrong_version_number", "unknown_protocol",
                              "record_layer_failure", "packet_length_too_long")
    assert metrics.of("auth") == {("auth", "PLAIN", "invalid"): 1,
                                  ("auth", "PLAIN", "malformed"): 1,
                                  ("auth", "PLAIN", "success"): 1}
    assert metrics.of("session") == {("session", "quit"): 1, ("session", "tls_failed"): 1}


async def test_implicit_tls_handshakes_are_counted(server_tls: ssl.SSLContext,
                                                   client_tls: ssl.SSLContext) -> None:
    metrics = Recording()
    config = Config(hostname="localhost", tls=server_tls, metrics=metrics)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(trio_smtpd.serve, config, tls_port=0,
                                             host="127.0.0.1"))
        port = server.listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        tls = trio.SSLStream(stream, client_tls, server_hostname="localhost")
        await tls.do_handshake()
        assert (await tls.receive_some(100)).startswith(b"220 ")
        await tls.aclose()
        await until(lambda: sum(metrics.of("session").values()) == 1)
        server.shutdown()
    assert [k[1:3] for k in metrics.of("tls")] == [("implicit", tls.version())]


async def test_the_application_observer_hears_everything_beside_the_metrics() -> None:
    metrics = Recording()
    heard: list[tuple[str, object]] = []

    class Watcher:
        wants_data = False

        def received(self, line: str) -> None:
            heard.append(("received", line))

        def data(self, chunk: bytes) -> None:
            heard.append(("data", chunk))

        def sent(self, reply: bytes) -> None:
            heard.append(("sent", reply[:3]))

        def refused(self, command: str, reply: Reply) -> None:
            heard.append(("refused", command))

    watcher = Watcher()

    async def watch(session: Session) -> None:
        async for decision in session:
            if isinstance(decision, trio_smtpd.Connect):
                assert session.observer is None  # the metrics' own stays hidden
                session.observer = watcher
                assert session.observer is watcher
            decision.accept()

    async with tcp_server(Config(hostname="mx.test", metrics=metrics), watch) as server:
        client = await connect(server)
        await client.command("NOOP")
        await client.command("FROB")
        await client.command("QUIT")
    assert heard == [("sent", b"220"), ("received", "NOOP"), ("sent", b"250"),
                     ("received", "FROB"), ("sent", b"500"), ("refused", "FROB"),
                     ("received", "QUIT"), ("sent", b"221")]
    assert metrics.of("refusal") == {("refusal", "FROB", 500, "5.5.1"): 1}


async def test_pending_decisions_are_those_handed_out_and_unanswered() -> None:
    waiting = trio.Event()
    release = trio.Event()

    async def slow(session: Session) -> None:
        async for decision in session:
            if isinstance(decision, trio_smtpd.Mail):
                waiting.set()
                await release.wait()
            decision.accept()

    async with tcp_server(Config(hostname="mx.test"), slow) as server:
        client = await connect(server)
        assert server.pending_decisions == 0
        await client.command("EHLO client.test")
        await client.send(b"MAIL FROM:<a@example.org>\r\n")
        await waiting.wait()
        assert server.pending_decisions == 1
        release.set()
        assert (await client.reply()).code == 250
        assert server.pending_decisions == 0
        await client.command("QUIT")


@pytest.mark.parametrize("metrics", [None, Recording()])
async def test_without_metrics_the_engine_has_no_observer(metrics: Metrics | None) -> None:
    seen: list[object] = []

    async def look(session: Session) -> None:
        async for decision in session:
            seen.append(session._exchange.conn.observer)
            decision.accept()

    async with tcp_server(Config(hostname="mx.test", metrics=metrics), look) as server:
        client = await connect(server)
        await client.command("QUIT")
    assert (seen[0] is None) == (metrics is None)
