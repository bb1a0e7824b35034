# python -m pytest -q tests/test_data_cache.py
"""The encoded-data cache's entries: never code (a planted pickle is not run, a changed byte is caught and
the splits encoded again), every head's rows, state and examples back as they were encoded, and the key
of a second run or a resumed one equal to the first's (the same examples and the same tokenizer, saved
and loaded again, hit the entry the first run wrote)."""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from factory.data import cache
from factory.data.entry import LazyRows
from factory.data.files import default_data_files, settings_of, texts_for_tokenizer
from factory.data.module import FactoryDataModule
from factory.data.sources import load_examples
from factory.registry import get_head, trainable_heads
from factory.tokenizers.tokenizer import AutoTokenizer
from factory.tokenizers.training import train_tokenizer
from tests.helpers import TINY_RUN

REPO = Path(__file__).resolve().parent.parent
# The tokenizer each head's data is encoded with here: its usual architecture's kind.
ARCH = {"causal_lm": "gpt2", "seq2seq_lm": "t5"}


def head_data(name: str, train: int = 120, validation: int = 30):
    """A head, a slice of its shipped examples and a tokenizer trained on them."""
    head = get_head(name)
    splits = load_examples(head, {})
    splits.train, splits.validation = splits.train[:train], splits.validation[:validation]
    tok = train_tokenizer(ARCH.get(name, "bert"), texts_for_tokenizer(head, splits), 300, model_max_length=64)
    return head, splits, tok


def settings(head, folder: Path, **more) -> dict:
    return {**settings_of(head, {"cache_dir": str(folder), **more}), "max_length": 64}


def count_encodes(monkeypatch, head) -> list[int]:
    calls: list[int] = []
    original = type(head).encode

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(head), "encode", counted)
    return calls


def entry_of(folder: Path) -> Path:
    """The one entry the cache holds under `folder`."""
    (path,) = [p for p in folder.rglob("*") if p.is_file()]
    return path


def exact(encoded) -> str:
    """Rows, state and examples as text that tells a tuple from a list and a bool from an int."""
    return repr((list(encoded.rows), encoded.state, encoded.examples))


@pytest.fixture(scope="module")
def seqcls():
    return head_data("seqcls")


# ---- never code ---------------------------------------------------------------------------------------


