"""SPF (RFC 7208) with pyspf, fed from our resolver without blocking the event loop.

pyspf is the reference implementation (RFC 7208's limits: 10 DNS mechanisms, 2 void
lookups, 10 MX and PTR names, macros), and it is synchronous: it calls a module-level
``DNSLookup`` function and waits for its answer. Rather than give it a worker thread
that would block on the network, it is *replayed*: each run gets answers from the
resolver's cache and from those fetched so far; a name it needs that nobody has yet
stops the run, is looked up asynchronously through :class:`trio_smtpd.dns.Resolver`
(deadline, cache, no exception), and the evaluation runs again from the start. A run
costs well under a millisecond, answers repeat from the cache, and a policy that is
cached entirely (the sender seen before) is evaluated in one run. A DNS failure is
``temperror``, as RFC 7208 2.6.6 says; the whole check ends by its deadline.
"""

from __future__ import annotations

import contextvars
import ipaddress
from collections.abc import Callable
from typing import Any, Literal

import dns.rdata
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import spf
import trio

from ..dns import Answer, Resolver
from ._results import SPFResult

__all__ = ["check_spf"]

#: RFC 7208 4.6.4: at least 20 seconds for a whole check.
DEFAULT_TIMEOUT = 20.0
#: Evaluations per check; each one asks for at least one new name, and pyspf's own
#: limits keep a policy well under this.
MAX_RUNS = 100

_Key = tuple[str, str]
_Lookup = Callable[[str, str], list[tuple[_Key, Any]]]
_current: contextvars.ContextVar[_Lookup | None] = contextvars.ContextVar(
    "trio_smtpd_spf_lookup", default=None)
_original_lookup = spf.DNSLookup


def _dispatch(name: str, qtype: str, strict: object = True,
              timeout: object = None) -> list[tuple[_Key, Any]]:
    """pyspf's DNS hook: ours while a check of ours runs, else what pyspf had (other
    code in the process using pyspf is not affected)."""
    lookup = _current.get()
    if lookup is None:
        return _original_lookup(name, qtype, strict, timeout)  # type: ignore[no-any-return]
    return lookup(name, qtype)


spf.DNSLookup = _dispatch


class _Missing(Exception):
    """A name the current run needs and nobody has looked up yet."""


def _value(record: dns.rdata.Rdata) -> Any:
    """A record as pyspf's own dnspython glue gives it."""
    if isinstance(record, dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA):
        return str(record.address)
    if isinstance(record, dns.rdtypes.ANY.MX.MX):
        return record.preference, record.exchange.to_text(omit_final_dot=True)
    if isinstance(record, dns.rdtypes.ANY.PTR.PTR):
        return record.target.to_text(omit_final_dot=True)
    if isinstance(record, dns.rdtypes.ANY.TXT.TXT):
        return tuple(record.strings)
    return None


class _Replay:
    def __init__(self, resolver: Resolver, family: str) -> None:
        self.resolver = resolver
        self.family = family  # "A" or "AAAA": what MX hosts are looked up as
        self.answers: dict[_Key, Answer[dns.rdata.Rdata]] = {}
        self.missing: list[_Key] = []

    def lookup(self, name: str, qtype: str) -> list[tuple[_Key, Any]]:
        key = (name.lower().removesuffix("."), qtype.upper())
        answer = self.answers.get(key) or self.resolver.cached(*key)
        if answer is None:
            self.missing.append(key)  # (noted, in case pyspf swallows the exception)
            raise _Missing(key)
        if answer.unknown:
            raise spf.TempError(f"DNS {key[1]} {key[0]}: {answer.status.value}")
        values = (_value(r) for r in answer.records)
        return [((name, qtype), v) for v in values if v is not None]

    async def fetch(self, deadline: float) -> None:
        wanted = list(dict.fromkeys(self.missing))
        self.missing.clear()

        async def one(key: _Key, nursery: trio.Nursery) -> None:
            answer = self.answers[key] = await self.resolver.query(*key, deadline=deadline)
            if key[1] == "MX" and answer.ok:  # its hosts come next: ask for them now
                for record in answer.records[:10]:
                    host = _value(record)
                    if isinstance(host, tuple) and host[1] not in ("", "."):
                        nursery.start_soon(one, (host[1].lower(), self.family), nursery)

        async with trio.open_nursery() as nursery:
            for key in wanted:
                nursery.start_soon(one, key, nursery)


async def check_spf(resolver: Resolver, ip: str, sender: str, helo: str | None, *,
                    receiver: str | None = None,
                    deadline: float | None = None) -> SPFResult:
    """Is ``ip`` allowed to send mail from ``sender`` (the MAIL FROM address, ``""``
    for ``<>``, when ``helo`` is checked as ``postmaster@helo``)? ``receiver`` is our
    host name, for the ``%{r}`` macro; ``deadline`` in ``trio.current_time()`` terms
    (default: 20 s from now, RFC 7208 4.6.4)."""
    helo = (helo or "").strip()
    identity: Literal["mailfrom", "helo"] = "mailfrom" if sender else "helo"
    checked = sender or (f"postmaster@{helo}" if helo else "")
    domain = checked.rpartition("@")[2].lower()

    def result(outcome: str, reason: str = "") -> SPFResult:
        return SPFResult(outcome, identity, domain, checked, reason[:200])

    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return result("permerror", f"not an IP address: {ip!r}")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if not domain:
        return result("none", "no domain to check (null sender and no HELO name)")
    if deadline is None:
        deadline = trio.current_time() + DEFAULT_TIMEOUT
    replay = _Replay(resolver, "A" if address.version == 4 else "AAAA")
    for _run in range(MAX_RUNS):
        outcome = _evaluate(replay, str(address), sender, helo, receiver)
        if outcome is not None and not replay.missing:
            return result(*outcome)
        if trio.current_time() >= deadline:
            return result("temperror", "DNS lookups took longer than the deadline")
        await replay.fetch(deadline)
    return result("permerror", f"needed more than {MAX_RUNS} rounds of DNS lookups")


def _evaluate(replay: _Replay, ip: str, sender: str, helo: str,
              receiver: str | None) -> tuple[str, str] | None:
    """One run of pyspf: (result, reason), or None if it stopped for a missing name."""
    token = _current.set(replay.lookup)
    try:
        query = spf.query(i=ip, s=sender, h=helo, receiver=receiver or "unknown")
        outcome, _code, explanation = query.check()
    except _Missing:
        return None
    except (spf.AmbiguityWarning, ValueError, TypeError, AttributeError) as exc:
        # (pyspf on hostile input: a malformed name or address, say)
        return "permerror", f"{type(exc).__name__}: {exc}"
    finally:
        _current.reset(token)
    reason = "" if outcome == "pass" else str(explanation)
    return str(outcome), reason
