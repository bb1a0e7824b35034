# python -m pytest tests/test_command_line.py
"""train.py's command line is parsed once: the key check, the resume rewrite and what the user set all read
that parse, the job reads Hydra's record of it without parsing again, and the key check composes the
config once for a run (a few times for a sweep over groups)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from factory.config import ConfigError
from factory.training import command_line
from factory.training.command_line import check_overrides, parse, parse_override, user_set

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_the_job_reads_hydras_record_of_the_command_line_without_parsing_it_again():
    typed = ["arch=gpt2", "arch.num_hidden_layers=2", "+arch.n_inner=64", "data.max_length=32"]
    cli = parse(["--cfg", "job", *typed, "hydra.run.dir=/x"])
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=cli.texts, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    before = parse_override.cache_info()
    try:
        user = user_set()  # Hydra's record, as the job reads it
    finally:
        HydraConfig.instance().cfg = None
    after = parse_override.cache_info()
    assert after.misses == before.misses and after.hits == before.hits + len(typed)
    assert user.groups == {"arch": "gpt2"} and user.under("arch") == {"num_hidden_layers", "n_inner"}
    assert user.under("data") == {"max_length"}


def test_a_syntax_error_is_left_to_hydra():
    cli = parse(["arch.hidden_size=[1,"])
    assert cli.overrides is None
    cli.check(CONF)  # nothing raised: Hydra's own message says what is wrong


def test_resume_is_only_the_plain_override():
    cli = parse(['++resume="/a b"', "resume=null"])
    assert [o.input_line for o in cli.plain("resume")] == ["resume=null"] and cli.value("resume") is None


@pytest.fixture
def composes(monkeypatch):
    calls = []
    real = command_line._compose

    def counted(config_dir, config_name, overrides):
        calls.append(overrides)
        return real(config_dir, config_name, overrides)

    monkeypatch.setattr(command_line, "_compose", counted)
    return calls


def test_the_key_check_composes_once_for_a_run(composes):
    check_overrides(["trainer.max_steps=1", "arch=gpt2", "arch.n_layer=2"], CONF)  # n_layer: a GPT-2 key
    assert composes == [["arch=gpt2"]]
    composes.clear()
    check_overrides(["arch=gpt2", "head=causal_lm"], CONF)  # no key to check: no composition
    assert composes == []


def test_the_key_check_composes_a_sweeps_other_options_only_where_a_typed_key_depends_on_them(composes):
    check_overrides(["arch=bert,gpt2", "optim.lr=1e-3,2e-3", "trainer.max_steps=1"], CONF)
    assert composes == [["arch=bert"]]  # no arch key typed: gpt2's options change nothing checked
    composes.clear()
    with pytest.raises(ConfigError, match="model_type 'gpt2'"):
        check_overrides(["arch=bert,gpt2", "arch.type_vocab_size=1"], CONF)
    assert composes == [["arch=bert"], ["arch=gpt2"]]
    composes.clear()
    check_overrides(["experiment=default,lm_small", "trainer.max_steps=1"], CONF)  # a global preset
    assert composes == [["experiment=default"], ["experiment=lm_small"]]
