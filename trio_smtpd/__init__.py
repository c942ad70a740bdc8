"""trio_smtpd: SMTP and LMTP servers for trio.

The library does the protocol; the application decides. Serve with ``serve()`` and either
iterate ``Server.transactions()`` or give a ``handler(session)`` that answers each
decision (``Connect``, ``Hello``, ``Auth``, ``Mail``, ``Rcpt``, ``DataStart``, ``Message``)
as it comes. The sans-I/O protocol engine underneath is ``trio_smtpd.core``.
"""

from ._address import Address
from ._connection import UsageError
from ._decisions import (
    Auth,
    Connect,
    DataStart,
    Decision,
    Hello,
    Mail,
    Message,
    Rcpt,
    TLSFailed,
)
from ._events import Recipient
from ._info import SessionInfo, TLSInfo
from ._metrics import Metrics
from ._observer import Observer, Summary
from ._params import MailParams, OriginalRecipient, RcptParams
from ._proxy import ProxyProtocolListener
from ._replies import Reply
from ._sasl import CramMD5Credentials, Credentials, PlainCredentials
from ._server import Handler, Server, serve
from ._session import Session, forward_transactions
from ._settings import Config, Timeouts
from ._signals import shutdown_on_signals
from ._transaction import Transaction
from ._transactions import Transactions
from ._transcript import Transcript

__version__ = "0.2.0"

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
    "Metrics",
    "Observer",
    "OriginalRecipient",
    "PlainCredentials",
    "ProxyProtocolListener",
    "Rcpt",
    "RcptParams",
    "Recipient",
    "Reply",
    "Server",
    "Session",
    "SessionInfo",
    "Summary",
    "TLSFailed",
    "TLSInfo",
    "Timeouts",
    "Transaction",
    "Transactions",
    "Transcript",
    "UsageError",
    "__version__",
    "forward_transactions",
    "serve",
    "shutdown_on_signals",
]