class Planted:
    """A pickle that, when loaded, creates a marker file: what a planted entry could do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def planted_files(tmp_path: Path, valid: bytes) -> dict[str, bytes]:
    marker = tmp_path / "ran"
    return {
        "pickle": pickle.dumps({"format": "factory-encoded-1", "train": Planted(marker)}, protocol=4),
        "empty": b"",
        "truncated": valid[: len(valid) // 2],
        "garbage": os.urandom(4096),
    }


@pytest.mark.parametrize("kind", ["pickle", "empty", "truncated", "garbage"])
def test_a_file_that_is_not_an_entry_is_never_loaded(kind, seqcls, tmp_path, monkeypatch, caplog):
    head, splits, tok = seqcls
    folder = tmp_path / "cache"
    fresh = cache.encode_splits(head, tok, splits, settings(head, folder))
    path = entry_of(folder)
    assert not path.read_bytes().startswith(b"\x80")  # the cache writes no pickle
    path.write_bytes(planted_files(tmp_path, path.read_bytes())[kind])
    calls = count_encodes(monkeypatch, head)
    caplog.set_level(logging.WARNING, logger="factory.data.cache")
    again = cache.encode_splits(head, tok, splits, settings(head, folder))
    assert not (tmp_path / "ran").exists()  # the pickle's code never ran
    assert str(path) in caplog.text and "Encoding again" in caplog.text
    assert len(calls) == 2 and [exact(e) for e in again] == [exact(e) for e in fresh]
    caplog.clear()
    hit = cache.encode_splits(head, tok, splits, settings(head, folder))  # rewritten: a valid entry again
    assert len(calls) == 2 and not caplog.text and [exact(e) for e in hit] == [exact(e) for e in fresh]


@pytest.mark.parametrize("where", [0.01, 0.5, 0.99])  # the header, the arrays, the last array
def test_one_changed_byte_is_dropped_and_encoded_again(where, seqcls, tmp_path, monkeypatch, caplog):
    head, splits, tok = seqcls
    folder = tmp_path / "cache"
    fresh = cache.encode_splits(head, tok, splits, settings(head, folder))
    path = entry_of(folder)
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    path.write_bytes(bytes(data))
    calls = count_encodes(monkeypatch, head)
    caplog.set_level(logging.WARNING, logger="factory.data.cache")
    again = cache.encode_splits(head, tok, splits, settings(head, folder))
    assert str(path) in caplog.text and "checksum" in caplog.text
    assert len(calls) == 2 and [exact(e) for e in again] == [exact(e) for e in fresh]
    assert path.read_bytes() != bytes(data)  # rewritten


def test_an_entry_of_another_key_is_not_taken(seqcls, tmp_path, monkeypatch, caplog):
    head, splits, tok = seqcls
    folder = tmp_path / "cache"
    long, short = settings(head, folder), {**settings(head, folder), "max_length": 32}
    for s in (long, short):
        cache.encode_splits(head, tok, splits, s)
    paths = [
        folder / head.name / f"{cache.cache_key(head, splits, s, tok)}{cache.SUFFIX}" for s in (long, short)
    ]
    paths[1].write_bytes(paths[0].read_bytes())  # a valid entry, under another key's name
    calls = count_encodes(monkeypatch, head)
    caplog.set_level(logging.WARNING, logger="factory.data.cache")
    again = cache.encode_splits(head, tok, splits, short)
    assert len(calls) == 2 and str(paths[1]) in caplog.text and "another key" in caplog.text
    assert max(len(r["input_ids"]) for r in again[0].rows) <= 32


# ---- round trips --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", trainable_heads())
def test_every_head_reads_back_what_it_encoded(name, tmp_path, monkeypatch):
    head, splits, tok = head_data(name)
    folder = tmp_path / "cache"
    fresh = cache.encode_splits(head, tok, splits, settings(head, folder))
    assert not entry_of(folder).read_bytes().startswith(b"\x80")  # the cache writes no pickle
    calls = count_encodes(monkeypatch, head)
    hit = cache.encode_splits(head, tok, splits, settings(head, folder))
    assert not calls
    for back, encoded in zip(hit, fresh):
        assert exact(back) == exact(encoded)
        assert back.rows == encoded.rows and len(back.rows) == len(encoded.rows)
        if back.rows:  # what the data module and the collators index
            assert back.rows[-1] == encoded.rows[-1] and back.rows[1:3] == encoded.rows[1:3]


def test_rows_of_any_shape_round_trip(tmp_path):
    """Rows and state the shipped heads do not make: bools, floats, None, strings, deep and mixed nesting,
    ints past 32 and 64 bits, dicts with int or "$" keys, rows of differing keys."""
    from factory.contract.task import Encoded
    from factory.data.entry import read_entry, write_entry

    big = 2**40
    rows = [
        {"input_ids": list(range(i, i + 20)), "flag": i % 2 == 0, "score": i / 3, "maybe": None, "t": (i, i)}
        for i in range(40)
    ]
    state = {
        "deep": [[[[[i]]]] for i in range(20)],
        "deeper": [[[[[[i]]]]] for i in range(20)],
        "wide": [big + i for i in range(20)],
        "huge": [2**70] * 20,
        "mixed": [1, [2], (3,), "4", 5.0, True, None] * 3,
        7: {"$": "not a tag", "pairs": [(0, 0), (1, 2)] * 10},
        "empty": [[], (), {}],
        "text": "caf\u00e9 \ud800",
    }
    odd_rows = [{"a": 1}, {"b": [2]}, {"a": 1, "b": 2}]
    splits = [
        Encoded(rows, state, [{"id": "x", "answers": {"text": ["y"], "answer_start": [0]}}]),
        Encoded(odd_rows),
    ]
    write_entry(tmp_path / "e", "k", splits)
    back = read_entry(tmp_path / "e", "k")
    assert [exact(b) for b in back] == [exact(s) for s in splits]
    assert isinstance(back[0].rows, LazyRows) and back[0].rows[-1] == rows[-1]
    with pytest.raises(IndexError):
        back[0].rows[40]


# ---- the key: a second run, a resumed run ------------------------------------------------------------


def test_a_second_run_hits_with_its_own_reading_and_the_saved_tokenizer(tmp_path, monkeypatch):
    """What a second run has: the examples read again (other objects, equal content) and, when it
    resumes or loads a saved model, the tokenizer loaded from disk; its batches are the first run's."""
    head, splits, tok = head_data("seqcls", train=64, validation=16)
    tok.save_pretrained(tmp_path / "tokenizer")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    again = load_examples(head, {})
    again.train, again.validation = again.train[:64], again.validation[:16]
    # The same content, one string shared by every example or one string each (a pickle writes a shared
    # object once, so its bytes would differ).
    shared = "".join(["sha", "red"])
    splits.train = [{**e, "note": shared} for e in splits.train]
    again.train = [{**e, "note": "".join(["sha", "red"])} for e in again.train]
    assert again.train == splits.train
    assert cache.cache_key(head, splits, settings(head, tmp_path), tok) == cache.cache_key(
        head, again, settings(head, tmp_path), tok
    )
    cfg = {"cache_dir": str(tmp_path / "cache"), "group_by_length": True}
    assert cache.cache_key(head, splits, settings(head, tmp_path), tok) == cache.cache_key(
        head, again, settings(head, tmp_path), reloaded
    )
    batches = []
    calls = count_encodes(monkeypatch, head)
    for t, s in ((tok, splits), (reloaded, again)):
        dm = FactoryDataModule(head, cfg, t, batch_size=8, max_length=32, splits=s)
        dm.setup()
        batches.append([*dm.train_dataloader(), *dm.val_dataloader()])
    assert len(calls) == 2  # the second run encoded nothing
    first, second = batches
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_state_the_format_does_not_store_is_not_cached(tmp_path, caplog):
    from factory.contract.task import Encoded, TaskData

    class Odd(TaskData):
        name = "odd"

        def encode(self, tokenizer, examples, settings, train):
            return Encoded([{"input_ids": [1, 2]}], state=object())

    head, splits, tok = head_data("seqcls", train=8, validation=4)
    caplog.set_level(logging.WARNING, logger="factory.data.cache")
    train, validation = cache.encode_splits(Odd(), tok, splits, settings(head, tmp_path))
    assert train.rows == [{"input_ids": [1, 2]}]
    assert "Not caching the encoded odd data" in caplog.text and not list(tmp_path.rglob("*.*"))


@pytest.mark.slow
def test_a_resumed_run_hits_the_cache_its_first_run_wrote(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for split, path, rows in zip(("train", "validation"), default_data_files("seqcls"), (40, 16)):
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        (data / f"{split}.csv").write_text("\n".join(lines[: rows + 1]) + "\n", encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "HF_DATASETS_CACHE": str(tmp_path)}
    run = tmp_path / "run"
    first = [
        sys.executable,
        str(REPO / "train.py"),
        "arch=bert",
        "head=seqcls",
        *TINY_RUN,
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        "data.max_length=32",
        f"data.train_file={data / 'train.csv'}",
        f"data.validation_file={data / 'validation.csv'}",
        f"hydra.run.dir={run}",
    ]
    logs = []
    for cmd in (first, [sys.executable, str(REPO / "train.py"), f"resume={run}", "trainer.max_steps=6"]):
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        logs.append(proc.stdout + proc.stderr)
    assert "Cached the encoded data" in logs[0]
    assert "Encoded seqcls data from the cache" in logs[1], logs[1][-3000:]
    assert len([p for p in (tmp_path / "factory_encoded").rglob("*") if p.is_file()]) == 1
