"""Lightning callbacks that tests add to a train.py run with `+callbacks.<name>._target_=tests.callbacks.X`."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from safetensors.torch import save_file


class FirstBatch(pl.Callback):
    """Save the first training batch, as the loader gave it (before the head's draws), to `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer: pl.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == 0 and batch_idx == 0:
            tensors = {
                k: v.detach().cpu().contiguous() for k, v in batch.items() if isinstance(v, torch.Tensor)
            }
            save_file(tensors, self.path)
