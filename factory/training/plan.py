"""The plan: a composed config resolved once into typed, checked values that the run uses unchanged.

`resolve(cfg)` checks everything that can be checked without reading weights or data, so a typo or a bad
value fails first: the head, init, the architecture as a typed config (with `init=pretrained`, the
checkpoint's config.json with the values the user set merged in, read once), data sizes against the
model's positions, optim and trainer keys. Only what the data decides is left: label names and, with
`init=random`, the vocabulary size of the tokenizer trained on it.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from factory import registry
from factory.build import build_config
from factory.config import ConfigError, PretrainedConfig, did_you_mean, plain_data
from factory.data.batching import BATCHING_KEYS, check_packing
from factory.data.files import COMMON_KEYS
from factory.heads.head import Head, get_head, heads
from factory.models.modeling import check_fits_in_memory, estimate_num_parameters
from factory.training.command_line import UserSet, user_set
from factory.training.distributed import ranks
from factory.training.lightning.optim import check_optim
from factory.training.lightning.performance import TRAINER_KEYS, split_trainer
from factory.training.pretrained import PretrainedInit, checkpoint_config, merge_overrides

logger = logging.getLogger(__name__)

INITS = ("random", "pretrained")
TOP_KEYS = ("arch", "head", "init", "data", "optim", "trainer", "logger", "callbacks")
# The other top-level keys train.yaml declares (`hydra` is Hydra's own).
OTHER_KEYS = ("task_name", "plugins", "dry_run", "run_dir", "resume", "hydra")
# `data.*` keys the pipeline reads, whatever the head.
PIPELINE_DATA_KEYS = ("batch_size", "max_length", "num_workers", *BATCHING_KEYS)


@dataclass
class Plan:
    """A composed config, checked and typed.

    `config` is the model config to build: the arch values (init=random) or the checkpoint's config with
    the user's values (init=pretrained), with what the head sets; the data adds labels, and a trained
    tokenizer its vocabulary size.
    """

    head: str
    task: Head  # what the head name stands for: its data, metrics and conventions
    arch: dict[str, Any]
    config: PretrainedConfig
    init: dict[str, Any]
    data: dict[str, Any]
    optim: dict[str, Any]
    trainer: dict[str, Any]
    seed: int
    monitor: str
    mode: str
    pretrained: PretrainedInit | None = None
    commit: str | None = None  # init=pretrained from the hub: the commit the checkpoint resolved to
    applied: dict[str, Any] | None = None  # init=pretrained: the user's values applied over the checkpoint's
    user: UserSet | None = None


def resolve(cfg: DictConfig, overrides: Sequence[str] | UserSet | None = None) -> Plan:
    """The plan of `cfg`; `ConfigError` naming key, value and valid choices otherwise.

    `overrides` are the values the user typed (`arch.hidden_size=128`, ...), or what they set as read
    from them (`UserSet`); by default this Hydra run's record. With `init=pretrained` only those `arch`
    values apply over the checkpoint's.
    """
    for key in TOP_KEYS:
        if key not in cfg:
            raise ConfigError(f"The config has no {key!r} group; it needs {list(TOP_KEYS)}.", key=key)
    unread = sorted(str(k) for k in cfg if k not in (*TOP_KEYS, *OTHER_KEYS))
    if unread:
        raise ConfigError(
            f"Nothing reads the top-level key {unread[0]!r} (a `+{unread[0]}=...` typo, or a preset's key?). "
            f"The top-level keys are {sorted((*TOP_KEYS, *OTHER_KEYS))}; a Trainer argument goes under "
            f"+trainer.<name>=..., a model field under arch.<name>=....",
            key=unread[0],
        )
    trained = sorted({h for _, h, _ in registry.registered_models()} - {"base"})
    if cfg.head.name not in trained:
        raise ConfigError(
            f"head.name={cfg.head.name!r} is not valid.{did_you_mean(str(cfg.head.name), trained)} "
            f"Valid heads: {trained}.",
            key="name",
        )
    head = get_head(cfg.head.name)
    monitor, mode = cfg.head.get("monitor"), cfg.head.get("mode")
    if monitor not in head.metrics:
        raise ConfigError(
            f"head.monitor={monitor!r} is not a metric of head {head.name!r}; valid: {list(head.metrics)}.",
            key="monitor",
        )
    if mode not in ("min", "max"):
        raise ConfigError(f"head.mode={mode!r} is not valid: expected 'min' or 'max'.", key="mode")
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
    user = overrides if isinstance(overrides, UserSet) else user_set(overrides)
    arch = plain_data(cfg.arch, "arch")
    extra = head.config_values(None)
    pretrained, commit, applied = None, None, None
    if init["name"] == "pretrained":
        # The checkpoint's config.json (no weights yet) decides the architecture; the values the user set
        # go on top now, so a bad combination fails before data or weights are read.
        pretrained = PretrainedInit.from_mapping(init)
        ckpt, commit = checkpoint_config(pretrained)
        chosen = user.groups.get("arch") and arch.get("model_type")
        values = {k: arch[k] for k in sorted(user.under("arch")) if k in arch and k != "model_type"}
        config, applied = merge_overrides(ckpt, head.name, values, pretrained, arch_choice=chosen or None)
        config = config.replace(**extra)
    else:
        config = build_config(arch, **extra)
    model_cls = registry.model_class(config.model_type, head.name)  # say so if this arch has no such head
    check_fits_in_memory(model_cls, config, source="arch")  # before anything is allocated
    data = plain_data(cfg.data, "data")
    _check_data_keys(data, head)
    check_packing(data, head)
    _check_data(data, config, user, pretrained is not None)
    optim = check_optim(cfg.optim)
    trainer = plain_data(cfg.trainer, "trainer")
    valid = sorted((set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}) | set(TRAINER_KEYS))
    for key in trainer:
        if key not in valid or key in ("logger", "callbacks", "default_root_dir"):
            raise ConfigError(
                f"trainer.{key}={trainer[key]!r} is not a Trainer argument we accept."
                f"{did_you_mean(key, valid)} Valid keys: {valid}.",
                key=key,
            )
    for key in ("max_epochs", "max_steps"):
        if trainer.get(key) == 0:
            raise ConfigError(
                f"trainer.{key}=0 trains nothing (and would still export the untrained model): give a "
                f"positive number, or -1 for no limit on {key.split('_')[1]}.",
                key=key,
            )
    if data.get("streaming") is True:
        _check_streaming(trainer, user)
    split_trainer(trainer)  # our own keys' types
    trainer = ranks.check_trainer(trainer)  # precision, devices, strategy: before any data
    return Plan(
        head.name,
        head,
        arch,
        config,
        init,
        data,
        optim,
        trainer,
        seed,
        monitor,
        mode,
        pretrained,
        commit,
        applied,
        user,
    )


def _check_streaming(trainer: dict[str, Any], user: UserSet) -> None:
    """A stream trains for `trainer.max_steps`, passing over the data again as needed: it has no length
    to count epochs (or the learning-rate schedule) by. `max_epochs=-1` also keeps Lightning from
    starting the stream before a resumed run's position in it is restored."""
    if (trainer.get("max_steps") or -1) < 0:
        raise ConfigError(
            "data.streaming=true needs trainer.max_steps=<steps>: a stream has no length, so neither the "
            "learning-rate schedule nor the progress can be counted from epochs.",
            key="max_steps",
        )
    if "max_epochs" in user.under("trainer") and trainer.get("max_epochs") != -1:
        raise ConfigError(
            f"trainer.max_epochs={trainer.get('max_epochs')!r} does not apply with data.streaming=true: "
            "a stream trains for trainer.max_steps. Drop trainer.max_epochs.",
            key="max_epochs",
        )
    trainer["max_epochs"] = -1


