"""Message authentication end to end: the real ``trio-smtpd --dns-server ...`` against a
real DNS server (unbound on loopback, tests/dnsserver.py's zone with SPF and DMARC
policies and DKIM keys made by OpenDKIM's opendkim-genkey), messages signed and sealed
by implementations independent of the dkimpy we verify with: OpenDKIM's
opendkim-testmsg and Perl's Mail::DKIM (tests/mailsign.pl).

What is checked for each message: the stored copy's one Authentication-Results header
of ours, read back by the ``authres`` package; the message's record; the ``message``
log line; and rules over the results."""

from __future__ import annotations

import re
import smtplib
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import authres
import authres.arc
import authres.dkim_b
import authres.dmarc
import pytest
import trio

from tests import dnsserver as z
from tests.conftest import Sinkhole, require_perl_module, require_program
from tests.dnsserver import SilentServer, Unbound, start_unbound
from trio_smtpd import verify
from trio_smtpd.dns import Resolver

Factory = Callable[..., Sinkhole]
HERE = Path(__file__).parent
PARSER = authres.FeatureContext(authres.dmarc, authres.arc, authres.dkim_b)


@dataclass(frozen=True)
class Keys:
    sel: Path  # opendkim-genkey's key published at sel._domainkey of z.DKIM_DOMAINS
    old: Path  # another, whose record allows sha1 too (h=sha1:sha256), at old._domainkey


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    genkey = require_program("opendkim-genkey", "opendkim-tools")
    directory = tmp_path_factory.mktemp("keys")
    subprocess.run([genkey, "-b", "2048", "-d", "dkim.test", "-s", "sel", "-D",
                    str(directory)], check=True)
    subprocess.run([genkey, "-b", "1024", "-d", "dkim.test", "-s", "old", "-h",
                    "sha1:sha256", "-D", str(directory)], check=True)
    return Keys(directory / "sel.private", directory / "old.private")


@pytest.fixture(scope="module")
def auth_dns(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unbound]:
    records = [*z.AUTH_ZONE,
               *z.dkim_records(keys.sel.with_suffix(".txt").read_text(), "sel"),
               *z.dkim_records(keys.old.with_suffix(".txt").read_text(), "old")]
    server = start_unbound(require_program("unbound"), tmp_path_factory.mktemp("unbound"),
                           extra=records)
    yield server
    server.stop()


def message(author: str, body: str = "Hello  world \r\nsecond line\r\n", *,
            extra: str = "") -> bytes:
    return (f"{extra}From: Alice <{author}>\r\nTo: bob@example.test\r\nSubject: hi\r\n"
            f"Date: {format_datetime(__import__('datetime').datetime(2026, 11, 25))}\r\n"
            f"Message-ID: <{abs(hash(author + body))}@test>\r\n\r\n{body}").encode()


def mail_dkim(data: bytes, key: Path, domain: str, canon: str = "relaxed/simple") -> bytes:
    require_perl_module("Mail::DKIM::Signer", "libmail-dkim-perl")
    return subprocess.run(["perl", str(HERE / "mailsign.pl"), "dkim", domain, "sel",
                           str(key), canon], input=data, capture_output=True,
                          check=True).stdout


def arc_seal(data: bytes, key: Path, relay: str = "relay.arc.test") -> bytes:
    """An ARC set added by ``relay``, from its Authentication-Results header on top."""
    require_perl_module("Mail::DKIM::ARC::Signer", "libmail-dkim-perl")
    return subprocess.run(["perl", str(HERE / "mailsign.pl"), "arc", "arc.test", "sel",
                           str(key), relay], input=data, capture_output=True,
                          check=True).stdout


def opendkim_sign(data: bytes, key: Path, selector: str) -> bytes:
    testmsg = require_program("opendkim-testmsg", "opendkim-tools")
    return subprocess.run([testmsg, "-C", "-d", "dkim.test", "-k", str(key), "-s",
                           selector], input=data, capture_output=True, check=True).stdout


def altered(data: bytes) -> bytes:
    """The message as a careless relay would pass it on: one word of the body changed."""
    assert data.count(b"second line") == 1
    return data.replace(b"second line", b"second lime")


