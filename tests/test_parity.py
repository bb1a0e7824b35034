# pytest tests/test_parity.py
"""Every registered (architecture, head) against the `transformers` class of the same name, both ways.

Each model is tiny, with every weight moved off its init (a LayerNorm left at 1/0 or a bias at 0 would hide
a mapping error), and goes through the real loader and saver: transformers' save_pretrained into our
from_pretrained, and our save_pretrained into transformers' from_pretrained. Every tensor of the output,
the loss included, must agree.
"""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch
import transformers
from torch.testing import assert_close

from factory import registered_models
from factory.models.outputs import ModelOutput
from tests.helpers import make_batch, tiny_config

TOL = dict(atol=1e-5, rtol=1e-5)
# One attention implementation for every transformers model, so no test depends on its dispatch.
ATTN = "eager"


@torch.no_grad()
def off_init(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Add seeded noise to every parameter (tied ones once), so no weight keeps its init value."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def hf_class(cls: type) -> type:
    hf = getattr(transformers, cls.__name__, None)
    if hf is None:
        pytest.skip(f"transformers has no {cls.__name__} to compare with")
    return hf


def hf_config(config) -> transformers.PretrainedConfig:
    values = {k: v for k, v in config.to_dict().items() if k != "model_type"}
    hf = transformers.AutoConfig.for_model(config.model_type, **values)
    hf._attn_implementation = ATTN
    return hf


def assert_same_outputs(ours: torch.nn.Module, theirs: torch.nn.Module, batch: dict) -> None:
    """Every tensor field both outputs have agrees; every one of HF's that our output type has is set."""
    with torch.no_grad():
        a, b = ours(**batch), theirs(**batch)
    ours_set = {k for k, v in a.items() if isinstance(v, torch.Tensor)}
    theirs_set = {k for k, v in b.items() if isinstance(v, torch.Tensor)}
    # Fields only we return (BART's decoder states beside a classifier's logits) have no HF twin here.
    assert not (theirs_set & {f.name for f in fields(ModelOutput)}) - ours_set, (ours_set, theirs_set)
    for name in sorted(ours_set & theirs_set):
        assert_close(a[name], b[name], **TOL, msg=lambda m, name=name: f"{name}: {m}")
    if "labels" in batch or "start_positions" in batch:
        assert "loss" in ours_set


@pytest.mark.parametrize(
    "model_type, head, cls", registered_models(), ids=lambda v: getattr(v, "__name__", v)
)
def test_transformers_checkpoint_loads_with_equal_outputs(tmp_path, model_type, head, cls):
    hf_cls = hf_class(cls)
    config = tiny_config(model_type)
    torch.manual_seed(0)
    theirs = off_init(hf_cls(hf_config(config)), seed=1)
    theirs.save_pretrained(tmp_path)
    ours, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert_same_outputs(ours.eval(), theirs, make_batch(config, head))


@pytest.mark.parametrize(
    "model_type, head, cls", registered_models(), ids=lambda v: getattr(v, "__name__", v)
)
def test_what_we_save_loads_in_transformers_with_equal_outputs(tmp_path, model_type, head, cls):
    hf_cls = hf_class(cls)
    config = tiny_config(model_type)
    torch.manual_seed(0)
    ours = off_init(cls(config), seed=2)
    ours.save_pretrained(tmp_path)
    theirs, info = hf_cls.from_pretrained(tmp_path, attn_implementation=ATTN, output_loading_info=True)
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    assert_same_outputs(ours, theirs.eval(), make_batch(config, head))
