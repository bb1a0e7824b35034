"""No task head: the backbone's hidden states, served at inference as sentence embeddings.

A model saved without a head (`BertModel`, an all-MiniLM-L6-v2 folder) reads `{"text"}` and gives
`{"embedding"}`: the mean of the last hidden states over the text's tokens, as sentence-transformers pools
all-MiniLM-L6-v2. It trains on no data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from factory.heads.head import Head, register_head


@register_head
class Backbone(Head):
    name: ClassVar[str] = "base"
    auto_class = "AutoModel"
    inputs = ("text",)

    def predict(self, predictor: Any, records: Sequence[Mapping[str, Any]], opts: Mapping[str, Any]) -> list:
        vectors = embed(predictor, [r["text"] for r in records], opts["max_length"], opts["batch_size"])
        return [{"embedding": v} for v in vectors]


@Backbone.prediction
def embed(
    predictor: Any, texts: Sequence[str], max_length: int | None = None, batch_size: int = 16
) -> list[list[float]]:
    """Mean of the last hidden states over each text's tokens (a sentence embedding)."""
    vectors: list[list[float]] = [[]] * len(texts)
    enc = predictor.tokenizer(list(texts), truncation=True, max_length=predictor.limit(max_length))
    for index, batch in predictor.batches_by_length(enc, batch_size):
        with torch.inference_mode():
            out = predictor.model(**batch)
        # Encoder-decoders (BART) embed with their encoder, whose positions are the input tokens.
        hidden = (
            out.encoder_last_hidden_state
            if out.encoder_last_hidden_state is not None
            else out.last_hidden_state
        )
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        for i, vector in zip(index, ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().tolist()):
            vectors[i] = vector
    return vectors
