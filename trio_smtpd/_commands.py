"""Splitting a command line into its verb and arguments (RFC 5321 4.1.1).

Pure string functions; what a command *means* in the current state is the connection's
business.
"""

from __future__ import annotations

import re

from ._replies import Reply, ReplyError

__all__ = ["parse_bdat", "path_argument", "split_command"]

# BDAT SP chunk-size [ SP end-marker ]  (RFC 3030 2); chunk-size = 1*DIGIT.
_BDAT = re.compile(r"([0-9]{1,20})(?: +(LAST))? *", re.IGNORECASE)
_VERB = re.compile(r"[A-Za-z]{1,16}")


def split_command(line: str) -> tuple[str, str]:
    """Return (VERB in upper case, argument text); VERB is "" when the line has no verb."""
    verb, _, argument = line.partition(" ")
    if not _VERB.fullmatch(verb):
        return "", line
    return verb.upper(), argument.strip(" ")


def path_argument(argument: str, keyword: str, enhanced: str) -> str:
    """Strip ``FROM:`` / ``TO:`` from a MAIL or RCPT argument; return the path onwards.

    RFC 5321 has no space after the colon, but many clients send one; it is harmless, so
    it is allowed (the path itself must still be in angle brackets).
    """
    if argument[: len(keyword)].upper() != keyword:
        raise ReplyError(Reply(501, f"Syntax: expected {keyword}<address>", enhanced))
    return argument[len(keyword):].lstrip(" ")


def parse_bdat(argument: str) -> tuple[int, bool]:
    """Return (chunk size, is last) for a BDAT argument, or raise 501."""
    match = _BDAT.fullmatch(argument)
    if match is None:
        raise ReplyError(Reply(501, "Syntax: BDAT <chunk-size> [LAST]", "5.5.4"))
    return int(match.group(1)), match.group(2) is not None
