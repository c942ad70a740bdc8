"""ESMTP parameters of MAIL FROM and RCPT TO (trio_smtpd._params)."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_smtpd._params import (
    EnabledExtensions,
    MailParams,
    OriginalRecipient,
    RcptParams,
    parse_mail_params,
    parse_rcpt_params,
    split_params,
    xtext_decode,
    xtext_encode,
)
from trio_smtpd._replies import ReplyError

ALL = EnabledExtensions(
    max_message_size=1000,
    eightbitmime=True,
    binarymime=True,
    smtputf8=True,
    dsn=True,
    auth=True,
    requiretls=True,
)
NONE = EnabledExtensions(
    max_message_size=None,
    eightbitmime=False,
    binarymime=False,
    smtputf8=False,
    dsn=False,
    auth=False,
    requiretls=False,
)
ASCII_DSN = dataclasses.replace(ALL, smtputf8=False)


def reply_of(exc: pytest.ExceptionInfo[ReplyError]) -> tuple[int, str | None, str]:
    reply = exc.value.reply
    return reply.code, reply.enhanced, reply.text


# ---------------------------------------------------------------- split_params


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("   ", []),
        (" SIZE=10", [("SIZE", "10")]),
        ("SIZE=10", [("SIZE", "10")]),
        ("  size=10   smtputf8  ", [("SIZE", "10"), ("SMTPUTF8", None)]),
        (" X-Foo-1=bar", [("X-FOO-1", "bar")]),
        (" 8BIT", [("8BIT", None)]),
        (" AUTH=<>", [("AUTH", "<>")]),
        (" A=!~<>;\\", [("A", "!~<>;\\")]),
        (" ORCPT=utf-8;\u00e9@example.com", [("ORCPT", "utf-8;\u00e9@example.com")]),
        (" A=1 A=2", [("A", "1"), ("A", "2")]),
    ],
)
def test_split_params(text: str, expected: list[tuple[str, str | None]]) -> None:
    assert split_params(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (" -FOO", "Malformed parameter keyword"),
        (" FO_O", "Malformed parameter keyword"),
        (" =10", "Malformed parameter keyword"),
        (" F\u00d6\u00d6", "Malformed parameter keyword"),
        (" FOO\tBAR", "Malformed parameter keyword"),
        (" SIZE=10\r\n", "Malformed SIZE value"),
        (" FOO=", "Malformed FOO value"),
        (" FOO=a=b", "Malformed FOO value"),
        (" FOO=a\x01", "Malformed FOO value"),
        (" FOO=a\x7f", "Malformed FOO value"),
        (" FOO=\udc80", "Malformed FOO value"),
        (" SIZE=10\tBODY=8BITMIME", "Malformed SIZE value"),
    ],
)
def test_split_params_syntax_error(text: str, message: str) -> None:
    with pytest.raises(ReplyError) as exc:
        split_params(text)
    assert reply_of(exc) == (501, "5.5.4", message)


# ---------------------------------------------------------------- MAIL FROM


@pytest.mark.parametrize(
    ("text", "ext", "expected"),
    [
        ("", NONE, MailParams()),
        (" ", ALL, MailParams()),
        (" SIZE=0", ALL, MailParams(size=0)),
        (" SIZE=1000", ALL, MailParams(size=1000)),  # exactly at the limit
        (" SIZE=00000000000000000999", ALL, MailParams(size=999)),  # 20 digits
        (" SIZE=99999999999999999999", NONE, MailParams(size=99999999999999999999)),
        (" BODY=7BIT", NONE, MailParams(body="7BIT")),
        (" body=7bit", NONE, MailParams(body="7BIT")),
        (" BODY=8bitMIME", ALL, MailParams(body="8BITMIME")),
        (" BODY=BinaryMime", ALL, MailParams(body="BINARYMIME")),
        (" SMTPUTF8", ALL, MailParams(smtputf8=True)),
        (" smtputf8", ALL, MailParams(smtputf8=True)),
        (" REQUIRETLS", ALL, MailParams(requiretls=True)),
        (" AUTH=<>", ALL, MailParams(auth="<>")),
        (" AUTH=+3C+3E", ALL, MailParams(auth="<>")),
        (" AUTH=user+2Btag@example.com", ALL, MailParams(auth="user+tag@example.com")),
        (" AUTH=+22a+20b+22@[192.0.2.1]", ALL, MailParams(auth='"a b"@[192.0.2.1]')),
        (" AUTH=+C3+A9@example.com", ALL, MailParams(auth="\u00e9@example.com")),
        (" RET=FULL", ALL, MailParams(ret="FULL")),
        (" ret=hdrs", ALL, MailParams(ret="HDRS")),
        (" ENVID=QQ314159", ALL, MailParams(envid="QQ314159")),
        (" ENVID=a+2Bb+3Dc+20d", ALL, MailParams(envid="a+b=c d")),
        (" ENVID=" + "x" * 100, ALL, MailParams(envid="x" * 100)),
        (
            "  SIZE=12  BODY=8BITMIME SMTPUTF8 AUTH=<> RET=HDRS ENVID=id REQUIRETLS ",
            ALL,
            MailParams(size=12, body="8BITMIME", smtputf8=True, auth="<>", ret="HDRS",
                       envid="id", requiretls=True),
        ),
    ],
)
def test_mail_params(text: str, ext: EnabledExtensions, expected: MailParams) -> None:
    assert parse_mail_params(text, ext) == expected


@pytest.mark.parametrize(
    ("text", "ext", "code", "enhanced", "message"),
    [
        # 555: not recognised on MAIL
        (" FOO", ALL, 555, "5.5.4", "Unrecognized parameter FOO"),
        (" X-FOO=1", ALL, 555, "5.5.4", "Unrecognized parameter X-FOO"),
        (" NOTIFY=NEVER", ALL, 555, "5.5.4", "Unrecognized parameter NOTIFY"),
        (" ORCPT=rfc822;a@b", ALL, 555, "5.5.4", "Unrecognized parameter ORCPT"),
        # 555: recognised, but not offered in this session
        (" SMTPUTF8", NONE, 555, "5.5.4", "Parameter SMTPUTF8 not offered"),
        (" AUTH=<>", NONE, 555, "5.5.4", "Parameter AUTH not offered"),
        (" RET=FULL", NONE, 555, "5.5.4", "Parameter RET not offered"),
        (" ENVID=x", NONE, 555, "5.5.4", "Parameter ENVID not offered"),
        (" REQUIRETLS", NONE, 555, "5.5.4", "Parameter REQUIRETLS not offered"),
        (" BODY=8BITMIME", NONE, 555, "5.5.4", "BODY=8BITMIME not offered"),
        (" BODY=BINARYMIME", NONE, 555, "5.5.4", "BODY=BINARYMIME not offered"),
        # 555: given twice
        (" SIZE=1 size=2", ALL, 555, "5.5.4", "Parameter SIZE given twice"),
        (" BODY=7BIT BODY=8BITMIME", ALL, 555, "5.5.4", "Parameter BODY given twice"),
        (" SMTPUTF8 SMTPUTF8", ALL, 555, "5.5.4", "Parameter SMTPUTF8 given twice"),
        (" ENVID=a ENVID=a", ALL, 555, "5.5.4", "Parameter ENVID given twice"),
        # 501: SIZE
        (" SIZE", ALL, 501, "5.5.4", "SIZE requires a value"),
        (" SIZE=", ALL, 501, "5.5.4", "Malformed SIZE value"),
        (" SIZE=-1", ALL, 501, "5.5.4", "Malformed SIZE value"),
        (" SIZE=1k", ALL, 501, "5.5.4", "Malformed SIZE value"),
        (" SIZE=1_0", ALL, 501, "5.5.4", "Malformed SIZE value"),
        (" SIZE=\u0661\u0662", ALL, 501, "5.5.4", "Malformed SIZE value"),  # Arabic digits
        (" SIZE=" + "1" * 21, NONE, 501, "5.5.4", "Malformed SIZE value"),
        # 552: SIZE over the limit
        (" SIZE=1001", ALL, 552, "5.3.4", "Message size exceeds fixed maximum message size"),
        (" SIZE=" + "9" * 20, ALL, 552, "5.3.4",
         "Message size exceeds fixed maximum message size"),
        # 501: BODY
        (" BODY", ALL, 501, "5.5.4", "BODY requires a value"),
        (" BODY=8BIT", ALL, 501, "5.5.4", "Malformed BODY value"),
        (" BODY=7b\u0131t", ALL, 501, "5.5.4", "Malformed BODY value"),  # dotless i
        # 501: value on a flag
        (" SMTPUTF8=yes", ALL, 501, "5.5.4", "SMTPUTF8 takes no value"),
        (" REQUIRETLS=1", ALL, 501, "5.5.4", "REQUIRETLS takes no value"),
        # 501: AUTH
        (" AUTH", ALL, 501, "5.5.4", "AUTH requires a value"),
        (" AUTH=nobody", ALL, 501, "5.5.4", "Malformed AUTH value"),
        (" AUTH=@example.com", ALL, 501, "5.5.4", "Malformed AUTH value"),
        (" AUTH=a@", ALL, 501, "5.5.4", "Malformed AUTH value"),
        (" AUTH=<a@example.com>", ALL, 501, "5.5.4", "Malformed AUTH value"),
        (" AUTH=a+20b@example.com", ALL, 501, "5.5.4", "Malformed AUTH value"),
        (" AUTH=a+0D+0A@example.com", ALL, 501, "5.5.4", "Malformed AUTH value"),
        (" AUTH=a+2b@example.com", ALL, 501, "5.5.4", "Malformed AUTH value"),
        (" AUTH=+FF@example.com", ALL, 501, "5.5.4", "Malformed AUTH value"),
        # 501: RET
        (" RET", ALL, 501, "5.5.4", "RET requires a value"),
        (" RET=NONE", ALL, 501, "5.5.4", "Malformed RET value"),
        (" RET=FULL,HDRS", ALL, 501, "5.5.4", "Malformed RET value"),
        # 501: ENVID
        (" ENVID", ALL, 501, "5.5.4", "ENVID requires a value"),
        (" ENVID=" + "x" * 101, ALL, 501, "5.5.4", "ENVID longer than 100 characters"),
        (" ENVID=" + "+41" * 34, ALL, 501, "5.5.4", "ENVID longer than 100 characters"),
        (" ENVID=a+2", ALL, 501, "5.5.4", "Malformed ENVID value"),
        (" ENVID=a+", ALL, 501, "5.5.4", "Malformed ENVID value"),
        (" ENVID=a+zz", ALL, 501, "5.5.4", "Malformed ENVID value"),
        (" ENVID=a+0A", ALL, 501, "5.5.4", "Malformed ENVID value"),
        (" ENVID=+C3+A9", ALL, 501, "5.5.4", "Malformed ENVID value"),
        (" ENVID=\u00e9", ALL, 501, "5.5.4", "Malformed ENVID value"),
        # syntax errors anywhere come first; otherwise the first bad parameter wins
        (" FOO BAR=\x01", ALL, 501, "5.5.4", "Malformed BAR value"),
        (" FOO SIZE=x", ALL, 555, "5.5.4", "Unrecognized parameter FOO"),
        (" SIZE=x FOO", ALL, 501, "5.5.4", "Malformed SIZE value"),
    ],
)
def test_mail_params_error(
    text: str, ext: EnabledExtensions, code: int, enhanced: str, message: str
) -> None:
    with pytest.raises(ReplyError) as exc:
        parse_mail_params(text, ext)
    assert reply_of(exc) == (code, enhanced, message)


def test_size_without_limit() -> None:
    assert parse_mail_params(" SIZE=" + "9" * 20, NONE).size == 10**20 - 1


def test_size_limit_zero_is_literal() -> None:
    zero = dataclasses.replace(ALL, max_message_size=0)
    assert parse_mail_params(" SIZE=0", zero).size == 0
    with pytest.raises(ReplyError) as exc:
        parse_mail_params(" SIZE=1", zero)
    assert exc.value.reply.code == 552


# ---------------------------------------------------------------- RCPT TO


@pytest.mark.parametrize(
    ("text", "ext", "expected"),
    [
        ("", NONE, RcptParams()),
        (" NOTIFY=NEVER", ALL, RcptParams(notify=frozenset({"NEVER"}))),
        (" notify=never", ALL, RcptParams(notify=frozenset({"NEVER"}))),
        (" NOTIFY=SUCCESS", ALL, RcptParams(notify=frozenset({"SUCCESS"}))),
        (
            " NOTIFY=failure,Delay,SUCCESS",
            ALL,
            RcptParams(notify=frozenset({"SUCCESS", "FAILURE", "DELAY"})),
        ),
        (" NOTIFY=DELAY,DELAY", ALL, RcptParams(notify=frozenset({"DELAY"}))),
        (
            " ORCPT=rfc822;user+2Btag@example.com",
            ALL,
            RcptParams(orcpt=OriginalRecipient("rfc822", "user+tag@example.com")),
        ),
        (
            " ORCPT=RFC822;a+20b@example.com",
            ALL,
            RcptParams(orcpt=OriginalRecipient("RFC822", "a b@example.com")),
        ),
        (
            " ORCPT=x400;c+3Dus;a+3D+3B",
            ALL,
            RcptParams(orcpt=OriginalRecipient("x400", "c=us;a=;")),
        ),
        (
            " ORCPT=utf-8;user\\x{2B}tag@example.com",
            ASCII_DSN,
            RcptParams(orcpt=OriginalRecipient("utf-8", "user+tag@example.com")),
        ),
        (
            "  NOTIFY=SUCCESS,FAILURE   ORCPT=rfc822;a@example.com  ",
            ALL,
            RcptParams(notify=frozenset({"SUCCESS", "FAILURE"}),
                       orcpt=OriginalRecipient("rfc822", "a@example.com")),
        ),
    ],
)
def test_rcpt_params(text: str, ext: EnabledExtensions, expected: RcptParams) -> None:
    assert parse_rcpt_params(text, ext) == expected


@pytest.mark.parametrize(
    ("text", "ext", "code", "message"),
    [
        # 555: not recognised on RCPT, not offered, given twice
        (" FOO=1", ALL, 555, "Unrecognized parameter FOO"),
        (" RET=FULL", ALL, 555, "Unrecognized parameter RET"),
        (" SIZE=10", ALL, 555, "Unrecognized parameter SIZE"),
        (" NOTIFY=NEVER", NONE, 555, "Parameter NOTIFY not offered"),
        (" ORCPT=rfc822;a@b", NONE, 555, "Parameter ORCPT not offered"),
        (" NOTIFY=NEVER NOTIFY=NEVER", ALL, 555, "Parameter NOTIFY given twice"),
        (" ORCPT=rfc822;a ORCPT=rfc822;b", ALL, 555, "Parameter ORCPT given twice"),
        # 501: NOTIFY
        (" NOTIFY", ALL, 501, "NOTIFY requires a value"),
        (" NOTIFY=NEVER,SUCCESS", ALL, 501, "NOTIFY=NEVER cannot be combined with other values"),
        (" NOTIFY=DELAY,never", ALL, 501, "NOTIFY=NEVER cannot be combined with other values"),
        (" NOTIFY=ALWAYS", ALL, 501, "Malformed NOTIFY value"),
        (" NOTIFY=SUCCESS,", ALL, 501, "Malformed NOTIFY value"),
        (" NOTIFY=SUCCESS,,FAILURE", ALL, 501, "Malformed NOTIFY value"),
        (" NOTIFY=,", ALL, 501, "Malformed NOTIFY value"),
        # 501: ORCPT
        (" ORCPT", ALL, 501, "ORCPT requires a value"),
        (" ORCPT=a@example.com", ALL, 501, "Malformed ORCPT value"),
        (" ORCPT=;a@example.com", ALL, 501, "Malformed ORCPT value"),
        (" ORCPT=rfc822;", ALL, 501, "Malformed ORCPT value"),
        (" ORCPT=rfc.822;a@example.com", ALL, 501, "Malformed ORCPT value"),
        (" ORCPT=rfc822;a+2b@example.com", ALL, 501, "Malformed ORCPT value"),
        (" ORCPT=rfc822;a+0D+0A@example.com", ALL, 501, "Malformed ORCPT value"),
        (" ORCPT=rfc822;caf+C3+A9@example.com", ALL, 501, "Malformed ORCPT value"),
        (" ORCPT=rfc822;caf\u00e9@example.com", ALL, 501, "Malformed ORCPT value"),
        (" ORCPT=x400;c=us", ALL, 501, "Malformed ORCPT value"),  # raw "=" is not esmtp-value
    ],
)
def test_rcpt_params_error(text: str, ext: EnabledExtensions, code: int, message: str) -> None:
    with pytest.raises(ReplyError) as exc:
        parse_rcpt_params(text, ext)
    assert reply_of(exc) == (code, "5.5.4", message)


# ---------------------------------------------------------------- RFC 6533 utf-8 ORCPT


@pytest.mark.parametrize(
    ("encoded", "ext", "address"),
    [
        # utf-8-addr-xtext: 7-bit, everything else as \x{HEXPOINT}
        ("\\x{E9}l\\x{E8}ve@example.com", ASCII_DSN, "\u00e9l\u00e8ve@example.com"),
        ("\\x{e9}l\\x{e8}ve@example.com", ASCII_DSN, "\u00e9l\u00e8ve@example.com"),
        ("\\x{7528}\\x{6237}@\\x{4F8B}\\x{5B50}.\\x{516C}\\x{53F8}", ASCII_DSN,
         "\u7528\u6237@\u4f8b\u5b50.\u516c\u53f8"),
        ("\\x{1F600}@example.com", ASCII_DSN, "\U0001f600@example.com"),
        ("\\x{10FFFF}@example.com", ASCII_DSN, "\U0010ffff@example.com"),
        ("a\\x{2B}b\\x{3D}c@example.com", ASCII_DSN, "a+b=c@example.com"),
        ("\"a\\x{20}b\\x{5C}\\x{5C}\"@example.com", ASCII_DSN, '"a b\\\\"@example.com'),
        # utf-8-addr-unitext: raw UTF-8 as well, when SMTPUTF8 is offered
        ("\u00e9l\u00e8ve@example.com", ALL, "\u00e9l\u00e8ve@example.com"),
        ("\u00e9l\\x{E8}ve\\x{2B}x@example.com", ALL, "\u00e9l\u00e8ve+x@example.com"),
        ("\u7528\u6237@\u4f8b\u5b50.\u516c\u53f8", ALL, "\u7528\u6237@\u4f8b\u5b50.\u516c\u53f8"),
    ],
)
def test_orcpt_utf8(encoded: str, ext: EnabledExtensions, address: str) -> None:
    for addr_type in ("utf-8", "UTF-8"):
        params = parse_rcpt_params(f" ORCPT={addr_type};{encoded}", ext)
        assert params.orcpt == OriginalRecipient(addr_type, address)


@pytest.mark.parametrize(
    ("encoded", "ext", "message"),
    [
        ("\u00e9l\u00e8ve@example.com", ASCII_DSN, "Non-ASCII ORCPT value needs SMTPUTF8"),
        ("a+b@example.com", ALL, "Malformed ORCPT value"),  # "+" must be \x{2B}
        ("a+2Bb@example.com", ALL, "Malformed ORCPT value"),  # xtext hexchar is not allowed
        ("a\\b@example.com", ALL, "Malformed ORCPT value"),  # lone backslash
        ("a\\x{E9@example.com", ALL, "Malformed ORCPT value"),  # unterminated
        ("a\\x{}@example.com", ALL, "Malformed ORCPT value"),
        ("a\\x{E}@example.com", ALL, "Malformed ORCPT value"),  # one digit
        ("a\\x{1234567}@example.com", ALL, "Malformed ORCPT value"),  # seven digits
        ("a\\x{0E9}@example.com", ALL, "Malformed ORCPT value"),  # leading zero
        ("a\\x{00E9}@example.com", ALL, "Malformed ORCPT value"),
        ("a\\x{41}@example.com", ALL, "Malformed ORCPT value"),  # QCHAR needs no escape
        ("\\x{22}a\\x{20}b\\x{22}@example.com", ALL, "Malformed ORCPT value"),  # '"' too
        ("a\\x{00}@example.com", ALL, "Malformed ORCPT value"),  # NUL
        ("a\\x{D800}@example.com", ALL, "Malformed ORCPT value"),  # surrogate
        ("a\\x{110000}@example.com", ALL, "Malformed ORCPT value"),  # beyond Unicode
        ("a\\x{0A}@example.com", ALL, "Malformed ORCPT value"),  # control, once decoded
        ("a\\x{7F}@example.com", ALL, "Malformed ORCPT value"),
        ("a\\x{85}@example.com", ALL, "Malformed ORCPT value"),  # C1 control
        ("a\\X{E9}@example.com", ALL, "Malformed ORCPT value"),  # "\x" is case-sensitive
    ],
)
def test_orcpt_utf8_error(encoded: str, ext: EnabledExtensions, message: str) -> None:
    with pytest.raises(ReplyError) as exc:
        parse_rcpt_params(f" ORCPT=utf-8;{encoded}", ext)
    assert reply_of(exc) == (501, "5.5.4", message)


# ---------------------------------------------------------------- xtext


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("", ""),
        ("abc", "abc"),
        ("!~<>;\\", "!~<>;\\"),
        ("a+2Bb+3Dc+20d", "a+b=c d"),
        ("+0D+0A", "\r\n"),
        ("+C3+A9", "\u00e9"),
        ("+F0+9F+98+80", "\U0001f600"),
    ],
)
def test_xtext(encoded: str, decoded: str) -> None:
    assert xtext_decode(encoded) == decoded
    assert xtext_encode(decoded) == encoded


@pytest.mark.parametrize(
    "encoded",
    ["+", "+2", "a+2b", "+zz", "a=b", "a b", "\u00e9", "a\x00", "+FF", "+C3", "+ED+A0+80"],
)
def test_xtext_decode_error(encoded: str) -> None:
    with pytest.raises(ReplyError) as exc:
        xtext_decode(encoded)
    assert reply_of(exc) == (501, "5.5.4", "Malformed xtext")


_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")


@given(st.text())
def test_xtext_round_trip(text: str) -> None:
    encoded = xtext_encode(text)
    assert _XTEXT.fullmatch(encoded)
    assert xtext_decode(encoded) == text


# ---------------------------------------------------------------- robustness

_KEYWORDS = ["SIZE", "BODY", "SMTPUTF8", "AUTH", "RET", "ENVID", "REQUIRETLS", "NOTIFY",
             "ORCPT", "X-FOO", "size"]
_VALUE_CHARS = "09AZaz+=;,<>@\\{}x-. \t\r\x00\x7f\u00e9\u0131\udc80\U0001f600"
_params = st.lists(
    st.tuples(
        st.sampled_from(_KEYWORDS),
        st.none() | st.text(alphabet=_VALUE_CHARS, max_size=12),
    ),
    max_size=4,
).map(lambda ps: "".join(f" {k}" if v is None else f" {k}={v}" for k, v in ps))
_exts = st.builds(
    EnabledExtensions,
    max_message_size=st.none() | st.integers(min_value=0, max_value=10**21),
    eightbitmime=st.booleans(),
    binarymime=st.booleans(),
    smtputf8=st.booleans(),
    dsn=st.booleans(),
    auth=st.booleans(),
    requiretls=st.booleans(),
)


@given(st.text() | _params, _exts)
def test_parse_raises_only_reply_error(text: str, ext: EnabledExtensions) -> None:
    for parse in (parse_mail_params, parse_rcpt_params):
        try:
            parse(text, ext)
        except ReplyError as exc:
            reply = exc.reply
            assert (reply.code, reply.enhanced) in {
                (501, "5.5.4"), (555, "5.5.4"), (552, "5.3.4")
            }
    try:
        split_params(text)
    except ReplyError as exc:
        assert exc.reply.code == 501


@given(st.text())
def test_xtext_decode_raises_only_reply_error(text: str) -> None:
    try:
        xtext_decode(text)
    except ReplyError as exc:
        assert exc.reply.code == 501


@pytest.mark.parametrize(("encoded", "address"), [
    ("a\\x{100}@example.com", "a\u0100@example.com"),  # the first point written with 3 digits
    ("a\\x{E000}@example.com", "a\ue000@example.com"),  # the first point after surrogates
])
def test_orcpt_utf8_boundaries_accepted(encoded: str, address: str) -> None:
    orcpt = parse_rcpt_params(f" ORCPT=utf-8;{encoded}", ALL).orcpt
    assert orcpt is not None and orcpt.address == address


@pytest.mark.parametrize("encoded", [
    "a\\x{0100}@example.com",  # a leading zero is not canonical
    "a\\x{DFFF}@example.com",  # the last surrogate
])
def test_orcpt_utf8_boundaries_refused(encoded: str) -> None:
    with pytest.raises(ReplyError) as exc:
        parse_rcpt_params(f" ORCPT=utf-8;{encoded}", ALL)
    assert reply_of(exc) == (501, "5.5.4", "Malformed ORCPT value")


@pytest.mark.parametrize("parse", [parse_mail_params, parse_rcpt_params])
def test_only_spaces_mean_no_parameters(parse: object) -> None:
    # A tab is not a separator (RFC 5321 uses SP), and an "X" is a parameter, not padding.
    assert callable(parse)
    with pytest.raises(ReplyError) as exc:
        parse("\t", ALL)
    assert reply_of(exc) == (501, "5.5.4", "Malformed parameter keyword")
    with pytest.raises(ReplyError) as exc:
        parse(" X", ALL)
    assert reply_of(exc) == (555, "5.5.4", "Unrecognized parameter X")
