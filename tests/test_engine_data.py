"""DATA and BDAT framing, SMTP smuggling, LMTP per-recipient replies."""

from __future__ import annotations

import pytest

from tests.engine import Engine, ready
from trio_smtpd._config import ProtocolConfig
from trio_smtpd._connection import ServerConnection
from trio_smtpd._events import (
    BodyStart,
    ConnectionClosed,
    EndOfMessage,
    MessageAborted,
    Request,
)
from trio_smtpd._replies import Reply

ENVELOPE = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"


def in_data(config: ProtocolConfig | None = None) -> Engine:
    engine = ready(config)
    assert engine.codes(ENVELOPE + b"DATA\r\n") == [250, 250, 354]
    return engine


def ends(engine: Engine) -> list[EndOfMessage]:
    return [e for e in engine.events if isinstance(e, EndOfMessage)]


def test_simple_message_and_354_text() -> None:
    engine = ready()
    out = engine.lines(ENVELOPE + b"DATA\r\n")
    assert out[-1] == "354 End data with <CR><LF>.<CR><LF>"
    assert engine.lines(b"Subject: hi\r\n\r\nbody\r\n.\r\n") == ["250 2.0.0 Message accepted"]
    assert engine.body() == b"Subject: hi\r\n\r\nbody\r\n"
    assert ends(engine)[0].size == len(engine.body())
    assert not engine.conn.in_transaction


def test_empty_message_gets_a_reply() -> None:
    engine = in_data()
    assert engine.codes(b".\r\n") == [250]
    assert engine.body() == b""
    assert ends(engine)[0].size == 0


def test_dot_unstuffing() -> None:
    engine = in_data()
    engine.send(b"..leading\r\n...\r\nmid.dle\r\n..\r\n.\r\n")
    assert engine.body() == b".leading\r\n..\r\nmid.dle\r\n.\r\n"


def test_dot_unstuffing_across_reads() -> None:
    engine = in_data()
    for piece in [b"a\r", b"\n.", b".b\r\n", b".", b"\r", b"\n"]:
        engine.send(piece)
    assert engine.body() == b"a\r\n.b\r\n"
    assert len(ends(engine)) == 1


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n",
                                      b"\r\n.\r", b"\r.\r\n"])
def test_smuggling_sequences_never_end_data(fake_end: bytes) -> None:
    # CVE-2023-51764 class: only CRLF.CRLF ends DATA; the smuggled commands are data.
    engine = in_data()
    smuggled = (b"hello" + fake_end + b"MAIL FROM:<evil@x.y>\r\nRCPT TO:<v@x.y>\r\nDATA\r\n"
                b"forged\r\n")
    assert engine.send(smuggled) == b""
    assert ends(engine) == []
    out = engine.lines(b".\r\n")
    # Strict default: the bare CR/LF rejects the one message; nothing else happened.
    assert out == ["550 5.6.0 Message refused: bare CR or LF in data; lines must end with CRLF"]
    assert ends(engine) == []
    aborted = engine.of_type(MessageAborted)
    assert len(aborted) == 1
    assert engine.conn.recipients == []


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n"])
def test_smuggling_in_keep_mode_is_data(fake_end: bytes) -> None:
    engine = in_data(ProtocolConfig(bare_line_endings="keep"))
    engine.send(b"x" + fake_end + b"MAIL FROM:<evil@x.y>\r\n")
    assert ends(engine) == []
    assert engine.codes(b".\r\n") == [250]
    assert len(ends(engine)) == 1
    # A CRLF-delimited line starting with "." still loses that dot (RFC 5321 4.5.2).
    sent = b"x" + fake_end + b"MAIL FROM:<evil@x.y>\r\n"
    assert engine.body() == sent.replace(b"\r\n.", b"\r\n")


def test_bare_lf_is_rejected_after_the_real_end_and_session_continues() -> None:
    engine = in_data()
    assert engine.send(b"line one\nline two\r\n") == b""
    assert engine.codes(b".\r\n") == [550]
    assert engine.codes(ENVELOPE + b"DATA\r\nok\r\n.\r\n") == [250, 250, 354, 250]
    assert len(ends(engine)) == 1


def test_data_line_length_at_and_past_limit() -> None:
    engine = in_data()
    engine.send(b"a" * 998 + b"\r\n.\r\n")
    assert len(ends(engine)) == 1
    engine.send(ENVELOPE + b"DATA\r\n")
    assert engine.lines(b"a" * 999 + b"\r\n.\r\n") == [
        "550 5.6.0 Message refused: a line is longer than 1000 octets"]
    assert len(ends(engine)) == 1


