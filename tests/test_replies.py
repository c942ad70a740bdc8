"""Replies as values (trio_smtpd._replies): what is refused, how they print and serialise."""

from __future__ import annotations

import pytest

from trio_smtpd._replies import Reply, ReplyTextError


def test_defaults_and_empty_text() -> None:
    assert Reply(250).lines == ("",)
    assert Reply(250, [], "2.0.0").to_bytes() == b"250 2.0.0\r\n"
    assert Reply(250, []).to_bytes() == b"250 \r\n"


def test_str_is_for_logs() -> None:
    assert str(Reply(250, "OK")) == "250 OK"
    assert str(Reply(250, "OK", "2.0.0")) == "250 2.0.0 OK"
    assert str(Reply(250, "")) == "250"
    assert str(Reply(250, ["one", "two"], "2.0.0")) == "250 2.0.0 one two"


def test_each_serialisation_is_kept_apart() -> None:
    reply = Reply(250, ["first", "second"], "2.1.0")
    assert reply.to_bytes(enhanced_codes=False) == b"250-first\r\n250 second\r\n"
    assert reply.to_bytes() == b"250-2.1.0 first\r\n250 2.1.0 second\r\n"
    assert reply.to_bytes(enhanced_codes=False) == b"250-first\r\n250 second\r\n"


@pytest.mark.parametrize(("args", "message"), [
    ((99, "x"), "not an SMTP reply code: 99"),
    ((250, "x", "9.9.9"), "not an enhanced status code: '9.9.9'"),
    ((250, "x", "2.0"), "not an enhanced status code: '2.0'"),
    ((250, "x", "5.0.0"), "enhanced code 5.0.0 does not match class of 250"),
    ((250, "a\r\nb"), "reply text contains a control character: " + repr("a\r\nb")),
])
def test_what_is_refused_and_why(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ReplyTextError) as info:
        Reply(*args)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_a_checked_enhanced_code_stays_valid_and_a_bad_one_stays_bad() -> None:
    for _ in range(2):  # the second time from the cache of codes already found good
        assert Reply(451, "later", "4.7.1").enhanced == "4.7.1"
        with pytest.raises(ReplyTextError):
            Reply(451, "later", "4.7")
