# python -m pytest tests/test_sweep.py
"""Sweeps through the real train.py on tiny dims: a grid with a combination that cannot work (a failed
trial with its reason, not a crashed sweep), the summary files, and our Optuna sweeper (a seeded study in
a journal file in the sweep dir, resumed; pruning; two worker processes sharing a study); plus the
summary writer, the search space, the pruners and the study plots on their own."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from factory import ConfigError
from factory.training.hydra_internals import BASIC_SWEEPER
from factory.training.sweeps.summary import write_summary
from factory.training.sweeps.trials import run_trial
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


def study_of(sweep: Path, name: str = "train"):
    optuna = pytest.importorskip("optuna")
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(sweep / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


# Six steps and a validation every two: three reports per trial for the pruner.
REPORTS = ["trainer.max_steps=6", "trainer.val_check_interval=2"]
STEPS = [o for o in TINY if not o.startswith(("trainer.max_steps=", "trainer.val_check_interval="))] + REPORTS


@pytest.mark.slow
def test_optuna_sweep_is_seeded_stored_in_the_sweep_dir_and_resumes(tmp_path):
    optuna = pytest.importorskip("optuna")
    keys = ("optim.lr", "optim.weight_decay", "arch.num_attention_heads")
    args = [
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.seed=1",
        "hydra.sweeper.pruner=none",
        "arch.num_attention_heads=choice(2,3)",  # searched too: some trials cannot work
        *TINY,
    ]
    first, again = tmp_path / "first", tmp_path / "again"
    for sweep in (first, again):
        proc = train_py(tmp_path, *args, f"hydra.sweep.dir={sweep}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert (first / "optuna.journal").is_file()
    study = study_of(first)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # the seqcls head's mode
    states = [t.state.name for t in study.trials]
    records = trial_records(first)
    assert [records[n]["status"] for n in range(3)] == ["ok" if s == "COMPLETE" else "failed" for s in states]
    assert set(states) == {"COMPLETE", "FAIL"}, states  # with this seed: both kinds of trial
    assert all("num_attention_heads" in r["reason"] for r in records.values() if r["status"] == "failed")
    assert [sampled(first, n, keys) for n in range(3)] == [sampled(again, n, keys) for n in range(3)]
    for t in study.trials:  # the trial's values are what its run trained with
        assert float(sampled(first, t.number, keys)["optim.lr"]) == t.params["optim.lr"]

    proc = train_py(tmp_path, *args, f"hydra.sweep.dir={first}")  # the same command: resume
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [t.number for t in study_of(first).trials] == list(range(6))
    assert sorted(trial_records(first)) == list(range(6))  # new dirs, the first three untouched
    old_lrs = {sampled(first, n, keys)["optim.lr"] for n in range(3)}
    assert not old_lrs & {sampled(first, n, keys)["optim.lr"] for n in range(3, 6)}  # no replay
    assert len(list(csv.DictReader((first / "summary.csv").open()))) == 6
    for plot in ("summary.png", "optimization_history.png", "param_importances.png"):
        assert (first / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot


@pytest.mark.slow
def test_a_pruned_trial_stops_at_that_validation_and_is_recorded_as_pruned(tmp_path):
    sweep = tmp_path / "sweep"
    proc = train_py(
        tmp_path,
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.seed=1",
        "hydra.sweeper.pruner=median",
        "hydra.sweeper.pruners.median.n_startup_trials=1",
        # The validation loss: a continuous value. Seed 1 samples 1e-5 for trials 0 and 2 (slow, loss near
        # ln 2) and 3.0 for trial 1, whose steps jump so far that its loss is worse at its first report.
        "head.monitor=val/loss",
        "head.mode=min",
        "optim.lr=choice(3.0,1e-5)",
        "optim.weight_decay=0",
        "optim.warmup_ratio=0",
        *STEPS,
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Error executing job" not in proc.stderr
    study = study_of(sweep)
    states = {t.number: t.state.name for t in study.trials}
    assert sorted(states.values()) == ["COMPLETE", "COMPLETE", "PRUNED"], states  # with this seed
    records = trial_records(sweep)
    table = {int(r["trial"]): r for r in csv.DictReader((sweep / "summary.csv").open())}
    for t in study.trials:
        results = json.loads((sweep / str(t.number) / "results.json").read_text())
        assert sorted(t.intermediate_values) == [2, 4, 6][: len(t.intermediate_values)]
        if t.state.name == "PRUNED":
            step = max(t.intermediate_values)  # the step of the report the pruner stopped
            assert step < 6 and results["global_step"] == step and results["pruned_step"] == step
            assert records[t.number]["status"] == "pruned" and records[t.number]["pruned_step"] == step
            assert table[t.number]["status"] == "pruned" and table[t.number]["pruned_step"] == str(step)
            assert (sweep / str(t.number) / "model" / "config.json").is_file()  # the run ended normally
        else:
            assert results["global_step"] == 6 and results["pruned_step"] is None
            assert records[t.number]["status"] == "ok" and table[t.number]["status"] == "ok"
            assert study.trials[t.number].value == pytest.approx(results["best_value"])
    pruned = next(t for t in study.trials if t.state.name == "PRUNED")
    row = next(r for r in md_rows(sweep / "summary.md") if r[-2].startswith("pruned"))
    assert row[1] == str(pruned.number) and row[-2] == f"pruned at step {max(pruned.intermediate_values)}"


@pytest.mark.slow
def test_parallel_workers_share_one_study_without_running_a_trial_twice(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.seed=3",
        "hydra.sweeper.pruner=none",
        *TINY,
        f"hydra.sweep.dir={sweep}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "train.py"), "-m", *args]
    workers = [
        subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err[-3000:]
    study = study_of(sweep)
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert {t.state.name for t in study.trials} == {"COMPLETE"}
    assert sorted(trial_records(sweep)) == [0, 1, 2, 3]  # each trial ran once, in its own dir
    keys = (
        "optim.lr",
        "optim.weight_decay",
        "optim.warmup_ratio",
        "arch.num_hidden_layers",
        "arch.hidden_size",
    )
    values = [tuple(sorted(sampled(sweep, n, keys).items())) for n in range(4)]
    assert len(set(values)) == 4  # no two trials with the same values
    for t in study.trials:
        assert float(sampled(sweep, t.number, keys)["optim.lr"]) == t.params["optim.lr"]
    assert len(list(csv.DictReader((sweep / "summary.csv").open()))) == 4


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


@pytest.mark.parametrize("sweeper", ["basic", "optuna"])
def test_a_failed_trial_is_recorded_then_nan_or_raised_per_sweeper(tmp_path, monkeypatch, sweeper):
    import factory.training.sweeps.trials as sweep

    targets = {
        "basic": BASIC_SWEEPER,
        "optuna": "hydra_plugins.factory_sweeper.optuna.OptunaSweeper",
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


# ---- the Optuna sweeper's pieces ------------------------------------------------------------------------
def test_the_search_space_reads_hydras_sweep_syntax_and_the_command_line_wins():
    pytest.importorskip("optuna")
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from factory.training.sweeps.study import search_space

    params = {"optim.lr": "tag(log, interval(1e-5, 1e-2))", "arch.hidden_size": "choice(64, 128)"}
    space, fixed = search_space(
        params,
        [
            "arch.hidden_size=32",
            "+trainer.x=range(1,4)",
            "arch=bert,gpt2",
            "optim.weight_decay=interval(0,1)",
        ],
    )
    assert space == {
        "optim.lr": FloatDistribution(1e-5, 1e-2, log=True),
        "+trainer.x": IntDistribution(1, 3),  # range() excludes its stop
        "arch": CategoricalDistribution(["bert", "gpt2"]),
        "optim.weight_decay": FloatDistribution(0.0, 1.0),  # Hydra's interval() is of floats
    }
    assert fixed == ["arch.hidden_size=32"]  # a plain value leaves the search space


def test_bad_pruner_and_sweeper_settings_name_the_key_and_the_choices():
    pytest.importorskip("optuna")
    from factory.training.sweeps.study import OptunaSweeper, make_pruner

    with pytest.raises(
        ConfigError,
        match=r"hydra.sweeper.pruner='medain'.*'median', 'percentile', 'successive_halving', 'hyperband', 'none'.*median",
    ):
        make_pruner("medain")
    with pytest.raises(ConfigError, match=r"hydra.sweeper.pruners.median: .*n_startup_trial"):
        make_pruner("median", {"median": {"n_startup_trial": 2}})
    assert (
        type(make_pruner("hyperband", {"hyperband": {"reduction_factor": 2}})).__name__ == "HyperbandPruner"
    )
    # The shipped settings of every pruner are Optuna's arguments.
    with initialize_config_dir(config_dir=str(REPO / "conf" / "hydra" / "sweeper"), version_base="1.3"):
        shipped = OmegaConf.to_container(compose("optuna").pruners)
    kinds = {name: type(make_pruner(name, shipped)).__name__ for name in shipped}
    assert kinds == {
        "median": "MedianPruner",
        "percentile": "PercentilePruner",
        "successive_halving": "SuccessiveHalvingPruner",
        "hyperband": "HyperbandPruner",
        "none": "NopPruner",
    }
    with pytest.raises(ConfigError, match="hydra.sweeper.direction='maximise'"):
        OptunaSweeper(direction="maximise")
    with pytest.raises(ConfigError, match="hydra.sweeper.n_trials=0"):
        OptunaSweeper(n_trials=0)


def sample(storage: str, asks: int, sweep_dir: Path) -> list[float]:
    """The lr of `asks` new trials of a study in `storage`, asked as the sweeper does (seed 7)."""
    from factory.training.sweeps.study import OptunaSweeper, search_space

    space, _ = search_space({"optim.lr": "tag(log, interval(1e-5, 1e-2))"}, [])
    sweeper = OptunaSweeper(storage=storage, sampler={"seed": 7}, pruner="none")
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})
    study = sweeper.open_study()
    return [sweeper.ask(study, space).params["optim.lr"] for _ in range(asks)]


def test_each_trial_is_sampled_with_its_own_seed(tmp_path):
    pytest.importorskip("optuna")
    once = sample(str(tmp_path / "a.journal"), 3, tmp_path)
    assert once == sample(str(tmp_path / "b.journal"), 3, tmp_path)  # seeded
    assert len(set(once)) == 3
    assert sample(str(tmp_path / "a.journal"), 1, tmp_path)[0] not in once  # trial 3 of a resumed study


@pytest.mark.slow  # SQLite: Optuna creates its schema (alembic) first
def test_a_study_in_an_rdb_is_sampled_as_in_a_journal(tmp_path):
    pytest.importorskip("optuna")
    rdb = sample(f"sqlite:///{tmp_path / 'study.db'}", 3, tmp_path)
    assert rdb == sample(str(tmp_path / "a.journal"), 3, tmp_path)
    assert (
        sample(f"sqlite:///{tmp_path / 'study.db'}", 1, tmp_path)[0] not in rdb
    )  # loaded, not created again


def test_study_plots_show_the_history_and_the_importances(tmp_path):
    optuna = pytest.importorskip("optuna")
    from factory.training.sweeps.study import write_study_plots

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for i in range(6):
        trial = study.ask()
        x, y = trial.suggest_float("x", 0, 1), trial.suggest_int("y", 0, 3)
        trial.report(x, step=1)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED) if i == 4 else study.tell(trial, x + 0.01 * y)
    write_study_plots(study, tmp_path)
    for name in ("optimization_history.png", "param_importances.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name
    empty = tmp_path / "empty"
    empty.mkdir()
    write_study_plots(optuna.create_study(), empty)  # no trials: a history without points, no importances
    assert sorted(p.name for p in empty.iterdir()) == ["optimization_history.png"]


def test_the_sweeper_tells_the_study_how_each_job_ended_and_stops_on_an_unexpected_error(tmp_path):
    pytest.importorskip("optuna")
    from hydra.core.utils import JobReturn, JobStatus

    from factory.training.sweeps.study import OptunaSweeper
    from factory.training.sweeps.trials import TrialFailed, TrialPruned

    outcomes = [0.5, TrialPruned("stopped", step=4), TrialFailed("heads=3"), 0.7, RuntimeError("a bug"), 0.9]
    launched: list[list[str]] = []

    class Launcher:  # runs nothing: each job ends as `outcomes` says
        def launch(self, batch, initial_job_idx):
            launched.extend(list(b) for b in batch)
            out = []
            for _ in batch:
                outcome = outcomes[len(launched) - len(batch) + len(out)]
                ret = JobReturn(
                    status=JobStatus.FAILED if isinstance(outcome, Exception) else JobStatus.COMPLETED
                )
                ret._return_value, ret.overrides = outcome, []
                out.append(ret)
            return out

    sweeper = OptunaSweeper(
        n_trials=6, n_jobs=2, sampler={"seed": 0}, pruner="none", params={"optim.lr": "interval(0, 1)"}
    )
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    sweeper.launcher = Launcher()
    sweeper.validate_batch_is_legal = lambda batch: None
    with pytest.raises(RuntimeError, match="a bug"):
        sweeper.sweep(["data.batch_size=8"])
    study = sweeper.open_study()
    # The error stops the sweep after its batch is told: the sixth trial ran beside the fifth.
    assert [t.state.name for t in study.trials] == [
        "COMPLETE",
        "PRUNED",
        "FAIL",
        "COMPLETE",
        "FAIL",
        "COMPLETE",
    ]
    assert study.best_value == 0.9
    for n, job in enumerate(launched):
        assert job[1:] == ["data.batch_size=8", f"hydra.sweep.subdir={n}", f"++hydra.sweeper.trial={n}"]
        assert float(job[0].split("=")[1]) == study.trials[n].params["optim.lr"]
    assert (tmp_path / "optimization_history.png").is_file()

    class Broken:  # a launcher that cannot start the jobs (no SLURM, ...)
        def launch(self, batch, initial_job_idx):
            raise OSError("sbatch: not found")

    other = OptunaSweeper(study_name="other", n_jobs=2, pruner="none", params={"optim.lr": "interval(0, 1)"})
    other.config, other.launcher, other.validate_batch_is_legal = sweeper.config, Broken(), lambda b: None
    with pytest.raises(OSError, match="sbatch"):
        other.sweep([])
    assert [t.state.name for t in other.open_study().trials] == ["FAIL", "FAIL"]  # none left running


@pytest.mark.parametrize(
    "line",
    [
        "optim.lr=tag(log,interval(1e-2,1e-4))",
        "optim.lr=tag(log,interval(0,1e-2))",
        "data.batch_size=interval(64,8)",
    ],
)
def test_a_range_optuna_cannot_sample_is_an_error_naming_the_key(line):
    from factory.training.sweeps.study import search_space

    with pytest.raises(ConfigError, match=rf"{re.escape(line)}: .*Give the low end first") as caught:
        search_space({}, [line])
    assert caught.value.key == line.split("=")[0]


@pytest.mark.slow
def test_train_py_refuses_a_reversed_range_before_the_sweep_starts(tmp_path):
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "-m",
        "hparams_search=optuna",
        "optim.lr=tag(log,interval(1e-2,1e-4))",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "optim.lr=tag(log,interval(1e-2,1e-4)): `low <= high` must hold" in proc.stderr
    assert not (tmp_path / "sweep").exists()  # no trial ran
