"""Rule matchers over a message's authentication results (``verifying.py``): ``spf``
from the mail phase on, ``dkim``, ``arc``, ``dmarc`` and ``dmarc_policy`` in the
message phase. ::

    spf = ["fail", "softfail"]        # the MAIL FROM's SPF result is one of these
    dkim = ["fail"]                   # some DKIM signature's result is ("none": unsigned)
    arc = ["fail"]                    # the ARC chain's result
    dmarc = ["fail"]                  # the DMARC result
    dmarc_policy = ["reject"]         # DMARC fails and the domain asks for this

A ``temperror`` result (the DNS did not answer in time) is UNKNOWN to a matcher that
does not list it, so the rule's ``unknown`` setting decides, as for the DNS matchers;
listing ``"temperror"`` matches it outright.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..verify import DKIMResult, DMARCResult, SPFResult
from .dnsfacts import spf_key
from .logic import UNKNOWN, Pending, Truth, any_of
from .verifying import ARC_KEY, DKIM_KEY, DMARC_KEY

__all__ = ["AUTH_KNOWN_FROM", "AUTH_MATCHERS", "auth_matcher", "kinds_of"]

RESULTS = {
    "spf": ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"),
    "dkim": ("pass", "fail", "none", "neutral", "permerror", "temperror"),
    "arc": ("pass", "fail", "none", "temperror"),
    "dmarc": ("pass", "fail", "none", "permerror", "temperror"),
    "dmarc_policy": ("none", "quarantine", "reject"),
}
AUTH_KNOWN_FROM = {"spf": "mail", "dkim": "message", "arc": "message", "dmarc": "message",
                   "dmarc_policy": "message"}
AUTH_MATCHERS = tuple(RESULTS)
Matcher = Callable[[Any, str], Truth]


def _wanted(key: str, value: object) -> frozenset[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"'{key}' takes a non-empty list of strings")
    wrong = [v for v in value if v not in RESULTS[key]]
    if wrong:
        raise ValueError(f"'{key}' does not know {wrong}: use {', '.join(RESULTS[key])}")
    return frozenset(value)


def _truth(results: Iterable[str], wanted: frozenset[str]) -> Truth:
    return any_of(True if r in wanted else UNKNOWN if r == "temperror" else False
                  for r in results)


def auth_matcher(key: str, value: object) -> Matcher:
    wanted = _wanted(key, value)
    if key == "spf":
        def spf(facts: Any, phase: str) -> Truth:
            if facts.sender is None:
                return False
            fact = spf_key(facts.sender, facts.helo)
            found = facts.dns.get(fact)
            if found is None:
                return Pending(frozenset({fact}))
            return _truth([found.result], wanted) if isinstance(found, SPFResult) \
                else UNKNOWN
        return spf
    if key == "dkim":
        def dkim(facts: Any, phase: str) -> Truth:
            found = facts.dns.get(DKIM_KEY)
            if not isinstance(found, Sequence):
                return UNKNOWN  # (not checked: the configuration prevents it)
            signatures: list[DKIMResult] = list(found)
            return _truth([d.result for d in signatures] or ["none"], wanted)
        return dkim
    return _single(key, wanted)


def _single(key: str, wanted: frozenset[str]) -> Matcher:
    fact = ARC_KEY if key == "arc" else DMARC_KEY

    def single(facts: Any, phase: str) -> Truth:
        found = facts.dns.get(fact)
        result = getattr(found, "result", None)
        if result is None:
            return UNKNOWN
        if key != "dmarc_policy":
            return _truth([result], wanted)
        if result == "temperror":
            return UNKNOWN
        assert isinstance(found, DMARCResult)
        return result == "fail" and found.disposition in wanted

    return single


def kinds_of(spec: object) -> frozenset[str]:
    """The checks a match table (and those nested in it) uses."""
    kinds: set[str] = set()
    tables: list[object] = [spec]
    while tables:
        table = tables.pop()
        if not isinstance(table, dict):
            continue
        for key, value in table.items():
            if key == "not":
                tables.append(value)
            elif key in ("any", "all") and isinstance(value, list):
                tables += value
            elif key in RESULTS:
                kinds.add("dmarc" if key == "dmarc_policy" else key)
    return frozenset(kinds)
