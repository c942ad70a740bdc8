"""A raw SMTP client for the end-to-end tests: bytes exactly as a hostile client sends
them (8-bit HELO names, bare line endings, pipelined commands), replies as bytes."""

from __future__ import annotations

import socket
import ssl
from types import TracebackType


class Wire:
    """One connection to a loopback server; the greeting is read at once."""

    def __init__(self, port: int, source: str = "127.0.0.1", *, timeout: float = 20,
                 tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        sock = socket.create_connection((host, port), timeout=timeout,
                                        source_address=(source, 0))
        self.sock: socket.socket = sock if tls is None else tls.wrap_socket(sock)
        self._reader = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> bytes:
        """One whole reply (every line of a multi-line one)."""
        lines = []
        while True:
            line = self._reader.readline()
            if not line:
                raise ConnectionError(f"connection closed after {b''.join(lines)!r}")
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, line: bytes | str) -> bytes:
        """Send one command line, return its reply."""
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def starttls(self, context: ssl.SSLContext) -> None:
        assert self.command("STARTTLS").startswith(b"220")
        self.handshake(context)

    def handshake(self, context: ssl.SSLContext) -> None:
        """TLS from here on (the 220 to STARTTLS read already)."""
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")
        self._reader = self.sock.makefile("rb")

    def message(self, sender: str, recipients: list[str], body: bytes,
                ehlo: str | None = None) -> bytes:
        """A whole transaction; the reply to its data."""
        if ehlo is not None:
            assert self.command(f"EHLO {ehlo}").startswith(b"250")
        assert self.command(f"MAIL FROM:<{sender}>").startswith(b"250")
        for recipient in recipients:
            assert self.command(f"RCPT TO:<{recipient}>").startswith(b"250")
        assert self.command("DATA").startswith(b"354")
        self.send(body.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        return self.reply()

    def close(self) -> None:
        try:
            self.send(b"QUIT\r\n")
            self.reply()
        except OSError:
            pass
        finally:
            self.sock.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
