"""DKIM (RFC 6376) and ARC (RFC 8617) verification with dkimpy, fed from our resolver.

dkimpy's verifiers look keys up through a ``dnsfunc`` it calls synchronously. Every key
a message needs is known from its header section, so they are all looked up first,
concurrently, through :class:`trio_smtpd.dns.Resolver` (its cache, its deadlines, no
exception for a DNS reason); dkimpy then gets a ``dnsfunc`` that answers from those
answers and never blocks. A key that could not be looked up now is ``temperror``,
decided here before dkimpy (which would call it a plain failure) sees it.

dkimpy also wants the whole body in memory; instead it is given the header section
only, and the body hash it checks comes from :mod:`._body`, computed as the body
streamed past (the ``verify_sig_process`` hook below; dkimpy's minor version is pinned
for it).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

import dkim
import trio
from dkim.util import InvalidTagValueList, parse_tag_value

from ..dns import Answer, Resolver
from ._message import MessageReader, Signature
from ._results import ARCResult, DKIMResult

__all__ = ["check_arc", "check_dkim", "key_name"]

DEFAULT_TIMEOUT = 10.0
#: Distinct keys looked up for one message's ARC chain (RFC 8617 allows 50 sets, but a
#: chain rarely uses more than a few keys).
MAX_ARC_KEYS = 20
#: The largest RSA key verified. dkimpy checks a signature in the event loop, at a cost
#: that grows with the modulus and the exponent the signer publishes; RFC 8301 asks
#: verifiers for 1024 to 4096 bits, and allows more.
MAX_RSA_BITS = 8192
#: The longest RSA public exponent verified (in practice it is 65537, 17 bits).
MAX_EXPONENT_BITS = 64

# dkimpy logs why each hostile signature failed, at ERROR: that is the message's story,
# told in our results, not a fault of this program. A logger of its own, outside the
# hierarchy, that says nothing.
_QUIET = logging.Logger("trio_smtpd.verify.dkimpy", logging.CRITICAL + 1)


def key_name(selector: str, domain: str) -> str:
    return f"{selector}._domainkey.{domain}"


# (dkimpy is untyped: its classes are Any to mypy, hence the ignores below)
class _StreamedBody:
    """dkimpy's signature check, with the body hash taken from a MessageReader."""

    reader: MessageReader
    verify_sig_process: Callable[..., Any]

    def _check_body(self, sig: dict[bytes, bytes], kind: str) -> dict[bytes, bytes]:
        if b"bh" not in sig:
            return sig
        try:
            wanted = base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise dkim.MessageFormatError(f"bh= is not base64: {exc}") from None
        digest = self.reader.body_hash(sig, kind)
        if digest is None:
            raise dkim.MessageFormatError("the body hash could not be computed (c=, a= "
                                          "or l= not understood)")
        if digest != wanted:
            raise dkim.ValidationError("body hash mismatch")
        return {tag: value for tag, value in sig.items() if tag != b"bh"}


class _DKIM(_StreamedBody, dkim.DKIM):  # type: ignore[misc]
    def verify_sig_process(self, sig: dict[bytes, bytes], *args: Any) -> Any:
        return super().verify_sig_process(self._check_body(sig, "dkim-signature"), *args)


class _ARC(_StreamedBody, dkim.ARC):  # type: ignore[misc]
    def verify_sig_process(self, sig: dict[bytes, bytes], *args: Any) -> Any:
        kind = "arc-message-signature" if b"bh" in sig else "arc-seal"
        return super().verify_sig_process(self._check_body(sig, kind), *args)


def _message(reader: MessageReader) -> bytes:
    assert reader.header is not None
    return reader.header + b"\r\n"  # the header section and an empty body


async def fetch_keys(resolver: Resolver, names: Iterable[str],
                     deadline: float) -> dict[str, Answer[str]]:
    """TXT answers for each name, looked up concurrently."""
    answers: dict[str, Answer[str]] = {}

    async def one(name: str) -> None:
        answers[name] = await resolver.txt(name, deadline=deadline)

    async with trio.open_nursery() as nursery:
        for name in dict.fromkeys(n.lower() for n in names):
            nursery.start_soon(one, name)
    return answers


