# python -m pytest tests/test_tracking.py
"""Trackers offline, against the real libraries: a two-trial sweep with logger=[csv,mlflow,tensorboard,wandb]
logs metrics, the resolved config as hyperparameters and as a file, and the HF model/ folder as an
artifact (MLflow: one SQLite store in the sweep dir, one run per trial; W&B: offline runs); plus the
offline defaults on their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from factory.training.tracking.loggers import flat, logger_defaults, wandb_logged_in
from tests.helpers import TINY_RUN

REPO = Path(__file__).resolve().parent.parent


def offline_env(tmp_path: Path) -> dict[str, str]:
    """No W&B login and W&B's caches under tmp_path: the run must be offline and write nothing elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return env | {
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "NETRC": str(tmp_path / "no-netrc"),
        **{f"WANDB_{k}_DIR": str(tmp_path / "wandb-home" / k.lower()) for k in ("CACHE", "DATA", "CONFIG")},
    }


@pytest.mark.slow
def test_a_sweep_logs_config_metrics_and_model_to_mlflow_wandb_and_tensorboard_offline(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable, str(REPO / "train.py"), "-m", "logger=[csv,mlflow,tensorboard,wandb]",
            "optim.lr=1e-3,2e-3", *TINY_RUN, "data.max_length=32", f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path, env=offline_env(tmp_path), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep", "wandb-home"]  # nothing in the cwd

    # MLflow: the sweep dir's store, one experiment, a run per trial named after its dir.
    assert sorted(p.name for p in sweep.iterdir() if "mlflow" in p.name or p.name == "mlartifacts") == [
        "mlartifacts",
        "mlflow.db",
    ]
    client = mlflow.MlflowClient(f"sqlite:///{sweep / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("train")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["0", "1"]
    for trial, lr in (("0", "0.001"), ("1", "0.002")):
        run = runs[trial]
        results = json.loads((sweep / trial / "results.json").read_text())
        assert run.info.status == "FINISHED"
        assert float(run.data.params["optim.lr"]) == float(lr) and run.data.params["arch.hidden_size"] == "32"
        assert run.data.metrics["val/accuracy"] == pytest.approx(results["best_value"])
        assert "train/loss" in run.data.metrics
        top = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "provenance.json", "model"} <= top
        model = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "model")}
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= model
        config = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path / f"dl{trial}"))
        assert f"lr: {lr}" in Path(config).read_text()

        # TensorBoard: the metrics and the resolved config in the text tab.
        acc = event_accumulator.EventAccumulator(
            str(sweep / trial / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0}
        ).Reload()
        assert "val/accuracy" in acc.Tags()["scalars"]
        text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
        assert f"lr: {lr}" in text

        # W&B: an offline run per trial whose records hold the metrics, the config and both artifacts.
        (offline,) = (sweep / trial / "wandb").glob("offline-run-*")
        (records,) = offline.glob("run-*.wandb")
        data = records.read_bytes()
        run_id = records.stem.removeprefix("run-")
        for needed in (f"model-{run_id}", f"config-{run_id}", "model.safetensors", "provenance.json", "optim.lr", "val/accuracy"):  # fmt: skip
            assert needed.encode() in data, needed

        # CSV: the flattened config next to the model's hyperparameters.
        assert "optim.lr:" in (sweep / trial / "logs" / "hparams.yaml").read_text()


def test_offline_defaults_mlflow_sqlite_in_the_store_wandb_offline_without_a_login(tmp_path, monkeypatch):
    from pytorch_lightning.loggers import CSVLogger, MLFlowLogger, WandbLogger

    run = tmp_path / "sweep" / "3"
    node = logger_defaults(MLFlowLogger, {"tracking_uri": None, "run_name": None}, run, run.parent)
    assert node["tracking_uri"] == f"sqlite:///{(run.parent / 'mlflow.db').resolve()}"
    assert (
        node["artifact_location"] == str((run.parent / "mlartifacts").resolve()) and node["run_name"] == "3"
    )
    server = logger_defaults(MLFlowLogger, {"tracking_uri": "http://host:5000"}, run, run)
    assert server["tracking_uri"] == "http://host:5000" and "artifact_location" not in server

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "absent"))
    assert not wandb_logged_in()
    assert logger_defaults(WandbLogger, {"offline": None}, run, run)["offline"] is True
    assert logger_defaults(WandbLogger, {"offline": False}, run, run)["offline"] is False  # the user's choice
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert logger_defaults(WandbLogger, {"offline": None}, run, run)["offline"] is False  # `wandb login`
    assert logger_defaults(CSVLogger, {"name": "logs"}, run, run) == {"name": "logs"}


def test_the_config_is_flattened_to_dotted_keys():
    assert flat({"optim": {"lr": 1e-3, "betas": [0.9, 0.99]}, "seed": None}) == {
        "optim.lr": 1e-3,
        "optim.betas": "[0.9, 0.99]",
        "seed": None,
    }
