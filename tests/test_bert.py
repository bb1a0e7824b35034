# pytest tests/test_bert.py
"""BERT against transformers: every head, both directions, the KV cache, and real MiniLM weights."""

from __future__ import annotations

import pytest
import torch
import transformers
from torch.testing import assert_close

from factory import AutoModel, BertConfig, registry

HF_CLASSES = {
    "base": transformers.BertModel,
    "seqcls": transformers.BertForSequenceClassification,
    "qa": transformers.BertForQuestionAnswering,
    "causal_lm": transformers.BertLMHeadModel,
}
CONFIGS = [
    dict(hidden_size=36, num_attention_heads=3, num_hidden_layers=2, intermediate_size=37),
    dict(
        hidden_size=32,
        num_attention_heads=4,
        num_hidden_layers=3,
        intermediate_size=64,
        hidden_act="gelu_new",
    ),
]


def hf_config(head: str, **kw) -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=99,
        max_position_embeddings=64,
        type_vocab_size=2,
        num_labels=2 if head == "qa" else 3,
        is_decoder=head == "causal_lm",
        **kw,
    )


def inputs(head: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 99, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    out = {"input_ids": ids, "attention_mask": mask}
    if head != "causal_lm":
        out["token_type_ids"] = (torch.arange(11) >= 5).long().expand(3, -1)
    return out


def labels(head: str, batch: dict) -> dict:
    g = torch.Generator().manual_seed(1)
    if head == "seqcls":
        return {"labels": torch.randint(0, 3, (3,), generator=g)}
    if head == "qa":
        return {"start_positions": torch.tensor([1, 3, 20]), "end_positions": torch.tensor([4, 6, 2])}
    if head == "causal_lm":
        return {"labels": batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)}
    return {}


def compare(ours, theirs, mask: torch.Tensor) -> None:
    valid = mask.bool()
    for name in ("last_hidden_state", "logits", "start_logits", "end_logits", "pooler_output", "loss"):
        a, b = getattr(ours, name, None), getattr(theirs, name, None)
        if a is None or b is None:
            continue
        if name in ("last_hidden_state", "start_logits", "end_logits") or (name == "logits" and a.dim() == 3):
            a, b = a[valid], b[valid]  # padding positions carry no meaning
        assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"{name} differs")


@pytest.mark.parametrize("head", list(HF_CLASSES))
@pytest.mark.parametrize("cfg", CONFIGS, ids=["odd", "deeper"])
def test_hf_checkpoint_loads_to_equal_outputs(tmp_path, head, cfg):
    torch.manual_seed(0)
    hf = HF_CLASSES[head](hf_config(head, **cfg)).eval()
    hf.save_pretrained(tmp_path)
    ours, info = registry.model_class("bert", head).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    batch = inputs(head)
    with torch.no_grad():
        compare(
            ours(**batch, **labels(head, batch)), hf(**batch, **labels(head, batch)), batch["attention_mask"]
        )


@pytest.mark.parametrize("head", list(HF_CLASSES))
def test_what_we_save_loads_in_transformers(tmp_path, head):
    torch.manual_seed(0)
    config = BertConfig.from_dict(hf_config(head, **CONFIGS[0]).to_dict())
    ours = registry.model_class("bert", head)(config).eval()
    ours.save_pretrained(tmp_path)
    hf, info = HF_CLASSES[head].from_pretrained(tmp_path, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    hf.eval()
    batch = inputs(head)
    with torch.no_grad():
        compare(
            ours(**batch, **labels(head, batch)), hf(**batch, **labels(head, batch)), batch["attention_mask"]
        )


def test_kv_cache_matches_full_forward():
    torch.manual_seed(0)
    config = BertConfig.from_dict(hf_config("causal_lm", **CONFIGS[0]).to_dict())
    model = registry.model_class("bert", "causal_lm")(config).eval()
    ids = torch.randint(1, 99, (2, 9))
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :4], use_cache=True)
        steps = [out.logits]
        past = out.past_key_values
        for t in range(4, 9):
            out = model(ids[:, t : t + 1], past_key_values=past, use_cache=True)
            steps.append(out.logits)
            past = out.past_key_values
    assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


SENTENCES = ["Hello world!", "A longer sentence about the weather in Zürich, which was cold.", "Short."]


def test_minilm_real_weights_match_transformers(minilm_path):
    ours = AutoModel.from_pretrained(minilm_path)
    hf = transformers.AutoModel.from_pretrained(minilm_path, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(minilm_path)
    batch = dict(tok(SENTENCES, padding=True, return_tensors="pt"))
    with torch.no_grad():
        a, b = ours(**batch), hf(**batch)
    valid = batch["attention_mask"].bool()
    assert_close(a.last_hidden_state[valid], b.last_hidden_state[valid], atol=1e-5, rtol=1e-5)
    assert_close(a.pooler_output, b.pooler_output, atol=1e-5, rtol=1e-5)
    assert ours.config.num_hidden_layers == 6 and ours.config.hidden_size == 384