def send(sinkhole: Sinkhole, data: bytes, sender: str, *, helo: str = "client.test",
         source: str = z.GOOD) -> None:
    with smtplib.SMTP("127.0.0.1", sinkhole.port, local_hostname=helo, timeout=60,
                      source_address=(source, 0)) as client:
        client.sendmail(sender, ["bob@example.test"], data)


@dataclass(frozen=True)
class Stored:
    ours: list[str]  # our Authentication-Results fields, unfolded
    others: list[str]  # every other Authentication-Results field
    meta: dict[str, Any]

    @property
    def auth(self) -> dict[str, Any]:
        results: dict[str, Any] = self.meta["authentication_results"]
        return results

    def parsed(self) -> dict[str, list[tuple[str, dict[str, str]]]]:
        """Our one header, as authres reads it: method -> [(result, properties)]."""
        [header] = self.ours
        parsed = PARSER.parse(header)
        assert parsed.authserv_id == "mx.test"
        found: dict[str, list[tuple[str, dict[str, str]]]] = {}
        for result in parsed.results:
            properties = {f"{p.type}.{p.name}": p.value for p in result.properties}
            if result.reason:
                properties["reason"] = result.reason
            found.setdefault(result.method, []).append((result.result, properties))
        return found


def stored(sinkhole: Sinkhole, count: int) -> list[Stored]:
    """The stored messages, in the order they arrived."""
    sinkhole.wait_for("message", count)
    found = []
    for path in sorted((sinkhole.maildir / "new").iterdir(),
                       key=lambda p: int(p.name.split(".")[1].split("Q")[1].split("R")[0])):
        header = path.read_bytes().split(b"\r\n\r\n", 1)[0].decode()
        fields = re.findall(r"^Authentication-Results:[^\r\n]*(?:\r\n[ \t][^\r\n]*)*",
                            header, re.M)
        unfolded = [re.sub(r"\r\n[ \t]", " ", f) for f in fields]
        ours = [f for f in unfolded if f.split(":", 1)[1].split(";")[0].strip() == "mx.test"]
        meta = sinkhole.record(path.name)
        found.append(Stored(ours, [f for f in unfolded if f not in ours], meta))
    assert len(found) == count
    return found


def verifying_sinkhole(factory: Factory, server: Unbound, tmp_path: Path, rules: str = "",
                       *args: str) -> Sinkhole:
    if rules:
        (tmp_path / "rules.toml").write_text(rules)
        args = ("--rules", str(tmp_path / "rules.toml"), *args)
    return factory("--dns-server", server.address, *args)


SPF_CASES = [  # (MAIL FROM, HELO, result)
    ("a@spf-pass.test", "client.test", "pass"),
    ("a@spf-fail.test", "client.test", "fail"),
    ("a@spf-softfail.test", "client.test", "softfail"),
    ("a@spf-neutral.test", "client.test", "neutral"),
    ("a@good.test", "client.test", "none"),
    ("a@spf-lookups.test", "client.test", "permerror"),
    ("a@spf-void.test", "client.test", "permerror"),
    ("a@spf-syntax.test", "client.test", "permerror"),
    ("a@spf-temp.test", "client.test", "temperror"),
    ("alice@spf-macro.test", "client.test", "pass"),
    ("bob@spf-macro.test", "client.test", "fail"),
    ("", "spf-pass.test", "pass"),  # <>: the HELO identity, postmaster@spf-pass.test
]


def test_spf_every_result_through_the_program(sinkhole_factory: Factory, auth_dns: Unbound,
                                              tmp_path: Path) -> None:
    sinkhole = verifying_sinkhole(sinkhole_factory, auth_dns, tmp_path)
    for sender, helo, _result in SPF_CASES:
        send(sinkhole, message("x@example.test"), sender, helo=helo)
    logged = sinkhole.events("message")
    for (sender, helo, result), copy, line in zip(SPF_CASES, stored(sinkhole, len(SPF_CASES)),
                                                  logged, strict=True):
        [(found, properties)] = copy.parsed()["spf"]
        assert found == result, (sender, properties)
        identity = "smtp.mailfrom" if sender else "smtp.helo"
        assert properties[identity] == (sender or helo)
        assert copy.auth["spf"]["result"] == result and line["spf"] == result
        assert copy.auth["spf"]["domain"] == (sender or f"@{helo}").rpartition("@")[2]
        if result in ("permerror", "temperror"):
            assert copy.auth["spf"]["reason"] and properties["reason"]
    reasons = {c.meta["sender"]: c.auth["spf"]["reason"] for c in stored(sinkhole, 12)}
    assert "Void lookup limit" in reasons["a@spf-void.test"]
    assert "Too many DNS lookups" in reasons["a@spf-lookups.test"]


