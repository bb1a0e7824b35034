"""Sequence classification: a text (or a text pair) and a label.

Data: CSV/TSV (header row), JSONL, or JSON (a list of records) with a text column, an optional text-pair
column and a label column. Examples are `{"text", "label"}` (+ `"text_pair"`) with `label` an integer id
into `DataSplits.labels`. When every training label is an integer (`3`, or `"3"` in a CSV), the labels are
ids and stay ids: the names are `"0" .. str(max)`. Otherwise the names are the sorted set of training
labels, so "negative" < "positive" give ids 0 and 1. A validation label that training never saw is an
error naming its file and line, because the model would have no output for it.

Metrics: accuracy and macro-F1 (scikit-learn's convention). Inference: `{"text"[, "text_pair"]}` gives
`{"label", "score"}`, the most probable label and its softmax probability.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from factory.contract.errors import InferenceError
from factory.data import files
from factory.heads.head import DataSplits, Encoded, Head, register_head

logger = logging.getLogger(__name__)

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


# ---- the loss its model classes compute (`model_loss`) -------------------------------------------------
def sequence_classification_loss(logits: torch.Tensor, labels: torch.Tensor, config) -> torch.Tensor:
    """Regression for one label, cross-entropy for integer labels, BCE for multi-hot float labels."""
    problem = config.problem_type
    if problem is None:
        if config.num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        if config.num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
        return F.mse_loss(logits, labels.to(logits.dtype))
    if problem == "single_label_classification":
        return F.cross_entropy(logits.view(-1, config.num_labels).float(), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits.float(), labels.to(torch.float32))


@register_head
class SequenceClassification(Head):
    name: ClassVar[str] = "seqcls"
    model_loss = staticmethod(sequence_classification_loss)
    auto_class = "AutoModelForSequenceClassification"
    metrics = ("val/accuracy", "val/f1", "val/loss")
    formats = ("csv", "tsv", "jsonl", "json")
    data_keys: ClassVar[dict[str, Any]] = {
        "text_column": "text",
        "text_pair_column": None,
        "label_column": "label",
    }
    shipped = ("seqcls/train.csv", "seqcls/validation.csv")
    empty_reason = "it has no examples"
    inputs = ("text",)
    optional_inputs = ("text_pair",)

    def config_values(self, splits: DataSplits | None) -> dict[str, Any]:
        return {"id2label": dict(enumerate(splits.labels))} if splits is not None and splits.labels else {}

    # ---- data -------------------------------------------------------------------------------------
    def read(self, train_file: str, validation_file: str, settings: Mapping[str, Any]) -> DataSplits:
        train_rows = files.read_records(train_file, settings, self)
        validation_rows = files.read_records(validation_file, settings, self)
        for path, rows in ((train_file, train_rows), (validation_file, validation_rows)):
            _check_header(path, rows, settings)
        labels = _label_names(train_rows, train_file, settings["label_column"])
        train = _seqcls_examples(train_rows, train_file, settings, labels)
        validation = _seqcls_examples(validation_rows, validation_file, settings, labels)
        return DataSplits(train, validation, labels)

    def tokenizer_texts(self, splits: DataSplits) -> Iterator[str]:
        for example in splits.train:
            yield example["text"]
            if example.get("text_pair"):
                yield example["text_pair"]

    def encode(
        self, tokenizer: Any, examples: Sequence[dict[str, Any]], settings: Mapping[str, Any], train: bool
    ) -> Encoded:
        texts = [e["text"] for e in examples]
        pairs = [e["text_pair"] for e in examples] if examples and "text_pair" in examples[0] else None
        enc = tokenizer(texts, pairs, truncation=True, max_length=settings["max_length"])
        keys = [k for k in MODEL_INPUTS if k in enc]
        rows = [{**{k: enc[k][i] for k in keys}, "labels": e["label"]} for i, e in enumerate(examples)]
        return Encoded(rows)

    # ---- validation -------------------------------------------------------------------------------
    def validation_step(self, model: Any, batch: Mapping[str, Any], out: Any) -> dict[str, Any]:
        kept = super().validation_step(model, batch, out)
        return {**kept, "preds": out.logits.argmax(-1).cpu(), "labels": batch["labels"].cpu()}

    def validation_metrics(self, outputs: list[dict[str, Any]], data: Any) -> dict[str, float]:
        preds = torch.cat([o["preds"] for o in outputs])
        labels = torch.cat([o["labels"] for o in outputs])
        accuracy, f1 = accuracy_and_macro_f1(preds, labels)
        return {**super().validation_metrics(outputs, data), "val/accuracy": accuracy, "val/f1": f1}

    # ---- inference --------------------------------------------------------------------------------
    def predict(self, predictor: Any, records: Sequence[Mapping[str, Any]], opts: Mapping[str, Any]) -> list:
        pairs = [r.get("text_pair") for r in records]
        if any(p is not None for p in pairs) and not all(isinstance(p, str) for p in pairs):
            raise InferenceError("Give text_pair for every record of a batch or for none.", key="text_pair")
        return classify(
            predictor,
            [r["text"] for r in records],
            pairs if pairs and pairs[0] is not None else None,
            max_length=opts["max_length"],
            batch_size=opts["batch_size"],
        )


@SequenceClassification.prediction
def classify(
    predictor: Any,
    texts: Sequence[str],
    text_pairs: Sequence[str] | None = None,
    max_length: int | None = None,
    batch_size: int = 16,
    names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """`[{"label", "score"}]`: the most probable label (from id2label, or `names` by logit index, for a
    head whose labels are fixed) and its softmax probability."""
    id2label = dict(enumerate(names)) if names is not None else predictor.model.config.id2label or {}
    results: list[dict[str, Any]] = [{}] * len(texts)
    pairs = list(text_pairs) if text_pairs is not None else None
    enc = predictor.tokenizer(list(texts), pairs, truncation=True, max_length=predictor.limit(max_length))
    for index, batch in predictor.batches_by_length(enc, batch_size):
        with torch.inference_mode():
            logits = predictor.model(**batch).logits.float()  # (B, num_labels)
        score, label = logits.softmax(-1).max(-1)
        for i, k, s in zip(index, label.tolist(), score.tolist()):
            results[i] = {"label": id2label.get(k, f"LABEL_{k}"), "score": s}
    return results


def accuracy_and_macro_f1(preds: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Accuracy and macro-F1 over the classes seen in labels or predictions (scikit-learn's convention)."""
    if labels.numel() == 0:
        return float("nan"), float("nan")
    n = int(max(preds.max(), labels.max())) + 1
    confusion = torch.bincount(labels * n + preds, minlength=n * n).reshape(n, n).double()
    tp = confusion.diag()
    predicted, actual = confusion.sum(0), confusion.sum(1)
    seen = (predicted + actual) > 0
    f1 = torch.where(seen, 2 * tp / (predicted + actual).clamp(min=1), torch.zeros_like(tp))
    return float(tp.sum() / labels.numel()), float(f1[seen].mean())


