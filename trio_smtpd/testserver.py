"""A real SMTP/LMTP server for an application's tests, keeping every message it is sent.

``SMTPTestServer`` runs inside a trio program (the ``smtp_server`` fixture, or ``async
with open_smtp_test_server() as server``); ``ThreadedSMTPTestServer`` runs trio in a
thread of its own, for synchronous code and other event loops (the
``smtp_server_thread`` fixture, or ``with ThreadedSMTPTestServer() as server``). Both
listen on a free loopback port and accept everything, unless a test scripts a failure
(``fail_next()``, ``fail_always()``).

A message is added to ``messages`` *before* its client is told 250, so once a
synchronous send has returned, the message is there: ``wait_for()`` is for senders that
run in the background.
"""

from __future__ import annotations

import contextlib
import email.policy
import ipaddress
import ssl
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from functools import cached_property, partial
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import trio

from . import (
    Auth,
    Config,
    Connect,
    Credentials,
    DataStart,
    Decision,
    Hello,
    Mail,
    Message,
    Rcpt,
    Reply,
    Server,
    Session,
    TLSFailed,
    TLSInfo,
    Transaction,
    serve,
)
from ._settings import is_server_name
from ._testscript import COMMANDS, FailureScript

__all__ = [
    "COMMANDS",
    "ReceivedMessage",
    "SMTPTestServer",
    "ServerOptions",
    "ThreadedSMTPTestServer",
    "open_smtp_test_server",
]

# Clients still in a transaction when a test ends get this long to finish it; idle ones
# are told 421 at once, so a test that has finished sending never waits.
_SHUTDOWN_GRACE = 2.0
_EXTRA = "pip install 'trio_smtpd[testing]'"


@dataclass(frozen=True)
class ServerOptions:
    """How a test server behaves; the ``smtp_server`` marker takes the same names."""

    #: Speak LMTP (RFC 2033): LHLO, and one reply per recipient after the message.
    lmtp: bool = False
    #: ``"starttls"``: offer STARTTLS; ``"implicit"``: TLS from the first byte (RFC 8314,
    #: like port 465). The certificate comes from a throwaway CA (trustme) whose
    #: certificate is ``ca_file``, for the client to trust.
    tls: Literal["starttls", "implicit"] | None = None
    #: Users and their passwords: AUTH (PLAIN and LOGIN) is offered and required before
    #: MAIL; under TLS only when ``tls`` is set.
    users: Mapping[str, str] | None = None
    #: Largest message accepted, in octets, advertised as SIZE (None: no limit).
    max_size: int | None = 32 * 2**20
    #: Our name, in the greeting and the certificate.
    hostname: str = "localhost"
    #: The loopback address to listen on (an IP address: a name could bind two ports).
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        # Checked here, not where each is used: a bad option should fail the test at
        # setup, naming the option, not as a confusing reply or traceback mid-test.
        if not isinstance(self.lmtp, bool):  # "no" would be true
            raise TypeError(f"lmtp must be True or False, not {self.lmtp!r}")
        if self.tls not in (None, "starttls", "implicit"):
            raise ValueError(f"tls must be None, 'starttls' or 'implicit', not {self.tls!r}")
        _check_users(self.users)
        if self.max_size is not None and (isinstance(self.max_size, bool)
                                          or not isinstance(self.max_size, int)):
            raise TypeError(f"max_size must be an int or None, not {self.max_size!r}")
        if self.max_size is not None and self.max_size < 1:
            raise ValueError(f"max_size must be positive (or None), not {self.max_size}")
        if not isinstance(self.hostname, str) or not is_server_name(self.hostname):
            # (It goes into replies and the certificate as it is: Config's own rule.)
            raise ValueError("hostname must be a domain name or an address literal, "
                             f"not {self.hostname!r}")
        try:
            # (Not str: ip_address() takes an int too, which serve() does not.)
            ipaddress.ip_address(self.host if isinstance(self.host, str) else "")
        except ValueError:
            raise ValueError(f"host must be an IP address, not {self.host!r}") from None


def _check_users(users: object) -> None:
    """Names and passwords are strings (another type fails only at login, mid-test)."""
    if users is None:
        return
    if not isinstance(users, Mapping):
        raise TypeError(f"users must be a mapping of names to passwords, not {users!r}")
    for name, password in users.items():
        if not isinstance(name, str):
            raise TypeError(f"users: a name must be a string, not {name!r}")
        if not isinstance(password, str):
            raise TypeError(f"users: the password of {name!r} must be a string, "
                            f"not {password!r}")


