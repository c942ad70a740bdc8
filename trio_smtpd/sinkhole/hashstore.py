"""Messages named by their hash (sinksmtp's ``-save-hash``), and the hashes in the sidecar.

With ``--save-hash KIND`` a stored message's file name in ``new/`` is a SHA-256, in hex,
of:

* ``msg``: the message as received (the sidecar's ``sha256``);
* ``full``: that and the envelope and client facts that do not change when a sender
  sends the same message again: client address (not its port), our address, HELO name,
  authenticated user, TLS version, confirmed DNS name, sender, recipients;
* ``all``: ``full`` and what makes each delivery unique: session id, client port, and
  the time received (to the second).

A message whose name is taken already (in ``new/``, or moved to ``cur/`` by a reader,
whatever its flags) is not stored again: the client gets the same 250 naming that file,
and the first copy and its sidecar stay as they were. With the SQLite index (the default
store) a name the index holds is taken too, wherever its file is now: processed and gone
from the Maildir, or in another Maildir (a rule's ``savedir``). The index has one row per
name, the record of the first copy stored, so a message stored again would have no row
of its own (``recorded``). The ``Received:`` header names the
file, as it always does: it is written with a placeholder of the same length, filled in
once the hash is known, before the file is fsynced and linked into ``new/`` (a hard
link, so that two deliveries of one message at once cannot overwrite each other). When
messages are verified, the trace headers are put in front only at the end, once the
results and so the name are known, and no placeholder is needed.

Every sidecar also records ``body_sha256``, the hash of the body alone (after the first
empty line), as sinksmtp's ``bodyhash``: null for a message with no empty line.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable
from typing import Any

from .. import Transaction
from ..maildir import Maildir, MaildirWriter

__all__ = ["SAVE_HASHES", "HashedWriter", "MessageDigest", "name_by_hash", "open_writer"]

SAVE_HASHES = ("msg", "full", "all")


class MessageDigest:
    """SHA-256 of the whole message and of its body, fed chunk by chunk."""

    def __init__(self) -> None:
        self._whole = hashlib.sha256()
        self._body: Any = None  # a hash object, once the header/body boundary is found
        self._tail = b"\r\n"  # the last octets seen, for a boundary across chunks

    def update(self, chunk: bytes) -> None:
        self._whole.update(chunk)
        if self._body is not None:
            self._body.update(chunk)
            return
        seen = self._tail + chunk
        end = seen.find(b"\r\n\r\n")
        if end < 0:
            self._tail = seen[-3:]
            return
        self._body = hashlib.sha256(seen[end + 4:])

    def hexdigest(self) -> str:
        return self._whole.hexdigest()

    def body_hexdigest(self) -> str | None:
        return None if self._body is None else self._body.hexdigest()


def open_writer(maildir: Maildir, save_hash: str | None) -> MaildirWriter:
    return maildir.open() if save_hash is None else HashedWriter(maildir, save_hash)


def name_by_hash(writer: MaildirWriter, tx: Transaction, digest: MessageDigest,
                 dns: dict[str, Any] | None) -> None:
    """Give a hash-named message its name, now that everything it depends on is known."""
    if not isinstance(writer, HashedWriter):
        return
    if writer.kind == "msg":
        writer.name_it(digest.hexdigest())
        return
    info = tx.info
    facts: dict[str, Any] = {
        "ip": info.peer[0] if info.peer else None, "local": info.local, "helo": info.helo,
        "auth": info.authenticated_as, "tls": info.tls.version if info.tls else None,
        "confirmed": (dns or {}).get("confirmed"), "sender": str(tx.sender or ""),
        "recipients": [str(r.address) for r in tx.recipients], "sha256": digest.hexdigest()}
    if writer.kind == "all":
        facts.update(session=info.id, port=info.peer[1] if info.peer else None,
                     received=tx.received.replace(microsecond=0).isoformat())
    encoded = json.dumps(facts, sort_keys=True, default=str).encode()
    writer.name_it(hashlib.sha256(encoded).hexdigest())


class HashedWriter(MaildirWriter):
    """One message on its way into ``new/`` under its hash (see the module docstring).

    Written, prepended to and aborted as any Maildir message (in ``tmp/`` under a unique
    name); only the commit differs: the name is filled in, and the file is linked into
    ``new/`` unless a message of that name is there already."""

    commits_elsewhere = False  # (its name is filled in, and it is linked, here)

    def __init__(self, maildir: Maildir, kind: str) -> None:
        super().__init__(maildir, maildir.unique_name())  # (its name in tmp/)
        self.kind = kind
        #: A placeholder until ``name_it()``: as long as a name, and unique.
        self.name = secrets.token_hex(32)
        #: True once committed if the same message was there already.
        self.duplicate = False
        #: Whether the store's index has a record of that name (None: no index). Asked
        #: before the link, so that a duplicate never appears in ``new/``, not even for
        #: a moment.
        self.recorded: Callable[[str], bool] | None = None
        self._placeholder = self.name.encode()
        self._at: int | None = None  # where the placeholder is in the file

    def name_it(self, name: str) -> None:
        assert len(name) == len(self._placeholder)
        self.name = name

    async def write(self, data: bytes) -> None:
        offset = self.size
        await super().write(data)
        if self._at is None and (found := data.find(self._placeholder)) >= 0:
            self._at = offset + found

    async def prepend(self, data: bytes) -> None:
        await super().prepend(data)
        if self._at is not None:
            self._at += len(data)
        elif (found := data.find(self._placeholder)) >= 0:
            self._at = found

    # The steps of its commit that differ, in the batch's worker thread.

    def _write_out(self) -> None:
        self._flush()
        assert self._fd is not None
        if self._at is not None:
            os.pwrite(self._fd, self.name.encode(), self._at)

    def _publish(self) -> None:
        """Link into ``new/`` unless the name is taken; the name in ``tmp/`` goes."""
        try:
            self.duplicate = self._is_recorded() or not self._link()
        finally:
            self._discard()
        self.published = not self.duplicate

    def _is_recorded(self) -> bool:
        return self.recorded is not None and self.recorded(self.name)

    def _link(self) -> bool:
        """Into ``new/`` (False: the name is taken there, or in ``cur/`` by a reader).
        A hard link, unlike a rename, never replaces a file of that name."""
        new, cur = self.maildir.path / "new", self.maildir.path / "cur"
        if (cur / self.name).exists() or any(cur.glob(f"{self.name}:*")):
            return False
        try:
            os.link(self._tmp, new / self.name)
        except FileExistsError:
            return False
        return True
