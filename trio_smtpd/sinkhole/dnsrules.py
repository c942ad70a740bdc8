"""Rule matchers over DNS and HELO facts: sinksmtp's ``host``, ``dns``, ``dnsbl``,
``dbl``, ``helo-has``, ``from-has``, ``to-has`` and ``source``, in our TOML form.

Each builder checks its TOML value and returns a matcher ``(facts, phase) -> Truth``
(see :mod:`.logic`): ``Pending`` names the lookups a decision must wait for, ``UNKNOWN``
says the DNS could not answer. :func:`wants_of` tells which lookups a match table may
need, so that they start before anyone waits for them.

Host patterns (``host``, ``source``): ``name.example`` that name; ``.example`` that
domain and every name under it (sinksmtp's form); a pattern with ``*``, ``?`` or ``[``
a glob (``*.dyn.example``). Case, a final dot and the IDN form (A- or U-labels) do not
matter (:func:`.addresses.host_pattern`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from .addresses import host_pattern
from .dnsfacts import (
    DNS_CLASSES,
    RDNS,
    Key,
    Listing,
    MailDomain,
    ReverseDNS,
    Wants,
    dbl_key,
    dbl_name,
    dnsbl_key,
    domain_key,
    lookup_domain,
)
from .helo import HELO_ATTRIBUTES, helo_attributes
from .logic import UNKNOWN, Pending, Truth, any_of

__all__ = ["DNS_MATCHERS", "KNOWN_FROM", "dns_matcher", "wants_of"]


class FactsView(Protocol):
    """What the matchers read of ``rules.Facts``."""

    @property
    def ip(self) -> str | None: ...
    @property
    def local_ip(self) -> str | None: ...
    @property
    def helo(self) -> str | None: ...
    @property
    def helo_verb(self) -> str | None: ...
    @property
    def sender(self) -> str | None: ...
    @property
    def recipient(self) -> str | None: ...
    @property
    def recipients(self) -> tuple[str, ...]: ...
    @property
    def dns(self) -> Mapping[Key, object]: ...


Matcher = Callable[[Any, str], Truth]

#: The first phase in which each matcher's facts exist (dbl: per source, below).
KNOWN_FROM = {"host": "connect", "dns": "connect", "dnsbl": "connect",
              "helo_has": "helo", "sender_has": "mail", "source": "mail",
              "recipient_has": "rcpt"}
DBL_SOURCES = {"host": "connect", "helo": "helo", "sender": "mail", "any": "mail"}
PHASES = ("connect", "helo", "mail", "rcpt", "data", "message")
MAIL_ATTRIBUTES = ("resolves", "baddom", "unknown")
_ZONE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}"
                   r"[a-z0-9])?)+")


def dns_matcher(key: str, value: object, phase: str) -> Matcher:
    return DNS_MATCHERS[key](value, phase)


def _strings(key: str, value: object, allowed: Sequence[str] | None = None) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"'{key}' takes a non-empty list of strings")
    if allowed is not None:
        wrong = [v for v in value if v not in allowed]
        if wrong:
            raise ValueError(f"'{key}' does not know {wrong}: use {', '.join(allowed)}")
    return value


def _zones(key: str, value: object) -> list[str]:
    zones = [z.lower().strip(".") for z in _strings(key, value)]
    for zone in zones:
        if not _ZONE.fullmatch(zone):
            raise ValueError(f"'{key}': {zone!r} is not a DNS zone name")
    return zones


def _fact(facts: FactsView, key: Key) -> object:
    value = facts.dns.get(key)
    return Pending(frozenset({key})) if value is None else value


def _rdns(facts: FactsView) -> ReverseDNS | Pending:
    value = _fact(facts, RDNS)
    assert isinstance(value, ReverseDNS | Pending)
    return value


def _listed(facts: FactsView, key: Key) -> Truth:
    value = _fact(facts, key)
    return value if isinstance(value, Pending) else _as(value, Listing).truth()


def _as(value: object, kind: type[Any]) -> Any:
    assert isinstance(value, kind), value
    return value


def _host_truth(rdns: ReverseDNS | Pending, matches: Callable[[str], bool]) -> Truth:
    """Does a forward-confirmed name of the client match?"""
    if isinstance(rdns, Pending):
        return rdns
    if rdns.failed is not None:
        return UNKNOWN
    if any(map(matches, rdns.verified)):
        return True
    return UNKNOWN if any(map(matches, rdns.unresolved)) else False


def _host(value: object, phase: str) -> Matcher:
    matches = host_pattern(_strings("host", value))
    return lambda facts, p: _host_truth(_rdns(facts), matches)


def _dns(value: object, phase: str) -> Matcher:
    classes = _strings("dns", value, DNS_CLASSES)

    def dns(facts: FactsView, p: str) -> Truth:
        rdns = _rdns(facts)
        if isinstance(rdns, Pending):
            return rdns
        return any_of(rdns.has(cls) for cls in classes)

    return dns


def _dnsbl(value: object, phase: str) -> Matcher:
    zones = _zones("dnsbl", value)
    return lambda facts, p: any_of(_listed(facts, dnsbl_key(zone)) for zone in zones)


def _dbl(value: object, phase: str) -> Matcher:
    if not isinstance(value, dict) or not value:
        raise ValueError("'dbl' takes a table: { host = [...], helo = [...], "
                         "sender = [...] } (or any = [...] for all three)")
    sources: dict[str, list[str]] = {"host": [], "helo": [], "sender": []}
    for source, zones in value.items():
        if source not in DBL_SOURCES:
            raise ValueError(f"'dbl' sources are {', '.join(DBL_SOURCES)}, not {source!r}")
        if PHASES.index(phase) < PHASES.index(DBL_SOURCES[source]):
            raise ValueError(f"'dbl.{source}' is not known yet in the {phase} phase (it "
                             f"is from {DBL_SOURCES[source]} on)")
        for name in ("host", "helo", "sender") if source == "any" else (source,):
            sources[name] += _zones(f"dbl.{source}", zones)

    def dbl(facts: FactsView, p: str) -> Truth:
        return any_of(_dbl_parts(facts, sources))

    return dbl


def _dbl_parts(facts: FactsView, sources: dict[str, list[str]]) -> list[Truth]:
    parts: list[Truth] = []
    for source, names in (("helo", [dbl_name(facts.helo)]),
                          ("sender", [lookup_domain(facts.sender)])):
        parts += [_listed(facts, dbl_key(name, zone)) for name in names if name
                  for zone in sources[source]]
    if sources["host"]:
        rdns = _rdns(facts)
        if isinstance(rdns, Pending):
            parts.append(rdns)
        elif rdns.failed is not None:
            parts.append(UNKNOWN)
        else:
            parts += [_listed(facts, dbl_key(name, zone)) for name in rdns.names
                      if dbl_name(name) for zone in sources["host"]]
    return parts


def _helo_has(value: object, phase: str) -> Matcher:
    wanted = set(_strings("helo_has", value, (*HELO_ATTRIBUTES, "ip")))
    if "ip" in wanted:  # sinksmtp's shorthand
        wanted |= {"bareip", "properip"}

    def helo_has(facts: FactsView, p: str) -> Truth:
        found = helo_attributes(facts.helo, facts.helo_verb, facts.ip, facts.local_ip)
        return not wanted.isdisjoint(found)

    return helo_has


def _mail_truth(facts: FactsView, address: str | None, attributes: list[str]) -> Truth:
    domain = lookup_domain(address)
    if domain is None:  # <>, or an address literal: none of the attributes hold
        return False
    value = _fact(facts, domain_key(domain))
    if isinstance(value, Pending):
        return value
    verdict = _as(value, MailDomain)
    return any_of(verdict.has(a) for a in attributes)


def _sender_has(value: object, phase: str) -> Matcher:
    attributes = _strings("sender_has", value, MAIL_ATTRIBUTES)
    return lambda facts, p: _mail_truth(facts, facts.sender, attributes)


def _recipient_has(value: object, phase: str) -> Matcher:
    attributes = _strings("recipient_has", value, MAIL_ATTRIBUTES)

    def recipient_has(facts: FactsView, p: str) -> Truth:
        candidates = (facts.recipient,) if p == "rcpt" else facts.recipients
        return any_of(_mail_truth(facts, c, attributes) for c in candidates)

    return recipient_has


def _source(value: object, phase: str) -> Matcher:
    matches = host_pattern(_strings("source", value))

    def source(facts: FactsView, p: str) -> Truth:
        # The HELO name and the sender's domain first: they need no DNS.
        helo, domain = dbl_name(facts.helo), lookup_domain(facts.sender)
        return any_of([helo is not None and matches(helo),
                       domain is not None and matches(domain),
                       _host_truth(_rdns(facts), matches)])

    return source


DNS_MATCHERS: dict[str, Callable[[object, str], Matcher]] = {
    "host": _host, "dns": _dns, "dnsbl": _dnsbl, "dbl": _dbl, "helo_has": _helo_has,
    "sender_has": _sender_has, "recipient_has": _recipient_has, "source": _source}


def wants_of(spec: object) -> Wants:
    """The DNS lookups a match table (and the tables nested in it) may need."""
    wants = Wants()
    if not isinstance(spec, dict):
        return wants
    for key, value in spec.items():
        if key == "not":
            wants |= wants_of(value)
        elif key in ("any", "all") and isinstance(value, list):
            for item in value:
                wants |= wants_of(item)
        elif key in ("host", "dns", "source", "host_file", "source_file"):
            wants |= Wants(rdns=True)
        elif key == "dnsbl":
            wants |= Wants(dnsbl=frozenset(_zones(key, value)))
        elif key == "dbl" and isinstance(value, dict):
            wants |= _dbl_wants(value)
        elif key in ("sender_has", "recipient_has"):
            wants |= Wants(sender_domain=key == "sender_has",
                           recipient_domain=key == "recipient_has")
    return wants


def _dbl_wants(table: dict[str, object]) -> Wants:
    zones: dict[str, frozenset[str]] = {"host": frozenset(), "helo": frozenset(),
                                        "sender": frozenset()}
    for source, value in table.items():
        for name in ("host", "helo", "sender") if source == "any" else (source,):
            zones[name] = zones[name] | frozenset(_zones(f"dbl.{source}", value))
    return Wants(dbl_host=zones["host"], dbl_helo=zones["helo"], dbl_sender=zones["sender"],
                 rdns=bool(zones["host"]))
