"""Tests for trio_smtpd._address: RFC 5321 paths with RFC 6531 (SMTPUTF8) extensions."""

from __future__ import annotations

import ast
import ipaddress
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import trio_smtpd._address as address_module
from trio_smtpd._address import (
    Address,
    parse_forward_path,
    parse_mailbox,
    parse_reverse_path,
)
from trio_smtpd._replies import ReplyError

ATEXT_SPECIALS = "!#$%&'*+-/=?^_`{|}~"


def dom(n: int) -> str:
    """An ASCII domain of exactly ``n`` octets made of labels of at most 63 octets."""
    labels: list[str] = []
    while True:
        size = min(63, n)
        if n - size == 1:  # would leave a dot and nothing after it
            size -= 1
        labels.append("abcdefgh"[len(labels)] * size)
        n -= size
        if n == 0:
            return ".".join(labels)
        n -= 1


assert len(dom(255)) == 255 and len(dom(64)) == 64 and max(map(len, dom(255).split("."))) == 63

# --------------------------------------------------------------------------------------
# Mailboxes, valid: (mailbox text, expected local_part, expected domain, utf8)
# Each row is tested as a bare mailbox, as <reverse-path> and as <forward-path>.
# --------------------------------------------------------------------------------------
MAILBOX_OK: list[tuple[str, str, str, bool]] = [
    ("a@b", "a", "b", False),
    ("user@example.com", "user", "example.com", False),
    ("User.Name+tag@Example.COM", "User.Name+tag", "Example.COM", False),
    ("a.b.c.d@x.y.z", "a.b.c.d", "x.y.z", False),
    (ATEXT_SPECIALS + "@x.y", ATEXT_SPECIALS, "x.y", False),
    *((f"a{c}b@x", f"a{c}b", "x", False) for c in ATEXT_SPECIALS),  # 19 rows, one per special
    ("-@x", "-", "x", False),
    ("0@0", "0", "0", False),
    ("a@123", "a", "123", False),  # numeric-only domains: the grammar allows them
    ("a@1.2.3.4", "a", "1.2.3.4", False),  # a domain that looks like IPv4, not a literal
    ("a@a-b.c", "a", "a-b.c", False),
    ("a@a--b.c", "a", "a--b.c", False),
    ("a@xn--bcher-kva.example", "a", "xn--bcher-kva.example", False),  # A-labels are ASCII
    ("a@" + "x" * 63 + ".com", "a", "x" * 63 + ".com", False),
    ("a@" + dom(250), "a", dom(250), False),  # as a path: 254 octets
    ("l" * 64 + "@x", "l" * 64, "x", False),
    ('"' + "q" * 62 + '"@x', '"' + "q" * 62 + '"', "x", False),  # 64 octets with quotes
    # Quoted local parts keep their quotes and escapes.
    ('"a b"@x', '"a b"', "x", False),
    ('"a\\"b"@x', '"a\\"b"', "x", False),
    ('"a\\\\b"@x', '"a\\\\b"', "x", False),
    ('"a\\b"@x', '"a\\b"', "x", False),  # quoted-pair of an ordinary character
    ('"\\ "@x', '"\\ "', "x", False),
    ('"@"@x', '"@"', "x", False),
    ('">"@x', '">"', "x", False),
    ('"<>"@x', '"<>"', "x", False),
    ('""@x', '""', "x", False),
    ('" "@x', '" "', "x", False),
    ('".a"@x', '".a"', "x", False),
    ('"a."@x', '"a."', "x", False),
    ('"a..b"@x', '"a..b"', "x", False),
    ('"a,b:c[d]"@x', '"a,b:c[d]"', "x", False),
    ('"~!"@x', '"~!"', "x", False),
    # Address literals keep their brackets.
    ("a@[192.0.2.1]", "a", "[192.0.2.1]", False),
    ("a@[0.0.0.0]", "a", "[0.0.0.0]", False),
    ("a@[255.255.255.255]", "a", "[255.255.255.255]", False),
    ("a@[001.02.003.4]", "a", "[001.02.003.4]", False),  # leading zeros within 3 digits
    ("a@[IPv6:2001:db8::1]", "a", "[IPv6:2001:db8::1]", False),
    ("a@[ipv6:2001:db8::1]", "a", "[ipv6:2001:db8::1]", False),  # tag is case-insensitive
    ("a@[IPV6:ABCD:ef01::]", "a", "[IPV6:ABCD:ef01::]", False),
    ("a@[IPv6:1:2:3:4:5:6:7:8]", "a", "[IPv6:1:2:3:4:5:6:7:8]", False),
    ("a@[IPv6:::1]", "a", "[IPv6:::1]", False),
    ("a@[IPv6:::]", "a", "[IPv6:::]", False),
    ("a@[IPv6:1::]", "a", "[IPv6:1::]", False),
    ("a@[IPv6:1:2:3::4:5:6]", "a", "[IPv6:1:2:3::4:5:6]", False),  # six groups and "::"
    ("a@[IPv6:::ffff:192.0.2.1]", "a", "[IPv6:::ffff:192.0.2.1]", False),
    ("a@[IPv6:1:2:3:4:5:6:192.0.2.1]", "a", "[IPv6:1:2:3:4:5:6:192.0.2.1]", False),
    ("a@[IPv6:1:2:3:4::192.0.2.1]", "a", "[IPv6:1:2:3:4::192.0.2.1]", False),
    ("a@[IPv6:::1.2.3.4]", "a", "[IPv6:::1.2.3.4]", False),
    # SMTPUTF8
    ("jörg@bücher.example", "jörg", "bücher.example", True),
    ("用户@例子.广告", "用户", "例子.广告", True),
    ("δ@x", "δ", "x", True),
    ("a@Bücher.example", "a", "Bücher.example", True),  # kept as written
    ("a@straße.example", "a", "straße.example", True),
    ('"ü b"@x', '"ü b"', "x", True),
    ("ü" * 32 + "@x", "ü" * 32, "x", True),  # 64 octets
    ("a@" + "ü" * 40, "a", "ü" * 40, True),  # 80 octets of UTF-8 but a 46-octet A-label
    ("user@example.com", "user", "example.com", True),  # ASCII is fine in SMTPUTF8 too
    ("a@xn--bcher-kva.example", "a", "xn--bcher-kva.example", True),
    ("a@[IPv6:::1]", "a", "[IPv6:::1]", True),
]

