"""Tokenise once: encoded splits cached on disk, reused by the next run and every trial of a sweep.

`encode_splits` looks the splits up under a key, a hash of everything the rows depend on:

- the examples of both splits (their content: the same data under another path or from another source
  hits, and an edit that keeps a file's size and modification time still misses), and the label names;
- the head (its name and the source of the file that defines it, so a change to its encoding misses);
- the head's data settings and `max_length` (the keys that only say how data is read or cached, such as
  `data.num_proc`, are left out);
- the tokenizer (its `tokenizer.json` and its config: special tokens, input names, ...).

A hit loads the rows without calling `head.encode`; a miss encodes (with `data.num_proc` processes) and
writes the entry atomically (`factory.checkpoints.atomic`), so a killed run or two trials writing the same
entry never leave half a file.

The cache is often on a shared disk, so an entry is data that cannot run code when it is read (arrays and
JSON, `factory.data.entry`), checked by a SHA-256: a file at an entry's path that is not a valid entry (a
planted pickle, one byte changed) is dropped with a warning naming it, and the splits are encoded again.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import multiprocessing
import os
import pickle
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from factory.contract.task import DataSplits, Encoded, TaskData
from factory.data.entry import FORMAT, EntryError, Unstorable, read_entry, write_entry

logger = logging.getLogger(__name__)

SUFFIX = ".encoded"  # an entry's file is `<cache dir>/<head>/<key>.encoded`
# Settings that name where the examples came from: their content is hashed instead.
_SOURCE_KEYS = ("train_file", "validation_file", "path", "name", "revision", "format")


def default_cache_dir() -> Path:
    """`<HF datasets cache>/factory_encoded`.

    Next to the datasets cache rather than in a cache of our own: clusters already point
    `HF_DATASETS_CACHE` (or `HF_HOME`) at a large shared disk, and encoded splits are as large as the
    arrow files they come from. Resolved as `datasets` resolves it, without importing `datasets`.
    """
    if os.environ.get("HF_DATASETS_CACHE"):
        root = Path(os.environ["HF_DATASETS_CACHE"])
    elif os.environ.get("HF_HOME"):
        root = Path(os.environ["HF_HOME"]) / "datasets"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = Path(xdg) / "huggingface" / "datasets"
    return root.expanduser() / "factory_encoded"


def tokenizer_digest(tokenizer: Any) -> str | None:
    """A hash of the tokenizer's `tokenizer.json` and config; None when it cannot be read (no caching).

    Equal for a tokenizer and the same one saved and loaded again (a resumed run reloads the tokenizer
    its first run trained): the config is the one `save_pretrained` writes, with the values a tokenizer
    takes by default written out, and floats are compared to 12 significant digits, because `tokenizers`
    reads a Unigram model's scores back a unit in the last place off.
    """
    backend = getattr(tokenizer, "_backend", None) or getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        return None
    backend_json = json.loads(backend.to_str(), parse_float=lambda s: float(f"{float(s):.12g}"))
    # Without the per-call padding and truncation a call leaves on the backend: not what it encodes to.
    content = {k: v for k, v in backend_json.items() if k not in ("padding", "truncation")}
    h = hashlib.sha256(json.dumps(content, sort_keys=True).encode())
    if hasattr(tokenizer, "saved_config"):  # factory's Tokenizer
        extra: dict[str, Any] = {"config": tokenizer.saved_config()}
    else:  # a transformers tokenizer
        extra = {
            "config": getattr(tokenizer, "init_kwargs", {}),
            "special": getattr(tokenizer, "_special_tokens", None),
            "inputs": list(getattr(tokenizer, "model_input_names", ())),
            "sides": [getattr(tokenizer, "padding_side", None), getattr(tokenizer, "truncation_side", None)],
        }
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _examples_digest(h: Any, examples: Sequence[Any], chunk: int = 4096) -> None:
    # A pickle without its memo (`fast` mode): by default pickle writes an object it meets twice once and
    # refers back to it, so equal examples whose strings happen to be shared objects (one label string in
    # every example, the keys of dicts read from one JSON document) gave other bytes and another key.
    # Without the memo the bytes follow the content alone, and pickling is about 4x faster. (Examples
    # hold no cycles, which fast mode refuses with a ValueError.) Streamed into the hash, in chunks.
    h.update(str(len(examples)).encode())
    pickler = pickle.Pickler(_Hashing(h), protocol=4)
    pickler.fast = True
    for i in range(0, len(examples), chunk):
        pickler.dump(list(examples[i : i + chunk]))


class _Hashing:
    """A file that hashes what is written to it."""

    def __init__(self, h: Any):
        self.write = h.update


def _head_digest(head: TaskData) -> str:
    try:
        source = Path(inspect.getsourcefile(type(head)) or "").read_bytes()
    except (OSError, TypeError):
        source = type(head).__qualname__.encode()  # defined interactively: the name is all there is
    return hashlib.sha256(source).hexdigest()


def cache_key(head: TaskData, splits: DataSplits, settings: Mapping[str, Any], tokenizer: Any) -> str | None:
    """The entry's name for these splits, settings and tokenizer; None when the tokenizer has no digest."""
    from factory.data.files import PIPELINE_ONLY

    tok = tokenizer_digest(tokenizer)
    if tok is None:
        return None
    kept = {k: v for k, v in settings.items() if k not in PIPELINE_ONLY and k not in _SOURCE_KEYS}
    h = hashlib.sha256()
    for part in (FORMAT, head.name, _head_digest(head), tok, json.dumps(kept, sort_keys=True, default=str)):
        h.update(part.encode())
        h.update(b"\0")
    try:
        h.update(json.dumps(splits.labels).encode())
        _examples_digest(h, splits.train)
        _examples_digest(h, splits.validation)
    except (TypeError, ValueError, pickle.PicklingError) as e:  # an example of a type pickle refuses
        logger.warning("Not caching the encoded %s data: its examples cannot be hashed (%s).", head.name, e)
        return None
    return h.hexdigest()


