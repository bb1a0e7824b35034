# pytest tests/test_plan.py
"""The plan: one resolution pass, and "what the user set" taken from what they typed (Hydra's record),
never by comparing values with YAML files; defaults that follow the checkpoint."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from factory.config import ConfigError
from factory.training.command_line import user_set
from factory.training.plan import describe, resolve
from tests.helpers import tiny_config

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
PLUGIN_CONF = Path(__file__).resolve().parent / "plugin_conf"


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_user_set_reads_keys_and_groups_as_typed():
    user = user_set(
        ["arch=gpt2", "arch.n_layer=2", "+arch.n_inner=64", "init.layers=[0,5]", "hydra.run.dir=x"]
    )
    assert user.groups == {"arch": "gpt2"}
    assert user.under("arch") == {"n_layer", "n_inner"} and user.under("init") == {"layers"}
    assert user_set([]).keys == set() and user_set(None).keys == set()  # no Hydra run: nothing typed


def test_a_named_experiment_counts_its_own_keys_from_hydras_record():
    # Under Hydra (compose with its config, as @hydra.main runs a job): the preset is found through the
    # run's config search path, and only the keys it sets itself count (not those of `default`).
    overrides = [f"hydra.searchpath=[file://{PLUGIN_CONF}]", "experiment=small_bert", "data.batch_size=4"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    try:
        user = user_set()
    finally:
        HydraConfig.instance().cfg = None
    assert user.under("arch") == {"num_hidden_layers", "hidden_dropout_prob"}  # small_bert's own
    assert user.under("data") == {"batch_size"} and user.groups["experiment"] == "small_bert"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A 6-layer BERT config (no weights needed to resolve) with 64 positions."""
    path = tmp_path_factory.mktemp("ckpt")
    tiny_config("bert", num_hidden_layers=6, hidden_size=48, num_attention_heads=4).save_pretrained(path)
    return path


def resolved(checkpoint: Path, *typed: str):
    overrides = ["init=pretrained", f"init.name_or_path={checkpoint}", *typed]
    return resolve(compose_cfg(*overrides), overrides)


def test_a_typed_value_counts_even_when_it_equals_the_default_experiments(checkpoint):
    # experiment/default.yaml also says num_hidden_layers: 2; before, that made the typed 2 vanish.
    assert resolved(checkpoint, "arch.num_hidden_layers=2").config.num_hidden_layers == 2
    assert resolved(checkpoint).config.num_hidden_layers == 6  # nothing typed: the checkpoint's
    assert resolved(checkpoint).config.hidden_size == 48  # the default experiment's 128 is not applied


def test_a_typed_width_that_changes_shapes_names_both_widths(checkpoint):
    with pytest.raises(ConfigError, match=r"arch.hidden_size=128 .*checkpoint .* hidden_size=48"):
        resolved(checkpoint, "arch.hidden_size=128")


def test_an_unset_max_length_follows_the_checkpoint_and_a_set_one_is_checked(checkpoint, caplog):
    with caplog.at_level(logging.INFO, logger="factory.training.plan"):
        plan = resolved(checkpoint, "head=qa")  # qa's default max_length is 384; the model has 64
    assert plan.data["max_length"] == 64
    assert "data.max_length=384 is capped at the model's 64 positions" in caplog.text
    with pytest.raises(
        ConfigError, match=r"data.max_length=384 is longer than arch.max_position_embeddings=64"
    ):
        resolved(checkpoint, "head=qa", "data.max_length=384")


def test_the_plan_reads_the_checkpoint_config_once(checkpoint, monkeypatch):
    import factory.training.plan as plan_module

    calls = []
    real = plan_module.checkpoint_config
    monkeypatch.setattr(plan_module, "checkpoint_config", lambda init: calls.append(1) or real(init))
    summary = describe(compose_cfg("init=pretrained", f"init.name_or_path={checkpoint}"), [])
    assert calls == [1] and summary["config"]["num_hidden_layers"] == 6


@pytest.mark.slow
@pytest.mark.parametrize(
    "typed, layers",
    [(["arch.num_hidden_layers=2"], [0, 1]), (["arch.num_hidden_layers=2", "init.layers=[0,5]"], [0, 5])],
)
def test_train_py_keeps_the_layers_the_user_asked_for(minilm_path, tmp_path, typed, layers):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "init=pretrained",
        f"init.name_or_path={minilm_path}",
        *typed,
        "trainer.max_steps=1",
        "trainer.limit_val_batches=1",
        "data.batch_size=4",
        "callbacks.progress_bar.refresh_rate=0",
        f"hydra.run.dir={run}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "model" / "config.json").read_text())["num_hidden_layers"] == 2
    assert json.loads((run / "load_report.json").read_text())["kept_layers"] == {"bert.encoder.layer": layers}
