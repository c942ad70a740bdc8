# notify_trio.py: a trio application
"""An outbox: the application queues mail, a background task sends it (smtplib in a
worker thread, so the event loop goes on) and tries temporary failures again later."""

from __future__ import annotations

import math
import smtplib
from email.message import EmailMessage

import trio


def receipt(address: str, order: int) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "orders@example.org"
    message["To"] = address
    message["Subject"] = f"Your order {order}"
    message.set_content(f"Order {order} is on its way.\n")
    return message


class Outbox:
    def __init__(self, host: str, port: int, *, retry_delay: float = 60.0) -> None:
        self.host, self.port, self.retry_delay = host, port, retry_delay
        self._queue, self._queued = trio.open_memory_channel[EmailMessage](math.inf)

    def send(self, message: EmailMessage) -> None:
        self._queue.send_nowait(message)

    async def run(self) -> None:
        async for message in self._queued:
            while not await trio.to_thread.run_sync(self._deliver, message):
                await trio.sleep(self.retry_delay)

    def _deliver(self, message: EmailMessage) -> bool:
        """False if it should be tried again (a 4xx reply)."""
        try:
            with smtplib.SMTP(self.host, self.port, timeout=10) as smtp:
                smtp.send_message(message)
        except smtplib.SMTPResponseException as error:
            return error.smtp_code >= 500  # refused for good: nothing more to do
        return True
