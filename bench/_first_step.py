"""A callback for benches that time a run: says when the first optimizer step is done.

`+callbacks.first_step._target_=_first_step.FirstStep` with this folder on `PYTHONPATH`.
"""

from __future__ import annotations

import sys

import pytorch_lightning as pl

MARK = "BENCH first optimizer step done"


class FirstStep(pl.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 1:
            sys.stdout.write(f"{MARK}\n")  # stdout, not logging: the bench reads the child's output
            sys.stdout.flush()
