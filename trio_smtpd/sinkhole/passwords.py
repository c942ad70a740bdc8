"""Password hashes for ``--auth-file``: scrypt from the standard library.

Format of a hash (one ``user:hash`` per line in the auth file)::

    scrypt$<log2 N>$<r>$<p>$<salt, base64>$<key, base64>

``trio-smtpd hash-password`` makes them. Verifying takes tens of milliseconds of CPU and
32 MiB by design, so the server does it in a worker thread, off the event loop (see
``authguard``). A name that is not in the file is checked against ``dummy_hash(users)``,
made with the file's own parameters, so that it costs the same as a real one: timing
does not tell which user names exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import Counter
from pathlib import Path

__all__ = ["AuthFileError", "dummy_hash", "hash_password", "load_auth_file",
           "verify_password"]

_LOG2_N, _R, _P = 15, 8, 1
_MAXMEM = 64 * 2**20


class AuthFileError(ValueError):
    """The auth file cannot be used; the message says which line and why."""


def hash_password(password: str, *, log2_n: int = _LOG2_N) -> str:
    return _encode(password, log2_n, _R, _P)


def _encode(password: str, log2_n: int, r: int, p: int) -> str:
    salt = secrets.token_bytes(16)
    key = _scrypt(password, salt, log2_n, r, p)
    return "$".join(["scrypt", str(log2_n), str(r), str(p), _b64(salt), _b64(key)])


def verify_password(password: str, encoded: str) -> bool:
    scheme, log2_n, r, p, salt, key = encoded.split("$")
    if scheme != "scrypt":
        return False
    expected = base64.b64decode(key)
    actual = _scrypt(password, base64.b64decode(salt), int(log2_n), int(r), int(p))
    return hmac.compare_digest(actual, expected)


def dummy_hash(users: dict[str, str]) -> str:
    """A hash of a random password, with the parameters most of ``users`` have (the
    default ones for an empty file): what an unknown user name is checked against."""
    common = Counter(tuple(int(part) for part in encoded.split("$")[1:4])
                     for encoded in users.values()).most_common(1)
    log2_n, r, p = common[0][0] if common else (_LOG2_N, _R, _P)
    return _encode(secrets.token_urlsafe(16), log2_n, r, p)


def load_auth_file(path: str | Path) -> dict[str, str]:
    """Read ``user:hash`` lines (blank lines and ``#`` comments ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthFileError(f"cannot read auth file {path}: {exc}") from None
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.rpartition(":")
        if not sep or not user:
            raise AuthFileError(f"{path}:{number}: expected user:hash")
        if not _well_formed(encoded):
            raise AuthFileError(f"{path}:{number}: not a hash made by "
                                "'trio-smtpd hash-password'")
        users[user] = encoded
    return users


def _well_formed(encoded: str) -> bool:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        return False
    try:
        log2_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        base64.b64decode(parts[4], validate=True)
        base64.b64decode(parts[5], validate=True)
    except ValueError:
        return False
    return 1 <= log2_n <= 20 and 1 <= r <= 32 and 1 <= p <= 16


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2**log2_n, r=r, p=p,
                          maxmem=_MAXMEM, dklen=32)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
