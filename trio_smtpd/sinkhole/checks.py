"""The DNS checks behind the sinkhole's facts, each one lookup chain with one deadline.

* :func:`reverse_dns`: PTR names of the client, each confirmed by a forward lookup
  (sinksmtp's ``LookupAddrVerified``).
* :func:`listing`: a DNSBL (RFC 5782: reversed address, IPv4 or IPv6 nibbles, under the
  zone) or DBL (name under the zone) lookup, and its TXT reason when listed.
* :func:`mail_domain`: can a domain receive mail (sinksmtp's ``ValidDomain``): MX, else
  the domain's own addresses (RFC 5321 5.1), which must include a global one.

Nothing here raises for a DNS reason; a temporary failure is part of the result.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

import trio

from ..dns import Answer, Resolver, Status, reverse_name
from .dnsfacts import Listing, MailDomain, ReverseDNS

__all__ = ["listing", "mail_domain", "reverse_dns"]

#: PTR names and MX hosts examined: a hostile zone cannot make us ask about hundreds.
MAX_NAMES = 10
#: RFC 5782 2.1: listings are 127.0.0.0/8. Spamhaus answers 127.255.255.x to say it
#: refused the query (typically: asked through a public resolver), which is no listing.
_LISTED = ipaddress.ip_network("127.0.0.0/8")
_REFUSED = ipaddress.ip_network("127.255.255.0/24")
MAX_REASON = 200


async def _families(resolver: Resolver, name: str,
                    deadline: float) -> tuple[Answer[str], Answer[str]]:
    results: dict[str, Answer[str]] = {}

    async def one(family: str) -> None:
        results[family] = await resolver.addresses(name, family=family, deadline=deadline)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, "A")
        nursery.start_soon(one, "AAAA")
    return results["A"], results["AAAA"]


async def reverse_dns(resolver: Resolver, ip: str, deadline: float) -> ReverseDNS:
    answer = await resolver.ptr(ip, deadline=deadline)
    if answer.unknown:
        return ReverseDNS(failed=f"PTR {answer.status.value} {answer.detail}".strip())
    names = tuple(sorted({n for n in answer.records if n != "."}))[:MAX_NAMES]
    verdicts: dict[str, str] = {}

    async def confirm(name: str) -> None:
        verdicts[name] = _confirm(ip, *await _families(resolver, name, deadline))

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(confirm, name)
    def named(verdict: str) -> tuple[str, ...]:
        return tuple(n for n in names if verdicts[n] == verdict)

    return ReverseDNS(names, named("verified"), named("nofwd"), named("inconsistent"),
                      named("unresolved"))


def _confirm(ip: str, a: Answer[str], aaaa: Answer[str]) -> str:
    """Does a PTR name's forward lookup include the client address?"""
    client = _normal(ip)
    same, other = (a, aaaa) if client.version == 4 else (aaaa, a)
    if any(_normal(x) == client for x in same.records):
        return "verified"
    if same.unknown:
        return "unresolved"
    if same.records or other.records:
        return "inconsistent"
    return "unresolved" if other.unknown else "nofwd"


async def listing(resolver: Resolver, kind: Literal["dnsbl", "dbl"], subject: str, zone: str,
                  deadline: float) -> Listing:
    """Is ``subject`` (the client address for a DNSBL, a name for a DBL) in ``zone``?"""
    name = reverse_name(subject, zone) if kind == "dnsbl" else f"{subject}.{zone}"
    answer = await resolver.addresses(name, family="A", deadline=deadline)
    if answer.unknown:
        return Listing(kind, zone, subject, None,
                       detail=f"{answer.status.value} {answer.detail}".strip())
    codes = tuple(a for a in answer.records if ipaddress.ip_address(a) in _LISTED)
    if any(ipaddress.ip_address(a) in _REFUSED for a in codes):
        return Listing(kind, zone, subject, None, codes,
                       detail="the list refused the query (127.255.255.x)")
    if not codes:
        return Listing(kind, zone, subject, False)
    txt = await resolver.txt(name, deadline=deadline)
    reason = _printable(" ".join(txt.records)) if txt.ok else None
    return Listing(kind, zone, subject, True, codes, reason or None)


def _printable(text: str) -> str:
    """A TXT record is someone else's text: no control or line-separator characters
    reach our logs, and not much of it."""
    return "".join(c if c.isprintable() else " " for c in text)[:MAX_REASON]


async def mail_domain(resolver: Resolver, domain: str, deadline: float) -> MailDomain:
    mx = await resolver.mx(domain, deadline=deadline)
    if mx.unknown:
        return MailDomain(domain, "unknown", f"MX {mx.status.value} {mx.detail}".strip())
    if mx.status is Status.NXDOMAIN:
        return MailDomain(domain, "baddom", "no such domain")
    # Any MX saying "no mail here" decides, whatever the other MX hosts, as sinksmtp's
    # ValidDomain has it (RFC 7505 forbids a null MX beside other MX records).
    for preference, host in mx.records:
        if host == ".":
            return MailDomain(domain, "baddom", "null MX (RFC 7505)" if preference == 0
                              else f"MX {preference} .")
        if host == "localhost":
            return MailDomain(domain, "baddom", f"MX {preference} localhost.")
    # No MX: the domain itself is the mail host (RFC 5321 5.1).
    hosts = [host for _, host in sorted(mx.records)][:MAX_NAMES] or [domain]
    return await _deliverable(resolver, domain, hosts, deadline)


async def _deliverable(resolver: Resolver, domain: str, hosts: list[str],
                       deadline: float) -> MailDomain:
    answers: list[Answer[str]] = []

    async def resolve(host: str) -> None:
        answers.extend(await _families(resolver, host, deadline))

    async with trio.open_nursery() as nursery:
        for host in hosts:
            nursery.start_soon(resolve, host)
    addresses = sorted({a for answer in answers for a in answer.records})
    if any(_global(a) for a in addresses):
        return MailDomain(domain, "resolves")
    failed = [a for a in answers if a.unknown]
    if failed:
        return MailDomain(domain, "unknown", f"address lookup {failed[0].status.value}")
    if addresses:
        return MailDomain(domain, "baddom",
                          "mail hosts only at non-global addresses: " + ", ".join(addresses))
    return MailDomain(domain, "baddom", "no address for " + ", ".join(hosts))


def _normal(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _global(text: str) -> bool:
    """Somewhere mail could go: not loopback, RFC 1918, link-local, ULA, multicast,
    documentation or other special-purpose space."""
    address = _normal(text)
    return address.is_global and not address.is_multicast
