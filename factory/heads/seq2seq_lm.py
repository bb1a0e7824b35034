"""Sequence-to-sequence language modelling (summarisation, translation): a source text in, a target out.

Data: CSV/TSV (header row), JSONL or JSON records with a source and a target column (`data.source_column`,
`data.target_column`). Sources are truncated to `max_length` tokens, targets to `data.max_target_length`;
the labels are the target ids (ending in eos), padded with -100, and the model derives its decoder inputs
from them (shifted right, as HF's `BartForConditionalGeneration`). Metrics: validation loss and the
ROUGE-1/2/L F-measures (Google's `rouge_score`, with stemming) of greedy generations of the validation
sources, at most as long as the batch's longest reference. Inference: `{"text"}` gives
`{"generated_text"}` (encoder once, decoder cache; greedy, sampled or beam search, with the options and
rule of `factory.generation.options`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch

from factory.data import files
from factory.generation import decode
from factory.generation.options import OPTIONS as GENERATION_OPTIONS
from factory.generation.options import from_options, search_kwargs
from factory.heads.head import DataSplits, Encoded, Head, Option, register_head
from factory.models.losses import IGNORE_INDEX, token_cross_entropy

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


# ---- the loss its model classes compute (`model_loss`) -------------------------------------------------
def seq2seq_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, T, vocab) decoder logits against (B, T) target ids; -100 labels are ignored.

    Unshifted, as HF's `BartForConditionalGeneration`: the decoder inputs are the labels shifted right, so
    `logits[:, i]` already predicts `labels[:, i]`.
    """
    return token_cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1))


@register_head
class Seq2SeqLanguageModeling(Head):
    name: ClassVar[str] = "seq2seq_lm"
    model_loss = staticmethod(seq2seq_lm_loss)
    auto_class = "AutoModelForSeq2SeqLM"
    metrics = ("val/rougeL", "val/rouge1", "val/rouge2", "val/loss")
    vocab_logits = True
    formats = ("csv", "tsv", "jsonl", "json")
    data_keys: ClassVar[dict[str, Any]] = {
        "source_column": "source",
        "target_column": "target",
        "max_target_length": 64,
    }
    shipped = ("seq2seq_lm/train.jsonl", "seq2seq_lm/validation.jsonl")
    empty_reason = "it has no examples"
    inputs = ("text",)
    options: ClassVar[dict[str, Option]] = {
        "max_target_tokens": Option(int, 64, "seq2seq_lm: tokens to generate at most"),
        "min_target_tokens": Option(int, 0, "seq2seq_lm: tokens to generate at least before eos"),
        **GENERATION_OPTIONS,
    }

    # ---- data -------------------------------------------------------------------------------------
    def read(self, train_file: str, validation_file: str, settings: Mapping[str, Any]) -> DataSplits:
        return DataSplits(
            _pairs(train_file, settings, self),
            _pairs(validation_file, settings, self),
            train_file=train_file,
            validation_file=validation_file,
        )

    def tokenizer_texts(self, splits: DataSplits) -> Iterator[str]:
        for example in splits.train:
            yield example["source"]
            yield example["target"]

    def encode(
        self, tokenizer: Any, examples: Sequence[dict[str, Any]], settings: Mapping[str, Any], train: bool
    ) -> Encoded:
        max_target = settings["max_target_length"]
        if isinstance(max_target, bool) or not isinstance(max_target, int) or max_target < 2:
            raise files.DataError(
                f"data.max_target_length={max_target!r} is not valid: expected an integer >= 2 (eos included)."
            )
        sources = tokenizer(
            [e["source"] for e in examples], truncation=True, max_length=settings["max_length"]
        )["input_ids"]
        targets = tokenizer([e["target"] for e in examples], truncation=True, max_length=max_target)[
            "input_ids"
        ]
        # Labels are the whole tokenized target, `<s> ... </s>` for BART, as HF's run_summarization makes
        # them: the decoder starts from its start token and learns to say <s> first.
        rows = [{"input_ids": list(s), "labels": list(t)} for s, t in zip(sources, targets)]
        return Encoded(rows)

    def collate(self, rows: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any] | None:
        # Sources and targets have lengths of their own: each is padded to its longest.
        sources, labels = [r["input_ids"] for r in rows], [r["labels"] for r in rows]
        width, target_width = max(map(len, sources)), max(map(len, labels))
        batch = {
            "input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
            "labels": torch.full((len(rows), target_width), IGNORE_INDEX, dtype=torch.long),
        }
        for i, (s, t) in enumerate(zip(sources, labels)):
            batch["input_ids"][i, : len(s)] = torch.tensor(s, dtype=torch.long)
            batch["attention_mask"][i, : len(s)] = 1
            batch["labels"][i, : len(t)] = torch.tensor(t, dtype=torch.long)
        return batch

    # ---- validation -------------------------------------------------------------------------------
    def validation_step(self, model: Any, batch: Mapping[str, Any], out: Any) -> dict[str, Any]:
        # The loss per target token, as training sees it.
        tokens = int((batch["labels"] != IGNORE_INDEX).sum())
        generated = decode.generate_seq2seq(
            model, batch["input_ids"], batch["attention_mask"], max_new_tokens=batch["labels"].size(1)
        )
        return {
            "loss_sum": float(out.loss) * tokens,
            "count": tokens,
            "generated": generated[:, 1:].tolist(),  # without the decoder start token
            "references": [[t for t in row if t != IGNORE_INDEX] for row in batch["labels"].tolist()],
        }

    def validation_metrics(self, outputs: list[dict[str, Any]], data: Any) -> dict[str, float]:
        metrics = super().validation_metrics(outputs, data)
        tokenizer = data.tokenizer
        predictions = [
            tokenizer.decode(ids, skip_special_tokens=True) for o in outputs for ids in o["generated"]
        ]
        references = [
            tokenizer.decode(ids, skip_special_tokens=True) for o in outputs for ids in o["references"]
        ]
        metrics.update({f"val/{k}": v for k, v in rouge(predictions, references).items()})
        return metrics

    # ---- inference --------------------------------------------------------------------------------
    def check_options(self, opts: Mapping[str, Any]) -> None:
        if opts["max_target_tokens"] < 1:
            raise ValueError(f"max_target_tokens={opts['max_target_tokens']!r} is not valid: expected >= 1.")
        if opts["min_target_tokens"] < 0:
            raise ValueError(f"min_target_tokens={opts['min_target_tokens']!r} is not valid: expected >= 0.")
        from_options(opts)

    def predict(self, predictor: Any, records: Sequence[Mapping[str, Any]], opts: Mapping[str, Any]) -> list:
        texts = summarize(
            predictor,
            [r["text"] for r in records],
            max_new_tokens=opts["max_target_tokens"],
            min_new_tokens=opts["min_target_tokens"],
            max_length=opts["max_length"],
            batch_size=opts["batch_size"],
            **from_options(opts),
        )
        return [{"generated_text": t} for t in texts]


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures in [0, 1] (Google's `rouge_score`, Porter stemming)."""
    from rouge_score import rouge_scorer

    if not references:
        return {k: float("nan") for k in ROUGE_TYPES}
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)
        for k in ROUGE_TYPES:
            totals[k] += scores[k].fmeasure
    return {k: v / len(references) for k, v in totals.items()}


