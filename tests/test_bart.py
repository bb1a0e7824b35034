# pytest tests/test_bart.py
"""BART against `transformers` (the test oracle): both directions through the real loader and saver,
tied-embedding variants of files, the KV cache, and the config's common names and errors."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import save_file

import factory.models.bart  # noqa: F401  (registers "bart")
from factory.checkpoints.weights import CheckpointError
from factory.config import ConfigError
from factory.models.bart import BartConfig, BartForCausalLM, BartModel
from factory.registry import model_class

TOL = dict(atol=1e-5, rtol=1e-5)
HEADS = ("base", "seqcls", "qa", "causal_lm")
HF_CLASSES = {
    "base": transformers.BartModel,
    "seqcls": transformers.BartForSequenceClassification,
    "qa": transformers.BartForQuestionAnswering,
    "causal_lm": transformers.BartForCausalLM,
}
HF_AUTO = {
    "base": transformers.AutoModel,
    "seqcls": transformers.AutoModelForSequenceClassification,
    "qa": transformers.AutoModelForQuestionAnswering,
    "causal_lm": transformers.AutoModelForCausalLM,
}
# What each head returns that we compare with HF's output of the same name.
FIELDS = {
    "base": ("last_hidden_state", "encoder_last_hidden_state"),
    "seqcls": ("logits", "loss"),
    "qa": ("start_logits", "end_logits", "loss"),
    "causal_lm": ("logits", "loss"),
}
SIZES = {
    "odd": dict(
        d_model=30,
        encoder_layers=2,
        decoder_layers=3,
        encoder_attention_heads=5,
        decoder_attention_heads=3,
        encoder_ffn_dim=17,
        decoder_ffn_dim=19,
        scale_embedding=True,
    ),
    "relu": dict(
        d_model=24,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=4,
        encoder_ffn_dim=37,
        decoder_ffn_dim=29,
        activation_function="relu",
    ),
    "wide": dict(
        d_model=40,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=8,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=48,
        activation_function="gelu_new",
        scale_embedding=True,
    ),
}
VOCAB, EOS, PAD = 99, 2, 1


def sizes(name: str, head: str = "base") -> dict:
    kw = dict(vocab_size=VOCAB, max_position_embeddings=64, **SIZES[name])
    if head == "causal_lm":  # transformers' BartForCausalLM sizes its cache by encoder_layers
        kw["encoder_layers"] = kw["decoder_layers"]
    return kw


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its init (LayerNorm 1/0, zero biases) so that no swap goes unseen."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():  # tied parameters once
        p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model.eval()


def hf_model(head: str, kw: dict, seed: int = 0):
    torch.manual_seed(seed)
    return perturb(HF_CLASSES[head](transformers.BartConfig(**kw)), seed)


def our_model(head: str, kw: dict, seed: int = 0):
    torch.manual_seed(seed)
    return perturb(model_class("bart", head)(BartConfig(**kw)), seed)


def make_inputs(head: str, seed: int = 0) -> dict:
    """Three rows, the second right-padded; every row ends its text with one <eos>."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (3, 11), generator=gen)
    mask = torch.ones_like(ids)
    ids[:, -1] = EOS
    ids[1, 7:], mask[1, 7:], ids[1, 6] = PAD, 0, EOS
    if head == "causal_lm":
        labels = torch.randint(3, VOCAB, (3, 11), generator=gen).masked_fill(mask == 0, -100)
        return dict(input_ids=ids, attention_mask=mask, labels=labels)
    if head == "seqcls":
        return dict(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 2, 1]))
    if head == "qa":  # 30 lies outside the sequence: ignored, as in HF
        return dict(
            input_ids=ids,
            attention_mask=mask,
            start_positions=torch.tensor([1, 4, 30]),
            end_positions=torch.tensor([3, 9, 2]),
        )
    dec = torch.randint(3, VOCAB, (3, 7), generator=gen)
    dec_mask = torch.ones_like(dec)
    dec_mask[2, 5:] = 0
    return dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)


def assert_same_outputs(ours, theirs, head: str, inputs: dict) -> None:
    with torch.no_grad():
        a, b = ours(**inputs), theirs(**inputs)
    for name in FIELDS[head]:
        torch.testing.assert_close(getattr(a, name), getattr(b, name), **TOL, msg=f"{head}: {name} differs")


