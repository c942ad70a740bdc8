"""Splitting command lines (trio_smtpd._commands): verbs, arguments, MAIL/RCPT keywords."""

from __future__ import annotations

import pytest

from trio_smtpd._commands import parse_bdat, path_argument, split_command
from trio_smtpd._replies import ReplyError


@pytest.mark.parametrize(("line", "expected"), [
    ("noop", ("NOOP", "")),
    ("MAIL FROM:<a@b.c>  ", ("MAIL", "FROM:<a@b.c>")),
    ("VRFY Xavier", ("VRFY", "Xavier")),  # only spaces are trimmed
    ("NOOP \tx\t ", ("NOOP", "\tx\t")),
    ("1x y", ("", "1x y")),  # no verb: "" and the whole line
    (" NOOP", ("", " NOOP")),
    ("A" * 17, ("", "A" * 17)),
])
def test_split_command(line: str, expected: tuple[str, str]) -> None:
    assert split_command(line) == expected


def test_path_argument() -> None:
    assert path_argument("from:<a@b.c>", "FROM:", "5.5.4") == "<a@b.c>"
    assert path_argument("TO:  <a@b.c>", "TO:", "5.5.4") == "<a@b.c>"  # spaces allowed
    assert path_argument("TO:\t<a@b.c>", "TO:", "5.5.4") == "\t<a@b.c>"  # not tabs
    assert path_argument("TO:X<a@b.c>", "TO:", "5.5.4") == "X<a@b.c>"
    with pytest.raises(ReplyError) as info:
        path_argument("TO <a@b.c>", "TO:", "5.1.3")
    assert str(info.value.reply) == "501 5.1.3 Syntax: expected TO:<address>"


@pytest.mark.parametrize(("argument", "expected"), [
    ("0", (0, False)), ("10 LAST", (10, True)), ("10 last", (10, True)),
    ("7   LAST  ", (7, True)), ("9" * 20, (int("9" * 20), False)),
])
def test_parse_bdat(argument: str, expected: tuple[int, bool]) -> None:
    assert parse_bdat(argument) == expected


@pytest.mark.parametrize("argument", ["", "x", "-1", "1LAST", "1 LAST x", "9" * 21])
def test_parse_bdat_refuses(argument: str) -> None:
    with pytest.raises(ReplyError) as info:
        parse_bdat(argument)
    assert str(info.value.reply) == "501 5.5.4 Syntax: BDAT <chunk-size> [LAST]"
