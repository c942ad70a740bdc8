"""A private Postfix instance for the benchmark: its accept path, measured beside ours.

Postfix fsyncs its queue file before answering 250, as the sinkhole fsyncs the Maildir
file: the like-for-like peer for durable acceptance (issue 22). The instance lives in a
temporary directory (its own main.cf, master.cf, queue and data), listens on one
loopback port, looks nothing up in DNS, and discards what it accepts (``discard``), or
with ``held=True`` keeps every message in its hold queue (the accept path alone).
Starting Postfix needs root.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

__all__ = ["PostfixInstance", "available"]

POSTFIX = "/usr/sbin/postfix"


def available() -> bool:
    return os.geteuid() == 0 and os.path.exists(POSTFIX)


class PostfixInstance:
    def __init__(self, workdir: Path, port: int, *, held: bool) -> None:
        self.dir = workdir / "postfix"
        self.port = port
        etc, queue, data = self.dir / "etc", self.dir / "queue", self.dir / "data"
        for path in (etc, queue, data):
            path.mkdir(parents=True)
        for path in (workdir, self.dir):  # (Postfix's daemons run as postfix)
            path.chmod(0o755)
        shutil.chown(data, "postfix")
        for name in ("dynamicmaps.cf", "dynamicmaps.cf.d", "postfix-files",
                     "postfix-files.d"):
            source = Path("/etc/postfix") / name
            if source.is_dir():
                shutil.copytree(source, etc / name)
            elif source.exists():
                shutil.copy(source, etc / name)
        (etc / "main.cf").write_text(self._main_cf(held))
        (etc / "master.cf").write_text(self._master_cf())

    def _main_cf(self, held: bool) -> str:
        lines = [
            "compatibility_level = 3.6", f"queue_directory = {self.dir}/queue",
            f"data_directory = {self.dir}/data", "mail_owner = postfix",
            "myhostname = bench.test", "mydestination =", "mynetworks = 127.0.0.0/8",
            "inet_interfaces = 127.0.0.1", "inet_protocols = ipv4",
            "smtpd_relay_restrictions = permit_mynetworks, reject",
            "smtpd_peername_lookup = no", "disable_dns_lookups = yes",
            # The 10 MB workload: as large as the trio servers take (--max-message-size).
            f"message_size_limit = {200 * 2**20}",
            *(f"{kind}_transport = discard" for kind in
              ("default", "local", "relay", "virtual")),
            f"maillog_file = {self.dir}/maillog", f"maillog_file_prefixes = {self.dir}",
            "syslog_name = postfix-bench",
        ]
        if held:
            lines.append("smtpd_recipient_restrictions = check_client_access static:HOLD")
        return "\n".join(lines) + "\n"

    def _master_cf(self) -> str:
        out = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            fields = line.split()
            if re.match(r"^smtp\s+inet", line):
                line = f"127.0.0.1:{self.port} inet n - n - - smtpd"
            elif line[:1].isalnum() and len(fields) >= 8:
                fields[4] = "n"  # no chroot: the private queue is not set up for one
                line = " ".join(fields)
            out.append(line)
        return "\n".join(out) + "\n"

    def start(self) -> int:
        """Start it; the master's process id."""
        subprocess.run([POSTFIX, "-c", str(self.dir / "etc"), "start"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pid_file = self.dir / "queue" / "pid" / "master.pid"
        deadline = time.monotonic() + 10
        while not pid_file.exists() or not pid_file.read_text().strip():
            if time.monotonic() > deadline:
                raise RuntimeError(f"postfix did not start: see {self.dir}/maillog")
            time.sleep(0.05)
        return int(pid_file.read_text().split()[0])

    def stop(self) -> None:
        subprocess.run([POSTFIX, "-c", str(self.dir / "etc"), "stop"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