# --------------------------------------------------------------------------------------
# Mailboxes, invalid: (mailbox text, utf8, reply code, fragment of the reply text)
# Tested the same three ways; the enhanced code depends on the function (see expect_error).
# --------------------------------------------------------------------------------------
MAILBOX_BAD: list[tuple[str, bool, int, str]] = [
    ("a", False, 501, "missing '@' and domain"),
    ("a@", False, 501, "empty domain"),
    (".a@b", False, 501, "local part starts with a dot"),
    ("a.@b", False, 501, "local part ends with a dot"),
    ("a..b@c", False, 501, "consecutive dots"),
    (".@b", False, 501, "starts with a dot"),
    ("a b@c", False, 501, "space in local part"),
    ("a@b c", False, 501, "space in domain"),
    ("a @b", False, 501, "space in local part"),
    ("a@ b", False, 501, "space in domain"),
    ('"a" @b', False, 501, "space in local part"),
    ('"a"b@c', False, 501, "invalid character 'b' in local part"),
    ('a"b"@c', False, 501, "invalid character '\"' in local part"),
    ('"a"."b"@c', False, 501, "invalid character '.' in local part"),
    ('"abc@d', False, 501, "unterminated quoted string"),
    ('"abc\\', False, 501, "unterminated quoted string"),
    ("a(b)@c", False, 501, "invalid character '(' in local part"),
    ("a,b@c", False, 501, "invalid character ',' in local part"),
    ("a[b]@c", False, 501, "invalid character '[' in local part"),
    ("a\\b@c", False, 501, "invalid character '\\\\' in local part"),
    ("a@b@c", False, 501, "invalid character '@' in domain"),
    ("a:b@c", False, 501, "invalid character ':' in local part"),
    ("a;b@c", False, 501, "invalid character ';' in local part"),
    ("l" * 65 + "@x", False, 501, "local part longer than 64 octets"),
    ('"' + "q" * 63 + '"@x', False, 501, "local part longer than 64 octets"),
    ("ü" * 33 + "@x", True, 501, "local part longer than 64 octets"),  # 33 chars, 66 octets
    # Control characters, always refused, also inside quotes.
    ("a\x00b@c", False, 501, "control character U+0000 in local part"),
    ("a\rb@c", False, 501, "control character U+000D in local part"),
    ("a\nb@c", False, 501, "control character U+000A in local part"),
    ("a\tb@c", False, 501, "control character U+0009 in local part"),
    ("a\x7fb@c", False, 501, "control character U+007F in local part"),
    ("a\x85b@c", True, 501, "control character U+0085 in local part"),  # C1 (NEL)
    ("a@b\x00c", False, 501, "control character U+0000 in domain"),
    ("a@b\r\n", False, 501, "control character U+000D in domain"),
    ('"a\x00b"@c', False, 501, "control character U+0000 in quoted local part"),
    ('"a\tb"@c', False, 501, "control character U+0009 in quoted local part"),
    ('"a\nb"@c', True, 501, "control character U+000A in quoted local part"),
    ('"a\\\x00"@c', False, 501, "control character U+0000 in quoted-pair"),
    ('"a\\\t"@c', False, 501, "control character U+0009 in quoted-pair"),
    ('"\\ü"@c', True, 501, "invalid character 'ü' in quoted-pair"),  # escapes ASCII only
    ("a\udc80@b", True, 501, "invalid UTF-8 in local part"),  # surrogateescape'd byte
    # Domains
    ("a@-b.c", False, 501, "label '-b' starts or ends with a hyphen"),
    ("a@b-.c", False, 501, "label 'b-' starts or ends with a hyphen"),
    ("a@b.-c", False, 501, "label '-c' starts or ends with a hyphen"),
    ("a@b.c-", False, 501, "label 'c-' starts or ends with a hyphen"),
    ("a@-", False, 501, "starts or ends with a hyphen"),
    ("a@b..c", False, 501, "domain contains consecutive dots"),
    ("a@.b", False, 501, "domain starts with a dot"),
    ("a@b.", False, 501, "domain ends with a dot"),
    ("a@b.c.", False, 501, "domain ends with a dot"),
    ("a@b_c.d", False, 501, "invalid character '_' in domain"),
    ("a@b!c", False, 501, "invalid character '!' in domain"),
    ("a@" + "x" * 64 + ".com", False, 501, "label longer than 63 octets"),
    ("a@" + dom(256), False, 501, "domain longer than 255 octets"),
    # Address literals
    ("a@[256.0.0.1]", False, 501, "number over 255"),
    ("a@[1.2.3.999]", False, 501, "number over 255"),
    ("a@[1.2.3]", False, 501, "invalid address literal [1.2.3]"),
    ("a@[1.2.3.4.5]", False, 501, "invalid address literal"),
    ("a@[1.2.3.0004]", False, 501, "invalid address literal"),
    ("a@[1..2.3]", False, 501, "invalid address literal"),
    ("a@[-1.2.3.4]", False, 501, "invalid address literal"),
    ("a@[]", False, 501, "empty address literal"),
    ("a@[1.2.3.4", False, 501, "unterminated address literal"),
    ("a@[1.2.3.4 ]", False, 501, "space in address literal"),
    ("a@[1.2.3.4]x", False, 501, "invalid character 'x' in domain"),
    ("a@[1.2.3.4].com", False, 501, "invalid character '.' in domain"),
    ("a@[a\\b]", False, 501, "invalid character '\\\\' in address literal"),
    ("a@[a[b]", False, 501, "invalid character '[' in address literal"),
    ("a@[IPv6:1:2:3:4:5:6:7:8:9]", False, 501, "invalid IPv6 address literal"),
    ("a@[IPv6:1:2:3:4:5:6:7]", False, 501, "invalid IPv6 address literal"),
    ("a@[IPv6:1:2:3:4:5:6:7::]", False, 501, "invalid IPv6"),  # "::" is 2+ groups here
    ("a@[IPv6:1::2::3]", False, 501, "invalid IPv6 address literal"),
    ("a@[IPv6:1:::2]", False, 501, "invalid IPv6 address literal"),
    ("a@[IPv6::1]", False, 501, "invalid IPv6 address literal"),
    ("a@[IPv6:1:]", False, 501, "invalid IPv6 address literal"),
    ("a@[IPv6:12345::]", False, 501, "invalid IPv6 address literal"),
    ("a@[IPv6:g::1]", False, 501, "invalid IPv6 address literal"),
    ("a@[IPv6:fe80::1%eth0]", False, 501, "invalid IPv6 address literal"),  # no zone ids
    ("a@[IPv6:1:2:3:4:5::1.2.3.4]", False, 501, "invalid IPv6 address literal"),
    ("a@[IPv6:1:2:3:4:5:6:7:1.2.3.4]", False, 501, "invalid IPv6 address literal"),
    ("a@[IPv6:::256.1.1.1]", False, 501, "invalid IPv6 address literal"),
    ("a@[IPv6:1.2.3.4::]", False, 501, "invalid IPv6 address literal"),
    ("a@[IPv6:1.2.3.4]", False, 501, "invalid IPv6 address literal"),
    ("a@[IPv6:]", False, 501, "invalid IPv6 address literal"),
    ("a@[2001:db8::1]", False, 501, "lacks the 'IPv6:' tag"),
    ("a@[::1]", False, 501, "lacks the 'IPv6:' tag"),
    ("a@[x-foo:bar]", False, 501, "unsupported address literal tag 'x-foo'"),
    ("a@[tag:value]", False, 501, "unsupported address literal tag 'tag'"),
    ("a@[IPv4:1.2.3.4]", False, 501, "unsupported address literal tag 'IPv4'"),
    ("a@[:x]", False, 501, "invalid address literal"),
    ("a@[a@b]", False, 501, "invalid address literal"),
    # Non-ASCII without SMTPUTF8: 553 5.6.7, wherever it is.
    ("jörg@example.com", False, 553, "requires SMTPUTF8"),
    ("a@bücher.example", False, 553, "requires SMTPUTF8"),
    ("用户@例子.广告", False, 553, "requires SMTPUTF8"),
    ('"ü b"@x', False, 553, "requires SMTPUTF8"),
    ("ü..@b", False, 553, "requires SMTPUTF8"),  # reported before the dots
    ("a@[1.2.3.ü]", False, 553, "requires SMTPUTF8"),
    # Invalid U-labels with SMTPUTF8
    ("a@ü-.example", True, 501, "starts or ends with a hyphen"),
    ("a@-ü.example", True, 501, "starts or ends with a hyphen"),
    ("a@" + "ü" * 60 + ".example", True, 501, "is not a valid IDNA label"),  # A-label > 63
    ("a@\ue000.example", True, 501, "label contains U+E000, which IDNA2008"),  # private use
    ("a@\u05d0a.example", True, 501, "is not a valid IDNA label"),  # bidi rule
    ("a@b\u3002c", True, 501, "is not a valid IDNA label"),  # ideographic full stop
    ("a@b\uff0ec", True, 501, "is not a valid IDNA label"),  # fullwidth full stop
    ("a@b\u2024c", True, 501, "is not a valid IDNA label"),  # one dot leader -> "."
    ("a@[1.2.3.ü]", True, 501, "invalid character 'ü' in address literal"),
    ("a@b_ü", True, 501, "invalid character '_' in domain"),
]

