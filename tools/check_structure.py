"""Structure rules for trio_smtpd/, checked by ``nox -s lint``.

- no import cycle between the package's modules (imports under TYPE_CHECKING count: a
  cycle of types is still a cycle of ideas; a name imported from a package, as in
  ``from .. import Config``, counts as an import of the module its __init__ has it from);
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


def resolve(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    """The module an ``ImportFrom`` in module ``name`` imports from."""
    base = name.split(".") if is_package else name.split(".")[:-1]
    parent = base[: len(base) - node.level + 1] if node.level else []
    return ".".join([*parent, *(node.module.split(".") if node.module else [])])


def imports(tree: ast.Module, name: str, is_package: bool, modules: set[str],
            exports: dict[str, dict[str, str]]) -> set[str]:
    """The package's modules that ``name`` imports. A name imported from a package
    ("from . import Reply", "from .. import Config") counts as an import of the module
    the package's __init__ has it from, so that cycles through re-exports show."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith(PACKAGE)}
        elif isinstance(node, ast.ImportFrom):
            target = resolve(node, name, is_package)
            if not target.startswith(PACKAGE):
                continue
            found.add(target)
            for alias in node.names:
                # "from . import _events" imports a module, not a name
                module = f"{target}.{alias.name}"
                found.add(module if module in modules else origin(target, alias.name, exports))
    return found


def origin(package: str, name: str, exports: dict[str, dict[str, str]]) -> str:
    """The module ``name``, imported from ``package``, comes from: followed through the
    __init__ files that re-export it (the package itself if it is defined there)."""
    seen = {package}
    while (source := exports.get(package, {}).get(name)) is not None and source not in seen:
        seen.add(source)
        package = source
    return package


def reexports(tree: ast.Module, package: str) -> dict[str, str]:
    """What a package's __init__ imports from its modules: each name, and its module."""
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            source = resolve(node, package, True)
            for alias in node.names:
                names[alias.asname or alias.name] = source
    return names


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
    trees = {path: ast.parse(path.read_text(), str(path))
             for path in sorted((root / PACKAGE).rglob("*.py"))}
    exports = {module_name(path, root): reexports(tree, module_name(path, root))
               for path, tree in trees.items() if path.name == "__init__.py"}
    known = {module_name(path, root) for path in trees}
    graph: dict[str, set[str]] = {}
    for path, tree in trees.items():
        name = module_name(path, root)
        graph[name] = imports(tree, name, path.name == "__init__.py", known, exports)
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