def test_spf_rules_decide_at_mail(sinkhole_factory: Factory, auth_dns: Unbound,
                                  tmp_path: Path) -> None:
    rules = ('[[rule]]\nname = "spf"\nphase = "mail"\naction = "reject"\n'
             'reply = "550 5.7.23 SPF says no"\n[rule.match]\nspf = ["fail", "softfail"]\n')
    sinkhole = verifying_sinkhole(sinkhole_factory, auth_dns, tmp_path, rules)
    for sender, code in (("a@spf-fail.test", 550), ("a@spf-softfail.test", 550),
                         ("a@spf-pass.test", 250), ("a@spf-neutral.test", 250),
                         ("a@spf-temp.test", 451)):  # temperror: unknown, tempfail
        with smtplib.SMTP("127.0.0.1", sinkhole.port, timeout=60) as client:
            client.ehlo("client.test")
            reply = client.mail(sender)
            assert reply[0] == code, (sender, reply)
    temp = [e for e in sinkhole.events("policy") if e.get("dns") == "unknown"]
    assert len(temp) == 1 and temp[0]["reply"].startswith("451 4.4.3")


@pytest.mark.interop
def test_dkim_from_independent_signers(sinkhole_factory: Factory, auth_dns: Unbound,
                                       keys: Keys, tmp_path: Path) -> None:
    sinkhole = verifying_sinkhole(sinkhole_factory, auth_dns, tmp_path)
    plain = message("alice@dkim.test")
    relaxed = mail_dkim(plain, keys.sel, "dkim.test")
    simple = mail_dkim(plain, keys.sel, "dkim.test", "simple/simple")
    sha1 = opendkim_sign(plain, keys.sel, "sel")  # OpenDKIM's tool signs rsa-sha1
    cases = [(relaxed, "pass", ""), (simple, "pass", ""),
             (altered(relaxed), "fail", "body hash did not verify"),
             (altered(simple), "fail", "body hash did not verify"),
             (relaxed.replace(b"Subject: hi", b"Subject: ho"), "fail",
              "signature did not verify"),
             (sha1, "permerror", "RFC 8301"), (plain, "none", "")]
    for data, _result, _reason in cases:
        send(sinkhole, data, "a@spf-fail.test")
    for (_data, result, reason), copy in zip(cases, stored(sinkhole, len(cases)),
                                             strict=True):
        [(found, properties)] = copy.parsed()["dkim"]
        assert found == result
        if result != "none":
            assert properties["header.d"] == "dkim.test" and properties["header.s"] == "sel"
            [record] = copy.auth["dkim"]
            assert (record["domain"], record["selector"]) == ("dkim.test", "sel")
            assert reason in record["reason"]
        else:
            assert copy.auth["dkim"] == []


@pytest.mark.interop
def test_opendkim_signatures_verify_where_sha1_is_allowed(auth_dns: Unbound,
                                                          keys: Keys) -> None:
    # OpenDKIM's opendkim-testmsg signs with rsa-sha1 only (c=relaxed/simple), which
    # RFC 8301 forbids verifiers to accept; an application may still ask. The key at
    # old._domainkey allows sha1 (h=sha1:sha256).
    signed = opendkim_sign(message("alice@dkim.test"), keys.old, "old")
    assert b"a=rsa-sha1; c=relaxed/simple" in signed

    async def check(data: bytes) -> list[str]:
        resolver = Resolver([auth_dns.address], timeout=5)
        results = await verify.check_dkim(resolver, data, allow_sha1=True)
        return [r.result for r in results]

    assert trio.run(check, signed) == ["pass"]
    assert trio.run(check, altered(signed)) == ["fail"]
    # And the key published at sel._domainkey allows sha256 only (opendkim-genkey's h=).
    strict = opendkim_sign(message("alice@dkim.test"), keys.sel, "sel")
    assert trio.run(check, strict) == ["permerror"]


