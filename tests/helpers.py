"""Constants and builders the test modules share (tiny configs, batches, train.py overrides, hub caches).

Test modules import them as `from tests.helpers import ...`; fixtures stay in conftest.py.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

import factory  # noqa: F401  (registers the architectures)
from factory import registry

# Tiny dimensions that every architecture accepts through the common names.
TINY = dict(
    num_hidden_layers=2, hidden_size=32, num_attention_heads=2, max_position_embeddings=64, vocab_size=99
)

# train.py overrides for a tiny run: tiny dims, three steps, one validation at the last step; each run
# takes seconds on a CPU.
TINY_RUN = [
    "arch.num_hidden_layers=1",
    "arch.hidden_size=32",
    "arch.num_attention_heads=2",
    "arch.intermediate_size=37",
    "arch.vocab_size=1000",
    "data.batch_size=8",
    "trainer.max_steps=3",
    "trainer.val_check_interval=3",
    "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
    "+trainer.num_sanity_val_steps=0",
    "callbacks.progress_bar.refresh_rate=0",
]


def tiny_config(model_type: str, **overrides):
    cls = registry.config_class(model_type)
    values = {**TINY, **overrides}
    extra = {"intermediate_size": 37, "encoder_ffn_dim": 37, "decoder_ffn_dim": 37, "n_inner": 37}
    for key, value in extra.items():
        if key in cls.field_names():
            values.setdefault(key, value)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if key in cls.field_names():
            values.setdefault(key, {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}[key])
    return cls.from_dict({}, **values)


def make_batch(
    config, head: str, batch: int = 3, length: int = 10, seed: int = 0, padded: bool = True
) -> dict:
    """Inputs and labels for `head`: random tokens above the special ids, each row ending in eos."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, config.vocab_size, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    if padded and batch > 1:
        ids[-1, length - 3 :] = config.pad_token_id
        mask[-1, length - 3 :] = 0
        ids[-1, length - 4] = config.eos_token_id
    ids[: batch - 1 if padded else batch, -1] = config.eos_token_id
    out = {"input_ids": ids, "attention_mask": mask}
    if head == "base" and getattr(config, "is_encoder_decoder", False):
        # Decoder inputs of their own length: T5's base model, as HF's, does not make them from input_ids.
        out["decoder_input_ids"] = torch.randint(3, config.vocab_size, (batch, length - 2), generator=g)
    if head == "seqcls":
        out["labels"] = torch.randint(0, config.num_labels, (batch,), generator=g)
    elif head == "qa":
        out["start_positions"] = torch.randint(0, length, (batch,), generator=g)
        out["end_positions"] = torch.randint(0, length, (batch,), generator=g)
    elif head == "causal_lm":
        out["labels"] = ids.masked_fill(mask == 0, -100)
    elif head == "token_cls":  # a label per token; padding and a few others ignored
        labels = torch.randint(0, config.num_labels, (batch, length), generator=g)
        ignored = (mask == 0) | (torch.rand(batch, length, generator=g) < 0.2)
        out["labels"] = labels.masked_fill(ignored, -100)
    elif head in ("masked_lm", "pretraining"):
        # Mostly -100, a few positions (never padding) asking for a token id.
        chosen = (torch.rand(batch, length, generator=g) < 0.3) & (mask == 1)
        chosen[0, 1] = True
        out["labels"] = ids.masked_fill(~chosen, -100)
        if head == "pretraining":  # and whether each row's second segment follows its first
            out["next_sentence_label"] = torch.randint(0, 2, (batch,), generator=g)
    elif head == "next_sentence":
        out["labels"] = torch.randint(0, 2, (batch,), generator=g)
    elif head == "multiple_choice":  # (B, C, T): each row's choices are `choices` rows of the batch above
        choices = 3
        flat = make_batch(config, "base", batch * choices, length, seed, padded)
        out = {k: v.view(batch, choices, length) for k, v in flat.items()}
        out["token_type_ids"] = torch.zeros_like(out["input_ids"])
        out["token_type_ids"][..., length // 2 :] = 1
        out["labels"] = torch.randint(0, choices, (batch,), generator=g)
    elif head == "seq2seq_lm":  # target ids of another length, ending in eos; the last row's tail ignored
        labels = torch.randint(3, config.vocab_size, (batch, length - 3), generator=g)
        labels[:, -1] = config.eos_token_id
        labels[-1, -2:] = -100
        out["labels"] = labels
    return out


# ---- a hub cache laid out as huggingface_hub lays it out ---------------------------------------------
SHA_MAIN = "a" * 40
SHA_OLD = "b" * 40


def add_snapshot(cache: Path, repo_id: str, source: Path, sha: str, branch: str | None = "main") -> None:
    """Put the files of `source` into `cache` as huggingface_hub stores them: blobs, snapshot links, refs."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap = repo / "snapshots" / sha
    snap.mkdir(parents=True, exist_ok=True)
    for f in (p for p in source.iterdir() if p.is_file()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    if branch:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / branch).write_text(sha)
