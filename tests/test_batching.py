# pytest tests/test_batching.py
"""Padding to the longest row (a multiple of 8), length-grouped batches and their resume, documents packed
with per-document attention: outputs as transformers' for packed inputs, loss per token unchanged."""

from __future__ import annotations

import random

import pytest
import torch
import transformers
from hydra import compose, initialize_config_dir
from torch.testing import assert_close

from factory import registry
from factory.config import ConfigError
from factory.data.batching import (
    LengthGroupedSampler,
    check_document_positions,
    pack_documents,
    padded_length,
)
from factory.data.files import texts_for_tokenizer
from factory.data.module import FactoryDataModule
from factory.data.sources import load_examples
from factory.heads.head import DataSplits, Encoded
from factory.models.layers import document_ids
from factory.tokenizers.training import train_tokenizer
from factory.training.plan import resolve
from tests.helpers import tiny_config
from tests.test_parity import off_init
from tests.test_plan import CONF


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    splits = load_examples("causal_lm", {})
    return train_tokenizer("gpt2", texts_for_tokenizer("causal_lm", splits), 300, model_max_length=128)


@pytest.fixture(scope="module")
def bert_tokenizer():
    splits = load_examples("masked_lm", {})
    return train_tokenizer("bert", texts_for_tokenizer("masked_lm", splits), 300, model_max_length=128)


# ---- padding ------------------------------------------------------------------------------------------
def test_padded_length_rounds_up_but_never_over_max_length():
    assert padded_length(13, 8, 64) == 16
    assert padded_length(16, 8, 64) == 16
    assert padded_length(61, 8, 64) == 64
    assert padded_length(61, 8, 62) == 62  # capped
    assert padded_length(13, None, 64) == padded_length(13, 1, 64) == 13


def test_batches_are_padded_to_their_longest_row_rounded(gpt2_tokenizer):
    dm = FactoryDataModule("seqcls", {}, gpt2_tokenizer, batch_size=2, max_length=60, seed=0)
    rows = [{"input_ids": [5] * 3, "labels": 0}, {"input_ids": [6] * 11, "labels": 1}]
    batch = dm.collate(rows)
    assert batch["input_ids"].shape == (2, 16) and batch["attention_mask"].sum().item() == 14
    dm = FactoryDataModule(
        "seqcls", {"pad_to_multiple_of": None}, gpt2_tokenizer, batch_size=2, max_length=60
    )
    assert dm.collate(rows)["input_ids"].shape == (2, 11)
    dm = FactoryDataModule("seqcls", {}, gpt2_tokenizer, batch_size=2, max_length=12)
    assert dm.collate(rows)["input_ids"].shape == (2, 12)  # not 16: never over max_length


def test_a_heads_own_collate_is_rounded_too(gpt2_tokenizer):
    dm = FactoryDataModule("seq2seq_lm", {}, gpt2_tokenizer, batch_size=2, max_length=64)
    rows = [{"input_ids": [5] * 3, "labels": [7] * 9}, {"input_ids": [6] * 10, "labels": [8] * 2}]
    batch = dm.collate(rows)
    assert batch["input_ids"].shape == (2, 16) and batch["labels"].shape == (2, 16)
    assert (batch["labels"][:, 9:] == -100).all() and (batch["attention_mask"][:, 10:] == 0).all()


def test_multiple_choice_batches_are_rounded_per_choice(bert_tokenizer):
    dm = FactoryDataModule("multiple_choice", {}, bert_tokenizer, batch_size=2, max_length=64)
    rows = [  # choices flattened: 2 of 3 tokens, 3 of 5
        {"input_ids": [5] * 6, "token_type_ids": [0] * 6, "num_choices": 2, "choice_length": 3, "labels": 0},
        {
            "input_ids": [6] * 15,
            "token_type_ids": [1] * 15,
            "num_choices": 3,
            "choice_length": 5,
            "labels": 2,
        },
    ]
    batch = dm.collate(rows)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 3, 8)
    assert batch["choice_mask"].shape == (2, 3) and int(batch["attention_mask"].sum()) == 21


