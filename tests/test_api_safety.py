"""The API's safety rules, each found broken by a new user's programs (issue 12), through
the public API and real clients: smtplib in a thread, raw sockets for LMTP."""

from __future__ import annotations

import math
import smtplib
from datetime import UTC, datetime
from functools import partial

import pytest
import trio
import trio.testing

import trio_smtpd
from tests.tcp import connect, tcp_server
from trio_smtpd import Config, Message, Rcpt, Session, Timeouts, UsageError, serve
from trio_smtpd._appdeadline import SLACK
from trio_smtpd.testing import TestClient

pytestmark = pytest.mark.usefixtures("both_transports")

LMTP = Config(hostname="mx.test", lmtp=True)


async def lmtp_transaction(client: TestClient, recipients: list[str]) -> list[str]:
    """An LMTP transaction by hand; the reply lines after the data, one per recipient."""
    assert (await client.command("LHLO c")).code == 250
    assert (await client.command("MAIL FROM:<a@b.c>")).code == 250
    for recipient in recipients:
        assert (await client.command(f"RCPT TO:<{recipient}>")).code == 250
    assert (await client.command("DATA")).code == 354
    await client.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    return [f"{r.code} {r.lines[0]}" for r in [await client.reply() for _ in recipients]]


# -- 1. LMTP: a whole-message accept can never undo a per-recipient refusal ---------------

