# pytest tests/test_checkpoint.py
"""The generic checkpoint loader and writer: prefixes, legacy names, shards, .bin, layers, shapes, ties."""

from __future__ import annotations

import errno
import json
import logging
import os
import re

import pytest
import safetensors.torch
import torch
import transformers
from torch.testing import assert_close

from factory import (
    AutoModel,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertLMHeadModel,
    BertModel,
    CheckpointError,
    ConfigError,
)
from factory.checkpoints.weights import parse_size


class _RunsCode:
    """Unpickling this would call a function: what `weights_only` loading must refuse."""

    def __reduce__(self):
        return (exec, ("raise SystemExit('pickled code ran')",))


TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37)


@pytest.fixture
def bert_dir(tmp_path):
    """A headless BERT checkpoint written by transformers."""
    torch.manual_seed(0)
    hf = transformers.BertModel(transformers.BertConfig(max_position_embeddings=64, **TINY))
    hf.save_pretrained(tmp_path / "bert")
    return tmp_path / "bert"


def weights(path):
    return safetensors.torch.load_file(path / "model.safetensors")


def test_headless_file_into_a_head_and_head_file_into_the_backbone(tmp_path, bert_dir, caplog):
    with caplog.at_level(logging.INFO, logger="factory.checkpoints.weights"):
        clf, info = AutoModelForSequenceClassification.from_pretrained(
            bert_dir, num_labels=3, output_loading_info=True
        )
    [record] = [r for r in caplog.records if r.name == "factory.checkpoints.weights"]
    assert record.levelno == logging.WARNING
    assert "newly initialised classifier.weight, classifier.bias" in record.getMessage()
    assert info["missing_keys"] == ["classifier.weight", "classifier.bias"]
    assert not info["unexpected_keys"]
    assert_close(
        clf.bert.embeddings["word_embeddings"].weight, weights(bert_dir)["embeddings.word_embeddings.weight"]
    )
    clf.save_pretrained(tmp_path / "clf")
    assert "bert.pooler.dense.weight" in weights(tmp_path / "clf")
    base, info = AutoModel.from_pretrained(tmp_path / "clf", output_loading_info=True)
    assert info["unexpected_keys"] == ["classifier.bias", "classifier.weight"] and not info["missing_keys"]
    assert_close(base.pooler["dense"].weight, clf.bert.pooler["dense"].weight)


def test_new_head_is_seeded(bert_dir):
    heads = []
    for _ in range(2):
        torch.manual_seed(7)
        heads.append(BertForSequenceClassification.from_pretrained(bert_dir, num_labels=3).classifier.weight)
    assert torch.equal(heads[0], heads[1]) and heads[0].std() > 0


