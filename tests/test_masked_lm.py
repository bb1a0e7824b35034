# pytest tests/test_masked_lm.py
"""The masked_lm head: BertForMaskedLM from pretraining checkpoints, dynamic masking, fill-mask."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

from factory.config import ConfigError
from factory.data.module import FactoryDataModule
from factory.data.sources import load_examples
from factory.heads.head import BatchPosition, get_head
from factory.heads.masked_lm import Masking, mask_tokens
from factory.inference.predictor import InferenceError, load_predictor
from factory.models.bert import BertForMaskedLM
from factory.tokenizers.training import train_tokenizer
from tests.helpers import TINY_RUN, make_batch, tiny_config
from tests.test_parity import hf_config, off_init

REPO = Path(__file__).resolve().parents[1]
SPECIAL = (0, 1, 2, 3, 4)  # [PAD] [UNK] [CLS] [SEP] [MASK], BERT's recipe
MASK = 4


def test_pretraining_checkpoint_with_legacy_names_loads_its_mlm_head(tmp_path):
    # A bert-base-uncased-style file: saved from BertForPreTraining (pooler, next-sentence head), the
    # LayerNorms spelled gamma/beta, and no separate decoder weight or bias (tied to other keys).
    config = tiny_config("bert")
    torch.manual_seed(0)
    pretraining = off_init(transformers.BertForPreTraining(hf_config(config)), seed=3)
    pretraining.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    assert any(k.startswith("cls.seq_relationship.") for k in state)
    legacy = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in state.items()
        if k not in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
    }
    save_file(legacy, tmp_path / "model.safetensors", metadata={"format": "pt"})

    ours, info = BertForMaskedLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    batch = make_batch(config, "masked_lm")
    with torch.no_grad():
        got = ours.eval()(**batch)
        want = pretraining(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert_close(got.logits, want.prediction_logits, atol=1e-5, rtol=1e-5)
    assert ours.cls["predictions"].decoder.weight is ours.bert.embeddings["word_embeddings"].weight
    assert ours.cls["predictions"].decoder.bias is ours.cls["predictions"].bias


# ---- masking ----------------------------------------------------------------------------------------
def _big_batch(vocab: int = 1000, rows: int = 64, length: int = 512):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (rows, length), generator=g)
    ids[:, 0], ids[:, length // 2] = 2, 3  # [CLS] and a [SEP] inside
    mask = torch.ones_like(ids)
    ids[::2, -100:], mask[::2, -100:] = 0, 0  # padding
    return ids, mask


def _masking(**kw) -> Masking:
    values = dict(probability=0.15, mask_id=MASK, vocab_size=1000, special_ids=SPECIAL, seed=0, varying=True)
    return Masking(**{**values, **kw})


def test_masking_statistics_15_percent_then_80_10_10():
    ids, mask = _big_batch()
    masked, labels = mask_tokens(ids, mask, _masking(), torch.Generator().manual_seed(1))
    chosen = labels != -100
    maskable = (mask == 1) & (ids > 4)
    assert not (chosen & ~maskable).any(), "a special or padding token was chosen"
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])
    assert abs(chosen.sum() / maskable.sum() - 0.15) < 0.005
    n = chosen.sum()
    as_mask = (masked == MASK) & chosen
    kept = (masked == ids) & chosen
    random = chosen & ~as_mask & ~kept
    assert abs(as_mask.sum() / n - 0.8) < 0.015
    assert abs(kept.sum() / n - 0.1) < 0.01  # (a random draw equal to the token counts as kept: 0.1%)
    assert abs(random.sum() / n - 0.1) < 0.01


def test_whole_word_masking_masks_every_piece_of_a_chosen_word():
    ids, mask = _big_batch()
    continuation = torch.zeros(1000, dtype=torch.bool)
    continuation[500:] = True  # ids >= 500 are "##" pieces: about half the tokens continue a word
    masked, labels = mask_tokens(ids, mask, _masking(continuation=continuation), torch.Generator())
    chosen = labels != -100
    maskable = (mask == 1) & (ids > 4)
    assert not (chosen & ~maskable).any()
    piece = continuation[ids] & maskable
    starts = 0
    for r in range(ids.size(0)):
        for t in range(1, ids.size(1)):
            if piece[r, t] and maskable[r, t - 1]:
                assert chosen[r, t] == chosen[r, t - 1], (r, t)  # same word, same fate
        starts += int((maskable[r] & ~piece[r] & chosen[r]).sum())
    words = int((maskable & ~piece).sum())
    assert abs(starts / words - 0.15) < 0.01


def test_whole_word_masking_with_a_wordpiece_tokenizer():
    # Words seen once split into pieces ("##"), so whole-word masking has pieces to follow.
    texts = ["the cat sat on the mat"] * 3 + ["the unbelievable hippopotamus sat"]
    tok = train_tokenizer("bert", texts, 200, model_max_length=64)
    assert any(t.startswith("##") for t in tok.tokenize("unbelievable hippopotamus"))
    head = get_head("masked_lm")
    settings = {"max_length": 64, "mlm_probability": 0.5, "whole_word_masking": True, "mask_seed": 0}
    state = head.draw_state(tok, settings, train=True)
    ids = torch.tensor(tok([texts[-1]] * 64)["input_ids"])
    tokens = tok.convert_ids_to_tokens(ids[0].tolist())
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    head.draw_batch(batch, BatchPosition(epoch=0, index=0), state)
    chosen = batch["labels"] != -100
    pieces = [t for t, token in enumerate(tokens) if token.startswith("##")]
    assert pieces and chosen[:, pieces].any()
    for t in pieces:
        assert torch.equal(chosen[:, t], chosen[:, t - 1])  # a piece goes with the token before it


def test_shipped_texts_are_what_the_generator_writes_in_whole_blocks(tmp_path):
    from factory.data.datasets import generate_masked_lm

    for path in generate_masked_lm.generate(tmp_path):
        shipped = generate_masked_lm.HERE / path.relative_to(tmp_path)
        assert shipped.read_bytes() == path.read_bytes(), f"{shipped.name}: regenerate it"
    # Every document is 16 tokens for a tokenizer trained on them: 64-token blocks hold four whole ones.
    splits = load_examples("masked_lm")
    tok = train_tokenizer("bert", [e["text"] for e in splits.train], 4000, model_max_length=128)
    lengths = {len(ids) for ids in tok([e["text"] for e in splits.train + splits.validation])["input_ids"]}
    assert lengths == {16}


def _data_module(tok, splits, seed: int = 7):
    dm = FactoryDataModule("masked_lm", {"mask_seed": seed}, tok, 8, 64, seed=0, splits=splits)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def shipped():
    splits = load_examples("masked_lm")
    tok = train_tokenizer("bert", [e["text"] for e in splits.train], 1000, model_max_length=128)
    return tok, splits


def _drawn(dm, batch: dict, epoch: int, index: int, rank: int = 0, train: bool = True) -> dict:
    """`batch` masked as the Lightning module masks the `index`-th batch of `epoch` of `dm`'s split."""
    batch = {k: v.clone() for k, v in batch.items()}
    get_head("masked_lm").draw_batch(batch, BatchPosition(epoch, index, rank), dm.draw_state(train))
    return batch


