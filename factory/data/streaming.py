"""Larger than memory: `data.streaming=true` reads and tokenises the training split as training goes.

The training split is read lazily, a chunk of records at a time: a plain text file (documents are runs of
non-blank lines, as the text heads read them), a JSONL file, or a `datasets` source (`data.path`, opened
with `streaming=True`: parquet, hub ids, ...). Each chunk goes through the head's own reader and encoder,
so its checks, messages and packing are the head's (a causal LM packs each chunk's documents into blocks;
a chunk's last, shorter block is padded as a short file's is). Nothing holds more than a chunk.

Chunks are dealt round-robin to the shards, one per DataLoader worker, so every worker reads a disjoint
part of the stream. Under DDP each rank (and worker) reads every chunk and keeps its share of each
chunk's examples, and passes over the stream without end, so that no rank runs out of batches before the
others (they would wait for each other forever); `trainer.max_steps` ends the run. A tokenizer trained from scratch (`init=random`) learns from
the first `SAMPLE_EXAMPLES` examples. The validation split is small and read whole, as without streaming.

Only heads without a label set stream (causal_lm, masked_lm, seq2seq_lm, qa, multiple_choice): the label
names of seqcls and token_cls come from the whole training split, which a stream has not read yet.

Resume: the loader's position (batches given out in the epoch) is in every checkpoint, like the in-memory
loader's; a resumed run reads the stream again up to that position and drops what it already trained on
(exact, at the cost of tokenising that part again).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import IterableDataset

from factory.contract.task import DataSplits, TaskData
from factory.data import files, hf
from factory.data.loader import ResumableDataLoader

logger = logging.getLogger(__name__)

CHUNK_EXAMPLES = 256  # records a shard reads, converts and encodes at a time
SAMPLE_EXAMPLES = 10_000  # the start of the stream a fresh tokenizer is trained on


class RecordChunk(hf.DatasetSplit):
    """Records of a stream handed to a head's reader; `where` keeps their lines (or rows) in the source."""

    def __new__(cls, name: str, records: list[tuple[int | str, dict[str, Any]]]) -> RecordChunk:
        self = str.__new__(cls, name)
        self.dataset, self.source, self.split, self.pairs = None, name, "", records
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (RecordChunk, (str(self), self.pairs))

    def records(self) -> list[tuple[int | str, dict[str, Any]]]:
        return self.pairs


@dataclass
class RecordStream:
    """Where the training records come from: `kind` is `text`, `jsonl` or `dataset`."""

    kind: str
    path: str
    settings: dict[str, Any]
    column: str = "text"

    def records(self) -> Iterator[tuple[int | str, dict[str, Any]]]:
        """`(line or row, record)` pairs of the whole stream, read lazily."""
        if self.kind == "dataset":
            split = hf.load(self.settings, streaming=True)
            stream = hf.select_split(split, "train_split", self.settings)
            for i, record in enumerate(hf.iter_records(stream)):
                yield f"row {i}", record
        elif self.kind == "jsonl":
            yield from _jsonl_records(self.path)
        else:
            yield from _text_records(self.path, self.column)

    def chunks(self, shard: int = 0, num_shards: int = 1) -> Iterator[RecordChunk]:
        """The chunks of shard `shard` of `num_shards`: chunk i belongs to shard i % num_shards."""
        records = self.records()
        for index in itertools.count():
            chunk = list(itertools.islice(records, CHUNK_EXAMPLES))
            if not chunk:
                return
            if index % num_shards == shard:
                yield RecordChunk(self.name, chunk)

    @property
    def name(self) -> str:
        if self.kind == "dataset":
            return f"{self.path} (split {self.settings['train_split']!r})"
        return self.path


