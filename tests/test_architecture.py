"""The package's import graph: no cycles, and nothing below the CLI imports it.

Every `import` / `from ... import` in aware_cli counts, at any depth (inside functions too),
relative imports resolved; `import a.b.c` is an edge to the module a.b.c.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

import aware_cli

ROOT = Path(aware_cli.__file__).resolve().parent
CLI = {"aware_cli.cli"}
ALLOWED_CLI_USERS = {"aware_cli.cli", "aware_cli.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> Dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def resolve(name: str, known: Set[str]) -> Optional[str]:
    """The aware_cli module `name` refers to (a module, or the package it is an attribute of)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports(path: Path, module: str, known: Set[str]) -> Set[str]:
    """aware_cli modules `module` imports, anywhere in its file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import name`: name may be a submodule (an edge to it) or an attribute (to pkg)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            hit = resolve(target, known)
            if hit is not None and hit != module:
                found.add(hit)
    return found


def graph() -> Dict[str, Set[str]]:
    known = modules()
    names = set(known)
    return {name: imports(path, name, names) for name, path in known.items()}


def find_cycle(edges: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle as [a, b, ..., a], or None."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_walk_sees_imports_inside_functions():
    edges = graph()
    assert "aware_cli.cli" in edges and edges["aware_cli.cli"]
    assert len(edges) > 40


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_nothing_below_the_cli_imports_it():
    users = sorted(name for name, targets in graph().items() if targets & CLI and name not in ALLOWED_CLI_USERS)
    assert not users, f"modules below the CLI import it: {', '.join(users)}"
