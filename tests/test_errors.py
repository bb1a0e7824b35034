# python -m pytest -q tests/test_errors.py
"""Every error class the library raises for a user's mistake lives in factory.contract.errors, and the
entry points report each one as a message with exit status 1, never a traceback."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_error_class_of_the_library_is_one_the_entry_points_report():
    """A new error class must be defined in factory.contract.errors and reported by train.py and infer.py."""
    from factory.contract import errors

    defined = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert defined and all(issubclass(cls, errors.USER_ERRORS) for cls in defined)
    package = REPO / "factory"
    elsewhere = []
    for path in package.rglob("*.py"):
        if path == package / "contract" / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                ast.unparse(b).endswith(("Error", "Exception")) for b in node.bases
            ):
                elsewhere.append(f"{path.relative_to(package)}:{node.lineno} {node.name}")
    # Not a user's mistake: caught next to where they are raised, never reported (the control flow of
    # training and sweeps; a damaged or unstorable cache entry, which is encoded again or not cached).
    internal = {"Preempted", "TrialFailed", "TrialPruned", "EntryError", "Unstorable"}
    assert [e for e in elsewhere if e.rsplit(" ", 1)[1] not in internal] == []


def test_the_entry_points_catch_every_error_class():
    assert "except (*USER_ERRORS" in (REPO / "infer.py").read_text(encoding="utf-8")
    train = (REPO / "train.py").read_text(encoding="utf-8")
    assert train.count("except USER_ERRORS as e:") == 2  # the command line's checks, then the run
