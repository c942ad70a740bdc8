"""Rules over authentication results: the matchers' answers, with "unknown" for a
temperror, and a rule set that cannot load when a check it uses is off."""

from __future__ import annotations

from pathlib import Path

import pytest

from trio_smtpd.sinkhole.dnsfacts import spf_key
from trio_smtpd.sinkhole.logic import UNKNOWN, Pending
from trio_smtpd.sinkhole.rules import Facts, RulesError, load_rules
from trio_smtpd.sinkhole.verifying import ARC_KEY, DKIM_KEY, DMARC_KEY
from trio_smtpd.verify import ARCResult, DKIMResult, DMARCResult, SPFResult


def rule(tmp_path: Path, phase: str, match: str, extra: str = "") -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(f'[[rule]]\nname = "r"\nphase = "{phase}"\naction = "reject"\n{extra}'
                    f'\n[rule.match]\n{match}\n')
    return path


def facts(**dns: object) -> Facts:
    return Facts(ip="192.0.2.1", helo="h.test", sender="a@x.test", recipients=("b@y.test",),
                 dns=dns.pop("values", {}))


def test_spf_waits_for_its_check_then_decides(tmp_path: Path) -> None:
    rules = load_rules(rule(tmp_path, "mail", 'spf = ["fail", "softfail"]'))
    assert rules.verify == {"spf"}
    key = spf_key("a@x.test", "h.test")
    assert rules.decide("mail", facts()) == Pending(frozenset({key}))
    for result, action in (("fail", "reject"), ("softfail", "reject"), ("pass", None),
                           ("none", None), ("temperror", "tempfail")):
        found = SPFResult(result, "mailfrom", "x.test", "a@x.test")
        verdict = rules.decide("mail", facts(values={key: found}))
        assert (verdict.action if verdict else None) == action, result  # type: ignore[union-attr]


def test_message_matchers(tmp_path: Path) -> None:
    # One signature failing is enough, whatever the others say.
    signatures = (DKIMResult("pass", "a.test", "s"), DKIMResult("fail", "b.test", "s"))
    assert load_rules(rule(tmp_path, "message", 'dkim = ["fail"]')).decide(
        "message", facts(values={DKIM_KEY: signatures})) is not None
    for found, match, matched in [
            ((), 'dkim = ["none"]', True), (signatures[:1], 'dkim = ["fail"]', False),
            ((DKIMResult("temperror", "a.test", "s"),), 'dkim = ["fail"]', UNKNOWN)]:
        rules = load_rules(rule(tmp_path, "message", match, 'unknown = "nomatch"'))
        verdict = rules.decide("message", facts(values={DKIM_KEY: found}))
        assert (verdict is not None) == (matched is True), (found, match)
    failed = DMARCResult("fail", "x.test", "reject", "quarantine")
    for match, expected in (('dmarc = ["fail"]', True), ('dmarc_policy = ["reject"]', False),
                            ('dmarc_policy = ["quarantine"]', True)):
        rules = load_rules(rule(tmp_path, "message", match))
        assert (rules.decide("message", facts(values={DMARC_KEY: failed})) is not None) \
            == expected, match
    rules = load_rules(rule(tmp_path, "message", 'arc = ["fail"]'))
    assert rules.decide("message", facts(values={ARC_KEY: ARCResult("pass")})) is None
    assert rules.decide("message", facts(values={ARC_KEY: ARCResult("fail")})) is not None


@pytest.mark.parametrize(("phase", "match", "error"), [
    ("rcpt", 'dkim = ["fail"]', "not known yet"),
    ("helo", 'spf = ["fail"]', "not known yet"),
    ("mail", 'spf = ["failed"]', "does not know"),
    ("message", 'dmarc_policy = ["fail"]', "does not know"),
    ("message", "dmarc = []", "non-empty list"),
])
def test_bad_matchers(tmp_path: Path, phase: str, match: str, error: str) -> None:
    with pytest.raises(RulesError, match=error):
        load_rules(rule(tmp_path, phase, match))


def test_kinds_used_include_nested_tables(tmp_path: Path) -> None:
    rules = load_rules(rule(tmp_path, "message",
                            'any = [{ not = { dmarc_policy = ["reject"] } }, '
                            '{ arc = ["fail"] }]'))
    assert rules.verify == {"dmarc", "arc"}
