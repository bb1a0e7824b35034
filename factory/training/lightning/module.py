"""The LightningModule: a factory model, its head's batches and metrics, and AdamW with a warmup schedule.

`FactoryModule` takes plain config data (the arch values, the head name, the optim values) and builds the
model through `factory.build` itself, so a checkpoint holds only plain hyperparameters and reloads with
`FactoryModule.load_from_checkpoint(path, weights_only=True)` and no other argument.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from factory.build import build_model
from factory.config import PretrainedConfig, plain_data
from factory.heads.head import BatchPosition, get_head
from factory.training.lightning.failures import HINT, NonFiniteError
from factory.training.lightning.optim import check_optim, lr_factor, parameter_groups

logger = logging.getLogger(__name__)


class FactoryModule(pl.LightningModule):
    """Training and validation of one factory model for one head.

    `arch` is the model's typed config (as the run resolved it) or its config values (`model_type` and
    fields or common names, as `factory.build` reads them: how a checkpoint reloads); `optim` the settings
    (see `check_optim`). `model`, when given (pretrained weights), is used instead of a fresh one; it is
    not a hyperparameter: its config is stored as `arch`, and its weights are in the checkpoint.
    """

    def __init__(
        self,
        arch: Mapping[str, Any] | PretrainedConfig,
        head: str,
        optim: Mapping[str, Any] | None = None,
        seed: int | None = None,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        optim = check_optim(optim or {})
        if model is None:
            with torch.random.fork_rng(devices=[]):  # seeding the init must not reseed the caller's RNG
                typed = arch if isinstance(arch, PretrainedConfig) else plain_data(arch, "arch")
                _, model = build_model(typed, head, seed=seed)
        self.model = model
        self.head = head
        self.task = get_head(head)  # what the head name stands for: its data, metrics and conventions
        # The model's typed config written back as plain values: reloading builds exactly this model.
        arch = config_values(model.config)
        self.save_hyperparameters({"arch": arch, "head": head, "optim": optim, "seed": seed})
        self._forward_args = set(inspect.signature(model.forward).parameters)
        self._outputs: list[dict[str, Any]] = []
        self.train_tokens = 0
        self.train_time = 0.0
        self._step_start: float | None = None

    def configure_model(self) -> None:
        """Under `ModelParallelStrategy` (FSDP2, `trainer=fsdp2`): shard each transformer block, then the
        rest, over the data-parallel ranks, so that a block's full weights exist only for its own forward
        and backward. Other strategies wrap the model themselves."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        if not isinstance(strategy, pl.strategies.ModelParallelStrategy):
            return
        from torch.distributed.fsdp import fully_shard

        from factory.training.distributed.ranks import block_classes

        if any(type(p).__name__ == "DTensor" for p in self.model.parameters()):
            return  # already sharded: Lightning calls this hook again when it restores a checkpoint
        mesh = strategy.device_mesh["data_parallel"]
        blocks = block_classes(self.model)
        for module in self.model.modules():
            if isinstance(module, blocks):
                fully_shard(module, mesh=mesh)
        fully_shard(self.model, mesh=mesh)

    def forward(self, **inputs: torch.Tensor):
        return self.model(**{k: v for k, v in inputs.items() if k in self._forward_args})

    # ---- training -----------------------------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        _, out = self._run(batch, batch_idx, train=True)
        loss = out.loss
        size = batch["input_ids"].size(0)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=size)
        mask = batch.get("attention_mask")
        self.train_tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        return loss

    def _run(
        self, batch: Mapping[str, torch.Tensor], batch_idx: int, train: bool
    ) -> tuple[dict[str, Any], Any]:
        """`(batch as the model took it, output with the head's loss)`: the head's draws (with the
        split's draw state, which the data module holds) and batch preparation, the model, then the
        head's loss."""
        batch = dict(batch)
        # A data module that is not factory's (a user's, a test's) has no draws, so no draw state.
        draw_state = getattr(getattr(self._trainer, "datamodule", None), "draw_state", None)
        state = draw_state(train) if draw_state is not None else None
        self.task.draw_batch(batch, BatchPosition(self.current_epoch, batch_idx, self.global_rank), state)
        batch = self.task.prepare_batch(self.model, batch)
        out = self(**batch)
        out.loss = self.task.loss(out, batch)
        return batch, out

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._step_start is not None:
            self.train_time += time.perf_counter() - self._step_start

    # ---- validation: the head keeps what it needs of each batch and scores the epoch ----------------
    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        batch, out = self._run(batch, batch_idx, train=False)
        self._outputs.append(self.task.validation_step(self.model, batch, out))

    def on_validation_epoch_end(self) -> None:
        outputs, self._outputs = self._outputs, []
        if outputs:
            data = getattr(self.trainer, "datamodule", None)
            metrics = self.task.validation_metrics(outputs, data)
            loss = metrics.get("val/loss")
            if loss is not None and not math.isfinite(loss):
                # The weights have diverged (a finite training loss can still hide it for a step): stop
                # before a checkpoint or an export of them, naming the step.
                raise NonFiniteError(
                    f"The validation loss is {loss} at global step {self.trainer.global_step}: the model "
                    f"has diverged. {HINT}"
                )
            self.log_dict(metrics, prog_bar=True)

    # ---- optimizer ----------------------------------------------------------------------------------
    def configure_optimizers(self):
        optim = self.hparams["optim"]
        # One fused kernel per step on GPUs; elsewhere torch's default (foreach) is as fast.
        fused = optim.get("fused")
        fused = self.device.type == "cuda" if fused is None else fused
        optimizer = torch.optim.AdamW(
            parameter_groups(self.model, optim["weight_decay"]),
            lr=optim["lr"],
            betas=tuple(optim["betas"]),
            eps=optim["eps"],
            **({"fused": True} if fused else {}),
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = optim["warmup_steps"] or int(optim["warmup_ratio"] * total)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(optim["scheduler"], warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def config_values(config) -> dict[str, Any]:
    """A typed config as the plain values `factory.build` reads back (`model_type` plus its fields)."""
    values = {"model_type": config.model_type}
    for name in config.field_names():
        values[name] = getattr(config, name)
    return plain_data(values, "arch")
