"""What the sinkhole writes about each session and message: log lines and the metadata
sidecar beside a stored message."""

from __future__ import annotations

import json
import logging
from typing import Any

import trio

from .. import Reply, Transaction
from ..maildir import Maildir
from .dnsfacts import Listing, Wants
from .logs import log_event
from .lookups import ClientLookups
from .rules import Verdict
from .safety import json_safe

__all__ = ["log_aborted", "log_connect", "log_listing", "log_policy", "log_transaction",
           "message_record", "peer_text", "write_sidecar"]

log = logging.getLogger("trio_smtpd.sinkhole")


def message_record(name: str, tx: Transaction, sha256: str, rule: str | None,
                   dns: dict[str, Any] | None,
                   auth: dict[str, Any] | None = None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What is recorded about a stored message: the sidecar's JSON, and what the stores
    (``stores/``) index. ``extra``: more fields (``body_sha256``, ``savedir``)."""
    session = tx.info
    return {
        "file": name, "session": session.id, "peer": peer_text(session.peer),
        "helo": session.helo, "auth": session.authenticated_as,
        "tls": None if session.tls is None else {
            "version": session.tls.version, "cipher": session.tls.cipher,
            "server_name": session.tls.server_name},
        "sender": str(tx.sender) if tx.sender else "",
        "recipients": [str(r.address) for r in tx.recipients],
        "size": tx.size, "sha256": sha256, "rule": rule,
        "received": tx.received.isoformat(), "dns": dns,
        # SPF/DKIM/ARC/DMARC results (verifying.py); None if not checked
        "authentication_results": auth,
        **(extra or {}),
    }


def write_sidecar(maildir: Maildir, record: dict[str, Any]) -> None:
    """Write ``record`` as the sidecar of its message (a failure is logged, not raised:
    the message is stored)."""
    name = record["file"]
    path = maildir.path / "meta" / f"{name}.json"
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json_safe(json.dumps(record, ensure_ascii=False)) + "\n")
        temporary.rename(path)
    except OSError as exc:
        log.error("session %s: writing metadata for %s failed: %s", record["session"],
                  name, exc)


def log_aborted(tx: Transaction, size: int | None = None) -> None:
    """``size``: of the message as the client sent it, where the engine knows better
    than the transaction (which counts only what it was handed)."""
    reply = tx.abort_reply
    log_transaction(tx, "refused" if reply else "abandoned", str(reply) if reply else None,
                     None, size=size)


def log_transaction(tx: Transaction, outcome: str, reply: str | None,
                     name: str | None, rule: str | None = None,
                     auth: dict[str, Any] | None = None, *,
                     size: int | None = None) -> None:
    log_event(
        "message",
        session=tx.info.id,
        peer=peer_text(tx.info.peer),
        helo=tx.info.helo,
        tls=tx.info.tls.version if tx.info.tls else None,
        sni=tx.info.tls.server_name if tx.info.tls else None,
        auth=tx.info.authenticated_as,
        sender=str(tx.sender) if tx.sender else "",
        recipients=[str(r.address) for r in tx.recipients],
        size=tx.size if size is None else size,
        outcome=outcome,
        reply=reply,
        file=name,
        rule=rule,
        **(auth or {}),
    )


def log_connect(lookups: ClientLookups, wants: Wants, **fields: Any) -> trio.Event | None:
    """The ``connect`` line, with the client's DNS facts once they are known: an event
    set once it is written, or None if it was written at once (no DNS facts to wait
    for, and no checkpoint to wait on it)."""
    if not lookups.enabled:
        log_event("connect", **fields)
        return None
    logged = trio.Event()
    lookups.prefetch(wants)

    async def when_known() -> None:
        await lookups.connect_facts(wants)
        summary = lookups.summary() or {}
        log_event("connect", **fields, rdns=summary.get("rdns") or None,
                  fcrdns=summary.get("fcrdns"),
                  listed=[x.describe() for x in lookups.client_listings(wants)] or None)
        logged.set()

    lookups.spawn(when_known)
    return logged


def log_listing(session_id: str, listing: Listing) -> None:
    log_event("policy", session=session_id, list=listing.zone, kind=listing.kind,
              subject=listing.subject, codes=list(listing.codes), reason=listing.reason)


def peer_text(peer: Any) -> str | None:
    return None if peer is None else f"{peer[0]}:{peer[1]}"


def log_policy(session_id: str, phase: str | None, verdict: Verdict,
               sent: Reply | None = None) -> None:
    """The ``policy`` line of a rule's refusal, whichever path answers it (the handler,
    or the store for ``save-then-reject``): every one is logged alike. ``sent``: the
    reply given, where it is not the rule's own (at connect: 554 or 421, RFC 5321 3.1)."""
    log_event("policy", session=session_id, phase=phase, rule=verdict.rule,
              action=verdict.action, reply=str(sent or verdict.reply),
              dns="unknown" if verdict.unknown else None)
