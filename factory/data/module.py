"""The Lightning DataModule: examples from the head's files, encoded once, batched as model inputs.

Batches are dicts of tensors keyed by the models' forward argument names: `input_ids`, `attention_mask`,
[`token_type_ids`] (only when the tokenizer returns them), then whatever integer keys the head's rows
carry (`labels`, `start_positions`, ...) and whatever the head derives from the padded inputs. Rows are
padded on the right with the tokenizer's pad id (eos for GPT-2, which has no pad token) and attention
mask 0 there. Keys a model does not take (QA's `window_index`) are dropped by the Lightning module.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from factory.contract.task import DataSplits, Encoded, TaskData
from factory.data.batching import LengthGroupedSampler, padded_length
from factory.data.files import DataError, settings_of
from factory.data.loader import ResumableDataLoader
from factory.data.sources import load_examples
from factory.registry import get_head, trainable_heads
from factory.tokenizers.training import pad_token_id

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label value losses skip, as in HF and torch's cross_entropy
# Batches are padded to a multiple of this by default (`data.pad_to_multiple_of`): tensor cores want it.
PAD_TO_MULTIPLE_OF = 8
# Batch keys with a value per token (last dimension): padded together to the batch's length.
TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")


class _ListDataset(torch.utils.data.Dataset):
    """Encoded rows (dicts of lists / ints) in memory: the shipped data is a few thousand rows."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


def check_rows(rows: Sequence[Any], split: str, path: str, head: TaskData, max_length: int) -> None:
    """Raise `DataError` naming the file when `split` encoded to no rows (training on nothing, or
    validating on nothing, would otherwise "succeed" with empty metrics)."""
    if rows:
        return
    raise DataError(
        f"{path}: the {split} split has 0 rows after encoding for head={head.name} "
        f"(data.max_length={max_length}): {head.empty_reason}. Give a file with more data."
    )


