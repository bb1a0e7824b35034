# pytest tests/test_pretrained.py
"""init=pretrained rules: the checkpoint decides the architecture; overrides apply, pick layers, or fail by name."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch.testing import assert_close

from factory import AutoModel, AutoModelForSequenceClassification, ConfigError
from factory.training.pretrained import PretrainedInit, load_pretrained, write_report
from tests.helpers import SHA_MAIN, add_snapshot


def init(path, **kw) -> PretrainedInit:
    return PretrainedInit.from_mapping({"name": "pretrained", "name_or_path": str(path), **kw})


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return AutoModel.from_pretrained(minilm_path)


def test_headless_checkpoint_gets_a_seeded_head(minilm_path, minilm):
    labels = {0: "negative", 1: "positive"}
    config, model, tok, report = load_pretrained(init(minilm_path, seed=3), "seqcls", labels=labels)
    assert report["newly_initialised"] == ["classifier.weight", "classifier.bias"]
    assert config.id2label == labels and tok.cls_token == "[CLS]"
    assert_close(
        model.bert.encoder["layer"][5].output["dense"].weight,
        minilm.encoder["layer"][5].output["dense"].weight,
    )
    _, again, _, _ = load_pretrained(init(minilm_path, seed=3), "seqcls", labels=labels)
    assert torch.equal(model.classifier.weight, again.classifier.weight)


def test_checkpoint_with_another_head_keeps_the_backbone(tmp_path, minilm_path):
    clf = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    clf.save_pretrained(tmp_path / "clf")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / "clf" / name).write_bytes((minilm_path / name).read_bytes())
    _, qa, _, report = load_pretrained(init(tmp_path / "clf"), "qa")
    assert report["dropped"] == [
        "bert.pooler.dense.bias",
        "bert.pooler.dense.weight",
        "classifier.bias",
        "classifier.weight",
    ]
    assert report["newly_initialised"] == ["qa_outputs.weight", "qa_outputs.bias"]
    # The same head with another label count is an error, unless the head may be replaced.
    with pytest.raises(
        ConfigError, match=r"head with num_labels=2 .* the data has 3 labels .*ignore_mismatched_sizes"
    ):
        load_pretrained(init(tmp_path / "clf"), "seqcls", labels={0: "a", 1: "b", 2: "c"})
    _, model, _, report = load_pretrained(
        init(tmp_path / "clf", ignore_mismatched_sizes=True), "seqcls", labels={0: "a", 1: "b", 2: "c"}
    )
    assert model.classifier.weight.shape == (3, 384) and {m[0] for m in report["mismatched"]} == {
        "classifier.weight",
        "classifier.bias",
    }


def test_the_checkpoint_decides_the_architecture(minilm_path):
    with pytest.raises(ConfigError, match=r"arch=gpt2 disagrees with the checkpoint .* model_type='bert'"):
        load_pretrained(init(minilm_path), "seqcls", arch_choice="gpt2")


@pytest.mark.parametrize(
    "user, pattern",
    [
        (
            {"hidden_size": 192},
            r"arch.hidden_size=192 differs from the checkpoint .* hidden_size=384: it changes the shape",
        ),
        ({"vocab_size": 100}, r"arch.vocab_size=100 differs .* vocab_size=30522"),
        (
            {"num_hidden_layers": 8},
            r"arch.num_hidden_layers=8 asks for more layers than the checkpoint .* \(num_hidden_layers=6\)",
        ),
        ({"hidden_dropout_prob": 1.5}, r"arch.hidden_dropout_prob=1.5: .*probability in \[0, 1\)"),
    ],
)
def test_structural_overrides_are_errors_naming_both_values(minilm_path, user, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_pretrained(init(minilm_path), "seqcls", user_arch=user)


def test_non_structural_overrides_apply_and_layers_are_chosen(minilm_path, minilm):
    user = {"num_hidden_layers": 3, "hidden_dropout_prob": 0.25, "layer_norm_eps": 1e-6}
    config, model, _, report = load_pretrained(init(minilm_path, layers="even"), "base", user_arch=user)
    assert (config.num_hidden_layers, config.hidden_dropout_prob, config.layer_norm_eps) == (3, 0.25, 1e-6)
    assert report["kept_layers"] == {"encoder.layer": [0, 2, 5]} and report["overrides"] == user
    assert_close(
        model.encoder["layer"][2].intermediate["dense"].weight,
        minilm.encoder["layer"][5].intermediate["dense"].weight,
    )
    assert model.encoder["layer"][0].output["LayerNorm"].eps == 1e-6


def test_more_layers_with_the_escape_initialises_them(minilm_path):
    config, model, _, report = load_pretrained(
        init(minilm_path, ignore_mismatched_sizes=True), "base", user_arch={"num_hidden_layers": 7}
    )
    assert len(model.encoder["layer"]) == 7
    assert report["newly_initialised"] and all(
        k.startswith("encoder.layer.6.") for k in report["newly_initialised"]
    )


def test_architecture_only_takes_config_and_tokenizer_with_fresh_weights(minilm_path, minilm):
    config, model, tok, report = load_pretrained(
        init(minilm_path, weights=False), "seqcls", labels={0: "n", 1: "p"}
    )
    assert config.hidden_size == 384 and config.num_hidden_layers == 6 and tok.vocab_size == 30522
    assert not torch.allclose(
        model.bert.embeddings["word_embeddings"].weight, minilm.embeddings["word_embeddings"].weight
    )
    assert report["weights"] is False and report["loaded"] == 0


def test_report_records_commit_and_file_hashes(tmp_path, minilm_path):
    add_snapshot(tmp_path / "hub", "org/minilm", minilm_path, SHA_MAIN)
    _, _, _, report = load_pretrained(init("org/minilm", cache_dir=str(tmp_path / "hub")), "seqcls")
    assert report["commit"] == SHA_MAIN and report["model_class"] == "BertForSequenceClassification"
    expected = hashlib.sha256((minilm_path / "model.safetensors").read_bytes()).hexdigest()
    assert report["files"] == {"model.safetensors": expected}
    path = write_report(report, tmp_path)
    assert json.loads(path.read_text())["commit"] == SHA_MAIN


def test_init_keys_are_checked():
    with pytest.raises(ConfigError, match=r"Unknown key init.layer\b.*Did you mean 'layers'"):
        PretrainedInit.from_mapping({"name_or_path": "x", "layer": "even"})
    with pytest.raises(ConfigError, match=r"init.name_or_path is not set"):
        PretrainedInit.from_mapping({"name": "pretrained"})
