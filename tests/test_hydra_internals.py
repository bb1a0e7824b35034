# python -m pytest tests/test_hydra_internals.py
"""What factory relies on in Hydra's private `hydra._internal` (all of it in
factory/training/hydra_internals.py): a Hydra upgrade that changes one of these fails here, by name."""

from __future__ import annotations

import inspect
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from factory.training import hydra_internals

CONF = Path(__file__).resolve().parents[1] / "conf"


def _hydra_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True).hydra


def test_args_parser_is_the_one_hydra_main_reads_sys_argv_with():
    assert "get_args_parser()" in inspect.getsource(hydra.main)


def test_args_parser_reads_the_flags_factory_reads():
    args = hydra_internals.parse_args(
        ["--cfg", "job", "a=1", "-m", "--config-dir", "/d", "--config-name", "c", "+b.c=2"]
    )
    assert args.overrides == ["a=1", "+b.c=2"]
    assert (args.cfg, args.multirun, args.config_dir, args.config_name) == ("job", True, "/d", "c")
    assert args.config_path is None
    plain = hydra_internals.parse_args(["x=1"])
    assert (plain.overrides, plain.config_name, plain.config_dir, plain.multirun) == (
        ["x=1"],
        None,
        None,
        False,
    )


def test_load_preset_finds_an_option_on_a_runs_recorded_search_path():
    sources = _hydra_config().runtime.config_sources
    preset = hydra_internals.load_preset(sources, "experiment", "lm_small")
    assert preset is not None and preset.package == "_global_"
    assert preset.values == {"data": {"max_length": 128, "batch_size": 16}, "trainer": {"max_epochs": 5}}
    assert hydra_internals.load_preset(sources, "experiment", "no_such_preset") is None


def test_basic_sweeper_is_hydras_default_sweeper():
    from hydra.plugins.sweeper import Sweeper
    from hydra.utils import get_class

    assert _hydra_config().sweeper._target_ == hydra_internals.BASIC_SWEEPER
    assert issubclass(get_class(hydra_internals.BASIC_SWEEPER), Sweeper)


def test_hydra_records_the_overrides_as_typed():
    # The job reads `hydra.overrides.task` back through the parses train.py kept: the same texts.
    typed = ["arch=gpt2", "trainer.max_steps='3'", "+trainer.num_sanity_val_steps=0"]
    assert list(_hydra_config(*typed, "hydra.run.dir=/x").overrides.task) == typed
    assert [o.input_line for o in OverridesParser.create().parse_overrides(typed)] == typed
