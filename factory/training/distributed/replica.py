"""A child rank of a run started by `ranks.ReplicaLauncher`: `main([<replica file>])` trains the run
that rank 0 described in `<run dir>/.hydra/replica.yaml`, in that run dir, with rank 0's Hydra state.

The launcher starts it as `ranks.replica_command` says. It lives apart from `ranks` because
it calls `run.train`, and `run` imports `ranks`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from factory.config import ConfigError
from factory.data.files import DataError
from factory.training.distributed.ranks import global_rank
from factory.training.lightning.failures import PREEMPTED_EXIT_STATUS, Preempted
from factory.training.run import train

logger = logging.getLogger(__name__)


def main(argv: list[str]) -> int:
    """A child rank: train the run described by the replica file `argv[0]`; the exit status."""
    replica = OmegaConf.load(argv[0])
    run_dir = Path(replica.run_dir)
    rank = global_rank()
    hydra = replica.get("hydra")
    job = hydra.job.name if hydra is not None and hydra.job.get("name") else "train"
    _log_to(run_dir / f"{job}_rank{rank}.log", rank)
    if hydra is not None:
        _set_hydra_state(hydra)
    cfg = replica.config
    OmegaConf.set_struct(cfg, True)  # as Hydra hands it to rank 0
    logger.info("Rank %d replays %s", rank, run_dir)
    try:
        train(cfg, run_dir=run_dir)
    except (ConfigError, DataError) as e:
        logger.error("Error (rank %d): %s", rank, e)  # to stderr and the rank's log (`_log_to`)
        return 1
    except Preempted as e:  # rank 0 says how to resume; this rank wrote its part of last.ckpt
        logger.warning("Rank %d: %s", rank, e)
        return PREEMPTED_EXIT_STATUS
    return 0


def _log_to(path: Path, rank: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter(f"[%(asctime)s][rank {rank}][%(name)s][%(levelname)s] - %(message)s")
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in (to_file, to_stderr):
        handler.setFormatter(fmt)
        root.addHandler(handler)


def _set_hydra_state(node: DictConfig) -> None:
    """Make `HydraConfig.get()` in this process return rank 0's (overrides, job, output dir, choices)."""
    from hydra.conf import HydraConf
    from hydra.core.hydra_config import HydraConfig

    state = OmegaConf.structured(HydraConf)
    OmegaConf.set_struct(state, False)  # groups without a schema field (hydra/env) come along
    try:
        state = OmegaConf.merge(state, node)
    except Exception as e:  # noqa: BLE001  (a plugin's node this Hydra cannot type: run without it)
        logger.warning("Rank %d runs without rank 0's Hydra state: %s", global_rank(), e)
        return
    HydraConfig.instance().set_config(OmegaConf.create({"hydra": state}))
