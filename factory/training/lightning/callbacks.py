"""Callbacks of ours that every run adds: the curves kept in memory (and in checkpoints), and a log line
in place of the progress bar where there is no terminal."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl

logger = logging.getLogger(__name__)


class History(pl.Callback):
    """Training loss and validation metrics in memory, for the plot and for the best checkpoint's metrics."""

    def __init__(self) -> None:
        self.train: list[tuple[int, float]] = []
        self.validation: list[tuple[int, dict[str, float]]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            self.train.append((trainer.global_step, float(loss)))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self.validation.append((trainer.global_step, metrics))

    # In every checkpoint, so a resumed run's curves and results cover the whole run.
    @property
    def state_key(self) -> str:
        return "_History"  # the class's name when earlier runs wrote their checkpoints: they resume too

    def state_dict(self) -> dict[str, Any]:
        return {"train": [list(t) for t in self.train], "validation": [list(v) for v in self.validation]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train = [tuple(t) for t in state_dict.get("train", [])]
        self.validation = [tuple(v) for v in state_dict.get("validation", [])]


class ProgressLog(pl.Callback):
    """A log line every `every_n_steps` optimizer steps: what replaces the progress bar with no terminal
    (SLURM, CI, nohup, a pipe), where tqdm's carriage-return redraws fill the log."""

    def __init__(self, every_n_steps: int = 50) -> None:
        self.every_n_steps = max(1, int(every_n_steps))
        self._logged = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._logged or (step % self.every_n_steps and step != trainer.max_steps):
            return
        self._logged = step
        loss = trainer.callback_metrics.get("train/loss")
        shown = f", train/loss {float(loss):.4f}" if loss is not None else ""
        total = f"/{trainer.max_steps}" if trainer.max_steps and trainer.max_steps > 0 else ""
        logger.info("step %d%s (epoch %d)%s", step, total, trainer.current_epoch, shown)


def without_terminal_bars(callbacks: list[Any]) -> tuple[list[Any], bool]:
    """`callbacks` with a progress bar replaced by `ProgressLog` when stdout is not a terminal; and
    whether a progress bar is left (Lightning adds its own unless told not to)."""
    import sys

    bars = [c for c in callbacks if isinstance(c, pl.callbacks.ProgressBar)]
    if not bars or sys.stdout.isatty():
        return callbacks, bool(bars)
    return [c for c in callbacks if c not in bars] + [ProgressLog()], False