def _text_records(path: str, column: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Documents of a text file (runs of non-blank lines, stripped), at the line each starts on."""
    document: list[str] = []
    start = 0
    with open(path, encoding="utf-8-sig", newline="") as f:
        number = 0
        for number, raw in enumerate(f, start=1):  # noqa: B007 (number is read after the loop)
            line = raw.rstrip("\n").strip()
            if line:
                if not document:
                    start = number
                document.append(line)
            elif document:
                yield start, {column: "\n".join(document)}
                document = []
    if document:
        yield start, {column: "\n".join(document)}


def _jsonl_records(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:  # the file reader's checks and messages, at this line of the file
                    (_, record), *_ = files.read_jsonl(path, line)
                except files.DataError as e:
                    raise files.DataError(
                        str(e).replace(f"{path}, line 1:", f"{path}, line {number}:")
                    ) from None
                yield number, record


@dataclass
class StreamingSplits(DataSplits):
    """`DataSplits` whose `train` holds only the start of the stream (for a fresh tokenizer); `stream`
    gives all of it."""

    stream: RecordStream | None = None


def load_streaming(head: TaskData, settings: Mapping[str, Any]) -> StreamingSplits:
    """`load_examples` for `data.streaming=true`: the validation split read whole, a sample of the
    training split, and the stream of all of it."""
    settings = dict(settings)
    if settings["validation_fraction"] is not None:
        raise files.DataError(
            "data.validation_fraction cannot be used with data.streaming=true: carving it out would read the "
            "whole stream first. Name a validation split (data.validation_split) or file (data.validation_file)."
        )
    column = settings.get("text_column", "text")
    if settings["path"] is not None:
        stream = RecordStream("dataset", settings["path"], settings)
        hint = " Name one with data.validation_split."
        loaded = hf.load(settings, streaming=True)
        validation_stream = hf.select_split(loaded, "validation_split", settings, hint)
        source = f"{settings['path']}"
        validation = hf.DatasetSplit(
            list(hf.iter_records(validation_stream)), source, settings["validation_split"]
        )
    else:
        train_file, validation_file = settings["train_file"], settings["validation_file"]
        if train_file is None and validation_file is None:
            train_file, validation_file = files.default_data_files(head)
        if train_file is None or validation_file is None:
            raise files.DataError(
                "data.streaming=true reads data.train_file as a stream and needs data.validation_file too "
                "(or data.path with its splits)."
            )
        fmt = files.file_format(train_file, settings, head)
        if fmt not in ("text", "jsonl"):
            raise files.DataError(
                f"{train_file}: data.streaming=true reads text or JSONL files (or data.path: parquet, hub "
                f"datasets...); this is {fmt}."
            )
        if not os.path.isfile(train_file):
            raise files.DataError(f"Data file {train_file!r} does not exist (or is not a file).")
        stream = RecordStream(fmt, train_file, settings, column)
        validation = validation_file
    sample = list(itertools.islice(stream.records(), SAMPLE_EXAMPLES))
    if not sample:
        raise files.DataError(f"{stream.name} has no examples.")
    first = head.read(RecordChunk(stream.name, sample), validation, settings)
    if first.labels is not None:
        raise files.DataError(
            f"data.streaming=true cannot serve head={head.name}: its label names come from the whole "
            "training split, which a stream has not read. Drop data.streaming."
        )
    splits = StreamingSplits(first.train, first.validation, None, stream.name, str(validation), stream=stream)
    logger.info(
        "Streaming %s data from %s (%d validation examples from %s)",
        head.name,
        stream.name,
        len(splits.validation),
        splits.validation_file,
    )
    return splits


class StreamingRows(IterableDataset):
    """The training rows of a stream, encoded chunk by chunk; each rank and worker reads its own shard."""

    def __init__(self, head: TaskData, stream: RecordStream, tokenizer: Any, settings: Mapping[str, Any]):
        self.head, self.stream, self.tokenizer, self.settings = head, stream, tokenizer, dict(settings)

    @staticmethod
    def ranks() -> tuple[int, int]:
        """`(rank, world size)` of the data-parallel processes."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def shard(self) -> tuple[int, int]:
        """`(shard, num_shards)` of this process and worker."""
        rank, world = self.ranks()
        info = torch.utils.data.get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        return rank * workers + worker, world * workers

    def _rows(self, chunk: RecordChunk) -> list[dict[str, Any]]:
        examples = self.head.read(chunk, chunk, self.settings).train
        return self.head.encode(self.tokenizer, examples, self.settings, train=True).rows

    def __iter__(self) -> Iterator[dict[str, Any]]:
        shard, num_shards = self.shard()
        if self.ranks()[1] == 1:
            for chunk in self.stream.chunks(shard, num_shards):
                yield from self._rows(chunk)
            return
        # Several ranks: each reads every chunk and keeps every num_shards-th of its examples, so no rank
        # is left without data however small the stream, and passes over the stream without end. Ranks
        # whose shards ran out at different batches would otherwise wait for each other in their next
        # collective forever; a stream trains for trainer.max_steps, which ends the run.
        while True:
            found = False
            for chunk in self.stream.chunks():
                mine = chunk.records()[shard::num_shards]
                if mine:
                    found = True
                    yield from self._rows(RecordChunk(str(chunk), mine))
            if not found:
                raise files.DataError(
                    f"{self.stream.name} has fewer training examples than the {num_shards} processes "
                    "(ranks x loader workers) that read it."
                )


class StreamingLoader(ResumableDataLoader):
    """The loader over `StreamingRows`; its position in the epoch goes into checkpoints (a
    `ResumableDataLoader`, so the resume callback finds it). Resuming reads the stream again up to the
    position and drops the batches already trained on: a stream cannot be indexed.

    `trained` says how many batches of the epoch training has taken (Lightning's count). The loader's
    own count runs ahead of it: without a length, Lightning fetches a batch early to learn whether the
    one before it is the epoch's last.
    """

    def __init__(self, *args: Any, trained: Callable[[], int | None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trained = trained

    def __iter__(self) -> Iterator[Any]:
        position, self._resume = self._resume, None
        skip = int(position.get("batches", 0)) if position and not position.get("finished") else 0
        if skip:
            logger.info("Resuming the stream: reading past the %d batches already trained on.", skip)
        self._passes += 1
        self._batches = 0
        for batch in torch.utils.data.DataLoader.__iter__(self):
            self._batches += 1
            if self._batches > skip:
                yield batch

    def state_dict(self) -> dict[str, Any]:
        trained = self._trained() if self._trained is not None else None
        batches = self._batches if trained is None else trained
        return {"epoch_generator": None, "generator": None, "batches": batches, "finished": False}
