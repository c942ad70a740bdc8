"""DMARC (RFC 7489): policy discovery through our resolver, identifier alignment with
the Public Suffix List, and the policy a failing message meets.

Written here rather than taken from a package: the algorithm is short (6.6.2 and
6.6.3), its two TXT lookups must go through our resolver, and the Python packages that
implement it either look records up with blocking DNS of their own or align domains
without the Public Suffix List by default. The list comes from ``publicsuffixlist``,
which ships it and is released as the list changes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from functools import cache

import trio
from publicsuffixlist import PublicSuffixList

from ..dns import Answer, Resolver
from ._dkim import DEFAULT_TIMEOUT
from ._message import MessageReader
from ._results import DKIMResult, DMARCResult, SPFResult

__all__ = ["check_dmarc", "dmarc_names", "organizational_domain"]

_VERSION = re.compile(r"v\s*=\s*DMARC1\s*(?:;|$)")
_POLICIES = ("none", "quarantine", "reject")


@cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()  # (reads the list it ships: once per process)


def organizational_domain(domain: str) -> str:
    """RFC 7489 3.2: the public suffix and one label more (the domain itself if it
    is a public suffix, or not under one)."""
    domain = domain.lower().rstrip(".")
    return _psl().privatesuffix(domain) or domain


def aligned(author: str, other: str, mode: str) -> bool:
    """Strict: the same domain; relaxed: the same organizational domain."""
    author, other = author.lower().rstrip("."), other.lower().rstrip(".")
    if mode == "s":
        return author == other
    return organizational_domain(author) == organizational_domain(other)


def dmarc_names(reader: MessageReader) -> list[str]:
    """The TXT names policy discovery may ask about (for looking them up early)."""
    domains, _why = reader.author_domains()
    if len(domains) != 1:
        return []
    organizational = organizational_domain(domains[0])
    return list(dict.fromkeys([f"_dmarc.{domains[0]}", f"_dmarc.{organizational}"]))


def _tags(record: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in record.split(";"):
        name, equals, value = part.partition("=")
        if equals and name.strip():
            tags.setdefault(name.strip().lower(), value.strip())
    return tags


def _records(answer: Answer[str]) -> list[str]:
    return [text for text in answer.records if _VERSION.match(text.lstrip())]


async def _discover(resolver: Resolver, domain: str,
                    deadline: float) -> tuple[str, dict[str, str] | None, str]:
    """(where the record was found, its tags, why not): 6.6.3."""
    organizational = organizational_domain(domain)
    names = dict.fromkeys([domain, organizational])
    answers: dict[str, Answer[str]] = {}

    async def one(name: str) -> None:
        answers[name] = await resolver.txt(f"_dmarc.{name}", deadline=deadline)

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(one, name)
    for name in names:
        answer = answers[name]
        if answer.unknown:
            return name, None, f"policy lookup failed: {answer.status.value}"
        found = _records(answer)
        if len(found) > 1:
            return name, None, "several DMARC records"
        if found:
            return name, _tags(found[0]), ""
    return "", None, "no DMARC record"


async def check_dmarc(resolver: Resolver, message: bytes | MessageReader, *,
                      spf: SPFResult | None, dkim: Sequence[DKIMResult],
                      deadline: float | None = None) -> DMARCResult:
    """Evaluate the message's author domain's DMARC policy, given the results of the
    SPF and DKIM checks (``spf``: of the MAIL FROM, or HELO, identity)."""
    reader = MessageReader.of(message)
    domains, why = reader.author_domains()
    if len(domains) != 1:
        # 6.6.1: without exactly one author domain, DMARC cannot be applied.
        return DMARCResult("permerror" if domains or reader.too_large else "none",
                           reason=why or "several author domains")
    domain = domains[0]
    if deadline is None:
        deadline = trio.current_time() + DEFAULT_TIMEOUT
    where, tags, why = await _discover(resolver, domain, deadline)
    if tags is None:
        return DMARCResult("temperror" if "failed" in why else "none", domain,
                           record_domain=where, reason=why)
    policy = tags.get("p", "").lower()
    if policy not in _POLICIES:
        if not tags.get("rua", "").lower().startswith("mailto:"):  # 6.6.3 step 6
            return DMARCResult("none", domain, record_domain=where,
                               reason="record without a valid p= tag")
        policy = "none"
    if where != domain and tags.get("sp", "").lower() in _POLICIES:
        policy = tags["sp"].lower()
    return _evaluate(domain, where, tags, policy, spf, dkim)


def _evaluate(domain: str, where: str, tags: dict[str, str], policy: str,
              spf: SPFResult | None, dkim: Sequence[DKIMResult]) -> DMARCResult:
    aspf, adkim = (tags.get(t, "r").lower()[:1] for t in ("aspf", "adkim"))
    spf_aligned = spf is not None and spf.result == "pass" and aligned(domain, spf.domain,
                                                                       aspf)
    dkim_aligned = any(r.result == "pass" and aligned(domain, r.domain, adkim)
                       for r in dkim)
    if spf_aligned or dkim_aligned:
        return DMARCResult("pass", domain, policy, "none", where, spf_aligned, dkim_aligned)
    # A check that could have passed, had the DNS answered: not a failure yet.
    unsure = [f"{kind} {r.domain}" for kind, r in
              [("spf", spf), *(("dkim", r) for r in dkim)]
              if r is not None and r.result == "temperror"
              and aligned(domain, r.domain, aspf if kind == "spf" else adkim)]
    if unsure:
        return DMARCResult("temperror", domain, policy, "", where,
                           reason=f"aligned check failed temporarily: {unsure[0]}")
    return DMARCResult("fail", domain, policy, _disposition(policy, tags), where,
                       reason="no aligned SPF or DKIM pass")


def _disposition(policy: str, tags: dict[str, str]) -> str:
    """6.6.4: pct= applies the policy to that share of failing messages; the rest
    meet the next milder one."""
    try:
        percent = min(max(int(tags.get("pct", "100")), 0), 100)
    except ValueError:
        percent = 100
    if percent < 100 and random.random() * 100 >= percent:  # (sampling, not secrecy)
        return {"reject": "quarantine", "quarantine": "none"}.get(policy, policy)
    return policy
