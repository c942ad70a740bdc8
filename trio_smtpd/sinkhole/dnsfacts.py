"""What the DNS says about a client, as plain values the rules read (no I/O here).

Each fact has a key (what was looked up) and a value:

* ``RDNS`` -> :class:`ReverseDNS`: the client address's PTR names, each checked by a
  forward lookup (FCrDNS), classified as sinksmtp does (``rdns.go``, ``dnsGetter``).
* ``dnsbl_key(zone)`` -> :class:`Listing` of the client address in a DNS blocklist.
* ``dbl_key(name, zone)`` -> :class:`Listing` of a host or domain name in a domain list.
* ``domain_key(domain)`` -> :class:`MailDomain`: can the domain receive mail
  (sinksmtp's ``ValidDomain``)?
* ``spf_key(sender, helo)`` -> :class:`trio_smtpd.verify.SPFResult` for the client.

A lookup that timed out or failed temporarily still gives a value, one that says
"unknown" (see :func:`unknown_fact`), so a rule can tell "no" from "could not say".
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal

from .._unicode import first_not_in_name
from ..verify import SPFResult
from .logic import UNKNOWN, Key, Unknown

__all__ = ["DNS_CLASSES", "RDNS", "Key", "Listing", "MailDomain", "ReverseDNS", "Wants",
           "dbl_key", "dbl_name", "dnsbl_key", "domain_key", "lookup_domain", "spf_key",
           "unknown_fact"]

RDNS: Key = ("rdns",)

#: sinksmtp's ``dns`` classes, and ``unknown`` (the lookups failed temporarily).
DNS_CLASSES = ("nodns", "noforward", "inconsistent", "exists", "good", "unknown")

# RFC 5321's sub-domain (letters, digits, inner hyphens), or RFC 6531's U-labels.
_ALNUM = "a-z0-9\u0080-\U0010ffff"
_LABEL = rf"[{_ALNUM}](?:[{_ALNUM}-]{{0,61}}[{_ALNUM}])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.IGNORECASE)


def dnsbl_key(zone: str) -> Key:
    return ("dnsbl", zone)


def dbl_key(name: str, zone: str) -> Key:
    return ("dbl", name, zone)


def domain_key(domain: str) -> Key:
    return ("domain", domain)


def spf_key(sender: str, helo: str | None) -> Key:
    """The SPF check of the client for a MAIL FROM (``""``: ``<>``) after a HELO."""
    return ("spf", sender, helo or "")


def dbl_name(name: str | None) -> str | None:
    """The name as a domain list would be asked about it, or None if it is not a host
    name (an address literal, a bare IP address, a bogus HELO)."""
    if not name:
        return None
    name = name.lower().removesuffix(".")
    if len(name) > 253 or not _HOSTNAME.fullmatch(name):
        return None
    if any(first_not_in_name(label) is not None for label in name.split(".")):
        return None  # invisible or format characters: no host name (issue 16)
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name
    return None


def lookup_domain(address: str | None) -> str | None:
    """The domain of a mail address whose DNS can be asked (None for ``<>`` or a
    domain that is an address literal)."""
    if not address:
        return None
    return dbl_name(address.rpartition("@")[2])


@dataclass(frozen=True)
class ReverseDNS:
    """The PTR names of the client address and what their forward lookups said."""

    names: tuple[str, ...] = ()  # every PTR name (at most a bounded number)
    verified: tuple[str, ...] = ()  # forward lookup includes the client address
    nofwd: tuple[str, ...] = ()  # the name has no address at all
    inconsistent: tuple[str, ...] = ()  # the name's addresses exclude the client's
    unresolved: tuple[str, ...] = ()  # the forward lookup failed temporarily
    failed: str | None = None  # the PTR lookup itself failed: why

    @property
    def confirmed(self) -> str | None:
        """The forward-confirmed name (the first, sorted), for trace headers."""
        return self.verified[0] if self.verified else None

    def has(self, cls: str) -> bool | Unknown:
        """Whether a ``dns`` class holds (sinksmtp's semantics, three-valued)."""
        if self.failed is not None:
            return True if cls == "unknown" else UNKNOWN
        maybe = bool(self.unresolved)  # those names could still be anything
        if cls == "unknown":
            return maybe
        if cls in ("exists", "nodns"):
            exists: bool | Unknown = True if self.verified else (UNKNOWN if maybe else False)
            return exists if cls == "exists" or isinstance(exists, Unknown) else not exists
        if cls in ("noforward", "inconsistent"):
            bad = self.nofwd if cls == "noforward" else self.inconsistent
            return True if bad else (UNKNOWN if maybe else False)
        if cls == "good":  # verified, and not one bad name
            if self.nofwd or self.inconsistent:
                return False
            return UNKNOWN if maybe else bool(self.verified)
        raise ValueError(f"unknown dns class {cls!r}")

    @property
    def verdict(self) -> str:
        """One word for logs: good, exists (verified, with bad names too), noforward,
        inconsistent, nodns (no PTR name) or unknown."""
        if self.failed is not None:
            return "unknown"
        if not self.names:
            return "nodns"
        if self.verified:
            return "good" if self.has("good") is True else "exists"
        if self.unresolved:
            return "unknown"
        return "noforward" if self.nofwd else "inconsistent"


@dataclass(frozen=True)
class Listing:
    """One DNSBL or DBL lookup: is ``subject`` listed in ``zone``, and why."""

    kind: Literal["dnsbl", "dbl"]
    zone: str
    subject: str  # the client address, or the name looked up
    listed: bool | None  # None: the list could not be asked
    codes: tuple[str, ...] = ()  # the 127.x.y.z answers
    reason: str | None = None  # the TXT record, if any
    detail: str = ""  # why it is unknown

    def truth(self) -> bool | Unknown:
        return UNKNOWN if self.listed is None else self.listed

    def describe(self) -> str:
        reason = f": {self.reason}" if self.reason else ""
        return f"{self.zone} {self.subject} {','.join(self.codes)}{reason}"


@dataclass(frozen=True)
class MailDomain:
    """Whether a domain can receive mail: ``resolves``, ``baddom`` or ``unknown``."""

    domain: str
    verdict: Literal["resolves", "baddom", "unknown"]
    why: str = ""

    def has(self, attribute: str) -> bool | Unknown:
        if self.verdict == "unknown":
            return True if attribute == "unknown" else UNKNOWN
        return self.verdict == attribute


@dataclass(frozen=True)
class Wants:
    """Which DNS facts a rule set may use, so that they can be looked up early."""

    dnsbl: frozenset[str] = field(default_factory=frozenset)
    dbl_host: frozenset[str] = field(default_factory=frozenset)
    dbl_helo: frozenset[str] = field(default_factory=frozenset)
    dbl_sender: frozenset[str] = field(default_factory=frozenset)
    rdns: bool = False
    sender_domain: bool = False
    recipient_domain: bool = False

    def __or__(self, other: Wants) -> Wants:
        return Wants(self.dnsbl | other.dnsbl, self.dbl_host | other.dbl_host,
                     self.dbl_helo | other.dbl_helo, self.dbl_sender | other.dbl_sender,
                     self.rdns or other.rdns, self.sender_domain or other.sender_domain,
                     self.recipient_domain or other.recipient_domain)

    def __bool__(self) -> bool:
        return self != Wants()


def unknown_fact(key: Key, client: str | None, why: str) -> object:
    """The value of a fact whose lookup did not finish (timeout, cancelled, DNS off)."""
    kind = key[0]
    if kind == "rdns":
        return ReverseDNS(failed=why)
    if kind == "dnsbl":
        return Listing("dnsbl", key[1], client or "", None, detail=why)
    if kind == "dbl":
        return Listing("dbl", key[2], key[1], None, detail=why)
    if kind == "domain":
        return MailDomain(key[1], "unknown", why)
    if kind == "spf":
        sender = key[1] or (f"postmaster@{key[2]}" if key[2] else "")
        return SPFResult("temperror", "mailfrom" if key[1] else "helo",
                         sender.rpartition("@")[2].lower(), sender, why)
    raise ValueError(f"unknown fact {key!r}")