# --------------------------------------------------------------------------------------
# Paths: (function, text, utf8, expected local_part or None for <>, domain, rest)
# ("box" rows are bare mailboxes, which have no rest and no path length limit.)
# --------------------------------------------------------------------------------------
PATH_OK: list[tuple[str, str, bool, str | None, str, str | None]] = [
    ("box", "a@" + dom(255), False, "a", dom(255), None),
    ("box", "l" * 64 + "@" + dom(255), False, "l" * 64, dom(255), None),  # 320 octets
    ("box", "ü" * 32 + "@" + dom(255), True, "ü" * 32, dom(255), None),
    ("rev", "<>", False, None, "", ""),
    ("rev", "<> SIZE=100", False, None, "", " SIZE=100"),
    ("rev", "<> ", True, None, "", " "),
    ("rev", "<a@b> BODY=8BITMIME SIZE=1", False, "a", "b", " BODY=8BITMIME SIZE=1"),
    ("fwd", "<a@b> NOTIFY=NEVER", False, "a", "b", " NOTIFY=NEVER"),
    ("fwd", "<a@b>  ", False, "a", "b", "  "),
    ("fwd", "<a@b> <c@d>", False, "a", "b", " <c@d>"),
    ("fwd", '<">"@x> X=">"', False, '">"', "x", ' X=">"'),
    # Source routes are accepted and dropped.
    ("rev", "<@a:b@c>", False, "b", "c", ""),
    ("fwd", "<@a:b@c>", False, "b", "c", ""),
    ("fwd", "<@a,@b.c:d@e>", False, "d", "e", ""),
    ("fwd", "<@a.b,@c,@d-e.f:x@y> SIZE=1", False, "x", "y", " SIZE=1"),
    ("fwd", "<@bücher.example:a@b>", True, "a", "b", ""),
    ("fwd", "<@a:postmaster@b>", False, "postmaster", "b", ""),
    # Postmaster (RFC 5321 4.1.1.3), any case, domain "".
    ("fwd", "<postmaster>", False, "postmaster", "", ""),
    ("fwd", "<Postmaster>", False, "Postmaster", "", ""),
    ("fwd", "<POSTMASTER> NOTIFY=NEVER", False, "POSTMASTER", "", " NOTIFY=NEVER"),
    ("fwd", "<pOsTmAsTeR>", True, "pOsTmAsTeR", "", ""),
    ("fwd", "<PostMaster@example.com>", False, "PostMaster", "example.com", ""),
    ("rev", "<postmaster@example.com>", False, "postmaster", "example.com", ""),
    # Path length counts everything from "<" to ">", in UTF-8 octets.
    ("fwd", "<" + "l" * 64 + "@" + dom(189) + ">", False, "l" * 64, dom(189), ""),
    ("rev", "<" + "l" * 64 + "@" + dom(189) + ">", False, "l" * 64, dom(189), ""),
    ("fwd", "<@" + dom(61) + ":" + "l" * 64 + "@" + dom(126) + ">", False, "l" * 64, dom(126), ""),
    ("fwd", "<" + "ü" * 32 + "@" + dom(189) + ">", True, "ü" * 32, dom(189), ""),
]

