"""The trace headers in front of each stored message.

* ``Return-Path: <sender>`` — the envelope sender (RFC 5321 4.4).
* ``X-Original-To: <recipient>`` — one per envelope recipient, in RCPT order.
* ``Authentication-Results:`` — what was verified about the message (RFC 8601), when it
  was (see ``verifying.py``).
* ``Received:`` — RFC 5321 4.4 trace: HELO name, the client's forward-confirmed DNS
  name (``unknown`` if none) and address, as Postfix writes them, our host name, the
  protocol (RFC 3848: ESMTP, ESMTPS, ESMTPSA, LMTP...), the session id, TLS version and
  cipher, the recipient when there is only one, and the date.
"""

from __future__ import annotations

from email.utils import format_datetime

from .. import Transaction

__all__ = ["trace_headers"]


def trace_headers(tx: Transaction, hostname: str, client_name: str | None = None,
                  authentication_results: str | None = None) -> bytes:
    """Return-Path, X-Original-To, (Authentication-Results) and Received headers for
    one stored message.

    ``client_name``: the client's forward-confirmed DNS name, if it has one."""
    session = tx.info
    ip = session.peer[0] if session.peer else "unknown"
    helo = session.helo or "unknown"
    protocol = "LMTP" if tx.lmtp else "UTF8SMTP" if tx.mail_params.smtputf8 else "ESMTP"
    if session.tls:
        protocol += "S"
    if session.authenticated_as:
        protocol += "A"
    clauses = [f"from {helo} ({client_name or 'unknown'} [{ip}])", f"by {hostname} (trio_smtpd)",
               f"with {protocol}", f"id {session.id}"]
    if session.tls:
        clauses.append(f"(using {session.tls.version} with cipher {session.tls.cipher})")
    if len(tx.recipients) == 1:
        clauses.append(f"for <{tx.recipients[0].address}>")
    received = _fold("Received: " + "\r\n\t".join(clauses) + ";\r\n\t"
                     + format_datetime(tx.received.astimezone()))
    lines = [f"Return-Path: <{tx.sender or ''}>"]
    lines += [f"X-Original-To: <{r.address}>" for r in tx.recipients]
    if authentication_results is not None:
        lines.append(authentication_results)
    lines.append(received)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _fold(header: str) -> str:
    # Client-supplied HELO names are long at most one command line; keep each header
    # line within RFC 5322's 998 octets regardless.
    return "\r\n\t".join(line[:990] for line in header.split("\r\n\t"))
