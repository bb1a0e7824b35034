# python -m pytest tests/test_run_dir.py
"""A run owns its directory: a second run (or a resume) in a dir a live run trains in is refused, a dead
run's lock is taken over, and default run dir names differ for launches in the same second."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from factory.config import ConfigError
from factory.training.resume import LOCK_FILE, RunLock, lock_holder, resume_argv

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture
def live_pid():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield sleeper.pid
    sleeper.kill()
    sleeper.wait()


def test_a_live_lock_is_refused_a_dead_one_taken_over(tmp_path, live_pid):
    (tmp_path / LOCK_FILE).write_text(f"{live_pid}\n")
    with pytest.raises(ConfigError, match=rf"hydra.run.dir={tmp_path}: process {live_pid} is training"):
        RunLock(tmp_path).__enter__()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (tmp_path / LOCK_FILE).write_text(dead.stdout)
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert not (tmp_path / LOCK_FILE).exists()  # released at the end
    assert lock_holder(tmp_path) is None


def test_resume_of_a_dir_a_live_run_holds_is_refused(tmp_path, live_pid):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("resume: null\n")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    (tmp_path / LOCK_FILE).write_text(f"{live_pid}\n")
    with pytest.raises(ConfigError, match=rf"resume={tmp_path}: process {live_pid}"):
        resume_argv([f"resume={tmp_path}"])


@pytest.mark.slow
def test_train_py_refuses_a_run_dir_a_live_run_holds(tmp_path, live_pid):
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text(f"{live_pid}\n")
    cmd = [sys.executable, str(REPO / "train.py"), f"hydra.run.dir={run}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert f"process {live_pid} is training" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # nothing of the second run's


def test_default_run_dirs_differ_within_a_second(monkeypatch):
    """Eight launches whose clocks read the same second (each its own pid) get eight dirs."""
    from datetime import datetime

    from omegaconf import OmegaConf

    import factory.training.resume  # noqa: F401  (registers the resolver, as train.py's imports do)

    OmegaConf.register_new_resolver("now", lambda pattern: "2026-01-01_00-00-00", replace=True)
    names = set()
    try:
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            for pid in range(1000, 1008):
                monkeypatch.setattr(os, "getpid", lambda pid=pid: pid)
                names.add(compose("train", return_hydra_config=True).hydra.run.dir)
    finally:  # Hydra's own, as hydra.core.utils registers it
        OmegaConf.register_new_resolver(
            "now", lambda pattern: datetime.now().strftime(pattern), use_cache=True, replace=True
        )
    assert len(names) == 8, names
