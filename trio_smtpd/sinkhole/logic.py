"""The truth values of rule matchers once DNS is involved: four, not two.

``True`` and ``False`` as before; ``UNKNOWN`` when the DNS could not say (a lookup
timed out or failed temporarily); ``Pending(keys)`` when the facts a matcher needs are
still being looked up, naming them so that the caller can wait for exactly those and
ask again. Combinators follow Kleene's logic, with Pending ranked above UNKNOWN because
waiting may still turn it into False (or True):

* ``all_of``: False if any is False; else Pending if any is; else UNKNOWN if any is;
  else True.
* ``any_of``: the mirror image, with True.
* ``negate``: swaps True and False, keeps UNKNOWN and Pending.

So a rule whose other matchers already fail never waits for DNS, and evaluation stays
synchronous and pure: waiting is the caller's business.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

__all__ = ["UNKNOWN", "Key", "Pending", "Truth", "Unknown", "all_of", "any_of", "negate"]

#: Names one fact that may still be looked up, e.g. ``("dnsbl", "zen.example")``.
Key = tuple[str, ...]


class Unknown:
    """The DNS could not say."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNKNOWN"

    def __bool__(self) -> bool:
        raise TypeError("UNKNOWN is neither true nor false: combine it with all_of/any_of")


UNKNOWN: Final = Unknown()


@dataclass(frozen=True)
class Pending:
    """These facts are not known yet."""

    keys: frozenset[Key]


Truth = bool | Unknown | Pending


def all_of(values: Iterable[Truth]) -> Truth:
    """Kleene's AND; stops at the first False (the rest are not evaluated)."""
    return _combine(values, decisive=False)


def any_of(values: Iterable[Truth]) -> Truth:
    """Kleene's OR; stops at the first True."""
    return _combine(values, decisive=True)


def _combine(values: Iterable[Truth], decisive: bool) -> Truth:
    """AND (``decisive`` False) or OR (True): the first ``decisive`` value settles it;
    otherwise anything pending makes the whole pending, then anything unknown unknown."""
    pending: set[Key] = set()
    unknown = False
    for value in values:
        if value is decisive:
            return decisive
        if isinstance(value, Pending):
            pending |= value.keys
        elif isinstance(value, Unknown):
            unknown = True
    if pending:
        return Pending(frozenset(pending))
    return UNKNOWN if unknown else not decisive


def negate(value: Truth) -> Truth:
    if isinstance(value, bool):
        return not value
    return value
