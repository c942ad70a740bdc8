"""Rule address and host patterns match the canonical form: equivalent spellings of an
address (case, quoting, quoted-pairs, A-label or U-label) always match alike, and the
patterns mean what sinksmtp's mean."""

from __future__ import annotations

import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_smtpd._address import parse_forward_path
from trio_smtpd.sinkhole.addresses import address_patterns, canonical_domain, host_pattern

_ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
_LETTERS = "abcdefghijklmnopqrstuvwxyzüßéäöñçø例"

atoms = st.text(_ATEXT + "üßé", min_size=1, max_size=6)
local_parts = st.lists(atoms, min_size=1, max_size=3).map(".".join)
labels = st.text(_LETTERS + "0123456789", min_size=1, max_size=8)
domains = st.lists(labels, min_size=1, max_size=3).map(".".join)


@st.composite
def spellings(draw: st.DrawFn, local: str, domain: str) -> str:
    """One way of writing ``local@domain`` that means the same address."""
    def recase(text: str) -> str:
        flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
        return "".join(c.upper() if flip else c.lower() for c, flip in zip(text, flips,
                                                                           strict=True))

    written = recase(local) if draw(st.booleans()) else local
    if draw(st.booleans()):  # a quoted string, some characters as quoted-pairs
        pairs = draw(st.lists(st.booleans(), min_size=len(written), max_size=len(written)))
        written = '"' + "".join("\\" + c if pair and c.isascii() else c for c, pair in
                                zip(written, pairs, strict=True)) + '"'
    parts = []
    for label in domain.split("."):
        if not label.isascii() and draw(st.booleans()):
            label = "xn--" + unicodedata.normalize("NFC", label.lower()).encode(
                "punycode").decode("ascii")
        parts.append(recase(label) if draw(st.booleans()) else label)
    return f"{written}@{'.'.join(parts)}"


def as_the_engine_hands_it(spelling: str) -> str:
    """The address as rules see it: ``str()`` of what the real parser made of it."""
    address, _ = parse_forward_path(f"<{spelling}>", utf8=True)
    return str(address)


@settings(max_examples=300, deadline=None)
@given(st.data(), local_parts, domains, local_parts, domains)
def test_equivalent_spellings_always_match_alike(data: st.DataObject, local: str,
                                                 domain: str, other_local: str,
                                                 other_domain: str) -> None:
    first = as_the_engine_hands_it(data.draw(spellings(local, domain)))
    second = as_the_engine_hands_it(data.draw(spellings(local, domain)))
    parent = domain.split(".", 1)[-1]
    patterns = [f"{local}@{domain}", f"{local}@", f"@{domain}", f"@.{domain}", f"@.{parent}",
                "@", f"{other_local}@{other_domain}", f"{other_local}@", f"@{other_domain}",
                f"@.{other_domain}", "<>"]
    for pattern in patterns:
        for written in (pattern, data.draw(spellings(*pattern.rsplit("@", 1)))
                        if "@" in pattern and pattern[0] != "@" and pattern[-1] != "@"
                        else pattern):
            matches = address_patterns([written])
            assert matches(first) == matches(second), (written, first, second)
    # And the patterns of the address itself do match it, however it is written.
    for pattern in patterns[:6]:
        assert address_patterns([pattern])(first), (pattern, first)


def test_sinksmtp_pattern_semantics() -> None:
    cases = {
        "<>": {"": True, "a@b.example": False},
        "@": {"a@b.example": True, "": False, "postmaster": False},
        "trap@": {"trap@x.example": True, '"trap"@x.example': True,
                  '"tr\\ap"@x.example': True, "TRAP@X.EXAMPLE": True, "trapx@x.example": False},
        "@.example.org": {"a@example.org": True, "a@b.example.org": True,
                          "a@badexample.org": False, "a@org": False},
        "@example.org": {"a@example.org": True, "a@b.example.org": False},
        "ceo@example.com": {'"ceo"@example.com': True, '"ceo "@example.com': False,
                            "ceo@example.com.evil": False},
        "@xn--bcher-kva.example": {"a@bücher.example": True, "a@BÜCHER.example": True},
        "@bücher.example": {"a@xn--bcher-kva.example": True, "a@b\u00fccher.example": True},
        "postmaster@": {"Postmaster": True, "postmaster@x.example": True},
        "user@.example.net": {"user@a.example.net": True, "other@a.example.net": False},
    }
    for pattern, addresses in cases.items():
        matches = address_patterns([pattern])
        for address, expected in addresses.items():
            assert matches(address) is expected, (pattern, address)


def test_host_patterns_compare_one_idn_form() -> None:
    matches = host_pattern([".dyn.example", "*.pool.example.net", "mail.bücher.example",
                            "xn--mnchen-3ya.example"])
    for name in ("dyn.example", "a.b.DYN.example.", "x.pool.example.net",
                 "mail.xn--bcher-kva.example", "München.example"):
        assert matches(name), name
    for name in ("notdyn.example", "pool.example.net", "bücher.example"):
        assert not matches(name), name
    assert canonical_domain("BÜCHER\u3002Example.") == "bücher.example"
