"""The DATA reader's line-length check against its plain definition."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from trio_smtpd._framing import has_long_line


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
