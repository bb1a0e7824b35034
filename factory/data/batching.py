"""Batches with little padding: lengths rounded to a multiple, rows of similar length together, and
documents packed into full rows.

- `padded_length`: a batch is as long as its longest row, rounded up to `data.pad_to_multiple_of` (tensor
  cores like multiples of 8) and never over `data.max_length`.
- `LengthGroupedSampler` (`data.group_by_length=true`): HF's length-grouped sampler. Each epoch shuffles
  the rows, cuts the order into megabatches of 50 batches, sorts each megabatch by length and cuts it into
  batches; the batches are then shuffled, the longest one first (a run that runs out of memory does so at
  its first step). All draws come from one generator, so `ResumableDataLoader` repeats an epoch from the
  generator's state and skips the batches already given out: a resumed run sees the same batches.
- `pack_documents`: token lists cut and joined into rows of `max_length`, optionally with per-document
  `position_ids` (restarting at 0), from which the models build block-diagonal attention
  (`factory.models.layers.document_attention_mask`), as transformers does for packed sequences.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DistributedSampler

from factory.config import ConfigError

MEGABATCH_BATCHES = 50  # batches per megabatch, HF's `megabatch_mult`


def padded_length(longest: int, multiple: int | None, max_length: int) -> int:
    """`longest` rounded up to a multiple of `multiple` (None or 1: as is), never over `max_length` (a row
    longer than that, which no head makes, keeps its own length)."""
    if not multiple or multiple <= 1:
        return longest
    rounded = -(-longest // multiple) * multiple
    return max(longest, min(rounded, max_length))


def check_batching(data_cfg: dict[str, Any]) -> None:
    """Raise `ConfigError` naming the key for a bad `pad_to_multiple_of`, `group_by_length` or
    `packing*` value."""
    multiple = data_cfg.get("pad_to_multiple_of")
    if multiple is not None and (isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1):
        raise ConfigError(
            f"data.pad_to_multiple_of={multiple!r} is not valid: expected a positive integer (8 suits "
            "tensor cores; 1 or null: pad to the longest row only).",
            key="pad_to_multiple_of",
        )
    for key in ("group_by_length", "packing", "packing_document_attention"):
        value = data_cfg.get(key)
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"data.{key}={value!r} is not valid: expected true or false.", key=key)


class LengthGroupedSampler(DistributedSampler):
    """Row indices in an order whose consecutive `batch_size` chunks hold rows of similar length.

    A `DistributedSampler`, so that Lightning keeps it under DDP instead of wrapping it in one of its own
    (which reshuffles the rows and loses the grouping): every rank draws the same batches from the same
    seeded generator and takes every `num_replicas`-th, starting at its `rank`. With several ranks a short
    last batch is filled up with rows from the start of the epoch's order and the batches are repeated
    from the start until each rank has as many, as `DistributedSampler` repeats rows (ranks that stepped
    unequally would wait for each other forever).

    Args:
        lengths: each row's length (tokens).
        batch_size: rows per batch (the DataLoader's); every chunk but the last is a full batch, and the
            short one, if any, comes last so the DataLoader's chunks are these batches.
        generator: every draw comes from it (`ResumableDataLoader` saves and restores its state).
        megabatch_batches: batches per megabatch: more groups lengths more tightly, fewer keeps the
            order more random.
        num_replicas, rank: the data-parallel ranks and this one's (default: one process).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        generator: torch.Generator | None = None,
        megabatch_batches: int = MEGABATCH_BATCHES,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        # Not DistributedSampler.__init__: it would ask torch.distributed for the ranks and keep a dataset.
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank={rank} is not valid for num_replicas={num_replicas}.")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.generator = generator
        self.megabatch = batch_size * megabatch_batches
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.shuffle, self.drop_last, self.seed = 0, True, False, 0  # DistributedSampler's

    def __len__(self) -> int:
        if self.num_replicas == 1:
            return len(self.lengths)
        batches = -(-len(self.lengths) // self.batch_size)
        return -(-batches // self.num_replicas) * self.batch_size

    def batches(self) -> list[list[int]]:
        """One epoch's batches for this rank, drawn from the generator."""
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        batches: list[list[int]] = []
        for start in range(0, len(order), self.megabatch):
            mega = sorted(order[start : start + self.megabatch], key=lambda i: -self.lengths[i])
            batches.extend(mega[i : i + self.batch_size] for i in range(0, len(mega), self.batch_size))
        # A short batch (the last of the last megabatch) must stay last: the DataLoader cuts our order
        # into chunks of batch_size.
        short = batches.pop() if batches and len(batches[-1]) < self.batch_size else None
        if short is not None and self.num_replicas > 1:
            batches.append(short + order[: self.batch_size - len(short)])
            short = None
        if batches:
            shuffled = torch.randperm(len(batches), generator=self.generator).tolist()
            batches = [batches[i] for i in shuffled]
            longest = max(range(len(batches)), key=lambda b: max(self.lengths[i] for i in batches[b]))
            batches[0], batches[longest] = batches[longest], batches[0]
        if short is not None:
            batches.append(short)
        if self.num_replicas > 1:
            per_rank = len(self) // self.batch_size
            batches = (batches * self.num_replicas)[: per_rank * self.num_replicas]
            batches = batches[self.rank :: self.num_replicas]
        return batches

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch


def pack_documents(
    documents: Sequence[Sequence[int]], max_length: int, packing: bool, document_positions: bool
) -> list[dict[str, list[int]]]:
    """Rows of at most `max_length` tokens from token lists.

    `packing`: the documents are joined and cut into full rows (the last one shorter), as HF's run_clm
    groups texts; a document may run over into the next row. Otherwise each document is its own row (a
    longer one is cut into rows of `max_length`). `document_positions` adds `position_ids` counting from 0
    at each document's start in a row (a document's piece that runs into the next row starts again there).
    """
    rows: list[dict[str, list[int]]] = []
    if not packing:
        for doc in documents:
            for i in range(0, len(doc), max_length):
                piece = list(doc[i : i + max_length])
                row = {"input_ids": piece}
                if document_positions:
                    row["position_ids"] = list(range(len(piece)))
                rows.append(row)
        return rows
    ids: list[int] = []
    positions: list[int] = []
    for doc in documents:
        ids.extend(doc)
        positions.extend(range(len(doc)))
    for i in range(0, len(ids), max_length):
        row = {"input_ids": ids[i : i + max_length]}
        if document_positions:
            piece = positions[i : i + max_length]
            # A document cut by the row's start starts again at 0 here.
            offset, restart = (piece[0] if piece else 0), _first_restart(piece)
            row["position_ids"] = [p - offset if j < restart else p for j, p in enumerate(piece)]
        rows.append(row)
    return rows


def _first_restart(positions: Sequence[int]) -> int:
    """The index of the first position that starts a document after index 0 (len if none)."""
    return next((j for j in range(1, len(positions)) if positions[j] == 0), len(positions))


# The `data.*` keys of a head that packs documents (causal_lm, masked_lm), with their defaults: packed as
# these heads always were (HF's run_clm / run_mlm), positions running on across documents.
PACKING_KEYS: dict[str, Any] = {"packing": True, "packing_document_attention": False}
# `data.*` keys of every head, read by the data module.
BATCHING_KEYS = ("pad_to_multiple_of", "group_by_length", "packing", "packing_document_attention")


def check_packing(data_cfg: dict[str, Any], head: Any) -> None:
    """`check_batching`, and packing asked of a head that does not pack (whose rows are not documents)."""
    check_batching(data_cfg)
    if "packing" in head.data_keys:
        return
    for key in ("packing", "packing_document_attention"):
        if data_cfg.get(key):
            from factory.registry import heads

            packers = sorted(name for name, h in heads().items() if "packing" in h.data_keys)
            raise ConfigError(
                f"data.{key}=true is not valid with head={head.name}: only heads whose rows are documents "
                f"pack them ({packers}). Use data.group_by_length=true to batch rows of similar length.",
                key=key,
            )


def check_document_positions(model: Any, batch: dict[str, Any]) -> None:
    """Make a packed batch's per-document `position_ids` (from 0) the ones `model` takes.

    Positions that count from 0 are shifted to where the model's position table starts (RoBERTa's real
    tokens start after its pad id). A model that takes no `position_ids` (BART's decoder) could not keep
    attention inside documents: that is an error rather than a silent change of the loss.
    """
    if "position_ids" not in batch:
        return
    import inspect

    if "position_ids" not in inspect.signature(model.forward).parameters:
        raise ConfigError(
            f"data.packing_document_attention=true needs a model that takes position_ids; "
            f"{type(model).__name__} does not. Set data.packing_document_attention=false.",
            key="packing_document_attention",
        )
    config = model.config
    offset = config.max_position_embeddings - getattr(config, "max_tokens", config.max_position_embeddings)
    if offset:
        batch["position_ids"] = batch["position_ids"] + offset
