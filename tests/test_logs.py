"""The sinkhole's log lines."""

from __future__ import annotations

import io
import json
import logging
import threading
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import trio
import trio.testing
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


class _CountedStream(io.StringIO):
    """A stream that counts the writes that reach it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _events(stream: io.StringIO) -> list[str]:
    return [json.loads(line)["event"] for line in stream.getvalue().splitlines()]


@pytest.mark.usefixtures("restored_logging")
async def test_lines_are_kept_until_the_loop_is_idle_then_written_together() -> None:
    stream = _CountedStream()
    logs.configure_logging("json", stream)
    async with trio.open_nursery() as nursery:
        await nursery.start(logs.write_when_idle)
        logs.log_event("connect", session="1.1")
        logging.getLogger("trio_smtpd.server").warning("a library line between")
        logs.log_event("close", session="1.1")
        assert stream.getvalue() == ""  # this task has not waited yet
        await trio.testing.wait_all_tasks_blocked(cushion=0.01)
        assert _events(stream) == ["connect", "log", "close"]
        assert stream.writes == 1
        nursery.cancel_scope.cancel()
    logs.log_event("exit")  # no task keeps lines now: written at once
    assert _events(stream)[-1] == "exit"


@pytest.mark.usefixtures("restored_logging")
async def test_kept_lines_are_written_when_the_writer_ends_or_is_flushed() -> None:
    stream = _CountedStream()
    logs.configure_logging("text", stream)
    async with trio.open_nursery() as nursery:
        await nursery.start(logs.write_when_idle)
        logs.log_event("shutdown", signal="SIGTERM")
        logs.flush()  # as before os._exit()
        assert stream.getvalue().split()[1:] == ["shutdown", "signal=SIGTERM"]
        logs.log_event("close", session="1.1")
        nursery.cancel_scope.cancel()  # the writer ends before the loop idles
    assert stream.getvalue().splitlines()[-1].split()[1:] == ["close", "session=1.1"]


@pytest.mark.usefixtures("restored_logging")
async def test_a_busy_loop_writes_at_the_limit_without_waiting() -> None:
    stream = _CountedStream()
    logs.configure_logging("json", stream)
    async with trio.open_nursery() as nursery:
        await nursery.start(logs.write_when_idle)
        line = "x" * 1000
        for _ in range(logs._EventWriter.LIMIT // 1000 + 1):
            logs.log_event("message", note=line)
        assert stream.writes == 1 and len(stream.getvalue()) >= logs._EventWriter.LIMIT
        nursery.cancel_scope.cancel()


@pytest.mark.usefixtures("restored_logging")
async def test_a_line_from_another_thread_comes_after_the_kept_ones() -> None:
    stream = _CountedStream()
    logs.configure_logging("json", stream)
    async with trio.open_nursery() as nursery:
        await nursery.start(logs.write_when_idle)
        logs.log_event("connect")
        # Without waiting on the loop thread: a thread's line cannot be kept (nobody
        # would write it), and must not overtake the line before it.
        thread = threading.Thread(target=logs.log_event, args=("from-thread",))
        thread.start()
        thread.join()
        assert _events(stream) == ["connect", "from-thread"]
        nursery.cancel_scope.cancel()
