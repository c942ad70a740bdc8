"""Rule address and host patterns match the canonical form: equivalent spellings of an
address (case, quoting, quoted-pairs, A-label or U-label) always match alike, and the
patterns mean what sinksmtp's mean."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import Sinkhole
from tests.test_address import invisible
from tests.wire import Wire
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


# Issue 16: a HELO or DNS name is not checked by the engine (an address is: see
# test_address.py), so the canonical form drops what IDNA2003 maps to nothing and every
# other character a domain name may not hold. ``EHLO exa\u00admple.com`` is the name
# ``example.com`` to IDNA2003 and no name at all to IDNA2008; it must not dodge a rule for
# ``example.com``.
@given(st.lists(labels, min_size=1, max_size=3), st.data())
def test_host_names_with_invisible_characters_compare_as_without(
        parts: list[str], data: st.DataObject) -> None:
    name = ".".join(parts)
    index = data.draw(st.integers(0, len(parts) - 1))
    label = parts[index]
    where = data.draw(st.integers(0, len(label)))
    chars = data.draw(st.lists(invisible, min_size=1, max_size=3))
    spelt = ".".join([*parts[:index], label[:where] + "".join(chars) + label[where:],
                      *parts[index + 1:]])
    assert canonical_domain(spelt) == canonical_domain(name)
    assert host_pattern([name])(spelt) and host_pattern([spelt])(name)
    assert host_pattern(["." + parts[-1]])(spelt)


BYPASS_RULES = """
[[rule]]
name = "protected"
phase = "rcpt"
action = "reject"
reply = "550 5.7.1 Protected"
[rule.match]
recipient = ["ceo@example.com", "@.spamtrap.example"]

[[rule]]
name = "impostor"
phase = "helo"
action = "reject"
reply = "550 5.7.1 You are not us"
[rule.match]
helo = ["mx.example.com"]
"""


def test_invisible_characters_do_not_dodge_rules_in_the_program(
        sinkhole_factory: Callable[..., Sinkhole], tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(BYPASS_RULES)
    sinkhole = sinkhole_factory("--rules", str(path))
    with Wire(sinkhole.port) as wire:
        assert wire.command("EHLO mx.exa\u00admple.com").startswith(b"550 5.7.1 You are not")
    with Wire(sinkhole.port) as wire:
        assert wire.command("EHLO client.test").startswith(b"250")
        assert wire.command("MAIL FROM:<a@exa\u200bmple.com> SMTPUTF8").startswith(
            b"501 5.1.7 Syntax error in sender address: domain label contains U+200B")
        assert wire.command("MAIL FROM:<a@client.test> SMTPUTF8").startswith(b"250")
        for rcpt in ("ceo@exa\u00admple.com", "ceo@exa\u200bmple.com",
                     "ceo@example\u2060.com", "x@spam\u00adtrap.example",
                     "x@a.spam\u200ctrap.example", "x@spamtrap\ufe0f.example"):
            reply = wire.command(f"RCPT TO:<{rcpt}>")
            assert reply.startswith(b"501 5.1.3 Syntax error in recipient address: domain "
                                    b"label contains U+"), (rcpt, reply)
        for rcpt in ("ceo@example.com", "CEO@EXAMPLE.COM", "x@a.spamtrap.example",
                     "x@spamtrap.example"):
            assert wire.command(f"RCPT TO:<{rcpt}>").startswith(b"550 5.7.1 Protected"), rcpt
        for rcpt in ("ceo@bücher.example", "x@例え.テスト", "x@xn--bcher-kva.example"):
            assert wire.command(f"RCPT TO:<{rcpt}>").startswith(b"250"), rcpt
    sinkhole.wait_for("policy", 5)  # log lines are written in batches
    assert [e["rule"] for e in sinkhole.events("policy")] == ["impostor"] + ["protected"] * 4
