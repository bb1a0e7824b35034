# python -m pytest tests/test_train.py
"""Training end to end on tiny dims: every arch x head through train(cfg), what a run leaves behind, the
exported model against transformers, checkpoints under weights_only, init=pretrained, and train.py itself."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import factory
from factory import ConfigError, registry
from factory.tokenizers.tokenizer import AutoTokenizer
from factory.training.lightning.module import FactoryModule
from factory.training.run import train
from tests.helpers import TINY_RUN

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
TINY = TINY_RUN
MAX_LENGTH = {"seqcls": ["data.max_length=32"], "qa": ["data.max_length=128", "data.stride=32"], "causal_lm": ["data.max_length=32"]}  # fmt: skip
FACTORY_AUTO = {
    "seqcls": factory.AutoModelForSequenceClassification,
    "qa": factory.AutoModelForQuestionAnswering,
    "causal_lm": factory.AutoModelForCausalLM,
}
# The heads this file's tables describe; every other head has its own train.py + infer.py test in its
# test file (tests/test_token_cls.py, ...).
CASES = [(t, h) for t, heads in registry.model_matrix().items() for h in sorted(heads) if h in FACTORY_AUTO]
HF_AUTO = {"seqcls": "AutoModelForSequenceClassification", "qa": "AutoModelForQuestionAnswering", "causal_lm": "AutoModelForCausalLM"}  # fmt: skip


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def tiny_cfg(arch: str, head: str, *more: str):
    return compose_cfg(f"arch={arch}", f"head={head}", *TINY, *MAX_LENGTH[head], *more)


def sample_inputs(tokenizer, head: str) -> dict[str, torch.Tensor]:
    if head == "qa":
        enc = tokenizer(
            ["What is the hobby of Elena?", "Where does Ines work?"],
            ["Elena enjoys photography.", "Ines Nowak works as a baker in Lisbon since 1990."],
            padding=True,
            return_tensors="pt",
        )
    else:
        enc = tokenizer(
            ["a great movie", "The pacing was not charming at all."], padding=True, return_tensors="pt"
        )
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}


def outputs_of(out, head: str, mask: torch.Tensor) -> list[torch.Tensor]:
    if head == "seqcls":
        return [out.logits]
    if head == "qa":
        return [out.start_logits[mask.bool()], out.end_logits[mask.bool()]]
    return [out.logits[mask.bool()]]  # positions under padding are not compared


def assert_run_dir(run: Path, head: str) -> dict:
    for name in (
        "model/config.json",
        "model/model.safetensors",
        "model/tokenizer.json",
        "results.json",
        "curves.png",
    ):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "logs" / "metrics.csv").is_file()
    results = json.loads((run / "results.json").read_text())
    for key in ("best_metrics", "final_metrics", "num_parameters", "tokens_per_second", "wall_time_s"):
        assert results[key] is not None, key
    assert results["monitor"] in results["best_metrics"] and results["global_step"] == 3
    assert results["tokens_per_second"] > 0 and results["num_parameters"] > 0
    return results


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "head"), CASES)
def test_train_every_arch_and_head_then_load_with_factory_and_transformers(arch, head, tmp_path):
    transformers = pytest.importorskip("transformers")
    value = train(tiny_cfg(arch, head), run_dir=tmp_path)
    results = assert_run_dir(tmp_path, head)
    assert value == pytest.approx(results["best_value"]) and math.isfinite(value)
    expected = {"seqcls": {"val/accuracy", "val/f1", "val/loss"}, "qa": {"val/exact_match", "val/f1", "val/loss"},
                "causal_lm": {"val/loss", "val/perplexity"}}[head]  # fmt: skip
    assert expected <= set(results["final_metrics"])

    model_dir = tmp_path / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert (
        config["model_type"] == arch and factory.AutoConfig.from_pretrained(model_dir).num_hidden_layers == 1
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert config["vocab_size"] == len(tokenizer)  # the model follows the tokenizer
    if head == "seqcls":
        assert config["id2label"] == {"0": "negative", "1": "positive"}  # label names from the data
    if head == "causal_lm":
        assert config["is_decoder"] is True

    inputs = sample_inputs(tokenizer, head)
    ours = FACTORY_AUTO[head].from_pretrained(model_dir).eval()
    theirs = getattr(transformers, HF_AUTO[head]).from_pretrained(model_dir).eval()
    with torch.no_grad():
        got = outputs_of(ours(**inputs), head, inputs["attention_mask"])
        want = outputs_of(theirs(**inputs), head, inputs["attention_mask"])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

    # The best checkpoint is what was exported, and it reloads with plain data only.
    ckpt = results["best_checkpoint"]
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert raw["hyper_parameters"]["head"] == head
    module = FactoryModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    with torch.no_grad():
        for a, b in zip(outputs_of(module.model(**inputs), head, inputs["attention_mask"]), got):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_same_seed_same_run(tmp_path):
    # GPT-2: its byte-level BPE trains deterministically (tokenizers' WordPiece trainer breaks ties in
    # hash order, so a BERT vocabulary can differ between processes).
    cfg = tiny_cfg("gpt2", "seqcls", "trainer.max_steps=2", "trainer.val_check_interval=2")
    a, b = train(cfg, run_dir=tmp_path / "a"), train(cfg, run_dir=tmp_path / "b")
    assert a == b
    wa = factory.AutoModelForSequenceClassification.from_pretrained(tmp_path / "a" / "model").state_dict()
    wb = factory.AutoModelForSequenceClassification.from_pretrained(tmp_path / "b" / "model").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny BERT checkpoint with its tokenizer, as a user's local pretrained model would be."""
    from factory.build import build_model
    from factory.data.files import texts_for_tokenizer
    from factory.data.sources import load_examples
    from factory.tokenizers.training import special_token_ids, train_tokenizer

    path = tmp_path_factory.mktemp("pretrained")
    tokenizer = train_tokenizer("bert", texts_for_tokenizer("seqcls", load_examples("seqcls", {})), 300)
    arch = dict(
        model_type="bert", num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=37
    )
    _, model = build_model(
        {**arch, "vocab_size": len(tokenizer), **special_token_ids(tokenizer)}, "base", seed=1
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def pretrained_cfg(checkpoint: Path, head: str, *more: str):
    """The composed config and the overrides the user typed (train() takes both, as under Hydra)."""
    limits = [o for o in TINY if not o.startswith("arch.")]
    overrides = [
        f"head={head}",
        *limits,
        *MAX_LENGTH[head],
        "init=pretrained",
        f"init.name_or_path={checkpoint}",
    ]
    return compose_cfg(*overrides, *more), [*overrides, *more]


@pytest.mark.slow
@pytest.mark.parametrize("head", ["seqcls", "qa"])
def test_init_pretrained_starts_from_the_checkpoint(tiny_checkpoint, head, tmp_path):
    # The checkpoint decides the architecture: the arch group's YAML values (bert-base) are not applied.
    cfg, overrides = pretrained_cfg(tiny_checkpoint, head, "optim.lr=1e-12", "arch.hidden_dropout_prob=0.2")
    train(cfg, run_dir=tmp_path, overrides=overrides)
    assert_run_dir(tmp_path, head)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["model_type"] == "bert" and config["hidden_size"] == 32
    assert config["hidden_dropout_prob"] == 0.2  # a value the user set that keeps every shape applies
    assert (tmp_path / "model" / "tokenizer.json").read_text() == (
        tiny_checkpoint / "tokenizer.json"
    ).read_text()
    start = factory.AutoModel.from_pretrained(tiny_checkpoint).state_dict()
    trained = FACTORY_AUTO[head].from_pretrained(tmp_path / "model").state_dict()
    # With lr ~0 the backbone is still the checkpoint's.
    key = "encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(trained[f"bert.{key}"], start[key], atol=1e-6, rtol=0)
    report = json.loads((tmp_path / "load_report.json").read_text())
    new_head = {
        "seqcls": ["classifier.weight", "classifier.bias"],
        "qa": ["qa_outputs.weight", "qa_outputs.bias"],
    }
    assert report["newly_initialised"] == new_head[head] and report["overrides"]["hidden_dropout_prob"] == 0.2
    assert report["files"]["model.safetensors"] and report["name_or_path"] == str(tiny_checkpoint)
    # A replay sets the typed values again, so they count as typed there too.
    provenance = json.loads((tmp_path / "provenance.json").read_text())
    assert "arch.hidden_dropout_prob" in provenance["typed"]
    assert "arch.hidden_dropout_prob=0.2" in provenance["replay"]


@pytest.mark.parametrize(
    "more, pattern",
    [
        (["arch=gpt2"], r"arch=gpt2 disagrees with the checkpoint .* model_type='bert'"),
        (["arch.hidden_size=64"], r"arch.hidden_size=64 differs from the checkpoint .* hidden_size=32"),
        (["arch.num_hidden_layers=3"], r"arch.num_hidden_layers=3 asks for more layers than the checkpoint"),
        (["+init.layer=even"], r"Unknown key init.layer. Did you mean 'layers'"),
    ],
)
def test_init_pretrained_conflicts_fail_before_data(tiny_checkpoint, tmp_path, monkeypatch, more, pattern):
    import factory.data.sources

    monkeypatch.setattr(factory.data.sources, "load_examples", lambda *a, **k: pytest.fail("data was read"))
    with pytest.raises(ConfigError, match=pattern):
        cfg, overrides = pretrained_cfg(tiny_checkpoint, "seqcls", *more)
        train(cfg, run_dir=tmp_path, overrides=overrides)


@pytest.mark.slow
def test_fast_dev_run_preset_exports_without_checkpoints(tmp_path):
    value = train(tiny_cfg("bert", "seqcls", "debug=fast_dev_run"), run_dir=tmp_path)
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "results.json").read_text())["global_step"] == 1  # one batch only
    assert math.isfinite(value)


