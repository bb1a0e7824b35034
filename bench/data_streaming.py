"""Data at scale through train.py: a stream larger than memory, and the start-up a cached run saves.

    python bench/data_streaming.py stream [--gb 2] [--steps 50]   # time to the first step, peak RSS
    python bench/data_streaming.py cache [--rows 200000]         # start-up of a second run vs the first

`stream` writes a text file of `--gb` GB (documents of random words) in a temporary folder and runs
`train.py head=causal_lm data.streaming=true` on it with a small GPT-2 for `--steps` steps; it prints the
seconds from the process start to the first training step and to the end, and the run's peak resident
memory (the child's `ru_maxrss`). Goals: first step within 30 s, peak RSS under 1.5 GB.

`cache` saves a seqcls dataset of `--rows` rows with `save_to_disk`, then runs `train.py data.path=<it>`
twice with the same fresh cache folder: the first run tokenises and writes the cache, the second reads it.
It prints both runs' seconds to the first training step. No `transformers` side: this is our own pipeline.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _common as common

TINY = [
    "arch=gpt2",
    "arch.num_hidden_layers=2",
    "arch.hidden_size=64",
    "arch.num_attention_heads=2",
    "arch.vocab_size=2000",
    "data.max_length=128",
    "data.batch_size=8",
    "trainer.log_every_n_steps=1",
    "trainer.accelerator=cpu",
]
FIRST_STEP = "BENCH first optimizer step done"  # what _first_step.FirstStep prints
# Log lines that end the phases of a start-up: data read, tokenizer trained, splits encoded.
MILESTONES = {
    "read": "Loaded seqcls data",
    "tokenizer": "Trained a tokenizer of",
    "encoded": "Encoded seqcls data:",
}


def write_text(path: Path, gigabytes: float, seed: int = 0) -> None:
    """Documents of 20-200 random words from a 5,000-word vocabulary, blank-line separated. A 64 MB block
    is drawn once and written again with its documents shuffled, so the file is written at disk speed."""
    rng = random.Random(seed)
    vocab = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(5000)
    ]
    docs = []
    size = 0
    while size < min(64 * 2**20, gigabytes * 2**30):
        doc = " ".join(rng.choice(vocab) for _ in range(rng.randint(20, 200))) + "\n\n"
        docs.append(doc)
        size += len(doc)
    target = int(gigabytes * 2**30)
    with open(path, "w", encoding="utf-8") as f:
        while f.tell() < target:
            rng.shuffle(docs)
            block = "".join(docs)
            f.write(block[: max(0, target - f.tell())].rpartition("\n\n")[0] + "\n\n")


def run_train(overrides: list[str], cwd: Path) -> dict[str, float]:
    """train.py with `overrides` in a fresh process: seconds to the first step and to the end, peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(common.ROOT / "train.py"),
            *overrides,
            "+callbacks.first_step._target_=_first_step.FirstStep",
        ],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(common.ROOT / "bench"), str(common.ROOT)])},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    first: list[float] = []
    tail: list[str] = []
    hit: list[bool] = []
    seen: dict[str, float] = {}

    def watch() -> None:
        for line in proc.stdout:
            tail.append(line)
            del tail[:-40]
            if "from the cache" in line:
                hit.append(True)
            for name, mark in MILESTONES.items():
                if name not in seen and mark in line:
                    seen[name] = time.perf_counter() - started
            if not first and FIRST_STEP in line:
                first.append(time.perf_counter() - started)

    reader = threading.Thread(target=watch)
    reader.start()
    proc.wait()
    reader.join()
    total = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write("".join(tail))
        raise SystemExit(f"train.py failed with status {proc.returncode}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "first_step_s": first[0] if first else float("nan"),
        "total_s": total,
        # ru_maxrss is the largest child's so far, in KiB: a run below an earlier child's peak reads as it.
        "peak_rss_gib": max(peak, before) / 2**20,
        "cache_hit": float(bool(hit)),
        **{f"{name}_s": seen.get(name, float("nan")) for name in MILESTONES},
    }


def stream(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        big, validation = tmp / "train.txt", tmp / "validation.txt"
        t = time.perf_counter()
        write_text(big, args.gb)
        write_text(validation, 0.0001, seed=1)
        print(f"wrote {big.stat().st_size / 2**30:.2f} GiB in {time.perf_counter() - t:.0f} s")
        with common.OtherLoad() as load:
            figures = run_train(
                [
                    "head=causal_lm",
                    *TINY,
                    f"data.train_file={big}",
                    f"data.validation_file={validation}",
                    "data.streaming=true",
                    f"trainer.max_steps={args.steps}",
                    f"trainer.val_check_interval={args.steps}",
                    "trainer.limit_val_batches=10",
                    f"hydra.run.dir={tmp / 'run'}",
                ],
                tmp,
            )
        print(
            f"streaming {big.stat().st_size / 2**30:.2f} GiB: first step after {figures['first_step_s']:.1f} s "
            f"(goal <= 30), {args.steps} steps done after {figures['total_s']:.1f} s, peak RSS "
            f"{figures['peak_rss_gib']:.2f} GiB (goal < 1.5)"
        )
        print(load.note())


def cache(args: argparse.Namespace) -> None:
    import datasets

    rng = random.Random(0)
    words = "good bad great dull fine awful lovely boring superb weak film plot acting story".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(10, 60))) for _ in range(args.rows)]
    labels = [int("good" in t) for t in texts]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ds = datasets.Dataset.from_dict({"text": texts, "label": labels})
        split = ds.train_test_split(test_size=0.05, seed=0)
        datasets.DatasetDict({"train": split["train"], "validation": split["test"]}).save_to_disk(
            str(tmp / "data")
        )
        runs = []
        with common.OtherLoad() as load:
            for i in range(2):
                runs.append(
                    run_train(
                        [
                            "head=seqcls",
                            *[o for o in TINY if not o.startswith("data.max_length")],
                            "data.max_length=64",
                            f"data.path={tmp / 'data'}",
                            f"data.cache_dir={tmp / 'cache'}",
                            "trainer.max_steps=2",
                            "trainer.val_check_interval=2",
                            "trainer.limit_val_batches=2",
                            f"hydra.run.dir={tmp / f'run{i}'}",
                        ],
                        tmp,
                    )
                )
        a, b = runs
        print(
            f"{args.rows} rows: first run's first step after {a['first_step_s']:.1f} s (tokenised, cached), "
            f"second run's after {b['first_step_s']:.1f} s (cache hit: {bool(b['cache_hit'])}); "
            f"ratio {b['first_step_s'] / a['first_step_s']:.2f}"
        )
        for name, run in zip(("first", "second"), runs):
            print(
                f"  {name} run, seconds from start: data read {run['read_s']:.1f}, tokenizer trained "
                f"{run['tokenizer_s']:.1f}, splits encoded {run['encoded_s']:.1f}, first step {run['first_step_s']:.1f}"
            )
        print(load.note())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("stream")
    s.add_argument("--gb", type=float, default=2.0)
    s.add_argument("--steps", type=int, default=50)
    c = sub.add_parser("cache")
    c.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args(argv)
    {"stream": stream, "cache": cache}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
