# test_notify_asyncio.py: smtp_server_thread runs the server beside asyncio's loop
from __future__ import annotations

import asyncio

import aiosmtplib
import pytest
from notify_asyncio import Relay, send_alert

from trio_smtpd.testserver import ThreadedSMTPTestServer


def test_an_alert_is_mailed(smtp_server_thread: ThreadedSMTPTestServer) -> None:
    relay = Relay(smtp_server_thread.host, smtp_server_thread.port)

    asyncio.run(send_alert(relay, ["ops@example.org", "cto@example.org"], "disk full"))

    [mail] = smtp_server_thread.messages
    assert mail.recipients == ["ops@example.org", "cto@example.org"]
    assert mail.message["Subject"] == "[alert] disk full"


def test_a_temporary_failure_is_tried_again(smtp_server_thread: ThreadedSMTPTestServer) -> None:
    smtp_server_thread.fail_next("MAIL", 451, "4.3.0 try again later")
    relay = Relay(smtp_server_thread.host, smtp_server_thread.port, retry_delay=0)

    asyncio.run(send_alert(relay, ["ops@example.org"], "disk full"))

    assert len(smtp_server_thread.messages) == 1


def test_a_permanent_failure_is_raised(smtp_server_thread: ThreadedSMTPTestServer) -> None:
    smtp_server_thread.fail_next("MESSAGE", 554, "5.7.1 looks like spam")
    relay = Relay(smtp_server_thread.host, smtp_server_thread.port, retry_delay=0)

    with pytest.raises(aiosmtplib.SMTPDataError) as refused:
        asyncio.run(send_alert(relay, ["ops@example.org"], "disk full"))

    assert (refused.value.code, refused.value.message) == (554, "5.7.1 looks like spam")
    assert smtp_server_thread.messages == []


@pytest.mark.smtp_server(tls="implicit")
def test_implicit_tls(smtp_server_thread: ThreadedSMTPTestServer) -> None:
    relay = Relay(smtp_server_thread.host, smtp_server_thread.port, implicit_tls=True,
                  cafile=str(smtp_server_thread.ca_file))

    asyncio.run(send_alert(relay, ["ops@example.org"], "disk full"))

    assert smtp_server_thread.messages[0].tls is not None
