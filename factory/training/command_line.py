"""`train.py`'s command line, parsed once: its flags and overrides, the key check, and what the user set.

`parse(argv)` reads the arguments with Hydra's own parser and each override with Hydra's override
parser. Everything after that reads the parsed result: the `resume=` rewrite (`factory.training.resume`),
the key check before Hydra composes (`CommandLine.check`) and what the user set (`user_set`), which
decides which `arch` values apply over a checkpoint's and whether `data.max_length` follows the model.
An override's parse is kept for the life of the process, so the job reads Hydra's record of the same
command line without parsing it again; a sweep trial parses only its own new values.

What the user set is what they typed: the command-line overrides of this run (a sweep trial's values
included) and the keys a named experiment preset (`experiment=<name>` on the command line) sets itself.
Both come from Hydra's own record of the run (`hydra.overrides.task`, and the config search path in
`hydra.runtime.config_sources`); values are never compared with YAML files, so a value the user typed
counts even when it equals a default.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from factory import registry
from factory.config import ConfigError, did_you_mean
from factory.training import hydra_internals

if TYPE_CHECKING:
    from hydra.core.override_parser.types import Override

logger = logging.getLogger(__name__)

# The most compositions the key check makes for a sweep over groups.
MAX_CHECKS = 16


# ---- one parse ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _parser() -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


@functools.lru_cache(maxsize=4096)
def parse_override(text: str) -> Override:
    """One override as Hydra parses it; each text is parsed once per process (Override is read-only
    here), so the job reads the command line's record without parsing it again."""
    return _parser().parse_override(text)


@dataclass(frozen=True, eq=False)
class CommandLine:
    """A `train.py` command line: `argv` as given, Hydra's reading of its flags (`args`), and its overrides
    parsed (`overrides`: None when one has a syntax error, which Hydra reports itself)."""

    argv: list[str]
    args: argparse.Namespace
    overrides: tuple[Override, ...] | None

    @property
    def texts(self) -> list[str]:
        """The overrides as typed."""
        return list(self.args.overrides or [])

    @property
    def config_name(self) -> str:
        return self.args.config_name or "train"

    @property
    def flags(self) -> list[str]:
        """The arguments that are not overrides (`--cfg job`, `-m`, ...): Hydra's own."""
        texts = set(self.texts)
        return [a for a in self.argv if a not in texts]

    def plain(self, key: str) -> list[Override]:
        """The overrides `key=value` (not `+key`, `++key` or `~key`)."""
        return [
            o
            for o in self.overrides or ()
            if o.key_or_group == key and not (o.is_add() or o.is_force_add() or o.is_delete())
        ]

    def value(self, key: str) -> Any:
        """The value of the last plain `key=value` (quotes removed), else None."""
        found = self.plain(key)
        return found[-1].value() if found else None

    def check(self, config_dir: str | os.PathLike) -> None:
        """`check_keys` of these overrides against `config_dir`'s config."""
        if self.overrides is not None:
            check_keys(self.overrides, config_dir, self.config_name)


def parse(argv: Sequence[str]) -> CommandLine:
    """`train.py`'s arguments, as `@hydra.main` will read them."""
    from hydra.errors import HydraException

    args = hydra_internals.parse_args(argv)
    try:
        overrides = tuple(parse_override(o) for o in args.overrides or [])
    except HydraException:
        overrides = None  # Hydra reports its own syntax errors
    return CommandLine(list(argv), args, overrides)


# ---- what the user set ----------------------------------------------------------------------------------
@dataclass
class UserSet:
    """The config keys the user set (`arch.hidden_size`, `data.max_length`, ...) and the groups they chose."""

    keys: set[str] = field(default_factory=set)
    groups: dict[str, str] = field(default_factory=dict)

    def under(self, node: str) -> set[str]:
        """The keys set below `node` (`under("arch")` -> {"hidden_size", ...})."""
        prefix = f"{node}."
        return {k[len(prefix) :].split(".")[0] for k in self.keys if k.startswith(prefix)}


