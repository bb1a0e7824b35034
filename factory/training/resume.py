"""Exact resume: what `last.ckpt` holds beyond Lightning's own state, and checkpoints never half-written.

Lightning's checkpoint holds the model, the optimizer, the schedulers and the loop counters. Continuing a
killed run so that it ends with the same weights as an uninterrupted one also needs:

- the random generators (torch CPU and CUDA, Python's `random`, NumPy's global one): `ResumeState` keeps
  them as tensors and plain lists, so the checkpoint still loads with `torch.load(weights_only=True)`
  (Lightning's own `_collect_rng_states` gives NumPy arrays, which it refuses);
- where the training data stood: `ResumableDataLoader` remembers its shuffling generator at the start of
  the epoch and how many batches of the epoch it gave out; a resumed run reshuffles the same way and skips
  those batches by index (nothing is read or collated for them).

`LastCheckpoint` writes `last.ckpt` every N optimizer steps (after validation when one follows the step:
Lightning does not rerun a validation that a resumed run finds pending), and `AtomicCheckpointIO` writes
every checkpoint to a temporary file in the target folder, fsyncs it and renames it into place, so a full
disk or a kill never leaves a broken file where a good one was.

`python train.py resume=<run dir>` goes through `resumed`: the run's own `.hydra/config.yaml`, the same
run dir, and `trainer.fit(ckpt_path=<run dir>/checkpoints/last.ckpt)` (see `last_checkpoint`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from factory.checkpoints.atomic import atomic_save
from factory.config import ConfigError
from factory.data.loader import ResumableDataLoader
from factory.training.command_line import CommandLine, parse
from factory.training.distributed.ranks import gather

logger = logging.getLogger(__name__)

RUN_CONFIG = Path(".hydra") / "config.yaml"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
STATE_VERSION = 1


# ---- random generators as plain data --------------------------------------------------------------------
def rng_states() -> dict[str, Any]:
    """This process's random generators as tensors and plain containers (what `weights_only` loads)."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": list(internal), "gauss": gauss},
    }
    try:
        import numpy as np
    except ImportError:  # NumPy is optional: nothing of ours draws from it
        pass
    else:
        numpy = np.random.get_state(legacy=False)
        state["numpy"] = {
            "bit_generator": str(numpy["bit_generator"]),
            "key": [int(k) for k in numpy["state"]["key"]],
            "pos": int(numpy["state"]["pos"]),
            "has_gauss": int(numpy["has_gauss"]),
            "gauss": float(numpy["gauss"]),
        }
    # Only when CUDA is in use: asking for its state would initialise it in a CPU run.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_states(state: Mapping[str, Any]) -> None:
    """Restore what `rng_states` returned."""
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    if "numpy" in state:
        import numpy as np

        numpy = state["numpy"]
        key = np.asarray(numpy["key"], dtype=np.uint32)
        np.random.set_state((numpy["bit_generator"], key, numpy["pos"], numpy["has_gauss"], numpy["gauss"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            logger.warning(
                "The checkpoint has CUDA generator states for %d devices, this machine has %d: the CUDA "
                "generators are not restored, so dropout on the GPU will not repeat the interrupted run.",
                len(cuda),
                torch.cuda.device_count(),
            )


# ---- the training data's position -----------------------------------------------------------------------
def _train_loader(trainer: pl.Trainer) -> ResumableDataLoader | None:
    """The training loader as Lightning uses it (under DDP, the copy with its DistributedSampler)."""
    loop = trainer.fit_loop
    combined = getattr(loop, "_combined_loader", None)
    loaders = combined.flattened if combined is not None else []
    return next((dl for dl in loaders if isinstance(dl, ResumableDataLoader)), None)


# ---- the callback ---------------------------------------------------------------------------------------
class ResumeState(pl.Callback):
    """Random generators and the training data's position in every checkpoint; restored when training
    starts again (after Lightning's sanity check, right before the first batch).

    With several processes each one's generators are gathered (rank 0 writes the checkpoint) and each
    process gets its own back.
    """

    def __init__(self) -> None:
        self._trainer: pl.Trainer | None = None
        self._pending: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        position = None
        loader = _train_loader(trainer) if trainer is not None else None
        if loader is not None:
            position = loader.state_dict()
            progress = trainer.fit_loop.epoch_loop.batch_progress
            # Lightning starts a new epoch on resume exactly when these say this one is done.
            position["finished"] = bool(progress.is_last_batch) or (
                progress.current.ready >= trainer.num_training_batches
            )
        return {"version": STATE_VERSION, "rng": gather(rng_states()), "loader": position}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        state, self._pending = self._pending, None
        if state is None:
            return
        states = state.get("rng") or []
        if states:
            if len(states) != trainer.world_size:
                logger.warning(
                    "The checkpoint holds random generator states of %d process(es), this run has %d: each "
                    "process takes rank 0's, so dropout will not repeat the interrupted run.",
                    len(states),
                    trainer.world_size,
                )
            rank = trainer.global_rank if len(states) == trainer.world_size else 0
            set_rng_states(states[rank])
        position = state.get("loader")
        loader = _train_loader(trainer)
        if position is not None and loader is not None:
            loader.load_state_dict(position)
        elif position is not None:
            logger.warning(
                "The checkpoint has a data position, but the training loader is not a ResumableDataLoader: "
                "the resumed run starts its epoch from the first batch."
            )


class LastCheckpoint(ModelCheckpoint):
    """`last.ckpt` every `every_n_train_steps` optimizer steps and when training ends; no top-k.

    When validation runs right after such a step, the checkpoint is written after it: a resumed run would
    not repeat that validation (Lightning skips it), so saving before it would lose its metrics.
    """

    def __init__(self, every_n_train_steps: int = 100, dirpath: str | os.PathLike | None = None) -> None:
        if isinstance(every_n_train_steps, bool) or not isinstance(every_n_train_steps, int):
            raise ConfigError(
                f"last_checkpoint.every_n_train_steps={every_n_train_steps!r} is not valid: expected an "
                "integer >= 1."
            )
        if every_n_train_steps < 1:
            raise ConfigError(
                f"last_checkpoint.every_n_train_steps={every_n_train_steps} is not valid: expected >= 1."
            )
        super().__init__(
            dirpath=dirpath,
            save_top_k=0,
            save_last=True,
            every_n_train_steps=every_n_train_steps,
            enable_version_counter=False,  # one last.ckpt, overwritten (a resumed run writes it again)
        )
        self._after_validation: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        due = trainer.global_step % self._every_n_train_steps == 0
        if due and _validation_follows(trainer):
            self._after_validation = trainer.global_step
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_end(self, trainer, pl_module) -> None:
        # Lightning's own end-of-training save happens only when no last.ckpt was written in this run, so
        # a run stopping on max_epochs at step 20 with every_n_train_steps=8 would keep step 16's.
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._after_validation == trainer.global_step and not trainer.sanity_checking:
            self._after_validation = None
            if not self._should_skip_saving_checkpoint(trainer):
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def _validation_follows(trainer: pl.Trainer) -> bool:
    """Whether the fit loop validates right after the current training batch (Lightning's own test)."""
    loop = trainer.fit_loop
    try:
        return bool(loop.epoch_loop._should_check_val_fx(loop._data_fetcher))
    except (AttributeError, TypeError):  # another Lightning version: save at the step as usual
        return False


# ---- atomic writes --------------------------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's `TorchCheckpointIO`, writing local files with `atomic_save`.

    Lightning's own atomic save writes through a temporary folder and copies across file systems, which
    on a full disk destroyed the previous `last.ckpt`; remote paths (`s3://...`) still go that way.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_save(checkpoint, path)


# What `factory.checkpoints.atomic` names its temporary files: `.<name>.<pid>.<8 hex digits>.tmp`.
_ATOMIC_TEMP = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")


def remove_orphaned_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the atomic writer's temporary files left in `folder` by a save that was killed (each can be
    as large as a checkpoint); the paths removed. Call it only while no other process writes there."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        if _ATOMIC_TEMP.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        logger.info(
            "Removed %d unfinished checkpoint file(s) of an earlier save in %s.", len(removed), folder
        )
    return removed


# ---- a run owns its directory --------------------------------------------------------------------------
LOCK_FILE = "run.lock"  # in the run dir: the pid of the process training there


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def lock_holder(run_dir: str | os.PathLike) -> int | None:
    """The pid of a live process other than this one that holds `run_dir`'s lock; None when free."""
    try:
        text = (Path(run_dir) / LOCK_FILE).read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    pid = int(text) if text.isdigit() else None
    # An unreadable lock is taken over too: its writer died between creating and filling it.
    return pid if pid is not None and pid != os.getpid() and _alive(pid) else None


def refuse_if_held(run_dir: str | os.PathLike, key: str) -> None:
    """`ConfigError` naming `key=run_dir` and the pid when a live process trains in `run_dir`."""
    pid = lock_holder(run_dir)
    if pid is not None:
        raise ConfigError(
            f"{key}={run_dir}: process {pid} is training in this directory ({Path(run_dir) / LOCK_FILE}); "
            "give another directory, or wait until that run ends (a lock of a process that died is taken "
            "over)."
        )


class RunLock:
    """`<run dir>/run.lock`, created with O_EXCL and holding this process's pid, for as long as the run
    trains: a second run in the same directory is refused instead of mixing its files with the first's.
    A lock whose process is gone is taken over. Only rank 0 takes it: the other ranks replay its run.
    """

    def __init__(self, run_dir: str | os.PathLike, key: str = "hydra.run.dir") -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.key = key
        self.owned = False

    def __enter__(self) -> RunLock:
        for _ in range(3):  # a stale lock is removed, then created again with O_EXCL
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                refuse_if_held(self.path.parent, self.key)
                self.path.unlink(missing_ok=True)  # its process is gone (or it is this process's)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(f"{os.getpid()}\n")
            self.owned = True
            return self
        refuse_if_held(self.path.parent, self.key)  # another process keeps taking it over: say who
        raise ConfigError(f"{self.key}={self.path.parent}: could not create {self.path}.")

    def __exit__(self, *exc: Any) -> None:
        if self.owned:
            self.owned = False
            with contextlib.suppress(OSError):
                if self.path.read_text(encoding="utf-8").strip() == str(os.getpid()):
                    self.path.unlink()


def unique_run_name(stamp: str) -> str:
    """`stamp` (a time) made unique to this launch: runs started in the same second get their own dirs.

    The pid tells launches on one machine apart; under torchrun or SLURM every rank is a launch of its
    own and must name the same dir, so the job's id is used there instead.
    """
    job = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("SLURM_JOB_ID")
    return f"{stamp}_{job}" if job else f"{stamp}_{os.getpid()}"


# Cached: Hydra may resolve hydra.run.dir more than once in a launch; it must name one dir.
OmegaConf.register_new_resolver("factory.unique_run_name", unique_run_name, replace=True, use_cache=True)


# ---- the metrics history ------------------------------------------------------------------------------
def checkpoint_step(path: str | os.PathLike) -> int:
    """The optimizer step a checkpoint was written at (memory-mapped: the weights are not read)."""
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def keep_metrics_history(loggers: Sequence[Any], step: int) -> None:
    """Keep a resumed run's `metrics.csv` rows logged before `step` (the checkpoint's): Lightning's
    CSVLogger deletes the file when it opens its log dir, and a resumed run logs again from `step` on.

    Call it before training, in the process that writes the logs (rank 0).
    """
    import csv

    from pytorch_lightning.loggers import CSVLogger

    for csv_logger in (lg for lg in loggers if isinstance(lg, CSVLogger)):
        path = Path(csv_logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with open(path, newline="", encoding="utf-8") as f:
            # A row's step is the optimizer steps done before it was logged: rows of steps the resumed
            # run repeats (those after the checkpoint, logged before the kill) are left out.
            rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) < step]
        writer = csv_logger.experiment  # opening it deletes the file
        writer.metrics = rows
        writer.save()
        logger.info("Kept %d row(s) of %s logged before step %d.", len(rows), path, step)


