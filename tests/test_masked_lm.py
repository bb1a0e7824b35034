# pytest tests/test_masked_lm.py
"""The masked_lm head: BertForMaskedLM from pretraining checkpoints, dynamic masking, fill-mask."""

from __future__ import annotations

import torch
import transformers
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

from factory.models.bert import BertForMaskedLM
from tests.helpers import make_batch, tiny_config
from tests.test_parity import hf_config, off_init


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
