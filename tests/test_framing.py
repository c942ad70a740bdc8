"""The DATA reader's line-length check against its plain definition."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from trio_smtpd._framing import DotReader, has_long_line


def longest_line_by_definition(content: bytes) -> int:
    return max(len(line) for line in content.split(b"\n"))


@given(st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=60),
       st.integers(min_value=1, max_value=30), st.sampled_from([b"\n", b"\r\n"]))
def test_has_long_line_agrees_with_the_definition(lengths: list[int], limit: int,
                                                  ending: bytes) -> None:
    content = b"".join(b"x" * n + ending for n in lengths)
    expected = longest_line_by_definition(content) >= limit
    assert has_long_line(content, limit) is expected


@given(st.binary(max_size=300).map(lambda b: b + b"\n"), st.integers(min_value=1, max_value=50))
def test_has_long_line_on_arbitrary_bytes(content: bytes, limit: int) -> None:
    # The regular expression the reader used before: a line start, then `limit` non-LF.
    regex = re.compile(rb"^[^\n]{%d}" % limit, re.MULTILINE)
    assert has_long_line(content, limit) is (regex.search(content) is not None)


def test_a_line_exactly_at_the_limit_and_one_past_it() -> None:
    # RFC 5321 4.5.3.1.6: 1000 octets with CRLF is the most a text line may have.
    ok = b"a" * 998 + b"\r\n"
    assert not has_long_line(ok * 3, 1000)
    assert has_long_line(ok + b"a" * 999 + b"\r\n" + ok, 1000)


# ------------------------------------------------------------------ DotReader, call by call
# The engine hands a DATA body up as it arrives; these pin what each read() consumes and
# returns, where a whole transcript through the engine would not tell the difference.


def reader(max_line: int = 10, keep_bare: bool = False) -> DotReader:
    return DotReader(max_size=None, max_line=max_line, keep_bare=keep_bare)


def test_each_complete_line_is_handed_up_at_once() -> None:
    dots = reader(keep_bare=True)
    buf = bytearray(b"\n")  # a line that is only a (kept) bare LF
    assert dots.read(buf) == b"\n" and buf == b""
    buf += b"ab\r\nc"
    assert dots.read(buf) == b"ab\r\n" and buf == b"c"
    assert dots.size == 5  # sizes add up over reads


def test_an_unfinished_line_at_the_limit_is_refused_and_dropped() -> None:
    dots = reader(max_line=10)
    buf = bytearray(b"x" * 10)  # no LF yet, and already 10 octets: cannot end in time
    assert dots.read(buf) == b"" and buf == b"x"  # the last octet may be a CR: kept
    assert str(dots.error) == "550 5.6.0 Message refused: a line is longer than 10 octets"
    nine = reader(max_line=10)
    buf = bytearray(b"x" * 9)
    assert nine.read(buf) == b"" and buf == b"x" * 9 and nine.error is None


def test_after_a_dropped_line_a_dot_is_not_at_a_line_start() -> None:
    # The dropped line ended with ".": with its CRLF that is not the end of the data.
    dots = reader(max_line=10)
    buf = bytearray(b"x" * 9 + b".")
    dots.read(buf)
    buf += b"\r\n"
    assert dots.read(buf) == b"" and not dots.done
    buf += b".\r\n"
    dots.read(buf)
    assert dots.done


def test_the_end_right_after_a_dropped_line() -> None:
    # The kept octet was the CR of the CRLF before the final dot.
    dots = reader(max_line=10)
    buf = bytearray(b"x" * 9 + b"\r")
    dots.read(buf)
    buf += b"\n.\r\nNOOP\r\n"
    dots.read(buf)
    assert dots.done and buf == b"NOOP\r\n"


def test_the_first_end_marker_ends_the_data() -> None:
    dots = reader(max_line=1000)
    buf = bytearray(b"one\r\n.\r\nMAIL FROM:<a@b.c>\r\nDATA\r\ntwo\r\n.\r\n")
    assert dots.read(buf) == b"one\r\n"
    assert dots.done and buf == b"MAIL FROM:<a@b.c>\r\nDATA\r\ntwo\r\n.\r\n"
    empty = reader()
    buf = bytearray(b".\r\nNOOP\r\n")
    assert empty.read(buf) == b"" and empty.done and buf == b"NOOP\r\n"


def test_nothing_is_handed_up_once_the_message_is_refused() -> None:
    for first, more in [(b"bare\nLF\r\n", b"more\r\n"),  # bare line ending
                        (b"x" * 20 + b"\r\n", b"more\r\n")]:  # line too long
        dots = reader(max_line=10)
        buf = bytearray(first)
        assert dots.read(buf) == b"" and dots.error is not None
        buf += more
        assert dots.read(buf) == b""
    big = DotReader(max_size=5, max_line=100, keep_bare=False)
    buf = bytearray(b"abcd\r\n")
    assert big.read(buf) == b""  # 6 octets: one too many
    assert str(big.error) == "552 5.3.4 Message exceeds fixed maximum message size"