# ---- transformers -> factory ----------------------------------------------------------------------------
@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("head", HEADS)
def test_hf_checkpoint_loads_with_equal_outputs(tmp_path, head, size):
    hf = hf_model(head, sizes(size, head))
    hf.save_pretrained(tmp_path)
    ours, info = model_class("bart", head).from_pretrained(tmp_path, output_loading_info=True)
    assert (info["missing_keys"], info["unexpected_keys"], info["mismatched_keys"]) == ([], [], [])
    assert not ours.training
    inputs = make_inputs(head)
    assert_same_outputs(ours, hf, head, inputs)
    if head == "base":  # decoder inputs made from input_ids (shift right), no masks
        assert_same_outputs(ours, hf, head, dict(input_ids=inputs["input_ids"]))
    if head == "causal_lm":  # with cross-attention to some encoder states
        gen = torch.Generator().manual_seed(1)
        enc = torch.randn(3, 5, ours.config.d_model, generator=gen)
        enc_mask = torch.tensor([[1] * 5, [1, 1, 1, 0, 0], [1] * 5])
        cross = dict(inputs, encoder_hidden_states=enc, encoder_attention_mask=enc_mask)
        assert_same_outputs(ours, hf, head, cross)


def test_left_padded_decoder_mask_matches_on_real_tokens(tmp_path):
    # Rows that may attend to nothing (left padding under the causal mask) are padding: HF's SDPA gives
    # zeros there and ours attends everywhere; neither is read, so only real positions are compared.
    hf = hf_model("base", sizes("odd"))
    hf.save_pretrained(tmp_path)
    ours = BartModel.from_pretrained(tmp_path)
    inputs = make_inputs("base")
    inputs["decoder_attention_mask"][0, :2] = 0
    with torch.no_grad():
        a, b = ours(**inputs).last_hidden_state, hf(**inputs).last_hidden_state
    real = inputs["decoder_attention_mask"].bool()
    torch.testing.assert_close(a[real], b[real], **TOL)


def test_sequence_classification_losses_match_hf(tmp_path):
    kw = sizes("relu")
    inputs = make_inputs("seqcls")
    for extra, labels in (
        (dict(num_labels=1), torch.tensor([0.5, -1.0, 2.0])),  # regression
        (dict(problem_type="multi_label_classification"), torch.tensor([[1.0, 0, 1], [0, 0, 1], [0, 1, 0]])),
    ):
        hf = hf_model("seqcls", dict(kw, **extra))
        hf.save_pretrained(tmp_path)
        ours = model_class("bart", "seqcls").from_pretrained(tmp_path)
        assert_same_outputs(ours, hf, "seqcls", dict(inputs, labels=labels))


def test_eos_pooling_errors_as_hf(tmp_path):
    hf = hf_model("seqcls", sizes("relu"))
    hf.save_pretrained(tmp_path)
    ours = model_class("bart", "seqcls").from_pretrained(tmp_path)
    ids = make_inputs("seqcls")["input_ids"]
    uneven = ids.clone()
    uneven[0, 3] = EOS
    none = ids.masked_fill(ids == EOS, 5)
    for bad, message in ((uneven, "same number of <eos> tokens"), (none, "at least one <eos> token")):
        for model in (ours, hf):
            with pytest.raises(ValueError, match=message):
                model(input_ids=bad)


# ---- factory -> transformers ----------------------------------------------------------------------------
@pytest.mark.parametrize("size", ["odd", "wide"])
@pytest.mark.parametrize("head", HEADS)
def test_saved_model_loads_in_transformers(tmp_path, head, size):
    ours = our_model(head, sizes(size, head))
    ours.save_pretrained(tmp_path)
    theirs, info = HF_AUTO[head].from_pretrained(tmp_path, output_loading_info=True)
    assert type(theirs) is HF_CLASSES[head]
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert_same_outputs(ours, theirs.eval(), head, make_inputs(head))


