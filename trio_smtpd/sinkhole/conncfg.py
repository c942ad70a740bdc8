"""A greeting name (and certificate) per local address: sinksmtp's ``-conncfg`` file.

A machine with several addresses may answer for several hosts. ``--conncfg FILE`` holds
lines in sinksmtp's format::

    # LOCAL                hostname=NAME         cert=FILE key=FILE
    192.0.2.25             hostname=mx1.example  cert=mx1.pem key=mx1.key
    198.51.100.0/24:25     hostname=mx2.example
    *                      hostname=mx.example

LOCAL is the address the client connected to: an IP address, ``IP:PORT`` (``[IPv6]:PORT``),
a CIDR network, or ``*`` for any. The first line that matches gives the connection its
host name (greeting, EHLO reply and ``Received:`` headers) and its certificate; as in
sinksmtp, a matching line without ``cert=``/``key=`` means no STARTTLS on that
connection. No matching line: the command line's settings. Relative file names are
relative to the file. It is read at start (a bad file is a configuration error) and on
SIGHUP (a bad file keeps the previous one).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from .. import Config

__all__ = ["ConnConfig", "ConnConfigError", "load_conncfg"]


class ConnConfigError(ValueError):
    pass


@dataclass(frozen=True)
class _Line:
    address: ipaddress.IPv4Network | ipaddress.IPv6Network | None  # None: any
    port: int | None
    hostname: str | None
    tls: ssl.SSLContext | None

    def matches(self, local: tuple[str, int] | None) -> bool:
        if self.address is None:
            return True
        if local is None:
            return False
        try:
            ip = ipaddress.ip_address(local[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip in self.address and self.port in (None, local[1])


class ConnConfig:
    """The lines of one ``--conncfg`` file, with the ``Config`` each one gives."""

    def __init__(self, lines: list[_Line]) -> None:
        self._lines = lines
        self._configs: dict[tuple[int, int], Config] = {}  # (id of base, line) -> config

    def config_for(self, base: Config, local: tuple[str, int] | None) -> Config | None:
        """The settings for a connection to ``local``; None: the command line's."""
        for index, line in enumerate(self._lines):
            if line.matches(local):
                key = (id(base), index)
                config = self._configs.get(key)
                if config is None:  # made once per line: the engine caches per config
                    config = self._configs[key] = dataclasses.replace(
                        base, hostname=line.hostname or base.hostname, tls=line.tls)
                return config
        return None


def load_conncfg(path: str | Path) -> ConnConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConnConfigError(f"{path}: {exc}") from None
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            lines.append(_parse_line(line.split(), path.parent))
        except ValueError as exc:
            raise ConnConfigError(f"{path}, line {number}: {exc}") from None
    return ConnConfig(lines)


def _parse_line(fields: list[str], base: Path) -> _Line:
    if len(fields) > 4:
        raise ValueError("too many fields")
    address, port = _local(fields[0])
    settings: dict[str, str] = {}
    for field in fields[1:]:
        key, sep, value = field.partition("=")
        if not sep or key not in ("hostname", "cert", "key") or not value:
            raise ValueError(f"{field!r}: expected hostname=, cert= or key=")
        if key in settings:
            raise ValueError(f"{key}= given twice")
        settings[key] = value
    hostname = settings.get("hostname")
    if hostname is not None and not (hostname.isascii() and hostname.isprintable()):
        raise ValueError(f"bad host name {hostname!r}")
    if ("cert" in settings) != ("key" in settings):
        raise ValueError("cert= and key= go together")
    tls = None
    if "cert" in settings:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            tls.load_cert_chain(base / settings["cert"], base / settings["key"])
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load certificate/key: {exc}") from None
    return _Line(address, port, hostname, tls)


def _local(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network | None,
                                  int | None]:
    if text == "*":
        return None, None
    host, port = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = _port(rest.removeprefix(":"), text)
    elif text.count(":") == 1:
        host, _, rest = text.partition(":")
        port = _port(rest, text)
    try:
        return ipaddress.ip_network(host, strict=False), port
    except ValueError:
        raise ValueError(f"{text!r} is not an address, IP:PORT, network or *") from None


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{whole!r}: bad port")
    return int(text)
