"""Multiple choice: a context, a list of choices, and the index of the right one.

Data: JSONL (or a JSON list) of `{"context": str, "choices": [str, ...], "label": int}` (the column names
are `data.context_column`, `data.choices_column`, `data.label_column`). Examples may have any number of
choices (at least two); a label that is not an index into its example's choices is an error naming file
and line. Each (context, choice) pair is encoded as a text pair truncated to `data.max_length`.

Batches are `(B, C, T)`, as `BertForMultipleChoice` takes them, with C the most choices of any example
in the batch: examples with fewer get padded choices whose attention mask is all zero, and the batch's
`choice_mask` (B, C) says which choices are real. The model class is transformers' and takes no such
mask (its loss scores every choice), so the head computes the loss (`loss`, with
`multiple_choice_loss` below) and the accuracy with the padded choices' logits at -inf: each example's
loss, prediction and gradient are those it has scored on its own choices, and shuffling stays free (no
grouping by choice count).

The data module pads 1-D rows only, so a row carries its choices flattened (C_i choices of T_i tokens
each, `token_type_ids` -1 on in-choice padding) with `num_choices` and `choice_length`, and
`finish_batch` folds the padded batch back into `(B, C, T)`.

Metrics: accuracy (monitored) and loss. Inference: `{"context", "choices"}` gives
`{"label": index, "choice": text, "scores": [softmax probability per choice]}`; method `choose`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from factory.contract.errors import InferenceError
from factory.data import files
from factory.heads.head import DataSplits, Encoded, Head, register_head
from factory.tokenizers.training import pad_token_id

PAD_TYPE = -1  # token type of in-choice padding in a flattened row: the attention mask is where it is not


# ---- the loss its model classes compute (`model_loss`) -------------------------------------------------
def multiple_choice_loss(
    logits: torch.Tensor, labels: torch.Tensor, choice_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy of (B, num_choices) logits against the (B,) index of the right choice.

    `choice_mask` (B, num_choices), true where a choice is real, takes padded choices (a batch of
    examples with fewer choices than its widest) out of the softmax: each example's loss and gradient are
    those it has scored on its own choices. None, as HF, scores every choice.
    """
    logits = logits.float()
    if choice_mask is not None:
        logits = mask_choices(logits, choice_mask)
    return F.cross_entropy(logits, labels.view(-1).to(logits.device))


def mask_choices(logits: torch.Tensor, choice_mask: torch.Tensor) -> torch.Tensor:
    """(B, num_choices) logits with -inf at padded choices: probability 0, gradient 0, never the argmax."""
    return logits.masked_fill(~choice_mask.to(device=logits.device, dtype=torch.bool), float("-inf"))