def _check_header(path: str, records: list[tuple[int, dict[str, Any]]], settings: Mapping[str, Any]) -> None:
    """For CSV/TSV, a missing column is a header problem: say so once, at line 1."""
    if files.file_format(path, settings, SequenceClassification) not in ("csv", "tsv"):
        return  # JSON records may differ per line; `_field` names the line
    header = list(records[0][1])
    for key in ("text_column", "text_pair_column", "label_column"):
        column = settings[key]
        if column is not None and column not in header:
            raise files.DataError(
                f"{path}, line 1: no column {column!r} (data.{key}) in the header; the columns are {header}."
            )


_DECIMAL = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+[eE][+-]?\d+|\d+\.\d*[eE][+-]?\d+)")


def _label_key(path: str, line: int, value: Any, column: str) -> int | str:
    """A label as read: an int (JSON ints and digit strings) or a name."""
    if isinstance(value, bool) or value is None or isinstance(value, (float, list, dict)):
        raise files.DataError(
            f"{files.where(path, line)}: column {column!r} holds {value!r}; a label must be a name or an integer id."
        )
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not text:
        raise files.DataError(
            f"{files.where(path, line)}: column {column!r} is empty; every example needs a label."
        )
    try:
        return int(text)
    except ValueError:
        pass
    if _DECIMAL.fullmatch(text):  # "0.5" in a CSV is the number a JSON file would hold, not a name
        raise files.DataError(
            f"{files.where(path, line)}: column {column!r} holds {text!r}; a label must be a name or an "
            "integer id (a number with a fraction or an exponent is neither)."
        )
    return text


def _label_names(records: list[tuple[int, dict[str, Any]]], path: str, column: str) -> list[str]:
    keys = {
        _label_key(path, line, files.field_value(path, line, r, column, "label_column"), column)
        for line, r in records
    }
    if all(isinstance(k, int) for k in keys):
        negative = sorted(k for k in keys if k < 0)
        if negative:
            raise files.DataError(f"{path}: integer labels are ids and must be >= 0; found {negative[0]}.")
        unseen = sorted(set(range(max(keys) + 1)) - keys)
        if unseen:
            logger.warning(
                "%s: label ids %s never occur; the classifier still gets outputs for them.", path, unseen
            )
        return [str(i) for i in range(max(keys) + 1)]
    if len(keys) < 2:
        logger.warning("%s has a single label %s: the classifier has nothing to learn.", path, sorted(keys))
    return sorted(str(k) for k in keys)


def _seqcls_examples(
    records: list[tuple[int, dict[str, Any]]], path: str, settings: Mapping[str, Any], labels: list[str]
) -> list[dict[str, Any]]:
    label_ids = {name: i for i, name in enumerate(labels)}
    text_col, pair_col, label_col = (
        settings["text_column"],
        settings["text_pair_column"],
        settings["label_column"],
    )
    examples = []
    for line, record in records:
        example = {
            "text": files.text_value(
                path, line, files.field_value(path, line, record, text_col, "text_column"), text_col
            )
        }
        if pair_col is not None:
            pair = files.field_value(path, line, record, pair_col, "text_pair_column")
            example["text_pair"] = files.text_value(path, line, pair, pair_col)
        key = str(
            _label_key(
                path, line, files.field_value(path, line, record, label_col, "label_column"), label_col
            )
        )
        if key not in label_ids:
            raise files.DataError(
                f"{files.where(path, line)}: label {key!r} (column {label_col!r}) is not one of the training "
                f"labels {labels}."
            )
        example["label"] = label_ids[key]
        examples.append(example)
    return examples