def test_causal_lm_saves_decoder_keys_and_decoder_config(tmp_path):
    ours = our_model("causal_lm", sizes("odd", "causal_lm"))
    assert ours.labels_shifted_inside is False
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["is_decoder"], saved["is_encoder_decoder"]) == (True, False)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.decoder.embed_tokens.weight" in keys and "lm_head.weight" not in keys
    assert all(k.startswith("model.decoder.") for k in keys)


# ---- loading across heads ------------------------------------------------------------------------------
def test_bart_model_checkpoint_into_causal_lm(tmp_path):
    hf = hf_model("base", sizes("odd"))
    hf.save_pretrained(tmp_path)
    ours, info = BartForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == []
    assert info["unexpected_keys"] and all(k.startswith("encoder.") for k in info["unexpected_keys"])
    assert ours.config.is_decoder and not ours.config.is_encoder_decoder
    assert ours.lm_head.weight is ours.model["decoder"].embed_tokens.weight
    ids = make_inputs("causal_lm")["input_ids"]
    with torch.no_grad():
        hidden = hf.decoder(input_ids=ids).last_hidden_state
        torch.testing.assert_close(ours(ids).logits, hidden @ hf.shared.weight.T, **TOL)


def test_conditional_generation_checkpoint_into_causal_lm_and_base(tmp_path):
    hf = perturb(transformers.BartForConditionalGeneration(transformers.BartConfig(**sizes("relu"))))
    with torch.no_grad():
        hf.final_logits_bias.normal_()  # a head we do not build: ignored, not reported
    hf.save_pretrained(tmp_path)
    lm, info = BartForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == []
    assert all(k.startswith("model.encoder.") for k in info["unexpected_keys"])
    ids = make_inputs("causal_lm")["input_ids"]
    with torch.no_grad():
        hidden = hf.model.decoder(input_ids=ids).last_hidden_state
        torch.testing.assert_close(lm(ids).logits, hf.lm_head(hidden), **TOL)
    base, info = BartModel.from_pretrained(tmp_path, output_loading_info=True)
    assert (info["missing_keys"], info["unexpected_keys"]) == ([], [])
    inputs = make_inputs("base")
    with torch.no_grad():
        torch.testing.assert_close(
            base(**inputs).last_hidden_state, hf.model(**inputs).last_hidden_state, **TOL
        )


def test_bart_model_checkpoint_into_sequence_classification(tmp_path):
    hf = hf_model("base", sizes("wide"))
    hf.save_pretrained(tmp_path)
    ours, info = model_class("bart", "seqcls").from_pretrained(tmp_path, output_loading_info=True)
    assert sorted(info["missing_keys"]) == [
        f"classification_head.{m}.{p}" for m in ("dense", "out_proj") for p in ("bias", "weight")
    ]
    assert info["unexpected_keys"] == []
    assert not ours.classification_head.out_proj.weight.is_meta
    assert torch.all(ours.classification_head.dense.bias == 0)
    inputs = make_inputs("base")
    with torch.no_grad():
        torch.testing.assert_close(
            ours.model(**inputs).last_hidden_state, hf(**inputs).last_hidden_state, **TOL
        )
    assert ours(**make_inputs("seqcls")).logits.shape == (3, 3)


def test_shallower_model_reports_dropped_layers(tmp_path):
    hf = hf_model("base", sizes("odd"))  # 2 encoder layers, 3 decoder layers
    hf.save_pretrained(tmp_path)
    ours, info = BartModel.from_pretrained(tmp_path, output_loading_info=True, decoder_layers=1)
    assert (ours.config.encoder_layers, ours.config.decoder_layers) == (2, 1)
    assert info["dropped_layers"] == [1, 2] and info["missing_keys"] == []
    dropped = ("decoder.layers.1.", "decoder.layers.2.")
    assert info["unexpected_keys"] and all(k.startswith(dropped) for k in info["unexpected_keys"])


# ---- tied embeddings as different writers store them -----------------------------------------------------
def write_checkpoint(folder, hf, state: dict) -> None:
    hf.config.save_pretrained(folder)
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(folder / "model.safetensors"))


