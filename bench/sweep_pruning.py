"""Pruning against none: the same Optuna sweep (seed, trials, search space) of the shipped seqcls task run
through `train.py -m hparams_search=optuna` with `hydra.sweeper.pruner=none` and with each pruner
asked for (successive_halving and median by default); prints each sweep's best validation accuracy, total training steps (the trials' `global_step` summed),
trials pruned and wall time, and the ratio of steps. Goal: the same best accuracy (within the noise of
400 validation rows) with at least 40% fewer steps.

    python bench/sweep_pruning.py [--trials 10] [--epochs 6] [--val-every 0.25] [--seed 0] [--out DIR]
        [--pruners none,successive_halving,median,percentile,hyperband] [--reduction-factor 3]
        [--model "arch.num_hidden_layers=1 arch.hidden_size=64 ..."]

The search is over the learning rate, weight decay and warmup; the model is fixed (`--model`; by
default a BERT of one layer of 64, which keeps two sweeps within half an hour on two busy CPU cores),
so every trial costs the same per step. Each validation (`--val-every` of an epoch) reports to the
pruner.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def sweep(out: Path, pruner: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable, str(REPO / "train.py"), "-m", "hparams_search=optuna",
        f"hydra.sweep.dir={out}",
        f"hydra.sweeper.n_trials={args.trials}",
        f"hydra.sweeper.sampler.seed={args.seed}",
        f"+hydra.sweeper.sampler.n_startup_trials={args.tpe_startup}",
        f"hydra.sweeper.pruner={pruner}",
        f"hydra.sweeper.pruners.median.n_startup_trials={args.median_startup}",
        f"hydra.sweeper.pruners.median.n_warmup_steps={args.warmup_steps}",
        f"hydra.sweeper.pruners.hyperband.min_resource={args.warmup_steps}",
        f"hydra.sweeper.pruners.successive_halving.min_resource={args.warmup_steps}",
        f"hydra.sweeper.pruners.successive_halving.reduction_factor={args.reduction_factor}",
        # Fixed on the command line, so they leave the search space: every trial's step costs the same.
        *args.model.split(),
        f"trainer.max_epochs={args.epochs}",
        f"trainer.val_check_interval={args.val_every}",
        "callbacks.progress_bar.refresh_rate=0",
        "callbacks.last_checkpoint.every_n_train_steps=1000",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{pruner}: train.py failed:\n{proc.stderr[-3000:]}")
    trials = []
    for record in sorted(out.glob("*/trial.json"), key=lambda p: int(p.parent.name)):
        results = json.loads((record.parent / "results.json").read_text())
        trials.append({**json.loads(record.read_text()), "global_step": results["global_step"]})
    finished = [t["objective"] for t in trials if t["status"] == "ok"]
    return {
        "pruner": pruner,
        "best": max(finished),
        "steps": sum(t["global_step"] for t in trials),
        "pruned": sum(t["status"] == "pruned" for t in trials),
        "trials": len(trials),
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument(
        "--model",
        default="arch.num_hidden_layers=1 arch.hidden_size=64 arch.intermediate_size=128 arch.vocab_size=2000",
        help="the fixed model's overrides",
    )
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument(
        "--val-every", type=float, default=0.25, help="validation interval, a fraction of an epoch"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tpe-startup", type=int, default=5, help="TPE's random trials before it models")
    parser.add_argument("--median-startup", type=int, default=3, help="finished trials before pruning")
    parser.add_argument("--warmup-steps", type=int, default=16, help="no pruning before this step of a trial")
    parser.add_argument(
        "--reduction-factor", type=int, default=3, help="successive halving: keeps 1/this at each rung"
    )
    parser.add_argument(
        "--pruners",
        default="none,successive_halving,median",
        help="the sweeps to run; the first is the baseline",
    )
    parser.add_argument("--out", type=Path, default=None, help="keep the sweep dirs here")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="sweep_pruning_"))
    rows = [sweep(root / pruner, pruner, args) for pruner in args.pruners.split(",")]
    print(f"{'pruner':8} {'best val/accuracy':>18} {'training steps':>15} {'pruned':>7} {'wall (s)':>9}")
    for r in rows:
        print(
            f"{r['pruner']:8} {r['best']:18.4f} {r['steps']:15d} {r['pruned']:>4}/{r['trials']:<2} {r['wall_s']:9.0f}"
        )
    base = rows[0]
    for r in rows[1:]:
        print(
            f"{r['pruner']}/{base['pruner']}: steps {r['steps'] / base['steps']:.2f} "
            f"({1 - r['steps'] / base['steps']:.0%} fewer), best accuracy {r['best'] - base['best']:+.4f}"
        )
    print(f"sweep dirs in {root}")


if __name__ == "__main__":
    main()