def test_huge_data_line_keeps_memory_bounded() -> None:
    engine = in_data()
    block = b"x" * 65536
    for _ in range(256):  # 16 MiB with no line end
        assert engine.send(block) == b""
        assert engine.conn.buffered < 2000
    assert engine.codes(b"\r\n.\r\n") == [550]
    assert engine.codes(b"NOOP\r\n") == [250]


def test_message_size_at_and_past_limit() -> None:
    config = ProtocolConfig(max_message_size=1000)
    engine = in_data(config)
    engine.send(b"a" * 98 + b"\r\n" + (b"b" * 98 + b"\r\n") * 9 + b".\r\n")  # exactly 1000
    assert ends(engine)[0].size == 1000
    engine.send(ENVELOPE + b"DATA\r\n")
    out = engine.lines((b"c" * 98 + b"\r\n") * 10 + b"d\r\n" + b"more\r\n" * 100 + b".\r\n")
    assert out == ["552 5.3.4 Message exceeds fixed maximum message size"]
    assert len(ends(engine)) == 1
    assert engine.codes(b"NOOP\r\n") == [250]


# Every size limit at exactly the limit and one octet past it: a check off by one
# (``>=``, or ``> limit + 1``) must fail here, not only by luck in a property test.
LIMIT = 1000
TOO_BIG = "552 5.3.4 Message exceeds fixed maximum message size"


def stuffed_message(size: int) -> bytes:
    """DATA for a message of exactly ``size`` octets (its final CRLF included), most of
    its lines dot-stuffed: the limit is on the message, not on the octets on the wire."""
    stuffed = b".." + b"x" * 96 + b"\r\n"  # 100 octets on the wire, 99 in the message
    count = (size - 2) // 99
    last = b"y" * (size - 99 * count - 2) + b"\r\n"
    return stuffed * count + last + b".\r\n"


@pytest.mark.parametrize(("size", "reply"), [(LIMIT, "250 2.0.0 Message accepted"),
                                             (LIMIT + 1, TOO_BIG)])
def test_data_at_and_one_octet_past_the_size_limit(size: int, reply: str) -> None:
    engine = in_data(ProtocolConfig(max_message_size=LIMIT))
    assert engine.lines(stuffed_message(size)) == [reply]
    if size == LIMIT:
        assert ends(engine)[0].size == LIMIT == len(engine.body())
    else:
        assert ends(engine) == []
    assert engine.codes(b"NOOP\r\n") == [250]


@pytest.mark.parametrize(("chunks", "replies"), [
    ([LIMIT], ["250 2.0.0 Message accepted"]),
    ([LIMIT + 1], [TOO_BIG]),
    ([LIMIT - 1, 1], ["250 2.0.0 999 octets received", "250 2.0.0 Message accepted"]),
    ([LIMIT, 1], ["250 2.0.0 1000 octets received", TOO_BIG]),
])
def test_bdat_at_and_one_octet_past_the_size_limit(chunks: list[int],
                                                   replies: list[str]) -> None:
    engine = ready(ProtocolConfig(max_message_size=LIMIT))
    engine.send(ENVELOPE)
    out = []
    for n, size in enumerate(chunks):
        last = b" LAST" if n == len(chunks) - 1 else b""
        out += engine.lines(b"BDAT %d%s\r\n" % (size, last) + b"z" * size)
    assert out == replies
    accepted = replies[-1].startswith("250")
    assert [e.size for e in ends(engine)] == ([sum(chunks)] if accepted else [])
    assert engine.codes(b"NOOP\r\n") == [250]  # the refused chunk was consumed, not read


@pytest.mark.parametrize(("size", "reply"), [
    (LIMIT, "250 2.1.0 Sender OK"),
    (LIMIT + 1, "552 5.3.4 Message size exceeds fixed maximum message size"),
])
def test_size_parameter_at_and_one_past_the_limit(size: int, reply: str) -> None:
    engine = ready(ProtocolConfig(max_message_size=LIMIT))
    assert engine.lines(b"MAIL FROM:<a@b.c> SIZE=%d\r\n" % size) == [reply]


def test_rejected_message_and_lmtp_replies() -> None:
    def decide(conn: ServerConnection, decision: Request) -> None:
        if isinstance(decision, EndOfMessage):
            conn.respond_per_recipient([None, Reply(452, "mailbox full", "4.2.2"), None])
        else:
            conn.respond()

    engine = ready(ProtocolConfig(lmtp=True), decide=decide, hello=b"LHLO c\r\n")
    engine.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<one@x.y>\r\nRCPT TO:<bad@x.y>\r\n"
                b"RCPT TO:<nobody>\r\nRCPT TO:<three@x.y>\r\nDATA\r\n")
    assert engine.lines(b"hi\r\n.\r\n") == [
        "250 2.1.5 <one@x.y> delivered",
        "452 4.2.2 mailbox full",
        "250 2.1.5 <three@x.y> delivered",
    ]