@pytest.mark.parametrize(
    "kept",
    [
        ("shared.weight",),
        ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"),
        ("decoder.embed_tokens.weight",),
    ],
    ids=["shared_only", "embed_tokens_only", "decoder_only"],
)
def test_tie_variants_load(tmp_path, kept):
    hf = hf_model("base", sizes("relu"))
    embeddings = hf.shared.weight.detach()
    state = {k: v for k, v in hf.state_dict().items() if "embed_tokens" not in k and k != "shared.weight"}
    state.update({k: embeddings for k in kept})
    write_checkpoint(tmp_path, hf, state)
    ours, info = BartModel.from_pretrained(tmp_path, output_loading_info=True)
    assert (info["missing_keys"], info["unexpected_keys"]) == ([], [])
    assert ours.encoder.embed_tokens.weight is ours.shared.weight is ours.decoder.embed_tokens.weight
    torch.testing.assert_close(ours.shared.weight, embeddings)
    lm = BartForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(lm.lm_head.weight, embeddings)


def test_unequal_tied_copies_are_an_error(tmp_path):
    hf = hf_model("base", sizes("relu"))
    state = dict(hf.state_dict())
    state["encoder.embed_tokens.weight"] = state["shared.weight"] + 1.0
    write_checkpoint(tmp_path, hf, state)
    with pytest.raises(CheckpointError) as err:
        BartModel.from_pretrained(tmp_path)
    assert "shared.weight" in str(err.value) and "encoder.embed_tokens.weight" in str(err.value)


def test_untied_embeddings_round_trip(tmp_path):
    hf = hf_model("causal_lm", dict(sizes("relu", "causal_lm"), tie_word_embeddings=False))
    assert hf.lm_head.weight is not hf.model.decoder.embed_tokens.weight
    hf.save_pretrained(tmp_path)
    ours, info = BartForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert (info["missing_keys"], info["unexpected_keys"]) == ([], [])
    assert ours.lm_head.weight is not ours.model["decoder"].embed_tokens.weight
    assert_same_outputs(ours, hf, "causal_lm", make_inputs("causal_lm"))


# ---- KV cache ------------------------------------------------------------------------------------------
def test_incremental_decoding_equals_full_forward_seq2seq():
    model = our_model("base", sizes("odd"))
    inputs = make_inputs("base")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    dec, dec_mask = inputs["decoder_input_ids"], inputs["decoder_attention_mask"]
    dec_mask[0, 0] = 0  # a padded first token in one row
    with torch.no_grad():
        full = model(ids, mask, dec, dec_mask).last_hidden_state
        out = model(ids, mask, dec[:, :3], dec_mask[:, :3], use_cache=True)
        assert len(out.past_key_values) == model.config.decoder_layers
        self_k, _, cross_k, _ = out.past_key_values[0]
        assert self_k.shape == (3, 3, 3, 10) and cross_k.shape == (3, 3, 11, 10)  # (B, nh, len, hs)
        steps, past = [out.last_hidden_state], out.past_key_values
        for t in range(3, dec.size(1)):
            out = model(
                attention_mask=mask,
                decoder_input_ids=dec[:, t : t + 1],
                decoder_attention_mask=dec_mask[:, : t + 1],
                encoder_outputs=out.encoder_last_hidden_state,
                past_key_values=past,
            )
            steps.append(out.last_hidden_state)
            past = out.past_key_values
    real = dec_mask.bool()
    torch.testing.assert_close(torch.cat(steps, dim=1)[real], full[real], **TOL)


@pytest.mark.parametrize("cross", [False, True], ids=["decoder_only", "with_encoder_states"])
def test_incremental_decoding_equals_full_forward_causal_lm(cross):
    model = our_model("causal_lm", sizes("wide", "causal_lm"))
    ids = make_inputs("causal_lm")["input_ids"]
    extra = {}
    if cross:
        gen = torch.Generator().manual_seed(3)
        extra = dict(
            encoder_hidden_states=torch.randn(3, 4, 40, generator=gen),
            encoder_attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]),
        )
    with torch.no_grad():
        full = model(ids, **extra).logits
        out = model(ids[:, :1], **extra)
        assert len(out.past_key_values[0]) == (4 if cross else 2)
        steps = [out.logits]
        for t in range(1, ids.size(1)):
            out = model(ids[:, t : t + 1], past_key_values=out.past_key_values, **extra)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **TOL)