# Paths, invalid: (function, text, utf8, reply code, fragment of the reply text)
PATH_BAD: list[tuple[str, str, bool, int, str]] = [
    ("fwd", "<>", False, 501, "null path <> is only allowed for the sender"),
    ("fwd", "<> NOTIFY=NEVER", False, 501, "null path"),
    ("rev", "<>x", False, 501, "unexpected 'x' after '>'"),
    ("rev", "<>>", False, 501, "unexpected '>' after '>'"),
    ("rev", "", False, 501, "angle brackets"),
    ("fwd", "", False, 501, "angle brackets"),
    ("rev", "a@b", False, 501, "angle brackets"),
    ("fwd", "a@b", False, 501, "angle brackets"),
    ("fwd", "a@b>", False, 501, "angle brackets"),
    ("fwd", " <a@b>", False, 501, "angle brackets"),
    ("fwd", "postmaster", False, 501, "angle brackets"),
    ("fwd", "<a@b", False, 501, "missing closing '>'"),
    ("rev", "<a", False, 501, "missing '@' and domain"),
    ("fwd", "<", False, 501, "empty local part"),
    ("fwd", "<<a@b>>", False, 501, "invalid character '<' in local part"),
    ("fwd", "<a@b>>", False, 501, "unexpected '>' after '>'"),
    ("fwd", "<a@<b>>", False, 501, "invalid character '<' in domain"),
    ("fwd", "<a@b>x", False, 501, "unexpected 'x' after '>'"),
    ("fwd", "<a@b>SIZE=1", False, 501, "unexpected 'S' after '>'"),
    ("fwd", "<a@b>\tSIZE=1", False, 501, "unexpected '\\t' after '>'"),
    ("fwd", "< a@b>", False, 501, "space in local part"),
    ("fwd", "<a@b >", False, 501, "space in domain"),
    ("fwd", "<a@b\x00>", False, 501, "control character U+0000 in domain"),
    # Path length
    ("fwd", "<" + "l" * 64 + "@" + dom(190) + ">", False, 501, "path longer than 256 octets"),
    ("rev", "<" + "l" * 64 + "@" + dom(190) + ">", False, 501, "path longer than 256 octets"),
    ("fwd", "<" + "l" * 64 + "@" + dom(256) + ">", False, 501, "domain longer than 255"),
    ("rev", "<a@" + dom(255) + ">", False, 501, "path longer than 256 octets"),
    ("fwd", "<@" + dom(61) + ":" + "l" * 64 + "@" + dom(127) + ">", False, 501, "path longer"),
    ("fwd", "<" + "ü" * 32 + "@" + dom(190) + ">", True, 501, "path longer than 256 octets"),
    # Source routes: syntax is still checked.
    ("fwd", "<@:a@b>", False, 501, "empty source route domain"),
    ("fwd", "<@a,b:c@d>", False, 501, "invalid character 'b' in source route"),
    ("fwd", "<@a,:b@c>", False, 501, "invalid character ':' in source route"),
    ("fwd", "<@a, @b:c@d>", False, 501, "space in source route"),
    ("fwd", "<@a.:b@c>", False, 501, "source route domain ends with a dot"),
    ("fwd", "<@a..b:c@d>", False, 501, "source route domain contains consecutive dots"),
    ("fwd", "<@-a:b@c>", False, 501, "source route domain label '-a'"),
    ("fwd", "<@a;b@c>", False, 501, "invalid character ';' in source route domain"),
    ("fwd", "<@a b@c>", False, 501, "space in source route domain"),
    ("fwd", "<@[1.2.3.4]:a@b>", False, 501, "invalid character '[' in source route domain"),
    ("fwd", "<@a>", False, 501, "source route must be followed by ':'"),
    ("fwd", "<@b>", False, 501, "source route must be followed by ':'"),
    ("fwd", "<@a:>", False, 501, "empty local part"),
    ("fwd", "<@a:@b:c@d>", False, 501, "empty local part"),
    ("fwd", "<@a:b>", False, 501, "missing '@' and domain"),
    ("fwd", "<@a:postmaster>", False, 501, "missing '@' and domain"),
    ("fwd", "<@" + "x" * 64 + ":a@b>", False, 501, "source route domain label longer than 63"),
    ("fwd", "<@bücher.example:a@b>", False, 553, "requires SMTPUTF8"),
    ("fwd", "<@\ue000:a@b>", True, 501, "source route domain label"),
    # Postmaster: only "<Postmaster>" itself, and only as a recipient.
    ("rev", "<postmaster>", False, 501, "missing '@' and domain"),
    ("fwd", '<"postmaster">', False, 501, "missing '@' and domain"),
    ("fwd", "<postmaster >", False, 501, "space in local part"),
    ("fwd", "< postmaster>", False, 501, "space in local part"),
    ("fwd", "<postmaster>x", False, 501, "unexpected 'x' after '>'"),
    ("fwd", "<postmaster", False, 501, "missing '@' and domain"),
    ("fwd", "<postmastr>", False, 501, "missing '@' and domain"),
    ("fwd", "<pöstmaster>", False, 553, "requires SMTPUTF8"),
    # Non-ASCII anywhere in the path without SMTPUTF8
    ("rev", "<jörg@example.com> SMTPUTF8", False, 553, "requires SMTPUTF8"),
    ("fwd", "<a@b\u0308.example>", False, 553, "requires SMTPUTF8"),
]

