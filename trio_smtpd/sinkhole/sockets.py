"""Listening sockets for the sinkhole: bound at start-up, shared by worker processes.

They are bound with the standard library before the event loop starts, so that a port in
use is a configuration error (exit 2). With ``--workers``, where the system has
SO_REUSEPORT the supervisor binds each address without listening (reserving the port,
including one chosen as 0) and every worker binds and listens on it with SO_REUSEPORT,
so the kernel balances new connections over the workers. Elsewhere the supervisor binds
and listens once and the workers inherit that one socket.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "INHERIT_ENV",
    "REUSEPORT",
    "REUSEPORT_ENV",
    "BoundSocket",
    "bind",
    "from_environment",
    "reuseport_environment",
    "to_environment",
]

Kind = Literal["plain", "tls", "proxy"]
_KINDS: dict[str, Kind] = {"plain": "plain", "tls": "tls", "proxy": "proxy"}
INHERIT_ENV = "TRIO_SMTPD_LISTEN_FDS"
REUSEPORT_ENV = "TRIO_SMTPD_REUSEPORT"
REUSEPORT = hasattr(socket, "SO_REUSEPORT")


@dataclass(frozen=True)
class BoundSocket:
    kind: Kind
    sock: socket.socket

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind(kind: Kind, host: str, port: int, backlog: int = 1024, *,
         reuse_port: bool = False, listen: bool = True) -> list[BoundSocket]:
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
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            if listen:
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


def reuseport_environment(reserved: list[BoundSocket]) -> dict[str, str]:
    """The addresses of the supervisor's reserved sockets, for workers to bind again."""
    entries = []
    for item in reserved:
        host, port = item.sock.getsockname()[:2]
        entries.append(f"{item.kind}|{host}|{port}")
    return {REUSEPORT_ENV: ",".join(entries)}


def from_environment() -> list[BoundSocket] | None:
    """The sockets a supervisor arranged for this worker, or None when on our own."""
    reuse = os.environ.get(REUSEPORT_ENV)
    if reuse:
        bound: list[BoundSocket] = []
        for entry in reuse.split(","):
            name, host, port = entry.split("|")
            kind = _KINDS.get(name)
            if kind is None or not port.isdigit():
                raise ValueError(f"bad {REUSEPORT_ENV} entry {entry!r}")
            bound += bind(kind, host, int(port), reuse_port=True)
        return bound
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