def _deadline(deadline: float | None) -> float:
    return trio.current_time() + DEFAULT_TIMEOUT if deadline is None else deadline


async def check_dkim(resolver: Resolver, message: bytes | MessageReader, *,
                     deadline: float | None = None,
                     allow_sha1: bool = False) -> tuple[DKIMResult, ...]:
    """Verify each DKIM-Signature of a message (the first 10): one result each, none
    for an unsigned message. ``message``: its bytes, or a closed :class:`MessageReader`
    that read it as it streamed. Keys are looked up through ``resolver``, all by
    ``deadline`` (``trio.current_time()`` terms; default: 10 s from now).

    ``allow_sha1``: accept rsa-sha1 signatures, which RFC 8301 forbids verifiers to
    accept (by default they are ``permerror``)."""
    reader = MessageReader.of(message)
    if reader.too_large:
        return (DKIMResult("neutral", "", "", reason=f"header section larger than "
                           f"{reader.max_header} octets: not verified"),)
    names = [key_name(s.text(b"s"), s.text(b"d")) for s in reader.signatures if s.tags]
    answers = await fetch_keys(resolver, names, _deadline(deadline)) if names else {}
    verifier = None
    results = []
    for index, signature in enumerate(reader.signatures):
        if verifier is None:
            verifier = _DKIM(_message(reader), logger=_QUIET)
            verifier.reader = reader
        results.append(_verify(verifier, index, signature, answers, allow_sha1))
    return tuple(results)


def _verify(verifier: _DKIM, index: int, signature: Signature,
            answers: dict[str, Answer[str]], allow_sha1: bool) -> DKIMResult:
    def result(outcome: str, reason: str = "") -> DKIMResult:
        b = signature.text(b"b")
        return DKIMResult(outcome, signature.text(b"d").lower(), signature.text(b"s"),
                          signature.text(b"i"), signature.text(b"a"), b[:12], reason)

    if signature.tags is None:
        return result("permerror", signature.error)
    algorithm = signature.text(b"a")
    if algorithm == "rsa-sha1" and not allow_sha1:
        return result("permerror", "rsa-sha1 signatures are not accepted (RFC 8301)")
    answer = answers.get(key_name(signature.text(b"s"), signature.text(b"d")).lower())
    if answer is None or answer.unknown:
        why = "" if answer is None else f": {answer.status.value} {answer.detail}".rstrip()
        return result("temperror", f"key lookup failed{why}")
    if not answer.records:
        return result("permerror", f"no key for the signature ({answer.status.value})")
    key = answer.records[0].encode("utf-8", "replace")
    unfit = _unfit_key(key, algorithm)
    if unfit:
        return result("permerror", unfit)
    return _run(lambda: verifier.verify(index, dnsfunc=lambda name, timeout=5: key),
                result)


def _unfit_key(key: bytes, algorithm: str) -> str:
    """RFC 6376 3.6.1: a key whose h= does not list the signature's hash is not used."""
    try:
        tags = parse_tag_value(key)
    except InvalidTagValueList:
        return "the key record is malformed"
    hashes = tags.get(b"h")
    wanted = algorithm.rpartition("-")[2].encode()
    if hashes is not None and wanted not in re.split(rb"\s*:\s*", hashes.strip().lower()):
        return f"the key does not allow {wanted.decode()} (h=)"
    return _too_costly(tags)


def _too_costly_record(record: str) -> str:
    try:
        return _too_costly(parse_tag_value(record.encode("utf-8", "replace")))
    except InvalidTagValueList:
        return ""  # (dkimpy says why it cannot use it)