# Bare mailboxes only (no brackets in the grammar): (text, utf8, code, fragment)
BARE_BAD: list[tuple[str, bool, int, str]] = [
    ("", False, 501, "empty local part"),
    ("@b", False, 501, "empty local part"),
    ("<a@b>", False, 501, "invalid character '<' in local part"),
    ("a@b>", False, 501, "invalid character '>' in domain"),
    ("a@b ", False, 501, "space in domain"),
    (" a@b", False, 501, "space in local part"),
    ("postmaster", False, 501, "missing '@' and domain"),
    ("a@b SIZE=1", False, 501, "space in domain"),
]


def _cases() -> int:
    return len(MAILBOX_OK) + len(MAILBOX_BAD) + len(PATH_OK) + len(PATH_BAD) + len(BARE_BAD)


def test_table_is_big_enough() -> None:
    assert _cases() >= 150


def _id(text: str) -> str:
    return ascii(text)[:50]


def enhanced_for(function: str, code: int) -> str:
    if code == 553:
        return "5.6.7"
    return "5.1.7" if function == "rev" else "5.1.3"


def run(function: str, text: str, utf8: bool) -> tuple[Address | None, str | None]:
    if function == "rev":
        return parse_reverse_path(text, utf8=utf8)
    if function == "fwd":
        return parse_forward_path(text, utf8=utf8)
    return parse_mailbox(text, utf8=utf8), None


def _mailbox_params(rows: Sequence[tuple[Any, ...]]) -> list[Any]:
    return [
        pytest.param(function, text if function == "box" else f"<{text}>", *rest,
                     id=f"{function}-{_id(text)}")
        for text, *rest in rows
        for function in ("box", "rev", "fwd")
    ]


@pytest.mark.parametrize(
    ("function", "text", "local", "domain", "utf8"), _mailbox_params(MAILBOX_OK)
)
def test_valid_mailbox(function: str, text: str, local: str, domain: str, utf8: bool) -> None:
    address, rest = run(function, text, utf8)
    assert address == Address(local, domain)
    assert (address.local_part, address.domain) == (local, domain)
    assert rest == (None if function == "box" else "")


@pytest.mark.parametrize(
    ("function", "text", "utf8", "code", "fragment"), _mailbox_params(MAILBOX_BAD)
)
def test_invalid_mailbox(function: str, text: str, utf8: bool, code: int, fragment: str) -> None:
    expect_error(function, text, utf8, code, fragment)


@pytest.mark.parametrize(
    ("function", "text", "utf8", "local", "domain", "rest"),
    [pytest.param(*row, id=f"{row[0]}-{_id(row[1])}") for row in PATH_OK],
)
def test_valid_path(
    function: str, text: str, utf8: bool, local: str | None, domain: str, rest: str | None
) -> None:
    address, got_rest = run(function, text, utf8)
    if local is None:
        assert address is None
    else:
        assert address is not None
        assert (address.local_part, address.domain) == (local, domain)
    assert got_rest == rest


@pytest.mark.parametrize(
    ("function", "text", "utf8", "code", "fragment"),
    [pytest.param(*row, id=f"{row[0]}-{_id(row[1])}") for row in PATH_BAD]
    + [pytest.param("box", *row, id=f"box-{_id(row[0])}") for row in BARE_BAD],
)
def test_invalid_path(function: str, text: str, utf8: bool, code: int, fragment: str) -> None:
    expect_error(function, text, utf8, code, fragment)


def expect_error(function: str, text: str, utf8: bool, code: int, fragment: str) -> None:
    with pytest.raises(ReplyError) as info:
        run(function, text, utf8)
    reply = info.value.reply
    assert (reply.code, reply.enhanced) == (code, enhanced_for(function, code))
    assert fragment in reply.text
    if code == 501:
        noun = {"rev": "sender address", "fwd": "recipient address", "box": "mailbox"}[function]
        assert reply.text.startswith(f"Syntax error in {noun}: ")


# --------------------------------------------------------------------------------------
# Address itself
# --------------------------------------------------------------------------------------


def test_address_str_and_properties() -> None:
    assert str(Address("a", "b")) == "a@b"
    assert str(Address('"a b"', "[IPv6:::1]")) == '"a b"@[IPv6:::1]'
    assert str(Address("Postmaster", "")) == "Postmaster"
    assert Address("a", "b").is_ascii
    assert not Address("ü", "b").is_ascii
    assert not Address("a", "bücher.example").is_ascii
    assert Address("a.b", "c").local_part_unquoted == "a.b"
    assert Address('"a b"', "c").local_part_unquoted == "a b"
    assert Address('"a\\"b\\\\c\\d"', "x").local_part_unquoted == 'a"b\\cd'
    assert Address('""', "x").local_part_unquoted == ""
    with pytest.raises(AttributeError):
        Address("a", "b").domain = "c"  # type: ignore[misc]


