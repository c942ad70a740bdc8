"""Side-by-side benchmark: trio_smtpd vs aiosmtpd vs Postfix's smtp-sink, under smtp-source.

Each server is started in turn on loopback and loaded by Postfix's ``smtp-source`` (a C
client); the servers take turns run after run. For every (server, workload) it reports
messages/s (median of the runs), the server's CPU seconds per 1000 messages read from
/proc (utime + stime of the server, its threads and its worker processes, steadier than
wall time on a shared machine) and the kernel's share of them, peak RSS (VmHWM), and
ratios against aiosmtpd and smtp-sink. Results are printed as a table and written as JSON.

    python benchmarks/bench.py [--runs 5] [--quick] [--json benchmarks/results/latest.json]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import baseline
import pgserver
import postfix

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
#: The tree whose code is measured: the one this file is in.
REPOSITORY = Path(__file__).resolve().parent.parent
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    args: tuple[str, ...]
    messages: int
    lmtp: bool = False
    #: Only these servers (all when empty).
    servers: tuple[str, ...] = ()


def workloads(quick: bool) -> list[Workload]:
    scale = 4 if quick else 1
    many = 2000 // scale
    return [
        Workload("a", "1 KB, one message per connection, 20 parallel sessions",
                 ("-s", "20", "-m", str(many), "-l", "1024"), many),
        Workload("b", "1 KB, many messages per connection (-d), 20 sessions",
                 ("-d", "-s", "20", "-m", str(many), "-l", "1024"), many),
        Workload("c", "10 MB messages, 2 sessions",
                 ("-s", "2", "-m", str(20 // scale), "-l", str(10 * 2**20)), 20 // scale),
        Workload("d", "LMTP, 5 recipients, 1 KB, 20 sessions",
                 ("-L", "-r", "5", "-s", "20", "-m", str(many // 2), "-l", "1024"),
                 many // 2, lmtp=True),
        # (a) one session at a time, for the Maildir: if fsyncs serialised concurrent
        # transactions, 20 sessions would deliver no faster than this.
        Workload("e", "as (a) but one session at a time (Maildir scaling)",
                 ("-s", "1", "-m", str(many // 4), "-l", "1024"), many // 4,
                 servers=("trio_smtpd maildir",)),
    ]


@dataclass(frozen=True)
class ServerSpec:
    name: str
    lmtp_capable: bool
    #: For a baseline row: the tree of an earlier commit (see baseline.py).
    tree: Path | None = None

    def environment(self) -> dict[str, str]:
        """The code measured is this file's tree (a baseline row's: its own), whatever
        the current directory: with ``-m trio_smtpd`` the current directory comes first
        on ``sys.path``, so a bench.py of one worktree started from another's directory
        measured that other tree's sinkhole (the servers start in their work directory)."""
        return {**os.environ, "PYTHONPATH": str(self.tree or REPOSITORY)}

    def command(self, port: int, workdir: Path, lmtp: bool) -> list[str]:
        trio = [sys.executable, "-m", "trio_smtpd", "--listen", f"127.0.0.1:{port}",
                "--max-connections", "20000", "--max-message-size", str(200 * 2**20),
                "--log-format", "json", "--hostname", "bench.test", "--no-dns",
                # (as root, say it is meant: the program refuses otherwise)
                *(["--user", "root"] if os.geteuid() == 0 else [])]
        lmtp_flag = ["--lmtp"] if lmtp else []
        name = base_name(self.name)  # (a baseline row runs as its row, from its tree)
        if self.tree is not None and name in BASELINE_LIBRARY:
            flags = [*lmtp_flag, *(["--transactions"] if "transactions" in name else [])]
            return [sys.executable, str(self.tree / "benchmarks" / "library_sink.py"),
                    str(port), *flags]
        return self._named_command(name, trio, port, workdir, lmtp_flag)

    def _named_command(self, name: str, trio: list[str], port: int, workdir: Path,
                       lmtp_flag: list[str]) -> list[str]:
        if name == "trio_smtpd library":
            return [sys.executable, str(Path(__file__).parent / "library_sink.py"), str(port),
                    *lmtp_flag]
        if name == "trio_smtpd library (streams)":  # Config(direct_sockets=False)
            return [sys.executable, str(Path(__file__).parent / "library_sink.py"), str(port),
                    *lmtp_flag, "--streams"]
        if name == "trio_smtpd transactions()":
            return [sys.executable, str(Path(__file__).parent / "library_sink.py"), str(port),
                    *lmtp_flag, "--transactions"]
        if name == "trio_smtpd --discard":
            return [*trio, "--discard", *lmtp_flag]
        if name == "trio_smtpd maildir":  # files and sidecars only
            return [*trio, "--maildir", str(workdir / "maildir"), "--store", "maildir",
                    *lmtp_flag]
        if name == "trio_smtpd maildir+sqlite":  # the default store
            return [*trio, "--maildir", str(workdir / "maildir"), "--store", "sqlite",
                    *lmtp_flag]
        if name == "trio_smtpd postgresql":  # a fresh database for every run
            return [*trio, "--maildir", str(workdir / "maildir"), "--store",
                    pgserver.database(), *lmtp_flag]
        if name == "trio_smtpd maildir+sqlite --workers 2":  # (spread as below)
            return [*trio, "--maildir", str(workdir / "maildir"), "--workers", "2",
                    "--worker-routing", "connection", *lmtp_flag]
        if name == "trio_smtpd --discard --workers 2":
            # smtp-source sends from one address, which the default routing (every
            # address to one worker) would give to one worker: spread connections.
            return [*trio, "--discard", "--workers", "2", "--worker-routing", "connection",
                    *lmtp_flag]
        if name == "aiosmtpd":
            return [sys.executable, "-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Sink",
                    "-l", f"127.0.0.1:{port}"]
        if name == "smtp-sink":
            root = ["-u", "nobody"] if os.geteuid() == 0 else []  # it refuses root
            return [SMTP_SINK, *root, *(["-L"] if lmtp_flag else []), f"127.0.0.1:{port}", "256"]
        raise ValueError(name)


