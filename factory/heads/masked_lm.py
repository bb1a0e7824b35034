"""Masked language modelling (BERT's pretraining objective): predict the tokens hidden in the input.

Data: plain text (documents separated by blank lines) or JSONL with a text column, as causal_lm reads it.
The shipped texts are templated one-sentence documents (factory/data/datasets/generate_masked_lm.py).
Each document is encoded with the tokenizer's template (`[CLS] text [SEP]`), the documents are joined
and packed into blocks of `max_length`, as HF's run_mlm groups texts.

Masking is dynamic, per batch (HF's DataCollatorForLanguageModeling): of the tokens that are neither
special nor padding, `data.mlm_probability` (0.15) become targets; of those, 80% are replaced by the mask
token, 10% by a random token and 10% left as they are; labels are -100 elsewhere. With
`data.whole_word_masking` a word is chosen as a whole: a WordPiece token starting with "##" is chosen
with the token that starts its word.

A batch's masks are drawn in `draw_batch`, in the training process, from a generator seeded by
`(data.mask_seed, epoch, batch index, rank)`: every epoch masks afresh, a rerun with the same seed masks
the same, and so does a resumed run, whose epoch and batch index continue where they stopped (the collate
runs in loader workers that know neither). The draws are made on the CPU, so a run masks the same on any
device. Validation masks leave the epoch out: they are the same every epoch, so validation metrics
compare across epochs. `data.mask_seed` follows the run's seed (`${init.seed}` in
conf/head/masked_lm.yaml).

Metrics: masked-token loss (`val/loss`, per masked token), its perplexity and masked-token accuracy.
Inference: `{"text"}` holding the mask token gives HF's fill-mask pipeline output: for each mask the
`fill_top_k` most likely tokens as `{"score", "token", "token_str", "sequence"}` (a list of them for one
mask, a list of such lists for several).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from factory import registry
from factory.config import ConfigError
from factory.contract.errors import InferenceError
from factory.data import files
from factory.data.batching import PACKING_KEYS, check_document_positions, pack_documents
from factory.heads.head import BatchPosition, DataSplits, Encoded, Head, Option, register_head
from factory.models.losses import IGNORE_INDEX, token_cross_entropy
from factory.tokenizers.tokenizer import NO_MAX_LENGTH

CONTINUATION = "##"  # WordPiece's prefix of a token that continues a word


@dataclass(frozen=True)
class Masking:
    """How one encoded split's batches are masked.

    Attributes:
        probability: the share of maskable tokens that become targets.
        mask_id: the mask token's id; vocab_size: random replacements are drawn below it.
        special_ids: ids never masked (besides padding, which the attention mask shows).
        seed: the run's mask seed.
        varying: training (masks drawn afresh every epoch) or validation (the same every epoch).
        continuation: (vocab,) bool, True for "##" pieces: whole-word masking; None: per token.
    """

    probability: float
    mask_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    seed: int
    varying: bool
    continuation: torch.Tensor | None = None


def mask_tokens(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, masking: Masking, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(masked input ids, labels)` for a (B, T) batch; labels are -100 where nothing is to predict.

    Every draw covers the whole batch, whatever is chosen, so a batch's masks depend only on its ids and
    the generator. At least one token is chosen when any is maskable: a loss over no target is 0/0.
    """
    ids = input_ids.clone()
    special = torch.isin(ids, torch.tensor(masking.special_ids, dtype=ids.dtype))
    maskable = (attention_mask == 1) & ~special
    draw = torch.rand(ids.shape, generator=generator)
    if masking.continuation is not None:
        # Each token takes the draw of the token that starts its word: a word is chosen whole.
        positions = torch.arange(ids.size(1)).expand_as(ids)
        piece = masking.continuation[ids] & maskable
        start = torch.where(piece, 0, positions).cummax(dim=1).values
        draw = draw.gather(1, start)
    chosen = maskable & (draw < masking.probability)
    if not chosen.any() and maskable.any():
        chosen = maskable & (draw <= draw[maskable].min())
    labels = input_ids.masked_fill(~chosen, IGNORE_INDEX)
    action = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(masking.vocab_size, ids.shape, generator=generator, dtype=ids.dtype)
    ids = torch.where(chosen & (action < 0.8), masking.mask_id, ids)  # 80%: the mask token
    ids = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, ids)  # 10%: random; 10% kept
    return ids, labels


def batch_seed(seed: int, where: BatchPosition, varying: bool = True) -> int:
    """A generator seed from the run's mask seed and where the batch stands (its epoch only if `varying`)."""
    epoch = where.epoch if varying else -1
    digest = hashlib.blake2b(f"{seed}:{epoch}:{where.index}:{where.rank}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") & (2**63 - 1)


