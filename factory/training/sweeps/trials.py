"""One sweep trial (`python train.py -m ...`): failed and pruned trials recorded instead of a crashed sweep.

`run_trial(cfg, train)` runs one trial. Under `-m`, a combination that cannot work (`ConfigError`, e.g.
heads not dividing the width; `DataError`) or a non-finite objective ends that trial as failed, with the
reason in `<trial dir>/trial.json`, and the sweep goes on. A trial the Optuna sweeper pruned
(`factory.training.sweeps.study`) is recorded as pruned, with the step. After every trial the sweep's
summary is rewritten (`factory.training.sweeps.summary`), so a killed sweep keeps a partial one. Outside
`-m` it only calls `train`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from factory.checkpoints.atomic import atomic_write_text
from factory.config import ConfigError
from factory.data.files import DataError
from factory.training.hydra_internals import BASIC_SWEEPER
from factory.training.lightning.failures import NonFiniteError
from factory.training.sweeps.summary import TRIAL_FILE, declared_keys, read_json, write_summary

logger = logging.getLogger(__name__)

# Sweepers that ignore a trial's return value and stop the whole sweep on an exception: a failed trial
# returns nan there. Any other sweeper gets `TrialFailed` (or `TrialPruned`) raised, which says what
# happened: ours (factory.training.sweeps.study) tells the study FAIL (or PRUNED) and goes on.
NAN_SWEEPERS = (BASIC_SWEEPER,)
# A non-finite loss stops a run (factory.training.lightning.failures): in a sweep, that trial failed (too high an lr, ...).
EXPECTED_FAILURES: tuple[type[BaseException], ...] = (ConfigError, DataError, NonFiniteError)


class TrialFailed(RuntimeError):
    """A sweep trial that gives no result: a combination that cannot work, bad data, a non-finite value."""


class TrialPruned(RuntimeError):
    """A sweep trial the sweeper's pruner stopped at global step `step`: not a failure."""

    def __init__(self, message: str, step: int | None = None) -> None:
        super().__init__(message)
        self.step = step


# ---- one trial ------------------------------------------------------------------------------------------
def _hydra() -> Any:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def in_multirun() -> bool:
    """Whether this process runs a trial of a Hydra sweep (`-m`)."""
    from hydra.types import RunMode

    hc = _hydra()
    return hc is not None and hc.mode == RunMode.MULTIRUN


def run_trial(cfg: DictConfig, fn: Callable[[DictConfig], float]) -> float:
    """`fn(cfg)` (train), and under `-m` a record of the trial: `<trial dir>/trial.json` and the summary.

    A `ConfigError`, a `DataError`, a non-finite loss or objective fails the trial, not the sweep: nan is
    returned to the basic (grid) sweeper, `TrialFailed` is raised to the others (Optuna marks the trial
    failed). A run the pruner stopped (`results.json` has its `pruned_step`) raises `TrialPruned` to
    them. Any other exception is recorded and raised as it is.
    """
    if not in_multirun():
        return fn(cfg)
    from pytorch_lightning.utilities import rank_zero_only

    hc = _hydra()
    trial_dir = Path(hc.runtime.output_dir)
    monitor, mode = OmegaConf.select(cfg, "head.monitor"), OmegaConf.select(cfg, "head.mode")
    record: dict[str, Any] = {
        "trial": trial_dir.name,
        "job_num": hc.job.num,
        "monitor": monitor,
        "mode": mode,
    }
    started = time.perf_counter()
    failure: BaseException | None = None
    value = math.nan
    pruned: int | None = None
    try:
        value = float(fn(cfg))
        pruned = read_json(trial_dir / "results.json").get("pruned_step")
        if pruned is not None:
            record.update(status="pruned", pruned_step=pruned)
        elif not math.isfinite(value):
            raise TrialFailed(
                f"{monitor}={value}: the objective is not finite (no validation ran, or training diverged)."
            )
        else:
            record["status"] = "ok"
    except (*EXPECTED_FAILURES, TrialFailed) as e:
        failure, value = e, math.nan
        record.update(status="failed", error=type(e).__name__, reason=str(e))
        logger.warning("Trial %s failed: %s", trial_dir.name, e)
    except Exception as e:
        record.update(status="error", error=type(e).__name__, reason=f"{type(e).__name__}: {e}")
        raise
    finally:
        record.update(
            objective=value if math.isfinite(value) else None,  # JSON has no nan
            wall_time_s=round(time.perf_counter() - started, 3),
        )
        if rank_zero_only.rank == 0:
            atomic_write_text(trial_dir / TRIAL_FILE, json.dumps(record, indent=2) + "\n")
            try:  # a partial summary after every trial; a problem with it never fails the trial
                write_summary(trial_dir.parent, declared=declared_keys(hc), mode=mode)
            except Exception:  # noqa: BLE001
                logger.exception("Could not write the sweep summary in %s", trial_dir.parent)
    if hc.sweeper.get("_target_") not in NAN_SWEEPERS:
        if failure is not None:
            raise TrialFailed(record["reason"]) from failure
        if pruned is not None:
            raise TrialPruned(f"{monitor}={value} when pruned at step {pruned}", step=pruned)
    return value
