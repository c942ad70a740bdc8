"""Who sent this message? SPF (RFC 7208), DKIM (RFC 6376), ARC (RFC 8617) and DMARC
(RFC 7489) checks for trio programs, and the ``Authentication-Results`` header field
(RFC 8601) that reports them.

Each check is an async function that looks everything up through a
:class:`trio_smtpd.dns.Resolver` (so: no blocking DNS on the event loop, a deadline on
every check, a DNS failure is ``temperror`` rather than an exception)::

    from trio_smtpd import verify
    from trio_smtpd.dns import Resolver

    resolver = Resolver()
    spf = await verify.check_spf(resolver, "192.0.2.1", "a@example.org", "mx.example.org")
    reader = verify.MessageReader()         # or pass the message's bytes to each check
    async for chunk in session.body():
        reader.feed(chunk)                  # bounded memory, whatever the size
    reader.close()
    dkim = await verify.check_dkim(resolver, reader)
    arc = await verify.check_arc(resolver, reader)
    dmarc = await verify.check_dmarc(resolver, reader, spf=spf, dkim=dkim)
    header = verify.authentication_results("mx.example.org",
                                           verify.Results(spf, dkim, arc, dmarc))

The libraries underneath: pyspf (RFC 7208's reference implementation) evaluates SPF and
dkimpy verifies DKIM signatures and ARC chains; DMARC is evaluated here, with the
Public Suffix List of ``publicsuffixlist``. How each is fed from the resolver is told in
its module.
"""

from __future__ import annotations

from collections.abc import Collection

import trio

from ..dns import Resolver
from ._dkim import check_arc, check_dkim, fetch_keys, key_name
from ._dmarc import check_dmarc, dmarc_names, organizational_domain
from ._header import AuthenticationResultsFilter, authentication_results, authserv_id_of
from ._message import MAX_HEADER, MessageReader
from ._results import ARCResult, DKIMResult, DMARCResult, Results, SPFResult
from ._spf import check_spf

__all__ = [
    "KINDS",
    "MAX_HEADER",
    "ARCResult",
    "AuthenticationResultsFilter",
    "DKIMResult",
    "DMARCResult",
    "MessageReader",
    "Results",
    "SPFResult",
    "authentication_results",
    "authserv_id_of",
    "check_arc",
    "check_dkim",
    "check_dmarc",
    "check_message",
    "check_spf",
    "organizational_domain",
    "prefetch",
]

#: The checks, by the names the sinkhole's options and rules use.
KINDS = ("spf", "dkim", "arc", "dmarc")


async def prefetch(resolver: Resolver, reader: MessageReader, *, deadline: float,
                   kinds: Collection[str] = KINDS) -> None:
    """Look up now what the checks of this message will ask for (DKIM and ARC keys,
    DMARC records), once its header section is known: the body can arrive meanwhile,
    and the checks then find the answers in the resolver's cache."""
    names = []
    if "dkim" in kinds or "dmarc" in kinds:
        names += [key_name(s.text(b"s"), s.text(b"d")) for s in reader.signatures if s.tags]
    if "arc" in kinds:
        names += [key_name(s.text(b"s"), s.text(b"d")) for s in reader.arc_signatures
                  if s.tags]
    if "dmarc" in kinds:
        names += dmarc_names(reader)
    if names:
        await fetch_keys(resolver, names, deadline)


async def check_message(resolver: Resolver, message: bytes | MessageReader, *,
                        spf: SPFResult | None, kinds: Collection[str] = KINDS,
                        deadline: float | None = None) -> Results:
    """DKIM, ARC and DMARC (those of ``kinds``) for a whole message, concurrently
    where they can be; ``spf`` is the result of :func:`check_spf` for its envelope
    (DMARC uses it)."""
    reader = MessageReader.of(message)
    found: dict[str, object] = {}

    async def run_arc() -> None:
        found["arc"] = await check_arc(resolver, reader, deadline=deadline)

    async with trio.open_nursery() as nursery:
        if "arc" in kinds:
            nursery.start_soon(run_arc)
        dkim = None
        if "dkim" in kinds or "dmarc" in kinds:
            dkim = await check_dkim(resolver, reader, deadline=deadline)
        dmarc = None
        if "dmarc" in kinds:
            dmarc = await check_dmarc(resolver, reader, spf=spf, dkim=dkim or (),
                                      deadline=deadline)
    arc = found.get("arc")
    assert arc is None or isinstance(arc, ARCResult)
    return Results(spf if "spf" in kinds else None, dkim if "dkim" in kinds else None,
                   arc, dmarc)
