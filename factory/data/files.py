"""Reading training data from local files, one loader per head, with errors that name file and line.

`load_examples(head, data_cfg)` turns the files named in the `data` config (or the head's shipped default
dataset) into lists of plain example dicts, checked before any training starts:

- seqcls: CSV/TSV (header row), JSONL, or JSON (a list of records) with a text column, an optional
  text-pair column and a label column. Examples are `{"text", "label"}` (+ `"text_pair"`) with `label`
  an integer id into `DataSplits.labels`.
- qa: SQuAD-format JSON (`{"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers":
  [{"text", "answer_start"}]}]}]}]}`) or JSONL with question/context/answers per line, answers either in
  SQuAD's list form or in the `datasets` form `{"text": [...], "answer_start": [...]}`. Examples are
  `{"id", "question", "context", "answers": {"text": [...], "answer_start": [...]}}` (the `datasets`
  form, as HF's run_qa reads it); every answer is checked to be the context span it claims.
- causal_lm: plain text (documents separated by blank lines) or JSONL with a text column. Examples are
  `{"text"}`; the data module tokenizes and packs them.

Labels: when every training label is an integer (`3`, or `"3"` in a CSV), the labels are ids and stay
ids: the names are `"0" .. str(max)`, so id i is named str(i). Otherwise the names are the sorted set of
training labels, so "negative" < "positive" give ids 0 and 1. A validation label that training never saw
is an error naming its file and line, because the model would have no output for it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

HEADS_WITH_DATA = ("seqcls", "qa", "causal_lm")
FORMATS = ("csv", "tsv", "jsonl", "json", "text")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "json", ".txt": "text"}
_VALID_FORMATS_BY_HEAD = {
    "seqcls": ("csv", "tsv", "jsonl", "json"),
    "qa": ("json", "jsonl"),
    "causal_lm": ("text", "jsonl"),
}

DATASETS_DIR = Path(__file__).parent / "datasets"
_DEFAULT_FILES = {
    "seqcls": ("seqcls/train.csv", "seqcls/validation.csv"),
    "qa": ("qa/train.json", "qa/validation.json"),
    "causal_lm": ("causal_lm/train.txt", "causal_lm/validation.txt"),
}

# The `data` config keys this module reads, with their defaults. Other keys (batch size, max_length, ...)
# belong to the pipeline and are ignored here; `DATA_KEYS` lets a config check reject typos.
DEFAULTS: dict[str, Any] = {
    "train_file": None,
    "validation_file": None,
    "format": None,
    "text_column": "text",
    "text_pair_column": None,
    "label_column": "label",
    "question_column": "question",
    "context_column": "context",
    "answers_column": "answers",
    "id_column": "id",
    # Read by the data module: tokens shared by consecutive qa windows (None: max_length // 4).
    "stride": None,
}
DATA_KEYS = tuple(DEFAULTS)


class DataError(ValueError):
    """Data that cannot be used: the message names the file, and the line or column when there is one."""


@dataclasses.dataclass
class DataSplits:
    """The examples of both splits, plus the label names for seqcls.

    Attributes:
        train: training examples (dicts, see the module docstring for their keys per head).
        validation: validation examples, same keys.
        labels: label names indexed by id for seqcls; None for the other heads.
        train_file: the file the training examples came from.
        validation_file: the file the validation examples came from.
    """

    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    labels: list[str] | None = None
    train_file: str = ""
    validation_file: str = ""


def default_data_files(head: str) -> tuple[str, str]:
    """The shipped `(train, validation)` files of `head`, as absolute paths."""
    if head not in _DEFAULT_FILES:
        raise DataError(f"head={head!r} has no shipped dataset; valid heads: {list(_DEFAULT_FILES)}.")
    train, validation = _DEFAULT_FILES[head]
    return str(DATASETS_DIR / train), str(DATASETS_DIR / validation)


def _settings(data_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    settings = dict(DEFAULTS)
    for key in DEFAULTS:
        if data_cfg is not None and key in data_cfg and data_cfg[key] is not None:
            value = data_cfg[key]
            if key.endswith("_column"):
                value = str(value)  # Hydra reads `data.label_column=1` as an int; headers are strings
            elif key.endswith("_file"):
                value = os.path.expanduser(os.fspath(value))
            settings[key] = value
    return settings


def load_examples(head: str, data_cfg: Mapping[str, Any] | None = None) -> DataSplits:
    """Read and check the train and validation examples of `head`.

    Args:
        head: "seqcls", "qa" or "causal_lm".
        data_cfg: the `data` config node (any mapping): `train_file`, `validation_file` (None: the head's
            shipped default, both files together), `format` (None: from the file extension: .csv, .tsv,
            .jsonl, .json, .txt), and the column names `text_column`, `text_pair_column`,
            `label_column`, `question_column`, `context_column`, `answers_column`, `id_column`. Other keys
            are ignored.

    Returns:
        The examples of both splits, and for seqcls the label names.

    Raises:
        DataError: a missing or empty file, a missing column, an unreadable row, a bad label or answer;
            the message names the file and the line (or the JSON path) and the column.
    """
    if head not in _DEFAULT_FILES:
        raise DataError(f"head={head!r} has no data loader; valid heads: {list(_DEFAULT_FILES)}.")
    settings = _settings(data_cfg)
    train_file, validation_file = settings["train_file"], settings["validation_file"]
    if train_file is None and validation_file is None:
        train_file, validation_file = default_data_files(head)
    elif train_file is None or validation_file is None:
        missing = "data.train_file" if train_file is None else "data.validation_file"
        given = "data.validation_file" if train_file is None else "data.train_file"
        raise DataError(
            f"{given} is set but {missing} is not: name both files, or neither to use the shipped "
            f"{head} dataset."
        )

    if head == "seqcls":
        train_rows = _read_records(train_file, settings, head)
        validation_rows = _read_records(validation_file, settings, head)
        for path, rows in ((train_file, train_rows), (validation_file, validation_rows)):
            _check_header(path, rows, settings)
        labels = _label_names(train_rows, train_file, settings["label_column"])
        train = _seqcls_examples(train_rows, train_file, settings, labels)
        validation = _seqcls_examples(validation_rows, validation_file, settings, labels)
        splits = DataSplits(train, validation, labels, train_file, validation_file)
    elif head == "qa":
        train = _qa_examples(train_file, settings)
        validation = _qa_examples(validation_file, settings)
        splits = DataSplits(train, validation, None, train_file, validation_file)
    else:
        train = _text_examples(train_file, settings)
        validation = _text_examples(validation_file, settings)
        splits = DataSplits(train, validation, None, train_file, validation_file)
    logger.info(
        "Loaded %s data: %d train examples from %s, %d validation examples from %s",
        head,
        len(splits.train),
        train_file,
        len(splits.validation),
        validation_file,
    )
    return splits


def texts_for_tokenizer(head: str, splits: DataSplits) -> Iterator[str]:
    """The training texts a tokenizer should learn from: only the train split, each context once."""
    if head == "seqcls":
        for example in splits.train:
            yield example["text"]
            if example.get("text_pair"):
                yield example["text_pair"]
    elif head == "qa":
        seen: set[str] = set()
        for example in splits.train:
            yield example["question"]
            if example["context"] not in seen:
                seen.add(example["context"])
                yield example["context"]
    elif head == "causal_lm":
        for example in splits.train:
            yield example["text"]
    else:
        raise DataError(f"head={head!r} has no data; valid heads: {list(_DEFAULT_FILES)}.")


# -- files ------------------------------------------------------------------------------------------


def _file_format(path: str, settings: Mapping[str, Any], head: str) -> str:
    valid = _VALID_FORMATS_BY_HEAD[head]
    fmt = settings["format"]
    if fmt is None:
        suffix = Path(path).suffix.lower()
        fmt = _EXTENSIONS.get(suffix)
        if fmt is None or fmt not in valid:
            raise DataError(
                f"{path}: cannot tell the format of a {suffix or 'extensionless'!r} file for head={head}; "
                f"use one of the extensions {[e for e, f in _EXTENSIONS.items() if f in valid]} or set "
                f"data.format to one of {list(valid)}."
            )
        return fmt
    if fmt not in valid:
        raise DataError(f"data.format={fmt!r} is not valid for head={head}; valid: {list(valid)}.")
    return fmt


def _read_text(path: str) -> str:
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


def _read_records(path: str, settings: Mapping[str, Any], head: str) -> list[tuple[int, dict[str, Any]]]:
    """`(line, record)` pairs of a CSV/TSV/JSONL/JSON-list file."""
    fmt = _file_format(path, settings, head)
    text = _read_text(path)
    if fmt in ("csv", "tsv"):
        records = _read_delimited(path, text, "," if fmt == "csv" else "\t")
    elif fmt == "jsonl":
        records = _read_jsonl(path, text)
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


def _read_jsonl(path: str, text: str) -> list[tuple[int, dict[str, Any]]]:
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


def _load_json(path: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}, line {e.lineno}: not valid JSON ({e.msg} at column {e.colno}). "
            "(A file with one JSON object per line needs the .jsonl extension or data.format=jsonl.)"
        ) from None


def _read_json_records(path: str, text: str) -> list[tuple[int, dict[str, Any]]]:
    """A JSON list of records (or `{"data": [...]}`); the 'line' of a record is its 1-based index."""
    data = _load_json(path, text)
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


def _where(path: str, line: int | str) -> str:
    return f"{path}, {line}" if isinstance(line, str) else f"{path}, line {line}"


def _field(path: str, line: int | str, record: Mapping[str, Any], column: str, key: str) -> Any:
    """`record[column]`, or a DataError naming the file, the line, the column and the columns present."""
    if column not in record:
        raise DataError(
            f"{_where(path, line)}: no column {column!r} (data.{key}); the columns are {sorted(record)}."
        )
    return record[column]


def _string(path: str, line: int | str, value: Any, column: str) -> str:
    if not isinstance(value, str):
        raise DataError(
            f"{_where(path, line)}: column {column!r} should hold text, found {type(value).__name__} {value!r}."
        )
    return value


# -- seqcls -----------------------------------------------------------------------------------------


def _check_header(path: str, records: list[tuple[int, dict[str, Any]]], settings: Mapping[str, Any]) -> None:
    """For CSV/TSV, a missing column is a header problem: say so once, at line 1."""
    if _file_format(path, settings, "seqcls") not in ("csv", "tsv"):
        return  # JSON records may differ per line; `_field` names the line
    header = list(records[0][1])
    for key in ("text_column", "text_pair_column", "label_column"):
        column = settings[key]
        if column is not None and column not in header:
            raise DataError(
                f"{path}, line 1: no column {column!r} (data.{key}) in the header; the columns are {header}."
            )


def _label_key(path: str, line: int, value: Any, column: str) -> int | str:
    """A label as read: an int (JSON ints and digit strings) or a name."""
    if isinstance(value, bool) or value is None or isinstance(value, (float, list, dict)):
        raise DataError(
            f"{_where(path, line)}: column {column!r} holds {value!r}; a label must be a name or an integer id."
        )
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not text:
        raise DataError(f"{_where(path, line)}: column {column!r} is empty; every example needs a label.")
    try:
        return int(text)
    except ValueError:
        return text


def _label_names(records: list[tuple[int, dict[str, Any]]], path: str, column: str) -> list[str]:
    keys = {
        _label_key(path, line, _field(path, line, r, column, "label_column"), column) for line, r in records
    }
    if all(isinstance(k, int) for k in keys):
        negative = sorted(k for k in keys if k < 0)
        if negative:
            raise DataError(f"{path}: integer labels are ids and must be >= 0; found {negative[0]}.")
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
        example = {"text": _string(path, line, _field(path, line, record, text_col, "text_column"), text_col)}
        if pair_col is not None:
            pair = _field(path, line, record, pair_col, "text_pair_column")
            example["text_pair"] = _string(path, line, pair, pair_col)
        key = str(_label_key(path, line, _field(path, line, record, label_col, "label_column"), label_col))
        if key not in label_ids:
            raise DataError(
                f"{_where(path, line)}: label {key!r} (column {label_col!r}) is not one of the training "
                f"labels {labels}."
            )
        example["label"] = label_ids[key]
        examples.append(example)
    return examples


# -- qa ---------------------------------------------------------------------------------------------


def _qa_examples(path: str, settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    fmt = _file_format(path, settings, "qa")
    text = _read_text(path)
    if fmt == "jsonl":
        records = [(line, record) for line, record in _read_jsonl(path, text)]
        examples = [_qa_example(path, line, record, settings) for line, record in records]
    else:
        examples = _squad_examples(path, _load_json(path, text), settings)
    if not examples:
        raise DataError(f"Data file {path} has no questions.")
    ids: dict[str, int] = {}
    for index, example in enumerate(examples):
        if example["id"] in ids:
            raise DataError(f"{path}: question id {example['id']!r} appears twice; ids must be unique.")
        ids[example["id"]] = index
    return examples


def _squad_examples(path: str, data: Any, settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    """SQuAD's nesting; a flat JSON list of question records is read like JSONL."""
    if isinstance(data, list):
        return [_qa_example(path, f"record {i + 1}", r, settings) for i, r in enumerate(data)]
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise DataError(
            f"{path}: expected SQuAD format {{'data': [{{'paragraphs': [{{'context': ..., 'qas': [...]}}]}}]}}"
            " or a list of question records."
        )
    examples = []
    for a, article in enumerate(data["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if paragraphs is None and isinstance(article, dict) and settings["question_column"] in article:
            examples.append(_qa_example(path, f"data[{a}]", article, settings))  # {"data": [records]}
            continue
        if not isinstance(paragraphs, list):
            raise DataError(f"{path}, data[{a}]: expected an object with a 'paragraphs' list.")
        for p, paragraph in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                raise DataError(f"{path}, {where}: expected an object with 'context' and a 'qas' list.")
            context = _string(
                path, where, _field(path, where, paragraph, "context", "context_column"), "context"
            )
            for q, qa in enumerate(paragraph["qas"]):
                if not isinstance(qa, dict):
                    raise DataError(f"{path}, {where}.qas[{q}]: expected an object.")
                record = {settings["id_column"]: f"{a}-{p}-{q}", **qa, settings["context_column"]: context}
                examples.append(_qa_example(path, f"{where}.qas[{q}]", record, settings))
    return examples


def _qa_example(path: str, line: int | str, record: Any, settings: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise DataError(f"{_where(path, line)}: expected a JSON object, found {type(record).__name__}.")
    q_col, c_col, a_col = settings["question_column"], settings["context_column"], settings["answers_column"]
    question = _string(path, line, _field(path, line, record, q_col, "question_column"), q_col)
    context = _string(path, line, _field(path, line, record, c_col, "context_column"), c_col)
    answers = _answers(path, line, _field(path, line, record, a_col, "answers_column"), a_col)
    for text, start in zip(answers["text"], answers["answer_start"]):
        if context[start : start + len(text)] != text:
            raise DataError(
                f"{_where(path, line)}: answer {text!r} is not at answer_start={start} of the context "
                f"(found {context[start : start + len(text)]!r} there)."
            )
    default_id = str(line) if isinstance(line, int) else line
    return {
        "id": str(record.get(settings["id_column"], default_id)),
        "question": question,
        "context": context,
        "answers": answers,
    }


def _answers(path: str, line: int | str, value: Any, column: str) -> dict[str, list]:
    """SQuAD's `[{"text", "answer_start"}]` or datasets' `{"text": [...], "answer_start": [...]}`."""
    where = _where(path, line)
    if isinstance(value, dict) and "text" in value and "answer_start" in value:
        texts, starts = value["text"], value["answer_start"]
        if isinstance(texts, str):
            texts, starts = [texts], [starts]
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise DataError(
                f"{where}: column {column!r} needs lists 'text' and 'answer_start' of the same length."
            )
    elif isinstance(value, list):
        texts, starts = [], []
        for item in value:
            if not isinstance(item, dict) or "text" not in item or "answer_start" not in item:
                raise DataError(f"{where}: each answer in column {column!r} needs 'text' and 'answer_start'.")
            texts.append(item["text"])
            starts.append(item["answer_start"])
    else:
        raise DataError(
            f"{where}: column {column!r} should be a list of {{'text', 'answer_start'}} or "
            f"{{'text': [...], 'answer_start': [...]}}, found {value!r}."
        )
    for text, start in zip(texts, starts):
        if not isinstance(text, str) or not text:
            raise DataError(f"{where}: answer text {text!r} in column {column!r} must be a non-empty string.")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise DataError(f"{where}: answer_start {start!r} in column {column!r} must be an integer >= 0.")
    return {"text": list(texts), "answer_start": list(starts)}


# -- causal_lm --------------------------------------------------------------------------------------


def _text_examples(path: str, settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    fmt = _file_format(path, settings, "causal_lm")
    text = _read_text(path)
    if fmt == "jsonl":
        column = settings["text_column"]
        examples = []
        for line, record in _read_jsonl(path, text):
            value = _string(path, line, _field(path, line, record, column, "text_column"), column)
            if value.strip():
                examples.append({"text": value})
    else:
        examples = [{"text": block} for block in _blocks(text)]
    if not examples:
        raise DataError(f"Data file {path} has no text.")
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
