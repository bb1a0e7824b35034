"""Hugging Face `datasets` as a data source: hub ids, `save_to_disk` folders, parquet/JSON/CSV files.

`data.path` names the source; every head reads it unchanged. A split of a loaded dataset is handed to the
head's `read()` as a `DatasetSplit`: a `str` (the name errors print, such as `imdb (split 'train')`) that
the readers of `factory.data.files` recognise and answer with the split's rows as records, the way they
answer a JSONL file with its lines. So a head's checks and messages hold for datasets too, with the row
index where a file would have its line: `imdb (split 'train'), row 12: no column 'txt' (data.text_column);
the columns are ['label', 'text']`.

`datasets` is imported only when `data.path` is set: runs over local files never pay for it.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

logger = logging.getLogger(__name__)

# File extensions `data.path` may name directly, and the `datasets` builder that reads each.
BUILDERS = {
    ".parquet": "parquet",
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "text",
    ".arrow": "arrow",
}
# What `save_to_disk` writes: a DatasetDict's folder has the first, a Dataset's the second.
_SAVED_MARKERS = ("dataset_dict.json", "state.json")


class DatasetSplit(str):
    """One split of a `datasets` dataset, standing where a head expects a file path.

    The string is what messages print (`<source> (split '<split>')`); `records()` gives the rows as
    `(where, record)` pairs like the file readers' `(line, record)`, with class labels as their names.
    """

    dataset: Any
    source: str
    split: str

    def __new__(cls, dataset: Any, source: str, split: str) -> DatasetSplit:
        self = super().__new__(cls, f"{source} (split {split!r})")
        self.dataset, self.source, self.split = dataset, source, split
        return self

    def __reduce__(self) -> tuple[Any, ...]:  # pickling (DataLoader workers) keeps the dataset
        return (DatasetSplit, (self.dataset, self.source, self.split))

    def records(self) -> list[tuple[str, dict[str, Any]]]:
        """Every row as `("row <i>", record)`; class-label ids become their names (CoNLL's tags...)."""
        from factory.contract.errors import DataError

        rows = getattr(self, "_rows", None)  # read once: a head may read one split as both
        if rows is None:
            rows = [(f"row {i}", record) for i, record in enumerate(iter_records(self.dataset))]
            self._rows = rows
        if not rows:
            raise DataError(f"{self} has no rows.")
        return rows


def iter_records(dataset: Any) -> Iterator[dict[str, Any]]:
    """The rows of a `Dataset` or `IterableDataset` as plain dicts, class-label ids as their names."""
    decode = _label_decoders(getattr(dataset, "features", None))
    for record in _rows(dataset):
        for column, names in decode.items():
            value = record.get(column)
            if isinstance(value, list):
                record[column] = [_name(names, v) for v in value]
            elif value is not None:
                record[column] = _name(names, value)
        yield record


def _rows(dataset: Any, batch: int = 1000) -> Iterator[dict[str, Any]]:
    """Rows as dicts; a `Dataset` is read a batch of columns at a time (several times faster than its
    row iterator, which decodes each row on its own)."""
    if not hasattr(dataset, "iter") or not hasattr(dataset, "column_names"):
        yield from dataset  # a list of records, an IterableDataset
        return
    columns = dataset.column_names
    for block in dataset.iter(batch_size=batch):
        for values in zip(*(block[c] for c in columns)):
            yield dict(zip(columns, values))


def _name(names: list[str], value: Any) -> Any:
    # -1 is datasets' "no label" (a test split's); left as it is, the head reports it.
    return names[value] if isinstance(value, int) and 0 <= value < len(names) else value


def _label_decoders(features: Any) -> dict[str, list[str]]:
    """The columns holding class labels (or lists of them) and their names."""
    if not features:
        return {}
    import datasets

    decoders = {}
    for column, feature in features.items():
        inner = getattr(feature, "feature", None)  # List/Sequence of ClassLabel: token tags
        if isinstance(feature, datasets.ClassLabel):
            decoders[column] = list(feature.names)
        elif isinstance(inner, datasets.ClassLabel):
            decoders[column] = list(inner.names)
    return decoders


# ---- resolving data.path ----------------------------------------------------------------------------


def source_kind(path: str) -> str:
    """How `data.path` is read: `saved` (a `save_to_disk` folder), `files` (files or a glob),
    `folder` (a folder of data files, splits from their names), `hub` (a hub dataset id), or `missing`
    (a local path that does not exist)."""
    if os.path.isdir(path):
        if any(os.path.isfile(os.path.join(path, m)) for m in _SAVED_MARKERS):
            return "saved"
        return "folder"
    if os.path.isfile(path) or glob.has_magic(path):
        return "files"
    if (
        path.startswith(("/", "./", "../", "~"))
        or path.count("/") > 1
        or os.path.splitext(path)[1] in BUILDERS
    ):
        return "missing"  # a local path by its look: a hub id is `name` or `namespace/name`
    return "hub"


def _builder(path: str) -> str:
    from factory.contract.errors import DataError

    suffix = os.path.splitext(path)[1].lower()
    if suffix not in BUILDERS:
        raise DataError(
            f"data.path={path!r}: cannot tell how to read a {suffix or 'extensionless'!r} file; "
            f"valid extensions: {sorted(BUILDERS)}."
        )
    if glob.has_magic(path) and not glob.glob(path):
        raise DataError(f"data.path={path!r} matches no file.")
    return BUILDERS[suffix]


def load(settings: Mapping[str, Any], streaming: bool = False) -> dict[str, Any]:
    """The splits of `data.path` by name: `Dataset`s, or `IterableDataset`s when `streaming`.

    Raises:
        DataError: an unreadable source, a hub id that is neither cached nor reachable (named, with the
            cache it looked in), a config name missing or unknown.
    """
    from factory.contract.errors import DataError

    path, name, revision = settings["path"], settings.get("name"), settings.get("revision")
    kind = source_kind(path)
    if kind == "missing":
        raise DataError(
            f"data.path={path!r} does not exist (a local path: a hub id is 'name' or 'namespace/name')."
        )
    import datasets

    try:
        if kind == "saved":
            loaded = datasets.load_from_disk(path)
            if streaming:
                loaded = _to_iterable(loaded)
        elif kind == "files":
            kwargs = {"delimiter": "\t"} if path.lower().endswith(".tsv") else {}
            loaded = datasets.load_dataset(_builder(path), data_files=path, streaming=streaming, **kwargs)
        else:  # a folder of data files, or a hub id through the hub cache
            if kind == "hub" and _offline() and not _cached(path):
                raise DataError(
                    f"data.path={path!r}: HF_HUB_OFFLINE is set and this dataset is not in the datasets cache "
                    f"{datasets.config.HF_DATASETS_CACHE}: run once with network access to cache it, or set "
                    "data.path to a local copy (a save_to_disk folder or its data files)."
                )
            loaded = datasets.load_dataset(path, name, revision=revision, streaming=streaming)
    except DataError:
        raise
    except (ConnectionError, FileNotFoundError) as e:
        where = datasets.config.HF_DATASETS_CACHE
        hint = (
            f"HF_HUB_OFFLINE is set and it is not in the datasets cache {where}: run once online to cache it"
            if _offline()
            else f"it is neither a local path nor reachable on the hub (cache: {where})"
        )
        raise DataError(f"data.path={path!r}: cannot load this dataset; {hint}. ({e})") from None
    except ValueError as e:  # a config name missing or unknown: datasets' message lists the configs
        raise DataError(f"data.path={path!r}, data.name={name!r}: {e}") from None
    if not isinstance(loaded, Mapping):  # a saved single Dataset: its one split is `train`
        loaded = {"train": loaded}
    logger.info("Loaded dataset %s (%s): splits %s", path, kind, list(loaded))
    return dict(loaded)


def _offline() -> bool:
    # Read at call time: `datasets` reads the variable once, when it is first imported.
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _cached(repo_id: str) -> bool:
    """Whether `datasets` holds a prepared copy of hub dataset `repo_id` (where its offline mode looks:
    `<HF_DATASETS_CACHE>/<namespace>___<name>/<config>/<version>/<hash>`); checked first, so an offline
    run without it fails at once instead of after the hub client's retries."""
    import datasets
    from datasets.naming import camelcase_to_snakecase

    parts = repo_id.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    root = os.path.join(os.path.expanduser(str(datasets.config.HF_DATASETS_CACHE)), "___".join(parts))
    return any(os.path.isdir(p) for p in glob.glob(os.path.join(glob.escape(root), "*", "*", "*")))


def _to_iterable(loaded: Any) -> Any:
    if isinstance(loaded, Mapping):
        return {k: v.to_iterable_dataset() for k, v in loaded.items()}
    return loaded.to_iterable_dataset()


def select_split(splits: Mapping[str, Any], key: str, settings: Mapping[str, Any], hint: str = "") -> Any:
    """`splits[data.<key>]`, or a DataError naming the split asked for and the splits there are."""
    from factory.contract.errors import DataError

    wanted = settings[key]
    if wanted not in splits:
        raise DataError(
            f"data.path={settings['path']!r} has no split {wanted!r} (data.{key}); its splits are "
            f"{sorted(splits)}.{hint}"
        )
    return splits[wanted]