class FactoryDataModule(pl.LightningDataModule):
    """Data for one head: loads and checks the files, encodes them with `tokenizer`, serves batches.

    Args:
        head: a head name or `factory.heads.Head`.
        data_cfg: the `data` config (see `factory.data.sources.load_examples`); the head's own keys
            (`stride` for QA windows, ...) are read here too.
        tokenizer: a `factory.tokenizers.tokenizer.Tokenizer`.
        batch_size: rows per batch, for both splits.
        max_length: tokens per row: truncation, window or block size, as the head uses it.
        num_workers: DataLoader workers.
        seed: seeds the training shuffle, so a run's batch order is reproducible.
        splits: already loaded examples (e.g. those the tokenizer was trained on), to skip reading again.

    Attributes (after `setup()`):
        label_names: label names by id for a classifying head, else None.
        train / validation: the encoded splits (`factory.heads.Encoded`: rows, and what the head needs
            to score validation, such as QA's windows and examples).
    """

    def __init__(
        self,
        head: str | TaskData,
        data_cfg: Mapping[str, Any] | None,
        tokenizer: Any,
        batch_size: int,
        max_length: int,
        num_workers: int = 0,
        seed: int = 0,
        splits: DataSplits | None = None,
    ):
        super().__init__()
        self.head = get_head(head)
        if type(self.head).encode is TaskData.encode:
            raise ValueError(f"head={self.head.name!r} has no data module; valid: {trainable_heads()}.")
        for name, value in (("batch_size", batch_size), ("max_length", max_length)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer.")
        self.data_cfg = dict(data_cfg or {})
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.num_workers = num_workers
        self.seed = seed
        self.splits = splits
        self.pad_id = pad_token_id(tokenizer)
        self.train: Encoded | None = None
        self.validation = Encoded([])
        self.train_stream: Any = None  # with data.streaming=true: the training rows, read as they go
        self.draw_states: dict[bool, Any] = {}  # the head's draw_state of each split, by `train`

    # -- labels -----------------------------------------------------------------------------------

    def _ensure_splits(self) -> DataSplits:
        if self.splits is None:
            self.splits = load_examples(self.head, self.data_cfg)
        return self.splits

    @property
    def label_names(self) -> list[str] | None:
        """Label names indexed by id (a classifying head), else None; loads the data if needed."""
        return self._ensure_splits().labels

    @property
    def num_labels(self) -> int | None:
        names = self.label_names
        return None if names is None else len(names)

    @property
    def id2label(self) -> dict[int, str] | None:
        names = self.label_names
        return None if names is None else dict(enumerate(names))

    # -- encoding ---------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Nothing to do here: files are local, and a `datasets` source is fetched when it is read
        (`datasets` locks its cache, so ranks reading one dataset prepare it once)."""

    def setup(self, stage: str | None = None) -> None:
        """Encode both splits (once; later calls do nothing), from the encoded-data cache when it holds
        them (`factory.data.cache`); with `data.streaming=true` only validation, training is read as it goes.
        """
        if self.train is not None:
            return
        from factory.data.cache import encode_splits
        from factory.data.streaming import StreamingRows, StreamingSplits

        splits = self._ensure_splits()
        settings = {**settings_of(self.head, self.data_cfg), "max_length": self.max_length}
        if isinstance(splits, StreamingSplits) and splits.stream is not None:
            self.train_stream = StreamingRows(self.head, splits.stream, self.tokenizer, settings)
            self.train = Encoded([])
            self.validation = self.head.encode(self.tokenizer, splits.validation, settings, train=False)
        else:
            self.train, self.validation = encode_splits(self.head, self.tokenizer, splits, settings)
            check_rows(self.train.rows, "training", splits.train_file, self.head, self.max_length)
        check_rows(self.validation.rows, "validation", splits.validation_file, self.head, self.max_length)
        self.draw_states = {
            train: self.head.draw_state(self.tokenizer, settings, train) for train in (True, False)
        }
        logger.info(
            "Encoded %s data: %s train rows, %d validation rows (max_length=%d)",
            self.head.name,
            "streamed" if self.train_stream is not None else len(self.train.rows),
            len(self.validation.rows),
            self.max_length,
        )

    # -- batches ----------------------------------------------------------------------------------

    def draw_state(self, train: bool) -> Any:
        """What the head's `draw_batch` needs for the training (`train`) or the validation split."""
        if not self.draw_states:
            raise RuntimeError("Call setup() before drawing batches.")
        return self.draw_states[train]

    def collate(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad a list of encoded rows to the longest (rounded up to `data.pad_to_multiple_of`, never over
        `max_length`) and stack them into tensors."""
        multiple = self.data_cfg.get("pad_to_multiple_of", PAD_TO_MULTIPLE_OF)
        batch = self.head.collate(rows, self.pad_id)
        if batch is not None:
            self.head.finish_batch(batch)
            self._round_up(batch, multiple)
            return batch
        length = padded_length(max(len(r["input_ids"]) for r in rows), multiple, self.max_length)
        batch: dict[str, torch.Tensor] = {}
        batch["input_ids"] = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        batch["attention_mask"] = torch.zeros((len(rows), length), dtype=torch.long)
        if "token_type_ids" in rows[0]:
            batch["token_type_ids"] = torch.zeros((len(rows), length), dtype=torch.long)
        if "position_ids" in rows[0]:
            # Padding counts from 0 again: a document of its own, which packed attention keeps apart.
            batch["position_ids"] = torch.arange(length).repeat(len(rows), 1)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            batch["input_ids"][i, :n] = torch.tensor(row["input_ids"], dtype=torch.long)
            batch["attention_mask"][i, :n] = 1
            for key in ("token_type_ids", "position_ids"):
                if key in batch:
                    batch[key][i, :n] = torch.tensor(row[key], dtype=torch.long)
                    if key == "position_ids":
                        batch[key][i, n:] -= n
        for key, value in rows[0].items():  # per-row integers: labels, answer positions, window index
            if key not in batch and isinstance(value, int):
                batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.long)
            elif key == "labels" and isinstance(value, list):  # per-token labels: padding is ignored
                batch[key] = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
                for i, row in enumerate(rows):
                    batch[key][i, : len(row[key])] = torch.tensor(row[key], dtype=torch.long)
        self.head.finish_batch(batch)
        self._round_up(batch, multiple)  # what a head folded (multiple_choice's (B, C, T)) is rounded too
        return batch

    def _round_up(self, batch: dict[str, torch.Tensor], multiple: int | None) -> None:
        """Pad the token dimension (the last) of the per-token tensors a head built itself ((B, T), or
        multiple_choice's (B, C, T)) to a multiple, as the usual collate pads rows: sources and targets
        (seq2seq) each to their own. Other tensors (a (B, C) choice mask) are left alone."""
        fill = {"input_ids": self.pad_id, "labels": IGNORE_INDEX}
        for key in TOKEN_KEYS:
            value = batch.get(key)
            if not isinstance(value, torch.Tensor) or value.dim() < 2:
                continue
            length = padded_length(value.size(-1), multiple, self.max_length)
            if length > value.size(-1):
                batch[key] = F.pad(value, (0, length - value.size(-1)), value=fill.get(key, 0))

    def _loader(self, rows: list[dict[str, Any]] | None, shuffle: bool) -> DataLoader:
        if rows is None:
            raise RuntimeError("Call setup() before asking for data loaders.")
        # Both loaders draw from their own generator, never the global one (a DataLoader draws a seed for
        # its workers at every pass): validating must not change the random numbers training sees next.
        generator = torch.Generator().manual_seed(self.seed)
        sampler = None
        if shuffle and self.data_cfg.get("group_by_length"):
            # Rows of similar length together, in an order drawn from `generator` alone: the resumable
            # loader saves and restores that generator as it does a RandomSampler's.
            lengths = [len(r["input_ids"]) for r in rows]
            ranks = {}
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                ranks = {
                    "num_replicas": torch.distributed.get_world_size(),
                    "rank": torch.distributed.get_rank(),
                }
            sampler = LengthGroupedSampler(lengths, self.batch_size, generator=generator, **ranks)
        # The training loader's position in the epoch goes into checkpoints, for an exact resume.
        return (ResumableDataLoader if shuffle else DataLoader)(
            _ListDataset(rows),
            batch_size=self.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            generator=generator,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_stream is not None:
            from factory.data.streaming import StreamingLoader

            return StreamingLoader(
                self.train_stream,
                batch_size=self.batch_size,
                collate_fn=self.collate,
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
                trained=self._batches_trained,
            )
        return self._loader(self.train.rows if self.train is not None else None, shuffle=True)

    def _batches_trained(self) -> int | None:
        """The batches of this epoch the Trainer has trained on (None outside a Trainer)."""
        trainer = self.trainer
        return None if trainer is None else int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.validation.rows if self.train is not None else None, shuffle=False)