def test_lmtp_single_reply_applies_to_every_recipient() -> None:
    engine = ready(ProtocolConfig(lmtp=True), hello=b"LHLO c\r\n")
    engine.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<one@x.y>\r\nRCPT TO:<two@x.y>\r\nDATA\r\n")
    assert engine.codes(b"hi\r\n.\r\n") == [250, 250]


def test_smtp_message_rejection() -> None:
    def decide(conn: ServerConnection, decision: Request) -> None:
        conn.respond(Reply(554, "spam", "5.7.1") if isinstance(decision, EndOfMessage)
                     else None)

    engine = in_data()
    engine.decide = decide
    assert engine.lines(b"buy now\r\n.\r\n") == ["554 5.7.1 spam"]
    assert not engine.conn.in_transaction


def test_data_start_rejected_keeps_transaction() -> None:
    def decide(conn: ServerConnection, decision: Request) -> None:
        conn.respond(Reply(451, "later", "4.3.0") if isinstance(decision, BodyStart) else None)

    engine = ready(decide=decide)
    assert engine.codes(ENVELOPE + b"DATA\r\n") == [250, 250, 451]
    assert engine.conn.in_transaction
    assert engine.codes(b"RSET\r\n") == [250]


def test_eof_mid_data_aborts_without_reply() -> None:
    engine = in_data()
    assert engine.send(b"partial\r\n", eof=True) == b""
    kinds = [type(e) for e in engine.events[-2:]]
    assert kinds == [MessageAborted, ConnectionClosed]
    aborted = engine.events[-2]
    assert isinstance(aborted, MessageAborted) and aborted.reply is None


# ----------------------------------------------------------------------- BDAT


def test_bdat_chunks() -> None:
    engine = ready()
    engine.send(ENVELOPE)
    assert engine.lines(b"BDAT 5\r\nhel\r\nBDAT 4 LAST\r\nlo\r\n") == [
        "250 2.0.0 5 octets received", "250 2.0.0 Message accepted"]
    assert engine.body() == b"hel\r\nlo\r\n"
    assert ends(engine)[0].size == 9
    assert [e.method for e in engine.of_type(BodyStart)] == ["BDAT"]  # type: ignore[attr-defined]


def test_bdat_binary_content_is_not_unstuffed_or_scanned() -> None:
    engine = ready()
    payload = b"\r\n.\r\nQUIT\r\n\x00\xff\n.\n"
    engine.send(b"MAIL FROM:<a@b.c> BODY=BINARYMIME\r\nRCPT TO:<d@e.f>\r\n")
    assert engine.codes(b"BDAT %d LAST\r\n" % len(payload) + payload) == [250]
    assert engine.body() == payload


def test_bdat_split_across_reads_and_zero_last() -> None:
    engine = ready()
    engine.send(ENVELOPE)
    out = b""
    for piece in [b"BDAT 10\r\n01234", b"5678", b"9BDAT 0 LAST\r\n"]:
        out += engine.send(piece)
    assert out == b"250 2.0.0 10 octets received\r\n250 2.0.0 Message accepted\r\n"
    assert engine.body() == b"0123456789"


def test_bdat_and_data_do_not_mix() -> None:
    engine = ready()
    engine.send(ENVELOPE + b"BDAT 2\r\nab")
    assert engine.codes(b"DATA\r\n") == [503]
    assert engine.codes(b"BDAT 1 LAST\r\nc") == [250]
    engine.send(b"MAIL FROM:<a@b.c> BODY=BINARYMIME\r\nRCPT TO:<d@e.f>\r\n")
    assert engine.lines(b"DATA\r\n") == ["503 5.5.1 BODY=BINARYMIME needs BDAT, not DATA"]


def test_bdat_errors_consume_the_chunk() -> None:
    engine = ready()
    # Out of sequence: the 13 octets "MAIL FROM:<x>" are chunk data, not a command.
    assert engine.codes(b"BDAT 13\r\nMAIL FROM:<x>NOOP\r\n") == [503, 250]
    assert engine.codes(b"BDAT x\r\n") == [501]
    off = ready(ProtocolConfig(chunking=False))
    assert off.codes(b"BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n") == [502, 250]


