# pytest tests/test_multiple_choice.py  (the train.py + infer.py test is marked slow)
"""The multiple_choice head: reading (errors name file and line), variable choice counts in one batch,
the masking of padded choices, the accuracy metric, and train.py + infer.py end to end on tiny dims."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from factory.data.files import DataError, texts_for_tokenizer
from factory.data.module import FactoryDataModule
from factory.data.sources import load_examples
from factory.heads.head import get_head
from factory.heads.multiple_choice import mask_choices, multiple_choice_loss
from factory.models.bert import BertForMultipleChoice
from factory.tokenizers.training import train_tokenizer
from tests.helpers import TINY_RUN, tiny_config

REPO = Path(__file__).resolve().parents[1]
HEAD = get_head("multiple_choice")


def write_jsonl(path: Path, records: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def good(n: int = 3, label: int = 0) -> dict:
    return {
        "context": "Which is a colour?",
        "choices": ["red", "table", "run", "cold", "dog"][:n],
        "label": label,
    }


@pytest.fixture(scope="module")
def tokenizer():
    splits = load_examples("multiple_choice", {})
    return train_tokenizer("bert", texts_for_tokenizer("multiple_choice", splits), 300)


def data_module(tmp_path: Path, tokenizer, records: list, batch_size: int = 4) -> FactoryDataModule:
    files = {
        "train_file": write_jsonl(tmp_path / "train.jsonl", records),
        "validation_file": write_jsonl(tmp_path / "validation.jsonl", records),
    }
    dm = FactoryDataModule("multiple_choice", files, tokenizer, batch_size=batch_size, max_length=16)
    dm.setup()
    return dm


@pytest.mark.parametrize(
    "bad, message",
    [
        ({**good(3), "label": 3}, "label 3 (column 'label') is not an index into its 3 choices"),
        ({**good(3), "label": -1}, "label -1"),
        ({**good(3), "label": True}, "label True"),
        ({**good(3), "choices": "red"}, "column 'choices' holds 'red'"),
        ({**good(3), "choices": ["red"]}, "at least two strings"),
        ({"choices": ["a", "b"], "label": 0}, "no column 'context'"),
        ({"context": "q", "choices": ["a", "b"]}, "no column 'label'"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, bad, message):
    train = write_jsonl(tmp_path / "train.jsonl", [good(), good(4, 2), bad])
    validation = write_jsonl(tmp_path / "validation.jsonl", [good()])
    with pytest.raises(DataError, match="line 3") as err:
        load_examples("multiple_choice", {"train_file": train, "validation_file": validation})
    assert train in str(err.value) and message in str(err.value)


def test_column_names_are_data_keys(tmp_path):
    record = {"q": "Pick one.", "opts": ["a", "b", "c"], "answer": 2}
    train = write_jsonl(tmp_path / "train.jsonl", [record])
    cfg = {"train_file": train, "validation_file": train}
    cfg.update(context_column="q", choices_column="opts", label_column="answer")
    splits = load_examples("multiple_choice", cfg)
    assert splits.train == [{"context": "Pick one.", "choices": ["a", "b", "c"], "label": 2}]


def test_variable_choice_counts_batch_as_b_c_t(tmp_path, tokenizer):
    records = [
        good(3, 0),
        good(5, 4),
        good(2, 1),
        {**good(4, 3), "context": "Which one is a colour, really?"},
    ]
    dm = data_module(tmp_path, tokenizer, records)
    batch = next(iter(dm.val_dataloader()))
    b, c, t = batch["input_ids"].shape
    assert (b, c) == (4, 5)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "choice_mask"}
    assert batch["labels"].tolist() == [0, 4, 1, 3]
    present = batch["attention_mask"].any(-1)
    assert present.sum(-1).tolist() == [3, 5, 2, 4]
    assert torch.equal(batch["choice_mask"], present)
    # Each (context, choice) pair is the tokenizer's text pair, unpadded, at [row, choice].
    for i, record in enumerate(records):
        for j, choice in enumerate(record["choices"]):
            enc = tokenizer(record["context"], choice, truncation=True, max_length=16)
            n = len(enc["input_ids"])
            assert batch["input_ids"][i, j, :n].tolist() == enc["input_ids"]
            assert batch["token_type_ids"][i, j, :n].tolist() == enc["token_type_ids"]
            assert batch["attention_mask"][i, j].tolist() == [1] * n + [0] * (t - n)


def _forward(model, batch: dict):
    """The model's output on a collated batch (it takes no `choice_mask`), with the head's loss."""
    out = model(**{k: v for k, v in batch.items() if k != "choice_mask"})
    out.loss = HEAD.loss(out, batch)
    return out


def test_a_batch_of_2_and_4_choices_scores_each_example_as_alone(tmp_path, tokenizer):
    """Mixed choice counts give each example the logits, prediction and loss it has alone."""
    torch.manual_seed(0)
    config = tiny_config("bert", vocab_size=len(tokenizer), max_position_embeddings=32)
    model = BertForMultipleChoice(config).eval()
    records = [good(2, 1), good(4, 3), {**good(2, 0), "context": "Which word is a colour, then?"}, good(4, 2)]
    dm = data_module(tmp_path, tokenizer, records)
    batch = next(iter(dm.val_dataloader()))
    assert batch["choice_mask"].tolist() == [[True, True, False, False], [True] * 4] * 2
    with torch.no_grad():
        out = _forward(model, batch)
    kept = HEAD.validation_step(model, batch, out)
    alone = []
    for i, record in enumerate(records):
        single = next(iter(data_module(tmp_path, tokenizer, [record]).val_dataloader()))
        with torch.no_grad():
            one = _forward(model, single)
        n = len(record["choices"])
        assert single["input_ids"].shape[1] == n
        torch.testing.assert_close(out.logits[i, :n], one.logits[0], atol=1e-5, rtol=1e-5)
        assert HEAD.validation_step(model, single, one)["preds"].tolist() == [int(kept["preds"][i])]
        alone.append(one.loss)
    torch.testing.assert_close(out.loss, torch.stack(alone).mean(), atol=1e-5, rtol=1e-5)
    # Without the mask (HF's loss over every choice), the 2-choice examples' padding counts.
    assert not torch.allclose(out.loss, multiple_choice_loss(out.logits, batch["labels"]), atol=1e-3)


def test_padded_choices_have_no_probability_and_are_never_predicted():
    logits = torch.tensor([[0.0, 1.0, 9.0, 9.0], [0.0, 1.0, 2.0, 3.0]], requires_grad=True)
    labels, mask = torch.tensor([0, 3]), torch.tensor([[True, True, False, False], [True] * 4])
    loss = multiple_choice_loss(logits, labels, mask)
    want = (F.cross_entropy(logits[0, :2], labels[0]) + F.cross_entropy(logits[1], labels[1])) / 2
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert logits.grad[0, 2:].eq(0).all() and torch.isfinite(logits.grad).all()
    assert mask_choices(logits, mask).argmax(-1).tolist() == [1, 3]


def test_gradient_ignores_padded_choices(tmp_path, tokenizer):
    torch.manual_seed(0)
    config = tiny_config("bert", vocab_size=len(tokenizer), max_position_embeddings=32)
    model = BertForMultipleChoice(config)
    batch = next(iter(data_module(tmp_path, tokenizer, [good(2, 1), good(5, 3)]).train_dataloader()))
    loss = _forward(model, batch).loss
    loss.backward()
    assert math.isfinite(float(loss.detach()))
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_accuracy_metric():
    outputs = [
        {"loss_sum": 2.0, "count": 2, "preds": torch.tensor([0, 1]), "labels": torch.tensor([0, 2])},
        {"loss_sum": 1.0, "count": 2, "preds": torch.tensor([3, 4]), "labels": torch.tensor([3, 4])},
    ]
    assert HEAD.validation_metrics(outputs, None) == {"val/loss": 0.75, "val/accuracy": 0.75}


def test_shipped_data_has_three_to_five_choices():
    splits = load_examples("multiple_choice", {})
    assert (len(splits.train), len(splits.validation)) == (1500, 300)
    assert {len(e["choices"]) for e in splits.train} == {3, 4, 5}


def test_shipped_files_are_what_the_generator_writes(tmp_path):
    from factory.data.datasets import generate_multiple_choice

    for path in generate_multiple_choice.generate(tmp_path):
        shipped = generate_multiple_choice.HERE / path.relative_to(tmp_path)
        assert shipped.read_bytes() == path.read_bytes(), f"{shipped.name}: regenerate it"


@pytest.mark.slow
def test_train_py_then_infer_py(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "train.py"), "head=multiple_choice", *TINY_RUN, f"hydra.run.dir={run}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val/accuracy" in (run / "logs" / "metrics.csv").read_text()
    records = [
        {"context": "Which of these is a fruit?", "choices": ["car", "apple", "red"]},
        {"context": "Pick the tool.", "choices": ["hammer", "dog", "rain", "sad", "piano"]},
    ]
    source = write_jsonl(tmp_path / "in.jsonl", records)
    cmd = [sys.executable, str(REPO / "infer.py"), f"model={run}", f"input={source}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(results) == 2
    for record, result in zip(records, results):
        assert set(result) == {"label", "choice", "scores"}
        assert len(result["scores"]) == len(record["choices"])
        assert math.isclose(sum(result["scores"]), 1.0, rel_tol=1e-4)
        assert result["choice"] == record["choices"][result["label"]]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"context": "Pick one.", "choices": "a"}])
    cmd = [sys.executable, str(REPO / "infer.py"), f"model={run}", f"input={bad}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "'choices' must be a list" in proc.stderr
