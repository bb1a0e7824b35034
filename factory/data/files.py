"""Reading training data from local files, with errors that name file and line.

What an example is belongs to the head (`factory.heads`): this module resolves the data settings and the
shipped files and offers the readers every head shares (CSV/TSV with a header, JSONL, a JSON list, plain
text), which name the file, the line and the column of whatever is wrong. `factory.data.sources
.load_examples` chooses between these files, a `datasets` source and a stream.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from factory.contract.errors import DataError
from factory.contract.task import DataSplits, TaskData
from factory.registry import get_head, trainable_heads

logger = logging.getLogger(__name__)

# The shipped datasets, one folder per head (`TaskData.shipped` names files below it).
DATASETS_DIR = Path(__file__).resolve().parent / "datasets"
FORMATS = ("csv", "tsv", "jsonl", "json", "text")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".txt": "text"}

# The `data` keys every head reads, with their defaults; each head adds its own (`Head.data_keys`). Other
# keys (batch size, max_length, ...) belong to the pipeline and are ignored here.
COMMON_KEYS: dict[str, Any] = {
    "train_file": None,
    "validation_file": None,
    "format": None,
    "validation_fraction": None,
    "validation_seed": 0,
    # A Hugging Face `datasets` source instead of the files (factory.data.hf): a hub id, a
    # `save_to_disk` folder, a folder of data files, or parquet/JSON/CSV/text files and globs.
    "path": None,
    "name": None,
    "revision": None,
    "train_split": "train",
    "validation_split": "validation",
    # Read and tokenise the training split lazily, as training consumes it (factory.data.streaming).
    "streaming": False,
    # The encoded-splits cache (factory.data.cache) and how many processes tokenise.
    "cache": True,
    "cache_dir": None,
    "num_proc": 1,
}

__all__ = ["DATASETS_DIR", "DataError", "DataSplits", "default_data_files"]

# The `data.*` keys that choose how data is read or cached, not what the rows are.
PIPELINE_ONLY = ("streaming", "cache", "cache_dir", "num_proc")


def data_keys(head: str | TaskData) -> tuple[str, ...]:
    """The `data.*` keys `head` reads from its files."""
    return (*COMMON_KEYS, *get_head(head).data_keys)


def default_data_files(head: str | TaskData) -> tuple[str, str]:
    """The shipped `(train, validation)` files of `head`, as absolute paths."""
    head = get_head(head)
    if head.shipped is None:
        raise DataError(f"head={head.name!r} has no shipped dataset; valid heads: {trainable_heads()}.")
    train, validation = head.shipped
    return str(DATASETS_DIR / train), str(DATASETS_DIR / validation)


def settings_of(head: TaskData, data_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """The data keys `head` reads, from `data_cfg` over their defaults, as plain strings and paths."""
    settings = {**COMMON_KEYS, **head.data_keys}
    for key in list(settings):
        if data_cfg is not None and key in data_cfg and data_cfg[key] is not None:
            value = data_cfg[key]
            if key.endswith("_column"):
                value = str(value)  # Hydra reads `data.label_column=1` as an int; headers are strings
            elif key.endswith("_file") or key in ("path", "cache_dir"):
                value = os.path.expanduser(os.fspath(value))
            settings[key] = value
    return settings


def checked_validation_fraction(settings: Mapping[str, Any]) -> float | None:
    fraction = settings["validation_fraction"]
    if fraction is None:
        return None
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise DataError(f"data.validation_fraction={fraction!r} is not valid: expected a fraction in (0, 1).")
    seed = settings["validation_seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"data.validation_seed={seed!r} is not valid: expected an integer.")
    return float(fraction)


def carve(examples: list[Any], fraction: float, seed: int, path: str) -> tuple[list[Any], list[Any]]:
    """`(train, validation)`: `fraction` of `examples` (at least one, leaving at least one) drawn with
    `seed` for validation, the rest for training, each in file order.

    The seed is the data's, not the run's (`init.seed`): runs and sweep trials over other seeds
    validate on the same examples.
    """
    n = len(examples)
    if n < 2:
        raise DataError(f"{path}: {n} example(s) cannot be split into a training and a validation part.")
    k = min(n - 1, max(1, round(n * fraction)))
    chosen = set(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].tolist())
    train = [e for i, e in enumerate(examples) if i not in chosen]
    validation = [e for i, e in enumerate(examples) if i in chosen]
    return train, validation


def texts_for_tokenizer(head: str | TaskData, splits: DataSplits) -> Iterator[str]:
    """The training texts a tokenizer should learn from: only the train split (the head says which)."""
    return get_head(head).tokenizer_texts(splits)


# -- files ------------------------------------------------------------------------------------------


def file_format(path: str, settings: Mapping[str, Any], head: TaskData) -> str:
    """The format of `path`: `data.format`, else its extension, checked against what `head` reads."""
    valid = head.formats
    if _is_dataset(path):  # a `datasets` split gives records, as a JSONL file does
        if "jsonl" not in valid:
            raise DataError(
                f"head={head.name} reads {list(valid)} files, not records: data.path cannot feed it."
            )
        return "jsonl"
    fmt = settings["format"]
    if fmt is None:
        suffix = Path(path).suffix.lower()
        fmt = _EXTENSIONS.get(suffix)
        if fmt is None or fmt not in valid:
            raise DataError(
                f"{path}: cannot tell the format of a {suffix or 'extensionless'!r} file for head={head.name}; "
                f"use one of the extensions {[e for e, f in _EXTENSIONS.items() if f in valid]} or set "
                f"data.format to one of {list(valid)}."
            )
        return fmt
    if fmt not in valid:
        raise DataError(f"data.format={fmt!r} is not valid for head={head.name}; valid: {list(valid)}.")
    return fmt


def _is_dataset(path: str) -> bool:
    from factory.data.hf import DatasetSplit  # no `datasets` import: the class is ours

    return isinstance(path, DatasetSplit)


def read_text(path: str) -> str:
    if _is_dataset(path):
        return str(path)  # nothing to read as text: `read_jsonl`/`read_records` give its rows
    if not os.path.isfile(path):
        raise DataError(f"Data file {path!r} does not exist (or is not a file).")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: tolerate a BOM from spreadsheets
            text = f.read()
    except UnicodeDecodeError as e:
        line = text_line_of_byte(path, e.start)
        raise DataError(f"{path}, line {line}: not valid UTF-8 ({e.reason}).") from None
    if not text.strip():
        raise DataError(f"Data file {path} is empty.")
    return text


def text_line_of_byte(path: str, offset: int) -> int:
    """The 1-based line holding byte `offset` of the file (for encoding errors)."""
    with open(path, "rb") as f:
        return f.read(offset).count(b"\n") + 1


def read_records(path: str, settings: Mapping[str, Any], head: TaskData) -> list[tuple[int, dict[str, Any]]]:
    """`(line, record)` pairs of a CSV/TSV/JSONL/JSON-list file."""
    fmt = file_format(path, settings, head)
    if _is_dataset(path):
        return path.records()
    text = read_text(path)
    if fmt in ("csv", "tsv"):
        records = _read_delimited(path, text, "," if fmt == "csv" else "\t")
    elif fmt == "jsonl":
        records = read_jsonl(path, text)
    else:
        records = _read_json_records(path, text)
    if not records:
        raise DataError(f"Data file {path} has no examples (only a header or blank lines).")
    return records


def _read_delimited(path: str, text: str, delimiter: str) -> list[tuple[int, dict[str, Any]]]:
    # StringIO splits lines at "\n" only (str.splitlines would also split at \x0c, \u2028, ... inside
    # fields); csv itself handles "\r\n" and newlines inside quoted fields.
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"Data file {path} is empty.") from None
    except csv.Error as e:
        raise DataError(f"{path}, line {reader.line_num}: unreadable header ({e}).") from None
    header = [h.strip() for h in header]
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise DataError(f"{path}, line 1: the header names column(s) {duplicates} more than once.")
    records = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise DataError(f"{path}, line {reader.line_num}: unreadable row ({e}).") from None
        if not row or all(not cell.strip() for cell in row):
            continue  # blank lines are not examples
        if len(row) != len(header):
            raise DataError(
                f"{path}, line {reader.line_num}: {len(row)} fields but the header has {len(header)} "
                f"({header}); quote fields that contain the delimiter {delimiter!r}."
            )
        records.append((reader.line_num, dict(zip(header, row))))
    return records


def read_jsonl(path: str, text: str) -> list[tuple[int | str, dict[str, Any]]]:
    if _is_dataset(path):
        return path.records()
    records = []
    # Only "\n" ends a line: JSON strings may hold a raw \u2028, which str.splitlines would split at.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {number}: not valid JSON ({e.msg} at column {e.colno}).") from None
        if not isinstance(record, dict):
            raise DataError(
                f"{path}, line {number}: expected a JSON object per line, found {type(record).__name__}."
            )
        records.append((number, record))
    return records


def load_json(path: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}, line {e.lineno}: not valid JSON ({e.msg} at column {e.colno}). "
            "(A file with one JSON object per line needs the .jsonl extension or data.format=jsonl.)"
        ) from None


def _read_json_records(path: str, text: str) -> list[tuple[int, dict[str, Any]]]:
    """A JSON list of records (or `{"data": [...]}`); the 'line' of a record is its 1-based index."""
    data = load_json(path, text)
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records (or {{'data': [...]}}).")
    for index, record in enumerate(data):
        if not isinstance(record, dict):
            raise DataError(
                f"{path}, record {index + 1}: expected a JSON object, found {type(record).__name__}."
            )
    return [(index + 1, record) for index, record in enumerate(data)]


def where(path: str, line: int | str) -> str:
    return f"{path}, {line}" if isinstance(line, str) else f"{path}, line {line}"


def field_value(path: str, line: int | str, record: Mapping[str, Any], column: str, key: str) -> Any:
    """`record[column]`, or a DataError naming the file, the line, the column and the columns present."""
    if column not in record:
        raise DataError(
            f"{where(path, line)}: no column {column!r} (data.{key}); the columns are {sorted(record)}."
        )
    return record[column]


def text_value(path: str, line: int | str, value: Any, column: str) -> str:
    if not isinstance(value, str):
        raise DataError(
            f"{where(path, line)}: column {column!r} should hold text, found {type(value).__name__} {value!r}."
        )
    return value
