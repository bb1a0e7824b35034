"""`init=pretrained`: a checkpoint, the user's overrides on it, and a report of what was loaded.

The checkpoint decides the architecture. Of the user's `arch.*` values, those that leave every weight's
shape as it is apply (dropouts, eps, labels); fewer layers pick layers by `layers`; anything that would
change a weight's shape (width, heads, vocabulary, more layers, another label count) is an error naming
the key, the checkpoint's value and the requested one, unless `ignore_mismatched_sizes` asks for those
weights to be initialised afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from factory import registry
from factory.auto import AutoConfig
from factory.build import typed_name
from factory.checkpoints.atomic import atomic_write_text
from factory.checkpoints.hub import HubOptions, commit_of, resolve_file
from factory.checkpoints.weights import checkpoint_files
from factory.config import CONFIG_NAME, ConfigError, PretrainedConfig
from factory.tokenizers.tokenizer import AutoTokenizer

logger = logging.getLogger(__name__)

REPORT_NAME = "load_report.json"


@dataclass
class PretrainedInit:
    """The `init` node of `init=pretrained`, typed."""

    name_or_path: str
    revision: str | None = None
    cache_dir: str | None = None
    local_files_only: bool = False
    layers: str | list[int] = "first"
    ignore_mismatched_sizes: bool = False
    weights: bool = True
    seed: int = 42
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def hub(self) -> HubOptions:
        return HubOptions(self.revision, self.cache_dir, self.local_files_only)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], path: str = "init") -> PretrainedInit:
        values = {k: v for k, v in dict(values).items() if k != "name"}
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        unknown = sorted(set(values) - known)
        if unknown:
            from factory.config import did_you_mean

            raise ConfigError(
                f"Unknown key {path}.{unknown[0]}.{did_you_mean(unknown[0], sorted(known))} "
                f"Valid keys of init=pretrained: {sorted(known)}.",
                key=unknown[0],
            )
        if not values.get("name_or_path"):
            raise ConfigError(
                f"{path}.name_or_path is not set: give a checkpoint folder or hub id, "
                f"e.g. init=pretrained {path}.name_or_path=bert-base-uncased.",
                key="name_or_path",
            )
        if isinstance(values.get("layers"), (list, tuple)):
            values["layers"] = [int(i) for i in values["layers"]]
        return cls(**values)


def _shapes(cls: type, config: PretrainedConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = cls(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def checkpoint_config(init: PretrainedInit) -> tuple[PretrainedConfig, str | None]:
    """The checkpoint's own config and the commit it was resolved to (None for a local folder)."""
    path = resolve_file(init.name_or_path, CONFIG_NAME, hub=init.hub)
    config = AutoConfig.from_pretrained(
        init.name_or_path,
        revision=init.revision,
        cache_dir=init.cache_dir,
        local_files_only=init.local_files_only,
    )
    return config, commit_of(path)


