"""Where a run's examples come from: the head's files, a Hugging Face `datasets` source or a stream.

`load_examples(head, data_cfg)` turns the data the `data` config names (or the head's shipped default
dataset) into lists of plain example dicts, checked before any training starts, with errors that name
the file and line (or the dataset, split and row). The readers live in `factory.data.files`, the
`datasets` source in `factory.data.hf`, the stream in `factory.data.streaming`; this module alone
chooses between them, so that none of them imports another's chooser.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from factory.contract.task import DataSplits, TaskData
from factory.data.files import (
    DataError,
    carve,
    checked_validation_fraction,
    default_data_files,
    settings_of,
)
from factory.registry import get_head, trainable_heads

logger = logging.getLogger(__name__)


def load_examples(head: str | TaskData, data_cfg: Mapping[str, Any] | None = None) -> DataSplits:
    """Read and check the train and validation examples of `head`.

    Args:
        head: a head name or `TaskData`.
        data_cfg: the `data` config node (any mapping): `train_file`, `validation_file` (None: the head's
            shipped default, both files together), `format` (None: from the file extension: .csv, .tsv,
            .jsonl, .json, .txt), and the head's own keys (column names). Other keys are ignored.

    Returns:
        The examples of both splits, and for a classifying head the label names.

    Raises:
        DataError: a missing or empty file, a missing column, an unreadable row, a bad label or answer;
            the message names the file and the line (or the JSON path) and the column.
    """
    head = get_head(head)
    if type(head).read is TaskData.read:
        raise DataError(f"head={head.name!r} has no data loader; valid heads: {trainable_heads()}.")
    settings = settings_of(head, data_cfg)
    train_file, validation_file = settings["train_file"], settings["validation_file"]
    fraction = checked_validation_fraction(settings)
    if settings["path"] is not None and (train_file is not None or validation_file is not None):
        given = "data.train_file" if train_file is not None else "data.validation_file"
        raise DataError(
            f"data.path={settings['path']!r} and {given} are both set: read a dataset (data.path with "
            "data.train_split/data.validation_split) or files (data.train_file/data.validation_file), not both."
        )
    if settings["streaming"]:
        from factory.data.streaming import load_streaming

        return load_streaming(head, settings)
    if settings["path"] is not None:
        return _load_dataset(head, settings, fraction)
    if fraction is not None:
        if train_file is None or validation_file is not None:
            raise DataError(
                f"data.validation_fraction={fraction} carves the validation split out of data.train_file: "
                "give data.train_file and no data.validation_file (or drop data.validation_fraction)."
            )
        splits = head.read(train_file, train_file, settings)
        splits.train, splits.validation = carve(
            splits.train, fraction, settings["validation_seed"], train_file
        )
        validation_file = f"{train_file} (validation_fraction={fraction})"
        splits.train_file, splits.validation_file = train_file, validation_file
        _log_loaded(head, splits)
        return splits
    if train_file is None and validation_file is None:
        train_file, validation_file = default_data_files(head)
    elif train_file is None or validation_file is None:
        missing = "data.train_file" if train_file is None else "data.validation_file"
        given = "data.validation_file" if train_file is None else "data.train_file"
        hint = " or data.validation_fraction=0.1 to carve one out of it" if train_file is not None else ""
        raise DataError(
            f"{given} is set but {missing} is not: name both files{hint}, or neither to use the shipped "
            f"{head.name} dataset."
        )
    splits = head.read(train_file, validation_file, settings)
    splits.train_file, splits.validation_file = train_file, validation_file
    _log_loaded(head, splits)
    return splits


def _load_dataset(head: TaskData, settings: Mapping[str, Any], fraction: float | None) -> DataSplits:
    """`load_examples` for `data.path`: the head reads the dataset's splits as it reads files."""
    from factory.data import hf

    loaded = hf.load(settings)
    source = settings["path"] + (f" ({settings['name']})" if settings["name"] else "")
    train = hf.DatasetSplit(hf.select_split(loaded, "train_split", settings), source, settings["train_split"])
    if fraction is not None:
        splits = head.read(train, train, settings)
        splits.train, splits.validation = carve(splits.train, fraction, settings["validation_seed"], train)
        validation = f"{train} (validation_fraction={fraction})"
    else:
        hint = " Name one with data.validation_split, or carve one out with data.validation_fraction=0.1."
        split = hf.select_split(loaded, "validation_split", settings, hint)
        validation = hf.DatasetSplit(split, source, settings["validation_split"])
        splits = head.read(train, validation, settings)
    splits.train_file, splits.validation_file = str(train), str(validation)
    _log_loaded(head, splits)
    return splits


def _log_loaded(head: TaskData, splits: DataSplits) -> None:
    logger.info(
        "Loaded %s data: %d train examples from %s, %d validation examples from %s",
        head.name,
        len(splits.train),
        splits.train_file,
        len(splits.validation),
        splits.validation_file,
    )
