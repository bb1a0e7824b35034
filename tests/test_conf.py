# python -m pytest tests/test_conf.py
"""The Hydra config tree: every arch x head x init composes, presets hold deltas, typos and bad values fail
with the key path, the value and what is valid, before any weight or data is read; the dry run."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from factory import registry
from factory.build import build_config
from factory.config import ConfigError
from factory.heads.seqcls import accuracy_and_macro_f1
from factory.training.command_line import check_overrides, parse
from factory.training.lightning.optim import check_optim, lr_factor, parameter_groups
from factory.training.plan import describe, estimate_memory, resolve
from factory.training.run import train
from tests.helpers import tiny_config

CONF = Path(__file__).resolve().parent.parent / "conf"
ARCHS = sorted(registry.model_matrix())
HEADS = sorted({h for heads in registry.model_matrix().values() for h in heads} - {"base"})


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.fixture
def no_data(monkeypatch):
    """Fail the test if anything tries to read data: config errors must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("data was read before the config was checked")

    monkeypatch.setattr("factory.data.sources.load_examples", refuse)


# ---- composition ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("init", ["random", "pretrained"])
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_head_init_composes_and_resolves(arch, head, init, tmp_path):
    extra = []
    if init == "pretrained":  # resolving reads the checkpoint's config.json (and no weights)
        tiny_config(arch, max_position_embeddings=512).save_pretrained(tmp_path)
        extra = [f"init.name_or_path={tmp_path}"]
    cfg = compose_cfg(f"arch={arch}", f"head={head}", f"init={init}", *extra)
    if head not in registry.model_matrix()[arch]:  # a hole in the matrix (as in HF): the plan names it
        with pytest.raises(registry.RegistryError, match=f"Architectures that have head '{head}'"):
            resolve(cfg)
        return
    assert cfg.arch.model_type == arch and cfg.head.name == head and cfg.init.name == init
    # The head brings its own data and metric; the checkpoint callback follows the metric.
    assert cfg.data == compose_cfg(f"head={head}").data
    assert cfg.callbacks.model_checkpoint.monitor == cfg.head.monitor
    assert cfg.callbacks.model_checkpoint.mode == cfg.head.mode
    plan = resolve(cfg)
    assert plan.config.model_type == arch and plan.head == head
    assert plan.config.is_decoder == (head == "causal_lm")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_head_picks_its_data_and_data_keys_override_it():
    assert compose_cfg().data.label_column == "label"
    qa = compose_cfg("head=qa")
    assert "question_column" in qa.data and "label_column" not in qa.data
    mine = compose_cfg("head=qa", "data.train_file=mine.json", "data.validation_file=dev.json")
    assert (mine.data.train_file, mine.data.validation_file) == ("mine.json", "dev.json")
    assert compose_cfg("head=causal_lm", "data.max_length=64").data.max_length == 64


# (layers, width, heads) of each family's base checkpoint; Llama's is SmolLM-135M, Qwen2's Qwen2-0.5B.
BASE_SIZES = {
    "bert": (12, 768, 12),
    "gpt2": (12, 768, 12),
    "bart": (6, 768, 12),
    "roberta": (12, 768, 12),
    "distilbert": (6, 768, 12),
    "llama": (30, 576, 9),
    "qwen2": (24, 896, 14),
    "t5": (6, 512, 8),
}


@pytest.mark.parametrize("arch", ARCHS)
def test_arch_files_are_base_size_with_common_names(arch):
    cfg = compose_cfg(f"arch={arch}", "~experiment")
    config = build_config(cfg.arch)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == BASE_SIZES[arch]
    # The experiment's deltas reach every architecture through the same common names.
    small = build_config(compose_cfg(f"arch={arch}").arch)
    assert (small.num_hidden_layers, small.hidden_size) == (2, 128)
    assert compose_cfg(f"arch={arch}", "arch.num_hidden_layers=10").arch.num_hidden_layers == 10


