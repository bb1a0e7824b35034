"""The Lightning DataModule: examples from `factory.data.files`, encoded once, batched as model inputs.

Batches are dicts of tensors keyed by the models' forward argument names:

- seqcls: `input_ids`, `attention_mask`, [`token_type_ids`], `labels` (B,).
- qa: `input_ids`, `attention_mask`, [`token_type_ids`], `start_positions`, `end_positions`; validation
  batches also carry `window_index` (B,): the row of `dm.val_windows` each window is, so the metric can
  map logits back to `dm.val_examples` with `factory.heads.qa.best_spans`. Pop it before calling the model.
- causal_lm: `input_ids`, `attention_mask`, `labels` = input_ids with -100 on padding. Labels are not
  shifted: models with `labels_shifted_inside = False` (BART) need the LightningModule to shift them.

`token_type_ids` appear only when the tokenizer returns them (BERT). Rows are padded on the right with
the tokenizer's pad id (eos for GPT-2, which has no pad token) and attention mask 0 there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from factory.data.files import DataError, DataSplits, load_examples
from factory.heads import qa
from factory.tokenizers.tokenizer import NO_MAX_LENGTH
from factory.tokenizers.training import pad_token_id
from factory.training.failures import check_rows
from factory.training.resume import ResumableDataLoader

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label value losses skip, as in HF and torch's cross_entropy


class _ListDataset(torch.utils.data.Dataset):
    """Encoded rows (dicts of lists / ints) in memory: the shipped data is a few thousand rows."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


