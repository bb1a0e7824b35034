# pytest tests/test_faults.py
"""Faults a user hits, each stopped with a message naming the key instead of a silent success or a raw
traceback: divergence, runs that train nothing, keys nothing reads, overflowing learning rates, a resume
that changes the model's shape, and configs that try to construct arbitrary objects."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from factory.config import ConfigError
from factory.training.lightning.failures import NonFiniteError
from factory.training.lightning.optim import check_optim
from factory.training.run import train
from tests.helpers import TINY_RUN

CONF = Path(__file__).resolve().parent.parent / "conf"


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def run_train(tmp_path: Path, *overrides: str, run_dir: Path | None = None):
    overrides = [*TINY_RUN, "data.max_length=32", *overrides]
    return train(compose_cfg(*overrides), run_dir=run_dir or tmp_path / "run", overrides=overrides)


@pytest.fixture
def no_data(monkeypatch):
    monkeypatch.setattr(
        "factory.data.sources.load_examples",
        lambda *a, **k: pytest.fail("data was read before the config check"),
    )


@pytest.mark.parametrize(
    "typed, expected",
    [
        (["+unknown=1"], ["top-level key 'unknown'", "+trainer.<name>"]),
        (["+data.bach_size=8"], ["data.bach_size=8 is not read by head=seqcls", "Did you mean 'batch_size'"]),
        (
            ["head=qa", "+data.label_column=label"],
            ["data.label_column='label' is not read by head=qa", "head=seqcls"],
        ),
        (["trainer.max_epochs=0"], ["trainer.max_epochs=0 trains nothing"]),
        (["trainer.max_steps=0"], ["trainer.max_steps=0 trains nothing"]),
        (["optim.lr=1e38"], ["optim.lr=1e+38", "float32"]),
    ],
)
def test_config_faults_fail_before_data_naming_the_key(no_data, tmp_path, typed, expected):
    with pytest.raises(ConfigError) as e:
        train(compose_cfg(*typed), run_dir=tmp_path / "run", overrides=typed)
    for part in expected:
        assert part in str(e.value), (part, str(e.value))


def test_a_learning_rate_that_overflows_float32_is_named():
    assert check_optim({"lr": 1e30})["lr"] == 1e30  # large but representable: the user's call
    with pytest.raises(ConfigError, match=r"optim.lr=inf"):
        check_optim({"lr": math.inf})


@pytest.mark.slow
def test_a_diverged_validation_loss_is_an_error_and_nothing_is_exported(tmp_path):
    with pytest.raises(NonFiniteError, match=r"validation loss is nan at global step 1"):
        run_train(
            tmp_path,
            "optim.lr=1e30",
            "optim.warmup_ratio=0",
            "trainer.gradient_clip_val=0",
            "trainer.max_steps=1",
            "trainer.val_check_interval=1",
        )
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "results.json").exists()
    assert not list((tmp_path / "run").glob("checkpoints/*.ckpt"))


@pytest.mark.slow
def test_a_resume_that_changes_the_models_shape_names_the_keys(tmp_path):
    run = tmp_path / "run"
    run_train(tmp_path, "callbacks.last_checkpoint.every_n_train_steps=1", run_dir=run)
    cfg = compose_cfg(*TINY_RUN, "data.max_length=32", "arch.hidden_size=64")
    with open_dict(cfg):
        cfg.resume = str(run)
    with pytest.raises(ConfigError, match=r"arch.hidden_size: 32 -> 64"):
        train(cfg, run_dir=run, overrides=["arch.hidden_size=64"])
    assert json.loads((run / "results.json").read_text())["global_step"] == 3  # the run is as it was


@pytest.mark.parametrize(
    "node, pattern",
    [
        (
            {"_target_": "logging.FileHandler", "filename": "victim.txt", "mode": "w"},
            "is not a pytorch_lightning",
        ),
        (
            {"_target_": "pytorch_lightning.callbacks.EarlyStopping", "monitor": {"_target_": "os.getcwd"}},
            "cannot name a _target_",
        ),
    ],
)
def test_callbacks_and_loggers_construct_only_their_kind(tmp_path, monkeypatch, node, pattern):
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg(*TINY_RUN)
    with open_dict(cfg):
        cfg.callbacks.planted = node
    with pytest.raises(ConfigError, match=pattern):
        train(cfg, run_dir=tmp_path / "run", overrides=[])
    assert not (tmp_path / "victim.txt").exists()


def test_a_model_too_large_for_memory_is_refused_before_anything_is_built(no_data, tmp_path):
    from factory.training.plan import describe

    typed = ["arch.num_hidden_layers=100000"]
    with pytest.raises(ConfigError, match=r"num_hidden_layers=100000 gives about 1.3\de\+10 parameters"):
        train(compose_cfg(*typed), run_dir=tmp_path / "run", overrides=typed)
    # A large but possible depth is described from its estimate, without building 1000 layers.
    summary = describe(compose_cfg("arch.num_hidden_layers=1000"), ["arch.num_hidden_layers=1000"])
    two = describe(compose_cfg("arch.num_hidden_layers=2"), ["arch.num_hidden_layers=2"])
    per_layer = (summary["num_parameters"] - two["num_parameters"]) // 998
    attention, ffn, norms = 4 * (128 * 128 + 128), (128 * 256 + 256) + (256 * 128 + 128), 2 * 2 * 128
    assert per_layer == attention + ffn + norms and summary["config"]["num_hidden_layers"] == 1000
