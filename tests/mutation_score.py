"""The mutation score of the last ``mutmut run``, with tests/MUTANTS.md's equivalents out.

Run by ``nox -s mutate`` after mutmut (from the project root, where mutants/ is). A mutant
counts as killed when a test failed or hung on it (mutmut's "killed" and "timeout"); as
alive when it "survived", had "no tests", or was only "suspicious". Mutants that
MUTANTS.md lists as equivalent (they cannot change behaviour) are left out of the total.
Every alive mutant that MUTANTS.md does not list is printed: each needs a test or an
entry there. Exit status 1 if there is any such mutant or the score is under 90%.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

TARGET = 0.90
KILLED = {"killed", "timeout"}
ALIVE = {"survived", "no tests", "suspicious"}
LISTED = re.compile(r"^\s*- `(trio_smtpd\.[^`]+)`", re.MULTILINE)


def listed(markdown: str, heading: str) -> set[str]:
    """Mutant names in the bullet lists of the ``## heading`` section."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", markdown,
                      re.MULTILINE | re.DOTALL)
    return set(LISTED.findall(match[1])) if match else set()


def main() -> int:
    out = subprocess.run(["mutmut", "results", "--all", "true"], capture_output=True,
                         text=True, check=True).stdout
    status = {}
    for line in out.splitlines():
        name, sep, state = line.strip().rpartition(": ")
        if sep and name.startswith("trio_smtpd."):
            status[name] = state
    markdown = (Path(__file__).parent / "MUTANTS.md").read_text()
    equivalent = listed(markdown, "Equivalent mutants")
    findings = listed(markdown, "Real findings")
    counts = Counter(status.values())
    stale = sorted((equivalent | findings) - status.keys())
    counted = {name: state for name, state in status.items() if name not in equivalent}
    killed = sum(state in KILLED for state in counted.values())
    alive = sorted(name for name, state in counted.items() if state in ALIVE)
    unreviewed = [name for name in alive if name not in findings]
    wrongly_listed = sorted(name for name in equivalent if status.get(name) in KILLED)
    score = killed / len(counted) if counted else 0.0
    print(f"mutants: {len(status)} ({', '.join(f'{n} {s}' for s, n in counts.most_common())})")
    print(f"equivalent (tests/MUTANTS.md): {len(equivalent & status.keys())}")
    print(f"score: {killed}/{len(counted)} killed = {score:.1%} (target {TARGET:.0%}); "
          f"counting the equivalent ones as alive: {killed}/{len(status)} = "
          f"{killed / len(status) if status else 0.0:.1%}")
    print(f"alive: {len(alive)}, of which real findings listed: {len(alive) - len(unreviewed)}")
    for name in wrongly_listed:
        print(f"listed as equivalent but killed (remove it from MUTANTS.md): {name}")
    for name in stale:
        print(f"listed in MUTANTS.md but no longer generated: {name}")
    for name in unreviewed:
        print(f"not reviewed (kill it with a test, or list it in MUTANTS.md): {name}")
    return 0 if score >= TARGET and not unreviewed else 1


if __name__ == "__main__":
    sys.exit(main())
