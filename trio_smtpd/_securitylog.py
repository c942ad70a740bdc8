"""The library's log messages that an operator watching for abuse acts on, with their
facts attached for programs to read.

A failed TLS handshake, a failed AUTH and a connection refused by a limit are logged by
the ``trio_smtpd`` logger as readable text (with the client's address), and the
``LogRecord`` also carries ``smtp_event``, the event's name, and ``smtp``, a dict of its
fields, so that a log handler (a JSON formatter, a fail2ban feed) never has to parse the
text. The names and fields are part of the API (see docs/server.md, "Logging"):

- ``tls_failed``: ``session``, ``peer``, ``mode`` (``"starttls"``/``"implicit"``),
  ``reason`` (``TLSFailed``'s), ``detail``, ``after_hello``;
- ``auth_failed``: ``session``, ``peer``, ``mechanism``, ``user`` (the name the client
  gave, None when it gave none or the exchange was malformed), ``code`` (535, 501,
  454...), ``reason``;
- ``connection_refused``: ``peer``, ``limit`` (as ``Metrics.connection_refused``).

``peer`` is ``(host, port)`` or None. Client text (a user name) is passed as given: a
formatter must escape it, as it must any text from a client.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["format_peer", "log_security_event"]

log = logging.getLogger("trio_smtpd")


def log_security_event(event: str, message: str, *args: object, **fields: Any) -> None:
    """Log ``message % args`` at INFO, with ``event`` and ``fields`` on the record."""
    log.info(message, *args, extra={"smtp_event": event, "smtp": fields})


def format_peer(peer: tuple[str, int] | None) -> str:
    """``host:port`` (``[host]:port`` for IPv6) for the text of a message."""
    if peer is None:
        return "an unknown client"
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
