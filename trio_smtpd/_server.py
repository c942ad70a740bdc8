"""Serving SMTP/LMTP with trio: listeners, one task per connection, limits, shutdown.

``serve()`` has the shape of ``trio.serve_listeners``: start it with ``nursery.start()``
and it reports a ``Server`` once it is listening. Connection tasks live in a nursery the
server owns and shields from outside cancellation, so that cancelling ``serve()`` (or
calling ``Server.shutdown()``) is graceful: accepting stops at once, idle sessions are
told 421, sessions in the middle of a transaction get the grace period to finish, and
only then is anything cut off. A reply of 250 is only ever sent after the application
accepted the message, so no acknowledged message is lost by shutting down.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import trio

from ._accept import RESOURCE_ERRORS, accept_sockets
from ._config import ProtocolConfig
from ._decisions import Message, SessionInfo, Transaction
from ._idlepool import IdlePool
from ._proxy import ProxiedStream, ProxyHeaderError, socket_addresses
from ._replies import Reply
from ._sasl import MECHANISMS, Credentials
from ._session import Session, handshake, record_server_names, tls_info
from ._transport import SocketTransport, Transport, transport_for
from ._watchdog import Watchdog

__all__ = ["Config", "Handler", "Server", "Timeouts", "forward_transactions", "serve"]

log = logging.getLogger("trio_smtpd")

Handler = Callable[[Session], Awaitable[None]]
Authenticator = Callable[[Credentials], Awaitable[str | None]]

_SHUTTING_DOWN = Reply(421, "Service shutting down, try again later", "4.3.2")
_TOO_MANY = Reply(421, "Too many connections, try again later", "4.7.0")
_TOO_MANY_FROM_YOU = Reply(421, "Too many connections from your address", "4.7.0")
_CRASHED = Reply(421, "Local error, closing connection", "4.3.0")
# One name for every connection task (trio would format a new string for each).
_TASK_NAME = "trio_smtpd connection"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Every timeout, in seconds, each for one kind of wait; the server's watchdog ends a
    wait on the client with 421 and cancels an application sitting on a decision."""

    #: Waiting for the next command (RFC 5321 4.5.3.2.7: at least 5 minutes).
    command: float = 300.0
    #: Waiting for each read of message data (RFC 5321 4.5.3.2.5: 3 minutes).
    data_block: float = 180.0
    #: The application deciding about a message (RFC 5321 4.5.3.2.6, the client's
    #: DATA termination wait: 10 minutes); then 451.
    message_decision: float = 600.0
    #: The application deciding an envelope step (connect, HELO, AUTH, MAIL, RCPT, DATA).
    decision: float = 300.0
    tls_handshake: float = 60.0
    #: Writing replies to a client that does not read them.
    write: float = 300.0
    #: The whole session, whatever it does; None for no cap.
    session: float | None = 3600.0
    #: Graceful shutdown: how long transactions in progress get to finish.
    shutdown_grace: float = 30.0


@dataclass(frozen=True)
class Config:
    """Everything a server needs; the protocol options are those of ``ProtocolConfig``."""

    hostname: str = field(default_factory=socket.gethostname)
    lmtp: bool = False
    #: Enables STARTTLS (and implicit-TLS listeners).
    tls: ssl.SSLContext | None = None
    #: Checks SASL credentials: returns the authenticated identity, or None to refuse.
    authenticator: Authenticator | None = None
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")
    auth_requires_tls: bool = True
    require_tls: bool = False
    require_auth: bool = False
    max_message_size: int | None = 32 * 2**20
    max_recipients: int = 100
    max_connections: int = 1000
    max_connections_per_ip: int = 50
    timeouts: Timeouts = field(default_factory=Timeouts)
    #: Every other protocol option (limits, extensions, bare_line_endings...); the fields
    #: above override the same-named fields of this one.
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)

    def __post_init__(self) -> None:
        unknown = [m for m in self.auth_mechanisms if m not in MECHANISMS]
        if unknown:
            raise ValueError(f"unsupported SASL mechanisms: {unknown}")
        self.protocol_config()  # fail now, not at the first connection

    def protocol_config(self) -> ProtocolConfig:
        return replace(
            self.protocol,
            hostname=self.hostname,
            lmtp=self.lmtp,
            tls_available=self.tls is not None,
            auth_mechanisms=self.auth_mechanisms if self.authenticator else (),
            auth_requires_tls=self.auth_requires_tls,
            require_tls=self.require_tls,
            require_auth=self.require_auth,
            max_message_size=self.max_message_size,
            max_recipients=self.max_recipients,
        )


