"""systemd: sockets passed by socket activation, and ``Type=notify`` messages.

Socket activation (``sd_listen_fds``): when ``LISTEN_PID`` is this process, file
descriptors 3 to ``3 + LISTEN_FDS - 1`` are listening sockets that systemd bound (so
port 25 needs no root here). ``LISTEN_FDNAMES`` (``FileDescriptorName=`` in the socket
unit) says what each is for: ``tls`` (or ``smtps``, ``submissions``) implicit TLS,
``proxy`` a PROXY-protocol listener, ``metrics`` the ``/metrics`` endpoint, anything
else plain SMTP/LMTP. The variables are removed once read, as ``sd_listen_fds(1)`` does,
so that child processes do not take the sockets for theirs.

Notifications (``sd_notify``) are datagrams to the ``AF_UNIX`` socket named by
``NOTIFY_SOCKET`` (a path, or ``@`` for Linux's abstract namespace): ``READY=1`` once
listening, ``RELOADING=1`` (with ``MONOTONIC_USEC``) and ``READY=1`` around a SIGHUP
reload, ``STOPPING=1`` at shutdown and ``WATCHDOG=1`` every half ``WATCHDOG_USEC``.
A few lines, so no dependency on libsystemd; outside systemd they do nothing.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field

from .configure import ConfigError
from .sockets import BoundSocket, Kind

__all__ = ["FIRST_FD", "Notifier", "PassedSockets", "listen_fds"]

FIRST_FD = 3  # SD_LISTEN_FDS_START
_KINDS: dict[str, Kind] = {"tls": "tls", "smtps": "tls", "submissions": "tls",
                           "proxy": "proxy"}
_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


@dataclass
class PassedSockets:
    """What systemd handed over: listeners, and perhaps the metrics endpoint's socket."""

    listeners: list[BoundSocket] = field(default_factory=list)
    metrics: socket.socket | None = None
    names: list[str] = field(default_factory=list)


def listen_fds(environ: MutableMapping[str, str] | None = None) -> PassedSockets | None:
    """The sockets systemd passed to this process, or None if it passed none."""
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return None
    count, names = env.get("LISTEN_FDS", ""), env.get("LISTEN_FDNAMES", "")
    for name in _VARIABLES:
        env.pop(name, None)
    if not count.isdigit() or int(count) < 1:
        raise ConfigError(f"LISTEN_FDS={count!r}: expected a positive number")
    labels = names.split(":") if names else []
    passed = PassedSockets()
    for index in range(int(count)):
        fd = FIRST_FD + index
        name = labels[index] if index < len(labels) else "unknown"
        sock = _passed_socket(fd, name)
        passed.names.append(name)
        if name == "metrics":
            passed.metrics = sock
        else:
            passed.listeners.append(BoundSocket(_KINDS.get(name, "plain"), sock))
    if not passed.listeners:
        raise ConfigError("systemd passed no socket to serve mail on")
    return passed


def _passed_socket(fd: int, name: str) -> socket.socket:
    """The listening stream socket systemd passed as ``fd``, or a ConfigError saying
    what is there instead (nothing, a file, another kind of socket)."""
    try:
        os.set_inheritable(fd, False)
        sock = socket.socket(fileno=fd)
        listening = (sock.type == socket.SOCK_STREAM
                     and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError as exc:
        raise ConfigError(f"passed socket {fd} ({name}) cannot be used: "
                          f"{exc.strerror or exc}") from None
    if not listening:
        raise ConfigError(
            f"passed socket {fd} ({name}) is not a listening stream socket: use "
            "ListenStream= without Accept=yes")
    return sock


class Notifier:
    """``sd_notify``: a no-op unless systemd gave a ``NOTIFY_SOCKET``.

    Taking it removes ``NOTIFY_SOCKET`` from the environment, so that worker processes
    (which are not what systemd watches) stay quiet.
    """

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.pop("NOTIFY_SOCKET", "")
        self._address = "\0" + path[1:] if path.startswith("@") else path
        #: Seconds between WATCHDOG=1 messages (None: no watchdog asked for).
        self.watchdog_interval: float | None = None
        usec, pid = env.pop("WATCHDOG_USEC", ""), env.pop("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and pid in ("", str(os.getpid())):
            self.watchdog_interval = int(usec) / 2e6

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *lines: str) -> None:
        """Send one message; a failure is not the server's problem, so it is ignored."""
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                               ) as sock:
                sock.sendto("\n".join(lines).encode() + b"\n", self._address)
        except OSError:
            pass

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", f"STATUS={status}" if status else "STATUS=ready",
                    f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading rules")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=shutting down")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")
