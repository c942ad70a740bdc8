"""``--metrics-listen HOST:PORT``: Prometheus metrics, with prometheus-client.

``/metrics`` serves the exposition (text, or OpenMetrics when asked), ``/healthz`` answers
200 while the server accepts connections and 503 otherwise. ``SinkholeMetrics`` is the
library's ``Metrics`` hook made into counters, plus what only the sinkhole sees: DNS
lookups, delivery and Maildir fsync latency, and (sampled each second) connections open
and decisions pending.

With ``--workers N`` the supervisor serves the endpoint and the workers write their
values into files (prometheus-client's multiprocess mode, in a directory the supervisor
makes and removes); every sample has a ``worker`` label (the slot, ``0`` to ``N-1``,
kept by a restarted worker; ``0`` for a single process), so one scrape target shows the
whole server and each worker's share. The HTTP server is a thread, so a slow scrape
never holds up mail.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from .. import Metrics, Reply, Server, Transaction, __version__
from ..dns import Status

__all__ = ["WORKER_ENV", "MetricsHTTPServer", "SinkholeMetrics", "WorkerMetrics"]

WORKER_ENV = "TRIO_SMTPD_WORKER"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_SAMPLE_EVERY = 1.0
# The *_created series double what is exposed for a start time nobody asks for.
disable_created_metrics()  # type: ignore[no-untyped-call]
_FAST = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)
_SESSION = (.01, .1, .5, 1, 5, 15, 60, 300, 900, 3600)
_SIZES = (1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)


def _class(reply: Reply | None) -> str:
    return "2xx" if reply is None else f"{reply.code // 100}xx"


class SinkholeMetrics(Metrics):
    """The library's counters and the sinkhole's, as Prometheus metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        #: This process's registry; None in a worker of ``--workers``, whose values go
        #: to files that the supervisor reads.
        self.registry: CollectorRegistry | None = None
        if MULTIPROC_ENV not in os.environ:
            self.registry = _with_process_collectors(registry or CollectorRegistry())
        # (TRIO_SMTPD_WORKER is "slot/count", set by the supervisor: see workers.py)
        self.worker = os.environ.get(WORKER_ENV, "0").partition("/")[0]
        self._define(self.registry)

    def _define(self, registry: CollectorRegistry | None) -> None:
        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(f"trio_smtpd_{name}", doc, ["worker", *labels], registry=registry)

        def histogram(name: str, doc: str, buckets: tuple[float, ...], *labels: str
                      ) -> Histogram:
            return Histogram(f"trio_smtpd_{name}", doc, ["worker", *labels],
                             registry=registry, buckets=buckets)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"trio_smtpd_{name}", doc, ["worker"], registry=registry,
                         multiprocess_mode="livesum")

        self.accepted = counter("connections_accepted", "Connections accepted")
        self.refused_connections = counter(
            "connections_refused", "Connections refused (421) by a limit", "limit")
        self.sessions = counter("sessions", "Connections ended, by how", "outcome")
        self.session_seconds = histogram("session_duration_seconds",
                                         "How long connections lasted", _SESSION)
        self.tls = counter("tls_handshakes", "TLS handshakes, by version or failure",
                           "mode", "version", "result")
        self.auth_results = counter("auth", "AUTH exchanges by mechanism and result",
                                    "mechanism", "result")
        self.refusals = counter("refusals", "Every 4xx/5xx reply, by command, code and "
                                "enhanced code", "command", "code", "enhanced")
        self.transactions = counter("transactions", "Transactions that reached their "
                                    "data, by outcome and reply class", "outcome",
                                    "reply_class")
        self.recipients = counter("recipients", "Recipients by final outcome (refused at "
                                  "RCPT, or the message's answer for them) and reply "
                                  "class", "outcome", "reply_class")
        self.message_bytes = histogram("message_size_bytes", "Sizes of messages accepted",
                                       _SIZES)
        self.delivery = histogram("delivery_seconds", "From a message's end to its answer "
                                  "(checks, rules, storing with fsync)", _FAST, "outcome")
        self.fsync = histogram("maildir_fsync_seconds", "Maildir fsyncs: each message's "
                               "file, then new/ (shared by concurrent messages)", _FAST,
                               "kind")
        self.dns = counter("dns_lookups", "DNS lookups by record type and result",
                           "type", "result", "cached")
        self.dns_seconds = histogram("dns_lookup_seconds", "DNS lookups not answered from "
                                     "the cache: how long they took", _FAST, "type")
        self.open = gauge("connections_open", "Connections held now (sampled each second)")
        self.pending = gauge("decisions_pending", "Decisions waiting for the handler "
                             "(sampled each second)")
        self.accepting = gauge("accepting", "1 while the server accepts connections")
        info = Gauge("trio_smtpd_build_info", "The running version", ["version"],
                     registry=registry, multiprocess_mode="max")
        info.labels(__version__).set(1)

    # ------------------------------------------------------------------ the library's

    def connection_accepted(self) -> None:
        self.accepted.labels(self.worker).inc()

    def connection_refused(self, limit: str) -> None:
        self.refused_connections.labels(self.worker, limit).inc()

    def session_closed(self, outcome: str, seconds: float) -> None:
        self.sessions.labels(self.worker, outcome).inc()
        self.session_seconds.labels(self.worker).observe(seconds)

    def tls_handshake(self, mode: str, version: str | None, failure: str | None) -> None:
        self.tls.labels(self.worker, mode, version or "", failure or "ok").inc()

    def auth(self, mechanism: str, result: str) -> None:
        self.auth_results.labels(self.worker, mechanism, result).inc()

    def refused(self, command: str, reply: Reply) -> None:
        self.refusals.labels(self.worker, command, str(reply.code),
                             reply.enhanced or "").inc()
        if command == "RCPT":
            self.recipients.labels(self.worker, "refused", _class(reply)).inc()

    def transaction(self, transaction: Transaction, outcome: str) -> None:
        worker = self.worker
        if outcome == "aborted":
            reply_class = _class(transaction.abort_reply) if transaction.abort_reply else ""
            self.transactions.labels(worker, outcome, reply_class).inc()
            self.recipients.labels(worker, outcome, reply_class).inc(
                len(transaction.recipients))
            return
        replies = transaction.replies
        self.transactions.labels(worker, outcome, "mixed" if outcome == "partial"
                                 else _class(replies[0] if replies else None)).inc()
        for reply in replies:
            kind = _class(reply)
            self.recipients.labels(worker, {"2xx": "accepted", "4xx": "tempfailed"}.get(
                kind, "rejected"), kind).inc()
        if outcome != "rejected" and outcome != "tempfailed":
            self.message_bytes.labels(worker).observe(transaction.size)
        seconds = (datetime.now(UTC) - transaction.received).total_seconds()
        self.delivery.labels(worker, outcome).observe(max(seconds, 0.0))

    # ------------------------------------------------------------------ the sinkhole's

    def dns_lookup(self, rdtype: str, status: Status, cached: bool, seconds: float) -> None:
        """``Resolver.on_lookup``."""
        self.dns.labels(self.worker, rdtype, status.value, "true" if cached else "false").inc()
        if not cached:
            self.dns_seconds.labels(self.worker, rdtype).observe(seconds)

    def maildir_fsync(self, kind: str, seconds: float) -> None:
        """``Maildir.on_fsync`` (called in a worker thread: prometheus-client locks)."""
        self.fsync.labels(self.worker, kind).observe(seconds)

    async def sample(self, server: Server, *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the gauges that read the server's state up to date, until cancelled
        (started once ``accepting`` says 1)."""
        self.accepting.labels(self.worker).set(1)
        task_status.started()
        try:
            while not server.shutting_down:
                self.open.labels(self.worker).set(server.connections)
                self.pending.labels(self.worker).set(server.pending_decisions)
                await trio.sleep(_SAMPLE_EVERY)
        finally:
            self.accepting.labels(self.worker).set(0)


def _with_process_collectors(registry: CollectorRegistry) -> CollectorRegistry:
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class WorkerMetrics:
    """The supervisor's side of ``--workers`` with metrics: the directory the workers
    write to, the registry that reads it, and the supervisor's own counters."""

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="trio-smtpd-metrics-")
        self.registry = _with_process_collectors(CollectorRegistry())
        MultiProcessCollector(self.registry, path=self.path)  # type: ignore[no-untyped-call]
        self.restarts = Counter("trio_smtpd_worker_restarts", "Workers restarted after "
                                "they died", ["worker"], registry=self.registry)
        self.alive = Gauge("trio_smtpd_workers", "Worker processes alive",
                           registry=self.registry)

    def environment(self, slot: int) -> dict[str, str]:
        return {MULTIPROC_ENV: self.path}

    def exited(self, slot: int, pid: int) -> None:
        """A worker died: its live gauges go (its counters stay, they are history)."""
        mark_process_dead(pid, self.path)  # type: ignore[no-untyped-call]
        self.restarts.labels(str(slot)).inc()

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class _BoundedHTTPServer(ThreadingHTTPServer):
    """A thread for each connection, as many as ``MAX_CONNECTIONS`` at a time (each
    with ``_Handler.timeout``): a scraper needs one or two, and a client that opens
    more, or sends half a request and waits, must not cost a thread each for ever."""

    MAX_CONNECTIONS = 32
    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(self.MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # (closed unanswered: try again later)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MetricsHTTPServer:
    """``/metrics`` and ``/healthz`` on a socket bound beforehand (as root, perhaps)."""

    def __init__(self, sock: socket.socket, registry: CollectorRegistry,
                 healthy: Callable[[], bool]) -> None:
        handler = type("Handler", (_Handler,), {"registry": registry, "healthy": healthy})
        self._server = _BoundedHTTPServer(sock.getsockname()[:2], handler,
                                          bind_and_activate=False)
        self._server.socket.close()
        self._server.socket = sock
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="trio-smtpd metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry
    healthy: Callable[[], bool]
    server_version = f"trio-smtpd/{__version__}"
    #: Seconds a connection may keep the server waiting for its request (or to read the
    #: answer): then it is closed, and its thread is free.
    timeout = 10

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._answer(200, encoder(self.registry), content_type)
        elif path == "/healthz":
            ok = type(self).healthy()
            self._answer(200 if ok else 503, b"ok\n" if ok else b"not accepting\n")
        else:
            self._answer(404, b"try /metrics or /healthz\n")

    def _answer(self, status: int, body: bytes,
                content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes are not events worth a log line