def test_masks_are_keyed_by_seed_epoch_and_batch_index(shipped):
    tok, splits = shipped
    a, b, other = _data_module(tok, splits), _data_module(tok, splits), _data_module(tok, splits, seed=8)
    first = [_drawn(dm, next(iter(dm.train_dataloader())), 0, 0) for dm in (a, b, other)]
    assert torch.equal(first[0]["input_ids"], first[1]["input_ids"])  # same seed, same masks
    assert torch.equal(first[0]["labels"], first[1]["labels"])
    assert not torch.equal(first[0]["labels"], first[2]["labels"])  # another seed, other masks
    assert (first[0]["input_ids"] == MASK).any() and (first[0]["labels"] != -100).any()
    # The same rows drawn at another epoch, batch index or rank are masked afresh; at the same position,
    # however often and in whatever order they are drawn (a resumed run), the same.
    rows = a.collate(a.train.rows[:8])
    assert "labels" not in rows  # the collate masks nothing: it knows no position
    at = {where: _drawn(a, rows, *where)["labels"] for where in [(0, 3), (1, 3), (0, 4), (0, 3, 1)]}
    assert len({tuple(labels.flatten().tolist()) for labels in at.values()}) == 4
    assert torch.equal(_drawn(a, rows, 0, 3)["labels"], at[(0, 3)])
    # Validation masks are the same every epoch.
    val = a.collate(a.validation.rows[:8])
    assert torch.equal(
        _drawn(a, val, 0, 2, train=False)["labels"], _drawn(a, val, 5, 2, train=False)["labels"]
    )
    assert not torch.equal(
        _drawn(a, val, 0, 2, train=False)["labels"], _drawn(a, val, 0, 3, train=False)["labels"]
    )
    # A whole epoch as training draws it: 15% of the maskable tokens, never a special one or padding.
    chosen = maskable = 0
    for index, batch in enumerate(a.train_dataloader()):
        drawn = _drawn(a, batch, 1, index)
        targets = drawn["labels"] != -100
        can = (batch["attention_mask"] == 1) & ~torch.isin(batch["input_ids"], torch.tensor(SPECIAL))
        assert not (targets & ~can).any()
        chosen, maskable = chosen + int(targets.sum()), maskable + int(can.sum())
    assert abs(chosen / maskable - 0.15) < 0.01