#: The library rows of a ``--baseline`` tree run its own library_sink.py; its other rows
#: (the sinkhole's) run ``-m trio_smtpd`` from that tree (``ServerSpec.environment``).
BASELINE_LIBRARY = ("trio_smtpd library", "trio_smtpd transactions()")
#: Rows a baseline does not have: an earlier library_sink.py may lack ``--streams``.
BASELINE_NOT = ("trio_smtpd library (streams)",)


def base_name(name: str) -> str:
    """A row's name without its ``@REF``."""
    return name.split(" @")[0]


SERVERS = [
    ServerSpec("trio_smtpd library", True),
    ServerSpec("trio_smtpd transactions()", True),
    ServerSpec("trio_smtpd library (streams)", True),
    ServerSpec("trio_smtpd --discard", True),
    ServerSpec("trio_smtpd maildir", True),
    # The stores (issue 21): the Maildir with its SQLite index, and PostgreSQL (whose
    # server's CPU is counted in the row: it does the work the fsyncs do for a Maildir).
    ServerSpec("trio_smtpd maildir+sqlite", True),
    ServerSpec("trio_smtpd postgresql", True),
    ServerSpec("trio_smtpd --discard --workers 2", True),
    ServerSpec("trio_smtpd maildir+sqlite --workers 2", True),
    ServerSpec("aiosmtpd", False),
    ServerSpec("smtp-sink", True),
    # Postfix's own accept path (root only): mail kept in its hold queue, or discarded.
    ServerSpec("postfix (held)", False),
    ServerSpec("postfix (discard)", False),
]


@dataclass
class Result:
    server: str
    workload: str
    messages_per_second: float
    cpu_seconds_per_1000: float
    peak_rss_mb: float
    runs: int
    #: The share of the CPU time spent in the kernel (system calls, the file system).
    kernel_share: float = 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_tree(root: int) -> list[int]:
    """The root and every descendant (the sinkhole's workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_split(pids))


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of these processes, their threads included, and of the
    children the first one (the root) has reaped (Postfix's master restarts its smtpd
    processes as they reach their max_use)."""
    user = system = 0
    for index, pid in enumerate(pids):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user, system = user + int(fields[11]), system + int(fields[12])  # utime, stime
        if index == 0:
            user, system = user + int(fields[13]), system + int(fields[14])  # of children
    return user / TICKS, system / TICKS