def job_overrides() -> list[str]:
    """This Hydra job's command-line overrides as Hydra recorded them; [] outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def user_set(overrides: Sequence[str] | None = None) -> UserSet:
    """What the user set: `overrides` (default: this Hydra job's), plus a named experiment's own keys."""
    texts = job_overrides() if overrides is None else list(overrides)
    out = set_by([parse_override(o) for o in texts])
    preset = out.groups.get("experiment")
    if preset:
        out.keys |= preset_keys("experiment", preset)
    return out


def set_by(overrides: Iterable[Override]) -> UserSet:
    """The keys and the group choices of parsed overrides (`hydra.*` left out)."""
    out = UserSet()
    for o in overrides:
        key = o.key_or_group
        if key.startswith("hydra"):
            continue
        if "." not in key and not o.is_delete() and isinstance(o.value(), str) and key != "resume":
            out.groups[key] = o.value()  # `arch=gpt2`, `experiment=lm_small` (a plain `seed=1` too: harmless)
        out.keys.add(key)
    return out


def preset_keys(group: str, name: str) -> set[str]:
    """The dotted keys the preset `group/name` sets itself (not through its own defaults list), found on
    this run's config search path as Hydra recorded it."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        logger.warning("No Hydra run: the values %s=%s sets are not counted as set by the user.", group, name)
        return set()
    preset = hydra_internals.load_preset(HydraConfig.get().runtime.config_sources, group, name)
    if preset is None:
        return set()
    values = preset.values if preset.package in ("_global_", "_global") else {group: preset.values}
    return set(_dotted(values))


def _dotted(values: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        out += _dotted(value, path) if isinstance(value, dict) and value else [path]
    return out


# ---- the key check --------------------------------------------------------------------------------------
def check_overrides(
    overrides: Sequence[str], config_dir: str | os.PathLike, config_name: str = "train"
) -> None:
    """`check_keys` of override texts; a syntax error is left to Hydra."""
    from hydra.errors import HydraException

    try:
        parsed = [parse_override(o) for o in overrides]
    except HydraException:
        return
    check_keys(parsed, config_dir, config_name)


def check_keys(
    overrides: Sequence[Override], config_dir: str | os.PathLike, config_name: str = "train"
) -> None:
    """Raise `ConfigError` naming the key path, the value and the valid keys for an override whose key
    does not exist: `arch.<key>` is checked against the chosen architecture's config class (with or
    without `+`), other keys against the composed config. Hydra would reject a plain typo itself, but
    without saying what is valid; anything this check cannot judge is left to Hydra.

    The config is composed with the first option of each group; a swept group's other options are
    composed too when a checked key lies under that group (or the group is a global preset such as
    `experiment`): one composition for a run, a few for a sweep.
    """
    from hydra.core.global_hydra import GlobalHydra

    config_dir = Path(config_dir).resolve()

    def is_group(key: str) -> bool:
        return "/" in key or ("." not in key and (config_dir / key).is_dir())

    mine = [o for o in overrides if not o.key_or_group.startswith("hydra")]
    groups = [o for o in mine if is_group(o.key_or_group)]
    keys = [o for o in mine if not is_group(o.key_or_group) and not o.is_delete()]
    if not keys or GlobalHydra.instance().is_initialized():
        return  # nothing to check, or called under a running Hydra: nothing to check against
    options = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [o.input_line]
        for o in groups
    ]
    baseline = [choices[0] for choices in options]
    cfg = _compose(config_dir, config_name, baseline)
    if cfg is None:
        return
    _check_all(cfg, keys)
    checked = 1
    for i, (o, choices) in enumerate(zip(groups, options)):
        name = o.key_or_group
        untouched = name in cfg and not any(k.key_or_group.startswith(f"{name}.") for k in keys)
        if len(choices) < 2 or untouched:
            continue  # another option of this group changes no key that was typed
        for choice in choices[1:]:
            if checked >= MAX_CHECKS:
                return
            cfg = _compose(config_dir, config_name, [*baseline[:i], choice, *baseline[i + 1 :]])
            if cfg is None:
                return
            _check_all(cfg, keys)
            checked += 1


def _compose(config_dir: Path, config_name: str, overrides: list[str]) -> DictConfig | None:
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return compose(config_name, overrides=overrides)
    except Exception:  # noqa: BLE001  (an unknown group option, ...: Hydra's own message says it)
        return None


def _check_all(cfg: DictConfig, keys: Iterable[Override]) -> None:
    for o in keys:
        plain = not (o.is_add() or o.is_force_add())
        _check_key(cfg, o.key_or_group, o.input_line.partition("=")[2], plain)


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