def test_a_tokenizer_without_a_mask_token_is_an_error(shipped):
    _, splits = shipped
    gpt2 = train_tokenizer("gpt2", [e["text"] for e in splits.train[:20]], 300, model_max_length=128)
    settings = {"max_length": 64, "mlm_probability": 0.15, "whole_word_masking": False, "mask_seed": 0}
    with pytest.raises(ConfigError, match=r"mask token.*GPT-2.*masked_lm model: \[.*'bert'"):
        get_head("masked_lm").encode(gpt2, splits.train[:2], settings, train=True)
    with pytest.raises(ConfigError, match="mlm_probability=1.5"):
        get_head("masked_lm").encode(shipped[0], splits.train[:2], {**settings, "mlm_probability": 1.5}, True)


# ---- fill-mask ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(shipped, tmp_path_factory):
    tok, _ = shipped
    path = tmp_path_factory.mktemp("mlm_model")
    torch.manual_seed(0)
    model = off_init(BertForMaskedLM(tiny_config("bert", vocab_size=len(tok), pad_token_id=0)), seed=4)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_fill_mask_is_transformers_pipeline(model_dir):
    predictor = load_predictor(model_dir)
    pipe = transformers.pipeline("fill-mask", model=str(model_dir), top_k=3)
    for text in ("Greta lived in a [MASK] city.", "[MASK] lived in a [MASK] city."):
        got = predictor.fill_mask([text], top_k=3)[0]
        want = pipe(text)
        flat_got = got if isinstance(got[0], dict) else [f for fills in got for f in fills]
        flat_want = want if isinstance(want[0], dict) else [f for fills in want for f in fills]
        assert len(flat_got) == len(flat_want) and isinstance(got[0], dict) == isinstance(want[0], dict)
        for a, b in zip(flat_got, flat_want):
            assert (a["token"], a["token_str"], a["sequence"]) == (b["token"], b["token_str"], b["sequence"])
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    assert len(predictor.predict({"text": "a [MASK]."})) == 5  # fill_top_k's default
    with pytest.raises(InferenceError, match=r"No mask token \(\[MASK\]\)"):
        predictor.fill_mask(["no mask here"])


@pytest.mark.slow
def test_train_then_infer_on_the_command_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    run_dir = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "head=masked_lm", f"hydra.run.dir={run_dir}", *TINY_RUN],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["head"] == "masked_lm" and 0 <= results["final_metrics"]["val/accuracy"] <= 1
    infer = subprocess.run(
        [
            sys.executable,
            str(REPO / "infer.py"),
            f"model={run_dir}",
            "text=the [MASK] is red.",
            "fill_top_k=2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert infer.returncode == 0, infer.stderr[-3000:]
    fills = json.loads(infer.stdout)
    assert len(fills) == 2 and set(fills[0]) == {"score", "token", "token_str", "sequence"}
    assert fills[0]["score"] >= fills[1]["score"]


@pytest.mark.slow
def test_a_resumed_run_draws_the_masks_of_an_uninterrupted_one(tmp_path, tmp_path_factory, monkeypatch):
    from factory.data.files import default_data_files
    from factory.training import resume
    from factory.training.run import train
    from tests.test_resume import assert_same_run, compose_cfg, last, train_killed_after

    # 40 documents of 16 tokens: 20 blocks of 32, 3 batches an epoch (8, 8, 4); killed mid-epoch 2 (step 5).
    documents = Path(default_data_files("masked_lm")[0]).read_text(encoding="utf-8").split("\n\n")
    for name, part in (("train", documents[:40]), ("validation", documents[40:48])):
        (tmp_path / f"{name}.txt").write_text("\n\n".join(part) + "\n", encoding="utf-8")
    items = [
        "head=masked_lm",
        *TINY_RUN,
        "data.max_length=32",
        f"data.train_file={tmp_path / 'train.txt'}",
        f"data.validation_file={tmp_path / 'validation.txt'}",
        "trainer.max_steps=7",
        "trainer.val_check_interval=1.0",
        "callbacks.last_checkpoint.every_n_train_steps=1",
    ]
    reference = tmp_path_factory.mktemp("reference")
    train(compose_cfg(items), run_dir=reference)
    run = tmp_path / "run"
    train_killed_after(compose_cfg(items), run, 5, monkeypatch)
    train(resume.run_config(run))
    assert_same_run(last(run), last(reference))