# ---- length-grouped batches ---------------------------------------------------------------------------
def lengths_data(n: int = 203, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [max(1, min(512, int(rng.lognormvariate(3.7, 0.8)))) for _ in range(n)]


def test_length_grouped_batches_hold_similar_lengths():
    lengths = lengths_data()
    sampler = LengthGroupedSampler(lengths, 4, torch.Generator().manual_seed(0), megabatch_batches=10)
    batches = sampler.batches()
    order = [i for b in batches for i in b]
    assert sorted(order) == list(range(len(lengths)))  # every row once
    assert all(len(b) == 4 for b in batches[:-1]) and len(batches[-1]) == 203 % 4  # the short batch last
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # the longest first
    padded = sum(4 * max(lengths[i] for i in b) for b in batches)
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    random_padded = sum(4 * max(lengths[i] for i in shuffled[j : j + 4]) for j in range(0, len(shuffled), 4))
    assert padded < 0.7 * random_padded
    again = LengthGroupedSampler(lengths, 4, torch.Generator().manual_seed(0), megabatch_batches=10)
    assert again.batches() == batches  # from the seed
    assert sampler.batches() != batches  # the next epoch draws a new order


def test_length_grouped_batches_split_over_ranks_whole():
    """Under DDP each rank takes every other whole batch of the same draw: the ranks' rows are disjoint
    but for the rows that fill the last batch up, each rank has as many full batches, and Lightning keeps
    the sampler (it is a DistributedSampler) instead of wrapping it in a shuffling one."""
    lengths = lengths_data()
    ranks = [
        LengthGroupedSampler(lengths, 4, torch.Generator().manual_seed(0), 10, num_replicas=2, rank=r)
        for r in (0, 1)
    ]
    assert all(isinstance(s, torch.utils.data.DistributedSampler) for s in ranks)
    batches = [s.batches() for s in ranks]
    assert len(batches[0]) == len(batches[1]) == len(ranks[0]) // 4 == 26  # ceil(51 / 2) batches of 4
    assert all(len(b) == 4 for bs in batches for b in bs)
    rows = [i for bs in batches for b in bs for i in b]
    assert set(rows) == set(range(len(lengths)))  # every row, a few twice to fill the batches
    assert len(rows) - len(set(rows)) == 2 * 26 * 4 - 203
    one = LengthGroupedSampler(lengths, 4, torch.Generator().manual_seed(0), 10).batches()
    assert batches[0][0] == one[0]  # rank 0 starts with the longest batch, as one process does
    with pytest.raises(ValueError, match="rank=2"):
        LengthGroupedSampler(lengths, 4, num_replicas=2, rank=2)


def grouped_module(tokenizer, lengths: list[int]) -> FactoryDataModule:
    dm = FactoryDataModule(
        "causal_lm", {"group_by_length": True}, tokenizer, batch_size=4, max_length=512, seed=3
    )
    # Each row's tokens are its index, so a batch says which rows it holds.
    dm.train = Encoded([{"input_ids": [i] * n} for i, n in enumerate(lengths)])
    return dm


def batches(loader, n: int | None = None) -> list[list[int]]:
    return [b["input_ids"][:, 0].tolist() for _, b in zip(range(len(loader) if n is None else n), loader)]


@pytest.mark.parametrize("stop", [(0, 5), (1, 1), (1, 13)])  # (epoch, batches into it)
def test_length_grouped_loader_resumes_with_the_same_batches(gpt2_tokenizer, stop):
    lengths = lengths_data(50)
    loader = grouped_module(gpt2_tokenizer, lengths).train_dataloader()
    want = [batches(loader) for _ in range(3)]
    for epoch in want:
        spans = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in epoch]
        assert sorted(i for b in epoch for i in b) == list(range(50)) and max(spans) < max(lengths) / 2
    loader = grouped_module(gpt2_tokenizer, lengths).train_dataloader()
    epoch, n = stop
    seen = [batches(loader) for _ in range(epoch)] + [batches(loader, n)]
    state = loader.state_dict()
    loader = grouped_module(gpt2_tokenizer, lengths).train_dataloader()  # a new process
    loader.load_state_dict(state)
    if not state["finished"]:  # mid-epoch: the rest of it; at its end: the next epoch
        seen[-1] += batches(loader)
    seen += [batches(loader) for _ in range(epoch + 1, 3)]
    assert seen == want


