# notify_sync.py: a synchronous application (a Flask or Django view would call this)
"""Sends the welcome mail with smtplib; tries a temporary refusal once more."""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage


@dataclass(frozen=True)
class MailSettings:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    cafile: str | None = None  # a CA to trust instead of the system's


def welcome(address: str, name: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Example Shop <shop@example.org>"
    message["To"] = address
    message["Subject"] = f"Welcome, {name}!"
    message.set_content(f"Hello {name},\n\nthanks for signing up.\n")
    return message


def send_welcome(settings: MailSettings, address: str, name: str) -> bool:
    """True once sent; False if the address was refused for good."""
    for _attempt in range(2):
        try:
            with smtplib.SMTP(settings.host, settings.port, timeout=10) as smtp:
                if settings.starttls:
                    smtp.starttls(context=ssl.create_default_context(cafile=settings.cafile))
                if settings.username is not None:
                    smtp.login(settings.username, settings.password or "")
                smtp.send_message(welcome(address, name))
            return True
        except smtplib.SMTPRecipientsRefused as refused:
            code, _text = refused.recipients[address]
            if code >= 500:
                return False
    return False
