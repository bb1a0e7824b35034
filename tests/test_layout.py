# python -m pytest tests/test_layout.py
"""The package's shape: the layers factory's packages may import, written down once (`ALLOWED`), and no
import cycle among its modules; imports inside functions count too (a cycle that only closes at call time
still means two modules that cannot be understood apart)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "factory"

# The allowed package dependencies, bottom to top: each package (or top-level module) of factory and
# the others it may import. Everything a layer may import is below it, so no package-level cycle can
# form. `factory/__init__.py` (the public API) may import anything.
ALLOWED: dict[str, set[str]] = {
    # The shared types and errors (DataSplits, Encoded, BatchPosition, Option, the head's three parts,
    # TokenizerRecipe, every error class).
    "contract": set(),
    # Hub resolution, reading JSON and weights, the one atomic writer.
    "checkpoints": {"contract"},
    # Typed configs.
    "config": {"contract", "checkpoints"},
    # Which config, model class and head serve a name; imports no architecture and no head.
    "registry": {"contract", "checkpoints", "config"},
    # Tokenizers do not import models.
    "tokenizers": {"contract", "checkpoints", "config", "registry"},
    # Importing the user's code that registers architectures and heads, only when the user names it.
    "plugins": {"contract"},
    # Greedy, sampling and beam search, and the options that choose between them.
    "generation": {"contract"},
    # Models import only config, registry and their own layers (and the checkpoint tables).
    "models": {"contract", "checkpoints", "config", "registry", "generation"},
    "build": {"contract", "config", "registry"},
    "auto": {"contract", "checkpoints", "config", "registry"},
    # Data imports neither heads nor training: it asks a head's data part, which the contract defines.
    "data": {"contract", "checkpoints", "config", "registry", "tokenizers"},
    # Heads import neither training nor inference.
    "heads": {"contract", "checkpoints", "config", "registry", "tokenizers", "generation", "models", "data"},
    "inference": {
        *("contract", "checkpoints", "config", "registry", "tokenizers", "generation", "models", "auto"),
        *("heads", "plugins"),
    },
    "training": {
        *("contract", "checkpoints", "config", "registry", "tokenizers", "generation", "models", "auto"),
        *("build", "data", "heads", "plugins"),
    },
}


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
    assert "factory.training.distributed.ranks" in graph["factory.training.run"]  # module level
    assert "factory.training.run" in graph["factory.training.distributed.replica"]
    assert "factory.build" in graph["factory.training.distributed.ranks"]  # inside block_classes


def test_no_import_cycle_among_factory_modules():
    graph = import_graph()
    shown = [
        " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(c, c[1:])) + f" -> {c[-1]}"
        for c in cycles(graph)
    ]
    assert not shown, "Import cycles:\n" + "\n".join(shown)


def package_of(module: str) -> str:
    """`factory.data.files` -> `data`; `factory.registry` -> `registry`; `factory` -> `factory`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_every_package_has_its_rule():
    packages = {package_of(m) for m in import_graph()} - {"factory"}
    assert packages == set(ALLOWED), f"write the rule of {sorted(packages ^ set(ALLOWED))} into ALLOWED"


def test_packages_import_only_the_layers_below_them():
    graph = import_graph()
    broken = [
        f"{a} (line {line}) imports {b}: {package_of(a)} may import only {sorted(ALLOWED[package_of(a)])}"
        for a, edges in sorted(graph.items())
        if package_of(a) != "factory"
        for b, line in edges.items()
        if package_of(b) != package_of(a) and package_of(b) not in ALLOWED[package_of(a)]
    ]
    assert not broken, "Imports against the layers:\n" + "\n".join(broken)


def test_the_rules_have_no_cycle():
    rules = {p: dict.fromkeys(ALLOWED[p], 0) for p in ALLOWED}
    assert not cycles(rules), cycles(rules)