def test_sans_io() -> None:
    tree = ast.parse(Path(address_module.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module.split(".")[0] for node in ast.walk(tree)
         if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"trio", "socket", "asyncio", "selectors"}


def test_long_near_misses_are_refused() -> None:
    # Long near-misses (the inputs that make backtracking regexes explode) are refused;
    # their speed is measured in benchmarks/, not asserted here.
    nasty = [
        "<" + "a" * 50_000 + "!",
        "<" + "a." * 25_000 + "@",
        "<a@" + "a-" * 25_000 + ">",
        "<a@" + "a." * 25_000 + ".>",
        "<" + "@a," * 15_000 + "b>",
        '<"' + "\\a" * 25_000,
    ]
    for text in nasty:
        for utf8 in (False, True):
            with pytest.raises(ReplyError):
                parse_forward_path(text, utf8=utf8)


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------

# Text rich in the characters the grammar cares about, to reach deep into the parser.
_interesting = st.lists(
    st.sampled_from([*'<>@.,:"\\[] aZ09-_!ü例\x00\t\r\n\x7f\x85\udc80', "IPv6:", "postmaster"]),
    max_size=30,
).map("".join)
_any_text = st.one_of(st.text(max_size=80), _interesting, _interesting.map(lambda s: "<" + s))


@given(_any_text, st.booleans())
def test_only_reply_errors(text: str, utf8: bool) -> None:
    for function in ("rev", "fwd", "box"):
        try:
            address, rest = run(function, text, utf8)
        except ReplyError as exc:
            # The rule-by-rule diagnosis always finds a specific problem.
            assert "invalid address" not in exc.reply.text
            assert exc.reply.code in (501, 553)
            continue
        if address is None:
            continue
        assert rest is None or rest == "" or rest.startswith(" ")
        assert utf8 or address.is_ascii
        if address.domain:
            assert parse_mailbox(str(address), utf8=utf8) == address
            assert parse_forward_path(f"<{address}>", utf8=utf8) == (address, "")


_ascii_atext = string.ascii_letters + string.digits + ATEXT_SPECIALS
_non_ascii = st.characters(min_codepoint=0xA0, codec="utf-8")  # no surrogates


def _local_parts(utf8: bool) -> st.SearchStrategy[tuple[str, str]]:
    """(local part as written, local part unquoted)."""
    atext = st.one_of(st.sampled_from(_ascii_atext), _non_ascii) if utf8 else st.sampled_from(
        _ascii_atext
    )
    # Small enough to stay within 64 octets even with 4-octet characters.
    atom = st.text(atext, min_size=1, max_size=4)
    dot_string = st.lists(atom, min_size=1, max_size=3).map(".".join)
    printable = st.characters(min_codepoint=32, max_codepoint=126)
    qchar = st.one_of(printable, _non_ascii) if utf8 else printable
    raw = st.text(qchar, max_size=12)

    def quote(s: str) -> tuple[str, str]:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"', s

    return st.one_of(dot_string.map(lambda s: (s, s)), raw.map(quote))


_ascii_label = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,10}[A-Za-z0-9])?", fullmatch=True)
_u_label = st.sampled_from(["bücher", "例子", "münchen", "δοκιμή", "日本語", "ñandú"])
_ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: "[{}.{}.{}.{}]".format(*t))
_ipv6 = st.integers(0, 2**128 - 1).map(lambda n: f"[IPv6:{ipaddress.IPv6Address(n)}]")


def _domains(utf8: bool) -> st.SearchStrategy[str]:
    label = st.one_of(_ascii_label, _u_label) if utf8 else _ascii_label
    return st.one_of(st.lists(label, min_size=1, max_size=4).map(".".join), _ipv4, _ipv6)


@st.composite
def _mailboxes(draw: st.DrawFn) -> tuple[bool, str, str, str]:
    utf8 = draw(st.booleans())
    local, unquoted = draw(_local_parts(utf8))
    return utf8, local, unquoted, draw(_domains(utf8))


@given(_mailboxes())
def test_mailbox_round_trip(case: tuple[bool, str, str, str]) -> None:
    utf8, local, unquoted, domain = case
    text = f"{local}@{domain}"
    address = parse_mailbox(text, utf8=utf8)
    assert address == Address(local, domain)
    assert address.local_part_unquoted == unquoted
    assert str(address) == text
    assert parse_mailbox(str(address), utf8=utf8) == address
    assert parse_reverse_path(f"<{address}> SIZE=1", utf8=utf8) == (address, " SIZE=1")
    assert parse_forward_path(f"<@relay.example:{address}>", utf8=utf8) == (address, "")
    if not address.is_ascii:
        with pytest.raises(ReplyError) as info:
            parse_mailbox(text, utf8=False)
        assert (info.value.reply.code, info.value.reply.enhanced) == (553, "5.6.7")


# ------------------------------------------------------------------ exact diagnostics
# What the client is told is part of the behaviour: each problem has its own words, and
# the enhanced code says whose address it was (5.1.7 sender, 5.1.3 recipient).

RECIPIENT_PROBLEMS = [
    ("a@b.c", "address must be enclosed in angle brackets <...>"),
    ("<>", "the null path <> is only allowed for the sender"),
    ("<@r.example>", "source route must be followed by ':' and a mailbox"),
    ("<@r.example,r2.example:a@b.c>",
     "invalid character 'r' in source route (each hop starts with '@')"),
    ("<@r.example,@:a@b.c>", "empty source route domain"),
    ("<a@b.c", "missing closing '>'"),
    ("<a>", "missing '@' and domain"),
    ('<"abc@b.c>', "unterminated quoted string in local part"),
    ("<.a@b.c>", "local part starts with a dot"),
    ("<a..b@b.c>", "local part contains consecutive dots"),
    ("<a.@b.c>", "local part ends with a dot"),
    ("<@r.example:", "empty local part"),
    ("<a @b.c>", "space in local part (allowed only inside a quoted string)"),
    ("<a\x01@b.c>", "control character U+0001 in local part"),
    ("<a\x1f@b.c>", "control character U+001F in local part"),
    ("<a@[1.2.3.4>", "unterminated address literal (missing ']')"),
    ("<a@[]>", "empty address literal []"),
    ("<a@>", "empty domain"),
    ("<a@b,c>", "invalid character ',' in domain"),
    ("<a@b_c.d>", "invalid character '_' in domain"),
    ("<a@b..c>", "domain contains consecutive dots"),
    ("<a@b.c.>", "domain ends with a dot"),
    ("<a@-b.c>", "domain label '-b' starts or ends with a hyphen"),
    ("<a@b.c>x", "unexpected 'x' after '>' (parameters follow a space)"),
    ("<a@b.c>>", "unexpected '>' after '>' (parameters follow a space)"),
    ("<a@" + "x" * 64 + ".c>", "domain label longer than 63 octets"),
    ("<a@[IPv6:1::2::3]>", "invalid IPv6 address literal [IPv6:1::2::3]"),
]


@pytest.mark.parametrize(("path", "problem"), RECIPIENT_PROBLEMS)
def test_each_recipient_problem_is_named(path: str, problem: str) -> None:
    with pytest.raises(ReplyError) as info:
        parse_forward_path(path, utf8=True)
    assert str(info.value.reply) == f"501 5.1.3 Syntax error in recipient address: {problem}"


