"""The one output type every model returns, with Hugging Face's field names."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch


@dataclass
class ModelOutput:
    """Fields are read by name (`out.logits`, `out["logits"]`); unset fields are None. A model whose
    task has outputs of its own (BERT's pretraining) returns a subclass that adds them, in its own file,
    as transformers' `BertForPreTrainingOutput` does."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    past_key_values: Any = None
    encoder_last_hidden_state: torch.Tensor | None = None
    # With output_hidden_states / output_attentions: the embeddings' output then one (B, T, C) per
    # layer; one (B, heads, query, key) probability tensor per layer. An encoder-decoder returns its
    # encoder's and decoder's under the encoder_/decoder_ names, and the decoder's cross-attentions.
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    decoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None

    def __getitem__(self, key: str) -> Any:
        if not isinstance(key, str):
            raise TypeError("ModelOutput is indexed by field name, e.g. out['logits'].")
        value = getattr(self, key, None)
        if value is None:
            raise KeyError(f"{key!r} is not set; set fields: {list(self.keys())}")
        return value

    def __contains__(self, key: str) -> bool:
        return getattr(self, key, None) is not None

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]
