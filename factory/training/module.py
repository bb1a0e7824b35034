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
from factory.config import ConfigError, did_you_mean, plain_data
from factory.heads.head import get_head

logger = logging.getLogger(__name__)

SCHEDULERS = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw",)
OPTIM_DEFAULTS: dict[str, Any] = {
    "name": "adamw",
    "lr": 5e-5,
    "weight_decay": 0.01,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "scheduler": "linear",
    "warmup_steps": 0,
    "warmup_ratio": 0.0,
}


# ---- config checks --------------------------------------------------------------------------------------
def check_optim(optim: Mapping[str, Any], path: str = "optim") -> dict[str, Any]:
    """The optimizer settings with defaults filled in; a bad key or value raises `ConfigError`."""
    values = dict(plain_data(optim))
    for key in values:
        if key not in OPTIM_DEFAULTS:
            valid = sorted(OPTIM_DEFAULTS)
            raise ConfigError(
                f"Unknown key {path}.{key}.{did_you_mean(key, valid)} Valid keys: {valid}.", key=key
            )
    values = {**OPTIM_DEFAULTS, **values}

    def fail(key: str, valid: str, hint: str = "") -> None:
        raise ConfigError(f"{path}.{key}={values[key]!r} is not valid: expected {valid}.{hint}", key=key)

    def number(key: str) -> bool:
        return isinstance(values[key], (int, float)) and not isinstance(values[key], bool)

    if values["name"] not in OPTIMIZERS:
        fail("name", f"one of {list(OPTIMIZERS)}", did_you_mean(str(values["name"]), OPTIMIZERS))
    if values["scheduler"] not in SCHEDULERS:
        fail("scheduler", f"one of {list(SCHEDULERS)}", did_you_mean(str(values["scheduler"]), SCHEDULERS))
    if not number("lr") or not values["lr"] > 0:
        fail("lr", "a positive number")
    if not number("weight_decay") or values["weight_decay"] < 0:
        fail("weight_decay", "a number >= 0")
    if not number("eps") or not values["eps"] > 0:
        fail("eps", "a positive number")
    betas = values["betas"]
    if (
        not isinstance(betas, list)
        or len(betas) != 2
        or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas)
    ):
        fail("betas", "two numbers in [0, 1), such as [0.9, 0.999]")
    warmup_steps = values["warmup_steps"]
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        fail("warmup_steps", "an integer >= 0")
    if not number("warmup_ratio") or not 0.0 <= values["warmup_ratio"] < 1.0:
        fail("warmup_ratio", "a fraction in [0, 1)")
    return values


def lr_factor(scheduler: str, warmup: int, total: int):
    """The multiplier of the base learning rate at each optimizer step: linear warmup, then `scheduler`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if scheduler == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weights, none on biases and LayerNorm weights (transformers' Trainer does this)."""
    no_decay: set[str] = set()
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if isinstance(module, nn.LayerNorm) or name == "bias":
                no_decay.add(full)
    decay, rest = [], []
    for name, p in model.named_parameters():  # tied weights appear once
        if p.requires_grad:
            (rest if name in no_decay else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]


# ---- the module -----------------------------------------------------------------------------------------
class FactoryModule(pl.LightningModule):
    """Training and validation of one factory model for one head.

    `arch` holds the model's config values (`model_type` and fields or common names, as `factory.build`
    reads them, including vocab size, special token ids and label maps); `optim` the optimizer settings
    (see `check_optim`). `model`, when given (pretrained weights), is used instead of a fresh one; it is
    not a hyperparameter: its config is stored as `arch`, and its weights are in the checkpoint.
    """

    def __init__(
        self,
        arch: Mapping[str, Any],
        head: str,
        optim: Mapping[str, Any] | None = None,
        seed: int | None = None,
        model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        optim = check_optim(optim or {})
        if model is None:
            with torch.random.fork_rng(devices=[]):  # seeding the init must not reseed the caller's RNG
                _, model = build_model(plain_data(arch, "arch"), head, seed=seed)
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

    def forward(self, **inputs: torch.Tensor):
        return self.model(**{k: v for k, v in inputs.items() if k in self._forward_args})

    # ---- training -----------------------------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self(**self.task.prepare_batch(self.model, dict(batch)))
        size = batch["input_ids"].size(0)
        self.log("train/loss", out.loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=size)
        mask = batch.get("attention_mask")
        self.train_tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        return out.loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._step_start is not None:
            self.train_time += time.perf_counter() - self._step_start

    # ---- validation: the head keeps what it needs of each batch and scores the epoch ----------------
    def on_validation_epoch_start(self) -> None:
        self._outputs = []

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        batch = self.task.prepare_batch(self.model, dict(batch))
        self._outputs.append(self.task.validation_step(self.model, batch, self(**batch)))

    def on_validation_epoch_end(self) -> None:
        outputs, self._outputs = self._outputs, []
        if outputs:
            data = getattr(self.trainer, "datamodule", None)
            self.log_dict(self.task.validation_metrics(outputs, data), prog_bar=True)

    # ---- optimizer ----------------------------------------------------------------------------------
    def configure_optimizers(self):
        optim = self.hparams["optim"]
        optimizer = torch.optim.AdamW(
            parameter_groups(self.model, optim["weight_decay"]),
            lr=optim["lr"],
            betas=tuple(optim["betas"]),
            eps=optim["eps"],
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