@Seq2SeqLanguageModeling.prediction
def summarize(
    predictor: Any,
    texts: Sequence[str],
    max_new_tokens: int = 64,
    min_new_tokens: int = 0,
    max_length: int | None = None,
    batch_size: int = 16,
    **search: Any,
) -> list[str]:
    """The generated target of each source text (encoder once, decoder cache).

    `search` are `factory.generation.search_kwargs`' arguments (do_sample, temperature, top_k,
    top_p, seed, num_beams, length_penalty, no_repeat_ngram_size, early_stopping); none is greedy.
    """
    search = search_kwargs(**search)
    tok = predictor.tokenizer
    results: list[str] = [""] * len(texts)
    enc = tok(list(texts), truncation=True, max_length=predictor.limit(max_length))
    for index, batch in predictor.batches_by_length({"input_ids": enc["input_ids"]}, batch_size):
        ids = decode.generate_seq2seq(
            predictor.model,
            batch["input_ids"],
            batch["attention_mask"],
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            pad_token_id=predictor.pad_id(),
            **search,
        )
        for i, row in zip(index, ids[:, 1:].tolist()):
            results[i] = tok.decode(row, skip_special_tokens=True).strip()
    return results


# ---- data files -----------------------------------------------------------------------------------------


def _pairs(path: str, settings: Mapping[str, Any], head: Head) -> list[dict[str, Any]]:
    records = files.read_records(path, settings, head)
    columns = (("source", "source_column"), ("target", "target_column"))
    if files.file_format(path, settings, head) in ("csv", "tsv"):
        header = list(records[0][1])
        for _, key in columns:
            if settings[key] not in header:
                raise files.DataError(
                    f"{path}, line 1: no column {settings[key]!r} (data.{key}) in the header; the columns are "
                    f"{header}."
                )
    examples = []
    for line, record in records:
        example = {}
        for name, key in columns:
            column = settings[key]
            value = files.text_value(path, line, files.field_value(path, line, record, column, key), column)
            if not value.strip():
                raise files.DataError(f"{files.where(path, line)}: column {column!r} is empty.")
            example[name] = value
        examples.append(example)
    return examples
