# python -m pytest -q tests/test_head_contract.py
"""The head contract: docs/head-contract.md lists every member of the three parts and nothing else; every
registered head is the three parts and holds no state of a run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from factory.contract import task
from factory.heads.head import Head
from factory.registry import heads

PAGE = Path(__file__).resolve().parents[1] / "docs" / "head-contract.md"


def documented() -> dict[str, set[str]]:
    """`{section: {member names}}` from the page's `- \\`name...\\`:` lines."""
    sections: dict[str, set[str]] = {}
    current = None
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = set()
        elif current and (m := re.match(r"- `(\w+)", line)):
            sections[current].add(m.group(1))
    return sections


def members(part: type) -> set[str]:
    return {k for k in vars(part) if not k.startswith("_")} - {"name"}


def test_the_page_lists_every_member_of_every_part():
    pages = documented()
    for part in task.PARTS:
        assert pages[part.__name__] == members(part), part.__name__
    assert pages["Every part"] == {"name"}
    assert pages["The values between layers"] == {"DataSplits", "Encoded", "BatchPosition", "Option"}


def test_the_parts_share_no_member():
    seen: dict[str, str] = {}
    for part in task.PARTS:
        for name in members(part):
            assert name not in seen, f"{name} is in {seen.get(name)} and {part.__name__}"
            seen[name] = part.__name__


@pytest.mark.parametrize("name", sorted(heads()))
def test_every_head_is_the_three_parts_and_holds_no_run_state(name):
    head = heads()[name]
    assert isinstance(head, Head) and all(isinstance(head, part) for part in task.PARTS)
    # One object serves every run of the process: whatever a run needs travels in its rows or states.
    assert vars(head) == {}, f"head {name} holds {sorted(vars(head))}"
    assert all(callable(m) for m in head.methods)
