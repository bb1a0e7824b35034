# pytest tests/test_gradients.py
"""Training mode against `transformers`: the same loss and the same gradient for every parameter, so the
in-place residual adds and activations of the forward pass never corrupt what autograd needs."""

from __future__ import annotations

import pytest
import torch
import transformers

from factory import registry
from tests.helpers import make_batch, tiny_config

HF_AUTO = {
    "seqcls": transformers.AutoModelForSequenceClassification,
    "qa": transformers.AutoModelForQuestionAnswering,
    "causal_lm": transformers.AutoModelForCausalLM,
}
# Dropout off (its masks are drawn differently on each side), training mode on: layerdrop and the
# dropout modules still run their training branches.
NO_DROPOUT = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "summary_first_dropout",
    "dropout",
    "attention_dropout",
    "activation_dropout",
    "classifier_dropout",
)


@pytest.mark.parametrize("head", sorted(HF_AUTO))
@pytest.mark.parametrize("model_type", ["bert", "gpt2", "bart"])
def test_training_gradients_match_hf(tmp_path, model_type, head):
    fields = registry.config_class(model_type).field_names()
    config = tiny_config(model_type, **{k: 0.0 for k in NO_DROPOUT if k in fields})
    if model_type == "bert" and head == "causal_lm":
        config.is_decoder = True
    torch.manual_seed(0)
    ours = registry.model_class(model_type, head)(config)
    with torch.no_grad():  # off the init (zero biases, unit LayerNorms) so that no swapped grad hides
        g = torch.Generator().manual_seed(1)
        for p in ours.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    ours.save_pretrained(tmp_path)
    theirs = HF_AUTO[head].from_pretrained(tmp_path, dtype=torch.float32)
    ours.train(), theirs.train()
    batch = make_batch(config, head)

    loss_ours, loss_theirs = ours(**batch).loss, theirs(**batch).loss
    loss_ours.backward()
    loss_theirs.backward()

    torch.testing.assert_close(loss_ours, loss_theirs, atol=1e-5, rtol=1e-5)
    grads = {n: p.grad for n, p in theirs.named_parameters()}
    checked = 0
    for name, p in ours.named_parameters():
        if name not in grads:
            continue
        assert (p.grad is None) == (grads[name] is None), name  # BART causal LM: no cross-attention
        if p.grad is not None:
            theirs_grad = grads[name]
            if model_type == "gpt2" and name.startswith("transformer.h.") and p.dim() == 2:
                theirs_grad = theirs_grad.T  # HF's Conv1D stores (in, out); ours is nn.Linear
            torch.testing.assert_close(p.grad, theirs_grad, atol=1e-5, rtol=1e-4, msg=name)
        checked += 1
    assert checked >= len(list(ours.parameters())) - 2, "most parameters must be compared by name"