def merge_overrides(
    ckpt: PretrainedConfig,
    head: str,
    user_arch: Mapping[str, Any],
    init: PretrainedInit,
    *,
    arch_choice: str | None = None,
    path: str = "arch",
) -> tuple[PretrainedConfig, dict[str, Any]]:
    """The config to build: the checkpoint's, with the user's overrides that keep it loadable.

    An `arch_choice` other than the checkpoint's model_type is an error unless that architecture's
    config reads the checkpoint's (`reads_model_types`): the checkpoint's config is then translated.

    `user_arch` holds only values the user set (command line or experiment file), not YAML defaults.
    Returns the config and the overrides applied.
    """
    where = init.name_or_path
    if arch_choice is not None and arch_choice != ckpt.model_type:
        target = registry.config_class(arch_choice)
        if ckpt.model_type in target.reads_model_types:  # a DistilBERT from a BERT checkpoint
            logger.info("Building %s from the %s checkpoint %s", arch_choice, ckpt.model_type, where)
            ckpt = target.from_dict(ckpt.to_dict())
            return merge_overrides(ckpt, head, user_arch, init, arch_choice=arch_choice, path=path)
        readers = sorted(
            t for t in registry.model_types() if ckpt.model_type in registry.config_class(t).reads_model_types
        )
        others = f" (or one built from it: {readers})" if readers else ""
        raise ConfigError(
            f"arch={arch_choice} disagrees with the checkpoint {where}, whose config.json says "
            f"model_type={ckpt.model_type!r}: the checkpoint decides the architecture. Drop arch= or use "
            f"arch={ckpt.model_type}{others}.",
            key="model_type",
        )
    cls = registry.model_class(ckpt.model_type, head)
    user = {k: v for k, v in user_arch.items() if k != "model_type"}
    applied: dict[str, Any] = {}
    base_shapes = _shapes(cls, ckpt)
    for typed, value in user.items():
        fields = type(ckpt).expand_aliases({typed: value})
        changed = {f: v for f, v in fields.items() if getattr(ckpt, f, None) != v}
        if not changed:
            continue
        for f, v in changed.items():
            have = getattr(ckpt, f, None)
            # A depth field: fewer layers than the checkpoint picks layers, more is an error.
            if f in type(ckpt).depth_fields and isinstance(v, int) and isinstance(have, int):
                if v > have and not init.ignore_mismatched_sizes:
                    raise ConfigError(
                        f"{path}.{typed}={v} asks for more layers than the checkpoint {where} has "
                        f"({f}={have}). Ask for at most {have} (init.layers picks which), or set "
                        f"init.ignore_mismatched_sizes=true to initialise the extra layers afresh.",
                        key=typed,
                    )
                continue
            try:
                trial = ckpt.replace(**{f: v})
            except ConfigError as e:
                raise ConfigError(
                    f"{path}.{typed}={v!r}: {e} (the checkpoint {where} has {f}={have!r})", key=typed
                ) from None
            shapes = _shapes(cls, trial)
            moved = sorted(k for k in base_shapes if k in shapes and shapes[k] != base_shapes[k])
            if moved and not init.ignore_mismatched_sizes:
                raise ConfigError(
                    f"{path}.{typed}={v!r} differs from the checkpoint {where}, which has {f}={have!r}: it "
                    f"changes the shape of {moved[0]}{' and others' if len(moved) > 1 else ''}. Drop the "
                    f"override, or set init.ignore_mismatched_sizes=true to initialise those weights afresh.",
                    key=typed,
                )
        applied[typed] = value
    try:
        config = ckpt.replace(**applied)
    except ConfigError as e:
        if e.key is None:
            raise
        typed = typed_name(type(ckpt), e.key, applied)
        raise ConfigError(f"{path}.{typed}={applied.get(typed)!r}: {e}", key=typed) from None
    return config, applied


