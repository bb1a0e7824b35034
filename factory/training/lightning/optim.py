"""The optimizer settings (`optim.*`), checked with defaults filled in; AdamW's parameter groups and the
learning-rate schedule (linear warmup, then constant, linear or cosine decay)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from factory.config import ConfigError, did_you_mean, plain_data

FLOAT32_MAX = 3.4028234663852886e38
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
    "fused": None,
}


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
    if values["fused"] is not None and not isinstance(values["fused"], bool):
        fail("fused", "true, false or null (null: fused on CUDA, torch's default elsewhere)")
    # AdamW's first step moves a weight by up to lr / (1 - beta1), computed in the weights' float32.
    step = values["lr"] / (1.0 - betas[0])
    if not math.isfinite(step) or step > FLOAT32_MAX or not math.isfinite(values["lr"]):
        fail(
            "lr",
            f"a learning rate whose first AdamW step (lr / (1 - beta1) = {step:.3g}) fits in float32 "
            f"(at most {FLOAT32_MAX:.3g})",
        )
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
