"""The sinkhole's log lines."""

from __future__ import annotations

import io
import json
import logging
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_smtpd.sinkhole import logs


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_timestamps_are_what_datetime_would_write(created: float) -> None:
    # The part up to the second is made once a second; the result must not differ.
    expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    assert logs._timestamp(created) == expected


@pytest.fixture
def restored_logging() -> Iterator[None]:
    # configure_logging() is for the program's own process: undo it for the other tests.
    logger = logging.getLogger("trio_smtpd")
    saved = (logger.handlers[:], logger.propagate, logger.level, logging._srcfile,
             logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    yield
    (logger.handlers[:], logger.propagate, logger.level, logging._srcfile,
     logging.logThreads, logging.logProcesses, logging.logMultiprocessing) = saved
    logs._writer = None


@pytest.mark.usefixtures("restored_logging")
def test_event_lines_go_to_the_configured_stream_in_order() -> None:
    stream = io.StringIO()
    logs.configure_logging("json", stream)
    logs.log_event("connect", session="1.1", peer="192.0.2.1:2525")
    logs.log_event("message", session="1.1", recipients=["a@b.c"], size=3, file=None)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "connect" and first["peer"] == "192.0.2.1:2525"
    assert second == {"time": second["time"], "event": "message", "session": "1.1",
                      "recipients": ["a@b.c"], "size": 3, "file": None}
    logs.configure_logging("text", stream)
    logs.log_event("close", session="1.1", helo="mx test", tls=None)
    assert stream.getvalue().splitlines()[-1].endswith(' close session=1.1 helo="mx test"')


# The general categories never written raw (issue 16): controls, format characters (the
# soft hyphen, bidi and zero-width controls, tag characters...), line and paragraph
# separators, lone surrogates, private use and unassigned code points.
UNSAFE_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")
unsafe_characters = st.one_of(
    st.characters(categories=UNSAFE_CATEGORIES),
    # Those a hand list once missed, astral ones (tag characters) among them.
    st.sampled_from("\u00ad\u180e\u206a\u206f\U000e0001\U000e0020\U000e0041\U000e007f"),
)
# Anything a client chose, with what could split or disguise a line.
hostile = st.text(st.one_of(
    st.sampled_from(["a", "ü", " ", '"', "=", "\\", "\n", "\r", "\x00", "\x7f", "\x85",
                     "\u2028", "\u2029", "\u202e", "\u200b", "\ufeff"]),
    unsafe_characters))


def raw_unsafe(text: str) -> list[str]:
    """The characters of ``text`` in a category never written raw."""
    return [c for c in text if unicodedata.category(c) in UNSAFE_CATEGORIES]


@given(hostile)
def test_no_value_splits_or_hides_in_a_line(value: str) -> None:
    json_line = logs._format(True, 0.0, "message", {"helo": value, "recipients": [value]})
    text_line = logs._format(False, 0.0, "message", {"helo": value, "size": 1})
    for line in (json_line, text_line):
        # As line-based readers (Python's splitlines, JavaScript, log viewers) see it.
        assert len(line.splitlines()) == 1 and line.isprintable()
        assert raw_unsafe(line) == []
    decoded = json.loads(json_line)
    assert decoded["helo"] == value and decoded["recipients"] == [value]  # exact values
    assert text_line.endswith(" size=1")  # the value did not swallow the next field
    helo = text_line.split(" helo=", 1)[1].rsplit(" size=", 1)[0]
    assert (json.loads(helo) if helo.startswith('"') else helo) == value