def test_experiment_presets_hold_deltas():
    default = compose_cfg()
    qa = compose_cfg("experiment=qa_small")
    assert qa.head.name == "qa" and qa.data.stride == 32 and qa.data.question_column == "question"
    assert qa.arch == default.arch  # inherited from experiment/default, not repeated
    lm = compose_cfg("arch=gpt2", "experiment=lm_small")
    assert lm.head.name == "causal_lm" and lm.arch.model_type == "gpt2"
    assert compose_cfg("arch=bart", "head=qa", "experiment=qa_small").arch.model_type == "bart"
    # The command line wins over a preset.
    assert compose_cfg("experiment=qa_small", "data.stride=8").data.stride == 8


def test_debug_presets_and_groups_compose():
    fast = compose_cfg("debug=fast_dev_run")
    assert fast.trainer.fast_dev_run is True
    overfit = compose_cfg("debug=overfit")
    assert overfit.trainer.overfit_batches == 4 and overfit.optim.scheduler == "constant"
    tb = compose_cfg("logger=tensorboard")
    assert tb.logger.tensorboard._target_.endswith("TensorBoardLogger")
    assert compose_cfg().callbacks.early_stopping.enabled is False
    for plan_cfg in (fast, overfit, compose_cfg("optim.scheduler=cosine", "optim.warmup_steps=10")):
        resolve(plan_cfg)


def test_hydra_settings_keep_cwd_and_write_under_outputs():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    assert cfg.hydra.job.chdir is False
    assert cfg.hydra.run.dir.startswith("outputs/")


# ---- typos ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["", "+", "++"])
@pytest.mark.parametrize("arch", ARCHS)
def test_arch_typo_names_key_value_and_valid_keys(arch, prefix):
    with pytest.raises(ConfigError) as e:
        check_overrides([f"arch={arch}", f"{prefix}arch.num_hiden_layers=10"], CONF)
    message = str(e.value)
    assert "arch.num_hiden_layers=10" in message
    assert "Did you mean 'num_hidden_layers'" in message
    assert "Valid keys:" in message and "'hidden_size'" in message and repr(arch) in message


def test_arch_typo_uses_the_default_arch_and_the_presets_choice():
    with pytest.raises(ConfigError, match="model_type 'bert'"):
        check_overrides(["arch.n_layer=3"], CONF)  # a GPT-2 name is not a BERT key
    check_overrides(["arch=gpt2", "arch.n_layer=3"], CONF)  # ... but it is a GPT-2 key
    check_overrides(["arch=bart", "arch.encoder_layers=3", "+arch.num_labels=4"], CONF)
    with pytest.raises(ConfigError, match="model_type 'gpt2'"):
        check_overrides(["arch=bert,gpt2", "arch.type_vocab_size=1"], CONF)  # a sweep: each choice


def test_other_typos_list_the_valid_keys_and_plus_adds_on_purpose():
    with pytest.raises(ConfigError) as e:
        check_overrides(["optim.lrr=1e-3"], CONF)
    assert "optim.lrr=1e-3" in str(e.value) and "Did you mean 'lr'" in str(e.value)
    assert "'weight_decay'" in str(e.value)
    with pytest.raises(ConfigError, match="Did you mean 'max_steps'"):
        check_overrides(["trainer.max_step=3"], CONF)
    check_overrides(["+trainer.num_sanity_val_steps=0", "optim.lr=1e-3", "hydra.run.dir=x", "~debug"], CONF)
    check_overrides(["init=pretrained", "init.name_or_path=/some/dir", "data.train_file=a.csv"], CONF)
    check_overrides(["head=nope", "optim.lr=1"], CONF)  # an unknown option: Hydra's own message lists them


def test_command_line_parsing_matches_hydras():
    cli = parse(["--cfg", "job", "arch=gpt2", "-m", "+arch.x=1", "hydra.run.dir=/x"])
    assert cli.texts == ["arch=gpt2", "+arch.x=1", "hydra.run.dir=/x"] and cli.config_name == "train"
    assert cli.flags == ["--cfg", "job", "-m"] and cli.value("hydra.run.dir") == "/x"


