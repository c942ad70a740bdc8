"""Sinkhole policy rules, read from TOML (``--rules FILE``) with the standard library.

An ordered list of rules; for each protocol phase, the first rule of that phase whose
matchers all hold decides; no matching rule means accept. ::

    [[rule]]
    name = "traps"                   # optional; shown in logs
    phase = "rcpt"                   # connect | helo | mail | rcpt | data | message;
                                     # none: every phase from the first that has its facts
    action = "reject"                # accept | reject | tempfail | save-then-reject
    reply = "550 5.1.1 No such user" # optional; code, optional enhanced code, text
    delay = 5.0                      # optional tarpit seconds for this client from now on
    note = "text"                    # optional: note, savedir, make_yakker (.ruleoptions)
    [rule.match]                     # every matcher listed must hold
    sender = ["<>", "user@example.org", "user@", "@example.org", "@.example.org"]
    recipient = ["trap@"]
    sender_file = "senders.txt"      # patterns one per line (relative to the rules file)
    recipient_file = "traps.txt"
    helo = ["*.dynamic.example", ".example.net"]   # host patterns (.addresses)
    helo_file = "helos.txt"          # also ip_file, host_file, source_file
    ip = ["192.0.2.0/24", "2001:db8::/32"]
    tls = true
    authenticated = false
    not = { ip = ["127.0.0.0/8"] }   # combinators nest: not = {...}, any = [{...}, ...],
    any = [ { helo = ["a"] }, { helo = ["b"] } ]        # all = [{...}, ...]

DNS and HELO matchers (``host``, ``dns``, ``dnsbl``, ``dbl``, ``helo_has``,
``sender_has``, ``recipient_has``, ``source``) are in :mod:`.dnsrules`, those over
authentication results (``spf``, ``dkim``, ``arc``, ``dmarc``, ``dmarc_policy``) in
:mod:`.authrules`. A DNS lookup
that fails makes its matcher UNKNOWN; a rule's ``unknown`` key says what then:
``"tempfail"`` (the default: answer 451 4.4.3, never accept on a guess), ``"match"``
(act as if it matched) or ``"nomatch"`` (go on to the next rule).

Address patterns (sinksmtp's, compared on a canonical form: :mod:`.addresses`): ``<>``
the null sender; ``user@domain``; ``user@`` that local part at any domain; ``@domain``
exactly that domain; ``@.domain`` that domain and its subdomains; ``@`` any address.
Several files and ``include``: :mod:`.rulefiles`. A matcher must be known in its rule's
phase: ``helo`` from helo on, ``sender`` from mail, ``recipient`` from rcpt (at data and
message it holds if any recipient matches). ``save-then-reject`` is for the message phase
only. Rules without a phase, ``note``, ``savedir``, ``make_yakker``: :mod:`.ruleoptions`.

A file without any rule is refused, at start and on reload, unless it says so with
``rule = []`` (or includes others): an empty file is more often a mistake (a truncated
write, a wrong path) than a policy.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .._networks import Network, address_in
from .._replies import Reply, ReplyTextError
from ..maildir import Maildir
from .addresses import address_patterns, host_pattern
from .authrules import AUTH_KNOWN_FROM, AUTH_MATCHERS, auth_matcher, kinds_of
from .dnsfacts import Wants
from .dnsrules import DNS_MATCHERS, KNOWN_FROM, dns_matcher, wants_of
from .logic import Key, Pending, Truth, Unknown, all_of, any_of, negate
from .rulefiles import RulesError, rule_entries
from .ruleoptions import OPTION_KEYS, RuleOptions, earliest_phase, parse_options

__all__ = ["Facts", "Pending", "RuleSet", "RulesError", "Verdict", "load_rules"]

Phase = Literal["connect", "helo", "mail", "rcpt", "data", "message"]
Action = Literal["accept", "reject", "tempfail", "save-then-reject"]
PHASES: tuple[Phase, ...] = ("connect", "helo", "mail", "rcpt", "data", "message")
_RANK = {phase: rank for rank, phase in enumerate(PHASES)}
_PHASE_NAMED: dict[str, Phase] = {phase: phase for phase in PHASES}
ACTIONS: tuple[Action, ...] = ("accept", "reject", "tempfail", "save-then-reject")
# The first phase in which each fact is known.
_KNOWN_FROM = {"ip": "connect", "tls": "connect", "authenticated": "connect",
               "helo": "helo", "sender": "mail", "recipient": "rcpt", **KNOWN_FROM,
               **AUTH_KNOWN_FROM}
_DEFAULT_REPLIES = {"reject": Reply(550, "Rejected by policy", "5.7.1"),
                    "tempfail": Reply(451, "Try again later", "4.7.1"),
                    "save-then-reject": Reply(554, "Message rejected", "5.7.1")}
#: A rule that cannot tell because the DNS did not answer (its ``unknown`` default).
DNS_TEMPFAIL = Reply(451, "Temporary DNS failure; try again later", "4.4.3")
_UNKNOWN = ("tempfail", "match", "nomatch")
_REPLY = re.compile(r"([2-5][0-9][0-9])(?: ([245]\.[0-9]{1,3}\.[0-9]{1,3}))?(?: (.*))?")
_RULE_KEYS = {"name", "phase", "action", "reply", "delay", "match", "unknown", *OPTION_KEYS}


@dataclass(frozen=True)
class Facts:
    """What is known about the client and the transaction when a rule is asked."""

    ip: str | None = None
    tls: bool = False
    authenticated: bool = False
    helo: str | None = None
    sender: str | None = None  # "" for the null sender <>
    recipient: str | None = None  # the one being decided at rcpt
    recipients: tuple[str, ...] = ()
    helo_verb: str | None = None  # HELO, EHLO or LHLO
    local_ip: str | None = None  # the address the client connected to
    #: DNS facts found so far (``lookups.ClientLookups.values``); a missing one is Pending.
    dns: Mapping[Key, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    action: Action
    reply: Reply | None  # None: the action's default
    delay: float
    rule: str  # the rule's name, or "rule N"
    unknown: bool = False  # decided by the rule's ``unknown`` setting: DNS did not answer
    options: RuleOptions | None = None  # note, savedir, make_yakker


Matcher = Callable[[Facts, Phase], Truth]


@dataclass(frozen=True)
class _Rule:
    label: str
    phase: Phase
    action: Action
    reply: Reply | None
    delay: float
    matches: Matcher
    unknown: str = "tempfail"
    wants: Wants = field(default_factory=Wants)
    verify: frozenset[str] = frozenset()  # the checks its matchers use
    options: RuleOptions | None = None
    every: bool = False  # no phase given: asked in every phase from ``phase`` on

    def asked_in(self, phase: Phase) -> bool:
        return phase == self.phase or (self.every and _RANK[phase] > _RANK[self.phase])

    def verdict(self) -> Verdict:
        return Verdict(self.action, self.reply or _DEFAULT_REPLIES.get(self.action),
                       self.delay, self.label, options=self.options)


class RuleSet:
    def __init__(self, rules: Sequence[_Rule] = ()) -> None:
        self._rules = list(rules)
        #: The DNS lookups these rules may need, to start them early.
        self.wants = Wants()
        #: The authentication checks these rules use (spf, dkim, arc, dmarc).
        self.verify: frozenset[str] = frozenset()
        #: Each rule's savedir, with the rule's label (created by whoever serves them).
        self.savedirs: list[tuple[str, Maildir]] = []
        for rule in self._rules:
            self.wants |= rule.wants
            self.verify |= rule.verify
            if rule.options is not None and rule.options.savedir is not None:
                self.savedirs.append((rule.label, rule.options.savedir))

    def __len__(self) -> int:
        return len(self._rules)

    def decide(self, phase: Phase, facts: Facts) -> Verdict | Pending | None:
        """The first rule of ``phase`` that matches decides; None: no rule did.

        Pending: the next rule in line needs DNS facts not known yet (its keys); wait
        for them, then ask again. Evaluation itself never waits and has no effects.
        """
        for rule in self._rules:
            if not rule.asked_in(phase):
                continue
            truth = rule.matches(facts, phase)
            if isinstance(truth, Pending):
                return truth
            if isinstance(truth, Unknown):
                if rule.unknown == "nomatch":
                    continue
                if rule.unknown == "tempfail":
                    return Verdict("tempfail", DNS_TEMPFAIL, rule.delay, rule.label, True)
                return dataclasses.replace(rule.verdict(), unknown=True)
            if truth:
                return rule.verdict()
        return None


def load_rules(path: str | Path | Sequence[str | Path]) -> RuleSet:
    """The rules of one or more files (see :mod:`.rulefiles`), in priority order."""
    rules = []
    for file, index, entry in rule_entries(path):
        label = f"rule {index}"
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            label = f"rule {index} ({entry['name']})"
        try:
            rules.append(_parse_rule(entry, index, file.parent))
        except (RulesError, ValueError, TypeError) as exc:
            raise RulesError(f"{file}: {label}: {exc}") from None
    return RuleSet(rules)


def _parse_rule(entry: object, index: int, base: Path) -> _Rule:
    if not isinstance(entry, dict):
        raise RulesError("must be a table")
    unknown = set(entry) - _RULE_KEYS
    if unknown:
        raise RulesError(f"unknown keys {sorted(unknown)}")
    phase, action = entry.get("phase"), entry.get("action")
    if phase not in (*PHASES, None):
        raise RulesError(f"phase must be one of {', '.join(PHASES)} (or none at all)")
    if action not in ACTIONS:
        raise RulesError(f"action must be one of {', '.join(ACTIONS)}")
    every = phase is None
    if phase is None:
        phase = _PHASE_NAMED[earliest_phase(entry.get("match", {}), action, _KNOWN_FROM)]
    if action == "save-then-reject" and phase != "message":
        raise RulesError("save-then-reject needs the message: use phase = \"message\"")
    delay = entry.get("delay", 0.0)
    if not isinstance(delay, int | float) or isinstance(delay, bool) or not 0 <= delay <= 600:
        raise RulesError("delay must be a number of seconds from 0 to 600")
    reply = _parse_reply(entry["reply"], action) if "reply" in entry else None
    unknown = entry.get("unknown", "tempfail")
    if unknown not in _UNKNOWN:
        raise RulesError(f"unknown must be one of {', '.join(_UNKNOWN)}")
    match = entry.get("match", {})
    matcher = _compile(match, phase, base)
    name = entry.get("name")
    return _Rule(name if isinstance(name, str) else f"rule {index}", phase, action, reply,
                 float(delay), matcher, unknown, wants_of(match), kinds_of(match),
                 parse_options(entry, base), every)


def _parse_reply(text: object, action: str) -> Reply:
    if not isinstance(text, str) or (found := _REPLY.fullmatch(text)) is None:
        raise RulesError("reply must look like \"550 5.7.1 text\"")
    code = int(found.group(1))
    wanted = {"accept": (200, 399), "tempfail": (400, 499)}.get(action, (400, 599))
    if not wanted[0] <= code <= wanted[1]:
        raise RulesError(f"reply code {code} does not suit action {action}")
    try:
        return Reply(code, found.group(3) or "", found.group(2))
    except ReplyTextError as exc:
        raise RulesError(str(exc)) from None


def _compile(spec: object, phase: Phase, base: Path) -> Matcher:
    if not isinstance(spec, dict):
        raise RulesError("a match must be a table of matchers")
    matchers: list[Matcher] = []
    for key, value in spec.items():
        fact = key.removesuffix("_file")
        if fact in _KNOWN_FROM and PHASES.index(phase) < PHASES.index(
                _KNOWN_FROM[fact]):
            raise RulesError(f"'{key}' is not known yet in the {phase} phase "
                             f"(it is from {_KNOWN_FROM[fact]} on)")
        matchers.append(_matcher(key, value, phase, base))
    return lambda facts, phase_: all_of(m(facts, phase_) for m in matchers)


_MATCHERS = {"not", "any", "all", "tls", "authenticated", "ip", "helo", "sender",
             "recipient", "sender_file", "recipient_file", "helo_file", "ip_file",
             "host_file", "source_file", *DNS_MATCHERS, *AUTH_MATCHERS}


def _matcher(key: str, value: Any, phase: Phase, base: Path) -> Matcher:
    if key not in _MATCHERS:
        raise RulesError(f"unknown matcher '{key}'")
    if key in DNS_MATCHERS or key in AUTH_MATCHERS:
        return (dns_matcher(key, value, phase) if key in DNS_MATCHERS
                else auth_matcher(key, value))
    if key == "not":
        inner = _compile(value, phase, base)
        return lambda facts, p: negate(inner(facts, p))
    if key in ("any", "all"):
        if not isinstance(value, list) or not value:
            raise RulesError(f"'{key}' takes a non-empty list of match tables")
        parts = [_compile(item, phase, base) for item in value]
        combine = any_of if key == "any" else all_of
        return lambda facts, p: combine(part(facts, p) for part in parts)
    if key in ("tls", "authenticated"):
        if not isinstance(value, bool):
            raise RulesError(f"'{key}' must be true or false")
        return lambda facts, p: getattr(facts, key) is value
    if key.endswith("_file"):
        patterns = _pattern_file(key, value, base)
        if not patterns:  # as sinksmtp: an empty file matches nothing
            return lambda facts, p: False
        return _matcher(key.removesuffix("_file"), patterns, phase, base)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RulesError(f"'{key}' takes a list of strings")
    if key == "ip":
        networks = [_network(v) for v in value]
        return lambda facts, p: facts.ip is not None and address_in(facts.ip, networks)
    if key == "helo":
        helo_matches = host_pattern(value)
        return lambda facts, p: facts.helo is not None and helo_matches(facts.helo)
    if key == "sender":
        sender_matches = address_patterns(value)
        return lambda facts, p: facts.sender is not None and sender_matches(facts.sender)
    if key == "recipient":
        rcpt_matches = address_patterns(value)

        def recipient(facts: Facts, p: Phase) -> bool:
            candidates = (facts.recipient,) if p == "rcpt" else facts.recipients
            return any(c is not None and rcpt_matches(c) for c in candidates)

        return recipient
    raise AssertionError(key)  # every name in _MATCHERS is handled above


def _pattern_file(key: str, value: Any, base: Path) -> list[str]:
    """The patterns in a ``*_file``: one a line, blank lines and ``#`` comments skipped."""
    if not isinstance(value, str):
        raise RulesError(f"'{key}' takes a file name")
    try:
        lines = (base / value).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(f"cannot read {key} {value!r}: {exc}") from None
    # Stripped before the comment test, so that an indented "# ..." is a comment too,
    # not a pattern.
    stripped = (line.strip() for line in lines)
    return [line for line in stripped if line and not line.startswith("#")]


def _network(text: str) -> Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise RulesError(f"bad IP address or network {text!r}") from None