def _check_data_keys(data: dict[str, Any], head: Head) -> None:
    """Every `data.*` key is read by the head or the pipeline: a typo (`+data.bach_size`) or another head's
    data preset (`head=qa data=<a seqcls preset>`) would otherwise be ignored silently."""
    valid = sorted({*COMMON_KEYS, *head.data_keys, *PIPELINE_DATA_KEYS})
    unread = [k for k in data if k not in valid]
    if not unread:
        return
    readers = sorted(h.name for h in heads().values() if unread[0] in h.data_keys)
    by = " and ".join(f"head={r}" for r in readers)
    why = f" It is read by {by}: a data preset of another head?" if readers else ""
    raise ConfigError(
        f"data.{unread[0]}={data[unread[0]]!r} is not read by head={head.name}.{why}"
        f"{did_you_mean(unread[0], valid)} Valid data keys for head={head.name}: {valid}.",
        key=unread[0],
    )


def _check_data(data: dict[str, Any], config: PretrainedConfig, user: UserSet, pretrained: bool) -> None:
    for key in ("batch_size", "max_length"):
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"data.{key}={value!r} is not valid: expected a positive integer.", key=key)
    positions = config.max_position_embeddings
    if data["max_length"] > positions:
        if "max_length" not in user.under("data"):
            # A default sized for another model: follow this model's positions.
            logger.info(
                "data.max_length=%d is capped at the model's %d positions (max_position_embeddings).",
                data["max_length"],
                positions,
            )
            data["max_length"] = positions
            stride = data.get("stride")
            if stride is not None and stride >= positions and "stride" not in user.under("data"):
                data["stride"] = positions // 4  # windows overlap as they would by default
                logger.info("data.stride=%d is lowered to %d to fit.", stride, data["stride"])
        else:
            raise ConfigError(
                f"data.max_length={data['max_length']} is longer than arch.max_position_embeddings="
                f"{positions}{' (the checkpoint' + chr(39) + 's)' if pretrained else ''}: lower "
                f"data.max_length{'' if pretrained else ' or raise arch.max_position_embeddings'}.",
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
def describe(cfg: DictConfig, overrides: Sequence[str] | UserSet | None = None) -> dict[str, Any]:
    """The resolved model config, parameter count and an estimate of training memory; reads no data.

    With init=random the vocab size is the tokenizer's target (`arch.vocab_size`), an upper bound.
    """
    plan = resolve(cfg, overrides)
    config = plan.config  # with init=pretrained: the checkpoint's, with the user's overrides
    # Counted on the meta device from one- and two-layer models: fast whatever the depth.
    n_params = estimate_num_parameters(registry.model_class(config.model_type, plan.head), config)["total"]
    layers = sum(getattr(config, f) for f in type(config).depth_fields)
    memory = estimate_memory(
        n_params,
        layers=layers,
        hidden=config.hidden_size,
        heads=config.num_attention_heads,
        batch=plan.data["batch_size"],
        length=plan.data["max_length"],
        vocab=config.vocab_size if plan.task.vocab_logits else 0,
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