def test_sender_problems_carry_the_sender_code() -> None:
    with pytest.raises(ReplyError) as info:
        parse_reverse_path("<>x", utf8=False)
    assert str(info.value.reply) == ("501 5.1.7 Syntax error in sender address: unexpected "
                                     "'x' after '>' (parameters follow a space)")
    with pytest.raises(ReplyError) as info:
        parse_reverse_path("<a@[]>", utf8=False)
    assert str(info.value.reply) == ("501 5.1.7 Syntax error in sender address: empty "
                                     "address literal []")


@pytest.mark.parametrize(("text", "problem"), [
    ("a", "missing '@' and domain"),
    ("a@", "empty domain"),
    ("a@b.c>", "invalid character '>' in domain"),
    ("<a@b.c>", "invalid character '<' in local part"),
])
def test_bare_mailbox_problems(text: str, problem: str) -> None:
    with pytest.raises(ReplyError) as info:
        parse_mailbox(text, utf8=False)
    assert str(info.value.reply) == f"501 5.1.3 Syntax error in mailbox: {problem}"


@pytest.mark.parametrize(("char", "problem"), [
    ("\x7f", "control character U+007F"), ("\x85", "control character U+0085"),
    ("\x9f", "control character U+009F"), ("\ud800", "invalid UTF-8"),
    ("\udc80", "invalid UTF-8"), ("\udfff", "invalid UTF-8"), (None, None),
])
def test_controls_and_undecodable_octets_in_utf8_addresses(char: str | None,
                                                            problem: str | None) -> None:
    # C1 controls (U+0080-U+009F) and lone surrogates (undecodable octets) are refused;
    # their neighbours U+00A0 and U+E000 are ordinary characters.
    if char is None:
        for fine in ("\xa0", "\ue000"):
            assert parse_forward_path(f"<a{fine}@b.c>", utf8=True)[0].local_part == "a" + fine
        return
    with pytest.raises(ReplyError) as info:
        parse_forward_path(f"<a{char}@b.c>", utf8=True)
    assert str(info.value.reply) == (f"501 5.1.3 Syntax error in recipient address: "
                                     f"{problem} in local part")


@pytest.mark.parametrize(("literal", "valid"), [
    ("IPv6:1:2:3:4:5:6:7:8", True), ("IPv6:1:2:3:4:5:6:7", False),
    ("IPv6:1:2:3:4:5:6::", True), ("IPv6:1:2:3:4:5::6", True),
    ("IPv6::1:2:3:4:5:6:7", False), ("IPv6:1::2:3:4:5:6:7", False),
    ("IPv6:1:2:3:4:5:6:7::8", False), ("IPv6:1:2:3:4:5:6:1.2.3.4", True),
    ("IPv6:1:2:3:4:5::1.2.3.4", False), ("IPv6:1:2:3:4::1.2.3.4", True),
])
def test_ipv6_literal_group_counts(literal: str, valid: bool) -> None:
    # RFC 5321 4.1.3: 8 groups, or at most 6 beside "::"; with an IPv4 tail 6 groups, or at
    # most 4 beside "::".
    if valid:
        assert parse_forward_path(f"<a@[{literal}]>", utf8=False)[0].domain == f"[{literal}]"
    else:
        with pytest.raises(ReplyError, match=r"invalid IPv6 address literal"):
            parse_forward_path(f"<a@[{literal}]>", utf8=False)


def test_source_routes_are_dropped_whatever_their_length() -> None:
    assert parse_forward_path("<@r1.example,@r2.example,@r3.example:a@b.c>",
                              utf8=False) == (Address("a", "b.c"), "")


@pytest.mark.parametrize("repertoire", ["ascii", "utf8"])
def test_the_compiled_grammar(repertoire: str) -> None:
    # The grammar is compiled once, at import; compiling it again here is what lets
    # mutation testing see a change to it (mutants are switched on after import).
    grammar = address_module._Grammar(
        "" if repertoire == "ascii" else address_module._NON_ASCII)
    utf8 = repertoire == "utf8"
    mailboxes = {
        "a@b.c": True, "A.Z@B.C": True, f"z{ATEXT_SPECIALS}0@x.y": True,
        '"a b\\"c"@x.y': True, '"a"b"@x.y': False, "a@[127.0.0.1]": True,
        "a@[IPv6:::1]": True, "a@b-c.d": True, "a@B9.c": True, "a..b@c.d": False,
        ".a@b.c": False, "a.@b.c": False, "a@-b.c": False, "a@b-.c": False,
        "a@b..c": False, "a b@c.d": False, "a@[]": False, "a@[a[b]": False,
        "@b.c": False, "a@": False, "a@b_c.d": False, "é@x.y": utf8, "a@é.example": utf8,
        '"é"@x.y': utf8,
    }
    for text, matches in mailboxes.items():
        assert (grammar.mailbox.fullmatch(text) is not None) == matches, text
    paths = {"<a@b.c>": True, "<@r1.example,@r2.example:a@b.c>": True,
             "<@r1.example:>": False, "a@b.c": False, "<@r1.example,r2.example:a@b.c>": False}
    for text, matches in paths.items():
        assert (grammar.path.fullmatch(text) is not None) == matches, text
    route = grammar.path.fullmatch("<@r1.example,@r2.example:a@b.c>")
    assert route is not None and route["route"] == "@r1.example,@r2.example"
    assert grammar.atom.fullmatch("a+b") and not grammar.atom.fullmatch("a.b")
    assert grammar.qcontent.fullmatch('a b\\"') and not grammar.qcontent.fullmatch('"')
    assert not grammar.qcontent.fullmatch("\t")
    assert grammar.label.fullmatch("-ab-") and not grammar.label.fullmatch("a.b")
    assert grammar.dcontent.fullmatch("IPv6:::1") and grammar.dcontent.fullmatch("")
    assert not grammar.dcontent.fullmatch("a[b") and not grammar.dcontent.fullmatch("a\\b")


