"""The sinkhole's log lines."""

from __future__ import annotations

import io
import json
import logging
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
