"""BERT's pretraining: masked language modelling and next-sentence prediction on one pass.

Data: the next_sentence head's (documents separated by blank lines, one sentence per line; pairs drawn
with `data.pair_seed`, see factory/heads/next_sentence.py), masked as the masked_lm head masks (15% of
the tokens that are neither special nor padding, 80/10/10, drawn per batch from `data.mask_seed`, the
epoch, the batch index and the rank: see factory/heads/masked_lm.py). The loss is transformers'
`BertForPreTraining` loss: the masked-token loss plus the next-sentence loss.

Metrics: the loss, the masked-token accuracy and the next-sentence accuracy. A pretrained model is used
through the heads it feeds (`init.name_or_path=<run>/model` with head=masked_lm, seqcls, ...), so this
head makes no predictions of its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch

from factory.heads.head import BatchPosition, DataSplits, Encoded, Head, register_head
from factory.heads.masked_lm import Masking, draw_masks, masked_lm_loss, masking_for
from factory.heads.next_sentence import encode_pairs, next_sentence_loss, pair_texts, read_pairs
from factory.models.losses import IGNORE_INDEX


# ---- the loss its model classes compute (`model_loss`) -------------------------------------------------
def pretraining_loss(
    prediction_logits: torch.Tensor,
    seq_relationship_logits: torch.Tensor,
    labels: torch.Tensor,
    next_sentence_label: torch.Tensor,
) -> torch.Tensor:
    """BERT's pretraining loss, as HF sums it: the masked-token loss (mean over targets) plus the
    next-sentence loss (mean over pairs)."""
    return masked_lm_loss(prediction_logits, labels) + next_sentence_loss(
        seq_relationship_logits, next_sentence_label
    )


@register_head
class Pretraining(Head):
    name: ClassVar[str] = "pretraining"
    model_loss = staticmethod(pretraining_loss)
    auto_class = "AutoModelForPreTraining"
    metrics = ("val/loss", "val/mlm_accuracy", "val/nsp_accuracy")
    vocab_logits = True
    formats = ("text",)
    data_keys: ClassVar[dict[str, Any]] = {
        "pair_seed": 0,
        "mlm_probability": 0.15,
        "whole_word_masking": False,
        "mask_seed": 42,
    }
    shipped = ("next_sentence/train.txt", "next_sentence/validation.txt")
    empty_reason = "it has no sentence pairs"

    def read(self, train_file: str, validation_file: str, settings: Mapping[str, Any]) -> DataSplits:
        return read_pairs(train_file, validation_file, settings)

    def tokenizer_texts(self, splits: DataSplits) -> Iterator[str]:
        return pair_texts(splits)

    def encode(
        self, tokenizer: Any, examples: Sequence[dict[str, Any]], settings: Mapping[str, Any], train: bool
    ) -> Encoded:
        masking_for(tokenizer, settings, train, head=self.name)  # a bad setting fails before encoding
        return Encoded(encode_pairs(tokenizer, examples, settings["max_length"]))

    def draw_state(self, tokenizer: Any, settings: Mapping[str, Any], train: bool) -> Masking:
        return masking_for(tokenizer, settings, train, head=self.name)

    def draw_batch(self, batch: dict[str, Any], where: BatchPosition, state: Masking | None) -> None:
        draw_masks(batch, state, where)

    def validation_step(self, model: Any, batch: Mapping[str, Any], out: Any) -> dict[str, Any]:
        kept = super().validation_step(model, batch, out)
        labels = batch["labels"]
        target = labels != IGNORE_INDEX
        predicted = out.prediction_logits.argmax(-1)
        nsp = out.seq_relationship_logits.argmax(-1) == batch["next_sentence_label"]
        return {
            **kept,
            "tokens": int(target.sum()),
            "mlm_correct": int((predicted[target] == labels[target]).sum()),
            "nsp_correct": int(nsp.sum()),
        }

    def validation_metrics(self, outputs: list[dict[str, Any]], data: Any) -> dict[str, float]:
        pairs = sum(o["count"] for o in outputs)
        tokens = sum(o["tokens"] for o in outputs)
        return {
            **super().validation_metrics(outputs, data),
            "val/mlm_accuracy": sum(o["mlm_correct"] for o in outputs) / max(tokens, 1),
            "val/nsp_accuracy": sum(o["nsp_correct"] for o in outputs) / max(pairs, 1),
        }
