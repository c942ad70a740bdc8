"""Verifying each message the sinkhole receives (``trio_smtpd.verify``): SPF from MAIL
on, DKIM, ARC and DMARC once the body is in; the results for the rules, the
``Authentication-Results`` header, the ``message`` log line and the metadata sidecar.

* **SPF** is a DNS fact of the session (``dnsfacts.spf_key``), started when MAIL
  arrives, in the session's nursery: a ``spf`` rule at MAIL waits for it, nothing else
  does until the message has ended.
* **DKIM, ARC, DMARC** need the message. Its header section is read as it streams past
  (kept up to 1 MiB), the body only hashed (bounded memory whatever its size). As soon
  as the header section is complete, the keys and DMARC records it names are looked up
  in the background, while the body is still arriving; the checks themselves run when
  it has, before the ``message`` rules are asked (``dkim``, ``arc``, ``dmarc`` matchers).
* **Time:** each check ends by ``--verify-timeout`` (10 s) after it started; a lookup
  that did not answer by then makes its check ``temperror``. A resolver that is down
  answers at once (``trio_smtpd.dns``), so a dead DNS costs no more than that.
* **What arrived claiming our name:** ``Authentication-Results`` fields of the message
  whose authserv-id is our host name are left out of the stored copy (RFC 8601 5); the
  SHA-256 in the metadata is still that of the message as received.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from ..dns import Resolver
from ..verify import (
    AuthenticationResultsFilter,
    MessageReader,
    Results,
    SPFResult,
    authentication_results,
    check_message,
    prefetch,
)
from .dnsfacts import spf_key
from .lookups import ClientLookups

__all__ = ["ARC_KEY", "DKIM_KEY", "DMARC_KEY", "MessageChecks", "VerifySettings",
           "start_spf"]

#: Where a message's results wait for the ``message`` rules (ClientLookups.values).
DKIM_KEY, ARC_KEY, DMARC_KEY = ("dkim",), ("arc",), ("dmarc",)
DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True)
class VerifySettings:
    """--verify / --no-verify / --verify-timeout."""

    kinds: frozenset[str]  # of trio_smtpd.verify.KINDS
    timeout: float = DEFAULT_TIMEOUT
    hostname: str = ""  # the authserv-id: our host name


def start_spf(settings: VerifySettings | None, lookups: ClientLookups, sender: str,
              helo: str | None) -> None:
    """At MAIL: start the SPF check of this sender (``""`` for ``<>``)."""
    if settings is not None and "spf" in settings.kinds and lookups.enabled:
        lookups.start(spf_key(sender, helo), trio.current_time() + settings.timeout)


class MessageChecks:
    """The checks of one message, fed its body as it streams."""

    def __init__(self, settings: VerifySettings, resolver: Resolver,
                 lookups: ClientLookups, sender: str, helo: str | None) -> None:
        self.settings = settings
        self.results = Results()
        self._resolver = resolver
        self._lookups = lookups
        self._spf_key = spf_key(sender, helo)
        self._reader = MessageReader()
        self._filter = AuthenticationResultsFilter(settings.hostname)
        self._prefetched = False

    def feed(self, chunk: bytes) -> bytes:
        """Read a chunk; return what of it to store (forged results left out)."""
        self._reader.feed(chunk)
        if not self._prefetched and (self._reader.header_complete
                                     or self._reader.too_large):
            self._prefetched = True
            deadline = trio.current_time() + self.settings.timeout
            self._lookups.spawn(partial(prefetch, self._resolver, self._reader,
                                        deadline=deadline, kinds=self.settings.kinds))
        return self._filter.feed(chunk)

    def close(self) -> bytes:
        """The body has ended: what is left to store."""
        self._reader.close()
        return self._filter.close()

    async def finish(self) -> Results:
        """Run the checks (SPF's result joins them); the rules see them from now."""
        self._reader.close()
        kinds = self.settings.kinds
        spf: SPFResult | None = None
        if "spf" in kinds:
            await self._lookups.wait([self._spf_key])
            found = self._lookups.values.get(self._spf_key)
            spf = found if isinstance(found, SPFResult) else None
        deadline = trio.current_time() + self.settings.timeout
        self.results = await check_message(self._resolver, self._reader, spf=spf,
                                           kinds=kinds, deadline=deadline)
        values = self._lookups.values
        values[DKIM_KEY] = self.results.dkim
        values[ARC_KEY] = self.results.arc
        values[DMARC_KEY] = self.results.dmarc
        return self.results

    def header(self) -> str:
        return authentication_results(self.settings.hostname, self.results)

    def summary(self) -> dict[str, Any]:
        """For the metadata sidecar: every result with its domain, selector, reason."""
        return {**self.results.as_dict(), "removed_headers": self._filter.removed}

    def log_fields(self) -> dict[str, Any]:
        """For the ``message`` log line: each result in a word or two."""
        results = self.results
        return {
            "spf": results.spf and results.spf.result,
            "dkim": None if results.dkim is None else [
                f"{d.result} {d.domain}".strip() for d in results.dkim] or "none",
            "arc": results.arc and results.arc.result,
            "dmarc": results.dmarc and " ".join(
                filter(None, [results.dmarc.result, results.dmarc.domain,
                              results.dmarc.policy and f"p={results.dmarc.policy}"])),
        }
