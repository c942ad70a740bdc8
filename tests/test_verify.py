"""trio_smtpd.verify without a network: answers from a table (tests/fakedns.py), time
from trio's MockClock. The real-DNS, real-signer tests are test_sinkhole_verify.py."""

from __future__ import annotations

import base64
import itertools
import re

import authres
import authres.dmarc
import dkim
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakedns import HANG, FakeResolver, a, records
from trio_smtpd import verify
from trio_smtpd.dns import Answer, Status
from trio_smtpd.verify import (
    AuthenticationResultsFilter,
    DKIMResult,
    DMARCResult,
    Results,
    SPFResult,
)

SPF = {
    "example.test TXT": records("TXT", '"v=spf1 include:_s.example.test -all"'),
    "_s.example.test TXT": records("TXT", '"v=spf1 mx:example.test a:h.example.test ~all"'),
    "example.test MX": records("MX", "10 mx1.example.test.", "20 mx2.example.test."),
    "mx1.example.test A": a("192.0.2.9"),
    "mx2.example.test A": a("192.0.2.10"),
    "h.example.test A": a("192.0.2.11"),
}


async def test_spf_is_replayed_from_answers_looked_up_once() -> None:
    resolver = FakeResolver(dict(SPF))
    results = [(await verify.check_spf(resolver, ip, "a@example.test", "helo.test")).result
               for ip in ("192.0.2.10", "192.0.2.11", "192.0.2.99")]
    # (an include that does not pass is no match: the outer -all decides)
    assert results == ["pass", "pass", "fail"]
    # Each name once, the MX hosts asked together with the MX (not a round each), and
    # then every check from the resolver's cache: one pyspf run, no query.
    assert sorted(resolver.sent) == sorted(
        ["example.test TXT", "_s.example.test TXT", "example.test MX",
         "mx1.example.test A", "mx2.example.test A", "h.example.test A"])


async def test_spf_dns_failures_are_temperror_by_the_deadline(
        autojump_clock: trio.testing.MockClock) -> None:
    hanging = FakeResolver({**SPF, "_s.example.test TXT": HANG}, timeout=60)
    start = trio.current_time()
    result = await verify.check_spf(hanging, "192.0.2.10", "a@example.test", None,
                                    deadline=start + 7)
    assert (result.result, trio.current_time() - start) == ("temperror", pytest.approx(7))
    refused = FakeResolver({**SPF, "example.test TXT": Answer(Status.TEMPFAIL)})
    result = await verify.check_spf(refused, "192.0.2.10", "a@example.test", None)
    assert result.result == "temperror" and "example.test" in result.reason


async def test_spf_identities() -> None:
    resolver = FakeResolver(dict(SPF))
    helo = await verify.check_spf(resolver, "192.0.2.10", "", "example.test")
    assert (helo.identity, helo.sender, helo.result) == ("helo", "postmaster@example.test",
                                                         "pass")
    nothing = await verify.check_spf(resolver, "192.0.2.10", "", None)
    assert nothing.result == "none"
    mapped = await verify.check_spf(resolver, "::ffff:192.0.2.10", "a@example.test", None)
    assert mapped.result == "pass"


def signed_message(key: bytes, body: bytes = b"Hello\r\n") -> bytes:
    data = b"From: A <a@example.test>\r\nSubject: hi\r\n\r\n" + body
    return dkim.sign(data, b"s", b"example.test", key) + data  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def key() -> tuple[bytes, str]:
    # (cryptography comes with trustme)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = private.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"


def key_records(public: str) -> Answer:  # type: ignore[type-arg]
    return records("TXT", " ".join(f'"{public[i:i + 200]}"'
                                   for i in range(0, len(public), 200)))


async def test_dkim_results_by_what_the_dns_said(
        key: tuple[bytes, str], autojump_clock: trio.testing.MockClock) -> None:
    private, public = key
    data = signed_message(private)
    name = "s._domainkey.example.test TXT"
    for answer, expected in ((key_records(public), "pass"),
                             (Answer(Status.NXDOMAIN), "permerror"),
                             (Answer(Status.TEMPFAIL), "temperror")):
        [result] = await verify.check_dkim(FakeResolver({name: answer}), data)
        assert result.result == expected, result
    [hung] = await verify.check_dkim(FakeResolver({name: HANG}), data,
                                     deadline=trio.current_time() + 3)
    assert hung.result == "temperror"
    assert await verify.check_dkim(FakeResolver(), b"From: a@b.test\r\n\r\nx\r\n") == ()


