"""Listening sockets for the sinkhole: bound once at start-up, shareable with workers.

They are bound with the standard library before the event loop starts, so that a port in
use is a configuration error (exit 2), and so that a supervisor can bind them once and
hand the same sockets to every worker process (``--workers``): the kernel then spreads
connections over the workers that accept on them. (SO_REUSEPORT would need each worker
to bind its own socket, which cannot share a port chosen as 0 and leaves connections
stranded in the socket of a worker that died.)
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Literal

__all__ = ["INHERIT_ENV", "BoundSocket", "bind", "from_environment", "to_environment"]

Kind = Literal["plain", "tls", "proxy"]
_KINDS: dict[str, Kind] = {"plain": "plain", "tls": "tls", "proxy": "proxy"}
INHERIT_ENV = "TRIO_SMTPD_LISTEN_FDS"


@dataclass(frozen=True)
class BoundSocket:
    kind: Kind
    sock: socket.socket

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind(kind: Kind, host: str, port: int, backlog: int = 1024) -> list[BoundSocket]:
    """Bind every address ``host`` resolves to (raises OSError)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    bound: list[BoundSocket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, type_, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, type_, proto)
            bound.append(BoundSocket(kind, sock))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
    except OSError:
        for item in bound:
            item.sock.close()
        raise
    return bound


def to_environment(sockets: list[BoundSocket]) -> dict[str, str]:
    """Make the sockets inheritable; return the environment that names them."""
    for item in sockets:
        item.sock.set_inheritable(True)
    return {INHERIT_ENV: ",".join(f"{item.kind}:{item.sock.fileno()}" for item in sockets)}


def from_environment() -> list[BoundSocket] | None:
    """The sockets a supervisor handed down, or None when started on our own."""
    spec = os.environ.get(INHERIT_ENV)
    if not spec:
        return None
    sockets = []
    for entry in spec.split(","):
        name, _, fd = entry.partition(":")
        kind = _KINDS.get(name)
        if kind is None or not fd.isdigit():
            raise ValueError(f"bad {INHERIT_ENV} entry {entry!r}")
        sockets.append(BoundSocket(kind, socket.socket(fileno=int(fd))))
    return sockets