def test_legacy_gamma_beta_names(tmp_path, bert_dir):
    state = weights(bert_dir)
    legacy = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in state.items()
    }
    assert any(k.endswith("gamma") for k in legacy)
    (tmp_path / "legacy").mkdir()
    safetensors.torch.save_file(legacy, tmp_path / "legacy" / "model.safetensors")
    (tmp_path / "legacy" / "config.json").write_text((bert_dir / "config.json").read_text())
    model, info = BertModel.from_pretrained(tmp_path / "legacy", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert_close(model.embeddings["LayerNorm"].weight, state["embeddings.LayerNorm.weight"])


def test_shards_out_and_in_and_transformers_reads_them(tmp_path, bert_dir):
    model = BertModel.from_pretrained(bert_dir)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    again = BertModel.from_pretrained(tmp_path / "sharded")
    hf = transformers.BertModel.from_pretrained(tmp_path / "sharded", dtype=torch.float32).eval()
    ids = torch.randint(0, 99, (2, 7))
    with torch.no_grad():
        assert_close(again(ids).last_hidden_state, model(ids).last_hidden_state, atol=0, rtol=0)
        assert_close(hf(input_ids=ids).last_hidden_state, model(ids).last_hidden_state, atol=1e-5, rtol=1e-5)
    # Saving unsharded again removes the old shards, so no stale file can shadow the new weights.
    model.save_pretrained(tmp_path / "sharded")
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_shard_names_that_leave_the_folder_are_refused(tmp_path, bert_dir, name):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text((bert_dir / "config.json").read_text())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": name}}))
    with pytest.raises(CheckpointError, match="leaves the checkpoint folder"):
        BertModel.from_pretrained(folder)


@pytest.mark.parametrize(
    "index, message",
    [
        ('{"weight_map": ["model-1.safetensors"]}', r"'weight_map' is list, expected an object"),
        ("[]", r"'weight_map' is NoneType"),
        ('{"weight_map": {"a": "x"}, "size": ' + "1" * 5000 + "}", r"size is an integer of 5000 digits"),
        ("{" * 100_000, r"nested too deeply|not valid JSON"),
    ],
    ids=["weight_map_list", "not_an_object", "long_int", "deep"],
)
def test_bad_shard_index_names_the_file(tmp_path, bert_dir, index, message):
    folder = tmp_path / "idx"
    folder.mkdir()
    (folder / "config.json").write_text((bert_dir / "config.json").read_text())
    (folder / "model.safetensors.index.json").write_text(index)
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json.*" + message):
        BertModel.from_pretrained(folder)


def test_bin_loads_with_weights_only_and_can_be_refused(tmp_path, bert_dir):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text((bert_dir / "config.json").read_text())
    torch.save(weights(bert_dir), folder / "pytorch_model.bin")
    model = BertModel.from_pretrained(folder)
    assert_close(
        model.encoder["layer"][0].output["dense"].bias, weights(bert_dir)["encoder.layer.0.output.dense.bias"]
    )
    with pytest.raises(FileNotFoundError, match="allow_bin=False"):
        BertModel.from_pretrained(folder, allow_bin=False)
    # Pickled code is refused by weights_only loading.
    torch.save({"x": _RunsCode()}, folder / "pytorch_model.bin")
    with pytest.raises(Exception, match="[Ww]eights only"):
        BertModel.from_pretrained(folder)


def test_non_finite_weights_are_named_on_load(tmp_path, bert_dir, caplog):
    state = weights(bert_dir)
    names = sorted(k for k in state if k.endswith(".bias"))
    for k in names:
        state[k][0] = float("nan") if "attention" in k else float("inf")
    folder = tmp_path / "nan"
    folder.mkdir()
    safetensors.torch.save_file(state, folder / "model.safetensors")
    (folder / "config.json").write_text((bert_dir / "config.json").read_text())
    with caplog.at_level(logging.WARNING, logger="factory.checkpoints.weights"):
        BertModel.from_pretrained(folder)
    [message] = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert f"in {len(names)} tensor(s)" in message and str(folder) in message
    assert f"and {len(names) - 4} more" in message  # a few names, then a count


@pytest.mark.parametrize("damage", ["truncated", "header"])
def test_corrupt_safetensors_names_the_file(bert_dir, damage):
    path = bert_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\xff" * 8 + data[8:])
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))} is not a readable safetensors file"):
        BertModel.from_pretrained(bert_dir)