@pytest.mark.slow
def test_train_py_writes_only_its_run_dir(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "train.py"), *TINY, *MAX_LENGTH["seqcls"], f"hydra.run.dir={run}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing in the cwd
    assert_run_dir(run, "seqcls")
    assert (run / ".hydra" / "config.yaml").is_file()
    assert "val/accuracy" in (run / "logs" / "metrics.csv").read_text()


@pytest.mark.slow
def test_train_py_typo_exits_1_with_the_valid_keys(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    # Hydra alone would stop at this typo without naming the valid keys (the `+` form and the Python API
    # are covered in test_conf.py).
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "arch=gpt2",
        "arch.num_hiden_layers=10",
        f"hydra.run.dir={tmp_path}/run",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "arch.num_hiden_layers=10" in proc.stderr and "Did you mean 'num_hidden_layers'" in proc.stderr
    assert "Valid keys" in proc.stderr and "'n_layer'" in proc.stderr and "Traceback" not in proc.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_training_keeps_freed_memory_on_glibc():
    # What it saves (page faults per step) is measured by bench/page_faults.py.
    from factory.training.run import keep_freed_memory

    assert keep_freed_memory()


@pytest.mark.slow
def test_train_py_config_error_leaves_no_run_dir(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    # A value Hydra accepts and the plan refuses: Hydra has created the dir by then.
    cmd = [sys.executable, str(REPO / "train.py"), "arch.hidden_size=32", "arch.num_attention_heads=3"]
    proc = subprocess.run(
        [*cmd, f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "num_attention_heads" in proc.stderr, proc.stderr[-3000:]
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_train_py_piped_logs_lines_not_progress_bars(tmp_path):
    """With stdout a pipe (SLURM, CI, nohup), no tqdm redraws: a log line every N steps instead."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    tiny = [o for o in TINY if not o.startswith("callbacks.progress_bar")]  # the default bar
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        *tiny,
        *MAX_LENGTH["seqcls"],
        f"hydra.run.dir={tmp_path}/run",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "\r" not in output
    assert "step 3/3" in output
    # The known-harmless messages are gone; a three-step run's whole output is a few KB.
    for noise in ("💡 Tip", "`Trainer(limit_val_batches=", "LeafSpec", "to estimate number of stepping"):
        assert noise not in output, noise
    assert len(output.encode()) < 8000, output
