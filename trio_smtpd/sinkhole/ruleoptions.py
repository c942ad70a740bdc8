"""What sinksmtp's rules have beyond a match and an action.

* **Rules without a phase** (sinksmtp's default): such a rule is asked in every phase
  from the first one in which all its facts exist, and decides in whichever comes first
  where it matches. A rule about the sender starts at ``mail``, one about a recipient at
  ``rcpt``, one about the address or DNS of the client at ``connect``. As in sinksmtp,
  ``tls`` and ``authenticated`` count as known from ``mail`` only: a client says EHLO
  in plaintext before it starts TLS or authenticates. ``save-then-reject`` is always a
  ``message`` rule. An ``accept`` rule without a phase keeps accepting in every later
  phase (put such rules last, or give them a phase), as sinksmtp documents.
* ``note = "text"`` (sinksmtp's ``with note``): a ``note`` log line each time the rule
  matches, whatever its action.
* ``savedir = "dir"`` (``with savedir``): messages of this session from then on are
  stored in that Maildir (relative to the rules file), even with ``--discard``. Parsing
  creates nothing (``--check`` and the check before ``--user`` drops root read the
  rules too): the serving process creates it when it puts the rules to use, as the user
  it serves as (``configure.load_rules_option``).
* ``make_yakker = true`` (``with make-yakker``): when the session ends, its client
  counts as a do-nothing client at once (see :mod:`.yakkers`; needs ``--dncount``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..maildir import Maildir

__all__ = ["OPTION_KEYS", "RuleOptions", "earliest_phase", "parse_options"]

OPTION_KEYS = frozenset({"note", "savedir", "make_yakker"})
PHASES = ("connect", "helo", "mail", "rcpt", "data", "message")
# sinksmtp's minimum phases where they differ from when a fact first exists.
_WITHOUT_PHASE = {"tls": "mail", "authenticated": "mail"}
_DBL_SOURCES = {"host": "connect", "helo": "helo", "sender": "mail", "any": "mail"}


@dataclass(frozen=True)
class RuleOptions:
    note: str | None = None
    #: Where this session's messages go from the moment the rule matched.
    savedir: Maildir | None = None
    make_yakker: bool = False


def parse_options(entry: Mapping[str, Any], base: Path) -> RuleOptions | None:
    """The rule's options, checked; None if it has none. Raises ValueError."""
    note, savedir, yakker = entry.get("note"), entry.get("savedir"), entry.get("make_yakker",
                                                                              False)
    if note is not None and (not isinstance(note, str) or not note.isprintable()):
        raise ValueError("note must be one line of printable text")
    if not isinstance(yakker, bool):
        raise ValueError("make_yakker must be true or false")
    maildir = None
    if savedir is not None:
        if not isinstance(savedir, str) or not savedir:
            raise ValueError("savedir takes a directory name")
        maildir = Maildir(base / savedir)
    if note is None and maildir is None and not yakker:
        return None
    return RuleOptions(note, maildir, yakker)


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