class Server:
    """A running server: its listeners, its transactions, and its shutdown."""

    def __init__(self, config: Config, handler: Handler | None) -> None:
        self.config = config
        self.protocol_config = config.protocol_config()
        if config.tls is not None:
            record_server_names(config.tls)
        self.listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
        self._handler = handler or forward_transactions
        self._tx_send, self._tx_receive = trio.open_memory_channel[Transaction](0)
        self._sessions: set[Session] = set()
        #: Enforces every session's deadlines (see ``_watchdog.py``).
        self.watchdog = Watchdog(self._sessions)
        #: Where connections idle for a while wait, in less memory (see ``_idlepool.py``).
        self.idle_pool = IdlePool()
        self._per_ip: Counter[str] = Counter()
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}"
        self._stop = trio.Event()
        self._drained = trio.Event()
        self._conn_nursery: trio.Nursery | None = None

    @property
    def port(self) -> int | None:
        """The port of the first TCP listener (handy after binding port 0)."""
        for listener in self.listeners:
            inner = getattr(listener, "transport_listener", listener)
            if isinstance(inner, trio.SocketListener) and inner.socket.family in (
                    socket.AF_INET, socket.AF_INET6):
                return int(inner.socket.getsockname()[1])
        return None

    @property
    def connections(self) -> int:
        return len(self._sessions)

    def transactions(self) -> AsyncIterator[Transaction]:
        """Every complete transaction from every connection, in arrival order.

        Clients wait for their final reply until the transaction is answered (or the
        message decision timeout passes: then 451).
        """
        return self._tx_receive.__aiter__()

    @property
    def shutting_down(self) -> bool:
        return self._stop.is_set()

    def shutdown(self) -> None:
        """Begin a graceful shutdown (the grace period is ``Timeouts.shutdown_grace``)."""
        self._stop.set()

    async def wait_closed(self) -> None:
        await self._drained.wait()

    async def deliver(self, transaction: Transaction) -> None:
        """Hand a transaction to ``transactions()`` and wait for its answer (bounded).

        Unanswered (nobody iterating, the iterator closed, the server shut down, or the
        message decision timeout), the message gets its default, 451.
        """
        with trio.move_on_after(self.config.timeouts.message_decision):
            try:
                await self._tx_send.send(transaction)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            await transaction._done.wait()

    # ------------------------------------------------------------------ running

    async def _run(self, listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
                   tls_listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
                   task_status: trio.TaskStatus[Server]) -> None:
        self.listeners = [*listeners, *tls_listeners]
        async with trio.open_nursery() as nursery:
            await nursery.start(self._connection_nursery)
            try:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(self._accept_loop, listener, False)
                    for listener in tls_listeners:
                        accepting.start_soon(self._accept_loop, listener, True)
                    task_status.started(self)
                    await self._stop.wait()
                    accepting.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    await self._drain()

    async def _connection_nursery(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            # Shielded: connections end by our graceful shutdown, not by outside cancels.
            nursery.cancel_scope.shield = True
            self._conn_nursery = nursery
            await nursery.start(self.watchdog.run)
            await nursery.start(self.idle_pool.run, lambda: self._sessions)
            task_status.started()
            await self._drained.wait()
            nursery.cancel_scope.cancel()

    async def _drain(self) -> None:
        for listener in self.listeners:
            with trio.move_on_after(1):
                await listener.aclose()
        for session in list(self._sessions):
            session.shut_down(_SHUTTING_DOWN)
        with trio.move_on_after(self.config.timeouts.shutdown_grace):
            while self._sessions:
                await trio.sleep(0.05)
        if self._sessions:
            log.warning("shutdown: cutting off %d session(s) after the grace period",
                        len(self._sessions))
        await self._tx_send.aclose()
        self._drained.set()

    async def _accept_loop(self, listener: trio.abc.Listener[trio.abc.Stream],
                           implicit_tls: bool) -> None:
        if type(listener) is trio.SocketListener and not implicit_tls:
            await accept_sockets(listener, self._spawn_socket)
            return
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in RESOURCE_ERRORS:
                    log.error("accept failed (%s); pausing", exc)
                    await trio.sleep(0.1)
                    continue
                raise
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            assert self._conn_nursery is not None
            self._conn_nursery.start_soon(self._handle_connection, stream, implicit_tls,
                                          name=_TASK_NAME)

    def _spawn_socket(self, sock: socket.socket, peer: object, local: object) -> None:
        assert self._conn_nursery is not None
        self._conn_nursery.start_soon(self._handle_connection, sock, False, (peer, local),
                                      name=_TASK_NAME)

    async def _handle_connection(self, connection: trio.abc.Stream | socket.socket,
                                 implicit_tls: bool,
                                 addresses: tuple[object, object] = (None, None)) -> None:
        # One flat frame around the handler: an idle connection is a chain of suspended
        # calls, and each costs memory.
        session = await self._open_session(connection, implicit_tls, addresses)
        if session is None:
            return
        try:
            raised = False
            if self._handler is forward_transactions:
                # Our own handler answers every decision at once but messages, whose wait
                # for transactions() is bounded by a timeout of its own: no cancel scope
                # needed to stop it (it would cost 650 bytes per idle connection).
                await forward_transactions(session)
            else:
                with trio.CancelScope() as app_scope:
                    session.app_scope = app_scope
                    try:
                        await self._handler(session)
                    except Exception:
                        log.exception("session %s: application handler raised",
                                      session.info.id)
                        raised = True
                session.app_scope = None
                if app_scope.cancelled_caught:
                    log.warning("session %s: application took too long to decide",
                                session.info.id)
            if not session.closed:
                await session.finish(handler_raised=raised)
        except Exception:
            log.exception("session %s: internal error", session.info.id)
            with trio.CancelScope(shield=True):
                await session.close(_CRASHED)
        finally:
            if not session.closed:  # cancelled: cut off, without waiting on the client
                with trio.CancelScope(deadline=trio.current_time() + 1, shield=True):
                    await session.close()
            self._sessions.discard(session)
            self._release(session.info)
            log.debug("session %s: closed", session.info.id)

    async def _open_session(self, connection: trio.abc.Stream | socket.socket,
                            implicit_tls: bool,
                            addresses: tuple[object, object]) -> Session | None:
        """Check the connection against the limits and set its session up (None: refused)."""
        early = b""
        if isinstance(connection, socket.socket):
            peer, local = socket_addresses(connection, *addresses)
            stream: trio.abc.Stream | None = None
        elif isinstance(connection, ProxiedStream):
            stream = connection
            try:
                await stream.read_header()
            except (ProxyHeaderError, trio.BrokenResourceError) as exc:
                log.warning("PROXY protocol: %s; connection closed", exc)
                await trio.aclose_forcefully(connection)
                return None
            peer, local = connection.peer, connection.local
            if not implicit_tls:
                stream, early = connection.unwrap()
        else:
            stream = connection
            peer, local = socket_addresses(stream)
        info = SessionInfo(id=f"{self._prefix}.{next(self._ids)}", peer=peer, local=local,
                           lmtp=self.config.lmtp, started=datetime.now(UTC))
        ip = peer[0] if peer else ""
        refusal = None
        if len(self._sessions) >= self.config.max_connections:
            refusal = _TOO_MANY
        elif ip and self._per_ip[ip] >= self.config.max_connections_per_ip:
            refusal = _TOO_MANY_FROM_YOU
        if refusal is not None:
            log.info("session %s: refused %s: %s", info.id, peer, refusal.text)
            await _refuse(connection if stream is None else stream, refusal)
            return None
        self._per_ip[ip] += 1
        try:
            transport: Transport
            if stream is None:
                assert isinstance(connection, socket.socket)
                transport = SocketTransport(connection, self.idle_pool)
            elif implicit_tls:
                tls_stream = await self._implicit_tls(stream, info)
                if tls_stream is None:
                    self._release(info)
                    return None
                transport = transport_for(tls_stream)
            else:
                transport = transport_for(stream, self.idle_pool)
            session = Session(self, transport, info)
        except BaseException:
            self._release(info)
            raise
        if early:
            session.receive_early(early)
        self._sessions.add(session)
        log.debug("session %s: connect from %s", info.id, peer)
        return session

    def _release(self, info: SessionInfo) -> None:
        ip = info.peer[0] if info.peer else ""
        self._per_ip[ip] -= 1
        if not self._per_ip[ip]:
            del self._per_ip[ip]

    async def _implicit_tls(self, stream: trio.abc.Stream,
                            info: SessionInfo) -> trio.abc.Stream | None:
        context = self.config.tls
        if context is None:
            raise RuntimeError("implicit TLS listeners need Config.tls")
        tls_stream = trio.SSLStream(stream, context, server_side=True)
        if not await handshake(tls_stream, self.config.timeouts.tls_handshake, info.id):
            await trio.aclose_forcefully(stream)
            return None
        info.tls = tls_info(tls_stream)
        return tls_stream


async def forward_transactions(session: Session) -> None:
    """The default handler: accept every envelope step and hand each message to
    ``Server.transactions()``, waiting (bounded) for the application's answer."""
    server = session.server
    async for event in session:
        if isinstance(event, Message):
            await server.deliver(event.transaction)
            event.decided = True


async def serve(
    config: Config,
    port: int | None = None,
    *,
    host: str | bytes | None = None,
    handler: Handler | None = None,
    listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] = (),
    tls_port: int | None = None,
    tls_listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] = (),
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve SMTP (or LMTP) until cancelled or shut down; reports the ``Server``.

    ``port``/``host`` open TCP listeners (IPv4 and IPv6, as ``trio.open_tcp_listeners``);
    ``listeners`` takes any others. ``tls_port``/``tls_listeners`` do implicit TLS
    (RFC 8314) with ``config.tls``. ``handler(session)`` makes the decisions of each
    connection; without one, messages go to ``Server.transactions()``.
    """
    plain = list(listeners)
    implicit = list(tls_listeners)
    if port is not None:
        plain += await trio.open_tcp_listeners(port, host=host)
    if tls_port is not None:
        implicit += await trio.open_tcp_listeners(tls_port, host=host)
    if implicit and config.tls is None:
        raise ValueError("implicit TLS listeners need Config.tls")
    if not plain and not implicit:
        raise ValueError("nothing to listen on: give a port or listeners")
    server = Server(config, handler)
    await server._run(plain, implicit, task_status)


async def _refuse(connection: trio.abc.Stream | socket.socket, reply: Reply) -> None:
    if isinstance(connection, socket.socket):
        # One try, no wait: a client flooding us with connections gets no more.
        connection.setblocking(False)
        with contextlib.suppress(OSError):
            connection.send(reply.to_bytes())
        connection.close()
        return
    with trio.move_on_after(5):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await connection.send_all(reply.to_bytes())
    await trio.aclose_forcefully(connection)