DMARC_CASES = [  # (From, DKIM signing domain or None, MAIL FROM, result, policy, aligned)
    ("x@news.relaxed.test", "relaxed.test", "a@spf-fail.test", "pass", "reject", "dkim"),
    ("x@news.strict.test", "strict.test", "a@spf-fail.test", "fail", "quarantine", ""),
    ("x@strict.test", "strict.test", "a@spf-fail.test", "pass", "reject", "dkim"),
    ("x@dmarc-reject.test", None, "a@spf-fail.test", "fail", "reject", ""),
    ("x@dmarc-reject.test", "dkim.test", "a@spf-pass.test", "fail", "reject", ""),
    ("x@spf-pass.test", None, "a@spf-pass.test", "pass", "quarantine", "spf"),
    ("x@good.test", None, "a@good.test", "none", "", ""),
]


@pytest.mark.interop
def test_dmarc_alignment_and_policy(sinkhole_factory: Factory, auth_dns: Unbound,
                                    keys: Keys, tmp_path: Path) -> None:
    sinkhole = verifying_sinkhole(sinkhole_factory, auth_dns, tmp_path)
    for author, signer, sender, *_ in DMARC_CASES:
        data = message(author)
        send(sinkhole, mail_dkim(data, keys.sel, signer) if signer else data, sender)
    for case, copy in zip(DMARC_CASES, stored(sinkhole, len(DMARC_CASES)), strict=True):
        author, _signer, _sender, result, policy, aligned = case
        [(found, properties)] = copy.parsed()["dmarc"]
        assert found == result, case
        assert properties["header.from"] == author.partition("@")[2]
        record = copy.auth["dmarc"]
        assert record["policy"] == policy and properties.get("policy.dmarc") == (
            policy or None)
        assert (record["spf_aligned"], record["dkim_aligned"]) == (aligned == "spf",
                                                                   aligned == "dkim"), case
    subdomain = stored(sinkhole, len(DMARC_CASES))[1].auth["dmarc"]
    assert (subdomain["record_domain"], subdomain["disposition"]) == ("strict.test",
                                                                      "quarantine")


SPF_ALIGNMENT_CASES = [  # (From, MAIL FROM, DMARC result); SPF passes for each
    ("x@relaxed.test", "a@bounce.relaxed.test", "pass"),  # aspf=r (the default)
    ("x@strict.test", "a@bounce.strict.test", "fail"),  # aspf=s: a subdomain is not it
    ("x@strict.test", "a@strict.test", "pass"),
]


def test_dmarc_spf_alignment_relaxed_and_strict(sinkhole_factory: Factory,
                                                auth_dns: Unbound, tmp_path: Path) -> None:
    sinkhole = verifying_sinkhole(sinkhole_factory, auth_dns, tmp_path)
    for author, sender, _result in SPF_ALIGNMENT_CASES:
        send(sinkhole, message(author), sender)  # unsigned: SPF alone can align
    copies = stored(sinkhole, len(SPF_ALIGNMENT_CASES))
    for case, copy in zip(SPF_ALIGNMENT_CASES, copies, strict=True):
        _author, sender, result = case
        assert copy.auth["spf"]["result"] == "pass" and copy.auth["spf"]["domain"] == \
            sender.partition("@")[2], case
        [(found, _properties)] = copy.parsed()["dmarc"]
        record = copy.auth["dmarc"]
        assert found == record["result"] == result, case
        assert (record["spf_aligned"], record["dkim_aligned"]) == (result == "pass", False)


