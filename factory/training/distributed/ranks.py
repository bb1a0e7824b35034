"""More than one process: trainer presets checked before data, our transformer blocks for FSDP, and DDP
ranks that replay exactly the run that rank 0 is doing.

Lightning's DDP and FSDP strategies start the other ranks of a node by running the script again with its
command line (`sys.argv`). Under Hydra that is wrong three ways: each child makes its own run dir (or
writes in the cwd), a `--multirun` child runs its own copy of the whole sweep, and an Optuna child asks its
own sampler for hyperparameters, so the ranks of one trial train with different values. Here rank 0
writes the run's composed, resolved config and its Hydra state to `<run dir>/.hydra/replica.yaml` and
starts each child as `python -c "<factory.training.distributed.replica.main>" <that file>`: the child calls
`factory.training.run.train` with those values and that run dir, and runs no sweep. `RankCheck` then
compares, across ranks, what each is about to train (config, hyperparameters, learning rates,
vocabulary) and stops the run if any differ. On SLURM (`hydra/launcher=slurm`), `srun` starts every rank
of a job itself; each runs the same job, so the values agree too.

Only rank 0 writes exports, plots and reports: `is_global_zero()` before the Trainer exists,
`trainer.is_global_zero` after.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import signal
import site
import socket
import subprocess
import sys
import threading
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from torch import nn

from factory.checkpoints.atomic import atomic_write_text
from factory.config import ConfigError, did_you_mean, plain_data
from factory.training.lightning.failures import process_group_timeout

logger = logging.getLogger(__name__)

REPLICA_FILE = Path(".hydra") / "replica.yaml"  # under the run dir
RANKS_FILE = "ranks.json"  # under the run dir: what each rank trained (runs of more than one process)
BLOCKS = "blocks"  # a strategy's wrap policy value that stands for `block_classes(model)`


# ---- ranks --------------------------------------------------------------------------------------------
def _in_group() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def global_rank() -> int:
    """This process's rank in the run: the process group's, else Lightning's reading of the environment
    (`RANK`, `LOCAL_RANK`, `SLURM_PROCID`, ...), so it is right in a DDP child before the group exists."""
    if _in_group():
        return torch.distributed.get_rank()
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def is_global_zero() -> bool:
    """True in the one process that writes a run's exports, plots and reports (on a node other than the
    first, `NODE_RANK` or `GROUP_RANK` says so before the process group exists)."""
    node = os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK") or "0"
    return global_rank() == 0 and (node == "0" or _in_group())


# ---- trainer presets ----------------------------------------------------------------------------------
def _precisions() -> list[Any]:
    try:
        from lightning_fabric.plugins.precision.precision import _PRECISION_INPUT

        return [v for literal in typing.get_args(_PRECISION_INPUT) for v in typing.get_args(literal)]
    except ImportError:  # a Lightning that moved it: let the Trainer judge
        return []


# Strategies after which each rank holds a shard of the model: FSDP, and FSDP2 (`fully_shard`, applied by
# `FactoryModule.configure_model`) through ModelParallelStrategy, which also runs on CPU through gloo.
SHARDED = (pl.strategies.FSDPStrategy, pl.strategies.ModelParallelStrategy)


def _strategy_class(target: str) -> type:
    from hydra.utils import get_class

    try:
        cls = get_class(target)
    except Exception as e:  # noqa: BLE001  (ImportError, ValueError: hydra words them)
        raise ConfigError(
            f"trainer.strategy._target_={target!r} cannot be imported: {e}", key="strategy"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, pl.strategies.Strategy)):
        raise ConfigError(
            f"trainer.strategy._target_={target!r} is not a pytorch_lightning Strategy.", key="strategy"
        )
    return cls


def _is_fsdp(strategy: Any) -> bool:
    if isinstance(strategy, str):
        return strategy.startswith("fsdp")
    if isinstance(strategy, Mapping):
        return issubclass(_strategy_class(strategy["_target_"]), pl.strategies.FSDPStrategy)
    return isinstance(strategy, pl.strategies.FSDPStrategy)


def check_trainer(values: Mapping[str, Any]) -> dict[str, Any]:
    """The `trainer` values, checked where a mistake would otherwise surface after the data is read:
    precision, devices, num_nodes, accumulation, clipping and the strategy (a registered name such as
    `ddp`, or a `_target_` node of a Lightning strategy). Raises `ConfigError` naming the key."""
    values = dict(values)

    def fail(key: str, valid: str, hint: str = "") -> None:
        raise ConfigError(f"trainer.{key}={values[key]!r} is not valid: expected {valid}.{hint}", key=key)

    def count(key: str) -> bool:
        return isinstance(values[key], int) and not isinstance(values[key], bool) and values[key] >= 1

    precisions = _precisions()
    precision = values.get("precision")
    if precision is not None and precisions and precision not in precisions:
        fail("precision", f"one of {precisions}", did_you_mean(str(precision), [str(p) for p in precisions]))
    accelerator = values.get("accelerator", "auto")
    if accelerator == "cpu" and str(precision) in ("16", "16-mixed"):  # Lightning would switch to bf16
        fail("precision", "32-true or bf16-mixed on CPU (float16 mixed precision is for GPUs)")
    for key in ("num_nodes", "accumulate_grad_batches"):
        if key in values and not count(key):
            fail(key, "a positive integer")
    devices = values.get("devices", "auto")
    if not (
        devices == "auto"
        or devices == -1
        or (isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1)
        or (isinstance(devices, list) and all(isinstance(d, int) for d in devices) and devices)
        or (isinstance(devices, str) and devices.replace(",", "").replace(" ", "").isdigit())
    ):
        fail("devices", "a positive integer, -1 or 'auto' (all), or a list of device indices")
    clip = values.get("gradient_clip_val")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or clip < 0):
        fail("gradient_clip_val", "a number >= 0, or null for no clipping")
    strategy = values.get("strategy", "auto")
    if isinstance(strategy, str):
        names = ["auto", *pl.strategies.StrategyRegistry.available_strategies()]
        if strategy not in names:
            fail("strategy", f"one of {names} or a _target_ node", did_you_mean(strategy, names))
    elif isinstance(strategy, Mapping):
        if "_target_" not in strategy:
            raise ConfigError(
                f"trainer.strategy needs a _target_ (a pytorch_lightning strategy class); got keys {sorted(strategy)}.",
                key="strategy",
            )
        _strategy_class(strategy["_target_"])
        timeout = strategy.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
        ):
            raise ConfigError(
                f"trainer.strategy.timeout={timeout!r} is not valid: expected a positive number of seconds "
                "(how long a rank waits for the others before the run fails), or null for the default.",
                key="timeout",
            )
        for key in ("auto_wrap_policy", "activation_checkpointing_policy"):
            if strategy.get(key) not in (None, BLOCKS):
                raise ConfigError(
                    f"trainer.strategy.{key}={strategy[key]!r} is not valid: expected {BLOCKS!r} (our "
                    f"transformer blocks: {[c.__name__ for c in block_classes()]}) or null.",
                    key=key,
                )
    else:
        fail("strategy", "a strategy name or a _target_ node")
    if _is_fsdp(strategy):
        if accelerator == "cpu":
            fail("accelerator", "gpu (or auto on a GPU machine): Lightning runs FSDP on GPUs only")
        if values.get("gradient_clip_algorithm") == "value":
            fail("gradient_clip_algorithm", "norm with FSDP (FSDP clips by norm only)")
    return values


def block_classes(model: nn.Module | None = None) -> tuple[type[nn.Module], ...]:
    """The transformer block classes: the classes of the modules our architectures keep in `nn.ModuleList`s
    (BertLayer, GPT2Block, BartEncoderLayer, BartDecoderLayer), in `model` or in every registered arch.

    These are FSDP's units (`auto_wrap_policy: blocks`): each block's parameters are gathered for its
    forward and backward and freed after, so peak memory is one block's full weights plus the shards.
    """
    if model is None:
        from factory import registry
        from factory.build import build_model

        models = []
        for model_type in registry.model_types():
            with torch.device("meta"):  # shapes only: nothing is allocated or initialised
                models.append(build_model({"model_type": model_type}, "base")[1])
    else:
        models = [model]
    found: dict[type[nn.Module], None] = {}
    for m in models:
        for module in m.modules():
            if isinstance(module, nn.ModuleList):
                for child in module:
                    if not type(child).__module__.startswith("torch."):  # not a bare nn.Linear list
                        found[type(child)] = None
    return tuple(found)


def trainer_arguments(values: Mapping[str, Any], model: nn.Module | None = None) -> dict[str, Any]:
    """`pl.Trainer` keyword arguments from checked `trainer` values: a `strategy` node becomes the strategy
    object, with `blocks` in a wrap policy replaced by the block classes of `model`. Keys that are not
    Trainer arguments (ours, such as `compile`: `factory.training.lightning.performance`) stay out."""
    accepted = inspect.signature(pl.Trainer.__init__).parameters
    out = {k: v for k, v in values.items() if k in accepted}
    node = out.get("strategy")
    if isinstance(node, Mapping):
        kwargs = {k: v for k, v in node.items() if k != "_target_"}
        cls = _strategy_class(node["_target_"])
        if issubclass(cls, pl.strategies.ModelParallelStrategy) and kwargs.get("data_parallel_size") is None:
            # Lightning's "auto" puts the ranks of a node into tensor parallelism; FSDP2 alone shards
            # over every rank.
            kwargs["data_parallel_size"] = world_size(values)
        if issubclass(cls, SHARDED + (pl.strategies.DDPStrategy,)):
            # Bounded: a hung rank ends the run in minutes, not torch's default half hour (guards.py).
            kwargs["timeout"] = process_group_timeout(kwargs.get("timeout"))
        for key in ("auto_wrap_policy", "activation_checkpointing_policy"):
            if kwargs.get(key) == BLOCKS:
                kwargs[key] = set(block_classes(model))
        try:
            out["strategy"] = cls(**kwargs)
        except TypeError as e:
            raise ConfigError(f"trainer.strategy: {e}", key="strategy") from None
    return out


def world_size(values: Mapping[str, Any]) -> int:
    """How many ranks checked `trainer` values start: devices per node (a count, a list, "0,1", or
    auto/-1: every GPU, one process on CPU) times `num_nodes`."""
    devices = values.get("devices", "auto")
    if isinstance(devices, list):
        per_node = len(devices)
    elif isinstance(devices, str) and devices != "auto":
        per_node = len([d for d in devices.split(",") if d.strip()])
    elif isinstance(devices, int) and devices >= 1:
        per_node = devices
    else:
        gpu = values.get("accelerator", "auto") != "cpu" and torch.cuda.is_available()
        per_node = torch.cuda.device_count() if gpu else 1
    return per_node * int(values.get("num_nodes", 1))


def is_sharded(trainer: pl.Trainer) -> bool:
    """Whether no single rank holds the whole model after fit (FSDP, FSDP2): exports need a gathered
    checkpoint."""
    return isinstance(trainer.strategy, SHARDED)


# ---- rank 0's values in every rank --------------------------------------------------------------------
def _hydra_state() -> dict[str, Any] | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    # Unresolved, as Hydra's own hydra.yaml: the values a run reads (overrides, job, runtime.output_dir)
    # are plain already, and a resolver (a sweep's next trial dir) must not run again. Not `plain_data`:
    # Hydra's own schema holds enums (`mode: RUN`), which go back into OmegaConf in the child as they are.
    return OmegaConf.to_container(HydraConfig.get(), resolve=False)


def write_replica(cfg: DictConfig | Mapping[str, Any], run_dir: str | os.PathLike) -> Path:
    """Write what a child rank needs to replay this run; return the file's path."""
    run_dir = Path(run_dir).resolve()
    replica = {"run_dir": str(run_dir), "config": plain_data(cfg), "hydra": _hydra_state()}
    return atomic_write_text(run_dir / REPLICA_FILE, OmegaConf.to_yaml(OmegaConf.create(replica)))