# ---- the loss its model classes compute (`model_loss`) -------------------------------------------------
def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy at the masked positions: `labels[i]` is the token at position i, -100 elsewhere.

    Unshifted (each position predicts itself), as HF's `BertForMaskedLM`; the same memory-lean kernel
    as the causal loss, since the logits span the vocabulary at every position.
    """
    return token_cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1))


@register_head
class MaskedLanguageModeling(Head):
    name: ClassVar[str] = "masked_lm"
    model_loss = staticmethod(masked_lm_loss)
    auto_class = "AutoModelForMaskedLM"
    metrics = ("val/loss", "val/perplexity", "val/accuracy")
    vocab_logits = True
    formats = ("text", "jsonl")
    data_keys: ClassVar[dict[str, Any]] = {
        "text_column": "text",
        "mlm_probability": 0.15,
        "whole_word_masking": False,
        "mask_seed": 42,
        **PACKING_KEYS,
    }
    shipped = ("masked_lm/train.txt", "masked_lm/validation.txt")
    empty_reason = "its text gives no block with a token to mask"
    inputs = ("text",)
    options: ClassVar[dict[str, Option]] = {
        "fill_top_k": Option(int, 5, "masked_lm: fills to give for each mask token"),
    }

    # ---- data -------------------------------------------------------------------------------------
    def read(self, train_file: str, validation_file: str, settings: Mapping[str, Any]) -> DataSplits:
        return DataSplits(_text_examples(train_file, settings), _text_examples(validation_file, settings))

    def tokenizer_texts(self, splits: DataSplits) -> Iterator[str]:
        for example in splits.train:
            yield example["text"]

    def encode(
        self, tokenizer: Any, examples: Sequence[dict[str, Any]], settings: Mapping[str, Any], train: bool
    ) -> Encoded:
        special = set(masking_for(tokenizer, settings, train).special_ids)
        max_length = settings["max_length"]
        # Each document as the template makes it ([CLS] ... [SEP]); packing cuts long ones, so no
        # truncation (an explicit max_length keeps the tokenizer from warning, as in causal_lm).
        ids = tokenizer([e["text"] for e in examples], truncation=False, max_length=NO_MAX_LENGTH)[
            "input_ids"
        ]
        # packing=true (the default) joins the documents and cuts full blocks, as run_mlm and this head
        # always have; packing=false: a document per row, padded per batch.
        rows = pack_documents(
            ids,
            max_length,
            bool(settings.get("packing", True)),
            bool(settings.get("packing_document_attention")),
        )
        rows = [r for r in rows if any(t not in special for t in r["input_ids"])]
        if "token_type_ids" in getattr(tokenizer, "model_input_names", ()):
            for row in rows:  # one segment per block
                row["token_type_ids"] = [0] * len(row["input_ids"])
        return Encoded(rows)

    def finish_batch(self, batch: dict[str, Any]) -> None:
        if "position_ids" in batch:  # per-document attention: the positions replace the padding mask
            del batch["attention_mask"]

    def prepare_batch(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        check_document_positions(model, batch)
        return batch

    def draw_state(self, tokenizer: Any, settings: Mapping[str, Any], train: bool) -> Masking:
        return masking_for(tokenizer, settings, train)

    def draw_batch(self, batch: dict[str, Any], where: BatchPosition, state: Masking | None) -> None:
        draw_masks(batch, state, where)

    # ---- validation -------------------------------------------------------------------------------
    def validation_step(self, model: Any, batch: Mapping[str, Any], out: Any) -> dict[str, Any]:
        # Weighted by the masked tokens, so the epoch's loss is the loss per masked token.
        labels = batch["labels"]
        target = labels != IGNORE_INDEX
        tokens = int(target.sum())
        correct = int((out.logits.argmax(-1)[target] == labels[target]).sum())
        loss_sum = float(out.loss) * tokens if tokens else 0.0
        return {"loss_sum": loss_sum, "count": tokens, "correct": correct}

    def validation_metrics(self, outputs: list[dict[str, Any]], data: Any) -> dict[str, float]:
        loss = super().validation_metrics(outputs, data)["val/loss"]
        count = sum(o["count"] for o in outputs)
        return {
            "val/loss": loss,
            "val/perplexity": math.exp(min(loss, 50.0)),
            "val/accuracy": sum(o["correct"] for o in outputs) / max(count, 1),
        }

    # ---- inference --------------------------------------------------------------------------------
    def check_options(self, opts: Mapping[str, Any]) -> None:
        top_k = opts.get("fill_top_k")
        if top_k is not None and top_k < 1:
            raise ValueError(f"fill_top_k={top_k!r} is not valid: expected a positive integer.")

    def predict(self, predictor: Any, records: Sequence[Mapping[str, Any]], opts: Mapping[str, Any]) -> list:
        return fill_mask(
            predictor,
            [r["text"] for r in records],
            top_k=opts["fill_top_k"],
            max_length=opts["max_length"],
            batch_size=opts["batch_size"],
        )


def draw_masks(batch: dict[str, Any], masking: Masking | None, where: BatchPosition) -> None:
    """Mask `batch` in place as its split's `masking` asks, adding `labels` (nothing without one)."""
    if masking is None:
        return
    generator = torch.Generator().manual_seed(batch_seed(masking.seed, where, masking.varying))
    ids = batch["input_ids"]
    # A packed batch with per-document positions has no padding mask (the positions keep documents and
    # padding apart); padding is a special token, never masked, so every position may be looked at.
    attention = batch.get("attention_mask", torch.ones_like(ids))
    masked, labels = mask_tokens(ids.cpu(), attention.cpu(), masking, generator)
    batch["input_ids"], batch["labels"] = masked.to(ids.device), labels.to(ids.device)