@dataclass(frozen=True)
class ReceivedMessage:
    """A message the server accepted, as the client sent it."""

    #: The envelope sender; ``""`` for the null sender ``<>``.
    sender: str
    #: The envelope recipients it was accepted for, in RCPT order.
    recipients: list[str]
    #: The message as received (dot-unstuffed, CRLF line endings).
    data: bytes = field(repr=False)
    #: The name the client gave in HELO, EHLO or LHLO.
    helo: str | None = None
    #: Who the client authenticated as, if it did.
    authenticated_as: str | None = None
    #: What TLS was in use, if any.
    tls: TLSInfo | None = None

    @cached_property
    def message(self) -> EmailMessage:
        """The message parsed with the ``email`` package's default (modern) policy.

        Its line endings are ``\\n``, as the application's ``EmailMessage`` had them
        before it was sent (SMTP carries CRLF; ``data`` keeps the bytes as they came).
        """
        data = self.data.replace(b"\r\n", b"\n")
        parsed = BytesParser(policy=email.policy.default).parsebytes(data)
        assert isinstance(parsed, EmailMessage)
        return parsed


class _Mailbox:
    """The messages received so far, shared with the server's thread."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._messages: list[ReceivedMessage] = []
        #: Called in the server's thread after each message (wakes trio waiters).
        self.on_arrival: Callable[[], object] | None = None

    def add(self, message: ReceivedMessage) -> None:
        with self._changed:
            self._messages.append(message)
            self._changed.notify_all()
        if self.on_arrival is not None:
            self.on_arrival()

    def snapshot(self) -> list[ReceivedMessage]:
        with self._changed:
            return list(self._messages)

    def clear(self) -> None:
        with self._changed:
            self._messages.clear()

    def wait(self, count: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self._messages) >= count, timeout)

    def timed_out(self, count: int, timeout: float) -> TimeoutError:
        got = len(self.snapshot())
        return TimeoutError(f"{got} message(s) arrived within {timeout:g} s; "
                            f"waited for {count}")


class _TestServerBase:
    """What both kinds of test server share: options, messages, failures, TLS."""

    def __init__(self, options: ServerOptions | None = None, **settings: Any) -> None:
        if options is not None and settings:
            raise TypeError("give either ServerOptions or keyword settings, not both")
        #: The options it runs with.
        self.options = options if options is not None else ServerOptions(**settings)
        #: Where it listens (``port`` is known once it has started).
        self.host = self.options.host
        self.port = 0
        #: The PEM file of the CA that signed the server's certificate (with ``tls``).
        self.ca_file: Path | None = None
        self._mailbox = _Mailbox()
        self._script = FailureScript()
        self._ca_directory: tempfile.TemporaryDirectory[str] | None = None
        self._server: Server | None = None

    @property
    def messages(self) -> list[ReceivedMessage]:
        """The messages accepted so far, oldest first (a copy)."""
        return self._mailbox.snapshot()

    def clear(self) -> None:
        """Forget the messages received so far."""
        self._mailbox.clear()

    def fail_next(self, command: str, code: int, text: str | Sequence[str] | None = None,
                  enhanced: str | None = None, *, address: str | None = None,
                  times: int = 1) -> None:
        """Answer the next ``times`` ``command`` steps (for ``address`` only, if given)
        with ``code``: 4xx is a temporary failure, 5xx a permanent one.

        ``command`` is one of ``COMMANDS``; ``text`` may start with the enhanced code,
        as in ``fail_next("RCPT", 450, "4.2.1 mailbox busy")``. ``address`` is the
        sender at MAIL, the recipient at RCPT and MESSAGE (``@domain``: any address at
        that domain; ``<>``: the null sender). A bad rule raises ``ValueError`` here.
        """
        self._script.add(command, code, text, enhanced, address=address, times=times)

    def fail_always(self, command: str, code: int,
                    text: str | Sequence[str] | None = None, enhanced: str | None = None,
                    *, address: str | None = None) -> None:
        """Like ``fail_next()``, every time, until ``clear_failures()``."""
        self._script.add(command, code, text, enhanced, address=address, times=None)

    def clear_failures(self) -> None:
        """Forget every scripted failure: accept everything again."""
        self._script.clear()

    def client_context(self) -> ssl.SSLContext:
        """A client-side TLS context that trusts this server's certificate."""
        if self.ca_file is None:
            raise RuntimeError("this test server has no TLS (options tls=None)")
        return ssl.create_default_context(cafile=str(self.ca_file))

    async def _run(self, config: Config, *, task_status: trio.TaskStatus[Server]) -> None:
        """``serve()`` with the recording handler, until the server has shut down."""
        implicit = self.options.tls == "implicit"
        await serve(config, None if implicit else 0, host=self.host,
                    handler=partial(_handle, mailbox=self._mailbox, script=self._script),
                    tls_port=0 if implicit else None, task_status=task_status)

    def _config(self) -> Config:
        """The server's configuration (and its certificate, made now): called before
        anything runs, so that a missing extra is a plain error from ``start()``."""
        options = self.options
        users = dict(options.users or {})
        tls = self._tls_context() if options.tls else None
        return Config(
            hostname=options.hostname, lmtp=options.lmtp, tls=tls,
            authenticator=partial(_authenticate, users) if users else None,
            auth_requires_tls=tls is not None, require_auth=bool(users),
            max_message_size=options.max_size,
            # Every client of a test comes from loopback: only the overall limit counts.
            max_connections_per_ip=1000,
        )

    def _tls_context(self) -> ssl.SSLContext:
        try:
            import trustme
        except ImportError as exc:
            raise RuntimeError(f"a test server with TLS needs trustme: {_EXTRA}") from exc
        ca = trustme.CA()
        names = dict.fromkeys([self.options.hostname, self.host, "localhost", "127.0.0.1"])
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*names).configure_cert(context)
        self._ca_directory = tempfile.TemporaryDirectory(prefix="trio_smtpd-ca-")
        self.ca_file = Path(self._ca_directory.name) / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        return context

    def _remove_files(self) -> None:
        if self._ca_directory is not None:
            self._ca_directory.cleanup()
            self._ca_directory = None


