"""Next-sentence prediction (BERT's second pretraining task): does sentence B follow sentence A?

Data: plain text, documents separated by blank lines, one sentence per line (the layout of BERT's
pretraining corpora; the shipped documents are written by
factory/data/datasets/generate_next_sentence.py). Each sentence but a document's last is sentence A of
one pair; B is the sentence after it (label 0, "is_next") or, half of the time, a sentence of another
document (label 1, "not_next"), as BERT's authors drew them. The draws use a generator seeded by
`data.pair_seed`, so a split's pairs are the same in every run and every epoch. A pair is encoded as
`[CLS] A [SEP] B [SEP]` with segment ids 0 and 1, truncated longest-first to `data.max_length`.

Labels follow transformers' `BertForNextSentencePrediction`: 0 when B follows A. Metrics: accuracy and
the loss. Inference: `{"text", "text_pair"}` gives `{"label": "is_next" | "not_next", "score"}`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from factory.data import files
from factory.heads.head import DataSplits, Encoded, Head, register_head
from factory.heads.seqcls import classify

LABELS = ("is_next", "not_next")  # by the model's logit index
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def read_documents(path: str) -> list[list[str]]:
    """The documents of a text file: runs of non-blank lines, each line a sentence."""
    documents: list[list[str]] = []
    sentences: list[str] = []
    for line in [*files.read_text(path).split("\n"), ""]:
        if line.strip():
            sentences.append(line.strip())
        elif sentences:
            documents.append(sentences)
            sentences = []
    if not any(len(d) > 1 for d in documents):
        raise files.DataError(
            f"{path}: no document has two sentences (documents are separated by blank lines, one sentence "
            "per line); sentence pairs need at least one."
        )
    if len(documents) < 2:
        raise files.DataError(f"{path}: a random next sentence comes from another document; it has one.")
    return documents


def sentence_pairs(documents: Sequence[Sequence[str]], seed: int) -> list[dict[str, Any]]:
    """`[{"text", "text_pair", "next_sentence_label"}]`: each sentence with its successor (label 0) or,
    with probability 1/2, with a random sentence of another document (label 1)."""
    rng = random.Random(seed)
    pairs = []
    for d, sentences in enumerate(documents):
        for i in range(len(sentences) - 1):
            if rng.random() < 0.5:
                pairs.append({"text": sentences[i], "text_pair": sentences[i + 1], "next_sentence_label": 0})
                continue
            other = rng.randrange(len(documents) - 1)
            other += other >= d  # any document but this one
            pairs.append(
                {"text": sentences[i], "text_pair": rng.choice(documents[other]), "next_sentence_label": 1}
            )
    return pairs


def read_pairs(train_file: str, validation_file: str, settings: Mapping[str, Any]) -> DataSplits:
    """Both splits' sentence pairs, from `data.pair_seed` (validation's from the next seed)."""
    seed = int(settings["pair_seed"])
    return DataSplits(
        sentence_pairs(read_documents(train_file), seed),
        sentence_pairs(read_documents(validation_file), seed + 1),
    )


def encode_pairs(tokenizer: Any, examples: Sequence[dict[str, Any]], max_length: int) -> list[dict[str, Any]]:
    """`[CLS] A [SEP] B [SEP]` rows with segment ids and each pair's `next_sentence_label`."""
    if "token_type_ids" not in getattr(tokenizer, "model_input_names", ("token_type_ids",)):
        raise files.DataError(
            "Sentence pairs need a tokenizer with segment ids (token_type_ids), as BERT's has; "
            f"{tokenizer.name_or_path or 'this tokenizer'} has none."
        )
    enc = tokenizer(
        [e["text"] for e in examples],
        [e["text_pair"] for e in examples],
        truncation=True,
        max_length=max_length,
    )
    keys = [k for k in MODEL_INPUTS if k in enc]
    return [
        {**{k: enc[k][i] for k in keys}, "next_sentence_label": e["next_sentence_label"]}
        for i, e in enumerate(examples)
    ]


def pair_texts(splits: DataSplits) -> Iterator[str]:
    for example in splits.train:
        yield example["text"]
        yield example["text_pair"]


# ---- the loss its model classes compute (`model_loss`) -------------------------------------------------
def next_sentence_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BERT's next-sentence prediction: (B, 2) logits, labels 0 (B follows A) or 1 (B is random)."""
    return F.cross_entropy(logits.float(), labels.view(-1))


@register_head
class NextSentencePrediction(Head):
    name: ClassVar[str] = "next_sentence"
    model_loss = staticmethod(next_sentence_loss)
    auto_class = "AutoModelForNextSentencePrediction"
    metrics = ("val/accuracy", "val/loss")
    formats = ("text",)
    data_keys: ClassVar[dict[str, Any]] = {"pair_seed": 0}
    shipped = ("next_sentence/train.txt", "next_sentence/validation.txt")
    empty_reason = "it has no sentence pairs"
    inputs = ("text", "text_pair")

    def read(self, train_file: str, validation_file: str, settings: Mapping[str, Any]) -> DataSplits:
        return read_pairs(train_file, validation_file, settings)

    def tokenizer_texts(self, splits: DataSplits) -> Iterator[str]:
        return pair_texts(splits)

    def encode(
        self, tokenizer: Any, examples: Sequence[dict[str, Any]], settings: Mapping[str, Any], train: bool
    ) -> Encoded:
        rows = encode_pairs(tokenizer, examples, settings["max_length"])
        for row in rows:  # BertForNextSentencePrediction takes the label as `labels`
            row["labels"] = row.pop("next_sentence_label")
        return Encoded(rows)

    def validation_step(self, model: Any, batch: Mapping[str, Any], out: Any) -> dict[str, Any]:
        kept = super().validation_step(model, batch, out)
        return {**kept, "correct": int((out.logits.argmax(-1) == batch["labels"]).sum())}

    def validation_metrics(self, outputs: list[dict[str, Any]], data: Any) -> dict[str, float]:
        count = sum(o["count"] for o in outputs)
        accuracy = sum(o["correct"] for o in outputs) / count if count else float("nan")
        return {**super().validation_metrics(outputs, data), "val/accuracy": accuracy}

    def predict(self, predictor: Any, records: Sequence[Mapping[str, Any]], opts: Mapping[str, Any]) -> list:
        return next_sentence(
            predictor,
            [r["text"] for r in records],
            [r["text_pair"] for r in records],
            max_length=opts["max_length"],
            batch_size=opts["batch_size"],
        )


@NextSentencePrediction.prediction
def next_sentence(
    predictor: Any,
    texts: Sequence[str],
    text_pairs: Sequence[str],
    max_length: int | None = None,
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """`[{"label", "score"}]`: "is_next" or "not_next" for each (text, text_pair), with its probability."""
    return classify(predictor, texts, text_pairs, max_length, batch_size, names=LABELS)
