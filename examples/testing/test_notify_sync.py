# test_notify_sync.py
from __future__ import annotations

from dataclasses import replace

import pytest
from notify_sync import MailSettings, send_welcome

from trio_smtpd.testserver import ThreadedSMTPTestServer


@pytest.fixture
def settings(smtp_server_thread: ThreadedSMTPTestServer) -> MailSettings:
    return MailSettings(smtp_server_thread.host, smtp_server_thread.port)


def test_welcome_mail(settings: MailSettings,
                      smtp_server_thread: ThreadedSMTPTestServer) -> None:
    assert send_welcome(settings, "bob@example.org", "Bob")

    [mail] = smtp_server_thread.messages  # there before smtplib's send returned
    assert mail.sender == "shop@example.org"
    assert mail.recipients == ["bob@example.org"]
    assert mail.message["Subject"] == "Welcome, Bob!"
    assert "thanks for signing up" in mail.message.get_content()


def test_a_busy_mailbox_is_tried_again(settings: MailSettings,
                                       smtp_server_thread: ThreadedSMTPTestServer) -> None:
    smtp_server_thread.fail_next("RCPT", 450, "4.2.1 mailbox busy")

    assert send_welcome(settings, "bob@example.org", "Bob")
    assert len(smtp_server_thread.messages) == 1


def test_an_unknown_address_is_given_up(settings: MailSettings,
                                        smtp_server_thread: ThreadedSMTPTestServer) -> None:
    smtp_server_thread.fail_always("RCPT", 550, "5.1.1 no such user",
                                   address="nobody@example.org")

    assert not send_welcome(settings, "nobody@example.org", "Nobody")
    assert smtp_server_thread.messages == []


@pytest.mark.smtp_server(tls="starttls", users={"shop": "s3cret"})
def test_tls_and_login(settings: MailSettings,
                       smtp_server_thread: ThreadedSMTPTestServer) -> None:
    settings = replace(settings, starttls=True, cafile=str(smtp_server_thread.ca_file),
                       username="shop", password="s3cret")

    assert send_welcome(settings, "bob@example.org", "Bob")
    [mail] = smtp_server_thread.messages
    assert mail.authenticated_as == "shop"
    assert mail.tls is not None