async def test_lmtp_accept_after_a_refused_recipient_raises_and_the_refusal_stands() -> None:
    errors: list[str] = []
    async with tcp_server(LMTP) as server:
        async def consume() -> None:
            async with server.transactions() as transactions:
                async for tx in transactions:
                    tx.reject_recipient(1, 552, "Mailbox full", "5.2.2")
                    with pytest.raises(UsageError) as error:
                        tx.accept()
                    errors.append(str(error.value))
                    tx.accept_recipient(0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            client = await connect(server)
            replies = await lmtp_transaction(client, ["a@x.test", "b@x.test"])
            await client.aclose()
            nursery.cancel_scope.cancel()
    assert replies[0].startswith("250 2.1.5")
    assert replies[1] == "552 5.2.2 Mailbox full"
    assert "recipient 1 was already answered (552 5.2.2 Mailbox full)" in errors[0]


async def test_lmtp_handler_style_cannot_override_a_refusal_either() -> None:
    async def handler(session: Session) -> None:
        async for decision in session:
            if isinstance(decision, Message):
                decision.transaction.reject_recipient(0, 550, "No such user", "5.1.1")
                with pytest.raises(UsageError):
                    decision.accept()
                with pytest.raises(UsageError):
                    decision.transaction.accept_recipient(0)  # twice for one recipient
            else:
                decision.accept()

    async with tcp_server(LMTP, handler) as server:
        client = await connect(server)
        replies = await lmtp_transaction(client, ["a@x.test", "b@x.test"])
        await client.aclose()
    # The refusal stands; the recipient nobody answered is not acknowledged.
    assert replies == ["550 5.1.1 No such user",
                       "451 4.3.0 Not answered; try again later"]


# -- 2. A decision that times out is never an acceptance ---------------------------------

async def test_a_recipient_lookup_that_times_out_is_451_for_the_rest_of_the_session(
        ) -> None:
    config = Config(hostname="mx.test", timeouts=Timeouts(decision=0.2))

    async def handler(session: Session) -> None:
        async for decision in session:
            if isinstance(decision, Rcpt):
                await trio.sleep_forever()  # the lookup never returns
            decision.accept()

    async with tcp_server(config, handler) as server:
        port = server.port

        def client() -> list[int]:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                smtp.ehlo("c")
                codes = [smtp.mail("a@b.c")[0], smtp.rcpt("d@e.f")[0], smtp.rcpt("g@e.f")[0]]
                codes.append(smtp.docmd("DATA")[0])
                return codes

        codes = await trio.to_thread.run_sync(client)
    assert codes == [250, 451, 451, 554]  # 554: no valid recipients


async def test_a_handler_that_returns_mid_transaction_leaves_its_decision_451(
        autojump_clock: trio.testing.MockClock) -> None:
    kept: list[trio_smtpd.Decision] = []

    async def handler(session: Session) -> None:
        async for decision in session:
            if isinstance(decision, Rcpt):
                kept.append(decision)
                return  # stops iterating, the recipient unanswered, the client still there
            decision.accept()

    async with tcp_server(Config(hostname="mx.test"), handler) as server:
        client = await connect(server)
        assert (await client.command("EHLO c")).code == 250
        assert (await client.command("MAIL FROM:<a@b.c>")).code == 250
        for recipient in ("d@e.f", "g@e.f"):  # the one at hand, and every later one
            reply = await client.command(f"RCPT TO:<{recipient}>")
            assert (reply.code, reply.lines) == (451, ["4.3.0 Not handled; try again later"])
        assert (await client.command("DATA")).code == 554  # no valid recipients
        await client.aclose()
    assert kept[0].reply is not None and kept[0].reply.code == 451


@pytest.mark.parametrize("step", ["connect", "auth"])
async def test_a_decision_the_application_let_time_out_gets_its_own_kind_of_4xx(
        autojump_clock: trio.testing.MockClock, step: str) -> None:
    """A greeting answers 421 (RFC 5321 3.1), AUTH 454 (RFC 4954 6): the session's 451
    would be a reply neither command may give."""
    async def anyone(credentials: trio_smtpd.Credentials) -> str | None:
        return "anyone"

    async def handler(session: Session) -> None:
        async for decision in session:
            if type(decision).__name__.lower() == step:
                await trio.sleep_forever()  # the application never answers
            decision.accept()

    config = Config(hostname="mx.test", timeouts=Timeouts(decision=1),
                    authenticator=anyone, auth_requires_tls=False)
    async with tcp_server(config, handler) as server:
        assert server.port is not None
        client = TestClient(await trio.open_tcp_stream("127.0.0.1", server.port))
        greeting = await client.reply()
        if step == "connect":
            assert (greeting.code, greeting.lines) == (
                421, ["4.3.2 Timed out waiting for a decision; try again later"])
        else:
            assert greeting.code == 220 and (await client.command("EHLO c")).code == 250
            reply = await client.command("AUTH PLAIN AGFsaWNlAHNlY3JldA==")
            assert (reply.code, reply.lines) == (
                454, ["4.7.0 Timed out waiting for a decision; try again later"])
        await client.aclose()


async def test_the_tarpit_delay_is_not_the_applications_time_to_decide(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    # The reply delay is the server's own choice: a handler that decides within its
    # deadline gets its answer sent, however long the tarpit then holds the reply.
    config = Config(hostname="mx.test", timeouts=Timeouts(decision=2))

    async def handler(session: Session) -> None:
        async for decision in session:
            if isinstance(decision, trio_smtpd.Connect):
                session.reply_delay = 1.5
            elif isinstance(decision, trio_smtpd.Mail):
                await trio.sleep(1)  # a lookup, well within its 2 s
            decision.accept()

    async with tcp_server(config, handler) as server:
        client = await connect(server)
        assert (await client.command("EHLO c")).code == 250
        start = trio.current_time()
        reply = await client.command("MAIL FROM:<a@b.c>")
        assert (reply.code, trio.current_time() - start) == (250, pytest.approx(2.5, abs=0.2))
        assert (await client.command("QUIT")).code == 221
        await client.aclose()
    assert "took too long" not in caplog.text


# -- 3. Cancelling the consumer of transactions() answers its clients at once ------------

async def test_a_cancelled_consumer_answers_held_and_later_messages_451_at_once(
        autojump_clock: trio.testing.MockClock) -> None:
    async with tcp_server() as server:
        taken = trio.Event()
        consumer = trio.CancelScope()

        async def consume() -> None:
            with consumer:
                async with server.transactions() as transactions:
                    async for _ in transactions:
                        taken.set()
                        await trio.sleep_forever()  # saving it... when Ctrl+C comes

        held, later = await connect(server), await connect(server)
        replies: list[trio_smtpd.testing.ClientReply] = []

        async def send_held() -> None:
            replies.extend(await held.send_message("a@b.c", ["d@e.f"], b"held\r\n"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            nursery.start_soon(send_held)
            await taken.wait()
            start = trio.current_time()
            consumer.cancel()
        assert (replies[-1].code, replies[-1].lines) == (
            451, ["4.3.0 Message not handled; try again later"])
        replies = await later.send_message("a@b.c", ["d@e.f"], b"later\r\n")
        assert (replies[-1].code, replies[-1].lines) == (
            451, ["4.3.0 Nobody is taking messages now; try again later"])
        assert trio.current_time() - start < 1  # at once, not after a timeout
        for client in (held, later):
            await client.aclose()


async def test_messages_queued_when_the_last_consumer_leaves_get_451_at_once(
        autojump_clock: trio.testing.MockClock) -> None:
    async with tcp_server() as server:
        taken, done = trio.Event(), trio.Event()

        async def consume() -> None:
            async with server.transactions() as transactions:
                async for tx in transactions:
                    taken.set()
                    await done.wait()
                    tx.accept()
                    return  # ends normally, a second message queued and never taken

        first, second = await connect(server), await connect(server)
        replies: dict[str, list[trio_smtpd.testing.ClientReply]] = {}

        async def send(name: str, client: TestClient) -> None:
            replies[name] = await client.send_message("a@b.c", ["d@e.f"], b"x\r\n")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            nursery.start_soon(send, "first", first)
            await taken.wait()
            nursery.start_soon(send, "second", second)
            await trio.sleep(1)  # the second message is queued, waiting for a consumer
            assert "second" not in replies
            start = trio.current_time()
            done.set()
        assert replies["first"][-1].code == 250
        assert (replies["second"][-1].code, replies["second"][-1].lines) == (
            451, ["4.3.0 Nobody is taking messages now; try again later"])
        assert trio.current_time() - start < 1  # at once, not after message_decision
        for client in (first, second):
            await client.aclose()


async def test_the_held_message_of_a_cancelled_consumer_gets_451(
        autojump_clock: trio.testing.MockClock) -> None:
    # The README's pattern, cancelled while the consumer holds a message: serve() and
    # the consumer in one nursery, the nursery cancelled (as Ctrl+C does).
    replies: list[list[trio_smtpd.testing.ClientReply]] = []
    async with trio.open_nursery() as outer:
        async def client(server: trio_smtpd.Server) -> None:
            session = await connect(server)
            replies.append(await session.send_message("a@b.c", ["d@e.f"], b"x\r\n"))
            assert (await session.command("QUIT")).code == 221

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                server = await nursery.start(partial(serve, Config(hostname="mx.test"), 0,
                                                     host="127.0.0.1"))
                outer.start_soon(client, server)
                async for _tx in server.transactions():  # no async with: dropped
                    nursery.cancel_scope.cancel()
                    await trio.sleep_forever()

        start = trio.current_time()
        await main()
    assert replies[0][-1].code == 451
    assert trio.current_time() - start < Timeouts().shutdown_grace  # not held for grace


# -- 4. A completed transaction is not followed by an unprompted 421 ---------------------

async def test_shutdown_after_a_message_lets_smtplib_quit_cleanly() -> None:
    async with tcp_server() as server:
        port = server.port

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                smtp.sendmail("a@b.c", ["d@e.f"], b"x\r\n")
            # Leaving the with block sent QUIT and read its 221: no exception.

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume_then_shut_down, server)
            await trio.to_thread.run_sync(send)


#: What every client is told at shutdown.
SHUTTING_DOWN = (421, ["4.3.2 Service shutting down, try again later"])


async def delivered(server: trio_smtpd.Server) -> TestClient:
    """A client that has read the greeting and had its 250 for one message."""
    client = await connect(server)
    replies = await client.send_message("a@b.c", ["d@e.f"], b"x\r\n")
    assert replies[-1].code == 250
    return client


async def consume_then_shut_down(server: trio_smtpd.Server) -> None:
    async with server.transactions() as transactions:
        async for tx in transactions:
            server.shutdown()
            tx.accept()


async def test_a_command_after_the_transaction_is_answered_421_not_before_it(
        autojump_clock: trio.testing.MockClock) -> None:
    async with tcp_server() as server, trio.open_nursery() as nursery:
        nursery.start_soon(consume_then_shut_down, server)
        client = await delivered(server)
        reply = await client.command("MAIL FROM:<a@b.c>")
        assert (reply.code, reply.lines) == SHUTTING_DOWN
        assert await client.closed()
        await client.aclose()


async def test_a_shutdown_after_the_250_lets_quit_have_its_221(
        autojump_clock: trio.testing.MockClock) -> None:
    async with tcp_server() as server, trio.open_nursery() as nursery:
        nursery.start_soon(accept_all, server)
        client = await delivered(server)
        server.shutdown()  # the client has its 250 and is about to say QUIT
        await trio.sleep(1)
        reply = await client.command("QUIT")
        assert (reply.code, reply.lines[0].split()[0]) == (221, "2.0.0")
        assert await client.closed()
        await client.aclose()


async def accept_all(server: trio_smtpd.Server) -> None:
    async with server.transactions() as transactions:
        async for tx in transactions:
            tx.accept()


async def test_a_client_silent_after_its_last_transaction_gets_the_shutdown_421(
        autojump_clock: trio.testing.MockClock) -> None:
    # It had its 250 and a short while for its next command (QUIT, usually); it said
    # nothing, and is told why the server is closing, not that it was too slow.
    async with tcp_server() as server, trio.open_nursery() as nursery:
        nursery.start_soon(consume_then_shut_down, server)
        client = await delivered(server)
        start = trio.current_time()
        reply = await client.reply()
        assert (reply.code, reply.lines) == SHUTTING_DOWN
        # Before the grace period ends: this is the wait for a last command.
        assert trio.current_time() - start < Timeouts().shutdown_grace
        assert await client.closed()
        await client.aclose()


async def test_shutdown_with_no_grace_tells_every_client_421_at_once(
        autojump_clock: trio.testing.MockClock) -> None:
    start = math.inf
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve, Config(hostname="mx.test"), 0,
                                             host="127.0.0.1"))
        idle, busy = await connect(server), await connect(server)
        assert (await idle.command("EHLO idle")).code == 250
        for line in ["EHLO busy", "MAIL FROM:<a@b.c>", "RCPT TO:<d@e.f>", "DATA"]:
            await busy.command(line)
        await busy.send(b"half a message\r\n")
        await trio.sleep(1)
        start = trio.current_time()
        server.shutdown(grace=0)
        for client in (idle, busy):
            reply = await client.reply()
            assert (reply.code, reply.lines) == SHUTTING_DOWN
            assert await client.closed()
            await client.aclose()
    assert trio.current_time() - start < 1  # serve() has returned, without a grace period


async def test_a_handler_cut_off_by_shutdown_is_not_told_it_took_too_long(
        autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture) -> None:
    # Found by review (2026-12-02): the end of the grace period cancelled the handler's
    # scope, which read as a decision timeout: the client got 451 4.4.3 before its 421,
    # and the log said the application took too long, 300 s before its deadline.
    async def stuck(session: Session) -> None:
        async for decision in session:
            if isinstance(decision, trio_smtpd.Mail):
                await trio.sleep_forever()
            decision.accept()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve, Config(hostname="mx.test"), 0,
                                             host="127.0.0.1", handler=stuck))
        client = await connect(server)
        assert (await client.command("EHLO c")).code == 250
        await client.send(b"MAIL FROM:<a@b.c>\r\n")
        await trio.sleep(1)
        server.shutdown(grace=2)
        reply = await client.reply()
        assert (reply.code, reply.lines) == SHUTTING_DOWN
        assert await client.closed()
        await client.aclose()
    assert "took too long" not in caplog.text


