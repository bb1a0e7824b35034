# pytest tests/test_next_sentence.py
"""BERT's next-sentence prediction and pretraining heads: sentence pairs, their batches and losses against
transformers, checkpoints holding both pretraining heads, the next_sentence predictor, train.py runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from torch.testing import assert_close

from factory import AutoModelForMaskedLM, AutoModelForNextSentencePrediction, AutoModelForPreTraining
from factory.data.files import DataError
from factory.data.module import FactoryDataModule
from factory.data.sources import load_examples
from factory.heads.head import BatchPosition, get_head
from factory.heads.next_sentence import LABELS, read_documents, sentence_pairs
from factory.inference.predictor import load_predictor
from factory.models.bert import BertForNextSentencePrediction
from factory.tokenizers.training import train_tokenizer
from tests.helpers import TINY_RUN, tiny_config
from tests.test_parity import hf_config, off_init

REPO = Path(__file__).resolve().parents[1]
DOCS = [["a1", "a2", "a3"], ["b1", "b2"], ["c1", "c2", "c3", "c4"]]


def test_pairs_are_successors_or_sentences_of_other_documents():
    pairs = sentence_pairs(DOCS * 50, seed=3)
    assert len(pairs) == 50 * (2 + 1 + 3)  # each sentence but a document's last is sentence A once
    for p in pairs:
        doc_a, doc_b = p["text"][0], p["text_pair"][0]
        if p["next_sentence_label"] == 0:
            assert doc_a == doc_b and int(p["text_pair"][1]) == int(p["text"][1]) + 1
        else:
            assert p["next_sentence_label"] == 1
    random_share = sum(p["next_sentence_label"] for p in pairs) / len(pairs)
    assert 0.4 < random_share < 0.6
    assert sentence_pairs(DOCS * 50, seed=3) == pairs and sentence_pairs(DOCS * 50, seed=4) != pairs
    # A random B never comes from A's own document (the copies of DOCS are other documents).
    few = sentence_pairs(DOCS, seed=0) + sentence_pairs(DOCS, seed=1) + sentence_pairs(DOCS, seed=2)
    assert all(p["text"][0] != p["text_pair"][0] for p in few if p["next_sentence_label"] == 1)


def test_documents_without_a_pair_are_errors_naming_the_file(tmp_path):
    lone = tmp_path / "lone.txt"
    lone.write_text("one sentence.\n\nanother one.\n")
    with pytest.raises(DataError, match=r"lone.txt: no document has two sentences"):
        read_documents(str(lone))
    single = tmp_path / "single.txt"
    single.write_text("first.\nsecond.\n")
    with pytest.raises(DataError, match=r"single.txt: .*another document; it has one"):
        read_documents(str(single))


def test_shipped_documents_are_what_the_generator_writes(tmp_path):
    from factory.data.datasets import generate_next_sentence

    for path in generate_next_sentence.generate(tmp_path):
        shipped = Path(generate_next_sentence.__file__).parent / path.relative_to(tmp_path)
        assert shipped.read_bytes() == path.read_bytes(), f"{shipped.name}: regenerate it"


@pytest.fixture(scope="module")
def shipped():
    splits = load_examples("pretraining")
    texts = [t for e in splits.train for t in (e["text"], e["text_pair"])]
    return train_tokenizer("bert", texts, 500, model_max_length=128), splits


def test_pretraining_batches_give_transformers_loss(shipped):
    tok, splits = shipped
    dm = FactoryDataModule("pretraining", {"mask_seed": 5}, tok, 8, 64, seed=0, splits=splits)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    # [CLS] A [SEP] B [SEP]: segment 0 then 1, as BERT reads a pair.
    row = dm.train.rows[0]
    first_sep = row["input_ids"].index(tok.sep_token_id)
    assert row["token_type_ids"][: first_sep + 1] == [0] * (first_sep + 1) and row["token_type_ids"][-1] == 1
    get_head("pretraining").draw_batch(batch, BatchPosition(0, 0), dm.draw_state(train=True))
    assert (batch["labels"] != -100).any() and set(batch["next_sentence_label"].tolist()) <= {0, 1}
    config = tiny_config("bert", vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    theirs = off_init(transformers.BertForPreTraining(hf_config(config)), seed=1)
    ours = off_init(AutoModelForPreTraining.from_config(config), seed=1)
    ours.load_state_dict(theirs.state_dict())
    with torch.no_grad():
        a, b = ours(**batch), theirs(**batch)
    for name in ("loss", "prediction_logits", "seq_relationship_logits"):
        assert_close(a[name], b[name], atol=1e-5, rtol=1e-5)


def test_next_sentence_rows_carry_the_label_the_model_takes(shipped):
    tok, _ = shipped
    splits = load_examples("next_sentence")
    dm = FactoryDataModule("next_sentence", {}, tok, 8, 64, seed=0, splits=splits)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].shape == (8,) and "token_type_ids" in batch
    out = BertForNextSentencePrediction(tiny_config("bert", vocab_size=len(tok)))(**batch)
    assert out.logits.shape == (8, 2) and out.loss.ndim == 0


def test_a_pretraining_checkpoint_feeds_each_pretraining_head(tmp_path):
    """A BertForPreTraining file (what bert-base-uncased is) loads as next-sentence prediction and as a
    masked LM, each leaving only the other head's keys, with transformers' outputs."""
    config = tiny_config("bert")
    torch.manual_seed(0)
    off_init(transformers.BertForPreTraining(hf_config(config)), seed=2).save_pretrained(tmp_path)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, config.vocab_size, (3, 12), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": (ids > 40).long()}
    pairs = [
        (AutoModelForNextSentencePrediction, transformers.BertForNextSentencePrediction, "logits"),
        (AutoModelForMaskedLM, transformers.BertForMaskedLM, "logits"),
        (AutoModelForPreTraining, transformers.BertForPreTraining, "seq_relationship_logits"),
    ]
    for auto, hf_cls, field in pairs:
        ours, info = auto.from_pretrained(tmp_path, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], (auto.__name__, info)
        theirs = hf_cls.from_pretrained(tmp_path, attn_implementation="eager").eval()
        with torch.no_grad():
            assert_close(ours.eval()(**batch)[field], theirs(**batch)[field], atol=1e-5, rtol=1e-5)


def test_next_sentence_predictions_are_the_model_softmax(shipped, tmp_path):
    tok, _ = shipped
    torch.manual_seed(0)
    model = off_init(BertForNextSentencePrediction(tiny_config("bert", vocab_size=len(tok))), seed=3)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    predictor = load_predictor(tmp_path)
    texts, pairs = ["The cat is red.", "A drum is loud."], ["The cat is calm.", "We bought a saw."]
    got = predictor.next_sentence(texts, pairs)
    enc = tok(texts, pairs, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**enc).logits.softmax(-1)
    for result, p in zip(got, probs):
        assert result["label"] == LABELS[int(p.argmax())] and result["score"] == pytest.approx(float(p.max()))
    alone = predictor.predict({"text": texts[0], "text_pair": pairs[0]})  # unpadded: equal within rounding
    assert alone["label"] == got[0]["label"] and alone["score"] == pytest.approx(got[0]["score"])


@pytest.mark.slow
@pytest.mark.parametrize("head", ["next_sentence", "pretraining"])
def test_train_py_runs_each_head(tmp_path, head):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    run_dir = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, str(REPO / "train.py"), f"head={head}", f"hydra.run.dir={run_dir}", *TINY_RUN],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    metrics = results["final_metrics"]
    if head == "pretraining":
        assert 0 <= metrics["val/mlm_accuracy"] <= 1 and 0 <= metrics["val/nsp_accuracy"] <= 1
    else:
        assert 0 <= metrics["val/accuracy"] <= 1
    model = AutoModelForPreTraining if head == "pretraining" else AutoModelForNextSentencePrediction
    assert type(model.from_pretrained(run_dir / "model")).head == head
