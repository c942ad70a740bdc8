"""Command handling and sequencing of the sans-I/O engine (RFC 5321 4.1, 4.1.4)."""

from __future__ import annotations

import pytest

from tests.engine import Engine, ready
from trio_smtpd._config import ProtocolConfig
from trio_smtpd._connection import NEED_DATA, ServerConnection, UsageError
from trio_smtpd._events import (
    ConnectionClosed,
    HelloCommand,
    MailCommand,
    RcptCommand,
    Request,
    Reset,
)
from trio_smtpd._replies import Reply

ENVELOPE = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"


def test_engine_imports_neither_trio_nor_socket() -> None:
    import ast
    import pathlib

    import trio_smtpd

    core = ["_address", "_commands", "_config", "_connection", "_events", "_framing",
            "_params", "_replies"]
    root = pathlib.Path(trio_smtpd.__file__).parent
    for name in core:
        tree = ast.parse((root / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                assert module.split(".")[0] not in {"trio", "socket", "ssl", "asyncio",
                                                    "select", "selectors"}, (name, module)


def test_greeting_default_and_custom() -> None:
    engine = Engine(ProtocolConfig(hostname="mx.example.org"))
    assert engine.start() == b"220 mx.example.org ESMTP trio_smtpd ready\r\n"

    def greet(conn: ServerConnection, decision: Request) -> None:
        conn.respond(Reply(220, "hello there"))

    assert Engine(decide=greet).start() == b"220 hello there\r\n"


def test_greeting_554_then_only_quit() -> None:
    def refuse(conn: ServerConnection, decision: Request) -> None:
        conn.respond(Reply(554, "No SMTP service here", "5.7.1"))

    engine = Engine(decide=refuse)
    assert engine.start() == b"554 5.7.1 No SMTP service here\r\n"
    assert engine.codes(b"EHLO x\r\nMAIL FROM:<a@b.c>\r\nNOOP\r\n") == [503, 503, 503]
    assert engine.codes(b"QUIT\r\n") == [221]
    assert engine.conn.closed


def test_greeting_421_closes() -> None:
    def busy(conn: ServerConnection, decision: Request) -> None:
        conn.respond(Reply(421, "busy", "4.3.2"))

    engine = Engine(decide=busy)
    assert engine.start() == b"421 4.3.2 busy\r\n"
    assert isinstance(engine.events[-1], ConnectionClosed)
    assert engine.conn.closed


def test_ehlo_advertises_exactly_what_is_enabled() -> None:
    engine = Engine(ProtocolConfig(hostname="mx", dsn=True))
    engine.start()
    lines = engine.lines(b"EHLO client.example\r\n")
    assert lines == [
        "250-mx greets client.example",
        "250-PIPELINING",
        "250-8BITMIME",
        "250-SIZE 33554432",
        "250-ENHANCEDSTATUSCODES",
        "250-SMTPUTF8",
        "250-CHUNKING",
        "250-BINARYMIME",
        "250-DSN",
        "250-LIMITS RCPTMAX=100",
        "250 HELP",
    ]


def test_ehlo_minimal_config() -> None:
    config = ProtocolConfig(pipelining=False, eightbitmime=False, smtputf8=False,
                            chunking=False, dsn=False, enhanced_status_codes=False,
                            max_message_size=None)
    engine = ready(config, hello=b"")
    assert engine.lines(b"EHLO c\r\n") == ["250-localhost greets c", "250-SIZE",
                                           "250-LIMITS RCPTMAX=100", "250 HELP"]
    # Without ENHANCEDSTATUSCODES no reply carries one.
    assert engine.lines(b"NOOP\r\n") == ["250 OK"]


def test_ehlo_starttls_auth_requiretls_depend_on_tls() -> None:
    config = ProtocolConfig(tls_available=True, auth_mechanisms=("PLAIN", "LOGIN"))
    plain = ready(config, hello=b"").lines(b"EHLO c\r\n")
    assert "250-STARTTLS" in plain
    assert not any("AUTH" in line for line in plain)
    assert "250-REQUIRETLS" not in plain
    secure = ready(config, hello=b"", tls_active=True).lines(b"EHLO c\r\n")
    assert "250-STARTTLS" not in secure
    assert "250-AUTH PLAIN LOGIN" in secure
    assert "250-REQUIRETLS" in secure
    cleartext_ok = ProtocolConfig(auth_mechanisms=("PLAIN",), auth_requires_tls=False)
    assert "250-AUTH PLAIN" in ready(cleartext_ok, hello=b"").lines(b"EHLO c\r\n")


def test_helo_gives_single_line_and_no_extensions() -> None:
    engine = ready(hello=b"")
    assert engine.lines(b"HELO client\r\n") == ["250 localhost greets client"]
    # ESMTP parameters are not available after HELO.
    assert engine.lines(b"MAIL FROM:<a@b.c> SIZE=10\r\n") == [
        "555 5.5.4 Parameters need EHLO, not HELO"]
    assert engine.codes(b"MAIL FROM:<a@b.c>\r\n") == [250]


@pytest.mark.parametrize("verb", [b"HELO", b"EHLO"])
def test_hello_needs_argument(verb: bytes) -> None:
    engine = ready(hello=b"")
    assert engine.lines(verb + b"\r\n") == [f"501 5.5.4 Syntax: {verb.decode()} <hostname>"]


def test_verbs_are_case_insensitive() -> None:
    engine = ready(hello=b"")
    assert engine.codes(b"ehlo c\r\nmail from:<a@b.c>\r\nrcpt to:<d@e.f>\r\nRsEt\r\nnoop\r\n"
                        b"quit\r\n") == [250, 250, 250, 250, 250, 221]


def test_unknown_and_empty_commands() -> None:
    engine = ready()
    assert engine.lines(b"FOO bar\r\n") == ["500 5.5.1 Command unrecognized"]
    assert engine.lines(b"\r\n") == ["500 5.5.2 Empty command line"]
    assert engine.lines(b"LHLO c\r\n") == ["500 5.5.1 Command unrecognized"]
    assert engine.lines(b"\xff\xfe\r\n") == ["500 5.5.2 Command line is not valid UTF-8"]
    assert engine.lines(b"NOOP a\x00b\r\n") == ["501 5.5.2 Control character in command "
                                                "arguments"]


def test_mail_before_hello_is_503() -> None:
    engine = ready(hello=b"")
    assert engine.lines(b"MAIL FROM:<a@b.c>\r\n") == ["503 5.5.1 Send HELO/EHLO first"]


def test_rcpt_before_mail_is_503() -> None:
    assert ready().lines(b"RCPT TO:<a@b.c>\r\n") == ["503 5.5.1 Need MAIL command first"]


def test_data_before_mail_and_without_recipients() -> None:
    engine = ready()
    assert engine.lines(b"DATA\r\n") == ["503 5.5.1 Need MAIL command first"]
    assert engine.codes(b"MAIL FROM:<a@b.c>\r\n") == [250]
    assert engine.lines(b"DATA\r\n") == ["554 5.5.1 No valid recipients"]
    assert engine.lines(b"BDAT 3 LAST\r\nabc") == ["554 5.5.1 No valid recipients"]


def test_nested_mail_is_503() -> None:
    engine = ready()
    assert engine.codes(b"MAIL FROM:<a@b.c>\r\n") == [250]
    assert engine.lines(b"MAIL FROM:<a@b.c>\r\n") == ["503 5.5.1 Sender already specified"]


def test_rset_clears_transaction() -> None:
    engine = ready()
    engine.send(ENVELOPE)
    assert engine.codes(b"RSET\r\n") == [250]
    assert isinstance(engine.events[-1], Reset)
    assert not engine.conn.in_transaction
    assert engine.codes(b"RCPT TO:<a@b.c>\r\n") == [503]
    assert engine.codes(b"MAIL FROM:<a@b.c>\r\n") == [250]
    assert engine.codes(b"RSET extra\r\n") == [501]


def test_new_ehlo_clears_transaction() -> None:
    engine = ready()
    engine.send(ENVELOPE)
    assert engine.codes(b"EHLO again\r\n") == [250]
    kinds = [type(e) for e in engine.events[-2:]]
    assert kinds == [Reset, HelloCommand]
    assert engine.conn.recipients == []
    assert engine.codes(b"DATA\r\n") == [503]


def test_mail_needs_brackets_and_from() -> None:
    engine = ready()
    assert engine.codes(b"MAIL FROM:a@b.c\r\n") == [501]  # aiosmtpd #563
    assert engine.codes(b"MAIL TO:<a@b.c>\r\n") == [501]
    assert engine.codes(b"MAIL\r\n") == [501]
    assert engine.codes(b"MAIL FROM: <a@b.c>\r\n") == [250]  # a space after ':' is tolerated


def test_null_sender_and_postmaster() -> None:
    engine = ready()
    assert engine.codes(b"MAIL FROM:<>\r\nRCPT TO:<postmaster>\r\n") == [250, 250]
    mail, rcpt = engine.of_type(MailCommand)[0], engine.of_type(RcptCommand)[0]
    assert isinstance(mail, MailCommand) and mail.sender is None
    assert isinstance(rcpt, RcptCommand) and rcpt.recipient.local_part.lower() == "postmaster"


def test_dsn_is_not_offered_unless_the_application_will_honour_it() -> None:
    # RFC 3461: a server that offers DSN takes over the duty to send delivery reports.
    assert "250-DSN" not in ready(hello=b"").lines(b"EHLO c\r\n")
    assert ready().codes(b"MAIL FROM:<a@b.c> RET=HDRS\r\n") == [555]
    assert ready().codes(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f> NOTIFY=NEVER\r\n") == [
        250, 555]


def test_mail_and_rcpt_parameters_are_handed_up() -> None:
    engine = ready(ProtocolConfig(dsn=True))
    assert engine.codes(b"MAIL FROM:<a@b.c> SIZE=1000 BODY=8BITMIME RET=HDRS ENVID=x+2By\r\n"
                        b"RCPT TO:<d@e.f> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;d@e.f\r\n") == [
                            250, 250]
    mail, rcpt = engine.of_type(MailCommand)[0], engine.of_type(RcptCommand)[0]
    assert isinstance(mail, MailCommand) and isinstance(rcpt, RcptCommand)
    assert (mail.params.size, mail.params.body, mail.params.ret) == (1000, "8BITMIME", "HDRS")
    assert mail.params.envid == "x+y"
    assert rcpt.params.notify == frozenset({"SUCCESS", "FAILURE"})
    assert rcpt.params.orcpt is not None and rcpt.params.orcpt.address == "d@e.f"


def test_mail_parameter_errors() -> None:
    engine = ready(ProtocolConfig(max_message_size=1000))
    assert engine.codes(b"MAIL FROM:<a@b.c> FOO=1\r\n") == [555]
    assert engine.codes(b"MAIL FROM:<a@b.c> SIZE=1 SIZE=2\r\n") == [555]
    assert engine.codes(b"MAIL FROM:<a@b.c> SIZE=x\r\n") == [501]
    assert engine.codes(b"MAIL FROM:<a@b.c> SIZE=1001\r\n") == [552]
    assert engine.codes(b"MAIL FROM:<a@b.c> SIZE=1000\r\n") == [250]


def test_mail_auth_parameter_empty_is_accepted() -> None:
    # aiosmtpd #299: Office 365 sends AUTH=<>.
    config = ProtocolConfig(auth_mechanisms=("PLAIN",))
    engine = ready(config, tls_active=True)
    assert engine.codes(b"MAIL FROM:<a@b.c> AUTH=<>\r\n") == [250]
    mail = engine.of_type(MailCommand)[0]
    assert isinstance(mail, MailCommand) and mail.params.auth == "<>"


def test_requiretls_only_under_tls() -> None:
    assert ready().codes(b"MAIL FROM:<a@b.c> REQUIRETLS\r\n") == [555]
    assert ready(tls_active=True).codes(b"MAIL FROM:<a@b.c> REQUIRETLS\r\n") == [250]


def test_smtputf8_addresses() -> None:
    engine = ready()
    assert engine.lines("MAIL FROM:<jöran@exämple.org>\r\n".encode()) == [
        "553 5.6.7 Non-ASCII sender address requires SMTPUTF8"]
    assert engine.codes("MAIL FROM:<jöran@exämple.org> SMTPUTF8\r\n".encode()) == [250]
    assert engine.codes("RCPT TO:<用户@例子.广告>\r\n".encode()) == [250]
    engine.send(b"RSET\r\n")
    assert engine.codes(b"MAIL FROM:<a@b.c>\r\n") == [250]
    assert engine.lines("RCPT TO:<用户@例子.广告>\r\n".encode()) == [
        "553 5.6.7 Non-ASCII recipient address requires SMTPUTF8"]
    off = ready(ProtocolConfig(smtputf8=False))
    assert off.codes("MAIL FROM:<jöran@example.org> SMTPUTF8\r\n".encode()) == [553]


def test_vrfy_expn_never_disclose() -> None:
    engine = ready()
    assert engine.lines(b"VRFY root\r\n") == [
        "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"]
    assert engine.codes(b"VRFY\r\n") == [501]
    assert engine.lines(b"EXPN staff\r\n") == ["502 5.5.1 EXPN not available"]


def test_help_and_noop() -> None:
    engine = ready()
    lines = engine.lines(b"HELP\r\n")
    assert lines[0].startswith("214-2.0.0 Commands: ") and lines[-1].startswith("214 ")
    assert "MAIL" in lines[0] and "LHLO" not in lines[0]
    assert engine.lines(b"NOOP anything\r\n") == ["250 2.0.0 OK"]


def test_quit_closes_and_ignores_the_rest() -> None:
    engine = ready()
    assert engine.lines(b"QUIT\r\nNOOP\r\n") == ["221 2.0.0 localhost closing connection"]
    assert engine.conn.closed
    closed = engine.events[-1]
    assert isinstance(closed, ConnectionClosed) and closed.reason == "QUIT"
    assert engine.conn.next_event() is NEED_DATA


def test_quit_with_argument_is_501() -> None:
    assert ready().codes(b"QUIT now\r\n") == [501]


def test_eof_closes_quietly() -> None:
    engine = ready()
    assert engine.send(b"NOOP", eof=True) == b""
    closed = engine.events[-1]
    assert isinstance(closed, ConnectionClosed) and closed.reason == "EOF"


def test_application_rejections_keep_state() -> None:
    def decide(conn: ServerConnection, decision: Request) -> None:
        if isinstance(decision, RcptCommand) and decision.recipient.local_part == "nobody":
            conn.respond(Reply(550, "No such user", "5.1.1"))
        elif isinstance(decision, MailCommand) and decision.sender is None:
            conn.respond(Reply(451, "Try later", "4.7.1"))
        else:
            conn.respond()

    engine = ready(decide=decide)
    assert engine.lines(b"MAIL FROM:<>\r\n") == ["451 4.7.1 Try later"]
    assert engine.codes(b"RCPT TO:<x@y.z>\r\n") == [503]
    assert engine.codes(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<nobody@y.z>\r\nRCPT TO:<x@y.z>\r\n"
                        ) == [250, 550, 250]
    assert [r.address.local_part for r in engine.conn.recipients] == ["x"]


def test_application_421_closes() -> None:
    def decide(conn: ServerConnection, decision: Request) -> None:
        conn.respond(Reply(421, "shutting down", "4.3.2") if isinstance(decision, MailCommand)
                     else None)

    engine = ready(decide=decide)
    assert engine.lines(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n") == [
        "421 4.3.2 shutting down"]
    assert engine.conn.closed


def test_positive_reply_with_wrong_code_is_a_usage_error() -> None:
    engine = ready()
    engine.conn.receive_data(b"MAIL FROM:<a@b.c>\r\n")
    assert isinstance(engine.conn.next_event(), MailCommand)
    with pytest.raises(UsageError):
        engine.conn.next_event()  # decision still pending
    with pytest.raises(UsageError):
        engine.conn.respond(Reply(354, "go ahead"))
    engine.conn.respond(Reply(250, "fine", "2.1.0"))
    assert engine.conn.data_to_send() == b"250 2.1.0 fine\r\n"


def test_pipelined_group_with_rejection_stays_in_sync() -> None:
    def decide(conn: ServerConnection, decision: Request) -> None:
        bad = isinstance(decision, RcptCommand) and decision.recipient.domain == "bad.example"
        conn.respond(Reply(550, "no", "5.1.1") if bad else None)

    engine = ready(decide=decide)
    group = (b"MAIL FROM:<a@b.c>\r\nRCPT TO:<x@bad.example>\r\nRCPT TO:<y@ok.example>\r\n"
             b"BOGUS\r\nRCPT TO:<z@ok.example>\r\nDATA\r\n")
    assert engine.codes(group) == [250, 550, 250, 500, 250, 354]
    assert engine.codes(b"hi\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<q@ok.example>\r\nQUIT\r\n") == [
        250, 250, 250, 221]


def test_pipelined_commands_split_across_reads() -> None:
    engine = ready(hello=b"")
    script = b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n"
    out = b"".join(engine.send(script[i:i + 1]) for i in range(len(script)))
    codes = [int(line[:3]) for line in out.decode().splitlines() if line[3] != "-"]
    assert codes == [250, 250, 250, 354, 250, 221]
    assert engine.body() == b"x\r\n"


def test_bare_lf_command_lines_are_tolerated() -> None:
    assert ready().codes(b"NOOP\nNOOP\r\n") == [250, 250]


def test_lmtp_uses_lhlo_only() -> None:
    engine = ready(ProtocolConfig(lmtp=True), hello=b"")
    assert engine.lines(b"HELO c\r\n") == ["500 5.5.1 Use LHLO in LMTP"]
    assert engine.lines(b"EHLO c\r\n") == ["500 5.5.1 Use LHLO in LMTP"]
    assert engine.lines(b"MAIL FROM:<a@b.c>\r\n") == ["503 5.5.1 Send LHLO first"]
    assert engine.codes(b"LHLO c\r\n") == [250]
    assert engine.conn.hello_verb == "LHLO"
