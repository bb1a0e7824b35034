# pytest tests/test_plugins.py
"""The factory is open: an architecture and a head defined here, outside factory/, with their own conf dir
on Hydra's search path, train through the real train.py and predict through the real predictor.

Nothing in factory/ names them: `plugins=[tests.test_plugins:register]` registers them in the training
process, and `plugin_conf/` beside this file holds `arch/tiny_mlp.yaml` and `head/yesno.yaml`.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from factory import CheckpointTable, Head, PretrainedConfig, PreTrainedModel, register_head, registry
from factory.data import files
from factory.heads import DataSplits, Encoded, get_head, unregister_head
from factory.models.outputs import ModelOutput
from factory.tokenizers.training import TokenizerRecipe

REPO = Path(__file__).resolve().parents[1]
CONF = Path(__file__).resolve().parent / "plugin_conf"
WORDS = "red green blue small large quick slow bright dark warm cold soft".split()


# ---- an architecture: one config class and its models ------------------------------------------------
@dataclass
class TinyMlpConfig(PretrainedConfig):
    model_type: ClassVar[str] = "tiny_mlp"
    aliases: ClassVar[dict] = {
        "hidden_size": ("width",),
        "num_hidden_layers": ("depth",),
        "num_attention_heads": ("heads",),
        "max_position_embeddings": ("positions",),
        "intermediate_size": ("ffn",),
    }
    depth_fields: ClassVar[tuple[str, ...]] = ("depth",)
    tokenizer_recipe: ClassVar[TokenizerRecipe] = TokenizerRecipe(
        kind="wordpiece",
        tokenizer_class="PreTrainedTokenizerFast",
        special_tokens=("<pad>", "<unk>"),
        tokenizer_config={"pad_token": "<pad>", "unk_token": "<unk>"},
        post_processor="template",
        template=("$A", "$A $B:1"),
        lowercase=True,
    )
    vocab_size: int = 300
    width: int = 16
    depth: int = 1
    heads: int = 1  # no attention here: kept for the common name
    positions: int = 512
    ffn: int = 32
    pad_token_id: int | None = 0


class TinyMlpModel(PreTrainedModel):
    """Token embeddings through `depth` residual MLP blocks: (B, T) ids -> (B, T, width)."""

    config_class = TinyMlpConfig
    base_model_prefix = "tiny_mlp"
    checkpoint_table = CheckpointTable()

    def __init__(self, config: TinyMlpConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(config.width, config.ffn), nn.ReLU(), nn.Linear(config.ffn, config.width))
            for _ in range(config.depth)
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Embedding, nn.Linear)):
            module.weight.normal_(0, 0.02)
        if isinstance(module, nn.Linear):
            module.bias.zero_()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> ModelOutput:
        x = self.embed(input_ids)
        for block in self.blocks:
            x = x + block(x)
        return ModelOutput(last_hidden_state=x)


class TinyMlpForYesNo(TinyMlpModel):
    """Mean of the real tokens' states, then two logits."""

    def __init__(self, config: TinyMlpConfig) -> None:
        PreTrainedModel.__init__(self, config)
        self.tiny_mlp = TinyMlpModel(config)
        self.score = nn.Linear(config.width, 2)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, labels=None) -> ModelOutput:
        hidden = self.tiny_mlp(input_ids).last_hidden_state
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        mask = mask.unsqueeze(-1).to(hidden.dtype)
        logits = self.score((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ModelOutput(loss=loss, logits=logits)


# ---- a head: does the text start with "yes"? ------------------------------------------------------------
class YesNo(Head):
    name: ClassVar[str] = "yesno"
    metrics = ("val/accuracy", "val/loss")
    formats = ("jsonl",)
    data_keys: ClassVar[dict[str, Any]] = {"text_column": "text"}
    inputs = ("text",)

    def read(self, train_file: str, validation_file: str, settings: Mapping[str, Any]) -> DataSplits:
        def examples(path: str) -> list[dict[str, Any]]:
            text = files.read_text(path)
            column = settings["text_column"]
            out = []
            for line, record in files.read_jsonl(path, text):
                value = files.text_value(
                    path, line, files.field_value(path, line, record, column, "text_column"), column
                )
                out.append(
                    {"text": value, "label": int(value.split()[:1] == ["yes"])}
                )  # the head's convention
            return out

        return DataSplits(examples(train_file), examples(validation_file))

    def tokenizer_texts(self, splits: DataSplits) -> Iterator[str]:
        return (e["text"] for e in splits.train)

    def encode(self, tokenizer, examples, settings, train: bool) -> Encoded:
        enc = tokenizer([e["text"] for e in examples], truncation=True, max_length=settings["max_length"])
        return Encoded(
            [{"input_ids": ids, "labels": e["label"]} for ids, e in zip(enc["input_ids"], examples)]
        )

    def validation_step(self, model, batch, out) -> dict[str, Any]:
        right = int((out.logits.argmax(-1) == batch["labels"]).sum())
        return {**super().validation_step(model, batch, out), "right": right}

    def validation_metrics(self, outputs, data) -> dict[str, float]:
        metrics = super().validation_metrics(outputs, data)
        return {
            **metrics,
            "val/accuracy": sum(o["right"] for o in outputs) / sum(o["count"] for o in outputs),
        }

    def predict(self, predictor, records: Sequence[Mapping[str, Any]], opts) -> list:
        return [{"yes": answer} for answer in yes_or_no(predictor, [r["text"] for r in records])]


@YesNo.prediction
def yes_or_no(predictor, texts: Sequence[str]) -> list[bool]:
    batch = predictor.collate(
        predictor.tokenizer(list(texts), truncation=True, max_length=predictor.limit(None))
    )
    with torch.inference_mode():
        return (predictor.model(**batch).logits.argmax(-1) == 1).tolist()


def register() -> None:
    """What `plugins=[tests.test_plugins:register]` runs in the training process."""
    registry.register_config(TinyMlpConfig)
    registry.register_model("base")(TinyMlpModel)
    registry.register_model("yesno")(TinyMlpForYesNo)
    register_head(YesNo)


@pytest.fixture
def registered():
    register()
    yield
    registry.unregister("tiny_mlp")
    unregister_head("yesno")


def write_data(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    lines = [
        json.dumps({"text": " ".join([rng.choice(["yes", "no"]), *rng.choices(WORDS, k=rng.randint(2, 8))])})
        for _ in range(n)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_plugins_register_and_join_the_matrix(registered):
    assert registry.model_matrix()["tiny_mlp"] == {"base": "TinyMlpModel", "yesno": "TinyMlpForYesNo"}
    assert get_head("yesno").metrics == ("val/accuracy", "val/loss")
    with pytest.raises(Exception, match="already registered"):
        register_head(YesNo)


@pytest.mark.slow
def test_an_outside_architecture_and_head_train_through_train_py(tmp_path):
    train = write_data(tmp_path / "train.jsonl", 400, seed=0)
    dev = write_data(tmp_path / "dev.jsonl", 64, seed=1)
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        f"hydra.searchpath=[file://{CONF}]",
        "plugins=[tests.test_plugins:register]",
        "arch=tiny_mlp",
        "head=yesno",
        f"data.train_file={train}",
        f"data.validation_file={dev}",
        "arch.vocab_size=200",
        "optim.lr=1e-2",
        "trainer.max_epochs=4",
        "callbacks.progress_bar.refresh_rate=0",
        f"hydra.run.dir={run}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["head"] == "yesno" and results["model_type"] == "tiny_mlp"
    assert results["monitor"] == "val/accuracy" and results["best_value"] >= 0.9  # "yes" is easy to spot
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["architectures"] == ["TinyMlpForYesNo"] and config["depth"] == 1  # its own field wins

    # A replay or a resume of that run dir names its plugins and imports nothing it was not told to.
    for argv in (
        [f"--config-dir={run / '.hydra'}", "--config-name=config", f"hydra.run.dir={tmp_path / 'replay'}"],
        [f"resume={run}"],
    ):
        proc = subprocess.run(
            [sys.executable, str(REPO / "train.py"), *argv],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert "add plugins=[tests.test_plugins:register] to the command line" in proc.stderr, proc.stderr
    assert not (tmp_path / "replay").exists()
    # A plugin that raises while importing is a message, and leaves no run dir behind.
    broken = tmp_path / "broken_plugin.py"
    broken.write_text("raise RuntimeError('this plugin is broken')\n")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "plugins=[broken_plugin]",
            f"hydra.run.dir={tmp_path / 'b'}",
        ],
        cwd=tmp_path,
        env={**env, "PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "importing 'broken_plugin' raised RuntimeError: this plugin is broken" in proc.stderr
    assert not (tmp_path / "b").exists()

    # infer.py serves it with the same plugins; the run dir's own are offered by name, never imported.
    infer = [sys.executable, str(REPO / "infer.py"), f"model={run}", "text=yes red blue"]
    proc = subprocess.run(infer, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "plugins=[tests.test_plugins:register]" in proc.stderr and "tiny_mlp" in proc.stderr
    proc = subprocess.run(
        [*infer, "plugins=[tests.test_plugins:register]"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout) == {"yes": True}

    # Back in this process: the saved folder loads and the head's own inference answers.
    register()
    try:
        from factory.inference.predictor import load_predictor

        predictor = load_predictor(run)
        assert predictor.head == "yesno"
        answers = predictor.predict_batch([{"text": "yes red blue"}, {"text": "no dark cold warm"}])
        assert answers == [{"yes": True}, {"yes": False}]
        assert predictor.yes_or_no(["yes small", "no small"]) == [True, False]
    finally:
        registry.unregister("tiny_mlp")
        unregister_head("yesno")