def test_plus_arch_typo_fails_in_build_config_too(no_data, tmp_path):
    # Without the command-line check (the Python API), factory.build names it the same way.
    cfg = compose_cfg("+arch.num_hiden_layers=10")
    with pytest.raises(ConfigError) as e:
        train(cfg, run_dir=tmp_path)
    assert "arch.num_hiden_layers=10" in str(e.value) and "num_hidden_layers" in str(e.value)


# ---- bad values ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["arch.num_attention_heads=5"], ["arch.num_attention_heads=5", "divisor of hidden_size=128"]),
        (["arch=gpt2", "arch.num_attention_heads=3"], ["arch.num_attention_heads=3", "divisor"]),
        (["arch.hidden_dropout_prob=2.0"], ["arch.hidden_dropout_prob=2.0", "[0, 1)"]),
        (["arch=bart", "arch.dropout=2.0"], ["arch.dropout=2.0", "[0, 1)"]),
        (["arch.hidden_act=gelux"], ["arch.hidden_act='gelux'", "one of"]),
        (
            ["optim.scheduler=cosin"],
            ["optim.scheduler='cosin'", "'constant', 'linear', 'cosine'", "'cosine'?"],
        ),
        (["optim.lr=-1"], ["optim.lr=-1", "positive"]),
        (["optim.warmup_ratio=1.5"], ["optim.warmup_ratio=1.5", "[0, 1)"]),
        (["+optim.momentum=0.9"], ["optim.momentum", "Valid keys"]),
        (["data.max_length=600"], ["data.max_length=600", "arch.max_position_embeddings=512"]),
        (["head=qa", "data.stride=400"], ["data.stride=400", "data.max_length=384"]),
        (["data.batch_size=0"], ["data.batch_size=0", "positive integer"]),
        (["+trainer.max_stepz=3"], ["trainer.max_stepz=3", "Did you mean 'max_steps'"]),
        (["init=pretrained"], ["init.name_or_path is not set"]),
    ],
)
def test_bad_values_fail_before_data_with_key_value_and_valid(no_data, tmp_path, overrides, expected):
    cfg = compose_cfg(*overrides)
    with pytest.raises(ConfigError) as e:
        train(cfg, run_dir=tmp_path, overrides=overrides)  # what the user typed, as Hydra records it
    for part in expected:
        assert part in str(e.value), (part, str(e.value))
    assert not any(tmp_path.iterdir())  # nothing written either


# ---- optimizer, schedule, metrics ---------------------------------------------------------------------
def test_schedules_warm_up_then_follow_their_shape():
    for name in ("constant", "linear", "cosine"):
        f = lr_factor(name, warmup=4, total=14)
        assert [round(f(s), 3) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
        assert f(4) == pytest.approx(1.0)
    assert lr_factor("constant", 4, 14)(13) == 1.0
    assert lr_factor("linear", 4, 14)(9) == pytest.approx(0.5)
    assert lr_factor("cosine", 4, 14)(9) == pytest.approx(0.5)
    assert lr_factor("linear", 4, 14)(14) == pytest.approx(0.0)
    assert check_optim({"scheduler": "cosine"})["lr"] == 5e-5  # defaults fill in


def test_no_weight_decay_on_biases_and_layernorm():
    from factory.build import build_model

    _, model = build_model(dict(model_type="bert", vocab_size=50, num_hidden_layers=1, hidden_size=8,
                                num_attention_heads=2, intermediate_size=16), "seqcls")  # fmt: skip
    decay, rest = parameter_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    assert all(not names[id(p)].endswith("bias") and "LayerNorm" not in names[id(p)] for p in decay["params"])
    assert all(names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)] for p in rest["params"])
    assert len(decay["params"]) + len(rest["params"]) == len(list(model.parameters()))


