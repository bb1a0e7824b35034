# python -m pytest tests/test_provenance.py
"""What a run records about itself (provenance.json), and that two runs of one config, and the replay of a
run from its recorded command, give bit-identical weights on CPU."""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file

from factory.training.run import train
from factory.training.tracking.provenance import PACKAGES, git_state, package_versions

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}

# A tiny GPT-2 (its tokenizer trains the same in every process) with dropout on, deterministic kernels.
OVERRIDES = [
    "arch=gpt2",
    "head=seqcls",
    "arch.num_hidden_layers=1",
    "arch.hidden_size=32",
    "arch.num_attention_heads=2",
    "arch.intermediate_size=37",
    "arch.vocab_size=1000",
    "arch.resid_pdrop=0.3",
    "data.batch_size=8",
    "data.max_length=32",
    "init.seed=7",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=2",
    "trainer.deterministic=true",
    "+trainer.num_sanity_val_steps=0",
    "callbacks.progress_bar.refresh_rate=0",
]


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def run_train_py(args: list[str], cwd: Path) -> None:
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """`a`: train.py; `b`: the replay of `a` by its recorded command; `c`: train(cfg) from Python."""
    root = tmp_path_factory.mktemp("runs")
    run_train_py([str(REPO / "train.py"), *OVERRIDES, f"hydra.run.dir={root / 'a'}"], root)
    record = json.loads((root / "a" / "provenance.json").read_text())
    replay = shlex.split(record["replay"].replace("<new run dir>", shlex.quote(str(root / "b"))))
    assert replay[0] == "python"
    run_train_py(replay[1:], root)
    train(compose_cfg(*OVERRIDES), run_dir=root / "c")
    return {name: root / name for name in "abc"}


@pytest.mark.slow
def test_a_run_records_config_overrides_command_versions_git_hardware_and_seed(runs):
    record = json.loads((runs["a"] / "provenance.json").read_text())
    assert record["seed"] == 7
    config = record["config"]  # resolved: ${head.monitor} is the head's metric
    assert config["callbacks"]["model_checkpoint"]["monitor"] == "val/accuracy"
    assert config["arch"]["model_type"] == "gpt2" and config["trainer"]["deterministic"] is True
    assert record["overrides"]["task"] == OVERRIDES
    assert record["overrides"]["choices"]["arch"] == "gpt2"
    assert any(o.startswith("hydra.run.dir=") for o in record["overrides"]["hydra"])
    assert record["command"]["argv"][0].endswith("train.py") and "init.seed=7" in record["command"]["argv"]
    versions = record["versions"]
    assert set(PACKAGES) <= set(versions) and versions["python"] == platform.python_version()
    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"] == torch.__version__
    assert versions["factory"] and versions["pytorch-lightning"] and versions["hydra-core"]
    checkout = git_state(REPO)  # None when the code is not in a git checkout
    if checkout is None:
        assert record["git"] is None
    else:
        assert record["git"]["commit"] == checkout["commit"] and isinstance(record["git"]["dirty"], bool)
    hardware = record["hardware"]
    assert hardware["cpu_count"] == os.cpu_count() and hardware["cpu"] and isinstance(hardware["gpus"], list)
    assert f"--config-dir {runs['a'] / '.hydra'} --config-name config hydra.run.dir=<new run dir> " in record["replay"]  # fmt: skip
    # ... then what the user typed, set again so that the replay counts it as typed too.
    assert "init.seed" in record["typed"] and record["replay"].count(" init.seed=7") == 1
    # Hydra saved the composed config without a defaults list: what the replay composes.
    saved = OmegaConf.load(runs["a"] / ".hydra" / "config.yaml")
    assert "defaults" not in saved and saved.arch.resid_pdrop == 0.3


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


@pytest.mark.slow
def test_two_runs_and_a_replay_give_bit_identical_weights(runs):
    a, b, c = (_weights(runs[name]) for name in "abc")
    assert a.keys() == b.keys() == c.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"replay differs at {key}"
        assert torch.equal(a[key], c[key]), f"second run differs at {key}"
    last = [torch.load(runs[n] / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for n in "ab"]
    assert all(torch.equal(last[0][k], last[1][k]) for k in last[0])
    results = [json.loads((runs[n] / "results.json").read_text()) for n in "abc"]
    assert results[0]["best_metrics"] == results[1]["best_metrics"] == results[2]["best_metrics"]


@pytest.mark.slow
def test_a_run_from_python_writes_the_config_a_replay_composes(runs):
    record = json.loads((runs["c"] / "provenance.json").read_text())
    assert record["overrides"] is None  # no Hydra: nothing to record
    with initialize_config_dir(config_dir=str(runs["c"] / ".hydra"), version_base="1.3"):
        replayed = compose("config")
    assert OmegaConf.to_container(replayed) == OmegaConf.to_container(compose_cfg(*OVERRIDES))


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_state_commit_and_dirty_flag(tmp_path):
    assert git_state(tmp_path) is None  # not a checkout: no record, no error

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tmp_path), *args], check=True, capture_output=True, text=True
        ).stdout

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    state = git_state(tmp_path)
    assert state["commit"] == git("rev-parse", "HEAD").strip() and state["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    state = git_state(tmp_path)
    assert state["dirty"] is True and state["changed"] == ["code.py"]


def test_package_versions_name_every_package():
    versions = package_versions()
    assert versions["omegaconf"] and versions["tokenizers"] and versions["safetensors"]
    assert versions["huggingface_hub"] and versions["numpy"]
