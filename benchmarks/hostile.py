"""The attacks behind SECURITY.md's figures, against the sinkhole program on loopback.

    python benchmarks/hostile.py SCENARIO [--code DIR]

``--code DIR`` runs the trio_smtpd found in DIR (a checkout of another commit, say:
``git archive COMMIT | tar -x -C DIR``) instead of this one; options that code does not
have are left out. Scenarios (each prints one line):

- ``tls-flood``: ``ulimit -n 256``, ``--max-connections 200``, N addresses x 80 silent
  connections to the implicit-TLS port (``--addresses``, 4), then a normal client.
- ``data-flood``: 400 clients send 1.04 MB of DATA without the final dot, then leave; RSS.
- ``auth-cost``: server CPU and answer time of one AUTH guess, known and unknown user.
- ``auth-flood``: 60 reconnecting guessers from 6 addresses for 20 s beside a client
  delivering mail: guesses/s, peak RSS, delivery latency.
- ``timeouts``: with every timeout at 3 s, how long each kind of stalled client lasts.
- ``help-flood``: 100 clients pipeline HELP and never read: RSS, CPU, a greeting's wait.
- ``routing``: ``--workers 2``, 4064 sessions from 254 addresses: CPU per session, sessions
  per worker, addresses served by both workers.

Clients use source addresses in 127.0.0.0/8 (Linux routes all of it to loopback).
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import resource
import select
import signal
import smtplib
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import trustme

HERE = Path(__file__).resolve().parent.parent
NEW_OPTIONS = {"--no-dns", "--auth-delay", "--data-timeout", "--tls-timeout",
               "--write-timeout", "--max-connections-per-ip", "--worker-routing", "--user"}
# Since #18 the program refuses to stay root after binding unless told so.
AS_ROOT = ["--user", "root"] if os.geteuid() == 0 else []


class Server:
    """The sinkhole, started from ``code`` on free loopback ports."""

    def __init__(self, code: Path, workdir: Path, *args: str, tls: bool = False,
                 max_files: int | None = None) -> None:
        self.code, self.workdir = code, workdir
        self.port, self.tls_port = _free_port(), _free_port()
        self.log = workdir / f"log-{self.port}"
        self.ca = trustme.CA()
        argv = ["--maildir", str(workdir / "maildir"), "--log-format", "json",
                "--listen", f"127.0.0.1:{self.port}", "--no-dns", *AS_ROOT, *args]
        if tls:
            leaf = self.ca.issue_cert("127.0.0.1", "mx.test")
            leaf.cert_chain_pems[0].write_to_path(str(workdir / "cert.pem"))
            leaf.private_key_pem.write_to_path(str(workdir / "key.pem"))
            argv += ["--tls-cert", str(workdir / "cert.pem"), "--tls-key",
                     str(workdir / "key.pem"), "--tls-listen", f"127.0.0.1:{self.tls_port}"]
        argv = self._supported(argv)

        def limit_files() -> None:
            if max_files:
                resource.setrlimit(resource.RLIMIT_NOFILE, (max_files, max_files))

        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "trio_smtpd", *argv], stderr=log, cwd=code,
                env={**os.environ, "PYTHONPATH": str(code)}, preexec_fn=limit_files)
        deadline = time.monotonic() + 30
        while '"listening"' not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start: {self.log.read_text()}")
            time.sleep(0.05)
        time.sleep(1.5 if "--workers" in args else 0.3)

    def _supported(self, argv: list[str]) -> list[str]:
        known = subprocess.run([sys.executable, "-m", "trio_smtpd", "--help"], cwd=self.code,
                               env={**os.environ, "PYTHONPATH": str(self.code)},
                               capture_output=True, text=True).stdout
        out: list[str] = []
        skip = False
        for index, arg in enumerate(argv):
            if skip:
                skip = False
            elif arg in NEW_OPTIONS and arg not in known:
                nxt = argv[index + 1] if index + 1 < len(argv) else "--"
                skip = arg != "--no-dns" and not nxt.startswith("--")
            else:
                out.append(arg)
        return out

    def client_tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def status_mib(self, field: str = "VmRSS") -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
        raise KeyError(field)

    def cpu(self) -> float:
        """CPU seconds of the server and its children (workers)."""
        total = 0
        for pid in [self.process.pid, *_children(self.process.pid)]:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def wait_idle(self, timeout: float = 120) -> None:
        used, deadline = self.cpu(), time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.5)
            used, before = self.cpu(), used
            if used - before < 0.02:
                return

    def events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()
                if line.startswith("{")]

    def stop(self) -> None:
        workers = _children(self.process.pid)  # (older code's workers outlive it)
        self.process.kill()
        self.process.wait()
        for pid in workers:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        found += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _source(n: int) -> str:
    """The n-th client address: 127.0.x.y, 40 clients per address."""
    return f"127.0.{1 + n // 40 // 200}.{2 + n // 40 % 200}"


@contextmanager
def server(code: Path, *args: str, **kw: object) -> Iterator[Server]:
    with tempfile.TemporaryDirectory() as workdir:
        running = Server(code, Path(workdir), *args, **kw)  # type: ignore[arg-type]
        try:
            yield running
        finally:
            running.stop()


def _connect(port: int, source: str, timeout: float = 60) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0))


def _converse(sock: socket.socket, data: bytes, replies: int) -> None:
    sock.sendall(data)
    reader = sock.makefile("rb")
    while replies:
        line = reader.readline()
        if not line:
            raise ConnectionError("closed")
        replies -= line[3:4] != b"-"


# --------------------------------------------------------------------------- scenarios


def tls_flood(code: Path, addresses: int) -> str:
    with server(code, "--max-connections", "200", tls=True, max_files=256) as srv:
        socks = [_connect(srv.tls_port, f"127.0.0.{2 + n // 80}")
                 for n in range(addresses * 80)]
        time.sleep(2)
        refused, _, _ = select.select(socks, [], [], 0.5)
        descriptors = len(os.listdir(f"/proc/{srv.process.pid}/fd"))
        start = time.monotonic()
        try:
            with srv.client_tls().wrap_socket(_connect(srv.tls_port, "127.0.0.250", 10),
                                              server_hostname="127.0.0.1") as tls:
                normal = tls.recv(100)[:3].decode()
        except (OSError, ssl.SSLError) as exc:
            normal = f"refused ({type(exc).__name__})"
        waited = time.monotonic() - start
        failed = sum("accept failed" in str(e.get("message")) for e in srv.events())
        for sock in socks:
            sock.close()
    return (f"{addresses} x 80: held {len(socks) - len(refused)}, refused {len(refused)}, "
            f"{descriptors} descriptors, 'accept failed' x{failed}; normal client: "
            f"{normal} after {waited * 1000:.0f} ms")


def data_flood(code: Path) -> str:
    with server(code, "--max-connections", "2000") as srv:
        before = srv.status_mib()
        socks = [_connect(srv.port, _source(n)) for n in range(400)]
        for sock in socks:
            sock.recv(100)
            _converse(sock, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n", 4)
        body = (b"x" * 998 + b"\r\n") * 1040
        threads = [threading.Thread(target=sock.sendall, args=(body,)) for sock in socks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        srv.wait_idle()
        loaded = srv.status_mib()
        for sock in socks:
            sock.close()
        time.sleep(12)
        after = srv.status_mib()
    return f"RSS {before} MiB, {loaded} MiB loaded, {after} MiB 12 s after they left"


def _auth(srv: Server, user: str, password: str, source: str) -> tuple[int, float]:
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=120,
                      source_address=(source, 0)) as client:
        client._host = "mx.test"  # type: ignore[attr-defined]
        client.starttls(context=srv.client_tls())
        client.ehlo("c")
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        start = time.monotonic()
        code = client.docmd("AUTH", "PLAIN " + token)[0]
        return code, time.monotonic() - start


@contextmanager
def _auth_server(code: Path, *args: str) -> Iterator[Server]:
    sys.path.insert(0, str(HERE))
    from trio_smtpd.sinkhole.passwords import hash_password

    with tempfile.TemporaryDirectory() as users_dir:
        users = Path(users_dir) / "users"
        users.write_text(f"alice:{hash_password('s3cret')}\n")
        with server(code, "--auth-file", str(users), *args, tls=True) as srv:
            yield srv


def auth_cost(code: Path) -> str:
    out = []
    with _auth_server(code, "--auth-delay", "0") as srv:
        for user in ("alice", "mallory"):
            used = srv.cpu()
            times = [_auth(srv, user, "wrong", f"127.0.{1 + n // 200}.{2 + n % 200}")[1]
                     for n in range(10)]
            out.append(f"{user}: {(srv.cpu() - used) * 100:.0f} ms CPU a guess, answered "
                       f"in {statistics.median(times) * 1000:.0f} ms")
    return "; ".join(out)


def auth_flood(code: Path) -> str:
    with _auth_server(code) as srv:
        stop = time.monotonic() + 20
        codes: list[int | str] = []
        latencies: list[float] = []

        def guesser(n: int) -> None:
            while time.monotonic() < stop:
                try:
                    answer: int | str = _auth(srv, "alice", f"guess{n}", f"127.0.3.{2 + n % 6}")[0]
                except (OSError, smtplib.SMTPException) as exc:
                    answer = type(exc).__name__
                if time.monotonic() < stop:
                    codes.append(answer)

        def deliver() -> None:
            while time.monotonic() < stop:
                start = time.monotonic()
                with smtplib.SMTP("127.0.0.1", srv.port, timeout=120,
                                  source_address=("127.0.4.2", 0)) as client:
                    client.sendmail("a@b.c", ["d@e.f"], b"Subject: x\r\n\r\nhi\r\n")
                latencies.append(time.monotonic() - start)
                time.sleep(0.1)

        for target, args in [*((guesser, (n,)) for n in range(60)), (deliver, ())]:
            threading.Thread(target=target, args=args, daemon=True).start()  # type: ignore[arg-type]
        time.sleep(20.5)
        peak = srv.status_mib("VmHWM")
    return (f"{len(codes) / 20:.1f} guesses/s {dict(collections.Counter(codes))}; peak RSS "
            f"{peak} MiB; deliveries {statistics.median(latencies) * 1000:.0f} ms median, "
            f"{max(latencies) * 1000:.0f} ms max, {len(latencies)} in 20 s")


def timeouts(code: Path) -> str:
    with server(code, "--timeout", "3", "--data-timeout", "3", "--tls-timeout", "3",
                "--write-timeout", "3", tls=True) as srv:
        ends: dict[str, float] = {}

        def lasts(name: str, sock: socket.socket) -> None:
            start = time.monotonic()
            sock.settimeout(400)
            try:
                while sock.recv(65536):
                    pass
            except (ConnectionError, TimeoutError):
                pass
            ends[name] = time.monotonic() - start

        def envelope(*extra: bytes) -> socket.socket:
            sock = _connect(srv.port, "127.0.0.2", 400)
            sock.recv(100)
            _converse(sock, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n", 3)
            for data in extra:
                sock.sendall(data)
            return sock

        def starttls() -> socket.socket:
            sock = _connect(srv.port, "127.0.0.4", 400)
            sock.recv(100)
            _converse(sock, b"EHLO c\r\nSTARTTLS\r\n", 2)
            return sock

        def never_reads() -> None:
            sock = _connect(srv.port, "127.0.0.5", 400)
            sock.setblocking(False)
            start = None
            while "client stopped reading" not in srv.log.read_text():
                try:
                    sock.send(b"HELP\r\n" * 10000)
                except BlockingIOError:
                    start = start or time.monotonic()
                    time.sleep(0.05)
                except ConnectionError:
                    break
            ends["a client that never reads (from its first blocked send)"] = (
                time.monotonic() - (start or time.monotonic()))
            sock.close()

        starts: dict[str, Callable[[], socket.socket]] = {
            "idle mid-DATA": lambda: envelope(b"DATA\r\n", b"Subject: x\r\n\r\npart"),
            "idle mid-BDAT": lambda: envelope(b"BDAT 1000 LAST\r\npart"),
            "stalled STARTTLS": starttls,
            "stalled implicit TLS": lambda: _connect(srv.tls_port, "127.0.0.3", 400),
        }
        threads = [threading.Thread(target=lambda n=name, s=start: lasts(n, s()))
                   for name, start in starts.items()]
        threads.append(threading.Thread(target=never_reads))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in ends.items())


def help_flood(code: Path) -> str:
    with server(code, "--discard", "--max-connections", "2000") as srv:
        before, used = srv.status_mib(), srv.cpu()
        socks = [_connect(srv.port, _source(n)) for n in range(100)]
        for sock in socks:
            sock.recv(100)
            sock.setblocking(False)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            for sock in socks:
                with suppress(BlockingIOError):
                    sock.send(b"HELP\r\n" * 10000)
            time.sleep(0.01)
        start = time.monotonic()
        _connect(srv.port, "127.0.9.9", 400).recv(100)
        greeting = time.monotonic() - start
        srv.wait_idle()
        return (f"+{srv.status_mib() - before} MiB, {srv.cpu() - used:.1f} s CPU; a new "
                f"client's greeting took {greeting * 1000:.0f} ms")


def routing(code: Path) -> str:
    with server(code, "--discard", "--workers", "2") as srv:
        used = srv.cpu()

        def sessions(first: int) -> None:
            for n in range(first, 4064, 8):
                with _connect(srv.port, f"127.0.1.{1 + n % 254}") as sock:
                    reader = sock.makefile("rb")
                    reader.readline()
                    sock.sendall(b"QUIT\r\n")
                    reader.readline()

        threads = [threading.Thread(target=sessions, args=(k,)) for k in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(1)
        cpu = srv.cpu() - used
        workers: collections.Counter[str] = collections.Counter()
        by_address: dict[str, set[str]] = collections.defaultdict(set)
        for event in srv.events():
            if event["event"] == "close":
                worker = str(event["session"]).split(".")[0]
                workers[worker] += 1
                by_address[str(event["peer"]).rsplit(":", 1)[0]].add(worker)
    both = sum(len(w) > 1 for w in by_address.values())
    return (f"{cpu / 4064 * 1000:.2f} ms CPU a session; sessions per worker "
            f"{sorted(workers.values())}; {both} of {len(by_address)} addresses on both")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["tls-flood", "data-flood", "auth-cost",
                                             "auth-flood", "timeouts", "help-flood",
                                             "routing"])
    parser.add_argument("--code", type=Path, default=HERE)
    parser.add_argument("--addresses", type=int, default=4)
    args = parser.parse_args()
    code = args.code.resolve()
    if args.scenario == "tls-flood":
        print(tls_flood(code, args.addresses))
        return
    scenario = {"data-flood": data_flood, "auth-cost": auth_cost, "auth-flood": auth_flood,
                "timeouts": timeouts, "help-flood": help_flood, "routing": routing}
    print(scenario[args.scenario](code))


if __name__ == "__main__":
    main()