# -- 5. A decision made too late raises ---------------------------------------------------

async def test_a_message_decision_after_its_deadline_raises(
        autojump_clock: trio.testing.MockClock) -> None:
    config = Config(hostname="mx.test", timeouts=Timeouts(message_decision=60))
    late: list[BaseException] = []
    async with tcp_server(config) as server:
        async def consume() -> None:
            async with server.transactions() as transactions:
                async for tx in transactions:
                    await trio.sleep(61)
                    with pytest.raises(UsageError) as error:
                        tx.accept()
                    late.append(error.value)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            client = await connect(server)
            replies = await client.send_message("a@b.c", ["d@e.f"], b"x\r\n")
            assert replies[-1].code == 451
            await trio.sleep(2)
            await client.aclose()
            nursery.cancel_scope.cancel()
    assert "too late" in str(late[0])


async def test_an_envelope_decision_after_its_deadline_raises(
        autojump_clock: trio.testing.MockClock) -> None:
    config = Config(hostname="mx.test", timeouts=Timeouts(decision=10))
    kept: list[trio_smtpd.Decision] = []

    async def handler(session: Session) -> None:
        async for decision in session:
            if isinstance(decision, Rcpt):
                kept.append(decision)
                await trio.sleep(11)
            decision.accept()

    async with tcp_server(config, handler) as server:
        client = await connect(server)
        for line in ("EHLO c", "MAIL FROM:<a@b.c>"):
            await client.command(line)
        assert (await client.command("RCPT TO:<d@e.f>")).code == 451
        await client.aclose()
    with pytest.raises(UsageError, match="already answered"):
        kept[0].accept()


