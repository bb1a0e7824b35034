# pytest tests/test_ci.py
"""CI runs the README's test command as written: .ci/run and README.md cannot drift apart."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def readme_test_command() -> str:
    """The first line of the code block that follows "Install and run the tests" in README.md."""
    text = (REPO / "README.md").read_text()
    match = re.search(r"^Install and run the tests.*?^```\w*\n([^\n]+)$", text, flags=re.M | re.S)
    assert match, "README.md has no code block after 'Install and run the tests'"
    return match.group(1)


@pytest.mark.skipif(shutil.which("bash") is None, reason=".ci/run is a bash script")
def test_ci_runs_the_readme_test_command_after_the_lint():
    proc = subprocess.run(
        ["bash", str(REPO / ".ci" / "run"), "--dry-run"], capture_output=True, text=True, check=True
    )
    steps = proc.stdout.splitlines()
    assert steps[-1] == readme_test_command()
    assert steps.index("ruff check .") < len(steps) - 1 and "ruff format --check ." in steps[:-1]
