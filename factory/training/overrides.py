"""The command line's overrides: their keys checked before Hydra composes, and what the user set.

What the user set is what they typed: the command-line overrides of this run (a sweep trial's values
included) and the keys a named experiment preset (`experiment=<name>` on the command line) sets itself.
Both come from Hydra's own record of the run (`hydra.overrides.task`, `hydra.runtime.choices` and the
config search path in `hydra.runtime.config_sources`); values are never compared with YAML files, so a
value the user typed counts even when it equals a default.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from factory import registry
from factory.config import ConfigError, did_you_mean

logger = logging.getLogger(__name__)


@dataclass
class UserSet:
    """The config keys the user set (`arch.hidden_size`, `data.max_length`, ...) and the groups they chose."""

    keys: set[str] = field(default_factory=set)
    groups: dict[str, str] = field(default_factory=dict)

    def under(self, node: str) -> set[str]:
        """The keys set below `node` (`under("arch")` -> {"hidden_size", ...})."""
        prefix = f"{node}."
        return {k[len(prefix) :].split(".")[0] for k in self.keys if k.startswith(prefix)}


def task_overrides() -> list[str]:
    """This run's command-line overrides as Hydra recorded them; [] outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def user_set(overrides: Sequence[str] | None = None) -> UserSet:
    """What the user set: `overrides` (default: this Hydra run's), plus a named experiment's own keys."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = task_overrides() if overrides is None else list(overrides)
    out = UserSet()
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.key_or_group
        if key.startswith("hydra"):
            continue
        if "." not in key and not o.is_delete() and isinstance(o.value(), str) and key != "resume":
            out.groups[key] = o.value()  # `arch=gpt2`, `experiment=lm_small` (a plain `seed=1` too: harmless)
        out.keys.add(key)
    preset = out.groups.get("experiment")
    if preset:
        out.keys |= preset_keys("experiment", preset)
    return out


def preset_keys(group: str, name: str) -> set[str]:
    """The dotted keys the preset `group/name` sets itself (not through its own defaults list), found on
    this run's config search path as Hydra recorded it."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        logger.warning("No Hydra run: the values %s=%s sets are not counted as set by the user.", group, name)
        return set()
    from hydra._internal.config_repository import ConfigRepository
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl

    search = ConfigSearchPathImpl()
    for source in HydraConfig.get().runtime.config_sources:
        search.append(source.provider, f"{source.schema}://{source.path}")
    result = ConfigRepository(search).load_config(f"{group}/{name}")
    if result is None:
        return set()
    values = OmegaConf.to_container(result.config, resolve=False)
    values.pop("defaults", None)
    if result.header.get("package") not in ("_global_", "_global"):
        values = {group: values}
    return set(_dotted(values))


def _dotted(values: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        out += _dotted(value, path) if isinstance(value, dict) and value else [path]
    return out


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
