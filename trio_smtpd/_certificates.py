"""Certificates: the server's own (for channel binding) and the client's (requested,
verified, named).

Python's ``ssl`` module never tells a server which certificate it presented, and cannot
export keying material, so of the channel bindings SCRAM-SHA-256-PLUS can use:

- ``tls-exporter`` (RFC 9266, the one meant for TLS 1.3) is out of reach;
- ``tls-server-end-point`` (RFC 5929 4) needs the server's certificate: ``load_certificate``
  loads a chain into a context *and* remembers its first certificate, whose hash is then
  the binding of every connection that context serves (an SNI callback that switches to
  another context is followed: that context's certificate counts, if it was loaded so);
- ``tls-unique`` (RFC 5929 3) comes from ``SSLObject.get_channel_binding``, and is only
  sound on TLS 1.2 (RFC 9266 forbids it with TLS 1.3), so it is only offered there.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from collections.abc import Callable
from typing import Any, Literal

__all__ = ["ClientCertificates", "load_certificate", "prepare_client_certificates",
           "server_end_point", "subject_text"]

ClientCertificates = Literal["none", "optional", "required"]

_CERTIFICATE = "trio_smtpd_certificate"
_CLIENT_POLICY = "trio_smtpd_client_policy"


def load_certificate(context: ssl.SSLContext, certfile: str | os.PathLike[str],
                     keyfile: str | os.PathLike[str] | None = None,
                     password: str | bytes | Callable[[], str | bytes] | None = None) -> None:
    """``context.load_cert_chain(certfile, keyfile, password)``, remembering the chain's
    first certificate so that SCRAM-SHA-256-PLUS can offer the ``tls-server-end-point``
    channel binding on connections this context serves."""
    context.load_cert_chain(certfile, keyfile, password)
    with open(certfile) as file:
        pem = file.read()
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = pem.index(begin)
    first = pem[start:pem.index(end, start) + len(end)]
    setattr(context, _CERTIFICATE, ssl.PEM_cert_to_DER_cert(first))


def server_end_point(context: ssl.SSLContext) -> bytes | None:
    """The ``tls-server-end-point`` binding of connections served by ``context``: the
    hash of its certificate, with the hash function of the certificate's signature
    (SHA-256 for MD5 and SHA-1), as RFC 5929 4.1 says; None if the certificate is not
    known, or signed in a way RFC 5929 gives no hash for (Ed25519, RSA-PSS)."""
    der = getattr(context, _CERTIFICATE, None)
    if not isinstance(der, bytes):
        return None
    name = _signature_hash(der)
    return None if name is None else hashlib.new(name, der).digest()


def _oid(dotted: str) -> bytes:
    """The DER content octets of an object identifier."""
    numbers = [int(n) for n in dotted.split(".")]
    out = bytearray([40 * numbers[0] + numbers[1]])
    for number in numbers[2:]:
        chunk = [number & 0x7F]
        while number > 0x7F:
            number >>= 7
            chunk.append(0x80 | (number & 0x7F))
        out += bytes(reversed(chunk))
    return bytes(out)


# Signature algorithms and the hash RFC 5929 4.1 says to use for each.
_HASHES = {_oid(oid): name for oid, name in {
    "1.2.840.113549.1.1.4": "sha256",  # md5WithRSAEncryption: MD5 -> SHA-256
    "1.2.840.113549.1.1.5": "sha256",  # sha1WithRSAEncryption: SHA-1 -> SHA-256
    "1.2.840.113549.1.1.14": "sha224",
    "1.2.840.113549.1.1.11": "sha256",
    "1.2.840.113549.1.1.12": "sha384",
    "1.2.840.113549.1.1.13": "sha512",
    "1.2.840.10045.4.1": "sha256",  # ecdsa-with-SHA1
    "1.2.840.10045.4.3.1": "sha224",
    "1.2.840.10045.4.3.2": "sha256",
    "1.2.840.10045.4.3.3": "sha384",
    "1.2.840.10045.4.3.4": "sha512",
    "1.2.840.10040.4.3": "sha256",  # dsa-with-sha1
    "2.16.840.1.101.3.4.3.2": "sha256",  # dsa-with-sha256
}.items()}


def _element(der: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at ``at``."""
    tag, length = der[at], der[at + 1]
    at += 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(der[at:at + size], "big")
        at += size
    if at + length > len(der):
        raise ValueError("truncated DER")
    return tag, at, at + length


def _signature_hash(der: bytes) -> str | None:
    # Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
    try:
        _, body, _ = _element(der, 0)
        _, _, tbs_end = _element(der, body)
        _, algorithm, _ = _element(der, tbs_end)
        tag, oid_start, oid_end = _element(der, algorithm)
    except (IndexError, ValueError):
        return None
    return _HASHES.get(der[oid_start:oid_end]) if tag == 0x06 else None


_SHORT_NAMES = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
                "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST",
                "streetAddress": "STREET", "domainComponent": "DC", "userId": "UID"}


def subject_text(certificate: dict[str, Any]) -> str | None:
    """The subject of a certificate as ``getpeercert()`` gives it, as an RFC 4514 string
    (most specific part first, special characters escaped)."""
    subject = certificate.get("subject")
    if not subject:
        return None
    parts = []
    for rdn in reversed(subject):
        parts.append("+".join(f"{_SHORT_NAMES.get(key, key)}={_escape(str(value))}"
                              for key, value in rdn))
    return ",".join(parts)


def _escape(value: str) -> str:
    escaped = "".join("\\" + c if c in ',+"\\<>;=' else c for c in value)
    if escaped[:1] in ("#", " "):
        escaped = "\\" + escaped
    if escaped.endswith(" ") and not escaped.endswith("\\ "):
        escaped = escaped[:-1] + "\\ "
    return escaped


def prepare_client_certificates(context: ssl.SSLContext, policy: ClientCertificates,
                                ca_file: str | os.PathLike[str] | None) -> None:
    """Make ``context`` ask for client certificates (``"optional"``: a client may send
    one; ``"required"``: the handshake fails without one) verified against ``ca_file``.
    Done once per context and policy; a context keeps the last policy given."""
    wanted = (policy, None if ca_file is None else os.fspath(ca_file))
    if getattr(context, _CLIENT_POLICY, None) == wanted:
        return
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    context.verify_mode = ssl.CERT_REQUIRED if policy == "required" else ssl.CERT_OPTIONAL
    setattr(context, _CLIENT_POLICY, wanted)
