# test_notify_trio.py (with pytest-trio; trio_mode = true makes the marks unnecessary)
from __future__ import annotations

import pytest
import trio
from notify_trio import Outbox, receipt

from trio_smtpd.testserver import SMTPTestServer


@pytest.mark.trio
async def test_receipts_are_sent_in_the_background(smtp_server: SMTPTestServer,
                                                   nursery: trio.Nursery) -> None:
    outbox = Outbox(smtp_server.host, smtp_server.port)
    nursery.start_soon(outbox.run)

    outbox.send(receipt("bob@example.org", 42))
    outbox.send(receipt("carol@example.org", 43))

    first, second = await smtp_server.wait_for(2)
    assert first.recipients == ["bob@example.org"]
    assert first.message["Subject"] == "Your order 42"
    assert second.recipients == ["carol@example.org"]


@pytest.mark.trio
async def test_a_temporary_failure_is_tried_again(smtp_server: SMTPTestServer,
                                                  nursery: trio.Nursery) -> None:
    smtp_server.fail_next("MESSAGE", 451, "4.3.0 try again later")
    outbox = Outbox(smtp_server.host, smtp_server.port, retry_delay=0)
    nursery.start_soon(outbox.run)

    outbox.send(receipt("bob@example.org", 42))

    [mail] = await smtp_server.wait_for(1)
    assert mail.message.get_content() == "Order 42 is on its way.\n"