def _der(tag: int, body: bytes) -> bytes:
    size = len(body)
    length = bytes([size]) if size < 128 else (
        bytes([0x80 | ((size.bit_length() + 7) // 8)]) + size.to_bytes(
            (size.bit_length() + 7) // 8, "big"))
    return bytes([tag]) + length + body


def rsa_key_record(modulus: int, exponent: int) -> str:
    """A key record of any modulus and exponent (an RFC 8017 RSAPublicKey in p=)."""
    def integer(value: int) -> bytes:
        return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))

    key = _der(0x30, integer(modulus) + integer(exponent))
    return f"v=DKIM1; k=rsa; p={base64.b64encode(key).decode()}"


@pytest.mark.parametrize(("modulus_bits", "exponent_bits"), [(16384, 17), (2048, 2048)])
async def test_a_key_too_costly_to_verify_is_a_permerror(
        key: tuple[bytes, str], modulus_bits: int, exponent_bits: int) -> None:
    # Found by review (2026-12-02): dkimpy computes pow(b, e, n) in the event loop with
    # any n and e the signer's DNS publishes; a 16384-bit modulus with as long an exponent
    # blocked every session for 9 s a signature, past any deadline. RFC 8301 asks
    # verifiers for keys up to 4096 bits; the exponent is 65537 in practice.
    private, _ = key
    hostile = rsa_key_record((1 << (modulus_bits - 1)) | 1, (1 << (exponent_bits - 1)) | 1)
    resolver = FakeResolver({"s._domainkey.example.test TXT": key_records(hostile)})
    [result] = await verify.check_dkim(resolver, signed_message(private))
    assert result.result == "permerror"
    assert "bits" in result.reason


async def test_an_arc_key_too_costly_to_verify_fails_the_chain(
        key: tuple[bytes, str]) -> None:
    private, public = key
    data = b"From: A <a@example.test>\r\nSubject: hi\r\n\r\nHello\r\n"
    sealed = b"".join(dkim.arc_sign(b"Authentication-Results: relay.test; none\r\n" + data,
                                    b"s", b"example.test", private, b"relay.test"))
    sealed += b"Authentication-Results: relay.test; none\r\n" + data
    name = "s._domainkey.example.test TXT"
    fair = await verify.check_arc(FakeResolver({name: key_records(public)}), sealed)
    assert fair.result == "pass", fair
    hostile = rsa_key_record((1 << 16383) | 1, 65537)
    costly = await verify.check_arc(FakeResolver({name: key_records(hostile)}), sealed)
    assert costly.result == "fail" and "too costly" in costly.reason, costly


async def test_dkim_body_of_any_size_in_chunks(key: tuple[bytes, str]) -> None:
    private, public = key
    body = b"".join(b"line %d  with  spaces \r\n" % n for n in range(200_000))  # ~5 MB
    data = signed_message(private, body)
    reader = verify.MessageReader()
    for start in range(0, len(data), 65536):
        reader.feed(data[start:start + 65536])
    reader.close()
    resolver = FakeResolver({"s._domainkey.example.test TXT": key_records(public)})
    [result] = await verify.check_dkim(resolver, reader)
    assert result.result == "pass"
    assert reader.header is not None and len(reader.header) < 1000  # only that is kept


def dmarc_reader(author: str) -> verify.MessageReader:
    return verify.MessageReader.of(f"From: <{author}>\r\n\r\nbody\r\n".encode())


SPF_PASS = SPFResult("pass", "mailfrom", "bounce.example.test", "x@bounce.example.test")


@pytest.mark.parametrize(("records_", "author", "expected"), [
    ({"_dmarc.example.test": ['"v=DMARC1; p=reject; aspf=s"']}, "a@example.test",
     ("fail", "reject", "reject")),
    ({"_dmarc.example.test": ['"v=DMARC1; p=reject"']}, "a@example.test",
     ("pass", "reject", "none")),
    ({"_dmarc.example.test": ['"v=DMARC1; p=reject; sp=none; aspf=s"']},
     "a@sub.example.test", ("fail", "none", "none")),
    ({"_dmarc.example.test": ['"v=DMARC1; p=reject; pct=0; aspf=s"']}, "a@example.test",
     ("fail", "reject", "quarantine")),
    ({"_dmarc.example.test": ['"v=DMARC1; p=reject"', '"v=DMARC1; p=none"']},
     "a@example.test", ("none", "", "")),
    ({"_dmarc.example.test": ['"v=DMARC1; p=bogus; rua=mailto:r@example.test"']},
     "a@example.test", ("pass", "none", "none")),
    ({"_dmarc.example.test": ['"v=DMARC1; p=bogus"']}, "a@example.test", ("none", "", "")),
    ({"_dmarc.example.test": ['"spf1 nothing"']}, "a@example.test", ("none", "", "")),
    ({}, "a@example.test", ("none", "", "")),
])
async def test_dmarc_policy_discovery_and_alignment(
        records_: dict[str, list[str]], author: str, expected: tuple[str, str, str]) -> None:
    resolver = FakeResolver({f"{name} TXT": records("TXT", *texts)
                             for name, texts in records_.items()})
    result = await verify.check_dmarc(resolver, dmarc_reader(author), spf=SPF_PASS, dkim=())
    assert (result.result, result.policy, result.disposition) == expected


async def test_dmarc_temperror_only_when_an_answer_could_change_it() -> None:
    failing = FakeResolver({"_dmarc.example.test TXT": Answer(Status.TIMEOUT)})
    result = await verify.check_dmarc(failing, dmarc_reader("a@example.test"),
                                      spf=SPF_PASS, dkim=())
    assert result.result == "temperror"
    resolver = FakeResolver({"_dmarc.example.test TXT": records("TXT", '"v=DMARC1; p=none"')})
    unsure = DKIMResult("temperror", "example.test", "s")
    elsewhere = DKIMResult("temperror", "other.test", "s")
    for dkim_results, expected in (([unsure], "temperror"), ([elsewhere], "fail")):
        spf = SPFResult("fail", "mailfrom", "example.test", "a@example.test")
        result = await verify.check_dmarc(resolver, dmarc_reader("a@example.test"), spf=spf,
                                          dkim=dkim_results)
        assert result.result == expected
    for header, why in ((b"To: b@x.test\r\n", "no From"),
                        (b"From: a@x.test\r\nFrom: b@x.test\r\n", "several From"),
                        (b"From: a@x.test, b@y.test\r\n", "several author domains")):
        result = await verify.check_dmarc(resolver, header + b"\r\n", spf=None, dkim=())
        assert why in result.reason


HOSTILE = ['a"b', "x\\y", "semi;colon", "line\r\nX-Injected: yes", "tab\there",
           "paren(", "\u2028sep", "é"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(HOSTILE), min_size=4, max_size=4))
def test_authentication_results_values_cannot_break_out(values: list[str]) -> None:
    results = Results(SPFResult("fail", "mailfrom", "x.test", f"{values[0]}@x.test",
                                values[1]),
                      (DKIMResult("pass", "d.test", values[2], reason=values[3]),), None,
                      DMARCResult("fail", "f.test", "reject", reason=values[0]))
    header = verify.authentication_results("mx.test", results)
    lines = header.split("\r\n")
    assert lines[0] == "Authentication-Results: mx.test;"
    assert all(line.startswith("\t") for line in lines[1:]) and len(lines) == 4
    assert "\n" not in header.replace("\r\n\t", "") and "\u2028" not in header
    parsed = authres.FeatureContext(authres.dmarc).parse(re.sub(r"\r\n\t", " ", header))
    assert [(r.method, r.result) for r in parsed.results] == [
        ("spf", "fail"), ("dkim", "pass"), ("dmarc", "fail")]


FORGED = [b"Authentication-Results: mx.test; dkim=pass\r\n",
          b"Authentication-Results: (comment (nested)) \"MX.Test.\" 1;\r\n spf=pass\r\n",
          b"authentication-results :mx.test;\r\n\tnone\r\n"]
KEPT = [b"Authentication-Results: other.test; spf=pass\r\n",
        b"Authentication-Results: mx.test.example; spf=pass\r\n",
        b"X-Authentication-Results: mx.test; spf=pass\r\n",
        b"Subject: Authentication-Results: mx.test\r\n"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FORGED + KEPT), max_size=8),
       st.lists(st.integers(0, 400), max_size=8))