def test_bdat_over_size_limit() -> None:
    engine = ready(ProtocolConfig(max_message_size=10))
    engine.send(ENVELOPE)
    assert engine.codes(b"BDAT 6\r\n123456") == [250]
    assert engine.lines(b"BDAT 5\r\n12345") == [
        "552 5.3.4 Message exceeds fixed maximum message size"]
    assert len(engine.of_type(MessageAborted)) == 1
    # The transaction failed: later chunks are consumed and refused.
    assert engine.codes(b"BDAT 4 LAST\r\nabcd") == [503]
    assert engine.codes(ENVELOPE + b"BDAT 10 LAST\r\n0123456789") == [250, 250, 250]


def test_bdat_rejected_by_application_consumes_chunk() -> None:
    def decide(conn: ServerConnection, decision: Request) -> None:
        conn.respond(Reply(550, "no", "5.7.1") if isinstance(decision, BodyStart) else None)

    engine = ready(decide=decide)
    engine.send(ENVELOPE)
    assert engine.codes(b"BDAT 6\r\nQUIT\r\nNOOP\r\n") == [550, 250]
    assert not engine.conn.in_transaction
    assert engine.conn._bad_commands == 0


def test_eof_mid_bdat_aborts() -> None:
    engine = ready()
    engine.send(ENVELOPE)
    engine.send(b"BDAT 100\r\nabc", eof=True)
    assert [type(e) for e in engine.events[-2:]] == [MessageAborted, ConnectionClosed]


def test_lmtp_bdat_per_recipient() -> None:
    engine = ready(ProtocolConfig(lmtp=True), hello=b"LHLO c\r\n")
    engine.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<one@x.y>\r\nRCPT TO:<two@x.y>\r\n")
    assert engine.codes(b"BDAT 3 LAST\r\nabc") == [250, 250]


def test_bdat_chunk_is_consumed_even_when_service_was_refused() -> None:
    # Found by the invariant tests: after a 554 greeting, a BDAT chunk's octets were read
    # as a command line and answered a second time.
    def refuse(conn: ServerConnection, decision: Request) -> None:
        conn.respond(Reply(554, "no service", "5.7.1"))

    engine = Engine(decide=refuse)
    engine.start()
    assert engine.codes(b"BDAT 6 LAST\r\nNOOP\r\nQUIT\r\n") == [503, 221]


# Found by review (2026-12-02): an LMTP client waits for one reply per accepted recipient
# after the final dot (RFC 2033 4.2), also when the server itself refuses the message.
@pytest.mark.parametrize("body, code", [
    (b"x" * 200 + b"\r\n", 552),  # over max_message_size
    (b"bare\nline\r\n", 550),  # a bare LF
    (b"y" * 1200 + b"\r\n", 550),  # a line too long
])
def test_lmtp_message_refused_by_the_engine_gets_a_reply_per_recipient(
        body: bytes, code: int) -> None:
    engine = ready(ProtocolConfig(lmtp=True, max_message_size=100), hello=b"LHLO c\r\n")
    engine.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<one@x.y>\r\nRCPT TO:<two@x.y>\r\n"
                b"RCPT TO:<three@x.y>\r\nDATA\r\n")
    assert engine.codes(body + b".\r\n") == [code] * 3
    assert not ends(engine)
    assert engine.codes(b"NOOP\r\n") == [250]  # and the next reply is the NOOP's own


def test_lmtp_bdat_refused_by_the_engine_gets_a_reply_per_recipient() -> None:
    engine = ready(ProtocolConfig(lmtp=True, max_message_size=100), hello=b"LHLO c\r\n")
    engine.send(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<one@x.y>\r\nRCPT TO:<two@x.y>\r\n")
    assert engine.codes(b"BDAT 200 LAST\r\n" + b"z" * 200) == [552, 552]
    assert engine.codes(b"NOOP\r\n") == [250]


# Found by review: RFC 5321 4.5.3.1.6 counts a text line's 1000 octets "not counting the
# leading dot duplicated for transparency".
def test_a_dot_stuffed_line_may_be_one_octet_longer_on_the_wire() -> None:
    engine = in_data()
    engine.send(b"." + b"." + b"a" * 997 + b"\r\n.\r\n")  # 999 + CRLF once unstuffed
    assert len(ends(engine)) == 1
    engine.send(ENVELOPE + b"DATA\r\n")
    assert engine.lines(b".." + b"a" * 998 + b"\r\n.\r\n") == [
        "550 5.6.0 Message refused: a line is longer than 1000 octets"]


def test_a_dot_stuffed_line_at_the_limit_arriving_in_pieces() -> None:
    engine = in_data()
    for piece in (b"." + b"." * 500, b"b" * 498 + b"\r", b"\n.\r\n"):  # 1001 on the wire
        engine.send(piece)
    assert len(ends(engine)) == 1
