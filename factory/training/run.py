"""One training run from a composed config: `train(cfg)` is what `train.py` and the tests call.

Order matters: the whole config is resolved and checked first (arch through `factory.build`, head, init,
optim, trainer keys, sequence length against positions), so a typo or a bad value fails before any
weight or data is read. Then data, tokenizer, model, Lightning; then the run dir gets `model/`,
`results.json` and a plot of the curves. Nothing is written outside the run dir.
"""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from factory import registry
from factory.build import build_config, build_model
from factory.config import ConfigError, PretrainedConfig, did_you_mean, plain_data
from factory.training import distributed
from factory.training.failures import FiniteGuard, ProcessGuard
from factory.training.module import FactoryModule, check_optim, config_values
from factory.training.pretrained import PretrainedInit, load_pretrained, merge_overrides, write_report
from factory.training.provenance import write_provenance
from factory.training.resume import AtomicCheckpointIO, ResumeState, last_checkpoint

logger = logging.getLogger(__name__)

INITS = ("random", "pretrained")
TOP_KEYS = ("arch", "head", "init", "data", "optim", "trainer", "logger", "callbacks")


# ---- checking the command line before Hydra composes ----------------------------------------------------
def hydra_overrides(argv: Sequence[str]) -> tuple[list[str], str]:
    """The overrides and the config name in a `train.py` command line, as Hydra's own parser reads them."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_intermixed_args(list(argv))
    return list(args.overrides or []), args.config_name or "train"


def check_overrides(
    overrides: Sequence[str], config_dir: str | os.PathLike, config_name: str = "train"
) -> None:
    """Raise `ConfigError` naming the key path, the value and the valid keys for an override whose key
    does not exist: `arch.<key>` is checked against the chosen architecture's config class (with or
    without `+`), other keys against the composed config. Hydra would reject a plain typo itself, but
    without saying what is valid; anything this check cannot judge is left to Hydra.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    config_dir = Path(config_dir).resolve()
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return  # Hydra reports its own syntax errors

    def is_group(key: str) -> bool:
        return "/" in key or ("." not in key and (config_dir / key).is_dir())

    groups = [o for o in parsed if is_group(o.key_or_group) and not o.key_or_group.startswith("hydra")]
    keys = [o for o in parsed if not is_group(o.key_or_group) and not o.key_or_group.startswith("hydra")]
    if not keys:
        return
    # A sweep over groups (`-m arch=bert,gpt2`) is checked for each choice.
    options = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [o.input_line]
        for o in groups
    ]
    if GlobalHydra.instance().is_initialized():
        return  # called under a running Hydra: nothing to check against
    for choice in itertools.islice(itertools.product(*options), 16):
        try:
            with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
                cfg = compose(config_name, overrides=list(choice))
        except Exception:  # noqa: BLE001  (an unknown group option, ...: Hydra's own message says it)
            return
        for o in keys:
            if o.is_delete():
                continue
            _check_key(
                cfg,
                o.key_or_group,
                o.input_line.partition("=")[2],
                plain=not (o.is_add() or o.is_force_add()),
            )


def _check_key(cfg: DictConfig, path: str, value: str, plain: bool) -> None:
    parts = path.split(".")
    if parts[0] == "arch" and len(parts) > 1:
        model_type = OmegaConf.select(cfg, "arch.model_type")
        try:
            valid = registry.config_class(model_type).valid_keys()
        except registry.RegistryError:
            return  # build_config names a bad model_type itself
        if parts[1] not in valid:
            raise ConfigError(
                f"{path}={value}: unknown key arch.{parts[1]} for model_type {model_type!r}."
                f"{did_you_mean(parts[1], valid)} Valid keys: {valid}.",
                key=parts[1],
            )
        return
    if not plain:
        return  # `+key=...` adds a key on purpose (e.g. `+trainer.limit_predict_batches=2`)
    node: Any = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig):
            return  # below a list or a value: Hydra judges it
        if part in node.keys():  # `in node` would be False for a mandatory value (???) not yet set
            node = OmegaConf.select(node, part, throw_on_missing=False)
            continue
        where = ".".join(parts[:i]) or "the top level"
        valid = sorted(str(k) for k in node.keys())
        raise ConfigError(
            f"{path}={value}: unknown key {'.'.join(parts[: i + 1])}.{did_you_mean(part, valid)} "
            f"Valid keys under {where}: {valid}. Use +{path}={value} to add a new key on purpose.",
            key=part,
        )