def test_forged_results_are_left_out_however_the_message_is_cut(
        fields: list[bytes], cuts: list[int]) -> None:
    body = b"\r\nAuthentication-Results: mx.test; in the body: kept\r\n"
    data = b"".join(fields) + b"From: a@x.test\r\n" + body
    edges = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    kept = AuthenticationResultsFilter("mx.test")
    out = b"".join(kept.feed(data[a:b]) for a, b in itertools.pairwise(edges)) + kept.close()
    assert out == b"".join(f for f in fields if f in KEPT) + b"From: a@x.test\r\n" + body
    assert kept.removed == sum(f in FORGED for f in fields)


def test_the_filter_holds_bounded_memory() -> None:
    kept = AuthenticationResultsFilter("mx.test")
    huge = b"Authentication-Results: mx.test;\r\n" + b"\tspf=pass\r\n" * 20_000
    out = kept.feed(huge[:100_000]) + kept.feed(huge[100_000:]) + kept.feed(b"A: b\r\n\r\n")
    assert out == b"A: b\r\n\r\n" and kept.removed == 1
    long_line = b"X: " + b"y" * 100_000 + b"\r\n\r\n"
    streamed = AuthenticationResultsFilter("mx.test").feed(long_line[:50_000])
    assert len(streamed) >= 40_000  # a long line streams on, not held whole


def test_authserv_id_of() -> None:
    assert verify.authserv_id_of(' (c) "Mx.Test." 1; spf=pass') == "mx.test"
    assert verify.authserv_id_of("mx.test;") == "mx.test"
    assert verify.authserv_id_of(" (unterminated") is None
