"""The encoded-data cache's entries: the old pickle format against the arrays-and-JSON one, write and read.

    python bench/data_cache.py [--rows 190000] [--qa-examples 10000] [--rounds 3]

Two synthetic entries, as `head.encode` makes them: `seqcls`, `--rows` training rows (a tenth of that for
validation) of lognormal lengths (median ~40 tokens, at most 128) with `input_ids`, `token_type_ids`,
`attention_mask` and an int label; `qa`, `--qa-examples` examples cut into windows of up to 384 tokens,
the validation split with its state (the windows' offsets as tuples, context masks, example indices) and
its examples (strings). For each, the median of `--rounds` rounds of:

- write: the old format (a `pickle.dump` of the entry, as `factory.data.cache` wrote it before) and
  `factory.data.entry.write_entry`, both to a file through the same atomic writer;
- read: `pickle.load` against `read_entry` (checksum included; rows are built when indexed);
- read + rows: the same, then every row of both splits indexed once (what one epoch does);
- key: hashing the examples for the entry's key, a plain pickle (before) against one without its memo
  (now, so that shared strings do not change the key), seqcls only.

The entries are checked equal after reading. The pickle code lives here only, for the comparison; the
library never reads a pickle. No `transformers` side: this is our own cache.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import pickle
import random
import statistics
import string
import tempfile
import time
from pathlib import Path

import _common as common

from factory.checkpoints.atomic import atomic_write
from factory.contract.task import Encoded
from factory.data import cache
from factory.data.entry import read_entry, write_entry

WORDS = ["".join(random.Random(i).choices(string.ascii_lowercase, k=5)) for i in range(5000)]


def _length(rng: random.Random, median: float, most: int) -> int:
    return max(3, min(most, int(rng.lognormvariate(0, 0.6) * median)))


def seqcls_split(rng: random.Random, n: int) -> Encoded:
    rows = []
    for _ in range(n):
        length = _length(rng, 40, 128)
        ids = [2, *(rng.randrange(5, 30000) for _ in range(length - 2)), 3]
        rows.append(
            {
                "input_ids": ids,
                "token_type_ids": [0] * length,
                "attention_mask": [1] * length,
                "labels": rng.randrange(2),
            }
        )
    return Encoded(rows)


def qa_split(rng: random.Random, n: int, train: bool) -> Encoded:
    examples, windows = [], {k: [] for k in ("input_ids", "token_type_ids", "attention_mask")}
    extra = {k: [] for k in ("offset_mapping", "context_mask", "example_index", "start", "end")}
    for e in range(n):
        context = " ".join("".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(150))
        examples.append(
            {
                "id": f"q{e}",
                "question": "what is " + context[:20] + "?",
                "context": context,
                "answers": {"text": [context[14:20]], "answer_start": [14]},
            }
        )
        for _ in range(1 + (rng.random() < 0.2)):  # a fifth of the contexts need two windows
            length = _length(rng, 250, 384)
            windows["input_ids"].append([2, *(rng.randrange(5, 30000) for _ in range(length - 2)), 3])
            windows["token_type_ids"].append([0] * 10 + [1] * (length - 10))
            windows["attention_mask"].append([1] * length)
            extra["context_mask"].append([0] * 10 + [1] * (length - 11) + [0])
            extra["offset_mapping"].append(
                [(0, 0)] * 10 + [(7 * i, 7 * i + 6) for i in range(length - 11)] + [(0, 0)]
            )
            extra["example_index"].append(e)
            extra["start"].append(rng.randrange(length))
            extra["end"].append(rng.randrange(length))
    keys = list(windows)
    rows = [
        {
            **{k: windows[k][i] for k in keys},
            "start_positions": extra["start"][i],
            "end_positions": extra["end"][i],
        }
        for i in range(len(windows["input_ids"]))
    ]
    if train:
        return Encoded(rows)
    for i, row in enumerate(rows):
        row["window_index"] = i
    state = {
        **windows,
        "example_index": extra["example_index"],
        "offset_mapping": extra["offset_mapping"],
        "context_mask": extra["context_mask"],
        "start_positions": extra["start"],
        "end_positions": extra["end"],
    }
    return Encoded(rows, state=state, examples=examples)


# ---- the old format, kept here only to compare against ---------------------------------------------------


def old_write(path: Path, splits: tuple[Encoded, Encoded]) -> None:
    entry = {"format": "factory-encoded-1", "train": splits[0], "validation": splits[1]}

    def dump(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            pickle.dump(entry, f, protocol=pickle.HIGHEST_PROTOCOL)

    atomic_write(path, dump)


def old_read(path: Path) -> tuple[Encoded, Encoded]:
    with open(path, "rb") as f:
        entry = pickle.load(f)  # the old format: runs whatever the file names
    return entry["train"], entry["validation"]


def old_key(examples: list) -> str:
    h = hashlib.sha256()
    for i in range(0, len(examples), 4096):
        h.update(pickle.dumps(examples[i : i + 4096], protocol=4))
    return h.hexdigest()


def new_key(examples: list) -> str:
    h = hashlib.sha256()
    cache._examples_digest(h, examples)
    return h.hexdigest()


# ---- timing ---------------------------------------------------------------------------------------------


def timed(fn, *args):
    gc.collect()
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def touch(splits) -> int:
    return sum(len(row) for split in splits for row in split.rows)


def bench(name: str, splits: tuple[Encoded, Encoded], folder: Path, rounds: int) -> list[list[str]]:
    old_path, new_path = folder / f"{name}.pkl", folder / f"{name}{cache.SUFFIX}"
    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        for label, fn, args in (
            ("write old", old_write, (old_path, splits)),
            ("write new", write_entry, (new_path, "key", splits)),
        ):
            times.setdefault(label, []).append(timed(fn, *args)[0])
        seconds, old = timed(old_read, old_path)
        times.setdefault("read old", []).append(seconds)
        times.setdefault("read+rows old", []).append(seconds + timed(touch, old)[0])
        del old
        seconds, new = timed(read_entry, new_path, "key")
        times.setdefault("read new", []).append(seconds)
        times.setdefault("read+rows new", []).append(seconds + timed(touch, new)[0])
    for split, back in zip(splits, new):
        assert back.rows == split.rows and back.state == split.state and back.examples == split.examples
    sizes = f"{old_path.stat().st_size / 2**20:.0f} / {new_path.stat().st_size / 2**20:.0f} MiB"
    median = {k: statistics.median(v) for k, v in times.items()}
    table = []
    for what in ("write", "read", "read+rows"):
        old_s, new_s = median[f"{what} old"], median[f"{what} new"]
        table.append([name, what, f"{old_s:.3f}", f"{new_s:.3f}", f"{new_s / old_s:.2f}x", sizes])
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=190_000)
    parser.add_argument("--qa-examples", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(0)
    seqcls = (seqcls_split(rng, args.rows), seqcls_split(rng, args.rows // 10))
    qa = (qa_split(rng, args.qa_examples, True), qa_split(rng, args.qa_examples // 10, False))
    with common.OtherLoad() as load, tempfile.TemporaryDirectory() as tmp:
        table = bench("seqcls", seqcls, Path(tmp), args.rounds)
        table += bench("qa", qa, Path(tmp), args.rounds)
        examples = [{"text": " ".join(rng.choices(WORDS, k=30)), "label": i % 2} for i in range(args.rows)]
        old_s = statistics.median(timed(old_key, examples)[0] for _ in range(args.rounds))
        new_s = statistics.median(timed(new_key, examples)[0] for _ in range(args.rounds))
        table.append(["seqcls", "key", f"{old_s:.3f}", f"{new_s:.3f}", f"{new_s / old_s:.2f}x", ""])
    header = ["entry", "what", "old pickle s", "new s", "new / old", "file old / new"]
    print(common.table(header, table))
    print(f"seqcls: {args.rows} + {args.rows // 10} rows; qa: {len(qa[0].rows)} + {len(qa[1].rows)} windows")
    print(load.note())


if __name__ == "__main__":
    main()
