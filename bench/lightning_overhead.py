"""Lightning's cost per training step: our FactoryModule under a pl.Trainer against a plain PyTorch loop.

    python bench/lightning_overhead.py            # bert-base seqcls and a 2-layer 128-wide bert, 8x128
    python bench/lightning_overhead.py --quick    # fewer steps
    python bench/lightning_overhead.py --sizes small --steps 60

Both sides train the same model (same weights, a copy each) on the same batches from the same
DataLoader, with what `train.py` uses: AdamW over `parameter_groups` with the linear schedule stepped
every step, gradient clipping at 1.0. The Lightning side is `FactoryModule` in a `pl.Trainer` with the
default trainer's settings (progress bar, CSV logger writing every 10 steps, `train/loss` logged each
step, `FiniteGuard`, no checkpointing). The plain side is the loop a user would write: forward with
labels, backward, `clip_grad_norm_`, `step`, scheduler `step`, `zero_grad`. Each side runs `--steps`
steps; the first `--warmup` are not timed (the Trainer's setup and first steps), the rest are timed as a
whole, so anything Lightning does between steps counts. Sides alternate for `--rounds` rounds (5: with 3 the bert-base figure swung by 5 points); the
overhead is the median of the per-round ratios, minus 1. Goal: under 5%.

The process first does what `train.py` does (`factory.training.run.keep_freed_memory`: glibc keeps freed
memory for reuse). Without it, which side page-faults more of its step's memory back in varies from run
to run by more than Lightning's cost (bert-base: 60k to 180k faults a step, 0.5 to 1.2 s of system time).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import sys
import tempfile
import time

import _common as common
import pytorch_lightning as pl
import torch

GOAL = 0.05
SIZES = {
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "small": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512),
}
OPTIM = {"lr": 5e-5, "weight_decay": 0.01, "scheduler": "linear", "warmup_ratio": 0.1}


def rows_for(vocab: int, n: int, t: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "input_ids": torch.randint(3, vocab, (t,), generator=g),
            "attention_mask": torch.ones(t, dtype=torch.long),
            "labels": torch.randint(0, 2, (), generator=g),
        }
        for _ in range(n)
    ]


def loader(rows: list, b: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        rows, batch_size=b, shuffle=True, generator=torch.Generator().manual_seed(0)
    )


def plain_loop(model: torch.nn.Module, rows: list, b: int, steps: int, warmup: int) -> float:
    """Seconds per step of the hand-written loop, after `warmup` steps."""
    from factory.training.lightning.optim import lr_factor, parameter_groups

    optimizer = torch.optim.AdamW(parameter_groups(model, OPTIM["weight_decay"]), lr=OPTIM["lr"])
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(OPTIM["scheduler"], int(OPTIM["warmup_ratio"] * steps), steps)
    )
    model.train()
    done, start = 0, 0.0
    while done < steps:
        for batch in loader(rows, b):
            if done == warmup:
                start = time.perf_counter()
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            done += 1
            if done == steps:
                break
    return (time.perf_counter() - start) / (steps - warmup)


class Clock(pl.Callback):
    """Notes the time when step `warmup` starts and when the last step ends."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.end = math.nan

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and math.isnan(self.start):
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.end = time.perf_counter()


def lightning_loop(model: torch.nn.Module, rows: list, b: int, steps: int, warmup: int) -> float:
    """Seconds per step of FactoryModule under a Trainer set as train.py sets it, after `warmup` steps."""
    from pytorch_lightning.loggers import CSVLogger

    from factory.training.lightning.failures import FiniteGuard
    from factory.training.lightning.module import FactoryModule, config_values

    module = FactoryModule(config_values(model.config), "seqcls", OPTIM, seed=0, model=model)
    clock = Clock(warmup)
    quiet = contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO())
    with tempfile.TemporaryDirectory() as tmp, quiet[0], quiet[1]:  # the progress bar is drawn, not shown
        trainer = pl.Trainer(
            max_steps=steps,
            accelerator="cpu",
            devices=1,
            precision="32-true",
            gradient_clip_val=1.0,
            log_every_n_steps=10,
            limit_val_batches=0,
            logger=CSVLogger(tmp),
            callbacks=[clock, FiniteGuard()],
            enable_checkpointing=False,
            enable_model_summary=False,
            default_root_dir=tmp,
        )
        trainer.fit(module, train_dataloaders=loader(rows, b))
    return (clock.end - clock.start) / (steps - warmup)


def measure(size: str, steps: int, warmup: int, rounds: int, quiet_wait: float) -> list[str]:
    import factory

    b, t = 8, 128
    config = factory.BertConfig.from_dict({}, num_labels=2, **SIZES[size])
    torch.manual_seed(0)
    base = factory.BertForSequenceClassification(config)
    rows = rows_for(config.vocab_size, b * steps, t)
    plain, lightning = [], []
    for _ in range(rounds):
        if quiet_wait:
            common.wait_until_quiet(quiet_wait)
        plain.append(plain_loop(copy.deepcopy(base), rows, b, steps, warmup))
        lightning.append(lightning_loop(copy.deepcopy(base), rows, b, steps, warmup))
    overhead = common.median([lt / p for lt, p in zip(lightning, plain)]) - 1
    return [
        f"bert {size} seqcls",
        f"{b}x{t}",
        f"{common.median(plain) * 1e3:.1f}",
        f"{common.median(lightning) * 1e3:.1f}",
        f"{(common.median(lightning) - common.median(plain)) * 1e3:+.1f}",
        f"{overhead:+.1%}",
        f"< {GOAL:.0%}",
        "ok" if overhead < GOAL else "MISSED",
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="small,base")
    parser.add_argument(
        "--steps", type=int, default=None, help="steps per side and round (small: 60, base: 8)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (small: 10, base: 2)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 round, fewer steps")
    parser.add_argument("--threads", type=int, default=2)
    common.add_quiet_wait(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    from factory.training.run import keep_freed_memory

    keep_freed_memory()
    rows = []
    with common.OtherLoad() as load:
        for size in args.sizes.split(","):
            default_steps, default_warmup = (60, 10) if size == "small" else (8, 2)
            steps = args.steps or (default_steps // 2 if args.quick else default_steps)
            warmup = args.warmup if args.warmup is not None else default_warmup
            rounds = 1 if args.quick else args.rounds
            rows.append(measure(size, steps, warmup, rounds, args.quiet_wait))
    headers = ["model", "shape", "plain ms/step", "lightning ms/step", "diff ms", "overhead", "goal", ""]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(common.table(headers, rows))
    print(load.note())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