@register_head
class MultipleChoice(Head):
    name: ClassVar[str] = "multiple_choice"
    model_loss = staticmethod(multiple_choice_loss)
    auto_class = "AutoModelForMultipleChoice"
    metrics = ("val/accuracy", "val/loss")
    formats = ("jsonl", "json")
    data_keys: ClassVar[dict[str, Any]] = {
        "context_column": "context",
        "choices_column": "choices",
        "label_column": "label",
    }
    shipped = ("multiple_choice/train.jsonl", "multiple_choice/validation.jsonl")
    empty_reason = "it has no examples"
    inputs = ("context",)  # and "choices", a list, which `predict` checks (check_record reads strings)

    # ---- model ------------------------------------------------------------------------------------
    def loss(self, out: Any, batch: Mapping[str, Any]) -> torch.Tensor | None:
        if "labels" not in batch:
            return out.loss
        return multiple_choice_loss(out.logits, batch["labels"], batch.get("choice_mask"))

    # ---- data -------------------------------------------------------------------------------------
    def read(self, train_file: str, validation_file: str, settings: Mapping[str, Any]) -> DataSplits:
        return DataSplits(
            _examples(train_file, files.read_records(train_file, settings, self), settings),
            _examples(validation_file, files.read_records(validation_file, settings, self), settings),
        )

    def tokenizer_texts(self, splits: DataSplits) -> Iterator[str]:
        for example in splits.train:
            yield example["context"]
            yield from example["choices"]

    def encode(
        self, tokenizer: Any, examples: Sequence[dict[str, Any]], settings: Mapping[str, Any], train: bool
    ) -> Encoded:
        pad = pad_token_id(tokenizer)
        rows = []
        for e in examples:
            choices = e["choices"]
            enc = tokenizer(
                [e["context"]] * len(choices), choices, truncation=True, max_length=settings["max_length"]
            )
            ids = enc["input_ids"]
            types = enc["token_type_ids"] if "token_type_ids" in enc else [[0] * len(r) for r in ids]
            length = max(len(r) for r in ids)
            rows.append(
                {
                    "input_ids": [t for r in ids for t in r + [pad] * (length - len(r))],
                    "token_type_ids": [t for r in types for t in r + [PAD_TYPE] * (length - len(r))],
                    "num_choices": len(choices),
                    "choice_length": length,
                    "labels": e["label"],
                }
            )
        return Encoded(rows)

    def finish_batch(self, batch: dict[str, Any]) -> None:
        """Fold the flattened rows (B, max C_i * T_i) into (B, C, T) inputs with their attention mask."""
        counts, lengths = batch.pop("num_choices").tolist(), batch.pop("choice_length").tolist()
        b, c, t = len(counts), max(counts), max(lengths)
        # Positions outside a row's choices keep id 0: the all-zero attention mask hides them.
        ids = torch.zeros((b, c, t), dtype=torch.long)
        types = torch.full((b, c, t), PAD_TYPE, dtype=torch.long)
        for i, (n, length) in enumerate(zip(counts, lengths)):
            ids[i, :n, :length] = batch["input_ids"][i, : n * length].view(n, length)
            types[i, :n, :length] = batch["token_type_ids"][i, : n * length].view(n, length)
        batch["input_ids"] = ids
        batch["attention_mask"] = (types != PAD_TYPE).long()
        batch["token_type_ids"] = types.clamp(min=0)
        batch["choice_mask"] = torch.arange(c)[None, :] < torch.tensor(counts)[:, None]  # (B, C)

    # ---- validation -------------------------------------------------------------------------------
    def validation_step(self, model: Any, batch: Mapping[str, Any], out: Any) -> dict[str, Any]:
        kept = super().validation_step(model, batch, out)
        logits = out.logits
        if "choice_mask" in batch:
            logits = mask_choices(logits, batch["choice_mask"])
        return {**kept, "preds": logits.argmax(-1).cpu(), "labels": batch["labels"].cpu()}

    def validation_metrics(self, outputs: list[dict[str, Any]], data: Any) -> dict[str, float]:
        preds = torch.cat([o["preds"] for o in outputs])
        labels = torch.cat([o["labels"] for o in outputs])
        accuracy = float((preds == labels).double().mean()) if labels.numel() else float("nan")
        return {**super().validation_metrics(outputs, data), "val/accuracy": accuracy}

    # ---- inference --------------------------------------------------------------------------------
    def predict(self, predictor: Any, records: Sequence[Mapping[str, Any]], opts: Mapping[str, Any]) -> list:
        for i, record in enumerate(records):
            choices = record.get("choices")
            if not _is_choice_list(choices):
                raise InferenceError(
                    f"Record {i}: 'choices' must be a list of at least one string, got {choices!r}.",
                    key="choices",
                )
        return choose(
            predictor,
            [r["context"] for r in records],
            [r["choices"] for r in records],
            max_length=opts["max_length"],
            batch_size=opts["batch_size"],
        )


@MultipleChoice.prediction
def choose(
    predictor: Any,
    contexts: Sequence[str],
    choices: Sequence[Sequence[str]],
    max_length: int | None = None,
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """`[{"label", "choice", "scores"}]`: the best choice's index and text, and every choice's probability."""
    results = []
    for start in range(0, len(contexts), batch_size):
        chunk = list(zip(contexts[start : start + batch_size], choices[start : start + batch_size]))
        counts = [len(options) for _, options in chunk]
        enc = predictor.tokenizer(
            [context for context, options in chunk for _ in options],
            [choice for _, options in chunk for choice in options],
            truncation=True,
            max_length=predictor.limit(max_length),
        )
        flat = predictor.collate(enc)  # (sum C_i, T)
        # Row i's choices go to [i, :C_i]; the rest stay padding with an all-zero attention mask.
        b, c, t = len(chunk), max(counts), flat["input_ids"].size(1)
        inputs = {k: v.new_zeros((b, c, t)) for k, v in flat.items()}
        present = torch.tensor([[j < n for j in range(c)] for n in counts], device=flat["input_ids"].device)
        for key, value in flat.items():
            inputs[key][present] = value
        with torch.inference_mode():
            logits = predictor.model(**inputs).logits.float()  # (B, C)
        probs = mask_choices(logits, present).softmax(-1)
        for (_, options), n, p in zip(chunk, counts, probs.tolist()):
            best = max(range(n), key=lambda j, p=p: p[j])
            results.append({"label": best, "choice": options[best], "scores": p[:n]})
    return results


def _is_choice_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _examples(
    path: str, records: list[tuple[int, dict[str, Any]]], settings: Mapping[str, Any]
) -> list[dict[str, Any]]:
    ctx_col, choices_col, label_col = (
        settings["context_column"],
        settings["choices_column"],
        settings["label_column"],
    )
    examples = []
    for line, record in records:
        here = files.where(path, line)
        context = files.text_value(
            path, line, files.field_value(path, line, record, ctx_col, "context_column"), ctx_col
        )
        choices = files.field_value(path, line, record, choices_col, "choices_column")
        if not _is_choice_list(choices) or len(choices) < 2:
            raise files.DataError(
                f"{here}: column {choices_col!r} holds {choices!r}; it must be a list of at least two strings."
            )
        label = files.field_value(path, line, record, label_col, "label_column")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
            raise files.DataError(
                f"{here}: label {label!r} (column {label_col!r}) is not an index into its {len(choices)} "
                f"choices; valid: 0 to {len(choices) - 1}."
            )
        examples.append({"context": context, "choices": list(choices), "label": label})
    return examples