def _check_labels(ckpt: PretrainedConfig, cls: type, labels: Mapping[int, str], init: PretrainedInit) -> None:
    """A checkpoint that already has this head keeps its label count unless told to replace the head."""
    has_head = bool(ckpt.architectures) and ckpt.architectures[0] == cls.__name__
    if has_head and ckpt.num_labels != len(labels) and not init.ignore_mismatched_sizes:
        raise ConfigError(
            f"The checkpoint {init.name_or_path} has a {cls.__name__} head with num_labels={ckpt.num_labels} "
            f"({list(ckpt._labels().values())}), the data has {len(labels)} labels ({list(labels.values())}). "
            f"Set init.ignore_mismatched_sizes=true to replace the head with a new one.",
            key="num_labels",
        )


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_pretrained(
    init: PretrainedInit,
    head: str,
    *,
    user_arch: Mapping[str, Any] | None = None,
    arch_choice: str | None = None,
    labels: Mapping[int, str] | None = None,
    extra: Mapping[str, Any] | None = None,
    resolved: tuple[PretrainedConfig, str | None, Mapping[str, Any]] | None = None,
):
    """`(config, model, tokenizer, report)` for training `head` from the checkpoint `init` names.

    `extra` are values the pipeline sets whatever the checkpoint says (`is_decoder` for a causal LM head);
    `labels` the label names the data has (a classifying head). `resolved` is a plan's
    `(config, commit, applied overrides)`: the checkpoint's config.json is then not read and merged again.
    With `init.weights=False`, the checkpoint's config and tokenizer come with freshly initialised weights.
    """
    if resolved is None:
        ckpt, commit = checkpoint_config(init)
        config, applied = merge_overrides(ckpt, head, user_arch or {}, init, arch_choice=arch_choice)
    else:
        config, commit, applied = resolved[0], resolved[1], dict(resolved[2])
    cls = registry.model_class(config.model_type, head)
    if labels is not None:
        _check_labels(config, cls, labels, init)
        applied["id2label"] = dict(labels)
        config = config.replace(id2label=dict(labels))
    if extra:
        config = config.replace(**extra)
    tokenizer = AutoTokenizer.from_pretrained(
        init.name_or_path,
        revision=init.revision,
        cache_dir=init.cache_dir,
        local_files_only=init.local_files_only,
    )
    torch.manual_seed(init.seed)  # a new head, or every weight with weights=False, is seeded
    report: dict[str, Any] = {
        "name_or_path": str(init.name_or_path),
        "revision": init.revision,
        "commit": commit,
        "model_class": cls.__name__,
        "weights": init.weights,
        "overrides": applied,
    }
    if not init.weights:
        model = cls(config)
        report.update(
            loaded=0, newly_initialised=["<all>"], dropped=[], mismatched=[], kept_layers={}, files={}
        )
    else:
        model, info = cls.from_pretrained(
            init.name_or_path,
            config=config,
            output_loading_info=True,
            ignore_mismatched_sizes=init.ignore_mismatched_sizes,
            layers=init.layers,
            revision=init.revision,
            cache_dir=init.cache_dir,
            local_files_only=init.local_files_only,
        )
        files, _ = checkpoint_files(init.name_or_path, hub=init.hub)
        newly = set(info["missing_keys"])
        report.update(
            loaded=sum(1 for k in model.state_dict() if k not in newly),
            newly_initialised=info["missing_keys"],
            dropped=info["unexpected_keys"],
            mismatched=[[k, list(a), list(b)] for k, a, b in info["mismatched_keys"]],
            kept_layers=info["kept_layers"],
            dropped_layers=info["dropped_layers"],
            files={Path(f).name: sha256(f) for f in files},
        )
        model.train()
    logger.info("%s", format_report(report))
    return config, model, tokenizer, report


def format_report(report: Mapping[str, Any]) -> str:
    """A short table of a load report for the log."""
    rows = [
        (
            "checkpoint",
            report["name_or_path"] + (f" @ {report['commit'][:12]}" if report.get("commit") else ""),
        ),
        (
            "model",
            report["model_class"] + ("" if report["weights"] else " (fresh weights: init.weights=false)"),
        ),
        ("loaded tensors", str(report["loaded"])),
        ("newly initialised", _short(report["newly_initialised"])),
        ("dropped from file", _short(report["dropped"])),
        ("kept layers", ", ".join(f"{k}: {v}" for k, v in report.get("kept_layers", {}).items()) or "all"),
        (
            "overrides",
            ", ".join(f"{k}={v}" for k, v in report["overrides"].items() if k != "id2label") or "none",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    return "Load report\n" + "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows)


def _short(keys: list[str], limit: int = 4) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def write_report(report: Mapping[str, Any], run_dir: str | os.PathLike) -> Path:
    return atomic_write_text(Path(run_dir) / REPORT_NAME, json.dumps(report, indent=2, sort_keys=True) + "\n")