# -- 6. One argument order, one set of names ---------------------------------------------

async def test_every_answer_takes_code_text_enhanced_and_multiline_text() -> None:
    async def handler(session: Session) -> None:
        async for decision in session:
            if isinstance(decision, trio_smtpd.Mail):
                decision.tempfail(code=450, text=["Greylisted", "come back in 5 minutes"],
                                  enhanced="4.7.1")
            elif isinstance(decision, trio_smtpd.Rcpt):
                decision.reject(enhanced="5.7.1", code=550, text="No")
            else:
                decision.accept()

    async with tcp_server(handler=handler) as server:
        client = await connect(server)
        await client.command("EHLO c")
        reply = await client.command("MAIL FROM:<a@b.c>")
        assert (reply.code, reply.lines) == (450, ["4.7.1 Greylisted",
                                                   "4.7.1 come back in 5 minutes"])
        await client.aclose()


def test_answers_that_the_protocol_does_not_allow_are_refused_at_once() -> None:
    info = trio_smtpd.SessionInfo("1", None, None, False, datetime.now(UTC))
    connect = trio_smtpd.Connect(info)
    with pytest.raises(ValueError, match="554"):
        connect.reject(550)  # a greeting is refused with 554 (RFC 5321 3.1)
    with pytest.raises(ValueError, match="421"):
        connect.tempfail(450)
    with pytest.raises(ValueError):
        connect.accept(250)
    assert not connect.decided  # a refused call answers nothing
    connect.reject()
    assert connect.reply is not None and connect.reply.code == 554