# ---- packing ------------------------------------------------------------------------------------------
def test_pack_documents():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]]
    packed = pack_documents(docs, 4, packing=True, document_positions=True)
    assert [r["input_ids"] for r in packed] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert [r["position_ids"] for r in packed] == [[0, 1, 2, 0], [0, 0, 1, 2], [0, 1]]
    alone = pack_documents(docs, 4, packing=False, document_positions=False)
    assert [r["input_ids"] for r in alone] == [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]
    assert [r["input_ids"] for r in pack_documents(docs, 4, True, False)] == [r["input_ids"] for r in packed]


def packed_inputs(config, docs: list[int], rows: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows` rows of documents of the given lengths each (random tokens), positions restarting."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, config.vocab_size, (rows, sum(docs)), generator=g)
    positions = torch.cat([torch.arange(n) for n in docs]).repeat(rows, 1)
    return ids, positions


CAUSAL = ["gpt2", "llama", "qwen2"]
ENCODERS = ["bert", "roberta", "distilbert"]


@pytest.mark.parametrize("model_type", CAUSAL)
def test_packed_causal_models_match_transformers(tmp_path, model_type):
    """transformers detects packed documents from restarting positions (no attention_mask) in these."""
    config = tiny_config(model_type)
    cls = registry.model_class(model_type, "causal_lm")
    hf = transformers.AutoConfig.for_model(
        model_type, **{k: v for k, v in config.to_dict().items() if k != "model_type"}
    )
    hf._attn_implementation = "sdpa"
    torch.manual_seed(0)
    theirs = off_init(getattr(transformers, cls.__name__)(hf), seed=1)
    theirs.save_pretrained(tmp_path)
    ours = cls.from_pretrained(tmp_path).eval()
    ids, positions = packed_inputs(config, [3, 5, 4])
    with torch.no_grad():
        a = ours(input_ids=ids, position_ids=positions, labels=ids)
        # No cache: transformers looks for packed documents only without one (it makes one in eval).
        b = theirs(input_ids=ids, position_ids=positions, labels=ids, use_cache=False)
        alone = ours(input_ids=ids[:, 3:8]).logits  # the second document run by itself
    assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    assert_close(a.loss, b.loss, atol=1e-5, rtol=1e-5)
    assert_close(a.logits[:, 3:8], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("model_type", ENCODERS)
def test_packed_encoders_match_each_document_run_alone(model_type):
    """transformers' BERT family ignores positions for masking: compare with the documents one by one."""
    config = tiny_config(model_type)
    torch.manual_seed(0)
    model = off_init(registry.model_class(model_type, "masked_lm")(config), seed=1)
    docs = [4, 2, 6]
    ids, positions = packed_inputs(config, docs)
    batch = {"input_ids": ids, "position_ids": positions}
    check_document_positions(model, batch)  # RoBERTa's positions start after its pad id
    with torch.no_grad():
        packed = model(**batch).logits
        start = 0
        for n in docs:
            alone = model(input_ids=ids[:, start : start + n]).logits
            assert_close(packed[:, start : start + n], alone, atol=1e-5, rtol=1e-5)
            start += n


def test_document_ids_as_transformers_finds_them():
    from transformers.masking_utils import find_packed_sequence_indices

    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
    assert torch.equal(document_ids(positions), find_packed_sequence_indices(positions))
    assert document_ids(torch.arange(6)[None]) is None


def test_packed_loss_is_the_token_weighted_loss_of_the_documents_alone(gpt2_tokenizer):
    data = {"packing_document_attention": True}
    rng = random.Random(0)
    words = load_examples("causal_lm", {}).train[0]["text"].split()
    docs = [{"text": " ".join(rng.choices(words, k=rng.randint(2, 30)))} for _ in range(40)]
    splits = DataSplits(docs, docs[:8])
    dm = FactoryDataModule("causal_lm", data, gpt2_tokenizer, batch_size=4, max_length=64, splits=splits)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert "attention_mask" not in batch and (batch["position_ids"] == 0).sum() > 4  # several documents a row
    config = tiny_config("gpt2", vocab_size=len(gpt2_tokenizer), n_positions=64)
    torch.manual_seed(0)
    model = off_init(registry.model_class("gpt2", "causal_lm")(config), seed=1)
    batch = dm.head.prepare_batch(model, batch)
    with torch.no_grad():
        packed = model(**batch).loss
        total, tokens = 0.0, 0
        for ids, labels, docs in zip(
            batch["input_ids"], batch["labels"], document_ids(batch["position_ids"])
        ):
            for d in docs.unique():
                keep = docs == d
                n = int((labels[keep] != -100).sum())  # padding is a document with no targets
                if n:
                    doc = ids[keep][None]
                    total += float(model(input_ids=doc, labels=doc).loss) * n
                    tokens += n
    assert_close(packed, torch.tensor(total / tokens), atol=1e-5, rtol=1e-5)


def test_packing_is_the_default_of_the_lm_heads_and_can_be_turned_off(gpt2_tokenizer, bert_tokenizer):
    for head, tok in (("causal_lm", gpt2_tokenizer), ("masked_lm", bert_tokenizer)):
        packed = FactoryDataModule(head, {}, tok, batch_size=4, max_length=64)
        apart = FactoryDataModule(head, {"packing": False}, tok, batch_size=4, max_length=64)
        packed.setup()
        apart.setup()
        assert all(len(r["input_ids"]) == 64 for r in packed.train.rows[:-1])  # earlier runs' rows
        assert len(apart.train.rows) > len(packed.train.rows)
        batch = next(iter(apart.val_dataloader()))  # as long as its longest document, rounded up
        assert batch["input_ids"].size(1) == padded_length(int(batch["attention_mask"].sum(1).max()), 8, 64)


def test_masked_lm_packed_with_document_attention_draws_masks(bert_tokenizer):
    data = {"packing_document_attention": True}
    dm = FactoryDataModule("masked_lm", data, bert_tokenizer, batch_size=4, max_length=64, seed=0)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    from factory.heads.head import BatchPosition

    dm.head.draw_batch(batch, BatchPosition(0, 0), dm.draw_state(train=True))
    assert "attention_mask" not in batch and (batch["labels"] != -100).any()


# ---- config -------------------------------------------------------------------------------------------
def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["head=seqcls", "data.packing=true"], "data.packing=true is not valid with head=seqcls"),
        (["data.pad_to_multiple_of=0"], "data.pad_to_multiple_of=0 is not valid"),
        (["data.group_by_length=yes"], "data.group_by_length='yes' is not valid"),
    ],
)
def test_bad_batching_keys_are_errors_naming_them(overrides, key):
    with pytest.raises(ConfigError, match=key.replace("=", "=").replace("(", r"\(")):
        resolve(compose_cfg("arch.num_hidden_layers=1", *overrides))


def test_packing_keys_are_accepted_for_the_lm_heads():
    plan = resolve(compose_cfg("arch=gpt2", "head=causal_lm", "data.packing_document_attention=true"))
    assert plan.data["packing_document_attention"] is True


# ---- end to end ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_killed_run_with_length_grouped_batches_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from pathlib import Path

    from factory.data.files import default_data_files
    from factory.training import resume
    from factory.training.run import train
    from tests import test_resume as r

    data = []
    for split, path, rows in zip(("train", "validation"), default_data_files("seqcls"), (20, 8)):
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        (tmp_path / f"{split}.csv").write_text("\n".join(lines[: rows + 1]) + "\n", encoding="utf-8")
        data.append(f"data.{split}_file={tmp_path / f'{split}.csv'}")
    items = r.overrides(data, "data.group_by_length=true", "trainer.max_steps=5")
    train(r.compose_cfg(items), run_dir=tmp_path / "reference")
    killed = tmp_path / "killed"
    r.train_killed_after(r.compose_cfg(items), killed, 2, monkeypatch)  # mid-epoch (3 batches an epoch)
    train(resume.run_config(killed))
    r.assert_same_run(r.last(killed), r.last(tmp_path / "reference"))


def test_document_attention_with_a_model_without_positions_is_an_error():
    model = registry.model_class("bart", "causal_lm")(tiny_config("bart"))
    batch = {"input_ids": torch.ones(1, 4, dtype=torch.long), "position_ids": torch.tensor([[0, 1, 0, 1]])}
    with pytest.raises(
        ConfigError, match="packing_document_attention=true needs a model that takes position_ids"
    ):
        check_document_positions(model, batch)
