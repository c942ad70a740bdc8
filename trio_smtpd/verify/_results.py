"""The results of the checks, as plain values: what the header, the logs, the metadata
and the rules are made from."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["ARCResult", "DKIMResult", "DMARCResult", "Results", "SPFResult"]


@dataclass(frozen=True)
class SPFResult:
    """RFC 7208: ``pass``, ``fail``, ``softfail``, ``neutral``, ``none``, ``permerror``
    or ``temperror``, for the MAIL FROM identity (``postmaster@HELO`` for ``<>``)."""

    result: str
    identity: Literal["mailfrom", "helo"]
    domain: str  # the domain whose policy was evaluated
    sender: str  # the address checked
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Its fields, for JSON."""
        return asdict(self)


@dataclass(frozen=True)
class DKIMResult:
    """One DKIM-Signature (RFC 6376; results as RFC 8601 2.7.1 names them): ``pass``,
    ``fail`` (the signature or the body hash did not verify), ``permerror`` (unusable:
    malformed, expired, no key, a key that does not allow it), ``temperror`` (the key
    could not be looked up now) or ``neutral`` (not examined: over a limit)."""

    result: str
    domain: str  # d=
    selector: str  # s=
    identity: str = ""  # i=
    algorithm: str = ""  # a=
    signature: str = ""  # the start of b=, to tell signatures apart (RFC 6008)
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Its fields, for JSON."""
        return asdict(self)


@dataclass(frozen=True)
class ARCResult:
    """The ARC chain (RFC 8617): ``none``, ``pass``, ``fail``, or ``temperror`` when a
    key could not be looked up now."""

    result: str
    instances: int = 0  # ARC sets found (the newest is i=instances)
    domain: str = ""  # d= of the newest ARC-Message-Signature
    selector: str = ""
    seal_domain: str = ""  # d= of the newest ARC-Seal
    seal_selector: str = ""
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Its fields, for JSON."""
        return asdict(self)


@dataclass(frozen=True)
class DMARCResult:
    """RFC 7489: ``none`` (no policy, or no single author domain), ``pass``, ``fail``,
    ``temperror`` (a policy or an aligned check could not be looked up now) or
    ``permerror``."""

    result: str
    domain: str = ""  # the RFC 5322.From domain
    policy: str = ""  # the policy the domain asks for: p= (sp= for a subdomain)
    disposition: str = ""  # what that policy means for this message, after pct=
    record_domain: str = ""  # where the policy record was found
    spf_aligned: bool = False
    dkim_aligned: bool = False
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Its fields, for JSON."""
        return asdict(self)


@dataclass(frozen=True)
class Results:
    """Everything checked about one message; None for a check that was not made, an
    empty ``dkim`` for a message without signatures."""

    spf: SPFResult | None = None
    dkim: tuple[DKIMResult, ...] | None = None
    arc: ARCResult | None = None
    dmarc: DMARCResult | None = None

    def as_dict(self) -> dict[str, Any]:
        """For JSON: each check's fields, None for those not made."""
        return {"spf": self.spf and self.spf.as_dict(),
                "dkim": None if self.dkim is None else [x.as_dict() for x in self.dkim],
                "arc": self.arc and self.arc.as_dict(),
                "dmarc": self.dmarc and self.dmarc.as_dict()}
