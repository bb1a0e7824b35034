# python -m pytest tests/test_help.py
"""`python train.py --help` explains this project: every config group in conf/ on one line with all its
options, the examples, where a run writes, resume, replay and sweeps; not Hydra's config dump."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GROUPS = [
    p.relative_to(REPO / "conf").as_posix()
    for p in sorted((REPO / "conf").rglob("*"))
    if p.is_dir() and any(p.glob("*.yaml")) and p.name != "help"
]


@pytest.mark.slow
def test_help_lists_every_group_and_option_and_says_how_to_run_resume_replay_and_sweep(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    lines = text.splitlines()
    assert len(GROUPS) >= 12, GROUPS
    for group in GROUPS:
        line = next((ln for ln in lines if ln.split()[:1] == [group]), None)
        assert line is not None, f"--help has no line for the group {group}"
        listed = {o.strip(",:") for o in line.split()[1:]}
        for option in sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml")):
            assert option in listed, f"--help does not list {group}={option}"
    for needed in (
        "python train.py resume=<run dir>",
        "--config-dir <run dir>/.hydra --config-name config",  # replay
        "-m hparams_search=optuna",
        "hydra.sweeper.pruner",
        "outputs/train/",
        "model/",
        "logger=[csv,mlflow]",
        "--hydra-help",
    ):
        assert needed in text, needed
    assert "_target_" not in text and "Powered by Hydra" not in text  # not the config dump, not Hydra's text
    assert not list(tmp_path.iterdir())  # help writes no run dir
