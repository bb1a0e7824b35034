"""One training run from a composed config: `train(cfg)` is what `train.py` and the tests call.

Order matters: the config is resolved into a plan first (`factory.training.plan`), so a typo or a bad
value fails before any weight or data is read. Then data, tokenizer, model, Lightning; then the run dir
gets `model/`, `results.json` and a plot of the curves. Nothing is written outside the run dir.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from factory.checkpoints.atomic import atomic_write_text
from factory.config import ConfigError, plain_data
from factory.plugins import import_plugins
from factory.training.command_line import UserSet, user_set
from factory.training.distributed import ranks
from factory.training.lightning import performance
from factory.training.lightning.callbacks import History, without_terminal_bars
from factory.training.lightning.failures import (
    FiniteGuard,
    NonFiniteError,
    Preempted,
    Preemption,
    ProcessGuard,
    non_finite_tensors,
)
from factory.training.lightning.module import FactoryModule, config_values
from factory.training.plan import Plan, describe, format_description, resolve, run_dir_of
from factory.training.pretrained import load_pretrained, write_report
from factory.training.resume import (
    AtomicCheckpointIO,
    ResumeState,
    RunLock,
    checkpoint_step,
    keep_metrics_history,
    last_checkpoint,
    remove_orphaned_temps,
)
from factory.training.sweeps.study import trial_pruning
from factory.training.sweeps.trials import in_multirun
from factory.training.tracking import loggers as tracking
from factory.training.tracking.provenance import PROVENANCE_FILE, write_provenance

logger = logging.getLogger(__name__)


# Messages a default run prints that say nothing about it: Lightning's advertisement, its notes that a
# limit of 1.0 means "all batches", a deprecation inside Lightning itself, and the Optuna storage's
# schema setup lines. Dropped by exact text; every other message stays.
_NOISE = re.compile(
    r"💡 Tip: |`Trainer\((limit_\w+|val_check_interval)=1(\.0)?\)` was configured so "
    r"|Loading `\w+_dataloader` to estimate number of stepping batches"
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _NOISE.match(record.getMessage())


def quiet_known_noise() -> None:
    """Drop the known-harmless messages of a default run (see `_NOISE`); idempotent."""
    import warnings

    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in log.filters):
            log.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    logging.getLogger("alembic").setLevel(logging.WARNING)


def instantiate_all(
    nodes: Any, base: type, group: str, prepare: Callable[[type, dict], dict] | None = None, **kwargs: Any
) -> list[Any]:
    """Third-party objects (loggers, callbacks) from `_target_` nodes; `enabled: false` skips one.
    `prepare(cls, node)` may fill in a node's defaults once its class is known (`kwargs` are passed to
    classes that take them).

    A config is data a run dir carries around (`resume=` composes `.hydra/config.yaml`): only a subclass
    of `base` is constructed, and no argument may name a `_target_` of its own, so a planted node cannot
    make the run construct anything else (a file handler that truncates a file, say).
    """
    from hydra.utils import instantiate

    out = []
    for name, node in (nodes or {}).items():
        if node is None:
            continue
        node = plain_data(node, f"{group}.{name}")
        if not node.pop("enabled", True):
            continue
        if "_target_" not in node:
            raise ConfigError(
                f"{group}.{name}: a {base.__name__} needs a _target_ (got keys {sorted(node)})."
            )
        target = node["_target_"]
        try:
            cls = _target_class(target)
        except Exception as e:  # noqa: BLE001  (Hydra wraps import errors in several types)
            raise ConfigError(f"{group}.{name}._target_={target!r} cannot be imported: {e}") from None
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise ConfigError(
                f"{group}.{name}._target_={target!r} is not a {base.__module__}.{base.__name__}: refused "
                "(a config names only classes of that kind here)."
            )
        nested = [k for k, v in node.items() if k != "_target_" and "_target_" in repr(v)]
        if nested:
            raise ConfigError(f"{group}.{name}.{nested[0]}: an argument cannot name a _target_ of its own.")
        if prepare is not None:
            node = prepare(cls, node)
        params = inspect.signature(cls).parameters
        out.append(instantiate(node, _recursive_=False, **{k: v for k, v in kwargs.items() if k in params}))
    return out


def _target_class(target: str) -> Any:
    from hydra.utils import get_class

    return get_class(target)


def _tokenizer_and_model(
    plan: Plan, splits: Any, saved: Path | None = None
) -> tuple[Any, FactoryModule, dict[str, Any] | None]:
    """The tokenizer (trained, the checkpoint's, or `saved`: the one a resumed run trained), the module,
    and init=pretrained's load report."""
    from factory.tokenizers.training import special_token_ids, train_tokenizer

    head = plan.task
    extra = head.config_values(splits)
    labels = extra.pop("id2label", None)
    if plan.pretrained is not None:
        config, model, tokenizer, report = load_pretrained(
            plan.pretrained,
            head.name,
            labels=labels,
            extra=extra,
            resolved=(plan.config, plan.commit, plan.applied or {}),
        )
        module = FactoryModule(config, head.name, plan.optim, plan.seed, model=model)
        return tokenizer, module, report
    started = time.perf_counter()
    if saved is not None and saved.is_dir():  # the weights were trained with exactly these ids
        from factory.tokenizers.tokenizer import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(saved)
    else:
        tokenizer = train_tokenizer(
            plan.config.model_type, head.tokenizer_texts(splits), plan.arch["vocab_size"]
        )
        elapsed = time.perf_counter() - started
        logger.info("Trained a tokenizer of %d tokens in %.1fs.", len(tokenizer), elapsed)
    fields = set(type(plan.config).field_names())
    values = {k: v for k, v in special_token_ids(tokenizer).items() if k in fields}
    values["vocab_size"] = len(tokenizer)
    if labels is not None:
        values["id2label"] = labels
    config = plan.config.replace(**values)
    return tokenizer, FactoryModule(config, head.name, plan.optim, plan.seed), None


def what_the_user_set(cfg: DictConfig, typed: UserSet) -> UserSet:
    """What the user set for this run: what this command line `typed`; a resumed run adds the keys its
    first run's user typed (recorded in provenance.json), so it resolves to the same model."""
    user = UserSet(set(typed.keys), dict(typed.groups))
    resume = cfg.get("resume")
    record = Path(resume) / PROVENANCE_FILE if resume else None
    if record is not None and record.is_file():
        user.keys |= set(json.loads(record.read_text(encoding="utf-8")).get("typed", []))
    return user


def check_resumable(ckpt_path: str | os.PathLike, module: FactoryModule) -> None:
    """Raise `ConfigError` when the checkpoint's weights do not fit the model this config builds (a resume
    that changes `arch.hidden_size`, ...), naming the changed keys, before Lightning's size-mismatch error."""
    import torch

    saved = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    before = {k: tuple(v.shape) for k, v in saved.get("state_dict", {}).items()}
    now = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    changed = sorted(k for k in before.keys() & now.keys() if before[k] != now[k])
    missing, extra = sorted(before.keys() - now.keys()), sorted(now.keys() - before.keys())
    if not (changed or missing or extra):
        return
    saved_arch = (saved.get("hyper_parameters") or {}).get("arch", {})
    mine = config_values(module.model.config)
    keys = sorted(k for k in mine if k in saved_arch and saved_arch[k] != mine[k])
    detail = ", ".join(f"arch.{k}: {saved_arch[k]!r} -> {mine[k]!r}" for k in keys[:6]) or "the model's shape"
    where = changed[:3] or missing[:3] or extra[:3]
    raise ConfigError(
        f"resume: {ckpt_path} holds a model of another shape ({detail}; e.g. {', '.join(where)}). A resumed "
        "run continues the same model: drop the overrides that change its shape, or start a new run."
    )


def named_plugins(cfg: DictConfig, user: UserSet) -> list[str]:
    """The config's `plugins` when the user named them for this run (on the command line, or in a preset
    they chose); importing runs code, so plugins that only a config names (a run dir's, replayed or
    resumed) are refused with their names instead of imported."""
    wanted = [str(p) for p in (cfg.get("plugins") or [])]
    if wanted and "plugins" not in user.keys:
        listed = ",".join(wanted)
        raise ConfigError(
            f"The config names plugins {wanted}, but this command line does not: importing them would run "
            f"code that a config someone wrote chose (a run dir's, replayed or resumed). If you trust "
            f"that code, add plugins=[{listed}] to the command line.",
            key="plugins",
        )
    return wanted


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Have glibc keep freed memory in the process for reuse; True when the setting took.

    Every training step allocates and frees the same large tensors (activations, logits, gradients).
    glibc serves each block over 32 MB with a fresh mmap and unmaps it when freed, so the next step
    page-faults all of it in again: with GPT-2 at 8x128, ~1.8 GB of minor faults and about a fifth of
    the step's wall time. Raising the mmap and trim thresholds makes those blocks come from the heap
    and stay there, so after the first step they are reused warm. The cost is that the process keeps
    its peak memory until it exits, which a training process reaches every step anyway. Not glibc
    (macOS, musl): nothing changes.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # Blocks up to 1 GiB from the heap; the heap never trimmed (INT_MAX). mallopt returns 0 on refusal.
    took = bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30))
    return bool(mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)) and took