def peak_rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def wait_listening(port: int, process: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.recv(100)
            return
        except OSError:
            if ((process is not None and process.poll() is not None)
                    or time.monotonic() > deadline):
                raise RuntimeError("server did not start") from None
            time.sleep(0.05)


class Running:
    """A server process started for one measurement."""

    def __init__(self, spec: ServerSpec, lmtp: bool, workdir: Path) -> None:
        self.port = free_port()
        self.postfix: postfix.PostfixInstance | None = None
        self.uses_postgresql = base_name(spec.name) == "trio_smtpd postgresql"
        if spec.name.startswith("postfix"):
            self.postfix = postfix.PostfixInstance(workdir, self.port,
                                                   held="held" in spec.name)
            self.root = self.postfix.start()
            wait_listening(self.port, None)
            return
        self.process = subprocess.Popen(spec.command(self.port, workdir, lmtp),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        env=spec.environment(), cwd=workdir)
        self.root = self.process.pid
        wait_listening(self.port, self.process)
        time.sleep(0.3 if "workers" in spec.name else 0)  # let every worker come up

    @property
    def pids(self) -> list[int]:
        """The server's processes now (Postfix starts and ends some as it goes), and
        PostgreSQL's for the row that stores there."""
        extra = pgserver.pids() if self.uses_postgresql else []
        return process_tree(self.root) + extra

    def stop(self) -> None:
        if self.postfix is not None:
            self.postfix.stop()
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Run:
    messages_per_second: float
    cpu_seconds_per_1000: float
    peak_rss_mb: float
    kernel_share: float


def applies(spec: ServerSpec, workload: Workload) -> bool:
    if workload.lmtp and not spec.lmtp_capable:
        return False
    if spec.name.startswith("postfix") and not postfix.available():
        return False
    if base_name(spec.name) == "trio_smtpd postgresql" and not pgserver.available():
        return False
    return not workload.servers or base_name(spec.name) in workload.servers


#: Above this, creating a file costs more than any server's own work for a message.
SLOW_CREATION_US = 100


class WorkArea:
    """Where every run of one bench works, each in a folder of its own, all removed only
    when the bench ends.

    Removing a run's files before the next run would slow the next server's file
    creations: on ext4 without a journal, the inode allocator looks up every inode freed
    in the last seconds (minutes, while its inode table block is dirty) before it takes
    one, so that each file created beside a run's deleted ones costs many times its
    usual kernel time (measured in benchmarks/README.md, "Round 4"). That is the bench's
    own doing, not the servers', so the files stay until the end."""

    def __init__(self, parent: str | None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="trio-smtpd-bench-", dir=parent))
        self.root.chmod(0o755)  # (Postfix's daemons, as the user postfix, go through it)
        self._runs = 0
        atexit.register(shutil.rmtree, self.root, ignore_errors=True)

    def next_run(self) -> Path:
        self._runs += 1
        folder = self.root / f"run-{self._runs}"
        folder.mkdir()
        return folder

    def creation_cost(self, files: int = 500) -> float:
        """Microseconds to create and write a 1 KB file here (median of ``files``); the
        files stay, as a run's do. Reported with the results: where it is far above
        tens of microseconds, every durable row measures the file system's allocator
        as much as the server."""
        folder = self.root / "probe"
        folder.mkdir()
        times = []
        for number in range(files):
            start = time.perf_counter()
            fd = os.open(folder / str(number), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, b"x" * 1024)
            finally:
                os.close(fd)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e6


def measure_once(spec: ServerSpec, workload: Workload, area: WorkArea) -> Run:
    server = Running(spec, workload.lmtp, area.next_run())
    try:
        user_before, system_before = cpu_split(server.pids)
        start = time.perf_counter()
        subprocess.run([SMTP_SOURCE, *workload.args, "-f", "bench@example.org",
                        "-t", "sink@example.net", f"127.0.0.1:{server.port}"],
                       check=True, stdout=subprocess.DEVNULL, timeout=300)
        elapsed = time.perf_counter() - start
        user_after, system_after = cpu_split(server.pids)
        peak = peak_rss_mb(server.pids)
    finally:
        server.stop()
    user, system = user_after - user_before, system_after - system_before
    return Run(workload.messages / elapsed, (user + system) * 1000 / workload.messages,
               peak, system / (user + system) if user + system else 0.0)


def measure(specs: list[ServerSpec], workload: Workload, runs: int,
            area: WorkArea) -> list[Result]:
    """Each server ``runs`` times, in turns (A B C A B C ...), so that a slow spell of a
    shared machine is spread over every server rather than spoiling one; medians."""
    done: dict[str, list[Run]] = {spec.name: [] for spec in specs}
    for _ in range(runs):
        for spec in specs:
            done[spec.name].append(measure_once(spec, workload, area))
    return [Result(name, workload.name,
                   statistics.median(r.messages_per_second for r in done[name]),
                   statistics.median(r.cpu_seconds_per_1000 for r in done[name]),
                   max(r.peak_rss_mb for r in done[name]), runs,
                   statistics.median(r.kernel_share for r in done[name]))
            for name in done]


def ratio(value: float, reference: float | None, higher_is_better: bool) -> str:
    if not reference or not value:
        return "-"
    factor = value / reference if higher_is_better else reference / value
    return f"{factor:.2f}x"


