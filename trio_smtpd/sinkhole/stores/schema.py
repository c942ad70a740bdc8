"""The stores' schema: a message's record as table rows, and the versioned migrations.

Both databases have the same tables and columns (``migrations/sqlite/`` and
``migrations/postgresql/``, one numbered file per version), with each one's natural types
(``TIMESTAMPTZ``, ``INET``, ``JSONB`` and ``BYTEA`` in PostgreSQL). The columns are taken
from the record the metadata sidecar holds (``records.message_record``), and the whole
record is kept in ``metadata`` too, so that a field added to the record later is in the
database from then on without a migration.

A database says which versions it has in ``schema_migrations``; each missing version is
applied in order, in one transaction with its bookkeeping. A database newer than this
program is refused rather than written to.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ..safety import json_safe

__all__ = ["MESSAGE_COLUMNS", "Migration", "Row", "SchemaError", "message_row", "migrations",
           "pending", "statements"]

#: The ``messages`` columns a row fills, in order (``id`` comes from the database).
MESSAGE_COLUMNS = (
    "name", "file", "host", "received", "session", "peer_ip", "peer_port", "network",
    "helo", "tls_version", "tls_cipher", "tls_sni", "auth", "sender", "sender_domain",
    "size", "sha256", "body_sha256", "rule", "rdns", "fcrdns", "confirmed", "spf", "dkim",
    "arc", "dmarc", "metadata", "body",
)
RECIPIENT_COLUMNS = ("message_id", "position", "address", "domain")
LISTING_COLUMNS = ("message_id", "list", "kind", "subject", "codes", "reason")

CREATE_BOOKKEEPING = ("CREATE TABLE IF NOT EXISTS schema_migrations ("
                      "version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                      "applied TEXT NOT NULL)")


class SchemaError(Exception):
    """The database's schema is not one this program can write to."""


@dataclass(frozen=True)
class Row:
    """One message as rows: its ``messages`` values (``MESSAGE_COLUMNS``), its
    recipients (position, address, domain) and its listings (list, kind, subject,
    codes, reason)."""

    message: tuple[Any, ...]
    recipients: tuple[tuple[int, str, str], ...]
    listings: tuple[tuple[str, str, str, str, str], ...]


def message_row(record: dict[str, Any], *, host: str, file: str | None,
                body: bytes | None) -> Row:
    """The rows of a message from its record (the sidecar's JSON)."""
    ip, port = _split_peer(record.get("peer"))
    tls = record.get("tls") or {}
    dns = record.get("dns") or {}
    auth = record.get("authentication_results") or {}
    sender = record.get("sender") or ""
    message = (
        record["file"], file, host, record["received"], record["session"], ip, port,
        _network(ip), record.get("helo"), tls.get("version"), tls.get("cipher"),
        tls.get("server_name"), record.get("auth"), sender, _domain(sender) or None,
        record["size"], record["sha256"], record.get("body_sha256"), record.get("rule"),
        " ".join(dns.get("rdns") or ()) or None, dns.get("fcrdns"), dns.get("confirmed"),
        _result(auth.get("spf")), _dkim(auth.get("dkim")), _result(auth.get("arc")),
        _result(auth.get("dmarc")), json_safe(json.dumps(record, ensure_ascii=False)), body,
    )
    recipients = tuple((position, address, _domain(address))
                       for position, address in enumerate(record.get("recipients") or ()))
    listings = tuple((x["list"], x["kind"], x["subject"], ",".join(x["codes"]), x["reason"])
                     for x in dns.get("listings") or ())
    return Row(message, recipients, listings)


def _split_peer(peer: str | None) -> tuple[str | None, int | None]:
    if not peer:
        return None, None
    ip, _, port = peer.rpartition(":")
    return ip, int(port) if port.isdigit() else None


def _network(ip: str | None) -> str | None:
    """The client's network for the reports: its /24, or /48 for IPv6."""
    try:
        address = ipaddress.ip_address(ip or "")
    except ValueError:
        return None
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower() if "@" in address else ""


def _result(check: dict[str, Any] | None) -> str | None:
    return None if not check else str(check.get("result"))


def _dkim(signatures: list[dict[str, Any]] | None) -> str | None:
    if signatures is None:
        return None
    return ",".join(str(s.get("result")) for s in signatures) or "none"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(dialect: str) -> list[Migration]:
    """The migrations shipped for ``dialect`` (``sqlite`` or ``postgresql``), in order."""
    folder = resources.files(__package__ or "").joinpath("migrations", dialect)
    found = [Migration(int(entry.name.split("_", 1)[0]), entry.name, entry.read_text())
             for entry in folder.iterdir() if entry.name.endswith(".sql")]
    return sorted(found, key=lambda m: m.version)


def pending(dialect: str, applied: set[int]) -> list[Migration]:
    """What a database with the ``applied`` versions still needs (SchemaError if it is
    newer than this program)."""
    known = migrations(dialect)
    newest = max((m.version for m in known), default=0)
    if applied and max(applied) > newest:
        raise SchemaError(f"the database's schema (version {max(applied)}) is newer than "
                          f"this trio-smtpd knows (version {newest}): upgrade trio-smtpd")
    return [m for m in known if m.version not in applied]


def statements(sql: str) -> list[str]:
    """The statements of a migration file (no ``;`` inside a statement or comment)."""
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