@pytest.mark.interop
def test_dmarc_reject_rule(sinkhole_factory: Factory, auth_dns: Unbound, keys: Keys,
                           tmp_path: Path) -> None:
    rules = ('[[rule]]\nname = "badsig"\nphase = "message"\naction = "tempfail"\n'
             '[rule.match]\ndkim = ["fail"]\n'
             '[[rule]]\nname = "dmarc"\nphase = "message"\naction = "reject"\n'
             'reply = "550 5.7.1 DMARC policy says reject"\n[rule.match]\n'
             'dmarc_policy = ["reject"]\n')
    sinkhole = verifying_sinkhole(sinkhole_factory, auth_dns, tmp_path, rules)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(sinkhole, message("x@dmarc-reject.test"), "a@spf-fail.test")
    assert refused.value.smtp_code == 550
    signed = mail_dkim(message("x@relaxed.test"), keys.sel, "relaxed.test")
    with pytest.raises(smtplib.SMTPDataError) as held:
        send(sinkhole, altered(signed), "a@spf-fail.test")
    assert held.value.smtp_code == 451
    send(sinkhole, signed, "a@spf-fail.test")  # DMARC passes (relaxed): stored
    assert stored_one(sinkhole).parsed()["dmarc"][0][0] == "pass"
    rejected = [e for e in sinkhole.events("message") if e["outcome"] == "rejected"]
    assert [(e["rule"], e["dmarc"]) for e in rejected] == [
        ("dmarc", "fail dmarc-reject.test p=reject"), ("badsig", "fail relaxed.test p=reject")]


def stored_one(sinkhole: Sinkhole) -> Stored:
    sinkhole.wait_for("message", 1)
    [copy] = stored(sinkhole, 1)
    return copy


