"""Memory per idle connection, and peak memory while streaming one 100 MB message.

Holds N connections open (each has read its greeting) against trio_smtpd and aiosmtpd in
turn and reports the server's RSS growth per connection; then sends one 100 MB message to
the sinkhole in --discard mode (which streams message bodies) and reports its peak RSS.

    python benchmarks/idle.py [--counts 1000 10000] [--json benchmarks/results/idle.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import baseline
from bench import REPOSITORY, SMTP_SOURCE, free_port, machine, peak_rss_mb, wait_listening


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


SERVERS = ("trio_smtpd library", "trio_smtpd transactions()", "aiosmtpd")


def servers(port: int) -> dict[str, list[str]]:
    here = Path(__file__).parent
    return {
        "trio_smtpd library": [sys.executable, str(here / "library_sink.py"), str(port)],
        "trio_smtpd transactions()": [sys.executable, str(here / "library_sink.py"),
                                      str(port), "--transactions"],
        "aiosmtpd": [sys.executable, "-m", "aiosmtpd", "-n", "-c", "aiosmtpd.handlers.Sink",
                     "-l", f"127.0.0.1:{port}"],
    }


def idle_connections(name: str, count: int, tree: Path | None = None) -> dict[str, float]:
    port = free_port()
    if tree is None:
        command, env = servers(port)[name], None
    else:
        flags = ["--transactions"] if "transactions" in name else []
        command, env = baseline.library_sink_command(sys.executable, tree, port, *flags)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env)
    sockets: list[socket.socket] = []
    try:
        wait_listening(port, process)
        warm = socket.create_connection(("127.0.0.1", port))
        warm.recv(200)
        time.sleep(0.5)
        before = rss_mb(process.pid)
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.recv(200)  # the greeting: the server has set the session up
            sockets.append(sock)
        time.sleep(1)
        after = rss_mb(process.pid)
        warm.close()
    finally:
        for sock in sockets:
            sock.close()
        process.terminate()
        process.wait(30)
    return {"connections": count, "rss_before_mb": before, "rss_after_mb": after,
            "kb_per_connection": (after - before) * 1024 / count}


def streamed_message_peak_mb(size: int) -> float:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "trio_smtpd", "--discard", "--listen", f"127.0.0.1:{port}",
         "--max-message-size", str(2 * size), "--log-format", "json",
         *(["--user", "root"] if os.geteuid() == 0 else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=REPOSITORY)  # (-m: the current directory's tree is the one that runs)
    try:
        wait_listening(port, process)
        subprocess.run([SMTP_SOURCE, "-s", "1", "-m", "1", "-l", str(size), "-f",
                        "big@example.org", "-t", "sink@example.net", f"127.0.0.1:{port}"],
                       check=True, stdout=subprocess.DEVNULL, timeout=300)
        return peak_rss_mb([process.pid])
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--json", default="benchmarks/results/idle.json")
    parser.add_argument("--baseline", metavar="REF",
                        help="also measure the library servers of this earlier commit")
    parser.add_argument("--no-streaming", action="store_true",
                        help="skip the 100 MB streaming measurement")
    args = parser.parse_args()
    tree = baseline.extract(args.baseline) if args.baseline else None
    names: list[tuple[str, Path | None]] = [(name, None) for name in SERVERS]
    if tree is not None:
        names += [(f"{name} @{args.baseline}", tree) for name in SERVERS[:2]]
    # Client and server are separate processes: each needs one descriptor a connection.
    need = max(args.counts) + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            sys.exit(f"need {need} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    results = []
    for count in args.counts:
        for name, source in names:
            result = {"server": name,
                      **idle_connections(name.split(" @")[0], count, source)}
            results.append(result)
            print(f"  {name}: {count} idle: {result['kb_per_connection']:.1f} KB each",
                  file=sys.stderr, flush=True)
    streamed = 0.0 if args.no_streaming else streamed_message_peak_mb(100 * 2**20)
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine(),
              "idle": results, "peak_rss_mb_streaming_100mb": streamed}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print("| server | idle connections | RSS before MB | RSS after MB | KB per connection |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['server']} | {r['connections']} | {r['rss_before_mb']:.1f} | "
              f"{r['rss_after_mb']:.1f} | {r['kb_per_connection']:.1f} |")
    print(f"\nPeak RSS of `trio-smtpd --discard` receiving one 100 MB message: "
          f"{streamed:.1f} MB")


if __name__ == "__main__":
    main()