def replica_command(path: str | os.PathLike) -> list[str]:
    """The command of a child rank: no script and no command line of its own, only the replica file."""
    code = "import sys, factory.training.distributed.replica as r; sys.exit(r.main(sys.argv[1:]))"
    return [sys.executable, "-c", code, str(path)]


class _Observer(threading.Thread):
    """Lightning's child watch, which can be stopped: a child that dies ends the run (the others are
    killed, then this process, if it has not raised by itself within `grace` seconds), but a run that
    ends, well or with an error, first stops the watch and then ends its children itself."""

    def __init__(self, procs: list[subprocess.Popen], grace: float = 10.0, period: float = 1.0) -> None:
        super().__init__(daemon=True, name="factory-rank-observer")
        self.procs, self.grace, self.period = procs, grace, period
        self.stopped = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stopped.wait(self.period):
            codes = [p.poll() for p in self.procs]
            if all(c == 0 for c in codes):
                return
            failed = [(i + 1, c) for i, c in enumerate(codes) if c]
            if failed:
                logger.error("Rank %d exited with code %d: ending the run.", *failed[0])
                if self.stopped.wait(self.grace):
                    return  # rank 0 raised by itself (gloo notices a dead peer) and ends the run
                with self.lock:
                    if self.stopped.is_set():
                        return
                    for p in self.procs:
                        p.kill()
                    os.kill(os.getpid(), signal.SIGKILL)  # as Lightning: a collective may never return

    def stop(self) -> None:
        with self.lock:
            self.stopped.set()