def masking_for(tokenizer: Any, settings: Mapping[str, Any], train: bool, head: str = "masked_lm") -> Masking:
    """The masking `settings` ask for with `tokenizer`.

    Raises:
        ConfigError: a tokenizer with no mask token (GPT-2's), a probability outside (0, 1), or whole-word
            masking with a tokenizer that has no "##" pieces (not WordPiece).
    """
    if tokenizer.mask_token_id is None:
        having = sorted(t for t, h, _ in registry.registered_models() if h == head)
        raise ConfigError(
            f"head={head} needs a tokenizer with a mask token; the tokenizer "
            f"{tokenizer.name_or_path or ''} has none (its special tokens: {tokenizer.all_special_tokens}; "
            f"GPT-2's has none). Architectures with a {head} model: {having}.",
            key="head",
        )
    p = settings["mlm_probability"]
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1:
        raise ConfigError(
            f"data.mlm_probability={p!r} is not valid: expected a number between 0 and 1 (BERT's 0.15).",
            key="mlm_probability",
        )
    continuation = None
    if settings["whole_word_masking"]:
        vocab = tokenizer.get_vocab()
        continuation = torch.zeros(max(len(tokenizer), max(vocab.values()) + 1), dtype=torch.bool)
        for token, i in vocab.items():
            continuation[i] = token.startswith(CONTINUATION)
        if not continuation.any():
            raise ConfigError(
                f"data.whole_word_masking=true needs a WordPiece tokenizer (whose word pieces start with "
                f"{CONTINUATION!r}); {tokenizer.name_or_path or 'this tokenizer'} has none.",
                key="whole_word_masking",
            )
    return Masking(
        probability=float(p),
        mask_id=tokenizer.mask_token_id,
        vocab_size=len(tokenizer),
        special_ids=tuple(sorted(set(tokenizer.all_special_ids) - {None})),
        seed=int(settings["mask_seed"]),
        varying=train,
        continuation=continuation,
    )


@MaskedLanguageModeling.prediction
def fill_mask(
    predictor: Any,
    texts: Sequence[str],
    top_k: int = 5,
    max_length: int | None = None,
    batch_size: int = 16,
) -> list[list]:
    """HF's fill-mask pipeline: for each text, the `top_k` fills of each mask token.

    One mask gives `[{"score", "token", "token_str", "sequence"}]`, best first; several give one such
    list per mask, in order (each filled with the others left masked, as the pipeline does).
    """
    tok = predictor.tokenizer
    mask_id = tok.mask_token_id
    if mask_id is None:
        raise InferenceError(f"{predictor.path or 'this model'}'s tokenizer has no mask token.", key="model")
    results: list[list] = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        enc = tok(chunk, truncation=True, max_length=predictor.limit(max_length))
        for text, ids in zip(chunk, enc["input_ids"]):
            if mask_id not in ids:
                raise InferenceError(
                    f"No mask token ({tok.mask_token}) in {text!r} (within its first {len(ids)} tokens).",
                    key="text",
                )
        with torch.inference_mode():
            logits = predictor.model(**predictor.collate(enc)).logits.float()  # (B, T, vocab)
        for row, ids in enumerate(enc["input_ids"]):
            positions = [i for i, t in enumerate(ids) if t == mask_id]
            fills = [_fills(tok, ids, i, logits[row, i], top_k, len(positions) == 1) for i in positions]
            results.append(fills[0] if len(fills) == 1 else fills)
    return results


def _fills(tok: Any, ids: list[int], position: int, logits: torch.Tensor, top_k: int, single: bool) -> list:
    probs = logits.softmax(-1)
    scores, tokens = probs.topk(min(top_k, probs.numel()))
    out = []
    for score, token in zip(scores.tolist(), tokens.tolist()):
        filled = list(ids)
        filled[position] = token
        out.append(
            {
                "score": score,
                "token": token,
                "token_str": tok.decode([token]),
                # As the pipeline: special tokens are dropped when there is one mask, kept with several.
                "sequence": tok.decode(filled, skip_special_tokens=single),
            }
        )
    return out


# ---- data files -----------------------------------------------------------------------------------------


def _text_examples(path: str, settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    fmt = files.file_format(path, settings, MaskedLanguageModeling)
    text = files.read_text(path)
    examples = []
    if fmt == "jsonl":
        column = settings["text_column"]
        for line, record in files.read_jsonl(path, text):
            value = files.text_value(
                path, line, files.field_value(path, line, record, column, "text_column"), column
            )
            if value.strip():
                examples.append({"text": value})
    else:  # documents: runs of non-blank lines
        document: list[str] = []
        for line in [*text.split("\n"), ""]:
            if line.strip():
                document.append(line.strip())
            elif document:
                examples.append({"text": "\n".join(document)})
                document = []
    if not examples:
        raise files.DataError(f"Data file {path} has no text.")
    return examples
