# pytest tests/test_config.py
"""Typed configs: HF defaults, overrides, common names, round trips, and errors that name the key."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import ClassVar

import pytest

from factory import AutoConfig, BertConfig, ConfigError, GPT2Config, PretrainedConfig

BERT_BASE_UNCASED = {
    "architectures": ["BertForMaskedLM"],
    "attention_probs_dropout_prob": 0.1,
    "gradient_checkpointing": False,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
    "transformers_version": "4.6.0.dev0",
    "type_vocab_size": 2,
    "use_cache": True,
    "vocab_size": 30522,
}


def test_defaults_are_bert_base_uncased():
    config = BertConfig()
    for key, value in BERT_BASE_UNCASED.items():
        if key in BertConfig.field_names():
            if key != "architectures":
                assert getattr(config, key) == value, key
    assert config.num_labels == 2


def test_round_trip_keeps_unknown_keys(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(BERT_BASE_UNCASED))
    config = BertConfig.from_pretrained(tmp_path, num_hidden_layers=10, num_labels=3)
    assert config.num_hidden_layers == 10 and config.num_labels == 3
    assert config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    config.save_pretrained(tmp_path / "out")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["gradient_checkpointing"] is False
    assert written["transformers_version"] == "4.6.0.dev0"
    assert written["num_hidden_layers"] == 10 and written["model_type"] == "bert"
    assert written["id2label"] == {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}
    again = BertConfig.from_pretrained(tmp_path / "out")
    assert again == config and again.extra == config.extra


def test_autoconfig_picks_the_class(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(BERT_BASE_UNCASED))
    assert isinstance(AutoConfig.from_pretrained(tmp_path), BertConfig)
    bad = dict(BERT_BASE_UNCASED, model_type="bret")
    (tmp_path / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=r"'bret'.*Did you mean 'bert'.*Valid model types"):
        AutoConfig.from_pretrained(tmp_path)


def test_label_maps_become_int_keyed():
    config = BertConfig.from_dict({"id2label": {"0": "neg", "1": "pos"}})
    assert config.id2label == {0: "neg", 1: "pos"} and config.label2id == {"neg": 0, "pos": 1}
    assert config.num_labels == 2


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(num_attention_heads=5), r"num_attention_heads=5 .*divisor of hidden_size=768"),
        (dict(hidden_dropout_prob=1.5), r"hidden_dropout_prob=1.5 .*probability in \[0, 1\)"),
        (dict(num_hidden_layers=0), r"num_hidden_layers=0 .*positive integer"),
        (dict(hidden_act="gleu"), r"hidden_act='gleu' .*one of \[.*'gelu'"),
        (
            dict(position_embedding_type="relative_key"),
            r"position_embedding_type='relative_key'.*not implemented",
        ),
        (dict(problem_type="ranking"), r"problem_type='ranking'.*regression"),
    ],
)
def test_validation_names_field_value_and_choices(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        BertConfig(**kwargs)


def test_unknown_override_is_an_error_with_a_suggestion(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(BERT_BASE_UNCASED))
    with pytest.raises(ConfigError, match=r"'num_hiden_layers'.*Did you mean 'num_hidden_layers'"):
        BertConfig.from_pretrained(tmp_path, num_hiden_layers=10)
    with pytest.raises(ConfigError, match=r"Unknown BertConfig key 'hidden_szie'"):
        BertConfig.from_dict({"hidden_szie": 3}, strict=True)


def test_invalid_checkpoint_config_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(dict(BERT_BASE_UNCASED, num_attention_heads=7)))
    with pytest.raises(ConfigError, match=r"config.json: BertConfig.num_attention_heads=7"):
        AutoConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"layer_norm_eps": "x"}', r"layer_norm_eps='x' is not valid: expected a finite number"),
        ('{"layer_norm_eps": NaN}', r"layer_norm_eps=nan is not valid"),
        ('{"id2label": ["neg", "pos"]}', r"id2label=\['neg', 'pos'\] is not valid: expected a mapping"),
        ('{"id2label": {"first": "neg"}}', r"id2label=.* expected integer keys"),
        (b'{"hidden_act": "\xff"}', r"is not UTF-8 text: byte 0xff at offset 16"),
        ("[" * 200_000 + "]" * 200_000, r"is nested too deeply"),
        ('{"vocab_size": ' + "9" * 5000 + "}", r": vocab_size is an integer of 5000 digits"),
        ("[1, 2]", r"holds a JSON list, not an object"),
    ],
    ids=["float_str", "float_nan", "id2label_list", "id2label_keys", "not_utf8", "deep", "long_int", "list"],
)
def test_bad_values_in_config_json_name_the_file(tmp_path, text, message):
    path = tmp_path / "config.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ".*" + message):
        BertConfig.from_json_file(path)


# ---- printing and JSON, as transformers ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["BertConfig", "GPT2Config", "BartConfig"])
def test_a_config_prints_as_transformers_json(name, tmp_path):
    import factory

    transformers = pytest.importorskip("transformers")
    ours = getattr(factory, name)()
    ours.num_hidden_layers = 3
    ours.id2label = {0: "neg", 1: "pos", 2: "mixed"}
    ours.label2id = {"neg": 0, "pos": 1, "mixed": 2}
    text = repr(ours)
    assert text.startswith(name + " {\n") and text == str(ours)
    printed = json.loads(text[len(name) + 1 :])
    theirs = json.loads(
        repr(getattr(transformers, name)(**{k: v for k, v in printed.items() if k != "model_type"})).split(
            " ", 1
        )[1]
    )
    common = set(printed) & set(theirs)
    assert {"model_type", "id2label", "vocab_size", "pad_token_id"} <= common
    assert {k: printed[k] for k in common} == {k: theirs[k] for k in common}
    assert "architectures" not in printed and "problem_type" not in printed  # defaults, left out as HF does
    # to_json_file writes what config.json holds; transformers reads it to the same values.
    ours.to_json_file(tmp_path / "config.json")
    loaded = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(loaded).__name__ == name and loaded.num_hidden_layers == 3 and loaded.id2label[2] == "mixed"
    assert json.loads(ours.to_json_string()) == ours.to_dict()
    assert set(json.loads(ours.to_json_string(use_diff=True))) < set(ours.to_dict())


def test_an_unknown_keyword_argument_is_named_as_an_argument_not_blamed_on_the_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(BERT_BASE_UNCASED))
    with pytest.raises(ConfigError) as info:
        AutoConfig.from_pretrained(tmp_path, hidden_dropout_prob=0.2, output_attentionz=True)
    assert "Unknown BertConfig keyword argument 'output_attentionz'" in str(info.value)
    assert "config.json" not in str(info.value)


def test_a_config_reads_another_architectures_config_json_through_its_table():
    @dataclass
    class Student(PretrainedConfig):  # not registered: the translation is the config class's alone
        model_type: ClassVar[str] = "student"
        aliases: ClassVar[dict] = {"num_hidden_layers": ("n_layers",)}
        reads_model_types: ClassVar[dict] = {"bert": {"hidden_act": "activation"}}
        n_layers: int = 6
        activation: str = "relu"

    student = Student.from_dict({**BERT_BASE_UNCASED, "hidden_act": "gelu_new"}, num_hidden_layers=4)
    assert (student.n_layers, student.activation, student.pad_token_id) == (4, "gelu_new", 0)
    assert student.architectures is None  # BERT's class names are not the student's
    written = student.to_dict()
    assert written["model_type"] == "student" and "type_vocab_size" not in written and not student.extra
    with pytest.raises(
        ConfigError, match=r"'gpt2' cannot be read by Student, which reads .*\['student', 'bert'\]"
    ):
        Student.from_dict(GPT2Config().to_dict())
