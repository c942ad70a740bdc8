"""Why a TLS handshake failed, in the few words an application can act on.

OpenSSL names the cause of a failed handshake in its error's ``reason`` (ours, or the
alert the client sent); they fall into a handful of kinds: the two sides share no
protocol version or cipher, a certificate was refused (the client's, by us, or ours, by
the client), the client took too long, or it went away. Anything else (bytes that are
not TLS at all) is a protocol error.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Literal

__all__ = ["Reason", "TLSFailure", "classify"]

Reason = Literal["no shared protocol", "bad certificate", "timeout", "client gone",
                 "protocol error"]

_NO_SHARED = ("NO_SHARED_CIPHER", "UNSUPPORTED_PROTOCOL", "VERSION_TOO_LOW",
              "VERSION_TOO_HIGH", "NO_PROTOCOLS_AVAILABLE", "PROTOCOL_VERSION",
              "NO_SHARED_GROUP", "NO_SUITABLE_SIGNATURE_ALGORITHM", "INSUFFICIENT_SECURITY",
              "HANDSHAKE_FAILURE", "NO_APPLICATION_PROTOCOL")
_CERTIFICATE = ("CERTIFICATE", "UNKNOWN_CA", "PEER_DID_NOT_RETURN", "ACCESS_DENIED",
                "DECRYPT_ERROR")


@dataclass(frozen=True, slots=True)
class TLSFailure:
    """A failed handshake: its kind, and OpenSSL's (or trio's) own words."""

    reason: Reason
    detail: str


def classify(exc: BaseException | None) -> TLSFailure:
    """The failure that ``exc`` (raised by ``do_handshake()``; None: timed out) means."""
    if exc is None:
        return TLSFailure("timeout", "the TLS handshake timed out")
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if cause is None or isinstance(cause, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return TLSFailure("client gone", str(exc) or type(exc).__name__)
    reason = str(getattr(cause, "reason", None) or cause)
    upper = reason.upper()
    kind: Reason = "protocol error"
    if any(word in upper for word in _CERTIFICATE):
        kind = "bad certificate"
    elif any(word in upper for word in _NO_SHARED):
        kind = "no shared protocol"
    return TLSFailure(kind, reason)