class SMTPTestServer(_TestServerBase):
    """A test server running in the caller's trio program.

    Start it with ``await SMTPTestServer.start(nursery, lmtp=True, ...)`` (or ``async
    with open_smtp_test_server(...)``) and stop it with ``await server.aclose()``.
    """

    def __init__(self, options: ServerOptions | None = None, **settings: Any) -> None:
        super().__init__(options, **settings)
        self._arrivals = trio.lowlevel.ParkingLot()
        self._mailbox.on_arrival = self._arrivals.unpark_all
        self._stopped = trio.Event()

    @classmethod
    async def start(cls, nursery: trio.Nursery, options: ServerOptions | None = None,
                    **settings: Any) -> Self:
        """A new test server, listening, its tasks in ``nursery``."""
        server = cls(options, **settings)
        try:
            await nursery.start(server._serve, server._config())
        except BaseException:
            server._remove_files()
            raise
        return server

    async def _serve(self, config: Config, *, task_status: trio.TaskStatus[None]) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._server = await nursery.start(self._run, config)
                self.port = self._server.port or 0
                task_status.started()
        finally:
            self._stopped.set()

    async def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Wait until ``count`` messages have arrived in all; returns them all.

        Raises ``TimeoutError`` if they have not within ``timeout`` seconds.
        """
        with trio.move_on_after(timeout):
            while len(self._mailbox.snapshot()) < count:
                await self._arrivals.park()
            return self.messages
        raise self._mailbox.timed_out(count, timeout)

    async def aclose(self) -> None:
        """Shut down: stop listening, end every connection, and return once every task
        of the server has finished and its files are gone."""
        if self._server is not None:
            self._server.shutdown(_SHUTDOWN_GRACE)
            await self._stopped.wait()
        self._remove_files()


@asynccontextmanager
async def open_smtp_test_server(options: ServerOptions | None = None,
                                **settings: Any) -> AsyncIterator[SMTPTestServer]:
    """``async with open_smtp_test_server(tls="starttls") as server:``, for trio code
    outside pytest's fixtures; closed at the end of the block."""
    async with trio.open_nursery() as nursery:
        server = await SMTPTestServer.start(nursery, options, **settings)
        try:
            yield server
        finally:
            with trio.CancelScope(shield=True):
                await server.aclose()


