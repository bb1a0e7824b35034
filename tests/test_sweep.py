# python -m pytest tests/test_sweep.py
"""Sweeps through the real train.py on tiny dims: a grid with a combination that cannot work (a failed
trial with its reason, not a crashed sweep), the summary files, and an Optuna study in SQLite (seeded,
resumable); plus the summary writer and the trial-dir numbering on their own."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from factory import ConfigError
from factory.training.sweeps import next_trial_dir, run_trial, write_summary
from tests.helpers import TINY_RUN

REPO = Path(__file__).resolve().parent.parent

# A tiny run; the head count is left to each sweep.
TINY = [o for o in TINY_RUN if not o.startswith("arch.num_attention_heads=")] + ["data.max_length=32"]


def train_py(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "train.py"), "-m", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def md_rows(path: Path) -> list[list[str]]:
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("| ")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]  # below the header


def trial_records(sweep: Path) -> dict[int, dict]:
    return {int(p.parent.name): json.loads(p.read_text()) for p in sweep.glob("*/trial.json")}


def sampled(sweep: Path, trial: int, keys: tuple[str, ...]) -> dict[str, str]:
    overrides = yaml.safe_load((sweep / str(trial) / ".hydra" / "overrides.yaml").read_text())
    return {k: v for k, _, v in (o.partition("=") for o in overrides) if k in keys}


# ---- through train.py -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_grid_sweep_fails_only_the_trial_that_cannot_work_and_writes_a_summary(tmp_path):
    sweep = tmp_path / "sweep"
    proc = train_py(
        tmp_path, "arch=bert,gpt2", "arch.num_attention_heads=2,3", *TINY, f"hydra.sweep.dir={sweep}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]  # nothing in the cwd
    records = trial_records(sweep)
    assert sorted(records) == [0, 1, 2, 3]  # every trial ran, each in its own dir
    for n in (1, 3):  # heads=3 does not divide hidden_size=32
        assert records[n]["status"] == "failed" and records[n]["error"] == "ConfigError"
        assert "arch.num_attention_heads=3" in records[n]["reason"] and "divisor" in records[n]["reason"]
        assert not (sweep / str(n) / "model").exists()  # failed before any data or weight
    for n in (0, 2):
        assert records[n]["status"] == "ok" and math.isfinite(records[n]["objective"])
        assert (sweep / str(n) / "results.json").is_file()

    table = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [r["trial"] for r in table] == ["0", "1", "2", "3"]
    assert [r["arch"] for r in table] == ["bert", "bert", "gpt2", "gpt2"]
    assert [r["status"] for r in table] == ["ok", "failed", "ok", "failed"]
    assert int(table[0]["num_parameters"]) > 0 and "num_attention_heads" in table[1]["reason"]
    rows = md_rows(sweep / "summary.md")  # rank | trial | val/accuracy | arch | heads | ... | status | reason
    assert [r[-2] for r in rows] == ["ok", "ok", "failed", "failed"]
    scores = [float(r[2]) for r in rows[:2]]
    assert scores == sorted(scores, reverse=True)  # seqcls monitors val/accuracy: max first
    assert (sweep / "summary.png").stat().st_size > 0


@pytest.mark.slow
def test_optuna_sweep_is_seeded_stored_in_the_sweep_dir_and_resumes(tmp_path):
    optuna = pytest.importorskip("optuna")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    keys = ("optim.lr", "optim.weight_decay", "arch.num_attention_heads")
    args = [
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.seed=1",
        "arch.num_attention_heads=choice(2,3)",  # searched too: some trials cannot work
        *TINY,
    ]
    first, again = tmp_path / "first", tmp_path / "again"
    for sweep in (first, again):
        proc = train_py(tmp_path, *args, f"hydra.sweep.dir={sweep}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert (first / "optuna.db").is_file()
    study = optuna.load_study(study_name="train", storage=f"sqlite:///{first}/optuna.db")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # the seqcls head's mode
    states = [t.state.name for t in study.trials]
    records = trial_records(first)
    assert [records[n]["status"] for n in range(3)] == ["ok" if s == "COMPLETE" else "failed" for s in states]
    assert set(states) == {"COMPLETE", "FAIL"}, states  # with this seed: both kinds of trial
    assert all("num_attention_heads" in r["reason"] for r in records.values() if r["status"] == "failed")
    assert [sampled(first, n, keys) for n in range(3)] == [sampled(again, n, keys) for n in range(3)]

    proc = train_py(tmp_path, *args, f"hydra.sweep.dir={first}")  # the same command: resume
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(optuna.load_study(study_name="train", storage=f"sqlite:///{first}/optuna.db").trials) == 6
    assert sorted(trial_records(first)) == list(range(6))  # new dirs, the first three untouched
    old_lrs = {sampled(first, n, keys)["optim.lr"] for n in range(3)}
    assert not old_lrs & {sampled(first, n, keys)["optim.lr"] for n in range(3, 6)}  # no replay
    assert len(list(csv.DictReader((first / "summary.csv").open()))) == 6


# ---- the pieces -----------------------------------------------------------------------------------------
def fake_trial(sweep: Path, n: int, overrides: list[str], results: dict | None = None) -> None:
    (sweep / str(n) / ".hydra").mkdir(parents=True)
    (sweep / str(n) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if results is not None:
        (sweep / str(n) / "results.json").write_text(json.dumps(results))


def test_summary_ranks_by_the_heads_mode_and_keeps_unfinished_trials(tmp_path):
    base = {"monitor": "val/loss", "mode": "min", "num_parameters": 10, "wall_time_s": 1.0}
    fake_trial(tmp_path, 0, ["optim.lr=1e-3", "data.batch_size=8"], {**base, "best_value": 2.0})
    fake_trial(tmp_path, 1, ["optim.lr=1e-4", "data.batch_size=8"], {**base, "best_value": 1.5})
    fake_trial(tmp_path, 2, ["optim.lr=1e-5", "data.batch_size=8"])  # killed: no results yet
    rows = write_summary(tmp_path)
    assert [r["status"] for r in rows] == ["ok", "ok", "incomplete"]
    md = md_rows(tmp_path / "summary.md")
    assert [r[1] for r in md] == ["1", "0", "2"]  # lowest loss first, the killed trial last
    header = (tmp_path / "summary.csv").read_text().splitlines()[0].split(",")
    assert "optim.lr" in header and "data.batch_size" not in header  # only what was swept
    assert (tmp_path / "summary.png").stat().st_size > 0


def test_trial_dirs_keep_counting_across_processes(tmp_path):
    (tmp_path / "0").mkdir()
    (tmp_path / "7").mkdir()  # left by an earlier run or another worker
    assert next_trial_dir(str(tmp_path), 0) == "8"
    assert next_trial_dir(str(tmp_path), 1) == "9"
    assert next_trial_dir(str(tmp_path), 0) == "8"  # one job, one dir


@pytest.mark.parametrize("sweeper", ["basic", "optuna"])
def test_a_failed_trial_is_recorded_then_nan_or_raised_per_sweeper(tmp_path, monkeypatch, sweeper):
    import factory.training.sweeps as sweep

    targets = {
        "basic": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
        "optuna": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
    }
    hydra_cfg = OmegaConf.create(
        {
            "runtime": {"output_dir": str(tmp_path / "0")},
            "job": {"num": 0},
            "sweeper": {"_target_": targets[sweeper]},
        }
    )
    monkeypatch.setattr(sweep, "in_multirun", lambda: True)
    monkeypatch.setattr(sweep, "_hydra", lambda: hydra_cfg)
    (tmp_path / "0").mkdir()
    cfg = OmegaConf.create({"head": {"monitor": "val/loss", "mode": "min"}})
    if sweeper == "basic":  # the grid sweeper goes on with nan; Optuna marks the trial failed
        assert math.isnan(run_trial(cfg, lambda c: float("inf")))
    else:
        with pytest.raises(sweep.TrialFailed, match="not finite"):
            run_trial(cfg, lambda c: float("inf"))
    record = json.loads((tmp_path / "0" / "trial.json").read_text())
    assert record["status"] == "failed" and "val/loss=inf" in record["reason"] and record["objective"] is None


def test_a_single_run_raises_as_before():
    def bad(cfg):
        raise ConfigError("arch.num_attention_heads=3: not a divisor")

    with pytest.raises(ConfigError, match="num_attention_heads"):
        run_trial(OmegaConf.create({}), bad)
