"""Causal language modelling: text in, the next token at every position.

Data: plain text (documents separated by blank lines) or JSONL with a text column. Examples are
`{"text"}`; documents are joined with an end-of-text token and packed into blocks of `max_length`. Labels
are the input ids with -100 on padding, not shifted: a model class with `labels_shifted_inside = False`
(BART's, as in HF) gets them shifted here. Metrics: token-weighted validation loss and its perplexity.
Inference: `{"prompt"}` gives `{"generated_text"}` (greedy, sampled or beam search, KV cache; the
options and their rule are `factory.generation.options`'s).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from factory.contract.errors import InferenceError
from factory.data import files
from factory.data.batching import PACKING_KEYS, check_document_positions, pack_documents
from factory.generation import decode
from factory.generation.options import OPTIONS as GENERATION_OPTIONS
from factory.generation.options import from_options, search_kwargs
from factory.heads.head import DataSplits, Encoded, Head, Option, register_head
from factory.models.losses import IGNORE_INDEX, token_cross_entropy
from factory.tokenizers.tokenizer import NO_MAX_LENGTH


# ---- the loss its model classes compute (`model_loss`) -------------------------------------------------
def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, shift: bool = True) -> torch.Tensor:
    """Next-token cross-entropy; `labels` equal to -100 are ignored.

    With `shift` (HF's GPT-2 and BERT convention) `labels[i]` is the token at position i and the model
    predicts it from position i - 1; without it (HF's `BartForCausalLM`) labels are already shifted.
    """
    if shift:
        labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    flat = logits.reshape(-1, logits.size(-1))
    return token_cross_entropy(flat, labels.reshape(-1))


@register_head
class CausalLanguageModeling(Head):
    name: ClassVar[str] = "causal_lm"
    model_loss = staticmethod(causal_lm_loss)
    auto_class = "AutoModelForCausalLM"
    metrics = ("val/loss", "val/perplexity")
    vocab_logits = True
    formats = ("text", "jsonl")
    data_keys: ClassVar[dict[str, Any]] = {"text_column": "text", **PACKING_KEYS}
    shipped = ("causal_lm/train.txt", "causal_lm/validation.txt")
    empty_reason = "its text gives fewer than 2 tokens"
    inputs = ("prompt",)
    options: ClassVar[dict[str, Option]] = {
        "max_new_tokens": Option(int, 20, "causal_lm: tokens to generate at most"),
        **GENERATION_OPTIONS,
    }

    def config_values(self, splits: DataSplits | None) -> dict[str, Any]:
        return {"is_decoder": True}

    def prepare_batch(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        check_document_positions(model, batch)
        if "labels" in batch and not model.labels_shifted_inside:
            # This model's labels are the next tokens (HF's BartForCausalLM): shift them left here.
            batch = {**batch, "labels": F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE_INDEX)}
        return batch

    # ---- data -------------------------------------------------------------------------------------
    def read(self, train_file: str, validation_file: str, settings: Mapping[str, Any]) -> DataSplits:
        return DataSplits(_text_examples(train_file, settings), _text_examples(validation_file, settings))

    def tokenizer_texts(self, splits: DataSplits) -> Iterator[str]:
        for example in splits.train:
            yield example["text"]

    def encode(
        self, tokenizer: Any, examples: Sequence[dict[str, Any]], settings: Mapping[str, Any], train: bool
    ) -> Encoded:
        max_length = settings["max_length"]
        # Documents are joined with an end-of-text token so the model learns where one ends; BERT has no
        # eos, so its [SEP] plays that part.
        separator = document_separator(tokenizer)
        # Documents longer than the model are fine here (packing cuts them); an explicit max_length with
        # truncation off keeps the tokenizer from warning that they are too long, as run_clm does.
        ids = tokenizer(
            [e["text"] for e in examples],
            add_special_tokens=False,
            truncation=False,
            max_length=NO_MAX_LENGTH,
        )["input_ids"]
        if separator is not None:
            ids = [[*doc, separator] for doc in ids]
        # packing=true (the default) joins the documents and cuts full blocks, as run_clm does and as
        # this head always has, so results stay those of earlier runs; the tail becomes one shorter
        # block (padded in collate) rather than being dropped, so a small validation file still gives
        # at least one row. packing=false gives each document its own row(s), padded per batch.
        rows = [
            row
            for row in pack_documents(
                ids,
                max_length,
                bool(settings.get("packing", True)),
                bool(settings.get("packing_document_attention")),
            )
            if len(row["input_ids"]) > 1
        ]
        if "token_type_ids" in getattr(tokenizer, "model_input_names", ()):
            for row in rows:  # one segment: type 0 throughout, as the tokenizer gives for a single text
                row["token_type_ids"] = [0] * len(row["input_ids"])
        return Encoded(rows)

    def finish_batch(self, batch: dict[str, Any]) -> None:
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
        if "position_ids" in batch:
            # Per-document attention: a document's first token is not predicted from the one before
            # (another document), so the loss per token is that of the documents run one by one. The
            # padding mask gives way to the positions, which restart at each document and at the
            # padding: the models keep attention inside each (as transformers, which looks for packed
            # documents only when no attention_mask is given).
            batch["labels"] = batch["labels"].masked_fill(batch["position_ids"] == 0, IGNORE_INDEX)
            del batch["attention_mask"]

    # ---- validation -------------------------------------------------------------------------------
    def validation_step(self, model: Any, batch: Mapping[str, Any], out: Any) -> dict[str, Any]:
        # Weighted by the tokens that have a target, so the epoch's loss is the loss per token.
        labels = batch["labels"][:, 1:] if model.labels_shifted_inside else batch["labels"]
        tokens = int((labels != IGNORE_INDEX).sum())
        return {"loss_sum": float(out.loss) * tokens, "count": tokens}

    def validation_metrics(self, outputs: list[dict[str, Any]], data: Any) -> dict[str, float]:
        loss = super().validation_metrics(outputs, data)["val/loss"]
        return {"val/loss": loss, "val/perplexity": math.exp(min(loss, 50.0))}

    # ---- inference --------------------------------------------------------------------------------
    def check_options(self, opts: Mapping[str, Any]) -> None:
        from_options(opts)

    def predict(self, predictor: Any, records: Sequence[Mapping[str, Any]], opts: Mapping[str, Any]) -> list:
        texts = generate(
            predictor,
            [r["prompt"] for r in records],
            max_new_tokens=opts["max_new_tokens"],
            batch_size=opts["batch_size"],
            **from_options(opts),
        )
        return [{"generated_text": t} for t in texts]


def document_separator(tokenizer: Any) -> int | None:
    """The token that ends a document in training, and so a generation: eos, or [SEP] for BERT."""
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id


def prompt_ids(predictor: Any, prompt: str) -> list[int]:
    """The prompt's ids without template tokens, as training encodes causal-LM text.

    No [CLS]/<s> in front and, above all, no [SEP]/</s> at the end, which would say the text is over.
    An empty prompt starts from the token that separates documents in training (eos, [SEP] for BERT).
    """
    ids = list(predictor.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if not ids:
        tok = predictor.tokenizer
        candidates = (tok.eos_token_id, tok.sep_token_id, tok.bos_token_id, tok.cls_token_id)
        start = next((t for t in candidates if t is not None), None)
        if start is None:
            raise InferenceError(
                "An empty prompt needs an eos or bos token to start from; this model has none."
            )
        ids = [start]
    return ids


@CausalLanguageModeling.prediction
def generate(
    predictor: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 20,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    do_sample: bool | None = None,
    seed: int | None = None,
    batch_size: int = 16,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    early_stopping: bool | str = False,
) -> list[str]:
    """Each prompt followed by its continuation (KV cache; greedy, sampled or beam search, see
    `factory.generation.options` for the rule)."""
    search = search_kwargs(
        do_sample,
        temperature,
        top_k,
        top_p,
        seed,
        num_beams,
        length_penalty,
        no_repeat_ngram_size,
        early_stopping,
    )
    # Stop at the token that ends a document in training.
    tok = predictor.tokenizer
    eos = next(
        (t for t in (predictor.model.config.eos_token_id, document_separator(tok)) if t is not None), None
    )
    rows = [prompt_ids(predictor, p) for p in prompts]
    texts: list[str] = [""] * len(rows)
    for group in _generation_batches(predictor, rows, batch_size):
        batch = predictor.collate({"input_ids": [rows[i] for i in group]}, left=True)
        out = decode.generate(
            predictor.model,
            batch["input_ids"],
            batch["attention_mask"],
            max_new_tokens=max_new_tokens,
            eos_token_id=[] if eos is None else eos,
            pad_token_id=predictor.pad_id(),
            **search,
        )
        width = batch["input_ids"].size(1)
        for i, new_ids in zip(group, out[:, width:].tolist()):
            # Decode prompt + continuation together and cut the decoded prompt off, as HF's pipeline
            # does: a continuation decoded alone can lose the space that joins it to the prompt.
            full = tok.decode(rows[i] + new_ids, skip_special_tokens=True)
            head = tok.decode(rows[i], skip_special_tokens=True)
            texts[i] = prompts[i] + full[len(head) :]
    return texts


def _generation_batches(predictor: Any, rows: list[list[int]], batch_size: int) -> list[list[int]]:
    """Indices of `rows` to generate together.

    A model that takes `position_ids` gets left-padded batches (positions count from each row's first
    real token). One that does not (BART's decoder, as in HF) would see padding shift its positions,
    so only prompts of one length share a batch there: each continuation is then the one its prompt
    gets alone.
    """
    order = list(range(len(rows)))
    if "position_ids" in predictor.model_inputs:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    by_length: dict[int, list[int]] = {}
    for i in order:
        by_length.setdefault(len(rows[i]), []).append(i)
    return [same[i : i + batch_size] for same in by_length.values() for i in range(0, len(same), batch_size)]


# ---- data files -----------------------------------------------------------------------------------------


def _text_examples(path: str, settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    fmt = files.file_format(path, settings, CausalLanguageModeling)
    text = files.read_text(path)
    if fmt == "jsonl":
        column = settings["text_column"]
        examples = []
        for line, record in files.read_jsonl(path, text):
            value = files.text_value(
                path, line, files.field_value(path, line, record, column, "text_column"), column
            )
            if value.strip():
                examples.append({"text": value})
    else:
        examples = [{"text": block} for block in _blocks(text)]
    if not examples:
        raise files.DataError(f"Data file {path} has no text.")
    return examples


def _blocks(text: str) -> list[str]:
    """Documents of a plain text file: runs of non-blank lines."""
    blocks, current = [], []
    for line in text.split("\n"):
        if line.strip():
            current.append(line.strip())
        elif current:
            blocks.append("\n".join(current))
            current = []
    if current:
        blocks.append("\n".join(current))
    return blocks
