"""Coverage-guided fuzzing of the protocol engine with atheris.

    python fuzz/fuzz_engine.py -max_total_time=60      (or: nox -s fuzz)

Each input is split into client reads, the application's answers are drawn from the input
too, and the invariants are checked: no exception escapes, buffers stay bounded, reply
lines are well formed, no message data without an accepted recipient, nothing after the
connection closed. A crash is a finding: minimise it and add it to tests/.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from trio_smtpd._config import ProtocolConfig
    from trio_smtpd._connection import NEED_DATA, Mode, ServerConnection
    from trio_smtpd._events import (
        AuthResponse,
        AuthStart,
        ConnectionClosed,
        EndOfMessage,
        Event,
        MessageData,
        Request,
    )
    from trio_smtpd._replies import Reply

CONFIGS = [
    ProtocolConfig(max_message_size=4096, max_recipients=3, auth_mechanisms=("PLAIN",),
                   auth_requires_tls=False, tls_available=True),
    ProtocolConfig(lmtp=True, max_message_size=4096),
    ProtocolConfig(bare_line_endings="keep", chunking=False, max_bad_commands=3),
]
LIMIT = 12288 + 1024 + 512


def answer(conn: ServerConnection, event: Request, choice: int) -> None:
    if isinstance(event, AuthStart | AuthResponse):
        [conn.auth_challenge, lambda _: conn.auth_success("u"), lambda _: conn.auth_failure()][
            choice % 3](b"x")
    elif isinstance(event, EndOfMessage) and conn.config.lmtp:
        conn.respond_per_recipient([None if (choice >> i) & 1 else Reply(550, "no", "5.0.0")
                                    for i in range(len(conn.recipients))])
    elif choice % 4 == 0:
        conn.respond(Reply(554 if type(event).__name__ == "ConnectionOpened" else 450, "no", None))
    else:
        conn.respond()


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    conn = ServerConnection(CONFIGS[fdp.ConsumeIntInRange(0, len(CONFIGS) - 1)])
    closed = False
    out = bytearray()
    while fdp.remaining_bytes():
        chunk = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 256))
        if conn.mode is Mode.TLS_HANDSHAKE:
            conn.tls_established()
        if not conn.closed:
            conn.receive_data(chunk)
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            assert isinstance(event, Event)
            assert not closed, f"{event} after ConnectionClosed"
            if isinstance(event, MessageData):
                assert conn.recipients, "message data without an accepted recipient"
            if isinstance(event, Request):
                answer(conn, event, fdp.ConsumeIntInRange(0, 255))
            if isinstance(event, ConnectionClosed):
                closed = True
                break
        assert conn.buffered <= LIMIT + len(chunk)
        out += conn.data_to_send()
    for line in bytes(out).split(b"\r\n")[:-1]:
        assert line[:3].isdigit() and line[3:4] in (b" ", b"-", b""), line


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
