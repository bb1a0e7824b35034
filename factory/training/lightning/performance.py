"""What a run does for speed and memory beyond Lightning's own arguments, and what it reports of them.

- `trainer.activation_checkpointing=true` recomputes each transformer block's activations in the
  backward pass instead of keeping them (`torch.utils.checkpoint`, non-reentrant, RNG state preserved so
  dropout masks and gradients are the same); the blocks are the ones FSDP wraps
  (`distributed.block_classes`), so every architecture gets it without code of its own.
- `trainer.compile=true` compiles the model in place (`nn.Module.compile`: parameter names, state dicts
  and checkpoints are unchanged).
- `utilization` gives a run's model FLOPs per step (PaLM's count: 6 FLOPs per parameter and token for the
  forward and backward matmuls, plus 12 * layers * hidden * length per token for attention), the
  FLOP/s achieved over the training steps, and their fraction of the device's peak: measured once per
  process on a CPU (the best of a few large fp32 matmuls), from a table of dense bf16/fp16 tensor-core
  peaks for known GPUs.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

# trainer.* keys that are ours rather than pl.Trainer arguments, with their defaults.
TRAINER_KEYS: dict[str, Any] = {"activation_checkpointing": False, "compile": False}

# Dense (no sparsity) peak FLOP/s by GPU name fragment: bf16/fp16 tensor cores, and fp32 (TF32 off).
GPU_PEAKS: dict[str, tuple[float, float]] = {
    "H200": (989e12, 67e12),
    "H100": (989e12, 67e12),
    "A100": (312e12, 19.5e12),
    "L40S": (362e12, 91.6e12),
    "L4": (121e12, 30.3e12),
    "A10G": (125e12, 31.2e12),
    "V100": (125e12, 15.7e12),
    "T4": (65e12, 8.1e12),
    "4090": (165e12, 82.6e12),
}


def split_trainer(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(pl.Trainer arguments, our keys with defaults)` of checked `trainer` values."""
    ours = {k: values.get(k, default) for k, default in TRAINER_KEYS.items()}
    for key, value in ours.items():
        if not isinstance(value, bool):
            from factory.config import ConfigError

            raise ConfigError(f"trainer.{key}={value!r} is not valid: expected true or false.", key=key)
    return {k: v for k, v in values.items() if k not in TRAINER_KEYS}, ours


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Make every transformer block of `model` recompute its activations in backward; returns how many.

    The block's own `forward` is wrapped on the instance, so parameter names and state dicts stay as
    they are. Without gradients (validation, inference) blocks run as usual.
    """
    from factory.training.distributed.ranks import block_classes

    classes = block_classes(model)
    blocks = [m for m in model.modules() if isinstance(m, classes)]
    for block in blocks:
        block.forward = functools.partial(_checkpointed, type(block).forward.__get__(block))
    return len(blocks)


def _checkpointed(forward: Any, *args: Any, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


def apply(model: nn.Module, ours: Mapping[str, Any]) -> None:
    """Apply `split_trainer`'s keys to `model` (in place), logging what was done."""
    if ours.get("activation_checkpointing"):
        n = enable_activation_checkpointing(model)
        logger.info("Activation checkpointing: %d transformer blocks recompute their activations.", n)
    if ours.get("compile"):
        model.compile()
        logger.info("The model is compiled (torch.compile); the first steps include the compilation.")


def flops_per_token(n_params: int, layers: int, hidden: int, length: int) -> float:
    """Model FLOPs of one training token: 6 per parameter (forward + backward matmuls) plus attention's
    12 * layers * hidden * length (PaLM, appendix B)."""
    return 6.0 * n_params + 12.0 * layers * hidden * length


@functools.cache
def cpu_peak_flops(n: int = 1024, runs: int = 3) -> float:
    """The best fp32 FLOP/s of a few n x n matmuls on this process's threads (measured once)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = 0.0
    with torch.inference_mode():
        a @ b  # warm the BLAS threads
        for _ in range(runs):
            start = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def device_peak(device: torch.device, precision: str) -> tuple[float | None, str]:
    """`(peak FLOP/s, where it comes from)` for `device` at `precision` (None when unknown)."""
    if device.type == "cpu":
        return cpu_peak_flops(), "measured: fp32 matmul on this CPU"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        half = any(p in precision for p in ("16", "bf16"))
        for fragment, (tensor_core, fp32) in GPU_PEAKS.items():
            if fragment in name:
                return (
                    tensor_core if half else fp32
                ), f"table: {name}, {'bf16/fp16' if half else 'fp32'} dense"
        return None, f"unknown GPU {name!r}: no peak in the table"
    return None, f"no peak known for device type {device.type!r}"


def utilization(
    n_params: int,
    config: Any,
    tokens: int,
    steps: int,
    seconds: float,
    length: int,
    device: torch.device,
    precision: str,
    devices: int = 1,
) -> dict[str, Any]:
    """results.json's figures: FLOPs per step, achieved FLOP/s and MFU (None where unknown).

    `tokens` are the non-padding tokens trained on over `steps` steps in `seconds` of step time; with
    several devices the peak is theirs together.
    """
    layers = sum(getattr(config, f) for f in type(config).depth_fields)
    per_token = flops_per_token(n_params, layers, config.hidden_size, length)
    achieved = per_token * tokens / seconds if seconds > 0 else None
    peak, source = device_peak(device, precision)
    peak = peak * devices if peak is not None else None
    return {
        "flops_per_token": per_token,
        "flops_per_step": per_token * tokens / steps if steps else None,
        "achieved_flops_per_second": achieved,
        "peak_flops_per_second": peak,
        "peak_source": source,
        "mfu": achieved / peak if achieved is not None and peak else None,
    }
