"""Serving SMTP/LMTP with trio: listeners, one task per connection, limits, shutdown.

``serve()`` has the shape of ``trio.serve_listeners``: start it with ``nursery.start()``
and it reports a ``Server`` once it is listening. Connection tasks live in a nursery the
server owns and shields from outside cancellation, so that cancelling ``serve()`` (or
calling ``Server.shutdown()``) is graceful: accepting stops at once, idle sessions are
told 421, sessions in a transaction get the grace period to finish it (their next command
is then answered 421), and only then is anything cut off. A 250 is only ever sent after the
application accepted the message, so no acknowledged message is lost by shutting down.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import trio

from ._accept import Accepted, Acceptor, ListenerAcceptor, SocketAcceptor, accept_loop
from ._appdeadline import AppDeadline
from ._certificates import prepare_client_certificates
from ._connection import ServerConnection
from ._exchange import Exchange, ExchangeTimeouts
from ._idlepool import IdlePool
from ._info import SessionInfo
from ._limits import ConnectionLimits
from ._metrics import Metrics, counting_observer, limit_name
from ._proxy import ProxiedStream, ProxyHeaderError, socket_addresses
from ._ratelimit import RateLimit
from ._replies import Reply
from ._securitylog import format_peer, log_security_event
from ._session import Session, forward_transactions
from ._sessionconfig import for_connection, varies
from ._settings import Config
from ._socket_transport import SocketTransport
from ._tls import handshake, record_server_names, tls_info
from ._transactions import TransactionQueue, Transactions
from ._transport import StreamTransport, Transport
from ._watchdog import Watchdog

__all__ = ["Handler", "Server", "serve"]

log = logging.getLogger("trio_smtpd")

Handler = Callable[[Session], Awaitable[None]]

_SHUTTING_DOWN = Reply(421, "Service shutting down, try again later", "4.3.2")
_CRASHED = Reply(421, "Local error, closing connection", "4.3.0")
# How long sessions cut off at the end of the grace period get to say 421 and close.
_CUT_OFF_WAIT = 5.0
# One name for every connection task (trio would format a new string for each).
_TASK_NAME = "trio_smtpd connection"


class Server:
    """A running server: its listeners, its transactions, and its shutdown."""

    def __init__(self, config: Config, handler: Handler | None) -> None:
        #: The configuration it was started with.
        self.config = config
        self._protocol = config.protocol_config()
        # Per-connection settings (XCLIENT's trusted proxies, TLS-dependent mechanisms).
        self._varies = varies(config)
        if config.tls is not None:
            record_server_names(config.tls)
            if config.client_certificates != "none":
                prepare_client_certificates(config.tls, config.client_certificates,
                                            config.client_ca)
        #: Everything it listens on.
        self.listeners: list[trio.abc.Listener[trio.abc.Stream]] = []
        self._handler = handler or forward_transactions
        self._queue = TransactionQueue()
        rate = None if config.max_connection_rate is None else RateLimit(
            config.max_connection_rate, config.connection_rate_period)
        self._limits = ConnectionLimits(config.max_connections, config.max_connections_per_ip,
                                        rate, trio.current_time)
        self._sessions: set[Session] = set()
        self._watchdog = Watchdog()
        self._idle_pool = IdlePool()
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}"
        self._stop = trio.Event()
        self._drained = trio.Event()
        self._grace = trio.CancelScope(deadline=math.inf)
        self._nursery: trio.Nursery | None = None
        self._timeouts = ExchangeTimeouts.of(config.timeouts)  # (shared by its sessions)

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
    def _direct(self) -> bool:
        """Drive plain sockets directly (a seam for the tests of both transports)."""
        return self.config.direct_sockets

    @property
    def connections(self) -> int:
        """Connections held now, whatever their stage (PROXY header, TLS, session)."""
        return self._limits.count

    @property
    def pending_decisions(self) -> int:
        """Decisions handed to the application and not answered yet (messages waiting
        in ``transactions()`` included): counted when asked, for a metrics gauge."""
        return sum(1 for s in self._sessions if s._current is not None
                   and not s._current.decided)

    def transactions(self) -> Transactions:
        """Every complete transaction from every connection, in arrival order.

        Use it as ``async with server.transactions() as transactions: async for tx in
        transactions: ...``. Each client waits for its final reply until you answer its
        transaction, for ``Timeouts.message_decision`` at most (then 451). Once no
        iterator is left open, messages are answered 451 at once; leaving the ``async
        with`` block by an exception also answers 451 for each transaction you took and
        left unanswered. The iteration ends when the server has shut down.
        """
        return self._queue.consumer()

    @property
    def shutting_down(self) -> bool:
        """True once a shutdown has begun."""
        return self._stop.is_set()

    def shutdown(self, grace: float | None = None) -> None:
        """Shut down gracefully, within ``grace`` seconds (``Timeouts.shutdown_grace``
        by default); called again with a shorter grace (0: now), it hurries up."""
        grace = self.config.timeouts.shutdown_grace if grace is None else grace
        self._grace.deadline = min(self._grace.deadline, trio.current_time() + grace)
        if not self._stop.is_set():
            self._stop.set()
            for session in self._sessions:
                session._exchange.close_when_idle(_SHUTTING_DOWN)

    async def wait_closed(self) -> None:
        """Wait until the server has shut down and every connection is closed."""
        await self._drained.wait()

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
                        accepting.start_soon(self._accept, listener, False)
                    for listener in tls_listeners:
                        accepting.start_soon(self._accept, listener, True)
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
            self._nursery = nursery
            await nursery.start(self._watchdog.run)
            await nursery.start(self._idle_pool.run)
            task_status.started()
            await self._drained.wait()
            nursery.cancel_scope.cancel()

    async def _drain(self) -> None:
        if not self._stop.is_set():
            self.shutdown()  # (cancelled from outside)
        for listener in self.listeners:
            with trio.move_on_after(1):
                await listener.aclose()
        with self._grace:
            await self._all_closed()
        if self._sessions:
            log.warning("shutdown: cutting off %d session(s) after the grace period",
                        len(self._sessions))
            for session in list(self._sessions):
                session._cut_off(_SHUTTING_DOWN)
            with trio.move_on_after(_CUT_OFF_WAIT):
                await self._all_closed()
        self._queue.end()
        self._drained.set()

    async def _all_closed(self) -> None:
        while self._limits.count:
            await trio.sleep(0.05)

    async def _accept(self, listener: trio.abc.Listener[trio.abc.Stream],
                      implicit_tls: bool) -> None:
        acceptor: Acceptor
        if type(listener) is trio.SocketListener and not implicit_tls and self._direct:
            acceptor = SocketAcceptor(listener)
        else:
            acceptor = ListenerAcceptor(listener)
        try:
            await accept_loop(acceptor, lambda accepted: self._spawn(accepted, implicit_tls))
        finally:
            if isinstance(acceptor, SocketAcceptor):
                acceptor.close()

    def _spawn(self, accepted: Accepted, implicit_tls: bool) -> None:
        """Count a new connection against the limits and start its task (or refuse it)."""
        if isinstance(accepted, tuple):
            peer, local = socket_addresses(*accepted)
        elif isinstance(accepted, ProxiedStream):
            peer = local = None  # (the header will say who the client is)
        else:
            peer, local = socket_addresses(accepted)
        ip = peer[0] if peer else None
        refusal = self._limits.admit(ip)
        assert self._nursery is not None
        metrics = self.config.metrics
        if refusal is not None:
            _log_refusal(peer, refusal)
            if metrics is not None:
                metrics.connection_refused(limit_name(refusal))
            _refuse(accepted, refusal, self._nursery)
            return
        if metrics is not None:
            metrics.connection_accepted()
        self._nursery.start_soon(self._connection, accepted, implicit_tls, peer, local,
                                 name=_TASK_NAME)

    async def _connection(self, accepted: Accepted, implicit_tls: bool,
                          peer: tuple[str, int] | None, local: tuple[str, int] | None) -> None:
        # The handler runs in this very frame, not in a helper: one suspended call fewer
        # for every idle connection (benchmarks/README.md, "Memory per idle connection").
        counted = peer[0] if peer else None
        metrics = self.config.metrics
        started = trio.current_time() if metrics is not None else 0.0
        outcome = "error"
        session: Session | str | None = None
        try:
            session, counted = await self._open(accepted, implicit_tls, peer, local)
            # What accept() gave lives on in the session; this frame, which every idle
            # connection keeps, need not hold the raw address (benchmarks/README.md).
            del accepted, peer, local
            if isinstance(session, str):
                outcome = session
                return
            self._sessions.add(session)
            try:
                # The application's time to decide, from its first decision on.
                with session._app.open(session.config.timeouts.decision) as scope:
                    try:
                        await self._handler(session)
                    except Exception:
                        log.exception("session %s: application handler raised",
                                      session.info.id)
                        session._handler_raised()
                await session._after_handler(scope)
            except Exception:
                log.exception("session %s: internal error", session.info.id)
                with trio.CancelScope(shield=True):
                    await session._exchange.close(_CRASHED)
            finally:
                self._sessions.discard(session)
                if not session._exchange.closed:  # cancelled: cut off, no waiting
                    with trio.CancelScope(deadline=trio.current_time() + 1, shield=True):
                        await session._exchange.close()
                outcome = session._exchange.ending or outcome
        finally:
            self._limits.release(counted)
            if metrics is not None:
                _count_closed(metrics, outcome, trio.current_time() - started, session)

    async def _open(self, accepted: Accepted, implicit_tls: bool,
                    peer: tuple[str, int] | None, local: tuple[str, int] | None
                    ) -> tuple[Session | str, str | None]:
        """The session of a new connection (or, if it did not get that far, why not: a
        ``Metrics.session_closed`` outcome), and the address it counts towards."""
        counted = peer[0] if peer else None
        if isinstance(accepted, ProxiedStream):
            addresses = await self._read_proxy_header(accepted)
            if isinstance(addresses, str):
                return addresses, counted
            peer, local = addresses
            counted = peer[0] if peer else None
        info = SessionInfo(id=f"{self._prefix}.{next(self._ids)}", peer=peer, local=local,
                           lmtp=self.config.lmtp, started=datetime.now(UTC))
        opened = await self._transport(accepted, implicit_tls, info)
        if opened is None:
            return "tls_failed", counted
        session = self._new_session(*opened, info)
        log.debug("session %s: connect from %s", info.id, info.peer)
        return session, counted

    async def _read_proxy_header(self, stream: ProxiedStream
                                 ) -> tuple[tuple[str, int] | None, tuple[str, int] | None] | str:
        try:
            await stream.read_header()
        except (ProxyHeaderError, trio.BrokenResourceError) as exc:
            log.warning("PROXY protocol: %s; connection closed", exc)
            await trio.aclose_forcefully(stream)
            return "proxy_error"
        if stream.peer is not None:
            refusal = self._limits.admit_address(stream.peer[0])
            if refusal is not None:
                _log_refusal(stream.peer, refusal)
                if self.config.metrics is not None:
                    self.config.metrics.connection_refused(limit_name(refusal))
                await _refuse_stream(stream, refusal)
                return "refused"
        return stream.peer, stream.local

    async def _transport(self, accepted: Accepted, implicit_tls: bool, info: SessionInfo
                         ) -> tuple[Transport, bytes] | None:
        """The connection's transport (after the implicit TLS handshake, if there is
        one) and the client's bytes already read past a PROXY header."""
        if isinstance(accepted, tuple):
            return SocketTransport(accepted[0], self._watchdog, self._idle_pool), b""
        stream: trio.abc.Stream = accepted
        early = b""
        if isinstance(accepted, ProxiedStream) and not implicit_tls:
            stream, early = accepted.unwrap()
        if implicit_tls:
            tls_stream = await self._implicit_tls(stream, info)
            return None if tls_stream is None else (StreamTransport(tls_stream), b"")
        if type(stream) is trio.SocketStream and self._direct:
            sock = stream.socket
            plain = socket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach())
            return SocketTransport(plain, self._watchdog, self._idle_pool), early
        return StreamTransport(stream), early

    async def _implicit_tls(self, stream: trio.abc.Stream,
                            info: SessionInfo) -> trio.SSLStream[trio.abc.Stream] | None:
        context = self.config.tls
        assert context is not None
        tls_stream = trio.SSLStream(stream, context, server_side=True)
        if await handshake(tls_stream, self.config.timeouts.tls_handshake, info,
                           self.config.metrics, "implicit"):
            await trio.aclose_forcefully(stream)
            return None
        info.tls = tls_info(tls_stream)
        return tls_stream

    def _new_session(self, transport: Transport, early: bytes, info: SessionInfo
                     ) -> Session:
        timeouts = self.config.timeouts
        cap = math.inf if timeouts.session is None else trio.current_time() + timeouts.session
        protocol = for_connection(self.config, info) if self._varies else self._protocol
        conn = ServerConnection(protocol, tls_active=info.tls is not None)
        if early:
            conn.receive_data(early)
        app_deadline = AppDeadline(cap, margin=self._watchdog.resolution)
        exchange = Exchange(conn, transport, self._timeouts, cap, info.id, app_deadline)
        session = Session(exchange, info, self.config, transactions=self._queue,
                          app_deadline=app_deadline)
        if self.config.metrics is not None:  # (refusals are heard by an observer)
            conn.observer = counting_observer(self.config.metrics, None)
        if self._stop.is_set():  # accepted just before the listeners closed
            exchange.close_when_idle(_SHUTTING_DOWN)
        return session