_ENV_KEYS = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS")


class ReplicaLauncher(_SubprocessScriptLauncher):
    """Lightning's launcher of a node's ranks, with children that replay this run (see the module doc).

    `finish()` ends what `launch` started in this process (children, process group, environment), so the
    next run of a sweep in this process starts its own ranks.
    """

    def __init__(
        self, launcher: Any, cfg: DictConfig | Mapping[str, Any], run_dir: str | os.PathLike
    ) -> None:
        super().__init__(launcher.cluster_environment, launcher.num_processes, launcher.num_nodes)
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.observer: _Observer | None = None
        self._saved: dict[str, str | None] | None = None
        self._threads = torch.get_num_threads()

    def launch(self, function: Any, *args: Any, trainer: pl.Trainer | None = None, **kwargs: Any) -> Any:
        from lightning_fabric.utilities.distributed import _set_num_threads_if_needed

        self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            self._saved = {k: os.environ.get(k) for k in _ENV_KEYS}
            self._threads = torch.get_num_threads()
            self._call_children_scripts()
            self.observer = _Observer(self.procs)
            self.observer.start()
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)

    def _call_children_scripts(self) -> None:
        # As Lightning's, but each child runs `replica_command` in this process's cwd.
        self._check_can_spawn_children()
        self.procs = []
        env = self.cluster_environment
        os.environ["MASTER_ADDR"] = env.main_address
        os.environ["MASTER_PORT"] = str(env.main_port)
        os.environ["NODE_RANK"] = str(env.node_rank())
        os.environ["LOCAL_RANK"] = str(env.local_rank())
        os.environ["WORLD_SIZE"] = f"{self.num_processes * self.num_nodes}"
        if self.num_processes < 2:
            return
        command = replica_command(write_replica(self.cfg, self.run_dir))
        # The children import the same `factory` as this process: a checkout that is not installed too.
        root = str(Path(__file__).resolve().parents[3])  # the folder that holds factory/
        installed = root in {*site.getsitepackages(), site.getusersitepackages()}
        for local_rank in range(1, self.num_processes):
            child = os.environ.copy()
            child["LOCAL_RANK"] = str(local_rank)
            # Rank 0 resolved and fetched the checkpoint before the Trainer started these ranks: they
            # read that commit from the cache, never the network (one download, and the same weights
            # even if the branch moves meanwhile).
            child["HF_HUB_OFFLINE"] = "1"
            if not installed:
                child["PYTHONPATH"] = os.pathsep.join(p for p in (root, child.get("PYTHONPATH")) if p)
            self.procs.append(subprocess.Popen(command, env=child, cwd=os.getcwd()))

    def finish(self, failed: bool, timeout: float = 60.0) -> None:
        """Wait for the children (kill them at once if this rank failed), then leave no trace of the run's
        process group or environment in this process."""
        if self.observer is not None:
            self.observer.stop()
        for rank, proc in enumerate(self.procs, start=1):
            try:
                proc.wait(timeout=1.0 if failed else timeout)
            except subprocess.TimeoutExpired:
                logger.warning("Local rank %d (pid %d) did not exit: killing it.", rank, proc.pid)
                proc.kill()
                proc.wait()
        if _in_group():
            torch.distributed.destroy_process_group()
        for key, value in (self._saved or {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        torch.set_num_threads(self._threads)
        codes = [p.returncode for p in self.procs]
        if not failed and any(codes):
            raise RuntimeError(f"Local ranks 1.. exited with codes {codes} after rank 0 finished its run.")


@contextlib.contextmanager
def replicas(
    trainer: pl.Trainer, cfg: DictConfig | Mapping[str, Any], run_dir: str | os.PathLike
) -> Iterator[None]:
    """Around a run's `trainer.fit` / `validate`: child ranks replay `cfg` in `run_dir` instead of the
    command line, and leave when the block does. Does nothing for strategies that start no processes."""
    launcher = getattr(trainer.strategy, "launcher", None)
    if type(launcher) is _SubprocessScriptLauncher:  # exactly Lightning's: it reruns sys.argv
        launcher = ReplicaLauncher(launcher, cfg, run_dir)
        trainer.strategy._launcher = launcher
    if not isinstance(launcher, ReplicaLauncher):
        yield
        return
    try:
        yield
    except BaseException:
        launcher.finish(failed=True)
        raise
    launcher.finish(failed=False)


# ---- every rank trains the same thing -----------------------------------------------------------------
def digest(value: Any) -> str:
    """A short sha256 of plain data (key order does not matter)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def gather(value: Any) -> list[Any]:
    """`value` from every rank, in rank order (a list of one outside a process group)."""
    if not _in_group():
        return [value]
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, value)
    return out


class RankCheck(pl.Callback):
    """At fit start, every rank reports what it is about to train; a difference stops the run on all ranks
    with the differing values named. With more than one rank, rank 0 writes the reports to
    `<run dir>/ranks.json`.

    Compared: a digest of the resolved config (`config`), of the module's hyperparameters, the optimizers'
    learning rates, and `extra` values (e.g. a digest of the tokenizer's vocabulary).
    """

    COMPARED = ("config", "hparams", "lr", "extra")

    def __init__(
        self,
        config: DictConfig | Mapping[str, Any],
        run_dir: str | os.PathLike,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = digest(plain_data(config))
        self.run_dir = Path(run_dir)
        self.extra = dict(extra or {})

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        backend = torch.distributed.get_backend() if _in_group() else None
        mine = {
            "rank": trainer.global_rank,
            "node_rank": trainer.node_rank,
            "local_rank": trainer.local_rank,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": str(pl_module.device),
            "backend": backend,
            "config": self.config,
            "hparams": digest(dict(pl_module.hparams)),
            "lr": [g.get("initial_lr", g["lr"]) for opt in trainer.optimizers for g in opt.param_groups],
            "extra": self.extra,
        }
        reports = gather(mine)
        if len(reports) > 1 and trainer.is_global_zero:
            text = json.dumps(reports, indent=2, default=str) + "\n"
            atomic_write_text(self.run_dir / RANKS_FILE, text)
        differ = [k for k in self.COMPARED if any(r[k] != reports[0][k] for r in reports)]
        if differ:
            shown = {k: [r[k] for r in reports] for k in differ}
            raise RuntimeError(
                f"The {len(reports)} ranks of this run would train different things ({differ} differ, "
                f"by rank: {shown}); see {self.run_dir / RANKS_FILE}. Start every rank with the same "
                "config (train.py does; on SLURM use hydra/launcher=slurm)."
            )
