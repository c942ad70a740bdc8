"""Address and host name patterns, matched on the canonical form of what the client sent.

A rule must not be dodged by spelling an address differently. Before comparing, both
the address and the pattern are put in one form:

* the local part unquoted: ``"trap"`` and ``"tr\\ap"`` are ``trap``;
* every part case-folded, as sinksmtp lower-cases (Unicode case folding, after NFKC
  normalisation, so ``TRAP``, ``trap`` and the full-width ``trap`` are alike);
* the domain in one form whatever IDN form was sent: A-labels (``xn--bcher-kva``) are
  decoded to U-labels (``bücher``), the ideographic and full-width full stops count as
  dots (IDNA does that), and a final dot is dropped;
* in the domain, characters no name may hold are dropped: the engine refuses them in an
  address (``exa\u00admple.com``, which IDNA2003 maps to ``example.com``), but a HELO or
  DNS name is not checked, and must not dodge a rule for the name it is spelt like.

Patterns, as sinksmtp's: ``<>`` the null sender; ``user@domain``; ``user@`` that local
part at any domain (and the domain-less ``<Postmaster>`` for ``postmaster@``);
``@domain`` exactly that domain; ``@.domain`` that domain and every subdomain of it;
``@`` any address with a domain (not ``<>``). A local part may join a domain pattern:
``user@.domain``.

Host patterns (``helo``, ``host``, ``source``): ``name.example`` that name;
``.example`` that domain and every name under it; a pattern with ``*``, ``?`` or ``[`` a
glob (``*.dyn.example``), compared on the same canonical form.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
import unicodedata
from collections.abc import Callable

from .._unicode import first_not_in_name, not_in_name

__all__ = ["address_patterns", "canonical_address", "canonical_domain", "host_pattern"]

_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_DOTS = re.compile("[.\u3002\uff0e\uff61]")
_GLOB = re.compile(r"[*?\[]")


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def _label(label: str) -> str:
    if label[:4].lower() == "xn--":
        with contextlib.suppress(UnicodeError, ValueError):  # else compared as written
            label = label[4:].encode("ascii").decode("punycode")
    if first_not_in_name(label) is not None:
        label = "".join(c for c in label if not not_in_name(c))
    return _fold(label)


def canonical_domain(domain: str) -> str:
    """``domain`` in the one form compared (an address literal only lower-cased)."""
    if domain.startswith("["):
        return domain.lower()
    domain = _DOTS.sub(".", domain)
    if domain.endswith("."):
        domain = domain[:-1]
    return ".".join(_label(label) for label in domain.split("."))


def canonical_local(local: str) -> str:
    if len(local) >= 2 and local[0] == local[-1] == '"':
        local = _QUOTED_PAIR.sub(r"\1", local[1:-1])
    return _fold(local)


def canonical_address(address: str) -> tuple[str, str | None]:
    """(local part, domain) in canonical form; domain None for ``<Postmaster>``."""
    local, at, domain = address.rpartition("@")
    if not at:
        return canonical_local(address), None
    return canonical_local(local), canonical_domain(domain)


def _parents(domain: str) -> list[str]:
    """``a.b.c`` -> ``[".a.b.c", ".b.c", ".c"]``: the ``@.domain`` patterns it is under."""
    labels = domain.split(".")
    return ["." + ".".join(labels[i:]) for i in range(len(labels))]


class _Patterns:
    """Many patterns, tested with one canonicalisation and a few set lookups."""

    def __init__(self) -> None:
        self.null = self.any = False
        self.exact: set[tuple[str | None, str]] = set()  # (local or None, domain)
        self.under: set[tuple[str | None, str]] = set()  # (local or None, ".domain")
        self.local: set[str] = set()

    def add(self, pattern: str) -> None:
        if pattern == "<>":
            self.null = True
            return
        local, at, domain = pattern.rpartition("@")
        if not at:
            raise ValueError(f"address pattern {pattern!r} needs an '@' (or is '<>')")
        want = canonical_local(local) if local else None
        if not domain:
            if want is None:
                self.any = True
            else:
                self.local.add(want)
        elif domain.startswith("."):
            self.under.add((want, "." + canonical_domain(domain[1:])))
        else:
            self.exact.add((want, canonical_domain(domain)))

    def __call__(self, address: str) -> bool:
        if not address:
            return self.null
        local, domain = canonical_address(address)
        if local in self.local:
            return True
        if domain is None:  # <Postmaster>: only a local-part pattern matches it
            return False
        if self.any or (local, domain) in self.exact or (None, domain) in self.exact:
            return True
        return any((who, parent) in self.under for parent in _parents(domain)
                   for who in (local, None))


def address_patterns(patterns: list[str]) -> Callable[[str], bool]:
    """Compile address patterns into one test; raises ValueError for a bad one."""
    compiled = _Patterns()
    for pattern in patterns:
        compiled.add(pattern)
    return compiled


def host_pattern(patterns: list[str]) -> Callable[[str], bool]:
    """Compile host patterns (see the module docstring) into one test."""
    exact: set[str] = set()
    under: set[str] = set()
    globs: list[str] = []
    for pattern in patterns:
        if pattern.startswith("."):
            under.add("." + canonical_domain(pattern[1:]))
        elif _GLOB.search(pattern):
            globs.append(canonical_domain(pattern))
        else:
            exact.add(canonical_domain(pattern))

    def matches(name: str) -> bool:
        canonical = canonical_domain(name)
        if canonical in exact or not under.isdisjoint(_parents(canonical)):
            return True
        return any(fnmatch.fnmatchcase(canonical, glob) for glob in globs)

    return matches
