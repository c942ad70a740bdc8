"""Decision values and the session facts they carry."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from trio_smtpd import SessionInfo, TLSInfo


def test_snapshot_copies_every_field_and_is_independent() -> None:
    info = SessionInfo(id="1.2", peer=("192.0.2.1", 2525), local=("192.0.2.2", 25),
                       lmtp=True, started=datetime(2026, 1, 2, tzinfo=UTC),
                       helo="client.test", tls=TLSInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256"),
                       authenticated_as="alice")
    copy = info.snapshot()
    assert copy is not info
    # Every field, each set above to something other than its default: a field added
    # later fails here until it is set above, and then if snapshot() forgets it.
    for field in dataclasses.fields(SessionInfo):
        assert getattr(info, field.name) != field.default, f"set {field.name} above"
        assert getattr(copy, field.name) == getattr(info, field.name), field.name
    info.helo = "changed.test"
    assert copy.helo == "client.test"