# ---- `resume=<run dir>` ---------------------------------------------------------------------------------
def last_checkpoint(run_dir: str | os.PathLike) -> Path:
    """`<run dir>/checkpoints/last.ckpt`; `ConfigError` naming what is missing when it is not there."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"resume={run_dir}: no such run directory.")
    path = run / LAST_CHECKPOINT
    if not path.is_file():
        raise ConfigError(
            f"resume={run_dir}: {path} does not exist, so there is nothing to continue from "
            "(a run writes it every callbacks.last_checkpoint.every_n_train_steps steps)."
        )
    return path.resolve()


def run_config(run_dir: str | os.PathLike, overrides: Sequence[str] = ()) -> Any:
    """A run's own composed config (`<run dir>/.hydra/config.yaml`) with `resume` set to the run dir and
    `overrides` (`key=value`) applied: what `train.py resume=<run dir>` trains with."""
    from omegaconf import OmegaConf, open_dict

    run = Path(run_dir).resolve()
    path = run / RUN_CONFIG
    if not path.is_file():
        raise ConfigError(f"resume={run_dir}: {path} does not exist (is this a run directory of train.py?).")
    cfg = OmegaConf.load(path)
    with open_dict(cfg):
        cfg.resume = str(run)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist([o.lstrip("+") for o in overrides]))


def resume_argv(argv: Sequence[str]) -> list[str]:
    """`resumed(parse(argv)).argv`: `train.py` arguments with `resume=<run dir>` rewritten."""
    return resumed(parse(argv)).argv


def resumed(cli: CommandLine) -> CommandLine:
    """A `train.py` command line with `resume=<run dir>` turned into the run's own config and dir.

    `resume=<run>` (with optional `key=value` changes, e.g. `trainer.max_epochs=10`) becomes
    `--config-dir <run>/.hydra --config-name config ++resume=<run> hydra.run.dir=<run>
    hydra.output_subdir=null`: Hydra composes the saved config (no defaults list: presets are already
    merged), writes into the same run dir and leaves the run's `.hydra/` record as it was. Anything else
    is returned unchanged (also the rewritten form, as Lightning passes it to the other DDP processes).
    """
    resume = cli.plain("resume")
    if not resume:
        return cli
    if len(resume) > 1:
        raise ConfigError(f"resume= is given {len(resume)} times: {[o.input_line for o in resume]}.")
    typed = resume[0].input_line
    value = resume[0].value()
    if value in (None, "", "null", "None"):
        return parse([a for a in cli.argv if a != typed])
    value = str(value)
    for flag in ("config_dir", "config_name", "config_path", "multirun"):
        if getattr(cli.args, flag, None):
            raise ConfigError(
                f"resume={value} continues one run with its own config: drop "
                f"--{flag.replace('_', '-')} (a sweep is resumed by running its members)."
            )
    run = Path(value).expanduser().resolve()
    last_checkpoint(run)
    refuse_if_held(run, "resume")
    config = run / RUN_CONFIG
    if not config.is_file():
        raise ConfigError(f"resume={value}: {config} does not exist (is this a run directory of train.py?).")
    rest = [o for o in cli.overrides or () if o is not resume[0]]
    mine = [o for o in rest if not o.key_or_group.startswith("hydra")]
    groups = [o.input_line for o in mine if "." not in o.key_or_group and "/" not in o.input_line]
    if groups or any("/" in o.key_or_group for o in rest):
        raise ConfigError(
            f"resume={value} uses the run's own config, where presets are already merged: "
            f"{groups or [o.input_line for o in rest]} cannot be applied. Change single keys (e.g. "
            "trainer.max_epochs=10)."
        )
    return parse(
        [
            *cli.flags,  # e.g. `--cfg job`: Hydra's own flags, kept
            "--config-dir",
            str(config.parent),
            "--config-name",
            "config",
            *(o.input_line for o in rest),
            f'++resume="{run}"',
            f'hydra.run.dir="{run}"',
            "hydra.output_subdir=null",
        ]
    )
