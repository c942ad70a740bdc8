"""The trace headers in front of each stored message.

* ``Return-Path: <sender>`` — the envelope sender (RFC 5321 4.4).
* ``X-Original-To: recipient`` — one per envelope recipient, in RCPT order, the bare
  address as Postfix writes it.
* ``Authentication-Results:`` — what was verified about the message (RFC 8601), when it
  was (see ``verifying.py``).
* ``Received:`` — RFC 5321 4.4 trace: HELO name, the client's forward-confirmed DNS
  name (``unknown`` if none) and address, as Postfix writes them, our host name, the
  protocol (RFC 3848: ESMTP, ESMTPS, ESMTPSA, LMTP...; RFC 6531: UTF8SMTP, UTF8LMTP...),
  the id of the stored file, TLS version and cipher, the recipient when there is only
  one, and the date in UTC.

What the client chose (its HELO name, addresses) is written only in a safe form
(:mod:`.safety`): a client cannot forge a clause, a comment or a line of its own.
"""

from __future__ import annotations

from datetime import UTC
from email.utils import format_datetime

from .. import Transaction
from .safety import header_address, safe_name

__all__ = ["trace_headers"]


def trace_headers(tx: Transaction, hostname: str, client_name: str | None = None,
                  *, authentication_results: str | None = None,
                  file_id: str | None = None) -> bytes:
    """Return-Path, X-Original-To, (Authentication-Results) and Received headers for
    one stored message.

    ``client_name``: the client's forward-confirmed DNS name, if it has one; ``file_id``:
    the name of the file the message is stored in (the session id without one)."""
    session = tx.info
    ip = session.peer[0] if session.peer else "unknown"
    if ":" in ip:
        ip = f"IPv6:{ip}"  # (RFC 5321 4.1.3's address literal, as Postfix writes it)
    utf8 = tx.mail_params.smtputf8
    helo = safe_name(session.helo, utf8=utf8) if session.helo else "unknown"
    client_name = safe_name(client_name, utf8=utf8) if client_name else None
    protocol = ("UTF8" if utf8 else "") + ("LMTP" if tx.lmtp else "SMTP" if utf8 else "ESMTP")
    if session.tls:
        protocol += "S"
    if session.authenticated_as:
        protocol += "A"
    clauses = [f"from {helo} ({client_name or 'unknown'} [{ip}])", f"by {hostname} (trio_smtpd)",
               f"with {protocol}", f"id {file_id or session.id}"]
    if session.tls:
        clauses.append(f"(using {session.tls.version} with cipher {session.tls.cipher})")
    if len(tx.recipients) == 1:
        clauses.append(f"for <{header_address(str(tx.recipients[0].address))}>")
    received = _fold("Received: " + "\r\n\t".join(clauses) + ";\r\n\t"
                     + format_datetime(tx.received.astimezone(UTC)) + " (UTC)")
    lines = [f"Return-Path: <{header_address(str(tx.sender or ''))}>"]
    lines += [f"X-Original-To: {header_address(str(r.address))}" for r in tx.recipients]
    if authentication_results is not None:
        lines.append(authentication_results)
    lines.append(received)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _fold(header: str) -> str:
    # Client-supplied HELO names are long at most one command line; keep each header
    # line within RFC 5322's 998 octets regardless.
    return "\r\n\t".join(line[:990] for line in header.split("\r\n\t"))
