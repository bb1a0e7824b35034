"""Guards that end a run early with a clear message instead of training on garbage or writing it.

- `FiniteGuard` (a Lightning callback): a non-finite training loss stops the run at that step, before its
  backward pass and optimizer step, so the weights in memory are still the last finite ones; and no
  checkpoint with non-finite weights is ever written (a check in `on_save_checkpoint`, which runs before
  the file is written).
- With several processes, a process that dies or hangs ends the whole run in bounded time, its error
  shown (each process prints its own traceback, prefixed with its rank):
  - a process other than rank 0 fails: Lightning's observer in rank 0 kills all within ~5 s;
  - rank 0 raises: `ProcessGuard` kills the processes rank 0 started (Lightning does this only for
    Ctrl-C), which may be waiting outside any collective;
  - rank 0 is killed: `ProcessGuard` made the others die with it (Linux `PR_SET_PDEATHSIG`);
  - a process hangs: the others give up in their next collective after `process_group_timeout()`
    (pass it to `DDPStrategy(timeout=...)`), then one of the cases above.
- `Preemption` (a Lightning callback): SIGTERM, what SLURM and Kubernetes send before they take the
  machine back, writes `last.ckpt` and ends the run with `Preempted` (train.py exits 143, as a process
  killed by SIGTERM does), so `python train.py resume=<run dir>` continues it. Lightning's own SIGTERM
  handler (and, under SLURM with auto-requeue, its requeue handlers) stays in place: it is what stops
  the loop after the current batch; on its own it would end `fit` with exit status 0 and no exports.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
from datetime import timedelta
from typing import Any

import pytorch_lightning as pl
import torch

from factory.contract.errors import NonFiniteError

logger = logging.getLogger(__name__)

# Long enough for rank 0 to write a large checkpoint while the others wait at the barrier after it.
DEFAULT_PROCESS_GROUP_TIMEOUT_S = 600.0
HINT = (
    "Lower optim.lr, set trainer.gradient_clip_val, raise optim.warmup_steps, or train in "
    "trainer.precision=32-true or bf16-mixed (16-mixed overflows more easily)."
)


# A process ended by a signal exits 128 + the signal's number in shells and batch systems.
PREEMPTED_EXIT_STATUS = 128 + signal.SIGTERM


class Preempted(RuntimeError):
    """The run received SIGTERM and stopped after writing `last.ckpt`; `resume=<run dir>` continues it."""


class Preemption(pl.Callback):
    """On SIGTERM (Lightning stops the loop with `SIGTERMException`), write `last.ckpt` with the state
    Lightning stopped in, for `resume=<run dir>`.

    Lightning raises its exception after the current batch and its validation (if one was due), so the
    checkpoint is one a resumed run continues from. Every rank receives the SIGTERM decision (Lightning
    broadcasts it), so every rank calls `save_checkpoint`, a collective under DDP/FSDP.
    """

    def __init__(self) -> None:
        self.saved: str | None = None

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        if not isinstance(exception, SIGTERMException):
            return
        last = next((c for c in trainer.checkpoint_callbacks if getattr(c, "save_last", False)), None)
        if last is None or not last.dirpath:
            logger.warning(
                "SIGTERM at %s: no last-checkpoint callback, so nothing to resume from.", _where(trainer)
            )
            return
        path = os.path.join(last.dirpath, "last.ckpt")
        trainer.save_checkpoint(path)
        self.saved = path
        logger.warning("SIGTERM at %s: wrote %s.", _where(trainer), path)


class FiniteGuard(pl.Callback):
    """Stop at the first non-finite training loss; refuse to checkpoint non-finite weights.

    The loss is checked in `on_before_backward` (each micro-batch with gradient accumulation), so the
    step that produced it neither updates the weights nor reaches `on_train_batch_end`, where
    `ModelCheckpoint` saves. With several processes the decision is shared (one small all-reduce per
    step), so every process stops at the same step instead of the others hanging in the next collective.
    """

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        value = _value(loss)
        what = f"The training loss is {value}" if value else "Another process's training loss is not finite"
        last = _last_checkpoint(trainer)
        raise NonFiniteError(
            f"{what} at {_where(trainer)}: training stops before this step updates the weights, and no "
            f"checkpoint of it is written ({'the last one is ' + last if last else 'none was written before'})."
            f" {HINT}"
        )

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        bad = non_finite_tensors(checkpoint.get("state_dict", {}))
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise NonFiniteError(
                f"Not writing a checkpoint at {_where(trainer)}: the weights have non-finite values in "
                f"{shown}. {HINT}"
            )


def non_finite_tensors(state_dict: dict[str, Any]) -> list[str]:
    """The names of floating-point tensors in `state_dict` holding a NaN or an infinity."""
    out = []
    for name, value in state_dict.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            if not bool(torch.isfinite(value).all()):
                out.append(name)
    return out


def _value(loss: torch.Tensor) -> str:
    """The first non-finite value of `loss` ("nan", "inf", "-inf"); "" when all are finite."""
    values = loss.detach().float().flatten().tolist()
    return next((str(v) for v in values if not math.isfinite(v)), "")


def _where(trainer: pl.Trainer) -> str:
    batch = trainer.fit_loop.epoch_loop.batch_idx
    return (
        f"global step {trainer.global_step} (epoch {trainer.current_epoch}, batch {batch + 1} of the epoch)"
    )


def _last_checkpoint(trainer: pl.Trainer) -> str:
    paths = [getattr(c, "last_model_path", "") for c in trainer.checkpoint_callbacks]
    return next((p for p in paths if p), "")


class ProcessGuard(pl.Callback):
    """Ends every process of a multi-process run when one fails (see the module docstring)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size > 1 and trainer.local_rank > 0:
            die_with_parent()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

        launcher = trainer.strategy.launcher
        procs = getattr(launcher, "procs", None) if isinstance(launcher, _SubprocessScriptLauncher) else None
        if procs:
            logger.error(
                "Rank %d failed (%s: %s): ending the %d other process(es) it started.",
                trainer.global_rank,
                type(exception).__name__,
                exception,
                len(procs),
            )
            launcher.kill(signal.SIGKILL if sys.platform != "win32" else signal.SIGTERM)


def die_with_parent() -> None:
    """On Linux, have this process killed when the process that started it ends (a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError) as e:  # no prctl: rely on the process group timeout
        logger.debug("prctl(PR_SET_PDEATHSIG) unavailable: %s", e)
        return
    if os.getppid() == 1:  # the parent ended before the call: nobody is left to wait for
        os.kill(os.getpid(), signal.SIGKILL)


def process_group_timeout(seconds: float | None = None) -> timedelta:
    """How long a process waits for the others in a collective before the run fails: pass it to
    `DDPStrategy(timeout=...)` / `FSDPStrategy(timeout=...)` (torch's default is 30 minutes for gloo)."""
    value = DEFAULT_PROCESS_GROUP_TIMEOUT_S if seconds is None else seconds
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(
            f"process group timeout={value!r} is not valid: expected a positive number of seconds."
        )
    return timedelta(seconds=float(value))