def test_accuracy_and_macro_f1_match_a_hand_count():
    preds, labels = torch.tensor([0, 0, 1, 1, 2, 0]), torch.tensor([0, 1, 1, 1, 2, 2])
    accuracy, f1 = accuracy_and_macro_f1(preds, labels)
    assert accuracy == pytest.approx(4 / 6)
    # F1 = 2 tp / (predicted + actual): class 0 -> 2/(3+1), class 1 -> 4/(2+3), class 2 -> 2/(1+2)
    assert f1 == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)


# ---- dry run -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_dry_run_reports_config_parameters_and_memory_without_data(arch, no_data, tmp_path, caplog):
    cfg = compose_cfg(f"arch={arch}", "dry_run=true")
    with caplog.at_level(logging.INFO, logger="factory.training.run"):
        assert math.isnan(train(cfg, run_dir=tmp_path))
    text = caplog.text
    assert "parameters:" in text and "estimated training memory" in text and '"model_type": "' + arch in text
    assert not any(tmp_path.iterdir())
    summary = describe(compose_cfg(f"arch={arch}", "~experiment"))
    # Base sizes: BERT-base seqcls ~109M, GPT-2 small ~124M, BART-base ~140M, RoBERTa-base ~125M,
    # DistilBERT-base ~67M parameters; Llama and Qwen2 with one key/value head per query head
    # (SmolLM-135M's 3 and Qwen2-0.5B's 2 give 135M and 494M); t5-small's 60.5M and a classifier head.
    expected = {"bert": 109.5e6, "gpt2": 124.4e6, "bart": 140.0e6, "roberta": 124.6e6, "distilbert": 67.0e6}
    expected |= {"llama": 147.8e6, "qwen2": 527.1e6, "t5": 60.77e6}
    assert summary["num_parameters"] == pytest.approx(expected[arch], rel=0.02)
    memory = summary["memory"]
    assert memory["total"] == sum(v for k, v in memory.items() if k != "total")
    assert memory["optimizer_states"] == 2 * memory["weights"]


def test_memory_estimate_grows_with_batch_and_length():
    small = estimate_memory(1000, layers=2, hidden=64, heads=2, batch=4, length=32)
    assert (
        estimate_memory(1000, layers=2, hidden=64, heads=2, batch=8, length=32)["activations"]
        == 2 * small["activations"]
    )
    assert (
        estimate_memory(1000, layers=2, hidden=64, heads=2, batch=4, length=64)["activations"]
        > 2 * small["activations"]
    )


def test_dry_run_of_a_pretrained_checkpoint_reads_only_its_config(minilm_path, no_data):
    summary = describe(compose_cfg("init=pretrained", f"init.name_or_path={minilm_path}"))
    assert summary["config"]["hidden_size"] == 384 and summary["config"]["num_hidden_layers"] == 6
    assert summary["num_parameters"] == pytest.approx(22.7e6, rel=0.02)


def test_callbacks_follow_the_head_and_early_stopping_is_opt_in():
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    from factory.training.run import instantiate_all

    callbacks = instantiate_all(compose_cfg("head=causal_lm").callbacks, pl.Callback, "callbacks")
    assert not any(isinstance(c, EarlyStopping) for c in callbacks)
    checkpoint = next(c for c in callbacks if isinstance(c, ModelCheckpoint))
    assert (checkpoint.monitor, checkpoint.mode, checkpoint.save_last) == ("val/loss", "min", False)
    last = next(c for c in callbacks if isinstance(c, ModelCheckpoint) and c.save_last)  # last.ckpt's writer
    assert last.monitor is None and last.save_top_k == 0
    callbacks = instantiate_all(
        compose_cfg("callbacks.early_stopping.enabled=true", "callbacks.early_stopping.patience=1").callbacks,
        pl.Callback,
        "callbacks",
    )
    stop = next(c for c in callbacks if isinstance(c, EarlyStopping))
    assert (stop.monitor, stop.patience) == ("val/accuracy", 1)