def test_use_cache_default_follows_config_and_mode():
    model = our_model("causal_lm", sizes("relu", "causal_lm"))
    ids = make_inputs("causal_lm")["input_ids"]
    assert model(ids).past_key_values is not None  # eval
    assert model.train()(ids).past_key_values is None
    assert model.eval()(ids, use_cache=False).past_key_values is None
    seqcls = our_model("seqcls", sizes("relu"))
    assert seqcls(**make_inputs("seqcls")).past_key_values is None


def test_layerdrop_only_in_training():
    kw = dict(sizes("relu"), encoder_layerdrop=0.5, decoder_layerdrop=0.5)
    model = our_model("base", kw)
    plain = our_model("base", sizes("relu"))
    inputs = make_inputs("base")
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).last_hidden_state, plain(**inputs).last_hidden_state)
    model.train()
    assert model(**inputs).last_hidden_state.shape == (3, 7, 24)
    with pytest.raises(ValueError, match="decoder_layerdrop"):
        model(**inputs, use_cache=True)


# ---- config ------------------------------------------------------------------------------------------
def test_defaults_are_hf_defaults():
    ours, theirs = BartConfig(), transformers.BartConfig()
    for name in BartConfig.field_names():
        if hasattr(theirs, name) and name not in ("architectures", "label2id", "id2label"):
            assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.num_labels == theirs.num_labels == 3
    assert ours.id2label == theirs.id2label


def test_common_names_set_both_stacks():
    config = BartConfig.from_dict({}, num_hidden_layers=3, num_attention_heads=2, hidden_size=24)
    assert (config.encoder_layers, config.decoder_layers, config.num_hidden_layers) == (3, 3, 3)
    assert (config.encoder_attention_heads, config.decoder_attention_heads) == (2, 2)
    assert config.d_model == config.hidden_size == 24
    config.num_hidden_layers = 5
    assert (config.encoder_layers, config.decoder_layers) == (5, 5)
    config = config.replace(num_attention_heads=4, decoder_layers=1)
    assert (config.decoder_attention_heads, config.decoder_layers, config.encoder_layers) == (4, 1, 5)
    assert BartConfig.from_dict({}, num_labels=5).num_labels == 5


@pytest.mark.parametrize("first", ["num_hidden_layers", "decoder_layers"])
def test_file_fields_win_over_common_names(first):
    # Old distilbart config.json files hold "num_hidden_layers": 12 next to "decoder_layers": 6.
    values = {"num_hidden_layers": 12, "encoder_layers": 12, "decoder_layers": 6}
    values = {first: values.pop(first), **values}
    config = BartConfig.from_dict(values)
    assert (config.encoder_layers, config.decoder_layers) == (12, 6)


def test_hf_config_json_reads_back(tmp_path):
    kw = dict(sizes("odd"), dropout=0.2, init_std=0.05, num_labels=4)
    transformers.BartConfig(**kw).save_pretrained(tmp_path)
    config = BartConfig.from_pretrained(tmp_path)
    for name, value in kw.items():
        assert getattr(config, name) == value, name


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (dict(d_model=24, encoder_attention_heads=5), ["encoder_attention_heads=5", "d_model=24", "divisor"]),
        (dict(d_model=32, decoder_attention_heads=7), ["decoder_attention_heads=7", "d_model=32"]),
        (dict(dropout=1.0), ["BartConfig.dropout=1.0", "[0, 1)"]),
        (dict(decoder_layerdrop=-0.1), ["decoder_layerdrop=-0.1", "[0, 1)"]),
        (dict(activation_function="gelu2"), ["activation_function='gelu2'", "'gelu_new'"]),
        (dict(decoder_layers=0), ["decoder_layers=0", "positive integer"]),
        (dict(normalize_before=True), ["normalize_before=True", "pre-LN"]),
        (dict(static_position_embeddings=True), ["static_position_embeddings=True", "sinusoidal"]),
    ],
)
def test_validation_errors_name_field_value_and_choices(changes, expected):
    with pytest.raises(ConfigError) as err:
        BartConfig.from_dict(changes)
    for text in expected:
        assert text in str(err.value)
