"""From plain config data (a composed Hydra node, or a dict in Python) to a typed config and a model.

This is the one conversion point: `train.py`, the Lightning module and the Python API all build models
here, so a key is checked the same way wherever it comes from, and errors name the key path the user
typed (`arch.num_hiden_layers`), the value and what is valid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from factory import registry
from factory.config import ConfigError, PretrainedConfig, plain_data


def build_config(arch: Mapping[str, Any], path: str = "arch", **extra: Any) -> PretrainedConfig:
    """The typed config of `arch` (`model_type` plus fields or common names), strictly checked.

    `extra` are values the pipeline sets (vocab size from the tokenizer, label maps from the data).
    """
    values = dict(plain_data(arch, path))
    model_type = values.pop("model_type", None)
    if model_type is None:
        raise ConfigError(
            f"{path}.model_type is missing; valid model types: {registry.model_types()}.", key="model_type"
        )
    try:
        cls = registry.config_class(model_type)
    except registry.RegistryError as e:
        raise ConfigError(f"{path}.model_type: {e}", key="model_type") from None
    values = {k: v for k, v in values.items() if v is not None or k in cls.field_names()}
    try:
        return cls.from_dict({}, **values, **extra)
    except ConfigError as e:
        if e.key is None:
            raise
        typed = typed_name(cls, e.key, values)
        shown = values.get(typed, extra.get(typed, "<unset>"))
        raise ConfigError(f"{path}.{typed}={shown!r}: {e}", key=typed) from None


def typed_name(cls: type, key: str, values: Mapping[str, Any]) -> str:
    """The name the user typed for field `key` (a common name like `num_hidden_layers` maps to it)."""
    if key in values:
        return key
    for alias, targets in cls.aliases.items():
        if key in targets and alias in values:
            return alias
    return key


def build_model(
    arch: Mapping[str, Any] | PretrainedConfig,
    head: str = "base",
    *,
    seed: int | None = None,
    path: str = "arch",
    **extra: Any,
):
    """`(config, model)` for `arch` with a randomly initialised `head` (HF's scheme, seeded if asked).

    `arch` is plain config data, or a typed config already resolved (used as it is, with `extra` applied).
    """
    if isinstance(arch, PretrainedConfig):
        config = arch.replace(**extra) if extra else arch
    else:
        config = build_config(arch, path=path, **extra)
    try:
        cls = registry.model_class(config.model_type, head)
    except registry.RegistryError as e:
        raise ConfigError(f"head={head!r}: {e}", key="head") from None
    if seed is not None:
        torch.manual_seed(seed)
    return config, cls(config)
