# pytest tests/test_token_cls.py   (add -m "not slow" to skip the train.py + infer.py run)
"""The token_cls head: its readers and their errors, the BIO check, labels on sub-tokens, the entity metric
against seqeval, entity grouping, the shipped data, the models' classifier dropout, and a real run."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from seqeval.metrics import f1_score, precision_score, recall_score

from factory.data.datasets import generate_token_cls
from factory.data.files import DataError
from factory.data.sources import load_examples
from factory.heads import get_head
from factory.heads.token_cls import _group, align_labels, entity_scores, get_entities
from factory.models.bert import BertForTokenClassification
from factory.models.gpt2 import GPT2ForTokenClassification
from factory.tokenizers.training import train_tokenizer
from tests.helpers import TINY_RUN, tiny_config

REPO = Path(__file__).resolve().parents[1]
HEAD = get_head("token_cls")


def _load(tmp_path: Path, train: str, validation: str, suffix: str = ".conll", **keys) -> object:
    (tmp_path / f"train{suffix}").write_text(train)
    (tmp_path / f"validation{suffix}").write_text(validation)
    cfg = {
        "train_file": str(tmp_path / f"train{suffix}"),
        "validation_file": str(tmp_path / f"validation{suffix}"),
    }
    return load_examples("token_cls", {**cfg, **keys})


# ---- reading ----------------------------------------------------------------------------------------------
def test_conll_sentences_tags_sorted_with_o_first_docstart_skipped(tmp_path):
    train = "-DOCSTART- -X- O\n\nIns NNP B-PER\nworks VBZ O\n\nin O\nNew B-LOC\nYork I-LOC\n"
    splits = _load(tmp_path, train, "Ana B-PER\n")
    assert splits.labels == ["O", "B-LOC", "B-PER", "I-LOC"]
    assert [e["tokens"] for e in splits.train] == [["Ins", "works"], ["in", "New", "York"]]
    assert splits.train[1]["tags"] == [0, 1, 3]
    assert HEAD.config_values(splits) == {"id2label": dict(enumerate(splits.labels))}


def test_jsonl_with_named_columns(tmp_path):
    line = json.dumps({"w": ["Ana", "left"], "t": ["B-PER", "O"]}) + "\n"
    splits = _load(tmp_path, line, line, ".jsonl", tokens_column="w", tags_column="t")
    assert splits.train == [{"tokens": ["Ana", "left"], "tags": [1, 0]}]


@pytest.mark.parametrize(
    "train, validation, suffix, message",
    [
        ("Ana B-PER\nleft\n", "Ana B-PER\n", ".conll", "train.conll, line 2: 'left' has no tag"),
        (
            "Ana B-PER\n",
            "Ana B-PER\n\nin O\nRome B-LOC\n",
            ".conll",
            "validation.conll, line 4: tag 'B-LOC' is not",
        ),
        ("Ana PER\n", "Ana B-PER\n", ".conll", "train.conll, line 1: tag 'PER' is not BIO"),
        (
            '{"tokens": ["a"], "tags": ["O", "O"]}\n',
            '{"tokens": [], "tags": []}\n',
            ".jsonl",
            "line 1: 1 tokens but 2",
        ),
        (
            '{"tokens": ["a"], "tags": ["O"]}\n\n{"toks": ["a"]}\n',
            "{}\n",
            ".jsonl",
            "line 3: no column 'tokens'",
        ),
        ('{"tokens": "a b", "tags": ["O"]}\n', "{}\n", ".jsonl", "line 1: column 'tokens' should be a list"),
        ("\n-DOCSTART- O\n\n", "Ana B-PER\n", ".conll", "has no sentences"),
    ],
)
def test_reader_errors_name_file_and_line(tmp_path, train, validation, suffix, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        _load(tmp_path, train, validation, suffix)


@pytest.mark.parametrize(
    "tags, line",
    [
        (["O", "I-PER"], 2),  # I after O
        (["I-LOC"], 1),  # I first
        (["B-PER", "I-LOC"], 2),  # I of another type
        (["B-PER", "I-PER", "O", "B-LOC", "I-PER"], 5),
    ],
)
def test_bio_check_names_the_line_of_a_stray_i_tag(tmp_path, tags, line):
    text = "".join(f"w{i} {t}\n" for i, t in enumerate(tags))
    with pytest.raises(DataError, match=rf"train.conll, line {line}: tag 'I-\w+' follows"):
        _load(tmp_path, text, "a O\n")


def test_valid_bio_passes(tmp_path):
    _load(tmp_path, "a B-PER\nb I-PER\nc I-PER\nd B-PER\ne B-LOC\nf I-LOC\ng O\n", "a O\n")


# ---- encoding ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_labels_on_first_sub_token_only(family):
    texts = ["Ana works in Lisbon", "the cat sat"] * 20
    tokenizer = train_tokenizer(family, texts, 300, min_frequency=1)
    examples = [{"tokens": ["Ana", "Lisboncat", "Lisbon"], "tags": [3, 0, 1]}]
    row = HEAD.encode(tokenizer, examples, {"max_length": 64}, train=True).rows[0]
    enc = tokenizer([examples[0]["tokens"]], is_split_into_words=True)
    word_ids = enc.word_ids(0)
    assert len(row["labels"]) == len(row["input_ids"])
    assert word_ids.count(1) > 1, "the rare word should split into several sub-tokens"
    firsts = [i for i, w in enumerate(word_ids) if w is not None and (i == 0 or word_ids[i - 1] != w)]
    assert [row["labels"][i] for i in firsts] == [3, 0, 1]
    assert all(label == -100 for i, label in enumerate(row["labels"]) if i not in firsts)


def test_align_labels():
    assert align_labels([None, 0, 0, 1, None], [5, 6]) == [-100, 5, -100, 6, -100]


def test_truncation_keeps_labels_aligned():
    tokenizer = train_tokenizer("bert", ["a b c d e f"] * 10, 100, min_frequency=1)
    examples = [{"tokens": list("abcdef"), "tags": [0, 1, 2, 0, 1, 2]}]
    row = HEAD.encode(tokenizer, examples, {"max_length": 5}, train=True).rows[0]
    assert row["labels"] == [-100, 0, 1, 2, -100]


# ---- metric -----------------------------------------------------------------------------------------------
def test_entity_metric_equals_seqeval_on_random_sequences():
    rng = random.Random(0)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    for _ in range(1500):
        gold = [[rng.choice(tags) for _ in range(rng.randint(1, 9))] for _ in range(rng.randint(1, 5))]
        pred = [[rng.choice(tags) if rng.random() < 0.5 else g for g in s] for s in gold]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # seqeval warns where a score is undefined (0 then)
            expected = (precision_score(gold, pred), recall_score(gold, pred), f1_score(gold, pred))
        assert entity_scores(gold, pred) == pytest.approx(expected, abs=1e-12), (gold, pred)


def test_entities_of_non_bio_predictions_as_seqeval():
    assert get_entities(["O", "I-PER", "I-PER", "B-LOC", "I-ORG"]) == [
        ("PER", 1, 2),
        ("LOC", 3, 3),
        ("ORG", 4, 4),
    ]
    assert entity_scores([["O"]], [["O"]]) == (0.0, 0.0, 0.0)


# ---- inference grouping -----------------------------------------------------------------------------------
def test_groups_as_hf_simple_aggregation():
    text = "Ana Costa met Bob in New York ."
    spans = [(0, 3), (4, 9), (10, 13), (14, 17), (18, 20), (21, 24), (25, 29), (30, 31)]
    tags = [
        ("B-PER", 0.9),
        ("I-PER", 0.7),
        ("O", 1),
        ("B-PER", 0.6),
        ("O", 1),
        ("I-LOC", 0.5),
        ("I-LOC", 0.7),
    ]
    tags.append(("B-LOC", 0.8))
    assert _group(text, spans, tags) == [
        {"entity_group": "PER", "score": pytest.approx(0.8), "word": "Ana Costa", "start": 0, "end": 9},
        {"entity_group": "PER", "score": 0.6, "word": "Bob", "start": 14, "end": 17},
        {"entity_group": "LOC", "score": pytest.approx(0.6), "word": "New York", "start": 21, "end": 29},
        {"entity_group": "LOC", "score": 0.8, "word": ".", "start": 30, "end": 31},
    ]


# ---- models -----------------------------------------------------------------------------------------------
def test_classifier_dropout_falls_back_as_hf():
    bert = tiny_config("bert", hidden_dropout_prob=0.3)
    assert BertForTokenClassification(bert).dropout.p == 0.3
    assert BertForTokenClassification(bert.replace(classifier_dropout=0.05)).dropout.p == 0.05
    gpt2 = tiny_config("gpt2")  # GPT-2's config has neither key; a config.json's are kept in `extra`
    assert GPT2ForTokenClassification(gpt2).dropout.p == 0.1
    gpt2.extra["hidden_dropout"] = 0.2
    assert GPT2ForTokenClassification(gpt2).dropout.p == 0.2
    gpt2.extra["classifier_dropout"] = 0.0
    assert GPT2ForTokenClassification(gpt2).dropout.p == 0.0


def test_loss_ignores_minus_100():
    model = BertForTokenClassification(tiny_config("bert", num_labels=3)).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    labels = torch.tensor([[-100, 1, -100, 2]])
    out = model(ids, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[0, [1, 3]], torch.tensor([1, 2]))
    torch.testing.assert_close(out.loss, expected)


# ---- shipped data -----------------------------------------------------------------------------------------
def test_shipped_dataset_is_what_the_generator_writes(tmp_path):
    generate_token_cls.generate(tmp_path)
    for name in ("train.conll", "validation.conll"):
        written, shipped = tmp_path / "token_cls" / name, generate_token_cls.HERE / "token_cls" / name
        digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (written, shipped)]
        assert digest[0] == digest[1], f"{name} differs from the generator's output; regenerate it"
    splits = load_examples("token_cls")
    assert splits.labels == ["O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"]


# ---- a real run -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_train_then_infer_entities(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    run = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train.py"), "head=token_cls", *TINY_RUN, f"hydra.run.dir={run}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["architectures"] == ["BertForTokenClassification"]
    assert sorted(config["id2label"].values()) == ["B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER", "O"]
    text = "Ines works in Lisbon"
    cmd = [sys.executable, str(REPO / "infer.py"), f"model={run}", f"text={text}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    entities = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(entities, list)
    for entity in entities:  # a three-step model may tag anything; the shape and spans are what count
        assert set(entity) == {"entity_group", "score", "word", "start", "end"}
        assert text[entity["start"] : entity["end"]] == entity["word"]
        assert entity["entity_group"] in {"PER", "LOC", "ORG"}


@pytest.mark.slow
def test_fine_tune_all_minilm_l6_v2_end_to_end(tmp_path, minilm_path):
    """init=pretrained from the MiniLM folder (a sentence-transformers BertModel): the backbone loads, the
    classifier starts afresh, and the run dir is complete (figures: bench/pretrained_vs_random.py)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "head=token_cls",
        "init=pretrained",
        f"init.name_or_path={minilm_path}",
        "optim.lr=1e-4",
        "data.batch_size=8",
        "data.max_length=32",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=2",
        "+trainer.num_sanity_val_steps=0",
        "callbacks.progress_bar.refresh_rate=0",
        f"hydra.run.dir={run}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((run / "load_report.json").read_text())
    assert report["model_class"] == "BertForTokenClassification" and report["weights"]
    assert sorted(report["newly_initialised"]) == ["classifier.bias", "classifier.weight"]
    results = json.loads((run / "results.json").read_text())
    assert results["global_step"] == 3 and 0 <= results["final_metrics"]["val/f1"] <= 1
    assert math.isfinite(results["final_metrics"]["val/loss"])
    config = json.loads((run / "model" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (384, 6, 30522)
    for name in (
        ".hydra/config.yaml",
        "checkpoints/last.ckpt",
        "model/model.safetensors",
        "logs/metrics.csv",
    ):
        assert (run / name).is_file(), name
    assert (run / "model" / "tokenizer.json").is_file() or (run / "model" / "vocab.txt").is_file()