def test_legacy_non_zip_bin_loads(tmp_path, bert_dir):
    folder = tmp_path / "legacy_bin"
    folder.mkdir()
    (folder / "config.json").write_text((bert_dir / "config.json").read_text())
    torch.save(weights(bert_dir), folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    model = BertModel.from_pretrained(folder)
    assert_close(model.pooler["dense"].weight, weights(bert_dir)["pooler.dense.weight"])
    # Still weights_only: pickled code is refused in the legacy format too.
    torch.save({"x": _RunsCode()}, folder / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    with pytest.raises(Exception, match="[Ww]eights only"):
        BertModel.from_pretrained(folder)


def test_impossible_size_is_refused_before_allocating(bert_dir):
    from factory.models.modeling import estimate_num_parameters

    config = json.loads((bert_dir / "config.json").read_text())
    model = BertModel.from_pretrained(bert_dir)
    sizes = estimate_num_parameters(BertModel, model.config)
    assert sizes["total"] == model.num_parameters()
    assert sizes["num_hidden_layers"] == sum(p.numel() for p in model.encoder.parameters())
    config["num_hidden_layers"] = 1_000_000_000
    (bert_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ConfigError, match=r"config\.json: num_hidden_layers=1000000000 gives about .* GiB in float32"
    ):
        BertModel.from_pretrained(bert_dir)


def test_safetensors_preferred_over_bin(tmp_path, bert_dir):
    torch.save({"garbage": torch.zeros(1)}, bert_dir / "pytorch_model.bin")
    model, info = BertModel.from_pretrained(bert_dir, output_loading_info=True)
    assert info["files"] == ["model.safetensors"]


def test_fewer_layers_loads_the_first_and_reports_the_rest(bert_dir):
    model, info = BertModel.from_pretrained(bert_dir, num_hidden_layers=2, output_loading_info=True)
    assert len(model.encoder["layer"]) == 2 and info["dropped_layers"] == [2]
    assert all(k.startswith("encoder.layer.2.") for k in info["unexpected_keys"]) and info["unexpected_keys"]
    assert_close(
        model.encoder["layer"][1].attention["self"]["query"].weight,
        weights(bert_dir)["encoder.layer.1.attention.self.query.weight"],
    )


def test_shape_conflicts_name_every_key_unless_ignored(bert_dir):
    with pytest.raises(
        CheckpointError,
        match=r"vocab_size=120 \(the checkpoint's: 99\) change the shapes of 1 weight of .*"
        r"\(embeddings.word_embeddings.weight \[99, 32\] -> \[120, 32\]\)",
    ):
        BertModel.from_pretrained(bert_dir, vocab_size=120)
    config = BertConfig.from_pretrained(bert_dir).replace(vocab_size=120)  # a config, no override: every key
    with pytest.raises(
        CheckpointError,
        match=r"embeddings.word_embeddings.weight: checkpoint \[99, 32\] vs model \[120, 32\]",
    ):
        BertModel.from_pretrained(bert_dir, config=config)
    model, info = BertModel.from_pretrained(
        bert_dir, vocab_size=120, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert info["mismatched_keys"] == [("embeddings.word_embeddings.weight", (99, 32), (120, 32))]
    assert "embeddings.word_embeddings.weight" in info["missing_keys"]
    assert model.embeddings["word_embeddings"].weight.shape == (120, 32)
    assert torch.isfinite(model.embeddings["word_embeddings"].weight).all()


def test_wrong_architecture_is_an_error_not_a_random_model(tmp_path, bert_dir):
    folder = tmp_path / "gpt"
    folder.mkdir()
    (folder / "config.json").write_text((bert_dir / "config.json").read_text())
    safetensors.torch.save_file(
        {"h.0.attn.c_attn.weight": torch.zeros(32, 96), "wte.weight": torch.zeros(99, 32)},
        folder / "model.safetensors",
    )
    with pytest.raises(CheckpointError, match=r"does not look like a BertModel checkpoint: only 0 of"):
        BertModel.from_pretrained(folder)


def test_tied_lm_weights_every_writer_variant(tmp_path):
    torch.manual_seed(0)
    config = BertConfig(is_decoder=True, max_position_embeddings=64, **TINY)
    model = BertLMHeadModel(config)
    model.save_pretrained(tmp_path / "lm")
    saved = weights(tmp_path / "lm")
    assert "cls.predictions.decoder.weight" not in saved and "cls.predictions.decoder.bias" not in saved
    emb = saved["bert.embeddings.word_embeddings.weight"]
    cases = {
        "only_decoder": {k: v for k, v in saved.items() if k != "bert.embeddings.word_embeddings.weight"}
        | {"cls.predictions.decoder.weight": emb},
        "both_equal": saved | {"cls.predictions.decoder.weight": emb.clone()},
    }
    for name, state in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text((tmp_path / "lm" / "config.json").read_text())
        safetensors.torch.save_file(state, folder / "model.safetensors")
        loaded, info = BertLMHeadModel.from_pretrained(folder, output_loading_info=True)
        assert not info["missing_keys"], name
        assert loaded.cls["predictions"].decoder.weight is loaded.bert.embeddings["word_embeddings"].weight
        assert_close(loaded.cls["predictions"].decoder.weight, emb)
    state = saved | {"cls.predictions.decoder.weight": emb + 1}
    safetensors.torch.save_file(state, tmp_path / "lm" / "model.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"'bert.embeddings.word_embeddings.weight' and 'cls.predictions.decoder.weight'",
    ):
        BertLMHeadModel.from_pretrained(tmp_path / "lm")


def test_half_precision_file_loads_in_fp32_unless_asked(tmp_path, bert_dir):
    state = {k: v.half() for k, v in weights(bert_dir).items()}
    safetensors.torch.save_file(state, bert_dir / "model.safetensors")
    assert BertModel.from_pretrained(bert_dir).dtype == torch.float32
    assert BertModel.from_pretrained(bert_dir, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_failed_save_leaves_the_previous_checkpoint(tmp_path, bert_dir, monkeypatch):
    model = BertForSequenceClassification.from_pretrained(bert_dir)
    model.save_pretrained(tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(tmp_path / "out")
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert after == before  # same files, same bytes, no temporary left behind


def test_random_init_follows_hf_scheme():
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(initializer_range=0.05, **TINY))
    w = model.bert.encoder["layer"][0].intermediate["dense"].weight
    assert abs(w.std().item() - 0.05) < 0.005 and model.classifier.bias.abs().sum() == 0
    assert model.bert.embeddings["word_embeddings"].weight[0].abs().sum() == 0  # padding row
    assert torch.equal(model.bert.embeddings["LayerNorm"].weight, torch.ones(32))
    torch.manual_seed(0)
    again = BertForSequenceClassification(BertConfig(initializer_range=0.05, **TINY))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size(100) == 100
    with pytest.raises(ValueError, match="max_shard_size='lots'"):
        parse_size("lots")


@pytest.mark.parametrize(
    "layers, kept", [("first", [0, 1]), ("last", [1, 2]), ("even", [0, 2]), ([2, 0], [2, 0])]
)
def test_layer_choice_on_a_shallower_model(bert_dir, layers, kept):
    model, info = BertModel.from_pretrained(
        bert_dir, num_hidden_layers=2, layers=layers, output_loading_info=True
    )
    assert info["kept_layers"] == {"encoder.layer": kept}
    assert info["dropped_layers"] == sorted({0, 1, 2} - set(kept))
    state = weights(bert_dir)
    for new, old in enumerate(kept):
        assert_close(
            model.encoder["layer"][new].output["dense"].weight,
            state[f"encoder.layer.{old}.output.dense.weight"],
        )


def test_bad_layer_choices_and_deeper_models(bert_dir):
    with pytest.raises(
        ValueError, match=r"layers='middle' is not valid: expected one of \['first', 'last', 'even'\]"
    ):
        BertModel.from_pretrained(bert_dir, num_hidden_layers=2, layers="middle")
    with pytest.raises(
        ValueError, match=r"layers=\[0, 7\] is not valid: expected 2 distinct indices in \[0, 3\)"
    ):
        BertModel.from_pretrained(bert_dir, num_hidden_layers=2, layers=[0, 7])
    with pytest.raises(CheckpointError, match=r"has 3 layers in encoder.layer.\* but the model asks for 5"):
        BertModel.from_pretrained(bert_dir, num_hidden_layers=5)
    model, info = BertModel.from_pretrained(
        bert_dir, num_hidden_layers=4, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert {k for k in info["missing_keys"] if not k.startswith("encoder.layer.3.")} == set()
    assert info["missing_keys"]


def test_layer_choice_applies_to_both_bart_stacks(tmp_path):
    torch.manual_seed(0)
    hf = transformers.BartModel(
        transformers.BartConfig(
            vocab_size=99,
            d_model=16,
            encoder_layers=4,
            decoder_layers=3,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=20,
            decoder_ffn_dim=20,
            max_position_embeddings=32,
        )
    )
    hf.save_pretrained(tmp_path)
    from factory import BartModel

    model, info = BartModel.from_pretrained(
        tmp_path, num_hidden_layers=2, layers="last", output_loading_info=True
    )
    assert info["kept_layers"] == {"encoder.layers": [2, 3], "decoder.layers": [1, 2]}
    assert_close(model.decoder.layers[0].fc1.weight, hf.decoder.layers[1].fc1.weight)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_saved_weights_follow_the_umask_as_every_other_file(tmp_path, bert_dir, umask):
    model = BertForSequenceClassification.from_pretrained(bert_dir)
    before = os.umask(umask)
    try:
        model.save_pretrained(tmp_path / "out")
    finally:
        os.umask(before)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask), modes


def test_an_override_that_changes_weight_shapes_is_named_before_the_weights(bert_dir):
    for load in (lambda: AutoModel.from_pretrained(bert_dir, hidden_size=64),
                 lambda: BertModel.from_pretrained(bert_dir, hidden_size=64)):  # fmt: skip
        with pytest.raises(CheckpointError) as caught:
            load()
        message = str(caught.value)
        assert message.startswith(
            f"hidden_size=64 (the checkpoint's: {TINY['hidden_size']}) change the shapes"
        )
        assert "ignore_mismatched_sizes=True" in message and len(message) < 1000  # not every tensor
