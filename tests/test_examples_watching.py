"""examples/watching.py, the example of docs/server.md's "Each connection its own
settings" and "Watching a session", run with smtplib; and the page shows it as it is."""

from __future__ import annotations

import io
import re
import smtplib
from functools import partial

import trio

from tests.examples import ROOT, load_example
from trio_smtpd import Config, serve

EXAMPLE = ROOT / "examples" / "watching.py"


def test_the_page_shows_the_example_as_it_is() -> None:
    text = (ROOT / "docs" / "server.md").read_text()
    blocks = re.findall(r"```python\n# examples/watching\.py\n(.*?)```", text, re.DOTALL)
    assert len(blocks) == 2
    source = EXAMPLE.read_text()
    for block in blocks:
        assert block in source, block


def converse(port: int, source: str) -> tuple[bytes, int | None]:
    """The greeting and the SIZE limit offered to a client from ``source``."""
    with smtplib.SMTP(timeout=10, source_address=(source, 0)) as client:
        _, greeting = client.connect("127.0.0.1", port)
        client.ehlo("client.test")
        size = client.esmtp_features.get("size")
        client.sendmail("a@example.org", ["b@example.net"], b"Subject: hi\r\n\r\nhello\r\n")
    return greeting, int(size) if size else None


async def test_partners_get_their_settings_and_every_session_a_transcript() -> None:
    example = load_example("watching")
    transcripts = io.StringIO()
    config = Config(hostname="mx.example", max_message_size=10 * 2**20)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve, config, 0, host="127.0.0.1",
                                             handler=example.make_handler(transcripts)))
        partner = await trio.to_thread.run_sync(converse, server.port, "127.0.0.2")
        other = await trio.to_thread.run_sync(converse, server.port, "127.0.0.1")
        server.shutdown()
    assert partner == (b"mx.example ESMTP Welcome back", 200 * 2**20)
    assert other[1] == 10 * 2**20 and b"Welcome back" not in other[0]
    lines = transcripts.getvalue().splitlines()
    # Both sessions, from the greeting on, the message summarised, not copied.
    assert sum("mx.example ESMTP" in line for line in lines) == 2
    assert sum("FROM:<a@example.org>" in line for line in lines) == 2
    assert any("[message data:" in line for line in lines)
    assert not any("hello" in line for line in lines)
