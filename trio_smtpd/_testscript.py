"""Scripted failures for the test server: which step fails, for whom, how often, and how.

A test says ``server.fail_next("RCPT", 450, "4.2.1 mailbox busy")`` and the next RCPT is
answered so; the application's retry and error handling can then be tested against a
real reply. A rule names a step (one of ``COMMANDS``), a reply, optionally an address
(the sender at MAIL, the recipient at RCPT, a recipient at MESSAGE; ``@domain`` for any
address at that domain, not its subdomains; ``<>`` for the null sender), and how many
times it applies (None: every time). Rules are tried in the order they were added; the
first that matches is used.

The script is shared between the test's thread and the server's (``smtp_server_thread``),
so every use is under a lock, and taking a rule (which uses it up) is one step.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from . import Reply

__all__ = ["COMMANDS", "FailureScript"]

#: The steps a failure can be scripted for. HELO covers EHLO and LHLO; DATA is the reply
#: to DATA (or the first BDAT), MESSAGE the reply once the whole message has arrived.
COMMANDS = ("CONNECT", "HELO", "AUTH", "MAIL", "RCPT", "DATA", "MESSAGE")
_ALIASES = {"EHLO": "HELO", "LHLO": "HELO", "BDAT": "DATA"}
# The steps an address can narrow down; the others concern no address.
_ADDRESSED = ("MAIL", "RCPT", "MESSAGE")
# "4.2.1 mailbox busy": the enhanced code written at the start of the text, as the
# reply appears on the wire, so the test can copy a reply it has seen.
_LEADING_ENHANCED = re.compile(r"([245]\.[0-9]{1,3}\.[0-9]{1,3})(?: +(.*))?", re.DOTALL)
_DEFAULT_TEXT = "Scripted failure (trio_smtpd test server)"


@dataclass
class _Rule:
    command: str
    reply: Reply
    address: str | None  # normalised: lower case, no angle brackets; "@domain" or "" (<>)
    remaining: int | None  # None: every time

    def matches(self, command: str, address: str | None) -> bool:
        if command != self.command:
            return False
        if self.address is None:
            return True
        if address is None:
            return False
        address = _normalise(address)
        if self.address.startswith("@"):
            return address.endswith(self.address)
        return address == self.address


class FailureScript:
    """The failures a test server still has to answer with."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []

    def add(self, command: str, code: int, text: str | Sequence[str] | None = None,
            enhanced: str | None = None, *, address: str | None = None,
            times: int | None = 1) -> None:
        """Answer ``command`` with ``code`` (4xx: temporary, 5xx: permanent) ``times``
        times (None: every time), for ``address`` only if one is given."""
        step = _ALIASES.get(command.upper(), command.upper())
        if step not in COMMANDS:
            raise ValueError(f"cannot script a failure for {command!r}: "
                             f"one of {', '.join(COMMANDS)}")
        if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code < 600:
            raise ValueError(f"a scripted failure takes a 4xx or 5xx code, not {code!r}")
        if step == "CONNECT" and code not in (421, 554):
            # RFC 5321 3.1: a server refuses a connection with 554, or 421 and closes.
            raise ValueError(f"CONNECT fails with 421 or 554, not {code}")
        if address is not None and step not in _ADDRESSED:
            raise ValueError(f"an address narrows down {', '.join(_ADDRESSED)}, not {step}")
        if times is not None and times < 1:
            raise ValueError(f"times must be at least 1 (or None for always), not {times}")
        rule = _Rule(step, _reply(code, text, enhanced),
                     None if address is None else _normalise(address), times)
        with self._lock:
            self._rules.append(rule)

    def clear(self) -> None:
        """Forget every rule."""
        with self._lock:
            self._rules.clear()

    def take(self, command: str, address: str | None = None) -> Reply | None:
        """The failure for this step (using it up), or None to accept it."""
        with self._lock:
            return self._take(command, address)

    def take_message(self, recipients: Sequence[str]) -> list[Reply | None]:
        """The failure for each recipient of a message that has arrived: a rule without
        an address fails it for all of them, else each recipient's own rule, if any."""
        with self._lock:
            whole = self._take("MESSAGE", None)
            if whole is not None:
                return [whole] * len(recipients)
            return [self._take("MESSAGE", recipient) for recipient in recipients]

    def _take(self, command: str, address: str | None) -> Reply | None:
        for rule in self._rules:
            if rule.matches(command, address):
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining == 0:
                        self._rules.remove(rule)
                return rule.reply
        return None


def _reply(code: int, text: str | Sequence[str] | None, enhanced: str | None) -> Reply:
    """The reply, checked now (a bad one is the test's mistake, so it raises here, not
    in the server); an enhanced code may lead the text, as on the wire."""
    if text is None:
        text = _DEFAULT_TEXT
    elif isinstance(text, str) and enhanced is None:
        leading = _LEADING_ENHANCED.fullmatch(text)
        if leading is not None:
            enhanced, text = leading.group(1), leading.group(2) or ""
    return Reply(code, text, enhanced)


def _normalise(address: str) -> str:
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return address.lower()
