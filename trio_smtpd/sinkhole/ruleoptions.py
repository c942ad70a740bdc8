"""What sinksmtp's rules have beyond a match and an action.

* **Rules without a phase** (sinksmtp's default): such a rule is asked in every phase
  from the first one in which all its facts exist, and decides in whichever comes first
  where it matches. A rule about the sender starts at ``mail``, one about a recipient at
  ``rcpt``, one about the address or DNS of the client at ``connect``. As in sinksmtp,
  ``tls`` and ``authenticated`` count as known from ``mail`` only: a client says EHLO
  in plaintext before it starts TLS or authenticates. ``save-then-reject`` is always a
  ``message`` rule. An ``accept`` rule without a phase keeps accepting in every later
  phase (put such rules last, or give them a phase), as sinksmtp documents.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["earliest_phase"]

PHASES = ("connect", "helo", "mail", "rcpt", "data", "message")
# sinksmtp's minimum phases where they differ from when a fact first exists.
_WITHOUT_PHASE = {"tls": "mail", "authenticated": "mail"}
_DBL_SOURCES = {"host": "connect", "helo": "helo", "sender": "mail", "any": "mail"}


def earliest_phase(match: object, action: str, known_from: Mapping[str, str]) -> str:
    """The first phase in which a rule without one can be asked (see the docstring)."""
    if action == "save-then-reject":
        return "message"
    return PHASES[max(_ranks(match, known_from), default=0)]


def _ranks(spec: object, known_from: Mapping[str, str]) -> list[int]:
    if not isinstance(spec, dict):
        return []
    ranks: list[int] = []
    for key, value in spec.items():
        if key == "not":
            ranks += _ranks(value, known_from)
        elif key in ("any", "all") and isinstance(value, list):
            for item in value:
                ranks += _ranks(item, known_from)
        elif key == "dbl" and isinstance(value, dict):
            ranks += [PHASES.index(_DBL_SOURCES.get(s, "mail")) for s in value]
        else:
            fact = key.removesuffix("_file")
            phase = _WITHOUT_PHASE.get(fact) or known_from.get(fact, "connect")
            ranks.append(PHASES.index(phase))
    return ranks
