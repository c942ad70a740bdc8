"""Several rules files, and ``include``: which ``[[rule]]`` tables there are, in order.

``--rules`` may be given more than once; as in sinksmtp, rules of an earlier file come
before (take priority over) those of a later one. A file may include others::

    include = ["local-traps.toml", "/etc/trio-smtpd/common.toml"]

    [[rule]]
    ...

TOML puts top-level keys before any table, so ``include`` stands at the top of the file,
and that is where the included rules go: each included file's rules (its own includes
first), in the order listed, then the including file's own. A relative name is relative
to the including file. A file that includes itself, directly or not, or includes nested
more than 10 deep, is an error. So is a file with neither rules nor includes, unless it
says ``rule = []``: an empty file is more often a truncated write than a policy.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path

__all__ = ["RulesError", "rule_entries"]

MAX_DEPTH = 10


class RulesError(ValueError):
    """The rules file cannot be used; the message names the file, the rule and why."""


def rule_entries(paths: str | Path | Sequence[str | Path]) -> list[tuple[Path, int, object]]:
    """``(file, index in that file from 1, table)`` for every rule, in priority order."""
    if isinstance(paths, str | Path):
        paths = [paths]
    found: list[tuple[Path, int, object]] = []
    for path in paths:
        _read(Path(path), [], found)
    return found


def _read(path: Path, including: list[Path], found: list[tuple[Path, int, object]]) -> None:
    resolved = path.resolve()
    if resolved in including:
        chain = " -> ".join(str(p) for p in [*including, resolved])
        raise RulesError(f"{path}: included by itself ({chain})")
    if len(including) >= MAX_DEPTH:
        raise RulesError(f"{path}: includes nested more than {MAX_DEPTH} deep")
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RulesError(f"{path}: {exc}") from None
    unknown = set(document) - {"rule", "include"}
    if unknown:
        raise RulesError(f"{path}: unknown top-level keys {sorted(unknown)}")
    if "rule" not in document and "include" not in document:
        # A file truncated to nothing (or never written) must not silently drop the
        # policy: "no rules" has to be said.
        raise RulesError(f"{path}: no rules; write 'rule = []' if that is what you mean")
    includes = document.get("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) and i for i in includes):
        raise RulesError(f"{path}: 'include' takes a file name or a list of them")
    for name in includes:
        _read(path.parent / name, [*including, resolved], found)
    entries = document.get("rule", [])
    if not isinstance(entries, list):
        raise RulesError(f"{path}: 'rule' must be an array of tables ([[rule]])")
    found += [(path, index, entry) for index, entry in enumerate(entries, 1)]
