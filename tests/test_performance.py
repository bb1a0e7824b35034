# pytest tests/test_performance.py   (the compile test is marked slow)
"""trainer.activation_checkpointing, trainer.compile and the utilization figures of results.json."""

from __future__ import annotations

import json
import math

import pytest
import torch

from factory import registry
from factory.build import build_model
from factory.config import ConfigError
from factory.training.lightning import performance
from factory.training.run import train
from tests.helpers import make_batch, tiny_config
from tests.test_parity import off_init
from tests.test_train import tiny_cfg

CASES = [(t, h, c) for t, h, c in registry.registered_models() if h != "base"]


def _grads(model, batch, seed):
    torch.manual_seed(seed)  # the same dropout masks on both sides
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _saved_bytes(model, batch):
    """Bytes the autograd graph keeps for backward (activations, mostly)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**batch).loss.backward()
    return total


@pytest.mark.parametrize("model_type, head, cls", CASES, ids=lambda v: getattr(v, "__name__", v))
def test_checkpointed_blocks_give_the_same_loss_and_gradients_and_keep_less(model_type, head, cls):
    config = tiny_config(model_type)  # dropout on (the defaults): the seeded masks must be replayed
    if head == "causal_lm" and "is_decoder" in type(config).field_names():
        config.is_decoder = True
    model = off_init(cls(config), seed=1).train()
    batch = make_batch(config, head, batch=2, length=12)
    names = list(model.state_dict())
    loss, grads = _grads(model, batch, seed=5)
    plain = _saved_bytes(model, batch)
    assert performance.enable_activation_checkpointing(model) >= config.num_hidden_layers
    loss_ckpt, grads_ckpt = _grads(model, batch, seed=5)
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    assert grads_ckpt.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-6, msg=name)
    assert list(model.state_dict()) == names, "parameter names unchanged"
    assert _saved_bytes(model, batch) < plain
    with torch.no_grad():  # inference runs the blocks as they are
        model(**batch)


def test_a_bert_base_layer_stack_keeps_a_fraction_of_its_activations():
    # The memory the issue asks about, in saved-tensor bytes rather than process RSS: a 4-layer
    # bert-base-wide model at 2 x 256 keeps under half of what it keeps without checkpointing.
    config = tiny_config(
        "bert",
        num_hidden_layers=4,
        hidden_size=768,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=256,
        vocab_size=1000,
    )
    _, model = build_model(config.to_dict(), "seqcls", seed=0)
    model.train()
    batch = make_batch(model.config, "seqcls", batch=2, length=256, padded=False)
    plain = _saved_bytes(model, batch)
    performance.enable_activation_checkpointing(model)
    assert _saved_bytes(model, batch) <= 0.5 * plain


def test_trainer_keys_of_ours_are_typed_and_apply_in_a_run(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.compile='yes' is not valid: expected true or false"):
        performance.split_trainer({"compile": "yes"})
    cfg = tiny_cfg("bert", "seqcls", "trainer.activation_checkpointing=true")
    train(cfg, run_dir=tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    for key in (
        "flops_per_token",
        "flops_per_step",
        "achieved_flops_per_second",
        "peak_flops_per_second",
        "mfu",
    ):
        assert isinstance(results[key], float) and math.isfinite(results[key]) and results[key] > 0, key
    assert results["peak_source"].startswith("measured") and results["mfu"] < 1
    expected = performance.flops_per_token(results["num_parameters"], 1, 32, 32)
    assert results["flops_per_token"] == expected
    assert results["flops_per_step"] == pytest.approx(expected * results["train_tokens"] / 3)


def test_gpu_peaks_come_from_the_table_by_precision(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert performance.device_peak(torch.device("cuda", 0), "bf16-mixed") == (
        989e12,
        "table: NVIDIA H200, bf16/fp16 dense",
    )
    assert performance.device_peak(torch.device("cuda", 0), "32-true")[0] == 67e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Mystery GPU")
    assert performance.device_peak(torch.device("cuda", 0), "bf16-mixed")[0] is None


@pytest.mark.slow
def test_compiled_model_keeps_its_names_and_outputs():
    config = tiny_config("gpt2")
    _, model = build_model(config.to_dict(), "causal_lm", seed=0)
    model.eval()
    batch = make_batch(model.config, "causal_lm", batch=2, length=12)
    names = list(model.state_dict())
    with torch.no_grad():
        expected = model(**batch).logits
        performance.apply(model, {"compile": True})
        got = model(**batch).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert list(model.state_dict()) == names


def test_fused_adamw_is_an_optim_switch_checked_by_name():
    from factory.training.lightning.optim import check_optim

    assert check_optim({})["fused"] is None and check_optim({"fused": True})["fused"] is True
    with pytest.raises(ConfigError, match=r"optim.fused='yes' is not valid: expected true, false or null"):
        check_optim({"fused": "yes"})