def train(
    cfg: DictConfig, run_dir: str | os.PathLike | None = None, overrides: Sequence[str] | None = None
) -> float:
    """Train as `cfg` says; return the best value of the head's monitored metric (nan for a dry run).

    `overrides` are the values the user typed (default: this Hydra run's record); with `init=pretrained`
    only those `arch` values apply over the checkpoint's.
    """
    typed = user_set(overrides)  # this command line's own keys: plugins are imported only on its word
    import_plugins(named_plugins(cfg, typed))
    quiet_known_noise()
    user = what_the_user_set(cfg, typed)
    if cfg.get("dry_run"):
        logger.info("Dry run:\n%s", format_description(describe(cfg, user)))
        return float("nan")
    plan = resolve(cfg, user)
    # resume=<run dir>: the same dir, and its last.ckpt (cfg is the run's own config: see train.py).
    resume = cfg.get("resume")
    ckpt_path = last_checkpoint(resume) if resume else None
    out = run_dir_of(cfg, run_dir or resume)
    out.mkdir(parents=True, exist_ok=True)
    key = "resume" if resume else "hydra.run.dir"
    # Only rank 0 owns the dir: DDP child ranks replay its run there.
    with RunLock(out, key) if ranks.is_global_zero() else contextlib.nullcontext():
        return _train_in(cfg, plan, out, ckpt_path)