@pytest.mark.parametrize(("path", "utf8", "reply"), [
    # Where the problem is decides between 501 and 553: non-ASCII after the problem does
    # not make it an SMTPUTF8 matter.
    ("<a..\u00e9@b.c>", False,
     "501 5.1.3 Syntax error in recipient address: local part contains consecutive dots"),
    ("a\u00e9@b.c", False, "501 5.1.3 Syntax error in recipient address: address must be "
                           "enclosed in angle brackets <...>"),
    ("<@a.example,@b.example:a..b@c.d>", True,
     "501 5.1.3 Syntax error in recipient address: local part contains consecutive dots"),
    ("<@a.example,@xn--a\u00e9.example:x@y.z>", True,
     "501 5.1.3 Syntax error in recipient address: source route domain label "
     "'xn--a\u00e9' is not a valid IDNA label"),
    ("<@a.example.,@b.example:x@y.z>", False,
     "501 5.1.3 Syntax error in recipient address: source route domain ends with a dot"),
    ("<@,@b.example:x@y.z>", False,
     "501 5.1.3 Syntax error in recipient address: empty source route domain"),
    ("<@a.example,", False, "501 5.1.3 Syntax error in recipient address: unexpected end "
                            "of source route (each hop starts with '@')"),
    ("<a@[\xa0]>", True,
     "501 5.1.3 Syntax error in recipient address: invalid character '\\xa0' in address "
     "literal"),
    ("<a@[\ue000]>", True,
     "501 5.1.3 Syntax error in recipient address: invalid character '\\ue000' in address "
     "literal"),
])
def test_diagnosis_at_the_right_place(path: str, utf8: bool, reply: str) -> None:
    with pytest.raises(ReplyError) as info:
        parse_forward_path(path, utf8=utf8)
    assert str(info.value.reply) == reply


def test_the_loose_label_takes_upper_case() -> None:
    for repertoire in ("", address_module._NON_ASCII):
        label = address_module._Grammar(repertoire).label
        assert label.fullmatch("-AB-") and label.fullmatch("Zz9")


def test_undecodable_octets_without_smtputf8_are_an_smtputf8_matter() -> None:
    with pytest.raises(ReplyError) as info:
        parse_forward_path("<a\udc80@b.c>", utf8=False)
    assert str(info.value.reply) == "553 5.6.7 Non-ASCII recipient address requires SMTPUTF8"


# ------------------------------------------------------------------ invisible characters
# Issue 16: IDNA2003's nameprep (the stdlib codec) maps the soft hyphen, the zero-width
# characters, the word joiner and the variation selectors to nothing, so a label holding
# one passed the codec and reached the rules spelt differently from the domain it stands
# for. IDNA2008 (RFC 5892), which RFC 6531 asks U-labels to follow, disallows every such
# character; the parser refuses them, so every consumer sees one spelling of a domain.

# Format characters (Cf: soft hyphen, zero-width (non-)joiners, word joiner, bidi
# controls, tag characters, ...), what nameprep maps to nothing (table B.1: with the Cf
# ones, U+034F, U+1806, the Mongolian and standard variation selectors), the other
# default-ignorable characters (Hangul fillers, Khmer inherent vowels, the supplementary
# variation selectors) and the other characters no name may hold (spaces, controls,
# private use, unassigned).
_INVISIBLE_EXTRA = ("\u034f\u115f\u1160\u17b4\u17b5\u1806\u180b\u180c\u180d\u180f\u3164"
                    "\ufe00\ufe0f\uffa0\U000e0100\U000e01ef")
invisible = st.one_of(
    st.characters(categories=["Cf"]),
    st.sampled_from(_INVISIBLE_EXTRA),
    st.sampled_from("\u00ad\u200b\u200c\u200d\u2060\u206a\u180e\U000e0001\U000e0041"),
    st.characters(categories=["Zs", "Zl", "Zp", "Co", "Cn"], min_codepoint=0x80),
)
_GOOD_LABELS = ["bücher", "例え", "テスト", "münchen", "δοκιμή", "example", "spamtrap", "ceo"]


@given(st.sampled_from(_GOOD_LABELS), st.integers(0, 8), invisible,
       st.sampled_from(["rev", "fwd", "box"]), st.booleans())
def test_invisible_characters_in_a_domain_label_are_refused(
        label: str, where: int, char: str, function: str, route: bool) -> None:
    spelt = label[:where] + char + label[where:]
    domain = f"{spelt}.example"
    text = f"ceo@{domain}" if function == "box" else (
        f"<@{domain}:ceo@example.com>" if route else f"<ceo@{domain}>")
    where_said = "source route domain" if route and function != "box" else "domain"
    with pytest.raises(ReplyError) as info:
        run(function, text, True)
    reply = info.value.reply
    assert (reply.code, reply.enhanced) == (501, enhanced_for(function, 501)), reply
    assert f"{where_said} label contains U+{ord(char):04X}" in reply.text, reply
    # The reply names the character; it does not echo it.
    assert char not in reply.text


@pytest.mark.parametrize("text", [
    "<ceo@exa\u00admple.com>", "<ceo@exa\u200bmple.com>", "<ceo@example\u2060.com>",
    "<x@spam\u00adtrap.example>", "<x@spam\u200ctrap.example>", "<x@spam\u200dtrap.example>",
    "<x@spam\ufe0ftrap.example>", "<x@spamtrap\U000e0041.example>",
])
def test_the_reported_bypasses_are_refused(text: str) -> None:
    with pytest.raises(ReplyError) as info:
        parse_forward_path(text, utf8=True)
    assert info.value.reply.code == 501


@pytest.mark.parametrize(("text", "domain"), [
    ("<a@bücher.example>", "bücher.example"), ("<a@例え.テスト>", "例え.テスト"),
    ("<a@xn--bcher-kva.example>", "xn--bcher-kva.example"),
    ("<a@xn--r8jz45g.xn--zckzah>", "xn--r8jz45g.xn--zckzah"),
    ("<a@BÜCHER.example>", "BÜCHER.example"), ("<a@δοκιμή.example>", "δοκιμή.example"),
])
def test_ordinary_internationalised_domains_still_pass(text: str, domain: str) -> None:
    address, rest = parse_forward_path(text, utf8=True)
    assert (address.domain, rest) == (domain, "")