class ThreadedSMTPTestServer(_TestServerBase):
    """A test server running trio in a thread of its own, for synchronous tests.

    ``with ThreadedSMTPTestServer(users={"alice": "secret"}) as server:`` (or
    ``start()`` and ``close()``); ``close()`` returns once the thread has ended.
    """

    def __init__(self, options: ServerOptions | None = None, **settings: Any) -> None:
        super().__init__(options, **settings)
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None

    def start(self) -> Self:
        """Start the thread and return once the server listens (or raise its error)."""
        if self._thread is not None:
            raise RuntimeError("this test server was already started")
        config = self._config()
        started = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, args=(config, started),
                                        name="trio_smtpd test server", daemon=True)
        self._thread.start()
        started.wait()
        if self._error is not None:
            self._thread.join()
            self._remove_files()
            raise self._error
        return self

    def _thread_main(self, config: Config, started: threading.Event) -> None:
        try:
            trio.run(self._main, config, started)
        except BaseException as exc:  # handed to the test's thread by start() or close()
            self._error = exc
        finally:
            started.set()

    async def _main(self, config: Config, started: threading.Event) -> None:
        self._stop = stop = trio.Event()
        async with trio.open_nursery() as nursery:
            server = self._server = await nursery.start(self._run, config)
            self.port = server.port or 0
            self._token = trio.lowlevel.current_trio_token()
            started.set()
            await stop.wait()
            server.shutdown(_SHUTDOWN_GRACE)

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[ReceivedMessage]:
        """Block until ``count`` messages have arrived in all; returns them all.

        Raises ``TimeoutError`` if they have not within ``timeout`` seconds.
        """
        if not self._mailbox.wait(count, timeout):
            raise self._mailbox.timed_out(count, timeout)
        return self.messages

    def close(self, timeout: float = 30.0) -> None:
        """Shut the server down and wait for its thread; raises an error the server
        had while running, if it had one."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._token is not None and self._stop is not None:
            # RunFinishedError: it has stopped already (and _error says why).
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"the test server's thread did not stop within {timeout} s")
        self._remove_files()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


# ---------------------------------------------------------------------- the handler


async def _handle(session: Session, *, mailbox: _Mailbox, script: FailureScript) -> None:
    """Accept every step the script does not fail; record each message before its 250.
    A failed STARTTLS handshake ends the session quietly."""
    async for decision in session:
        if isinstance(decision, Message):
            _finish(decision.transaction, mailbox, script)
            continue
        if isinstance(decision, TLSFailed):
            # A report, not a step: the client has gone and sees the failure itself (a
            # client that does not trust the test CA is a normal thing to test).
            continue
        reply = script.take(*_step(decision))
        if reply is None:
            decision.accept()
        elif reply.is_transient:
            decision.tempfail(reply.code, reply.lines, reply.enhanced)
        else:
            decision.reject(reply.code, reply.lines, reply.enhanced)


def _step(decision: Decision) -> tuple[str, str | None]:
    """The script's name for a decision, and the address it concerns."""
    if isinstance(decision, Mail):
        return "MAIL", str(decision.sender) if decision.sender else ""
    if isinstance(decision, Rcpt):
        return "RCPT", str(decision.address)
    kinds: dict[type[Decision], str] = {Connect: "CONNECT", Hello: "HELO", Auth: "AUTH",
                                        DataStart: "DATA"}
    return kinds[type(decision)], None


def _finish(tx: Transaction, mailbox: _Mailbox, script: FailureScript) -> None:
    recipients = [str(r.address) for r in tx.recipients]
    replies = script.take_message(recipients)
    delivered = [r for r, reply in zip(recipients, replies, strict=True) if reply is None]
    if not tx.lmtp and len(delivered) < len(recipients):
        _refuse(tx, next(reply for reply in replies if reply is not None))
        return
    if delivered:
        info = tx.info
        mailbox.add(ReceivedMessage(str(tx.sender) if tx.sender else "", delivered,
                                    tx.data, info.helo, info.authenticated_as, info.tls))
    if not tx.lmtp:
        tx.accept()
        return
    for index, reply in enumerate(replies):  # LMTP: one answer per recipient
        if reply is None:
            tx.accept_recipient(index)
        elif reply.is_transient:
            tx.tempfail_recipient(index, reply.code, reply.lines, reply.enhanced)
        else:
            tx.reject_recipient(index, reply.code, reply.lines, reply.enhanced)


def _refuse(tx: Transaction, reply: Reply) -> None:
    if reply.is_transient:
        tx.tempfail(reply.code, reply.lines, reply.enhanced)
    else:
        tx.reject(reply.code, reply.lines, reply.enhanced)


async def _authenticate(users: dict[str, str], credentials: Credentials) -> str | None:
    secret = users.get(credentials.username)
    if secret is None or not credentials.check(secret):
        return None
    return credentials.username