def _train_in(cfg: DictConfig, plan: Plan, out: Path, ckpt_path: Path | None) -> float:
    """`train` in its run dir `out`, which this run holds. Rank 0 alone writes exports, plots and reports."""
    from factory.data.sources import load_examples

    started = time.perf_counter()
    prepare_run_dir(cfg, plan, out)
    prepare_process(plan.seed)
    splits = load_examples(plan.task, plan.data)
    tokenizer, module = tokenizer_and_model(plan, splits, out, ckpt_path)
    datamodule = data_module(plan, tokenizer, splits)
    loggers = open_loggers(cfg, out, ckpt_path)
    fit = make_trainer(cfg, plan, out, module, tokenizer, loggers)
    best_path = run_fit(fit, cfg, out, module, datamodule, ckpt_path)
    if not fit.trainer.is_global_zero:
        return float("nan")
    export(best_path, module, tokenizer, out, loggers, cfg)
    results = summarize(plan, module, fit, best_path, started)
    write_results(results, fit.history, out, module.model.config.model_type)
    return float(results["best_value"])


# ---- the steps of a run ---------------------------------------------------------------------------------
def prepare_run_dir(cfg: DictConfig, plan: Plan, out: Path) -> None:
    """Rank 0: clear a killed save's half-written files, and record how to replay the run."""
    if not ranks.is_global_zero():
        return
    remove_orphaned_temps(out / "checkpoints")
    typed = sorted(k for k in plan.user.keys if "." in k and not k.startswith("hydra"))
    write_provenance(cfg, out, seed=plan.seed, typed=typed)


def prepare_process(seed: int) -> None:
    """This process's memory reuse and random generators, before anything is built."""
    if keep_freed_memory():  # each step reuses the last one's memory instead of page-faulting it in
        logger.debug("glibc keeps freed memory for reuse (mmap and trim thresholds raised).")
    pl.seed_everything(seed, workers=True)


def tokenizer_and_model(
    plan: Plan, splits: Any, out: Path, ckpt_path: Path | None
) -> tuple[Any, FactoryModule]:
    """The tokenizer and the module, checked against the checkpoint a resumed run continues; rank 0 saves
    the tokenizer as trained at the start (a resumed run reuses it) or init=pretrained's load report."""
    tokenizer_dir = out / "tokenizer"
    tokenizer, module, load_report = _tokenizer_and_model(
        plan, splits, tokenizer_dir if ckpt_path is not None else None
    )
    if ckpt_path is not None:
        check_resumable(ckpt_path, module)
    if not ranks.is_global_zero():
        return tokenizer, module
    if load_report is not None:
        write_report(load_report, out)
    elif not tokenizer_dir.is_dir():
        tokenizer.save_pretrained(tokenizer_dir)
    return tokenizer, module