def encode_splits(
    head: TaskData, tokenizer: Any, splits: DataSplits, settings: Mapping[str, Any]
) -> tuple[Encoded, Encoded]:
    """`(train, validation)` encoded by `head`, from the cache when an entry matches.

    `settings` are the head's data settings with `max_length`; `cache` (false: neither read nor write),
    `cache_dir` (None: `default_cache_dir()`) and `num_proc` say how.
    """
    key = cache_key(head, splits, settings, tokenizer) if settings.get("cache", True) else None
    path = None
    if key is not None:
        path = Path(settings.get("cache_dir") or default_cache_dir()) / head.name / f"{key}{SUFFIX}"
        hit = _read(path, key)
        if hit is not None:
            logger.info("Encoded %s data from the cache: %s", head.name, path)
            return hit
    started = time.perf_counter()
    with parallel(tokenizer, _num_proc(settings)) as tok:
        train = head.encode(tok, splits.train, settings, train=True)
        validation = head.encode(tok, splits.validation, settings, train=False)
    logger.info("Encoded %s data in %.1f s", head.name, time.perf_counter() - started)
    if path is not None:
        _write(path, key, (train, validation))
    return train, validation


def _num_proc(settings: Mapping[str, Any]) -> int:
    from factory.data.files import DataError

    n = settings.get("num_proc", 1)
    n = 1 if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise DataError(f"data.num_proc={n!r} is not valid: expected a positive integer.")
    return n


