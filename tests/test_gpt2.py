# pytest tests/test_gpt2.py
"""GPT-2 against `transformers`: outputs and losses of every head, checkpoints both ways, the KV cache,
the original OpenAI-layout files, and the config."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import save_file

import factory.models.gpt2  # noqa: F401  (registers gpt2 until factory.models imports it)
from factory.checkpoints.weights import CheckpointError
from factory.config import ConfigError
from factory.models.gpt2 import GPT2Config
from factory.registry import model_class

HF_CLASSES = {
    "base": transformers.GPT2Model,
    "causal_lm": transformers.GPT2LMHeadModel,
    "seqcls": transformers.GPT2ForSequenceClassification,
    "qa": transformers.GPT2ForQuestionAnswering,
}
HF_AUTO = {
    "base": transformers.AutoModel,
    "causal_lm": transformers.AutoModelForCausalLM,
    "seqcls": transformers.AutoModelForSequenceClassification,
    "qa": transformers.AutoModelForQuestionAnswering,
}
PAD = 1
TINY = dict(vocab_size=99, n_positions=32, bos_token_id=0, eos_token_id=0, pad_token_id=PAD)
CONFIGS = {
    "odd": dict(n_embd=36, n_head=3, n_layer=2),
    "inner-relu": dict(
        n_embd=32, n_head=4, n_layer=3, n_inner=40, activation_function="relu", layer_norm_epsilon=1e-6
    ),
    "layer-scaled": dict(n_embd=24, n_head=2, n_layer=2, scale_attn_by_inverse_layer_idx=True),
    "unscaled": dict(n_embd=20, n_head=2, n_layer=2, scale_attn_weights=False, reorder_and_upcast_attn=True),
}
LENGTHS = [9, 6, 4]  # of the three sequences of a batch; the first is unpadded


def randomize(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Move every weight off its init (LayerNorm 1/0, zero biases) so that parity is a strong test."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # tied tensors appear once
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def hf_model(head: str, folder, **config):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(**{**TINY, **config, "initializer_range": 0.1})
    model = randomize(HF_CLASSES[head](cfg)).eval()
    model.save_pretrained(folder)
    return model


def batch(padding: str | None, vocab: int = 99, seed: int = 2):
    """input_ids, attention_mask, token_type_ids, causal LM labels (-100 at pads) and the 0/1 mask."""
    g = torch.Generator().manual_seed(seed)
    b, t = len(LENGTHS), max(LENGTHS)
    ids = torch.randint(2, vocab, (b, t), generator=g)
    keep = torch.ones(b, t, dtype=torch.long)
    for i, n in enumerate(LENGTHS):
        if padding == "right":
            keep[i, n:] = 0
        elif padding == "left":
            keep[i, : t - n] = 0
    ids = ids.masked_fill(keep == 0, PAD)
    types = torch.randint(0, vocab, (b, t), generator=g)
    # A label is read from the logits one position before it: after a left pad, those are not defined.
    after_pad = torch.cat([torch.ones(b, 1, dtype=torch.long), keep[:, :-1]], dim=1) == 0
    labels = ids.masked_fill((keep == 0) | after_pad, -100)
    return ids, (keep if padding else None), types, labels, keep


def outputs(head: str, model, ids, mask, types, labels):
    """The tensors a head returns, by HF field name, for the same inputs."""
    kw = dict(attention_mask=mask, token_type_ids=types)
    if head == "base":
        return {"last_hidden_state": model(ids, **kw).last_hidden_state}
    if head == "causal_lm":
        out = model(ids, labels=labels, **kw)
        return {"logits": out.logits, "loss": out.loss}
    if head == "seqcls":
        out = model(ids, labels=torch.tensor([0, 2, 1]), **kw)
        return {"logits": out.logits, "loss": out.loss}
    out = model(ids, start_positions=torch.tensor([1, 0, 3]), end_positions=torch.tensor([4, 5, 3]), **kw)
    return {"start_logits": out.start_logits, "end_logits": out.end_logits, "loss": out.loss}


# ---- parity: HF checkpoint -> our model -----------------------------------------------------------------
@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("head", list(HF_CLASSES))
def test_hf_checkpoint_gives_hf_outputs(head, config_name, tmp_path):
    extra = {"num_labels": 3} if head == "seqcls" else {}
    hf = hf_model(head, tmp_path, **CONFIGS[config_name], **extra)
    ours, info = model_class("gpt2", head).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert not ours.training
    for padding in (None, "right", "left"):
        for use_types in (False, True):
            ids, mask, types, labels, keep = batch(padding)
            types = types if use_types else None
            with torch.no_grad():
                got = outputs(head, ours, ids, mask, types, labels)
                want = outputs(head, hf, ids, mask, types, labels)
            for name in got:
                g, w = got[name], want[name]
                if padding == "left" and name != "loss" and head != "seqcls":
                    # Left-pad queries attend to nothing; HF and we fill them differently. Not read.
                    g, w = g[keep.bool()], w[keep.bool()]
                if padding == "left" and name == "loss" and head == "qa":
                    continue  # the QA softmax runs over the pad positions too
                torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5, msg=f"{name} {padding} {use_types}")


def test_layer_regex_drops_deeper_layers(tmp_path):
    hf_model("causal_lm", tmp_path, **CONFIGS["inner-relu"])
    model, info = model_class("gpt2", "causal_lm").from_pretrained(
        tmp_path, num_hidden_layers=2, output_loading_info=True
    )
    assert model.config.n_layer == 2 and len(model.transformer.h) == 2
    assert info["dropped_layers"] == [2]
    assert info["unexpected_keys"] and all(k.startswith("transformer.h.2.") for k in info["unexpected_keys"])
    assert not info["missing_keys"]


def test_seqcls_without_pad_token(tmp_path):
    """HF refuses batches without pad_token_id; we find the last token from attention_mask instead."""
    hf = hf_model("seqcls", tmp_path, **CONFIGS["odd"], num_labels=3)
    model = model_class("gpt2", "seqcls").from_pretrained(tmp_path, pad_token_id=None)
    ids, mask, *_ = batch("right")
    with torch.no_grad():
        got = model(ids, attention_mask=mask).logits
        with pytest.raises(ValueError, match="pad_token_id"):
            model(ids)
        hf.config.pad_token_id = None
        for i, n in enumerate(LENGTHS):  # HF on each sequence alone, unpadded
            want = hf(ids[i : i + 1, :n]).logits[0]
            torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(model(ids[i : i + 1, :n]).logits[0], want, atol=1e-5, rtol=1e-5)


# ---- parity: our checkpoint -> HF ---------------------------------------------------------------------
@pytest.mark.parametrize(("head", "tie"), [(h, True) for h in HF_CLASSES] + [("causal_lm", False)])
def test_our_checkpoint_loads_in_transformers(head, tie, tmp_path):
    torch.manual_seed(0)
    config = GPT2Config.from_dict(
        {},
        **TINY,
        **CONFIGS["odd"],
        tie_word_embeddings=tie,
        **({"num_labels": 3} if head == "seqcls" else {}),
    )
    ours = randomize(model_class("gpt2", head)(config)).eval()
    ours.save_pretrained(tmp_path)
    hf, info = HF_AUTO[head].from_pretrained(tmp_path, output_loading_info=True)
    assert type(hf) is HF_CLASSES[head]
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    hf.eval()
    ids, mask, types, labels, _ = batch("right")
    with torch.no_grad():
        got = outputs(head, ours, ids, mask, types, labels)
        want = outputs(head, hf, ids, mask, types, labels)
    for name in got:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-5, msg=name)
    if head == "causal_lm":
        assert (hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()) == tie


def test_round_trip_is_exact(tmp_path):
    hf = hf_model("causal_lm", tmp_path / "hf", **CONFIGS["odd"])
    ours = model_class("gpt2", "causal_lm").from_pretrained(tmp_path / "hf")
    ours.save_pretrained(tmp_path / "ours")
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours")
    want = hf.state_dict()
    for k, v in back.state_dict().items():
        assert torch.equal(v, want[k]), k


# ---- the original OpenAI layout and tied copies ---------------------------------------------------------
def original_layout(folder, fmt: str):
    """What the `gpt2` repository holds: no `transformer.` prefix, old causal-mask buffers, no lm_head."""
    hf = hf_model("causal_lm", folder, **CONFIGS["odd"])
    (folder / "model.safetensors").unlink()
    state = {k: v.clone().contiguous() for k, v in hf.transformer.state_dict().items()}
    n = hf.config.n_positions
    for i in range(hf.config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    if fmt == "safetensors":
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    else:
        torch.save(state, folder / "pytorch_model.bin")
    return hf


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_original_layout_loads_into_every_head(fmt, tmp_path):
    hf = original_layout(tmp_path, fmt)
    ids, mask, *_ = batch("right")
    for head, new in (("causal_lm", []), ("base", []), ("seqcls", ["score.weight"]), ("qa", ["qa_outputs"])):
        model, info = model_class("gpt2", head).from_pretrained(tmp_path, output_loading_info=True)
        assert info["files"] == [f"model.{fmt}" if fmt == "safetensors" else "pytorch_model.bin"]
        assert not info["unexpected_keys"], info  # attn.bias / masked_bias are ignored, c_attn.bias kept
        assert [k for k in info["missing_keys"] if not any(k.startswith(n) for n in new)] == []
        assert not any(p.is_meta for p in model.parameters())
        if head == "causal_lm":
            assert model.lm_head.weight is model.transformer.wte.weight
            with torch.no_grad():
                torch.testing.assert_close(
                    model(ids, attention_mask=mask).logits,
                    hf(ids, attention_mask=mask).logits,
                    atol=1e-5,
                    rtol=1e-5,
                )


@pytest.mark.parametrize("variant", ["only_wte", "only_lm_head", "both_equal", "both_unequal"])
def test_tied_copies_in_file(variant, tmp_path):
    hf = hf_model("causal_lm", tmp_path, **CONFIGS["odd"])
    (tmp_path / "model.safetensors").unlink()
    state = {k: v.clone().contiguous() for k, v in hf.state_dict().items()}  # both names present
    if variant == "only_wte":
        del state["lm_head.weight"]
    elif variant == "only_lm_head":
        del state["transformer.wte.weight"]
    elif variant == "both_unequal":
        state["lm_head.weight"] = state["lm_head.weight"] + 1.0
    save_file(state, tmp_path / "model.safetensors")
    cls = model_class("gpt2", "causal_lm")
    if variant == "both_unequal":
        with pytest.raises(CheckpointError, match=r"transformer\.wte\.weight.*lm_head\.weight"):
            cls.from_pretrained(tmp_path)
        # Untied, the two copies are two weights.
        model = cls.from_pretrained(tmp_path, tie_word_embeddings=False)
        assert torch.equal(model.lm_head.weight, state["lm_head.weight"])
        assert torch.equal(model.transformer.wte.weight, state["transformer.wte.weight"])
        return
    model, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.lm_head.weight is model.transformer.wte.weight
    assert torch.equal(model.lm_head.weight, hf.lm_head.weight)


def test_unprefixed_backbone_with_lm_head(tmp_path):
    """A file with an unprefixed backbone and a separate `lm_head.weight` (no wte)."""
    hf = original_layout(tmp_path, "safetensors")
    state = {k: v for k, v in hf.transformer.state_dict().items() if k != "wte.weight"}
    state["lm_head.weight"] = hf.lm_head.weight.detach().clone()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    model, info = model_class("gpt2", "causal_lm").from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(model.transformer.wte.weight, hf.transformer.wte.weight)


# ---- KV cache --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("padding", [None, "right", "left"])
def test_kv_cache_matches_full_forward(padding):
    torch.manual_seed(0)
    config = GPT2Config.from_dict({}, **TINY, **CONFIGS["odd"])
    model = randomize(model_class("gpt2", "causal_lm")(config)).eval()
    ids, mask, _, _, keep = batch(padding)
    t = ids.size(1)
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        for chunks in ([1] * t, [4, 3, 1, 1], [2, 7]):
            past, logits, start = None, [], 0
            for n in chunks:
                m = mask[:, : start + n] if mask is not None else None
                out = model(ids[:, start : start + n], attention_mask=m, past_key_values=past, use_cache=True)
                past, start = out.past_key_values, start + n
                logits.append(out.logits)
            assert len(past) == config.n_layer and past[0][0].shape == (3, 3, t, 12)  # (B, nh, T, hs)
            got = torch.cat(logits, dim=1)
            sel = keep.bool()  # pad queries are never read
            torch.testing.assert_close(got[sel], full[sel], atol=1e-5, rtol=1e-5, msg=str(chunks))


def test_use_cache_default_and_length_checks():
    config = GPT2Config.from_dict({}, **TINY, **CONFIGS["odd"])
    model = model_class("gpt2", "causal_lm")(config)
    ids = torch.randint(0, 99, (2, 5))
    assert model(ids).past_key_values is None  # training mode
    model.eval()
    out = model(ids)
    assert out.past_key_values is not None and model(ids, use_cache=False).past_key_values is None
    with pytest.raises(ValueError, match="n_positions=32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="n_positions=32"):
        model(torch.zeros(2, 28, dtype=torch.long), past_key_values=out.past_key_values)
    with pytest.raises(ValueError, match="covers the cached tokens"):
        model(ids[:, :1], attention_mask=torch.ones(2, 1), past_key_values=out.past_key_values)


def test_upcast_attention_in_bfloat16():
    config = GPT2Config.from_dict({}, **TINY, **CONFIGS["unscaled"])
    model = randomize(model_class("gpt2", "causal_lm")(config)).eval()
    ids = torch.randint(0, 99, (2, 7))
    with torch.no_grad():
        want = model(ids).logits
        got = model.to(torch.bfloat16)(ids).logits
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=0.1, rtol=0.05)


# ---- init ------------------------------------------------------------------------------------------------
def test_init_scheme():
    torch.manual_seed(0)
    config = GPT2Config.from_dict({}, vocab_size=99, n_embd=128, n_head=4, n_layer=8, n_positions=32)
    model = model_class("gpt2", "causal_lm")(config)
    block = model.transformer.h[3]
    scaled = 0.02 / (2 * 8) ** 0.5
    for w, std in ((block.attn.c_proj.weight, scaled), (block.mlp.c_proj.weight, scaled)):
        assert abs(w.std().item() - std) < 0.1 * std
    for w in (block.attn.c_attn.weight, block.mlp.c_fc.weight, model.transformer.wpe.weight):
        assert abs(w.std().item() - 0.02) < 0.002
    assert torch.all(block.attn.c_attn.bias == 0) and torch.all(block.mlp.c_proj.bias == 0)
    assert torch.all(block.ln_1.weight == 1) and torch.all(block.ln_1.bias == 0)
    assert model.lm_head.weight is model.transformer.wte.weight


# ---- config ----------------------------------------------------------------------------------------------
def test_config_defaults_match_hf():
    ours, theirs = GPT2Config(), transformers.GPT2Config()
    for name in GPT2Config.field_names():
        if hasattr(theirs, name) and name not in ("architectures", "id2label", "label2id", "is_decoder"):
            assert getattr(ours, name) == getattr(theirs, name), name


def test_config_common_names():
    config = GPT2Config.from_dict({}, num_hidden_layers=3, hidden_size=48, num_attention_heads=4)
    assert (config.n_layer, config.n_embd, config.n_head) == (3, 48, 4)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (3, 48, 4)
    assert config.max_position_embeddings == config.n_positions == 1024
    config.num_hidden_layers = 5
    config.max_position_embeddings = 64
    assert (config.n_layer, config.n_positions) == (5, 64)
    assert config.replace(hidden_size=24).n_embd == 24
    assert "num_hidden_layers" not in config.to_dict()  # config.json keeps HF's own names


@pytest.mark.parametrize(
    ("values", "words"),
    [
        (dict(n_embd=36, n_head=5), ["n_head=5", "n_embd=36", "divisor"]),
        (dict(resid_pdrop=1.5), ["resid_pdrop=1.5", "[0, 1)"]),
        (dict(activation_function="gelu_neww"), ["activation_function='gelu_neww'", "gelu_new"]),
        (dict(add_cross_attention=True), ["add_cross_attention=True", "False", "not implemented"]),
        (dict(n_layer=0), ["n_layer=0", "positive"]),
        (dict(n_inner=-4), ["n_inner=-4", "positive"]),
    ],
)
def test_config_validation_errors(values, words):
    with pytest.raises(ConfigError) as e:
        GPT2Config.from_dict({}, **values)
    for w in words:
        assert w in str(e.value)


def test_config_unknown_override_is_an_error():
    with pytest.raises(ConfigError, match="n_layr.*n_layer"):
        GPT2Config.from_dict({}, n_layr=3)


def test_hf_config_round_trip(tmp_path):
    transformers.GPT2Config(
        **TINY, n_layer=3, summary_type="mean", summary_first_dropout=0.3
    ).save_pretrained(tmp_path / "hf")
    config = GPT2Config.from_pretrained(tmp_path / "hf")
    assert config.n_layer == 3 and config.extra["summary_type"] == "mean"
    config.save_pretrained(tmp_path / "ours")
    written = json.loads((tmp_path / "ours" / "config.json").read_text())
    original = json.loads((tmp_path / "hf" / "config.json").read_text())
    for key, value in original.items():
        assert written[key] == value, key
    back = transformers.GPT2Config.from_pretrained(tmp_path / "ours")
    assert back.n_layer == 3 and back.summary_type == "mean" and back.summary_first_dropout == 0.3