@pytest.mark.interop
def test_arc_chain_sealed_by_mail_dkim(sinkhole_factory: Factory, auth_dns: Unbound,
                                       keys: Keys, tmp_path: Path) -> None:
    sinkhole = verifying_sinkhole(sinkhole_factory, auth_dns, tmp_path)
    relayed = message("alice@arc.test", extra="Authentication-Results: relay.arc.test; "
                      "arc=none; spf=pass smtp.mailfrom=alice@arc.test\r\n")
    sealed = arc_seal(relayed, keys.sel)
    assert sealed.startswith(b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=arc.test")
    for data in (sealed, altered(sealed)):
        send(sinkhole, data, "a@spf-fail.test")
    good, broken = stored(sinkhole, 2)
    assert good.parsed()["arc"] == [("pass", {"header.ams-d": "arc.test",
                                              "header.ams-s": "sel",
                                              "header.as-d": "arc.test",
                                              "header.as-s": "sel"})]
    assert good.auth["arc"]["instances"] == 1
    assert broken.parsed()["arc"][0][0] == "fail"
    assert good.others == ["Authentication-Results: relay.arc.test; arc=none; spf=pass "
                           "smtp.mailfrom=alice@arc.test"]  # someone else's: kept


@pytest.mark.interop
def test_arc_chain_of_two_sets(sinkhole_factory: Factory, auth_dns: Unbound, keys: Keys,
                               tmp_path: Path) -> None:
    sinkhole = verifying_sinkhole(sinkhole_factory, auth_dns, tmp_path)
    first = arc_seal(message("alice@arc.test", extra="Authentication-Results: "
                             "relay.arc.test; arc=none\r\n"), keys.sel)
    relay2 = b"Authentication-Results: relay2.arc.test; arc=pass\r\n"
    second = arc_seal(relay2 + first, keys.sel, "relay2.arc.test")
    assert second.startswith(b"ARC-Seal: i=2; a=rsa-sha256; cv=pass; d=arc.test")
    # A second relay sealing (and claiming arc=pass for) a chain whose first seal is
    # forged: its own set is good, the chain is not.
    seal = re.search(rb"ARC-Seal: i=1;[^\r]*b=\s*", first)
    assert seal is not None
    at = seal.end() + 10
    forged = first[:at] + (b"B" if first[at:at + 1] == b"A" else b"A") + first[at + 1:]
    broken = arc_seal(relay2 + forged, keys.sel, "relay2.arc.test")
    for data in (second, altered(second), broken):
        send(sinkhole, data, "a@spf-fail.test")
    good, altered_body, forged_first = stored(sinkhole, 3)
    assert good.parsed()["arc"] == [("pass", {"header.ams-d": "arc.test",
                                              "header.ams-s": "sel",
                                              "header.as-d": "arc.test",
                                              "header.as-s": "sel"})]
    assert good.auth["arc"]["result"] == "pass" and good.auth["arc"]["instances"] == 2
    assert altered_body.parsed()["arc"][0][0] == "fail"
    assert forged_first.parsed()["arc"][0][0] == "fail"
    assert "ARC-Seal[1] did not validate" in forged_first.auth["arc"]["reason"]


@pytest.mark.interop
def test_dmarc_and_arc_rules(sinkhole_factory: Factory, auth_dns: Unbound, keys: Keys,
                             tmp_path: Path) -> None:
    rules = ('[[rule]]\nname = "dmarc"\nphase = "message"\naction = "reject"\n'
             'reply = "550 5.7.1 DMARC fails"\n[rule.match]\ndmarc = ["fail"]\n'
             '[[rule]]\nname = "arc"\nphase = "message"\naction = "reject"\n'
             'reply = "550 5.7.1 ARC fails"\n[rule.match]\narc = ["fail"]\n')
    sinkhole = verifying_sinkhole(sinkhole_factory, auth_dns, tmp_path, rules)
    sealed = arc_seal(message("alice@arc.test", extra="Authentication-Results: "
                              "relay.arc.test; arc=none\r\n"), keys.sel)
    for data, reply in ((message("x@dmarc-reject.test"), b"DMARC fails"),
                        (altered(sealed), b"ARC fails")):  # (arc.test has no DMARC)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send(sinkhole, data, "a@spf-fail.test")
        assert (refused.value.smtp_code, refused.value.smtp_error) == (550, b"5.7.1 " + reply)
    send(sinkhole, mail_dkim(message("x@relaxed.test"), keys.sel, "relaxed.test"),
         "a@spf-fail.test")  # DMARC passes
    send(sinkhole, sealed, "a@spf-fail.test")  # ARC passes
    copies = stored(sinkhole, 2)
    assert [c.auth["dmarc"]["result"] for c in copies] == ["pass", "none"]
    assert [c.auth["arc"]["result"] for c in copies] == ["none", "pass"]
    rejected = [e for e in sinkhole.events("message") if e["outcome"] == "rejected"]
    assert [e["rule"] for e in rejected] == ["dmarc", "arc"]


@pytest.mark.interop
def test_one_authentication_results_of_ours_reads_back_as_recorded(
        sinkhole_factory: Factory, auth_dns: Unbound, keys: Keys, tmp_path: Path) -> None:
    sinkhole = verifying_sinkhole(sinkhole_factory, auth_dns, tmp_path)
    forged = ("Authentication-Results: mx.test; dkim=pass header.d=bank.test\r\n"
              "Authentication-Results: (ours?) MX.TEST.;\r\n\tspf=pass\r\n"
              "Authentication-Results: elsewhere.test; spf=fail\r\n")
    data = mail_dkim(message("alice@relaxed.test", extra=forged), keys.sel, "relaxed.test")
    send(sinkhole, data, "a@spf-pass.test")
    copy = stored_one(sinkhole)
    assert len(copy.ours) == 1 and copy.auth["removed_headers"] == 2
    assert copy.others == ["Authentication-Results: elsewhere.test; spf=fail"]
    parsed = copy.parsed()
    auth = copy.auth
    assert parsed["spf"] == [(auth["spf"]["result"], {"smtp.mailfrom": "a@spf-pass.test"})]
    [dkim] = auth["dkim"]
    properties = {"header.d": dkim["domain"], "header.s": dkim["selector"],
                  "header.i": dkim["identity"], "header.a": dkim["algorithm"],
                  "header.b": dkim["signature"][:8]}
    assert parsed["dkim"] == [(dkim["result"], {k: v for k, v in properties.items() if v})]
    assert parsed["arc"] == [(auth["arc"]["result"], {"reason": auth["arc"]["reason"]})]
    assert parsed["dmarc"] == [(auth["dmarc"]["result"], {
        "policy.dmarc": auth["dmarc"]["policy"], "header.from": auth["dmarc"]["domain"]})]
    assert [r for r, _ in parsed["dkim"] + parsed["dmarc"]] == ["pass", "pass"]
    # The metadata's SHA-256 is of the message as received, forged fields and all.
    assert copy.meta["sha256"] == __import__("hashlib").sha256(data).hexdigest()


@pytest.mark.interop
def test_a_silent_dns_gives_temperror_not_a_stalled_session(
        sinkhole_factory: Factory, silent_dns: SilentServer, keys: Keys,
        tmp_path: Path) -> None:
    sinkhole = sinkhole_factory("--dns-server", silent_dns.address, "--dns-timeout", "1",
                                "--verify-timeout", "2")
    signed = mail_dkim(message("alice@dkim.test"), keys.sel, "dkim.test")
    for _ in range(2):  # the second finds the resolver taken for unreachable
        send(sinkhole, signed, "a@spf-pass.test")
    for copy in stored(sinkhole, 2):
        results = {method: found[0][0] for method, found in copy.parsed().items()}
        assert results == {"spf": "temperror", "dkim": "temperror", "arc": "none",
                           "dmarc": "temperror"}


def test_switches(sinkhole_factory: Factory, auth_dns: Unbound, tmp_path: Path) -> None:
    off = verifying_sinkhole(sinkhole_factory, auth_dns, tmp_path, "", "--no-verify")
    send(off, message("x@dmarc-reject.test"), "a@spf-fail.test")
    copy = stored_one(off)
    assert copy.ours == [] and copy.meta["authentication_results"] is None
    assert "spf" not in off.events("message")[0]


def test_only_the_checks_asked_for(sinkhole_factory: Factory, auth_dns: Unbound,
                                   tmp_path: Path) -> None:
    spf_only = verifying_sinkhole(sinkhole_factory, auth_dns, tmp_path, "",
                                  "--verify", "spf")
    send(spf_only, message("x@dmarc-reject.test"), "a@spf-fail.test")
    assert list(stored_one(spf_only).parsed()) == ["spf"]


@pytest.mark.parametrize("args", [
    ("--verify", "dmarc"), ("--verify", "spf,dkim,nope"), ("--verify", ""),
    ("--no-verify", "--verify", "spf"), ("--verify-timeout", "0"),
    ("--verify-timeout", "61"), ("--no-dns", "--verify", "spf"),
    ("--verify", "spf", "--rules", "DKIM_RULES"), ("--no-verify", "--rules", "DKIM_RULES"),
])
def test_verify_option_errors_exit_2(args: tuple[str, ...], tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nphase = "message"\naction = "reject"\n[rule.match]\n'
                     'dkim = ["fail"]\n')
    argv = [a.replace("DKIM_RULES", str(rules)) for a in args]
    if "--no-dns" not in argv:
        argv += ["--dns-server", "127.0.0.1:9"]
    result = subprocess.run([sys.executable, "-m", "trio_smtpd", "--maildir",
                             str(tmp_path / "m"), *argv], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("trio-smtpd: ") and len(result.stderr.splitlines()) == 1


@pytest.mark.interop
def test_a_large_message_is_verified_and_stored_whole(
        sinkhole_factory: Factory, auth_dns: Unbound, keys: Keys, tmp_path: Path) -> None:
    # Over the Maildir writer's 1 MiB buffer: the body is on disk before the results are
    # known, and the trace headers are put in front of it afterwards.
    sinkhole = verifying_sinkhole(sinkhole_factory, auth_dns, tmp_path)
    body = "".join(f"line {n} of a long  message \r\n" for n in range(100_000))
    data = mail_dkim(message("alice@relaxed.test", body + "second line\r\n"), keys.sel,
                     "relaxed.test")
    assert len(data) > 3 * 2**20
    send(sinkhole, data, "a@spf-pass.test")
    copy = stored_one(sinkhole)
    assert [r for r, _ in copy.parsed()["dkim"]] == ["pass"]
    [path] = (sinkhole.maildir / "new").iterdir()
    stored_bytes = path.read_bytes()
    assert stored_bytes.startswith(b"Return-Path: <a@spf-pass.test>\r\n")
    assert stored_bytes.endswith(data) and copy.meta["size"] == len(data)
