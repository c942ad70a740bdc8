"""PROXY protocol v1 and v2 headers (HAProxy's spec)."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_smtpd._proxy import V2_SIGNATURE, ProxyHeader, ProxyHeaderError, parse_proxy_header


def v2(command: int, family: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(body)) + body


V2_TCP4 = v2(1, 0x11, bytes([192, 0, 2, 7, 198, 51, 100, 1]) + struct.pack("!HH", 40000, 25))
V2_TCP6 = v2(1, 0x21, bytes(15) + b"\x01" + bytes(15) + b"\x02" + struct.pack("!HH", 1, 2))


@pytest.mark.parametrize(("data", "expected"), [
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\nEHLO x\r\n",
     ProxyHeader(("192.0.2.7", 40000), ("198.51.100.1", 25), 1, b"EHLO x\r\n")),
    (b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 25\r\n",
     ProxyHeader(("2001:db8::7", 40000), ("2001:db8::1", 25), 1, b"")),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(None, None, 1, b"")),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nrest", ProxyHeader(None, None, 1, b"rest")),
    (V2_TCP4 + b"after", ProxyHeader(("192.0.2.7", 40000), ("198.51.100.1", 25), 2,
                                     b"after")),
    (V2_TCP6, ProxyHeader(("::1", 1), ("::2", 2), 2, b"")),
    (v2(0, 0x00, b""), ProxyHeader(None, None, 2, b"")),  # LOCAL health check
    (v2(1, 0x00, b""), ProxyHeader(None, None, 2, b"")),  # UNSPEC
    # TLVs after the addresses are skipped.
    (v2(1, 0x11, bytes(12) + b"\x01\x00\x02h2"), ProxyHeader(("0.0.0.0", 0), ("0.0.0.0", 0),
                                                              2, b"")),
])
def test_valid_headers(data: bytes, expected: ProxyHeader) -> None:
    assert parse_proxy_header(data) == expected


@pytest.mark.parametrize("data", [
    b"EHLO x\r\n",
    b"\x16\x03\x01\x02\x00",  # a TLS ClientHello
    b"PROXY TCP4 192.0.2.7 198.51.100.1 40000\r\n",
    b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",
    b"PROXY TCP4 192.0.2.300 198.51.100.1 1 2\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n",
    b"PROXY TCP4 192.0.2.7 198.51.100.1 025 25\r\n",
    b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
    b"PROXY " + b"x" * 120,
    V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12),  # version 3
    V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12),  # command 2
    v2(1, 0x11, bytes(8)),  # short IPv4 block
    v2(1, 0x21, bytes(20)),  # short IPv6 block
    v2(1, 0x31, bytes(216)),  # AF_UNIX: not for SMTP clients
    V2_SIGNATURE + b"\x21\x11\xff\xff",  # absurd length
])
def test_malformed_headers(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data)


@pytest.mark.parametrize("whole", [
    b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n", V2_TCP4, V2_TCP6])
def test_every_prefix_asks_for_more(whole: bytes) -> None:
    for cut in range(len(whole)):
        assert parse_proxy_header(whole[:cut]) is None, cut
    assert parse_proxy_header(whole) is not None


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_else(data: bytes) -> None:
    with contextlib.suppress(ProxyHeaderError):
        parse_proxy_header(data)
