"""Decision values and the session facts they carry."""

from __future__ import annotations

import dataclasses
import enum
from datetime import UTC, datetime

import pytest

from trio_smtpd import Reply, SessionInfo, TLSInfo
from trio_smtpd._replies import ReplyTextError


def test_snapshot_copies_every_field_and_is_independent() -> None:
    info = SessionInfo(id="1.2", peer=("192.0.2.1", 2525), local=("192.0.2.2", 25),
                       lmtp=True, started=datetime(2026, 1, 2, tzinfo=UTC),
                       helo="client.test", tls=TLSInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256"),
                       authenticated_as="alice", xclient={"ADDR": "192.0.2.1"},
                       proxy=("127.0.0.1", 40000), tls_failed_after_hello=True)
    copy = info.snapshot()
    assert copy is not info
    # Every field, each set above to something other than its default: a field added
    # later fails here until it is set above, and then if snapshot() forgets it.
    for field in dataclasses.fields(SessionInfo):
        assert getattr(info, field.name) != field.default, f"set {field.name} above"
        assert getattr(copy, field.name) == getattr(info, field.name), field.name
    info.helo = "changed.test"
    assert copy.helo == "client.test"


def test_reply_codes_are_integers_of_the_three_digit_form() -> None:
    class Code(enum.IntEnum):
        OK = 250

    assert Reply(Code.OK, "fine", "2.0.0").to_bytes() == b"250 2.0.0 fine\r\n"
    # Sent twice, the serialised reply is the one made the first time.
    reply = Reply(250, ["one", "two"], "2.0.0")
    assert reply.to_bytes() is reply.to_bytes()
    assert reply.to_bytes(enhanced_codes=False) == b"250-one\r\n250 two\r\n"
    for bad in ["250", True, 199, 600, 260]:
        with pytest.raises(ReplyTextError):
            Reply(bad, "no")  # type: ignore[arg-type]
    with pytest.raises(ReplyTextError):
        Reply(250, "no", "5.0.0")  # enhanced code of another class