def table(results: list[Result]) -> str:
    by_key = {(r.server, r.workload): r for r in results}
    lines = ["| workload | server | msg/s | CPU s / 1000 msg | kernel share | peak RSS MB | "
             "msg/s vs aiosmtpd | CPU efficiency vs aiosmtpd | msg/s vs smtp-sink |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for result in results:
        aio = by_key.get(("aiosmtpd", result.workload))
        sink = by_key.get(("smtp-sink", result.workload))
        aio_rate = aio.messages_per_second if aio else None
        aio_cpu = aio.cpu_seconds_per_1000 if aio else None
        sink_rate = sink.messages_per_second if sink else None
        lines.append(
            f"| {result.workload} | {result.server} | {result.messages_per_second:.0f} | "
            f"{result.cpu_seconds_per_1000:.3f} | {result.kernel_share:.0%} | "
            f"{result.peak_rss_mb:.1f} | "
            f"{ratio(result.messages_per_second, aio_rate, True)} | "
            f"{ratio(result.cpu_seconds_per_1000, aio_cpu, False)} | "
            f"{ratio(result.messages_per_second, sink_rate, True)} |")
    return "\n".join(lines)


#: Durable acceptance, ours and Postfix's (issue 22).
DURABLE = ("trio_smtpd maildir", "trio_smtpd maildir+sqlite", "trio_smtpd postgresql",
           "trio_smtpd maildir+sqlite --workers 2")


def durable_table(results: list[Result]) -> str:
    """Our durable rows as ratios to Postfix's accept path (mail held in its queue)."""
    by_key = {(r.server, r.workload): r for r in results}
    lines = ["| workload | server | msg/s | CPU s / 1000 msg | msg/s vs Postfix held | "
             "CPU per message vs Postfix held |", "|---|---|---:|---:|---:|---:|"]
    for result in results:
        held = by_key.get(("postfix (held)", result.workload))
        if base_name(result.server) not in DURABLE or held is None:
            continue
        lines.append(
            f"| {result.workload} | {result.server} | {result.messages_per_second:.0f} | "
            f"{result.cpu_seconds_per_1000:.3f} | "
            f"{result.messages_per_second / held.messages_per_second:.2f}x | "
            f"{result.cpu_seconds_per_1000 / held.cpu_seconds_per_1000:.2f}x |")
    return "\n".join(lines)


def print_report(report: dict[str, Any]) -> None:
    results = [Result(**r) for r in report["results"]]
    print(f"{report['date']} on {report['machine']}")
    if "file_creation_us" in report:  # (not in the JSON of runs before it was measured)
        print(f"Creating a 1 KB file where the servers wrote: "
              f"{report['file_creation_us']} µs")
    print()
    for name, description in report["workloads"].items():
        print(f"({name}) {description}")
    print()
    print(table(results))
    if any(r.server == "postfix (held)" for r in results):
        print()
        print(durable_table(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a quarter of the messages")
    parser.add_argument("--json", default="benchmarks/results/latest.json")
    parser.add_argument("--only", action="append", default=[], help="server names to run")
    parser.add_argument("--baseline", metavar="REF",
                        help="also run our rows (the library's and the sinkhole's) of this "
                             "earlier commit, in turns with the others (before/after in one "
                             "run)")
    parser.add_argument("--workloads", default="abcde", help="which workloads (letters)")
    parser.add_argument("--workdir", metavar="DIR",
                        help="where the runs' files go (default: the system's temporary "
                             "directory); see the file creation cost the report gives")
    parser.add_argument("--report", metavar="JSON",
                        help="print the tables of an earlier run's JSON, and measure nothing")
    args = parser.parse_args()
    if args.report:
        print_report(json.loads(Path(args.report).read_text()))
        return
    servers = list(SERVERS)
    if args.baseline:
        tree = baseline.extract(args.baseline)
        servers += [ServerSpec(f"{spec.name} @{args.baseline}", spec.lmtp_capable, tree)
                    for spec in SERVERS if spec.name.startswith("trio_smtpd")
                    and spec.name not in BASELINE_NOT]
    results = []
    atexit.register(pgserver.remove)
    area = WorkArea(args.workdir)
    creation = area.creation_cost()
    print(f"  creating a 1 KB file in {area.root}: {creation:.0f} µs", file=sys.stderr,
          flush=True)
    if creation > SLOW_CREATION_US:
        print("  (slow: files deleted here lately, by an earlier bench's clean-up too, make "
              "each new file cost that much for every server; the durable rows will "
              "measure it. Wait some minutes, or give --workdir a folder elsewhere)",
              file=sys.stderr, flush=True)
    for workload in workloads(args.quick):
        if workload.name not in args.workloads:
            continue
        specs = [spec for spec in servers if applies(spec, workload)
                 and (not args.only or spec.name in args.only
                      or base_name(spec.name) in args.only)]
        for result in measure(specs, workload, args.runs, area):
            print(f"  {workload.name}: {result.server}: {result.messages_per_second:.0f} msg/s",
                  file=sys.stderr, flush=True)
            results.append(result)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": machine(),
        "file_creation_us": round(creation, 1),
        "workloads": {w.name: w.description for w in workloads(args.quick)},
        "results": [asdict(r) for r in results],
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


if __name__ == "__main__":
    main()