# ---- resolving and checking the composed config ---------------------------------------------------------
@dataclass
class Plan:
    """A composed config, checked and turned into plain values."""

    head: str
    arch: dict[str, Any]
    config: PretrainedConfig  # the arch as a typed config (vocab size not yet from the tokenizer)
    init: dict[str, Any]
    data: dict[str, Any]
    optim: dict[str, Any]
    trainer: dict[str, Any]
    seed: int
    # init=pretrained: the typed init node, and the arch values the user set (not the YAML defaults).
    pretrained: PretrainedInit | None = None
    user_arch: dict[str, Any] = field(default_factory=dict)
    arch_choice: str | None = None


def resolve(cfg: DictConfig) -> Plan:
    """Check everything that can be checked without reading weights or data; `ConfigError` otherwise."""
    for key in TOP_KEYS:
        if key not in cfg:
            raise ConfigError(f"The config has no {key!r} group; it needs {list(TOP_KEYS)}.", key=key)
    head = cfg.head.name
    heads = sorted({h for _, h, _ in registry.registered_models()} - {"base"})
    if head not in heads:
        raise ConfigError(
            f"head.name={head!r} is not valid.{did_you_mean(str(head), heads)} Valid heads: {heads}."
        )
    init = plain_data(cfg.init, "init")
    if init.get("name") not in INITS:
        raise ConfigError(f"init.name={init.get('name')!r} is not valid: expected one of {list(INITS)}.")
    if init["name"] == "pretrained" and OmegaConf.is_missing(cfg.init, "name_or_path"):
        raise ConfigError(
            "init.name_or_path is not set: give a checkpoint folder or a hub id, "
            "e.g. init=pretrained init.name_or_path=bert-base-uncased."
        )
    seed = init.get("seed", 42)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"init.seed={seed!r} is not valid: expected an integer.")
    arch = plain_data(cfg.arch, "arch")
    extra = {"is_decoder": True} if head == "causal_lm" else {}
    config = build_config(arch, **extra)
    registry.model_class(config.model_type, head)  # every registered arch has every head; say so if not
    pretrained, user_arch, arch_choice = None, {}, None
    if init["name"] == "pretrained":
        # The checkpoint's config.json (no weights yet) decides the architecture; the user's values
        # on top are checked now, so a bad combination fails before data or weights are read.
        pretrained = PretrainedInit.from_mapping(init)
        user_arch, arch_choice = user_set_arch(cfg, arch)
        from factory.training.pretrained import checkpoint_config

        ckpt, _ = checkpoint_config(pretrained)
        config, _ = merge_overrides(ckpt, head, user_arch, pretrained, arch_choice=arch_choice)
        config = config.replace(**extra)
    data = plain_data(cfg.data, "data")
    for key in ("batch_size", "max_length"):
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"data.{key}={value!r} is not valid: expected a positive integer.", key=key)
    positions = config.max_position_embeddings
    if data["max_length"] > positions:
        raise ConfigError(
            f"data.max_length={data['max_length']} is longer than arch.max_position_embeddings={positions}"
            f"{' (the checkpoint' + chr(39) + 's)' if pretrained else ''}: lower data.max_length"
            f"{'' if pretrained else ' or raise arch.max_position_embeddings'}.",
            key="max_length",
        )
    stride = data.get("stride")
    if stride is not None and (
        isinstance(stride, bool) or not isinstance(stride, int) or not 0 <= stride < data["max_length"]
    ):
        raise ConfigError(
            f"data.stride={stride!r} is not valid: expected an integer in [0, data.max_length={data['max_length']}).",
            key="stride",
        )
    optim = check_optim(cfg.optim)
    trainer = plain_data(cfg.trainer, "trainer")
    valid = sorted(set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"})
    for key in trainer:
        if key not in valid or key in ("logger", "callbacks", "default_root_dir"):
            raise ConfigError(
                f"trainer.{key}={trainer[key]!r} is not a Trainer argument we accept."
                f"{did_you_mean(key, valid)} Valid keys: {valid}.",
                key=key,
            )
    trainer = distributed.check_trainer(trainer)  # precision, devices, strategy: before any data
    return Plan(head, arch, config, init, data, optim, trainer, seed, pretrained, user_arch, arch_choice)


CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def user_set_arch(cfg: DictConfig, arch: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The `arch` values a user set, and the arch they chose explicitly (None: the checkpoint decides).

    A value counts as set when it differs from the arch group's YAML and the default experiment (the
    command line, or a named experiment file), so `arch/*.yaml` never overrides a checkpoint. An arch
    counts as chosen when `arch=` is on the command line or differs from train.yaml's default.
    """
    model_type = arch.get("model_type")
    baseline: dict[str, Any] = {}
    for path, node in (
        (CONF_DIR / "arch" / f"{model_type}.yaml", None),
        (CONF_DIR / "experiment" / "default.yaml", "arch"),
    ):
        if path.is_file():
            values = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
            baseline.update((values.get(node) or {}) if node else values)
    user = {k: v for k, v in arch.items() if k != "model_type" and (k not in baseline or baseline[k] != v)}
    explicit = False
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        explicit = any(o.split("=")[0].lstrip("+~") == "arch" for o in HydraConfig.get().overrides.task)
    default_arch = None
    train_yaml = CONF_DIR / "train.yaml"
    if train_yaml.is_file():
        for entry in OmegaConf.to_container(OmegaConf.load(train_yaml)).get("defaults", []):
            if isinstance(entry, dict) and "arch" in entry:
                default_arch = entry["arch"]
    explicit = explicit or (default_arch is not None and model_type != default_arch)
    return user, (model_type if explicit else None)


def run_dir_of(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> Path:
    """The run dir: the argument, else `cfg.run_dir`, else Hydra's output dir of this run."""
    chosen = run_dir or cfg.get("run_dir")
    if chosen is None:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            raise ConfigError("No run dir: call train(cfg, run_dir=...) or set run_dir= outside Hydra.")
        chosen = HydraConfig.get().runtime.output_dir
    return Path(chosen).resolve()


# ---- dry run --------------------------------------------------------------------------------------------
def describe(cfg: DictConfig) -> dict[str, Any]:
    """The resolved model config, parameter count and an estimate of training memory; reads no data.

    With init=random the vocab size is the tokenizer's target (`arch.vocab_size`), an upper bound.
    """
    plan = resolve(cfg)
    config = plan.config  # with init=pretrained: the checkpoint's, with the user's overrides
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        _, model = build_model(config_values(config), plan.head)
    n_params = model.num_parameters()
    layers = sum(len(m) for m in model.modules() if isinstance(m, torch.nn.ModuleList))
    memory = estimate_memory(
        n_params,
        layers=layers,
        hidden=config.hidden_size,
        heads=config.num_attention_heads,
        batch=plan.data["batch_size"],
        length=plan.data["max_length"],
        vocab=config.vocab_size if plan.head == "causal_lm" else 0,
        precision=str(plan.trainer.get("precision", "32-true")),
    )
    return {"head": plan.head, "config": config.to_dict(), "num_parameters": n_params, "memory": memory}


def estimate_memory(
    n_params: int,
    *,
    layers: int,
    hidden: int,
    heads: int,
    batch: int,
    length: int,
    vocab: int = 0,
    precision: str = "32-true",
) -> dict[str, int]:
    """Bytes for fp32 weights, gradients and AdamW's two moments, plus activations kept for backward.

    Activations per layer follow Korthikanti et al. (2022): about b*s*h*(34 + 5*a*s/h) bytes in 16-bit
    training, doubled for 32-bit; an LM head adds its logits and their gradient (b*s*V each).
    """
    act_bytes = 2 if "16" in precision else 4
    activations = layers * batch * length * (34 * hidden + 5 * heads * length) * act_bytes // 2
    activations += 2 * batch * length * vocab * 4
    out = {
        "weights": 4 * n_params,
        "gradients": 4 * n_params,
        "optimizer_states": 8 * n_params,
        "activations": activations,
    }
    out["total"] = sum(out.values())
    return out


def _format_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def format_description(summary: Mapping[str, Any]) -> str:
    memory = "\n".join(f"  {k}: {_format_bytes(v)}" for k, v in summary["memory"].items())
    return (
        f"head: {summary['head']}\nmodel config:\n{json.dumps(summary['config'], indent=2, sort_keys=True)}\n"
        f"parameters: {summary['num_parameters']:,}\nestimated training memory:\n{memory}"
    )


# ---- training -------------------------------------------------------------------------------------------
class _History(pl.Callback):
    """Training loss and validation metrics in memory, for the plot and for the best checkpoint's metrics."""

    def __init__(self) -> None:
        self.train: list[tuple[int, float]] = []
        self.validation: list[tuple[int, dict[str, float]]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            self.train.append((trainer.global_step, float(loss)))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self.validation.append((trainer.global_step, metrics))

    # In every checkpoint, so a resumed run's curves and results cover the whole run.
    def state_dict(self) -> dict[str, Any]:
        return {"train": [list(t) for t in self.train], "validation": [list(v) for v in self.validation]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train = [tuple(t) for t in state_dict.get("train", [])]
        self.validation = [tuple(v) for v in state_dict.get("validation", [])]


def instantiate_all(nodes: Any, **kwargs: Any) -> list[Any]:
    """Third-party objects (loggers, callbacks) from `_target_` nodes; `enabled: false` skips one."""
    from hydra.utils import instantiate

    out = []
    for name, node in (nodes or {}).items():
        if node is None:
            continue
        node = plain_data(node, name)
        if not node.pop("enabled", True):
            continue
        if "_target_" not in node:
            raise ConfigError(f"{name}: a logger or callback needs a _target_ (got keys {sorted(node)}).")
        params = inspect.signature(_target_class(node["_target_"])).parameters
        out.append(instantiate(node, **{k: v for k, v in kwargs.items() if k in params}))
    return out


def _target_class(target: str) -> Any:
    from hydra.utils import get_class

    return get_class(target)


def _tokenizer_and_model(
    plan: Plan, splits: Any, saved: Path | None = None
) -> tuple[Any, FactoryModule, dict[str, Any] | None]:
    """The tokenizer (trained, the checkpoint's, or `saved`: the one a resumed run trained), the module,
    and init=pretrained's load report."""
    from factory.data.files import texts_for_tokenizer
    from factory.tokenizers.training import special_token_ids, train_tokenizer

    head, extra = plan.head, {}
    if head == "causal_lm":
        extra["is_decoder"] = True
    if head == "seqcls" and getattr(splits, "labels", None):
        extra["id2label"] = dict(enumerate(splits.labels))
    if plan.pretrained is not None:
        config, model, tokenizer, report = load_pretrained(
            plan.pretrained,
            head,
            user_arch=plan.user_arch,
            arch_choice=plan.arch_choice,
            labels=extra.pop("id2label", None),
            extra=extra,
        )
        module = FactoryModule(config_values(config), head, plan.optim, plan.seed, model=model)
        return tokenizer, module, report
    started = time.perf_counter()
    if saved is not None and saved.is_dir():  # the weights were trained with exactly these ids
        from factory.tokenizers.tokenizer import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(saved)
    else:
        tokenizer = train_tokenizer(
            plan.config.model_type, texts_for_tokenizer(head, splits), plan.arch["vocab_size"]
        )
        elapsed = time.perf_counter() - started
        logger.info("Trained a tokenizer of %d tokens in %.1fs.", len(tokenizer), elapsed)
    fields = set(type(plan.config).field_names())
    extra.update({k: v for k, v in special_token_ids(tokenizer).items() if k in fields})
    extra["vocab_size"] = len(tokenizer)
    arch = {k: v for k, v in plan.arch.items() if k not in extra}
    config = build_config(arch, **extra)
    return tokenizer, FactoryModule(config_values(config), head, plan.optim, plan.seed), None


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


def train(cfg: DictConfig, run_dir: str | os.PathLike | None = None) -> float:
    """Train as `cfg` says; return the best value of the head's monitored metric (nan for a dry run)."""
    if cfg.get("dry_run"):
        logger.info("Dry run:\n%s", format_description(describe(cfg)))
        return float("nan")
    plan = resolve(cfg)
    # resume=<run dir>: the same dir, and its last.ckpt (cfg is the run's own config: see train.py).
    resume = cfg.get("resume")
    ckpt_path = last_checkpoint(resume) if resume else None
    out = run_dir_of(cfg, run_dir or resume)
    out.mkdir(parents=True, exist_ok=True)
    rank_zero = distributed.is_global_zero()  # rank 0 alone writes exports, plots and reports
    if rank_zero:
        write_provenance(cfg, out, seed=plan.seed)
    started = time.perf_counter()
    if keep_freed_memory():  # each step reuses the last one's memory instead of page-faulting it in
        logger.debug("glibc keeps freed memory for reuse (mmap and trim thresholds raised).")
    pl.seed_everything(plan.seed, workers=True)

    from factory.data.files import load_examples
    from factory.data.module import FactoryDataModule

    splits = load_examples(plan.head, plan.data)
    tokenizer_dir = out / "tokenizer"  # as trained at the start: a resumed run reuses it
    tokenizer, module, load_report = _tokenizer_and_model(plan, splits, tokenizer_dir if resume else None)
    if load_report is not None:
        if rank_zero:
            write_report(load_report, out)
    elif rank_zero and not tokenizer_dir.is_dir():
        tokenizer.save_pretrained(tokenizer_dir)
    datamodule = FactoryDataModule(
        plan.head,
        plan.data,
        tokenizer,
        batch_size=plan.data["batch_size"],
        max_length=plan.data["max_length"],
        num_workers=plan.data.get("num_workers", 0),
        seed=plan.seed,
        splits=splits,
    )
    datamodule.setup("fit")  # encode now: bad data fails before the Trainer starts
    loggers = instantiate_all(cfg.get("logger"), save_dir=str(out))
    callbacks = instantiate_all(cfg.get("callbacks"))
    checkpoints = [c for c in callbacks if isinstance(c, pl.callbacks.ModelCheckpoint)]
    for c in checkpoints:  # the best one and last.ckpt
        c.dirpath = c.dirpath or str(out / "checkpoints")
    checkpoint = next((c for c in checkpoints if c.monitor), checkpoints[0] if checkpoints else None)
    history = _History()
    # Every rank checks it trains what rank 0 does (config, hyperparameters, lr, vocabulary).
    same = distributed.RankCheck(cfg, out, extra={"vocab": distributed.digest(tokenizer.get_vocab())})
    arguments = distributed.trainer_arguments(plan.trainer, module.model)
    plugins = arguments.pop("plugins", None) or []
    trainer = pl.Trainer(
        **arguments,
        default_root_dir=str(out),
        logger=loggers or False,
        callbacks=[*callbacks, history, same, ResumeState(), FiniteGuard(), ProcessGuard()],
        enable_checkpointing=checkpoint is not None,
        # Checkpoints written next to their target and renamed into place: never half a last.ckpt.
        plugins=[*(plugins if isinstance(plugins, list) else [plugins]), AtomicCheckpointIO()],
    )
    n_params = module.model.num_parameters()
    logger.info(
        "Training %s (%s, %s parameters) in %s", type(module.model).__name__, plan.head, f"{n_params:,}", out
    )
    # DDP/FSDP: the other ranks replay this run (cfg, run dir), not the command line, and end with the block.
    with distributed.replicas(trainer, cfg, out):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        if not history.validation and trainer.limit_val_batches and not trainer.fast_dev_run:
            trainer.validate(module, datamodule=datamodule, verbose=False)  # training stopped before any
        best_path = checkpoint.best_model_path if checkpoint is not None else ""
        if not best_path and distributed.is_sharded(trainer):  # FSDP: every rank sends its shards
            best_path = str(out / "checkpoints" / "final.ckpt")
            trainer.save_checkpoint(best_path)
    if not trainer.is_global_zero:
        return float("nan")
    monitor, mode = cfg.head.monitor, cfg.head.mode
    if best_path:
        best = FactoryModule.load_from_checkpoint(best_path, map_location="cpu", weights_only=True)
    else:  # no checkpoint (fast_dev_run, or callbacks without one): the last weights are what we have
        best = module
    best.model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")

    final = history.validation[-1][1] if history.validation else {}
    scored = [(step, m) for step, m in history.validation if not math.isnan(m.get(monitor, math.nan))]
    if scored:
        pick = max if mode == "max" else min
        best_step, best_metrics = pick(scored, key=lambda sm: sm[1][monitor])
    else:
        best_step, best_metrics = None, {}
    best_value = best_metrics.get(monitor, float("nan"))
    results = {
        "head": plan.head,
        "model_type": module.model.config.model_type,
        "monitor": monitor,
        "mode": mode,
        "best_value": best_value,
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
        "wall_time_s": time.perf_counter() - started,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    try:
        from factory.training.plots import plot_curves

        plot_curves(
            history.train,
            history.validation,
            out / "curves.png",
            title=f"{module.model.config.model_type} {plan.head}",
        )
    except ImportError as e:  # matplotlib is what draws it; training results stand without the picture
        logger.warning("No curves.png: %s", e)
    logger.info("%s best %s = %.4f; wrote %s", plan.head, monitor, best_value, out)
    return float(best_value)