def _read(path: Path, key: str) -> tuple[Encoded, Encoded] | None:
    """The entry at `path`, or None: a miss, or a file that is not a valid entry (dropped, with a warning)."""
    if not path.is_file():
        return None
    try:
        splits = read_entry(path, key)
        if len(splits) != 2:
            raise EntryError(f"{len(splits)} splits instead of 2")
        return splits[0], splits[1]
    except (EntryError, OSError) as e:
        logger.warning("Dropping the encoded-data cache entry %s: %s. Encoding again.", path, e)
        with contextlib.suppress(OSError):
            path.unlink()
        return None


def _write(path: Path, key: str, encoded: tuple[Encoded, Encoded]) -> None:
    try:
        write_entry(path, key, encoded)
        logger.info("Cached the encoded data in %s", path)
    except Unstorable as e:  # a head's own state type: the run goes on, encoding at every start
        logger.warning("Not caching the encoded %s data: it holds %s.", path.parent.name, e)
    except OSError as e:  # a read-only or full cache disk costs the next run time, not this run
        logger.warning("Could not write the encoded-data cache %s (%s).", path, e)


# ---- parallel tokenisation -----------------------------------------------------------------------------

_WORKER_TOKENIZER: Any = None  # the tokenizer as forked into each pool process


def _tokenize(args: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
    texts, kwargs = args
    return _WORKER_TOKENIZER(*texts, **kwargs)


class ParallelTokenizer:
    """`tokenizer` whose batch calls are split over a process pool, the parts joined in order.

    A call returns what the tokenizer returns for the whole batch (each text is encoded on its own; the
    windows' `overflow_to_sample_mapping` is shifted to the whole batch), so rows are identical to one
    process's. Everything else is the wrapped tokenizer's.
    """

    def __init__(self, tokenizer: Any, pool: Any, num_proc: int):
        self._tokenizer, self._pool, self._num_proc = tokenizer, pool, num_proc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)

    def __call__(self, text: Any, text_pair: Any = None, **kwargs: Any) -> Any:
        n = len(text) if isinstance(text, list) else 0
        if n < 2 * self._num_proc or kwargs.get("padding") or kwargs.get("return_tensors"):
            return self._tokenizer(text, text_pair, **kwargs)  # small, or padding across the batch
        step = -(-n // self._num_proc)
        starts = list(range(0, n, step))
        parts = [
            ((text[s : s + step], None if text_pair is None else text_pair[s : s + step]), kwargs)
            for s in starts
        ]
        results = self._pool.map(_tokenize, parts)
        from factory.tokenizers.tokenizer import BatchEncoding

        data: dict[str, list] = {k: [] for k in results[0]}
        encodings: list | None = [] if results[0].encodings is not None else None
        for start, result in zip(starts, results):
            for key, value in result.items():
                if key == "overflow_to_sample_mapping":
                    value = [start + i for i in value]
                data[key].extend(value)
            if encodings is not None:
                encodings.extend(result.encodings)
        return BatchEncoding(data, encodings)


class parallel:  # noqa: N801 (used as a context manager, like `open`)
    """`with parallel(tokenizer, n) as tok:` a `ParallelTokenizer` over `n` forked processes (the
    tokenizer itself when `n` is 1, or where processes cannot be forked)."""

    def __init__(self, tokenizer: Any, num_proc: int):
        self.tokenizer, self.num_proc, self.pool = tokenizer, num_proc, None

    def __enter__(self) -> Any:
        global _WORKER_TOKENIZER
        if self.num_proc <= 1:
            return self.tokenizer
        if "fork" not in multiprocessing.get_all_start_methods():
            logger.warning("data.num_proc=%d needs fork(); tokenising in one process.", self.num_proc)
            return self.tokenizer
        _WORKER_TOKENIZER = self.tokenizer  # inherited by the forked workers, never pickled
        self.pool = multiprocessing.get_context("fork").Pool(self.num_proc)
        return ParallelTokenizer(self.tokenizer, self.pool, self.num_proc)

    def __exit__(self, *exc: Any) -> None:
        global _WORKER_TOKENIZER
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
        _WORKER_TOKENIZER = None