def _too_costly(tags: dict[bytes, bytes]) -> str:
    """Why an RSA key is too large to verify with (see ``MAX_RSA_BITS``), if it is. A
    key that cannot be read is left to dkimpy, which says why."""
    if tags.get(b"k", b"rsa").strip().lower() != b"rsa":
        return ""
    try:
        key = dkim.crypto.parse_public_key(base64.b64decode(
            re.sub(rb"\s+", b"", tags.get(b"p", b"")), validate=True))
    except (binascii.Error, dkim.crypto.UnparsableKeyError):
        return ""
    modulus, exponent = key["modulus"].bit_length(), key["publicExponent"].bit_length()
    if modulus > MAX_RSA_BITS or exponent > MAX_EXPONENT_BITS:
        return (f"the key is too costly to verify: a {modulus}-bit modulus and a "
                f"{exponent}-bit exponent (at most {MAX_RSA_BITS} and "
                f"{MAX_EXPONENT_BITS} bits)")
    return ""


def _run(verify: Callable[[], bool], result: Callable[[str, str], DKIMResult]) -> DKIMResult:
    try:
        ok = verify()
    except dkim.ValidationError as exc:
        if "body hash mismatch" in str(exc):
            return result("fail", "body hash did not verify")
        return result("permerror", _text(exc))
    except dkim.DKIMException as exc:
        return result("permerror", _text(exc))
    except Exception as exc:  # a hostile signature can trip dkimpy up; never the session
        return result("permerror", f"signature could not be processed: {_text(exc)}")
    return result("pass", "") if ok else result("fail", "signature did not verify")


def _text(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:200]


async def check_arc(resolver: Resolver, message: bytes | MessageReader, *,
                    deadline: float | None = None) -> ARCResult:
    """Validate a message's ARC chain (RFC 8617 5.2): ``none`` without ARC sets,
    ``pass``, ``fail``, or ``temperror`` if a key could not be looked up now."""
    reader = MessageReader.of(message)
    if reader.too_large:
        return ARCResult("fail", reason=f"header section larger than {reader.max_header} "
                         "octets: not verified")
    names = _arc_key_names(reader)
    if not names:
        return ARCResult("none", reason="no ARC sets")
    if len(names) > MAX_ARC_KEYS:
        return ARCResult("fail", reason=f"more than {MAX_ARC_KEYS} ARC keys")
    answers = await fetch_keys(resolver, names, _deadline(deadline))
    failed = [name for name, answer in answers.items() if answer.unknown]
    if failed:
        return ARCResult("temperror", reason=f"key lookup failed: {failed[0]}")
    for name, answer in answers.items():
        if answer.records and (costly := _too_costly_record(answer.records[0])):
            return ARCResult("fail", reason=f"{name}: {costly}")
    keys = {name: answer.records[0].encode("utf-8", "replace") if answer.records else None
            for name, answer in answers.items()}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return keys.get(name.decode("ascii", "replace").rstrip(".").lower())

    verifier = _ARC(_message(reader), logger=_QUIET)
    verifier.reader = reader
    try:
        cv, sets, reason = verifier.verify(dnsfunc=dnsfunc)
    except Exception as exc:  # as above: a hostile chain must not end the session
        return ARCResult("fail", reason=f"chain could not be processed: {_text(exc)}")
    newest: dict[str, Any] = sets[0] if sets else {}

    def tag(name: str) -> str:
        value = newest.get(name, b"")
        return value.decode("ascii", "replace") if isinstance(value, bytes) else ""

    outcome = {b"pass": "pass", b"none": "none"}.get(cv or b"", "fail")
    return ARCResult(outcome, int(newest.get("instance", 0)), tag("ams-domain").lower(),
                     tag("ams-selector"), tag("as-domain").lower(), tag("as-selector"),
                     "" if outcome == "pass" else _text(Exception(reason)))


def _arc_key_names(reader: MessageReader) -> list[str]:
    """The keys of every ARC-Message-Signature and ARC-Seal."""
    names = []
    seals = [value for name, value in reader.fields if name.lower() == b"arc-seal"]
    parsed = [s.tags for s in reader.arc_signatures if s.tags]
    for value in seals:
        try:
            parsed.append(parse_tag_value(value))
        except InvalidTagValueList:
            continue
    for tags in parsed:
        s, d = (re.sub(rb"\s+", b"", tags.get(t, b"")).decode("ascii", "replace")
                for t in (b"s", b"d"))
        if s and d:
            names.append(key_name(s, d).lower())
    return list(dict.fromkeys(names))
