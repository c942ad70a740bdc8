"""What runs beside the mail for an operator: metrics, health and systemd notifications.

``Operations`` is a serving process's (a single process, or a worker); ``Supervision``
is the ``--workers`` supervisor's. prometheus-client is imported only when
``--metrics-listen`` asks for metrics (it is an optional extra).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import socket
import time
from typing import TYPE_CHECKING

import trio

from .. import Config, Server
from ..maildir import Maildir
from .configure import ConfigError, parse_address
from .handler import SinkholeHandler
from .systemd import Notifier, PassedSockets

if TYPE_CHECKING:
    from .metrics import MetricsHTTPServer, SinkholeMetrics, WorkerMetrics

__all__ = ["Operations", "Supervision", "metrics_socket"]

_WORKER = "TRIO_SMTPD_WORKER"
_COUNTING_WORKER = "PROMETHEUS_MULTIPROC_DIR"  # (set by the supervisor only)


def metrics_socket(address: str | None, passed: PassedSockets | None) -> socket.socket | None:
    """The metrics endpoint's listening socket: systemd's, or bound now (before giving
    up root); None without one, and in a worker (its supervisor serves the metrics)."""
    if os.environ.get(_WORKER):
        return None
    if passed is not None and passed.metrics is not None:
        _require_prometheus_client()
        return passed.metrics
    if address is None:
        return None
    _require_prometheus_client()
    host, port = parse_address(address, "--metrics-listen")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=64)
    except OSError as exc:
        raise ConfigError(f"cannot listen on --metrics-listen {address}: {exc}") from None


def _require_prometheus_client() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError("--metrics-listen needs prometheus-client: pip install "
                          "'trio-smtpd[metrics]'") from None


class Operations:
    """A serving process's metrics (counted here, served here unless a worker) and its
    notifications to systemd (a worker's supervisor sends those)."""

    def __init__(self, metrics_socket: socket.socket | None) -> None:
        self.notifier = Notifier()
        self.metrics: SinkholeMetrics | None = None
        self._socket = metrics_socket
        self._http: MetricsHTTPServer | None = None
        if metrics_socket is not None or _COUNTING_WORKER in os.environ:
            from .metrics import SinkholeMetrics
            self.metrics = SinkholeMetrics()

    def configure(self, config: Config, handler: SinkholeHandler,
                  maildir: Maildir | None) -> Config:
        """Make the server, the resolver and the Maildir report to the metrics."""
        if self.metrics is None:
            return config
        if handler.resolver is not None:
            handler.resolver.on_lookup = self.metrics.dns_lookup
        if maildir is not None:
            maildir.on_fsync = self.metrics.maildir_fsync
        return dataclasses.replace(config, metrics=self.metrics)

    async def run(self, server: Server, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the endpoint, sample the gauges, feed the watchdog; say READY=1. Started
        (``nursery.start``) once the endpoint serves and says the server accepts, so that
        whoever reads the ``listening`` line after it finds both true."""
        if self._socket is not None and self.metrics is not None:
            from .metrics import MetricsHTTPServer
            assert self.metrics.registry is not None
            self._http = MetricsHTTPServer(self._socket, self.metrics.registry,
                                           lambda: not server.shutting_down)
            self._http.start()
        try:
            async with trio.open_nursery() as nursery:
                if self.metrics is not None:
                    await nursery.start(self.metrics.sample, server)
                if self.notifier.watchdog_interval is not None:
                    nursery.start_soon(self._watchdog, self.notifier.watchdog_interval)
                self.notifier.ready(f"accepting mail, pid {os.getpid()}")
                task_status.started()
        finally:
            if self._http is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self._http.stop)

    async def _watchdog(self, interval: float) -> None:
        while True:  # (the event loop turning is what the watchdog wants to know)
            self.notifier.watchdog()
            await trio.sleep(interval)


class Supervision:
    """The ``--workers`` supervisor's share: the workers' metrics gathered and served,
    systemd told about all of them as one service.

    READY=1 goes to systemd once every worker is listening: each worker says READY=1 on
    a socket of the supervisor's own (its NOTIFY_SOCKET), and the supervisor relays.
    """

    def __init__(self, metrics_socket: socket.socket | None, workers: int = 1) -> None:
        self.notifier = Notifier()
        self._workers = workers
        self._ready: set[str] | None = set()  # worker pids that said READY=1; None: told
        self._relay: socket.socket | None = None
        self._relay_name = f"trio-smtpd-{os.getpid()}-{secrets.token_hex(8)}"
        if self.notifier.enabled:
            self._relay = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM
                                        | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            self._relay.bind("\0" + self._relay_name)  # (Linux's abstract namespace)
        self._metrics: WorkerMetrics | None = None
        self._http: MetricsHTTPServer | None = None
        self._alive = 0
        self._stopping = False
        self._next_watchdog = 0.0
        if metrics_socket is not None:
            from .metrics import MetricsHTTPServer, WorkerMetrics
            self._metrics = WorkerMetrics()
            self._http = MetricsHTTPServer(metrics_socket, self._metrics.registry,
                                           lambda: self._alive > 0 and not self._stopping)
            self._http.start()

    def environment(self, slot: int) -> dict[str, str]:
        """What worker ``slot`` is started with."""
        extra: dict[str, str] = {}  # (the supervisor names the slot: see workers.py)
        if self._relay is not None:
            extra["NOTIFY_SOCKET"] = "@" + self._relay_name
        if self._metrics is not None:
            extra |= self._metrics.environment(slot)
        return extra

    def exited(self, slot: int, pid: int) -> None:
        if self._metrics is not None:
            self._metrics.exited(slot, pid)

    def reloading(self) -> None:
        self.notifier.reloading()
        self.notifier.ready("rules reloaded")

    def stopping(self) -> None:
        self._stopping = True
        self.notifier.stopping()

    def tick(self, alive: int) -> None:
        """Each turn of the supervisor's loop."""
        self._alive = alive
        self._relay_ready()
        if self._metrics is not None:
            self._metrics.alive.set(alive)
        interval = self.notifier.watchdog_interval
        if interval is not None and time.monotonic() >= self._next_watchdog:
            self.notifier.watchdog()
            self._next_watchdog = time.monotonic() + interval

    def _relay_ready(self) -> None:
        """Tell systemd READY=1 once each worker has (after that, workers are ignored)."""
        while self._relay is not None and self._ready is not None:
            try:
                message = self._relay.recv(4096).decode(errors="replace").splitlines()
            except BlockingIOError:
                return
            if "READY=1" in message:
                self._ready |= {line for line in message if line.startswith("MAINPID=")}
            if len(self._ready) >= self._workers:
                self._ready = None
                self.notifier.ready(f"accepting mail, pid {os.getpid()}, "
                                    f"{self._workers} workers")

    def close(self) -> None:
        if self._relay is not None:
            self._relay.close()
        if self._http is not None:
            self._http.stop()
        if self._metrics is not None:
            self._metrics.close()
