# python -m pytest tests/test_layout.py
"""The package's shape: no import cycle among factory's modules, counting imports inside functions too
(a cycle that only closes at call time still means two modules that cannot be understood apart)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "factory"


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _type_checking_only(tree: ast.AST) -> set[ast.AST]:
    """Import statements under `if TYPE_CHECKING:`: never run, so no cycle."""
    skipped: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(n for stmt in node.body for n in ast.walk(stmt))
    return skipped


def import_graph() -> dict[str, dict[str, int]]:
    """factory module -> {factory module it imports: line of the first such import}."""
    modules = _module_names()

    def known(name: str) -> str | None:  # the module itself, or the package an attribute comes from
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        skipped = _type_checking_only(tree)
        edges: dict[str, int] = {}
        for node in ast.walk(tree):
            if node in skipped:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                found = known(target)
                if found is not None and found != name:
                    edges.setdefault(found, node.lineno)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One import path per cycle: the first module again at the end."""
    found, done = [], set()

    def visit(name: str, stack: list[str]) -> None:
        if name in stack:
            found.append(stack[stack.index(name) :] + [name])
            return
        if name in done:
            return
        for target in graph[name]:
            visit(target, [*stack, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    return found


def test_the_graph_sees_imports_at_module_level_and_inside_functions():
    graph = import_graph()
    assert "factory.training.distributed" in graph["factory.training.run"]  # module level
    assert "factory.training.run" in graph["factory.training.replica"]
    assert "factory.build" in graph["factory.training.distributed"]  # inside block_classes


def test_no_import_cycle_among_factory_modules():
    graph = import_graph()
    shown = [
        " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(c, c[1:])) + f" -> {c[-1]}"
        for c in cycles(graph)
    ]
    assert not shown, "Import cycles:\n" + "\n".join(shown)
