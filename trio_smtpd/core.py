"""The sans-I/O SMTP/LMTP protocol engine (no trio, no sockets, no clocks).

Use it to drive SMTP from any I/O framework, or to test protocol behaviour byte by byte::

    conn = ServerConnection(ProtocolConfig(hostname="mx.example.org"))
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            send(conn.data_to_send()); conn.receive_data(recv())
        elif event is PAUSED:       # many replies unsent: send them before reading more
            send(conn.data_to_send())
        elif isinstance(event, Request):
            conn.respond()          # or conn.respond(Reply(550, "no", "5.7.1"))
"""

from ._address import Address, parse_forward_path, parse_mailbox, parse_reverse_path
from ._config import ProtocolConfig
from ._connection import (
    NEED_DATA,
    PAUSED,
    UNSENT_REPLY_LIMIT,
    Mode,
    NeedData,
    Paused,
    ServerConnection,
    UsageError,
)
from ._events import (
    AuthResponse,
    AuthStart,
    BodyStart,
    ConnectionClosed,
    ConnectionOpened,
    EndOfMessage,
    Event,
    HelloCommand,
    MailCommand,
    MessageAborted,
    MessageData,
    RcptCommand,
    Recipient,
    Request,
    Reset,
    StartTLS,
    XclientCommand,
)
from ._observer import Observer, Summary
from ._params import MailParams, OriginalRecipient, RcptParams
from ._replies import Reply, ReplyError, ReplyTextError

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "UNSENT_REPLY_LIMIT",
    "Address",
    "AuthResponse",
    "AuthStart",
    "BodyStart",
    "ConnectionClosed",
    "ConnectionOpened",
    "EndOfMessage",
    "Event",
    "HelloCommand",
    "MailCommand",
    "MailParams",
    "MessageAborted",
    "MessageData",
    "Mode",
    "NeedData",
    "Observer",
    "OriginalRecipient",
    "Paused",
    "ProtocolConfig",
    "RcptCommand",
    "RcptParams",
    "Recipient",
    "Reply",
    "ReplyError",
    "ReplyTextError",
    "Request",
    "Reset",
    "ServerConnection",
    "StartTLS",
    "Summary",
    "UsageError",
    "XclientCommand",
    "parse_forward_path",
    "parse_mailbox",
    "parse_reverse_path",
]