class FactoryDataModule(pl.LightningDataModule):
    """Data for one head: loads and checks the files, encodes them with `tokenizer`, serves batches.

    Args:
        head: "seqcls", "qa" or "causal_lm".
        data_cfg: the `data` config (see `factory.data.files.load_examples`); `stride` (qa windows; default
            max_length // 4) is read here too.
        tokenizer: a `factory.tokenizers.tokenizer.Tokenizer`.
        batch_size: rows per batch, for both splits.
        max_length: tokens per row: truncation for seqcls, window size for qa, block size for causal_lm.
        num_workers: DataLoader workers.
        seed: seeds the training shuffle, so a run's batch order is reproducible.
        splits: already loaded examples (e.g. those the tokenizer was trained on), to skip reading again.

    Attributes (after `setup()`):
        label_names: label names by id for seqcls, else None.
        train_rows / val_rows: the encoded rows.
        val_examples: the validation examples (qa: with `context` and `answers` for the metric).
        val_windows: qa only: `factory.heads.qa.encode_qa`'s result for the validation split.
    """

    def __init__(
        self,
        head: str,
        data_cfg: Mapping[str, Any] | None,
        tokenizer: Any,
        batch_size: int,
        max_length: int,
        num_workers: int = 0,
        seed: int = 0,
        splits: DataSplits | None = None,
    ):
        super().__init__()
        if head not in ("seqcls", "qa", "causal_lm"):
            raise ValueError(f"head={head!r} has no data module; valid: ['seqcls', 'qa', 'causal_lm'].")
        for name, value in (("batch_size", batch_size), ("max_length", max_length)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer.")
        self.head = head
        self.data_cfg = dict(data_cfg or {})
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.num_workers = num_workers
        self.seed = seed
        self.splits = splits
        self.pad_id = pad_token_id(tokenizer)
        self.train_rows: list[dict[str, Any]] | None = None
        self.val_rows: list[dict[str, Any]] = []
        self.val_examples: list[dict[str, Any]] = []
        self.val_windows: dict[str, list] | None = None

    # -- labels -----------------------------------------------------------------------------------

    def _ensure_splits(self) -> DataSplits:
        if self.splits is None:
            self.splits = load_examples(self.head, self.data_cfg)
        return self.splits

    @property
    def label_names(self) -> list[str] | None:
        """Label names indexed by id (seqcls), else None; loads the data if needed."""
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
        """Nothing to download: every file is local."""

    def setup(self, stage: str | None = None) -> None:
        """Encode both splits (once; later calls do nothing)."""
        if self.train_rows is not None:
            return
        splits = self._ensure_splits()
        encode = {"seqcls": self._encode_seqcls, "qa": self._encode_qa, "causal_lm": self._encode_causal_lm}
        self.train_rows = encode[self.head](splits.train, train=True)
        self.val_examples = list(splits.validation)
        self.val_rows = encode[self.head](splits.validation, train=False)
        check_rows(self.train_rows, "training", splits.train_file, self.head, self.max_length)
        check_rows(self.val_rows, "validation", splits.validation_file, self.head, self.max_length)
        logger.info(
            "Encoded %s data: %d train rows, %d validation rows (max_length=%d)",
            self.head,
            len(self.train_rows),
            len(self.val_rows),
            self.max_length,
        )

    def _encode_seqcls(self, examples: Sequence[dict[str, Any]], train: bool) -> list[dict[str, Any]]:
        texts = [e["text"] for e in examples]
        pairs = [e["text_pair"] for e in examples] if examples and "text_pair" in examples[0] else None
        enc = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length)
        keys = [k for k in qa.MODEL_INPUTS if k in enc]
        return [{**{k: enc[k][i] for k in keys}, "labels": e["label"]} for i, e in enumerate(examples)]

    def _encode_qa(self, examples: Sequence[dict[str, Any]], train: bool) -> list[dict[str, Any]]:
        stride = self.data_cfg.get("stride") or max(1, self.max_length // 4)
        try:
            windows = qa.encode_qa(
                self.tokenizer,
                [e["question"] for e in examples],
                [e["context"] for e in examples],
                [e["answers"] for e in examples],
                max_length=self.max_length,
                stride=stride,
            )
        except ValueError as e:  # the settings do not fit the data: say which keys to change
            raise DataError(f"data.max_length={self.max_length}, data.stride={stride}: {e}") from None
        keys = [k for k in (*qa.MODEL_INPUTS, "start_positions", "end_positions") if k in windows]
        rows = [{k: windows[k][i] for k in keys} for i in range(len(windows["input_ids"]))]
        if not train:
            self.val_windows = windows
            for index, row in enumerate(rows):
                row["window_index"] = index
        return rows

    def _encode_causal_lm(self, examples: Sequence[dict[str, Any]], train: bool) -> list[dict[str, Any]]:
        # Documents are joined with an end-of-text token so the model learns where one ends; BERT has no
        # eos, so its [SEP] plays that part.
        separator = self.tokenizer.eos_token_id
        if separator is None:
            separator = self.tokenizer.sep_token_id
        # Documents longer than the model are fine here (packing cuts them); an explicit max_length with
        # truncation off keeps the tokenizer from warning that they are too long, as run_clm does.
        ids = self.tokenizer(
            [e["text"] for e in examples],
            add_special_tokens=False,
            truncation=False,
            max_length=NO_MAX_LENGTH,
        )["input_ids"]
        stream: list[int] = []
        for doc in ids:
            stream.extend(doc)
            if separator is not None:
                stream.append(separator)
        # Full blocks of max_length; the tail becomes one shorter block (padded in collate) rather than
        # being dropped, so a small validation file still gives at least one row.
        blocks = [stream[i : i + self.max_length] for i in range(0, len(stream), self.max_length)]
        rows = [{"input_ids": b} for b in blocks if len(b) > 1]
        if "token_type_ids" in getattr(self.tokenizer, "model_input_names", ()):
            for row in rows:  # one segment: type 0 throughout, as the tokenizer gives for a single text
                row["token_type_ids"] = [0] * len(row["input_ids"])
        return rows

    # -- batches ----------------------------------------------------------------------------------

    def collate(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Pad a list of encoded rows to the longest and stack them into tensors."""
        length = max(len(r["input_ids"]) for r in rows)
        batch: dict[str, torch.Tensor] = {}
        batch["input_ids"] = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        batch["attention_mask"] = torch.zeros((len(rows), length), dtype=torch.long)
        if "token_type_ids" in rows[0]:
            batch["token_type_ids"] = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            batch["input_ids"][i, :n] = torch.tensor(row["input_ids"], dtype=torch.long)
            batch["attention_mask"][i, :n] = 1
            if "token_type_ids" in batch:
                batch["token_type_ids"][i, :n] = torch.tensor(row["token_type_ids"], dtype=torch.long)
        if self.head == "causal_lm":
            batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
        for key in ("labels", "start_positions", "end_positions", "window_index"):
            if key in rows[0]:
                batch[key] = torch.tensor([r[key] for r in rows], dtype=torch.long)
        return batch

    def _loader(self, rows: list[dict[str, Any]] | None, shuffle: bool) -> DataLoader:
        if rows is None:
            raise RuntimeError("Call setup() before asking for data loaders.")
        # Both loaders draw from their own generator, never the global one (a DataLoader draws a seed for
        # its workers at every pass): validating must not change the random numbers training sees next.
        generator = torch.Generator().manual_seed(self.seed)
        # The training loader's position in the epoch goes into checkpoints, for an exact resume.
        return (ResumableDataLoader if shuffle else DataLoader)(
            _ListDataset(rows),
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_rows, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_rows if self.train_rows is not None else None, shuffle=False)
