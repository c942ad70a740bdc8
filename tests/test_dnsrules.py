"""Rule matchers over DNS and HELO facts, evaluated against facts made by hand: what
each matcher decides, what it waits for, what "unknown" means, and what fails to load."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from trio_smtpd.sinkhole.dnsfacts import (
    RDNS,
    Listing,
    MailDomain,
    ReverseDNS,
    Wants,
    dbl_key,
    dnsbl_key,
    domain_key,
)
from trio_smtpd.sinkhole.dnsrules import host_pattern
from trio_smtpd.sinkhole.rules import Facts, Pending, RulesError, RuleSet, Verdict, load_rules

GOOD = ReverseDNS(("h8.dyn.test",), verified=("h8.dyn.test",))
LISTED = Listing("dnsbl", "zen.test", "192.0.2.7", True, ("127.0.0.2",), "spam")
CLEAN = Listing("dnsbl", "zen.test", "192.0.2.8", False)
BASE = Facts(ip="192.0.2.7", local_ip="198.51.100.1", helo="mail.spammy.test",
             helo_verb="EHLO", sender="a@spammy.test", recipient="b@nullmx.test",
             recipients=("b@nullmx.test", "c@good.test"))


def load(tmp_path: Path, *rules: str) -> RuleSet:
    path = tmp_path / "rules.toml"
    path.write_text("\n".join(f"[[rule]]\nname = \"r{n}\"\n{text}\n"
                              for n, text in enumerate(rules)))
    return load_rules(path)


def rule(phase: str, match: str, action: str = "reject", extra: str = "") -> str:
    return f'phase = "{phase}"\naction = "{action}"\n{extra}\n[rule.match]\n{match}'


def decide(ruleset: RuleSet, phase: str, **dns: object) -> Verdict | Pending | None:
    facts = replace(BASE, dns={key_of(k): v for k, v in dns.items()})
    return ruleset.decide(phase, facts)  # type: ignore[arg-type]


def key_of(name: str) -> tuple[str, ...]:
    return {"rdns": RDNS, "zen": dnsbl_key("zen.test"),
            "dbl_helo": dbl_key("mail.spammy.test", "dbl.test"),
            "dbl_sender": dbl_key("spammy.test", "dbl.test"),
            "dbl_host": dbl_key("h8.dyn.test", "dbl.test"),
            "sender": domain_key("spammy.test"), "nullmx": domain_key("nullmx.test"),
            "good": domain_key("good.test")}[name]


def action(verdict: Verdict | Pending | None) -> str | None:
    assert not isinstance(verdict, Pending), verdict
    return None if verdict is None else verdict.rule


def dbl(name: str, listed: bool | None) -> Listing:
    return Listing("dbl", "dbl.test", name, listed)


@pytest.mark.parametrize(("phase", "match", "facts", "hit"), [
    ("connect", 'host = ["*.dyn.test"]', {"rdns": GOOD}, True),
    ("connect", 'host = [".dyn.test"]', {"rdns": GOOD}, True),
    ("connect", 'host = ["h8.dyn.test."]', {"rdns": GOOD}, True),
    ("connect", 'host = ["dyn.test"]', {"rdns": GOOD}, False),
    ("connect", 'host = ["*.dyn.test"]', {"rdns": ReverseDNS(("h8.dyn.test",),
                                                             nofwd=("h8.dyn.test",))}, False),
    ("connect", 'dns = ["good"]', {"rdns": GOOD}, True),
    ("connect", 'dns = ["nodns", "noforward"]', {"rdns": GOOD}, False),
    ("connect", 'dnsbl = ["zen.test"]', {"zen": LISTED}, True),
    ("connect", 'dnsbl = ["zen.test"]', {"zen": CLEAN}, False),
    ("helo", 'helo_has = ["ehlo"]', {}, True),
    ("helo", 'helo_has = ["ip", "nodots"]', {}, False),
    ("mail", 'dbl = { helo = ["dbl.test"] }', {"dbl_helo": dbl("mail.spammy.test", True)},
     True),
    ("mail", 'dbl = { sender = ["dbl.test"] }', {"dbl_sender": dbl("spammy.test", True)},
     True),
    ("connect", 'dbl = { host = ["dbl.test"] }',
     {"rdns": GOOD, "dbl_host": dbl("h8.dyn.test", True)}, True),
    ("mail", 'sender_has = ["resolves"]', {"sender": MailDomain("spammy.test", "resolves")},
     True),
    ("mail", 'sender_has = ["baddom"]', {"sender": MailDomain("spammy.test", "resolves")},
     False),
    ("rcpt", 'recipient_has = ["baddom"]', {"nullmx": MailDomain("nullmx.test", "baddom")},
     True),
    ("data", 'recipient_has = ["resolves"]',  # any recipient, as recipient = [...] does
     {"nullmx": MailDomain("nullmx.test", "baddom"),
      "good": MailDomain("good.test", "resolves")}, True),
    ("mail", 'source = [".spammy.test"]', {}, True),  # the HELO name: no DNS needed
    ("mail", 'source = ["spammy.test"]', {}, True),  # the sender's domain
    ("mail", 'source = ["*.dyn.test"]', {"rdns": GOOD}, True),  # the confirmed name
    ("mail", 'source = ["other.test"]', {"rdns": GOOD}, False),
])
def test_each_matcher_decides(tmp_path: Path, phase: str, match: str,
                              facts: dict[str, object], hit: bool) -> None:
    assert action(decide(load(tmp_path, rule(phase, match)), phase, **facts)) == (
        "r0" if hit else None)


def test_a_decision_names_the_facts_it_waits_for_and_only_those(tmp_path: Path) -> None:
    ruleset = load(tmp_path, rule("connect", 'dnsbl = ["zen.test"]'),
                   rule("connect", 'dns = ["nodns"]'))
    assert decide(ruleset, "connect") == Pending(frozenset({dnsbl_key("zen.test")}))
    assert decide(ruleset, "connect", zen=CLEAN) == Pending(frozenset({RDNS}))
    assert action(decide(ruleset, "connect", zen=LISTED)) == "r0"  # rDNS not needed
    # A rule whose other matchers fail does not wait for DNS at all.
    quick = load(tmp_path, rule("connect", 'ip = ["10.0.0.0/8"]\ndnsbl = ["zen.test"]'))
    assert decide(quick, "connect") is None
    chained = load(tmp_path, rule("connect", 'dbl = { host = ["dbl.test"] }'))
    assert decide(chained, "connect") == Pending(frozenset({RDNS}))
    assert decide(chained, "connect", rdns=GOOD) == Pending(frozenset(
        {dbl_key("h8.dyn.test", "dbl.test")}))


@pytest.mark.parametrize(("setting", "expected"), [
    ("", ("tempfail", "451 4.4.3 Temporary DNS failure; try again later")),
    ('unknown = "tempfail"', ("tempfail", "451 4.4.3 Temporary DNS failure; try again later")),
    ('unknown = "match"', ("reject", "550 5.7.1 Rejected by policy")),
    ('unknown = "nomatch"', ("accept", "250 2.0.0 fallback")),
])
def test_what_unknown_means(tmp_path: Path, setting: str, expected: tuple[str, str]) -> None:
    ruleset = load(tmp_path, rule("connect", 'dnsbl = ["zen.test"]', extra=setting),
                   rule("connect", "", "accept", 'reply = "250 2.0.0 fallback"'))
    unknown = Listing("dnsbl", "zen.test", "192.0.2.7", None, detail="timeout")
    verdict = decide(ruleset, "connect", zen=unknown)
    assert isinstance(verdict, Verdict)
    assert (verdict.action, str(verdict.reply)) == expected
    assert verdict.unknown is (setting != 'unknown = "nomatch"')


def test_unknown_values_inside_combinators(tmp_path: Path) -> None:
    unknown = Listing("dnsbl", "zen.test", "192.0.2.7", None)
    ruleset = load(tmp_path, rule("connect", 'any = [{ dnsbl = ["zen.test"] }, '
                                             '{ ip = ["192.0.2.0/24"] }]'),
                   rule("connect", 'not = { dnsbl = ["zen.test"] }', "accept"))
    assert action(decide(ruleset, "connect", zen=unknown)) == "r0"  # true either way
    no_ip = load(tmp_path, rule("connect", 'not = { dnsbl = ["zen.test"] }'))
    verdict = decide(no_ip, "connect", zen=unknown)
    assert isinstance(verdict, Verdict) and verdict.unknown


def test_sender_and_recipient_attribute_unknown(tmp_path: Path) -> None:
    ruleset = load(tmp_path, rule("mail", 'sender_has = ["unknown"]'))
    failed = MailDomain("spammy.test", "unknown", "MX timeout")
    assert action(decide(ruleset, "mail", sender=failed)) == "r0"
    null_sender = replace(BASE, sender="", dns={})
    assert ruleset.decide("mail", null_sender) is None  # <> has no domain to judge


@pytest.mark.parametrize(("match", "phase", "error"), [
    ('dns = ["fine"]', "connect", "does not know ['fine']"),
    ('helo_has = ["ipv6"]', "helo", "does not know"),
    ('sender_has = ["good"]', "mail", "does not know"),
    ('dnsbl = ["not a zone"]', "connect", "not a DNS zone"),
    ("dnsbl = []", "connect", "non-empty list"),
    ('dbl = { from = ["dbl.test"] }', "mail", "sources are"),
    ('dbl = ["dbl.test"]', "mail", "takes a table"),
    ('helo_has = ["ehlo"]', "connect", "not known yet in the connect phase"),
    ('sender_has = ["baddom"]', "helo", "not known yet in the helo phase"),
    ('source = ["x.test"]', "helo", "not known yet in the helo phase"),
    ('recipient_has = ["baddom"]', "mail", "not known yet in the mail phase"),
    ('dbl = { helo = ["dbl.test"] }', "connect", "'dbl.helo' is not known yet"),
    ('dbl = { any = ["dbl.test"] }', "helo", "'dbl.any' is not known yet"),
])
def test_load_errors(tmp_path: Path, match: str, phase: str, error: str) -> None:
    with pytest.raises(RulesError, match=error.replace("[", r"\[").replace("]", r"\]")):
        load(tmp_path, rule(phase, match))


def test_unknown_setting_is_checked(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="unknown must be one of"):
        load(tmp_path, rule("connect", 'dnsbl = ["zen.test"]', extra='unknown = "accept"'))


def test_the_rules_say_which_lookups_to_start_early(tmp_path: Path) -> None:
    ruleset = load(tmp_path, rule("connect", 'not = { dnsbl = ["zen.test", "b.test"] }'),
                   rule("mail", 'any = [{ dbl = { any = ["dbl.test"] } }, '
                                '{ sender_has = ["baddom"] }]'),
                   rule("rcpt", 'recipient_has = ["unknown"]'),
                   rule("helo", 'helo_has = ["bareip"]'))
    assert ruleset.wants == Wants(
        dnsbl=frozenset({"zen.test", "b.test"}), dbl_host=frozenset({"dbl.test"}),
        dbl_helo=frozenset({"dbl.test"}), dbl_sender=frozenset({"dbl.test"}), rdns=True,
        sender_domain=True, recipient_domain=True)
    assert not load(tmp_path, rule("helo", 'helo_has = ["bareip"]')).wants  # no DNS


def test_host_patterns() -> None:
    matches = host_pattern([".dyn.test", "*.pool.test", "mx.test"])
    assert [matches(n) for n in ("dyn.test", "a.b.dyn.test", "xdyn.test", "a.pool.test",
                                 "pool.test", "MX.test.", "a.mx.test")] == [
        True, True, False, True, False, True, False]