def data_module(plan: Plan, tokenizer: Any, splits: Any) -> Any:
    """The data module, its splits encoded now, so bad data fails before the Trainer starts. The loader's
    sizes go in as arguments, and only there: the data config it gets holds the head's keys."""
    from factory.data.module import FactoryDataModule

    data = dict(plan.data)
    sizes = {key: data.pop(key) for key in ("batch_size", "max_length")}
    datamodule = FactoryDataModule(
        plan.task,
        data,
        tokenizer,
        **sizes,
        num_workers=data.pop("num_workers", 0),
        seed=plan.seed,
        splits=splits,
    )
    datamodule.setup("fit")
    return datamodule


def open_loggers(cfg: DictConfig, out: Path, ckpt_path: Path | None) -> list[Any]:
    """The config's loggers; a resumed run keeps the metrics its checkpoint had seen, and rank 0 logs the
    config."""
    # MLflow's store: in a sweep the sweep dir's, so that one experiment holds every trial.
    store = out.parent if in_multirun() else out
    defaults = functools.partial(tracking.logger_defaults, out=out, store=store)
    loggers = instantiate_all(cfg.get("logger"), pl.loggers.Logger, "logger", defaults, save_dir=str(out))
    if ranks.is_global_zero():
        if ckpt_path is not None:
            keep_metrics_history(loggers, checkpoint_step(ckpt_path))
        tracking.log_config(
            loggers, cfg
        )  # after the line above: opening the CSV logger deletes the metrics it keeps
    return loggers


@dataclass
class Fit:
    """A Trainer and the callbacks of ours whose state the run reads after fitting."""

    trainer: pl.Trainer
    history: History
    checkpoint: pl.callbacks.ModelCheckpoint | None  # the one that keeps the best weights
    preemption: Preemption
    pruning: Any  # the Optuna trial's pruning callback, None outside such a trial


def make_trainer(
    cfg: DictConfig, plan: Plan, out: Path, module: FactoryModule, tokenizer: Any, loggers: list[Any]
) -> Fit:
    """The Trainer with the config's callbacks and ours (history, rank check, resume state, guards)."""
    callbacks = instantiate_all(cfg.get("callbacks"), pl.Callback, "callbacks")
    callbacks, bar = without_terminal_bars(callbacks)
    checkpoints = [c for c in callbacks if isinstance(c, pl.callbacks.ModelCheckpoint)]
    for c in checkpoints:  # the best one and last.ckpt
        c.dirpath = c.dirpath or str(out / "checkpoints")
    checkpoint = next((c for c in checkpoints if c.monitor), checkpoints[0] if checkpoints else None)
    history, preemption = History(), Preemption()
    # A trial of the Optuna sweeper: each validation reported to the study, and stopped when pruned.
    pruning = trial_pruning(plan.monitor)
    # Every rank checks it trains what rank 0 does (config, hyperparameters, lr, vocabulary).
    same = ranks.RankCheck(cfg, out, extra={"vocab": ranks.digest(tokenizer.get_vocab())})
    performance.apply(module.model, performance.split_trainer(plan.trainer)[1])
    arguments = ranks.trainer_arguments(plan.trainer, module.model)
    plugins = arguments.pop("plugins", None) or []
    if not bar:
        arguments["enable_progress_bar"] = False
    ours = [history, same, ResumeState(), FiniteGuard(), ProcessGuard(), preemption]
    trainer = pl.Trainer(
        **arguments,
        default_root_dir=str(out),
        logger=loggers or False,
        callbacks=[*callbacks, *ours, *([pruning] if pruning is not None else [])],
        enable_checkpointing=checkpoint is not None,
        # Checkpoints written next to their target and renamed into place: never half a last.ckpt.
        plugins=[*(plugins if isinstance(plugins, list) else [plugins]), AtomicCheckpointIO()],
    )
    return Fit(trainer, history, checkpoint, preemption, pruning)


def run_fit(
    fit: Fit, cfg: DictConfig, out: Path, module: FactoryModule, datamodule: Any, ckpt_path: Path | None
) -> str:
    """Fit, validate once if training stopped before any validation, and return the best checkpoint's
    path ("" for none). DDP/FSDP: the other ranks replay this run (cfg, run dir), not the command line,
    and end with the block."""
    trainer = fit.trainer
    logger.info(
        "Training %s (%s, %s parameters) in %s",
        type(module.model).__name__,
        module.head,
        f"{module.model.num_parameters():,}",
        out,
    )
    with ranks.replicas(trainer, cfg, out):
        _fit(trainer, module, datamodule, ckpt_path, fit.preemption, out)
        if not fit.history.validation and trainer.limit_val_batches and not trainer.fast_dev_run:
            trainer.validate(module, datamodule=datamodule, verbose=False)
        best_path = fit.checkpoint.best_model_path if fit.checkpoint is not None else ""
        if not best_path and ranks.is_sharded(trainer):  # FSDP: every rank sends its shards
            best_path = str(out / "checkpoints" / "final.ckpt")
            trainer.save_checkpoint(best_path)
    return best_path


