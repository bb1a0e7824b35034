# pytest tests/test_losses.py
"""The causal-LM loss (factory/heads/causal_lm.py, over the kernel of factory.models.losses) against torch's cross-entropy: value and gradient, ignored labels, dtypes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from factory.heads.causal_lm import causal_lm_loss
from factory.models.losses import IGNORE_INDEX, _TokenCrossEntropy


def reference(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """HF's ForCausalLMLoss: upcast, shift by slicing, mean over the labels that are not ignored."""
    logits = logits.float()
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX)


@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("chunk", [1 << 22, 7 * 37], ids=["one_chunk", "row_chunks"])
def test_value_and_gradient_equal_torch_cross_entropy(monkeypatch, shift, chunk):
    monkeypatch.setattr(_TokenCrossEntropy, "CHUNK_ELEMENTS", chunk)  # 7 rows of 37 per chunk
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 11, 37, generator=g) * 4).requires_grad_()
    labels = torch.randint(0, 37, (3, 11), generator=g)
    labels[1, 4:] = IGNORE_INDEX
    before = logits.detach().clone()
    ours = causal_lm_loss(logits, labels, shift=shift)
    (grad_ours,) = torch.autograd.grad(ours * 3, logits)
    theirs = reference(logits, labels, shift)
    (grad_theirs,) = torch.autograd.grad(theirs * 3, logits)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad_ours, grad_theirs, atol=1e-7, rtol=1e-5)
    assert torch.equal(logits.detach(), before), "the logits the caller holds are left alone"


def test_half_precision_logits_are_reduced_in_fp32():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(2, 9, 50, generator=g) * 8).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, 50, (2, 9), generator=g)
    ours = causal_lm_loss(logits, labels)
    (grad_ours,) = torch.autograd.grad(ours, logits)
    theirs = reference(logits, labels, True)
    (grad_theirs,) = torch.autograd.grad(theirs, logits)
    assert ours.dtype == torch.float32 and grad_ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_ours, grad_theirs, atol=1e-3, rtol=1e-2)


def test_every_label_ignored_is_nan_as_torch():
    logits = torch.randn(1, 4, 5, requires_grad=True)
    labels = torch.full((1, 4), IGNORE_INDEX)
    assert torch.isnan(causal_lm_loss(logits, labels)) and torch.isnan(reference(logits, labels, True))
