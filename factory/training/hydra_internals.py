"""Every part of Hydra's private `hydra._internal` package that factory relies on, and nothing else.

Hydra has no public API for these three things, and each has a reason to be used rather than copied:

- `args_parser`: the parser `@hydra.main` reads `sys.argv` with. `train.py` reads its command line with
  the same parser before Hydra does (to check override keys and to rewrite `resume=`), so both agree on
  which words are flags, which is the config name and which are overrides.
- `load_preset`: a config group option as Hydra loads it from a run's config search path (its own
  keys and its `# @package` header), without composing: what `experiment=<name>` sets itself.
- `BASIC_SWEEPER`: the `_target_` of Hydra's own grid sweeper, which ignores a trial's return value.

tests/test_hydra_internals.py pins what each of them is expected to do, so a Hydra upgrade that changes
one fails there, by name, instead of somewhere in a run.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# hydra/conf/hydra/sweeper/basic.yaml's _target_.
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def args_parser() -> argparse.ArgumentParser:
    """Hydra's own command-line parser (flags `--cfg`, `-m`, `--config-name`, ... and the overrides)."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """`argv` as `@hydra.main` reads it: `.overrides`, `.config_name`, `.config_dir`, `.multirun`, ..."""
    return args_parser().parse_intermixed_args(list(argv))


@dataclass(frozen=True)
class Preset:
    """A config group option as Hydra loads it: its own values (defaults list removed), its package."""

    values: dict[str, Any]
    package: str | None


def load_preset(sources: Iterable[Any], group: str, name: str) -> Preset | None:
    """The option `group/name` found on the config search path `sources` (a run's recorded
    `hydra.runtime.config_sources`: each has `provider`, `schema` and `path`); None when no source has it."""
    from hydra._internal.config_repository import ConfigRepository
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
    from omegaconf import OmegaConf

    search = ConfigSearchPathImpl()
    for source in sources:
        search.append(source.provider, f"{source.schema}://{source.path}")
    result = ConfigRepository(search).load_config(f"{group}/{name}")
    if result is None:
        return None
    values = OmegaConf.to_container(result.config, resolve=False)
    values.pop("defaults", None)
    return Preset(values, result.header.get("package"))
