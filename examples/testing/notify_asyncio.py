# notify_asyncio.py: an asyncio application
"""Mails alerts with aiosmtplib; a temporary failure is tried again, a permanent one
raises."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from email.message import EmailMessage

import aiosmtplib


@dataclass(frozen=True)
class Relay:
    host: str
    port: int
    implicit_tls: bool = False
    cafile: str | None = None  # a CA to trust instead of the system's
    attempts: int = 3
    retry_delay: float = 10.0


async def send_alert(relay: Relay, to: list[str], summary: str) -> None:
    message = EmailMessage()
    message["From"] = "monitor@example.org"
    message["To"] = ", ".join(to)
    message["Subject"] = f"[alert] {summary}"
    message.set_content(f"{summary}\n\n-- the monitor\n")
    for attempt in range(1, relay.attempts + 1):
        try:
            await aiosmtplib.send(message, hostname=relay.host, port=relay.port,
                                  use_tls=relay.implicit_tls, cert_bundle=relay.cafile,
                                  timeout=10)
            return
        except aiosmtplib.SMTPResponseException as error:
            if error.code >= 500 or attempt == relay.attempts:
                raise
        await asyncio.sleep(relay.retry_delay)
