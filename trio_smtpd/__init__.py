"""trio_smtpd: SMTP and LMTP servers for trio.

The library does the protocol; the application decides. Serve with ``serve()`` and either
iterate ``Server.transactions()`` or give a ``handler(session)`` that answers each
decision (``Connect``, ``Hello``, ``Auth``, ``Mail``, ``Rcpt``, ``DataStart``, ``Message``)
as it comes. The sans-I/O protocol engine underneath is ``trio_smtpd.core``.
"""

from ._address import Address
from ._decisions import (
    Auth,
    Connect,
    DataStart,
    Decision,
    Hello,
    Mail,
    Message,
    Rcpt,
    Recipient,
    SessionInfo,
    TLSInfo,
    Transaction,
)
from ._params import MailParams, OriginalRecipient, RcptParams
from ._proxy import ProxiedStream, ProxyProtocolListener
from ._replies import Reply
from ._sasl import CramMD5Credentials, Credentials, PlainCredentials
from ._server import Config, Handler, Server, Timeouts, forward_transactions, serve
from ._session import Session

__version__ = "0.1.0"

__all__ = [
    "Address",
    "Auth",
    "Config",
    "Connect",
    "CramMD5Credentials",
    "Credentials",
    "DataStart",
    "Decision",
    "Handler",
    "Hello",
    "Mail",
    "MailParams",
    "Message",
    "OriginalRecipient",
    "PlainCredentials",
    "ProxiedStream",
    "ProxyProtocolListener",
    "Rcpt",
    "RcptParams",
    "Recipient",
    "Reply",
    "Server",
    "Session",
    "SessionInfo",
    "TLSInfo",
    "Timeouts",
    "Transaction",
    "__version__",
    "forward_transactions",
    "serve",
]