def _count_closed(metrics: Metrics, outcome: str, seconds: float,
                  session: Session | str | None) -> None:
    """Report a connection's end (and its message, if the client left during one)."""
    if isinstance(session, Session) and session.transaction is not None:
        metrics.transaction(session.transaction, "aborted")
    metrics.session_closed(outcome, seconds)


def _log_refusal(peer: tuple[str, int] | None, refusal: Reply) -> None:
    log_security_event("connection_refused", "refused a connection from %s: %s",
                       format_peer(peer), refusal.text, peer=peer, limit=limit_name(refusal))


def _refuse(accepted: Accepted, reply: Reply, nursery: trio.Nursery) -> None:
    if isinstance(accepted, tuple):
        # One try, no wait: a client flooding us with connections gets no more.
        sock = accepted[0]
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.send(reply.to_bytes())
        sock.close()
        return
    nursery.start_soon(_refuse_stream, accepted, reply)


async def _refuse_stream(stream: trio.abc.Stream, reply: Reply) -> None:
    with trio.move_on_after(1), contextlib.suppress(trio.BrokenResourceError,
                                                     trio.ClosedResourceError):
        await stream.send_all(reply.to_bytes())
    await trio.aclose_forcefully(stream)


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
    if (tls_listeners or tls_port is not None) and config.tls is None:
        raise ValueError("implicit TLS listeners need Config.tls")
    if not (listeners or tls_listeners) and port is None and tls_port is None:
        raise ValueError("nothing to listen on: give a port or listeners")
    # Built (and so checked) before any port is bound: a server that cannot start must
    # not leave a port taken.
    server = Server(config, handler)
    opened = await _open_tcp(port, host)
    try:
        opened_tls = await _open_tcp(tls_port, host)
    except BaseException:
        for listener in opened:
            await trio.aclose_forcefully(listener)
        raise
    await server._run([*listeners, *opened], [*tls_listeners, *opened_tls], task_status)


async def _open_tcp(port: int | None, host: str | bytes | None
                    ) -> list[trio.SocketListener]:
    return [] if port is None else await trio.open_tcp_listeners(port, host=host)
