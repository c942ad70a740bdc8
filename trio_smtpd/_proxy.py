"""The PROXY protocol, versions 1 and 2 (HAProxy's spec).

A load balancer in TCP mode puts one header in front of the client's bytes saying who the
client really is. ``parse_proxy_header(data)`` reads it from the first bytes of a
connection: it returns ``None`` while more bytes are needed, raises ``ProxyHeaderError``
for anything malformed, and otherwise returns the header with the bytes that follow it.

Only trusted peers may send the header (``ProxyProtocolListener`` checks that before
reading it); anyone else could claim any address. The parser is sans-I/O; the listener and
stream wrappers below are the trio side.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import trio

from ._networks import address_in

__all__ = [
    "ProxiedStream",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyProtocolListener",
    "parse_proxy_header",
]

_T = TypeVar("_T")

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX = b"PROXY "
_V1_MAX = 107  # the spec's longest v1 line, CRLF included
_V2_FIXED = 16
_V2_MAX_BODY = 4096  # more than any address block and TLVs HAProxy sends


class ProxyHeaderError(ValueError):
    """The connection did not start with a valid PROXY header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """Who the client is (None for LOCAL/UNKNOWN: use the real peer), and what followed."""

    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    version: int
    rest: bytes


def parse_proxy_header(data: bytes) -> ProxyHeader | None:
    if data.startswith(V2_SIGNATURE[: len(data)]) and len(data) < len(V2_SIGNATURE):
        return None
    if data.startswith(V2_SIGNATURE):
        return _parse_v2(data)
    if _V1_PREFIX.startswith(data[:6]) and len(data) < 6:
        return None
    if data.startswith(_V1_PREFIX):
        return _parse_v1(data)
    raise ProxyHeaderError("no PROXY header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, _V1_MAX)
    if end < 0:
        if len(data) >= _V1_MAX:
            raise ProxyHeaderError("PROXY v1 line too long")
        return None
    fields = data[:end].decode("ascii", "replace").split(" ")
    rest = data[end + 2:]
    if fields[1:2] == ["UNKNOWN"]:
        return ProxyHeader(None, None, 1, rest)
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("malformed PROXY v1 line")
    version = 4 if fields[1] == "TCP4" else 6
    source = (_ip(fields[2], version), _port(fields[4]))
    destination = (_ip(fields[3], version), _port(fields[5]))
    return ProxyHeader(source, destination, 1, rest)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < _V2_FIXED:
        return None
    version_command, family, length = struct.unpack_from("!BBH", data, 12)
    if version_command >> 4 != 2 or version_command & 0x0F not in (0, 1):
        raise ProxyHeaderError("unsupported PROXY v2 version or command")
    if length > _V2_MAX_BODY:
        raise ProxyHeaderError("PROXY v2 header too long")
    if len(data) < _V2_FIXED + length:
        return None
    body = data[_V2_FIXED:_V2_FIXED + length]
    rest = data[_V2_FIXED + length:]
    if version_command & 0x0F == 0:  # LOCAL: the balancer's own health check
        return ProxyHeader(None, None, 2, rest)
    if family == 0x11:  # TCP over IPv4
        if length < 12:
            raise ProxyHeaderError("PROXY v2 IPv4 address block too short")
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", body)
        source = (str(ipaddress.IPv4Address(src)), sport)
        return ProxyHeader(source, (str(ipaddress.IPv4Address(dst)), dport), 2, rest)
    if family == 0x21:  # TCP over IPv6
        if length < 36:
            raise ProxyHeaderError("PROXY v2 IPv6 address block too short")
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", body)
        source = (str(ipaddress.IPv6Address(src)), sport)
        return ProxyHeader(source, (str(ipaddress.IPv6Address(dst)), dport), 2, rest)
    if family == 0x00:  # UNSPEC: addresses unknown
        return ProxyHeader(None, None, 2, rest)
    raise ProxyHeaderError(f"unsupported PROXY v2 address family {family:#x}")


def _ip(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError(f"bad address {text!r} in PROXY v1 line") from None
    if address.version != version:
        raise ProxyHeaderError("PROXY v1 address does not match its protocol")
    return str(address)


def _port(text: str) -> int:
    if not text.isdigit() or len(text) > 5 or int(text) > 65535 or (
            len(text) > 1 and text[0] == "0"):
        raise ProxyHeaderError(f"bad port {text!r} in PROXY v1 line")
    return int(text)


class ProxiedStream(trio.abc.HalfCloseableStream):
    """A stream from a PROXY-protocol listener; ``read_header()`` before anything else."""

    def __init__(self, stream: trio.abc.Stream, listener: ProxyProtocolListener) -> None:
        self.transport_stream = stream
        self._listener = listener
        self._rest = b""
        #: The client as the PROXY header says (or the real peer for LOCAL/UNKNOWN).
        self.peer: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None

    async def read_header(self) -> None:
        """Check the peer is trusted, then read the header; ProxyHeaderError if not."""
        peer, local = socket_addresses(self.transport_stream)
        if peer is None or not self._listener.trusts(peer[0]):
            raise ProxyHeaderError(f"PROXY header from untrusted address {peer}")
        data = b""
        with trio.move_on_after(self._listener.timeout) as scope:
            while (header := parse_proxy_header(data)) is None:
                chunk = await self.transport_stream.receive_some(_V1_MAX + _V2_MAX_BODY)
                if not chunk:
                    raise ProxyHeaderError("connection closed before the PROXY header")
                data += chunk
        if scope.cancelled_caught:
            raise ProxyHeaderError("timed out waiting for the PROXY header")
        assert header is not None
        self.peer = header.source or peer
        self.local = header.destination or local
        self._rest = header.rest

    def unwrap(self) -> tuple[trio.abc.Stream, bytes]:
        """After ``read_header()``: the connection itself, and the client's bytes that
        were read past the header. This wrapper must not be used afterwards."""
        rest, self._rest = self._rest, b""
        return self.transport_stream, rest

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._rest:
            data, self._rest = self._rest, b""
            return data
        return await self.transport_stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if isinstance(self.transport_stream, trio.abc.HalfCloseableStream):
            await self.transport_stream.send_eof()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


class ProxyProtocolListener(trio.abc.Listener[ProxiedStream]):
    """Wraps a listener whose clients come through a PROXY-protocol load balancer.

    Only peers in ``trusted`` (addresses or networks) may connect; the server reads and
    checks each header in the connection's own task, never in the accept loop.
    """

    def __init__(self, listener: trio.abc.Listener[trio.abc.Stream],
                 trusted: Sequence[str], *, timeout: float = 10.0) -> None:
        if not trusted:
            raise ValueError("a PROXY-protocol listener needs trusted addresses")
        self.transport_listener = listener
        self.trusted = [ipaddress.ip_network(net, strict=False) for net in trusted]
        self.timeout = timeout

    def trusts(self, host: str) -> bool:
        """True if ``host`` may send PROXY headers."""
        return address_in(host, self.trusted)

    async def accept(self) -> ProxiedStream:
        return ProxiedStream(await self.transport_listener.accept(), self)

    async def aclose(self) -> None:
        await self.transport_listener.aclose()


def socket_addresses(
        connection: trio.abc.Stream | socket.socket, peer: object = None, local: object = None,
) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
    """The peer's and our (host, port), None for other kinds of address. ``peer`` and
    ``local``, when known already (from ``accept()``, from the listener), save asking."""
    sock = connection if isinstance(connection, socket.socket) else getattr(
        connection, "socket", None)
    if sock is None:
        return None, None
    try:
        if peer is None:
            peer = sock.getpeername()
        if local is None:
            local = sock.getsockname()
    except OSError:
        return None, None
    if isinstance(peer, tuple) and isinstance(local, tuple):
        return ((_shared(_HOSTS, str(peer[0])), int(peer[1])),
                _shared(_LOCAL_ADDRESSES, (str(local[0]), int(local[1]))))
    return None, None


# Many connections come from one client (an MTA opens several) and every connection to a
# listener has the same local address: share those objects rather than hold a copy each.
_HOSTS: dict[str, str] = {}
_LOCAL_ADDRESSES: dict[tuple[str, int], tuple[str, int]] = {}
_SHARED_MAX = 4096


def _shared(table: dict[_T, _T], value: _T) -> _T:
    shared = table.setdefault(value, value)
    if len(table) > _SHARED_MAX:  # bounded, whatever addresses come and go
        table.clear()
    return shared