def _fit(
    trainer: pl.Trainer, module: Any, datamodule: Any, ckpt_path: Any, preemption: Any, out: Path
) -> None:
    """`trainer.fit`, with Lightning's SIGTERM exit (a `SystemExit` with status None: exit 0, as if the run
    had ended) turned into `Preempted`, which says how to continue."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        saved = f"wrote {preemption.saved}" if preemption.saved else "no last.ckpt could be written"
        raise Preempted(
            f"SIGTERM at global step {trainer.global_step}: training stopped, {saved}; continue with "
            f"`python train.py resume={out}`."
        ) from None


def export(
    best_path: str, module: FactoryModule, tokenizer: Any, out: Path, loggers: list[Any], cfg: DictConfig
) -> None:
    """The best weights (the last ones without a checkpoint: fast_dev_run, or no checkpoint callback) and
    the tokenizer to `out/model`, never with a non-finite value; then model/, the resolved config and
    provenance.json to the trackers."""
    if best_path:
        best = FactoryModule.load_from_checkpoint(best_path, map_location="cpu", weights_only=True)
    else:
        best = module
    bad = non_finite_tensors(best.model.state_dict())
    if bad:  # never export what cannot be used; the message names the tensors
        raise NonFiniteError(
            f"The weights to export hold non-finite values ({', '.join(bad[:4])}"
            f"{f' and {len(bad) - 4} more' if len(bad) > 4 else ''}); nothing was exported to {out / 'model'}."
        )
    best.model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    tracking.publish(loggers, cfg, out)


def summarize(plan: Plan, module: FactoryModule, fit: Fit, best_path: str, started: float) -> dict[str, Any]:
    """results.json's content: the best and final metrics, sizes, throughput and utilization."""
    history, trainer, monitor, mode = fit.history, fit.trainer, plan.monitor, plan.mode
    final = history.validation[-1][1] if history.validation else {}
    scored = [(step, m) for step, m in history.validation if not math.isnan(m.get(monitor, math.nan))]
    if scored:
        pick = max if mode == "max" else min
        best_step, best_metrics = pick(scored, key=lambda sm: sm[1][monitor])
    else:
        best_step, best_metrics = None, {}
    n_params = module.model.num_parameters()
    return {
        "head": plan.head,
        "model_type": module.model.config.model_type,
        "monitor": monitor,
        "mode": mode,
        "best_value": best_metrics.get(monitor, float("nan")),
        "best_step": best_step,
        "best_metrics": best_metrics,
        "final_metrics": final,
        "final_train_loss": history.train[-1][1] if history.train else None,
        "best_checkpoint": best_path or None,
        "num_parameters": n_params,
        "train_tokens": module.train_tokens,
        "tokens_per_second": module.train_tokens / module.train_time if module.train_time else None,
        "global_step": trainer.global_step,
        "epochs": trainer.current_epoch,
        "pruned_step": fit.pruning.pruned_step if fit.pruning is not None else None,
        "wall_time_s": time.perf_counter() - started,
        **performance.utilization(
            n_params,
            module.model.config,
            tokens=module.train_tokens,
            steps=trainer.global_step,
            seconds=module.train_time,
            length=plan.data["max_length"],
            device=module.device,
            precision=str(plan.trainer.get("precision", "32-true")),
            devices=trainer.world_size,
        ),
    }


def write_results(results: dict[str, Any], history: History, out: Path, model_type: str) -> None:
    """results.json and curves.png (when matplotlib is there) into `out`."""
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    try:
        from factory.training.tracking.plots import plot_curves

        plot_curves(
            history.train, history.validation, out / "curves.png", title=f"{model_type} {results['head']}"
        )
    except ImportError as e:  # matplotlib is what draws it; training results stand without the picture
        logger.warning("No curves.png: %s", e)
    logger.info(
        "%s best %s = %.4f; wrote %s", results["head"], results["monitor"], results["best_value"], out
    )