async def test_a_message_accepted_with_another_2xx_than_250_is_refused_at_once() -> None:
    # Found by review: tx.accept(251) returned, then the engine refused the answer
    # inside the server's handler, and the client of an accepted message got 421.
    errors: list[str] = []
    async with tcp_server(LMTP) as server:
        async def consume() -> None:
            async with server.transactions() as transactions:
                async for tx in transactions:
                    with pytest.raises(ValueError) as error:
                        tx.accept(251)
                    errors.append(str(error.value))
                    with pytest.raises(ValueError) as error:
                        tx.accept_recipient(0, 252)
                    errors.append(str(error.value))
                    tx.accept()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            client = await connect(server)
            replies = await lmtp_transaction(client, ["a@x.test"])
            await client.aclose()
            nursery.cancel_scope.cancel()
    assert replies == ["250 2.1.5 <a@x.test> delivered"]
    assert all("250" in error for error in errors), errors


# -- The time to decide is a cancel scope deadline the handler can see ---------------------

async def test_the_deadline_to_decide_is_the_handlers_effective_deadline(
        autojump_clock: trio.testing.MockClock) -> None:
    config = Config(hostname="mx.test",
                    timeouts=Timeouts(decision=40, message_decision=90, command=500))
    seen: dict[str, float] = {}

    async def handler(session: Session) -> None:
        async for decision in session:
            seen[type(decision).__name__] = (trio.current_effective_deadline()
                                             - trio.current_time())
            await trio.sleep(5)  # (a lookup: the deadline holds while the handler waits)
            decision.accept()

    async with tcp_server(config, handler) as server:
        client = await connect(server)
        await client.send_message("a@b.c", ["d@e.f"], b"x\r\n")
        await client.aclose()
    # At most SLACK late (see trio_smtpd/_appdeadline.py), never early.
    for name in ("Hello", "Mail", "Rcpt", "DataStart"):
        assert 40 <= seen[name] <= 40 + SLACK, (name, seen)
    assert 90 <= seen["Message"] <= 90 + SLACK
