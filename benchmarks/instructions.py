"""Instructions per message of the library server, counted by callgrind: the steady
measure on a shared machine whose CPU time per message drifts by 10% or more from one
run to the next.

    python benchmarks/instructions.py [--baseline REF] [--workloads abd] [--messages 1000]

Runs ``library_sink.py`` under ``valgrind --tool=callgrind`` with trio's clock slowed
down as much as valgrind slows the program (so that what depends on elapsed time, such
as when a deadline is moved, happens as often per message as it does at full speed),
loads it with smtp-source with ``bench.py``'s workloads (fewer messages), and counts the
instructions between the first and the last message. Needs valgrind (Debian's
``valgrind``) and smtp-source.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import baseline
from bench import SMTP_SOURCE, free_port, wait_listening, workloads

HERE = Path(__file__).resolve().parent
#: How much slower a program runs under callgrind, about.
SLOWDOWN = 50.0
# library_sink.py under a trio clock that runs SLOWDOWN times slower than the real one.
SLOW_CLOCK = """
import runpy, sys, time, trio
class SlowClock(trio.abc.Clock):
    def start_clock(self): self._start = time.perf_counter()
    def current_time(self): return (time.perf_counter() - self._start) / {slowdown}
    def deadline_to_sleep_time(self, deadline):
        return max(0.0, (deadline - self.current_time()) * {slowdown})
_run = trio.run
trio.run = lambda *args, **kwargs: _run(*args, clock=SlowClock(), **kwargs)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def count(tree: Path, workload: str, messages: int) -> float:
    """Instructions per message of ``tree``'s library server under ``workload``."""
    spec = {w.name: w for w in workloads(quick=False)}[workload]
    load = list(spec.args)  # bench.py's load, with this run's count of messages
    load[load.index("-m") + 1] = str(messages)
    flags = ["--lmtp"] if spec.lmtp else []
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "callgrind.out"
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             sys.executable, "-c", SLOW_CLOCK.format(slowdown=SLOWDOWN),
             str(tree / "benchmarks" / "library_sink.py"), str(port), *flags],
            env={**os.environ, "PYTHONPATH": str(tree)}, stderr=subprocess.DEVNULL)
        try:
            wait_listening(port, server)
            subprocess.run(["callgrind_control", "--zero", str(server.pid)], check=True,
                           capture_output=True)
            subprocess.run([SMTP_SOURCE, *load, f"127.0.0.1:{port}"], check=True)
            subprocess.run(["callgrind_control", "--dump", str(server.pid)], check=True,
                           capture_output=True)
            time.sleep(0.5)
        finally:
            server.terminate()
            server.wait()
        dump = next(Path(scratch).glob("callgrind.out.*"))
        for line in dump.read_text().splitlines():
            if line.startswith("summary:"):
                return int(line.split()[1]) / messages
    raise RuntimeError("callgrind wrote no summary")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", metavar="REF", help="also count this earlier commit")
    parser.add_argument("--workloads", default="abd")
    parser.add_argument("--messages", type=int, default=1000)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    trees = {"current": HERE.parent}
    if args.baseline:
        trees[f"@{args.baseline}"] = baseline.extract(args.baseline)
    print("| workload | " + " | ".join(trees) + " | change |")
    print("|---|" + "---:|" * (len(trees) + 1))
    for workload in args.workloads:
        counts = [count(tree, workload, args.messages) for tree in trees.values()]
        change = f"{counts[0] / counts[1] - 1:+.1%}" if len(counts) > 1 else ""
        print(f"| {workload} | " + " | ".join(f"{c:,.0f}" for c in counts)
              + f" | {change} |", flush=True)


if __name__ == "__main__":
    main()
