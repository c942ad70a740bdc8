"""Listening sockets for the sinkhole: bound at start-up, shared by worker processes.

They are bound with the standard library before the event loop starts, so that a port in
use is a configuration error (exit 2). With ``--workers N``, where the system has
SO_REUSEPORT the supervisor makes, for each address, a group of N listening sockets, one
per worker, which each worker inherits (``bind_group``); on Linux a BPF program routes
every client address to one of them (``routing``), so per-address limits hold across
workers. The group's first socket is bound without SO_REUSEPORT, so another instance on
the port (one process or several) is refused, as one process is; the others then join
it. Elsewhere the supervisor binds and listens once and the workers share that socket.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Literal

from . import routing

__all__ = [
    "INHERIT_ENV",
    "REUSEPORT",
    "BoundSocket",
    "bind",
    "bind_group",
    "from_environment",
    "to_environment",
]

Kind = Literal["plain", "tls", "proxy"]
_KINDS: dict[str, Kind] = {"plain": "plain", "tls": "tls", "proxy": "proxy"}
INHERIT_ENV = "TRIO_SMTPD_LISTEN_FDS"
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
         listen: bool = True) -> list[BoundSocket]:
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
            if listen:
                sock.listen(backlog)
    except OSError:
        for item in bound:
            item.sock.close()
        raise
    return bound


def bind_group(kind: Kind, host: str, port: int, count: int, backlog: int = 1024, *,
               by_address: bool = True) -> list[list[BoundSocket]]:
    """For each address ``host`` resolves to, ``count`` listening sockets in one
    SO_REUSEPORT group, routed by client address where possible (``by_address``; never
    for PROXY listeners); one list per worker.

    The first socket is bound alone (exclusively: a port someone holds is refused), then
    joins the group; a port of 0 is the one it got.
    """
    firsts = bind(kind, host, port, backlog, listen=False)
    workers: list[list[BoundSocket]] = [[] for _ in range(count)]
    try:
        for first in firsts:
            workers[0].append(first)
            sock = first.sock
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.listen(backlog)  # index 0 of the group: listening order is the index
            for worker in workers[1:]:
                other = socket.socket(sock.family, sock.type, sock.proto)
                worker.append(BoundSocket(kind, other))
                _reuse(other)
                other.bind(sock.getsockname())
                other.listen(backlog)
            if by_address and kind != "proxy" and routing.AVAILABLE:
                routing.route_by_source(sock, count)
    except OSError:
        for item in [*firsts, *(item for worker in workers[1:] for item in worker)]:
            item.sock.close()
        raise
    return workers


def _reuse(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)


def to_environment(sockets: list[BoundSocket]) -> dict[str, str]:
    """Make the sockets inheritable; return the environment that names them."""
    for item in sockets:
        item.sock.set_inheritable(True)
    return {INHERIT_ENV: ",".join(f"{item.kind}:{item.sock.fileno()}" for item in sockets)}


def from_environment() -> list[BoundSocket] | None:
    """The sockets a supervisor arranged for this worker, or None when on our own."""
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
