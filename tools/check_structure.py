"""Structure rules for trio_smtpd/, checked by ``nox -s lint``.

- no import cycle between the package's modules (imports under TYPE_CHECKING count: a
  cycle of types is still a cycle of ideas);
- no function longer than 50 lines;
- the Session class under 300 lines.

Prints each breach and exits 1 if there is any. Standard library only.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "trio_smtpd"
MAX_FUNCTION = 50
MAX_SESSION = 300


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(tree: ast.Module, name: str, is_package: bool) -> set[str]:
    """The package's modules that ``name`` imports."""
    found = set()
    base = name.split(".") if is_package else name.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith(PACKAGE)}
        elif isinstance(node, ast.ImportFrom):
            parent = base[: len(base) - node.level + 1] if node.level else []
            target = ".".join([*parent, *(node.module.split(".") if node.module else [])])
            if not target.startswith(PACKAGE):
                continue
            found.add(target)
            # "from . import _events" imports a module, not a name
            found |= {f"{target}.{alias.name}" for alias in node.names}
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    problems: list[str] = []
    graph: dict[str, set[str]] = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        name = module_name(path, root)
        graph[name] = imports(tree, name, path.name == "__init__.py")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION:
                    problems.append(f"{path.relative_to(root)}:{node.lineno}: {node.name} "
                                    f"is {length} lines (at most {MAX_FUNCTION})")
            if isinstance(node, ast.ClassDef) and node.name == "Session":
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_SESSION:
                    problems.append(f"{path.relative_to(root)}: Session is {length} lines "
                                    f"(at most {MAX_SESSION})")
    graph = {name: {m for m in targets if m in graph and m != name}
             for name, targets in graph.items()}
    # A package's __init__ re-exports its modules; only cycles among modules matter.
    modules = {name: {m for m in targets if not _is_package(m, graph)}
               for name, targets in graph.items() if not _is_package(name, graph)}
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(modules)]
    for problem in problems:
        print(problem)
    return 1 if problems else 0


def _is_package(name: str, graph: dict[str, set[str]]) -> bool:
    return any(other.startswith(name + ".") for other in graph)


if __name__ == "__main__":
    sys.exit(main())
