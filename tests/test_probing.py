# pytest tests/test_probing.py   (fast tier: pytest tests/test_probing.py -m "not slow")
"""`output_hidden_states` / `output_attentions` against transformers, for every registered (arch, head).

Tiny models with unusual shapes (more heads, grouped-query attention, BART's uneven stacks, GPT-2's
per-layer scaling), every weight moved off its init, a padded batch, and the real loader and saver both
ways. Every hidden-state and attention tuple transformers fills must agree with ours, shape for shape.
"""

from __future__ import annotations

import inspect

import pytest
import torch
import transformers
from torch.testing import assert_close

from factory import registered_models
from factory.models.modeling import PROBE_FIELDS
from tests.helpers import make_batch, tiny_config
from tests.test_parity import ATTN, hf_class, hf_config, off_init

TOL = dict(atol=1e-5, rtol=1e-5)
# Shapes the plain tiny config does not exercise: more heads than the default, a third layer, grouped
# keys and values, stacks of different depth and width, per-layer attention scaling.
UNUSUAL = {
    "bert": dict(num_hidden_layers=3, num_attention_heads=4),
    "roberta": dict(num_hidden_layers=3, num_attention_heads=4),
    "distilbert": dict(num_hidden_layers=3, num_attention_heads=4),
    "gpt2": dict(num_hidden_layers=3, num_attention_heads=4, scale_attn_by_inverse_layer_idx=True),
    "bart": dict(encoder_layers=2, decoder_layers=3, encoder_attention_heads=4, decoder_attention_heads=2),
    "llama": dict(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2),
    "qwen2": dict(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1),
}
MODELS = registered_models()
BASES = [m for m in MODELS if m[1] == "base"]
ids = lambda v: getattr(v, "__name__", v)  # noqa: E731


def unusual_config(model_type: str, **overrides):
    return tiny_config(model_type, **{**UNUSUAL.get(model_type, {}), **overrides})


def filled(out) -> dict[str, tuple[torch.Tensor, ...]]:
    """The probe fields an output holds. transformers 5 returns an empty tuple for the cross-attentions
    of a model without any (its recorder found no layer); that is the same as not having them."""
    return {k: v for k in PROBE_FIELDS if (v := getattr(out, k, None)) is not None and len(v)}


def their_probes(theirs, batch: dict) -> dict:
    # No cache on their side: transformers' BartForCausalLM sizes it by the encoder's depth.
    nocache = {"use_cache": False} if "use_cache" in inspect.signature(theirs.forward).parameters else {}
    with torch.no_grad():
        return filled(theirs(**batch, **nocache, output_attentions=True, output_hidden_states=True))


def assert_same_probes(ours, theirs: dict, batch: dict, **ours_kwargs) -> dict:
    """Our probe fields equal `theirs`; `ours_kwargs` are the flags given to ours (none: its config)."""
    with torch.no_grad():
        a = filled(ours(**batch, **ours_kwargs))
    assert set(a) == set(theirs), (sorted(a), sorted(theirs))
    for name in a:
        assert len(a[name]) == len(theirs[name]), (name, len(a[name]), len(theirs[name]))
        for i, (x, y) in enumerate(zip(a[name], theirs[name])):
            assert_close(x, y, **TOL, msg=lambda m, name=name, i=i: f"{name}[{i}]: {m}")
    return a


def expected_lengths(config, probes: dict) -> None:
    """One hidden state per layer plus the embeddings'; one attention per layer."""
    for name, value in probes.items():
        stack = "decoder" if name.startswith(("decoder_", "cross_")) else "encoder"
        n = getattr(config, f"{stack}_layers", None) or config.num_hidden_layers
        if config.model_type == "bart" and name in ("hidden_states", "attentions"):  # BartForCausalLM
            n = config.decoder_layers
        assert len(value) == n + name.endswith("hidden_states"), (name, len(value), n)


def _from_transformers(tmp_path, model_type, cls):
    config = unusual_config(model_type)
    torch.manual_seed(0)
    theirs = off_init(hf_class(cls)(hf_config(config)), seed=1)
    theirs.save_pretrained(tmp_path)
    return config, theirs


ARGS = dict(output_attentions=True, output_hidden_states=True)


@pytest.mark.parametrize("model_type, head, cls", BASES, ids=ids)
def test_base_models_match_transformers_via_arguments_and_config(tmp_path, model_type, head, cls):
    config, theirs = _from_transformers(tmp_path, model_type, cls)
    batch = make_batch(config, head)
    expected = their_probes(theirs, batch)
    probes = assert_same_probes(cls.from_pretrained(tmp_path), expected, batch, **ARGS)
    expected_lengths(config, probes)
    # `from_pretrained(..., output_attentions=True)` asks every forward; an argument still overrides.
    ours = cls.from_pretrained(tmp_path, **ARGS)
    assert_same_probes(ours, expected, batch)
    with torch.no_grad():
        assert not filled(ours(**batch, output_attentions=False, output_hidden_states=False))


@pytest.mark.parametrize("model_type, head, cls", [m for m in BASES if m[0] in ("gpt2", "llama")], ids=ids)
def test_left_padding_real_tokens_match_transformers(tmp_path, model_type, head, cls):
    """Generation pads on the left. Rows of real tokens agree; a padding position that may attend to
    nothing under the causal mask is read by nobody, and its row differs (uniform in HF's eager path)."""
    config, theirs = _from_transformers(tmp_path, model_type, cls)
    ours = cls.from_pretrained(tmp_path)
    batch = make_batch(config, head, padded=False)
    batch["attention_mask"][1, :3] = 0
    real = batch["attention_mask"].bool()  # (B, T)
    with torch.no_grad():
        a, b = ours(**batch, **ARGS), theirs(**batch, **ARGS)
    for x, y in zip(a.attentions, b.attentions, strict=True):  # (B, nh, T, T): compare real query rows
        assert_close(x.transpose(1, 2)[real], y.transpose(1, 2)[real], **TOL)
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        assert_close(x[real], y[real], **TOL)


@pytest.mark.slow
@pytest.mark.parametrize("model_type, head, cls", [m for m in MODELS if m[1] != "base"], ids=ids)
def test_every_head_matches_transformers_via_arguments(tmp_path, model_type, head, cls):
    config, theirs = _from_transformers(tmp_path, model_type, cls)
    batch = make_batch(config, head)
    ours = cls.from_pretrained(tmp_path)
    probes = assert_same_probes(ours, their_probes(theirs, batch), batch, **ARGS)
    expected_lengths(ours.config, probes)


@pytest.mark.slow
@pytest.mark.parametrize("model_type, head, cls", BASES, ids=ids)
def test_what_we_save_gives_the_same_attentions_in_transformers(tmp_path, model_type, head, cls):
    config = unusual_config(model_type, output_attentions=True, output_hidden_states=True)
    torch.manual_seed(0)
    ours = off_init(cls(config), seed=2)
    ours.save_pretrained(tmp_path)
    theirs = (
        hf_class(cls)
        .from_pretrained(
            tmp_path, attn_implementation=ATTN, output_attentions=True, output_hidden_states=True
        )
        .eval()
    )
    assert theirs.config.output_attentions and theirs.config.output_hidden_states
    batch = make_batch(config, head)
    assert_same_probes(ours, their_probes(theirs, batch), batch)


@pytest.mark.parametrize("model_type, head, cls", BASES, ids=ids)
def test_default_path_returns_none_and_keeps_sdpa(monkeypatch, model_type, head, cls):
    """Not asked, nothing is collected and every attention goes through SDPA; asked, none does."""
    torch.manual_seed(0)
    model = cls(unusual_config(model_type)).eval()
    batch = make_batch(model.config, head)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    with torch.no_grad():
        out = model(**batch)
        assert not filled(out) and calls
        calls.clear()
        model(**batch, output_attentions=True)
    assert not calls


CACHED = [m for m in MODELS if m[1] == "causal_lm" and m[0] in ("gpt2", "llama", "qwen2", "bart", "bert")]


@pytest.mark.parametrize("model_type, head, cls", CACHED, ids=ids)
def test_cached_decode_step_gives_the_last_row(model_type, head, cls):
    """A step with the cache returns (B, nh, 1, past + 1) attentions equal to the full pass's last row."""
    overrides = {"is_decoder": True} if model_type == "bert" else {}
    torch.manual_seed(0)
    model = off_init(cls(unusual_config(model_type, **overrides)), seed=3)
    batch = make_batch(model.config, "base", padded=False)
    ids_, mask = batch["input_ids"], batch["attention_mask"]
    flags = dict(output_attentions=True, output_hidden_states=True)
    with torch.no_grad():
        full = model(ids_, attention_mask=mask, use_cache=False, **flags)
        prompt = model(ids_[:, :-1], attention_mask=mask[:, :-1], use_cache=True)
        step = model(
            ids_[:, -1:], attention_mask=mask, past_key_values=prompt.past_key_values, use_cache=True, **flags
        )
    assert len(step.attentions) == len(full.attentions)
    for a_step, a_full in zip(step.attentions, full.attentions):
        assert a_step.shape == (*a_full.shape[:2], 1, a_full.size(-1))
        assert_close(a_step, a_full[:, :, -1:], **TOL)
    for h_step, h_full in zip(step.hidden_states, full.hidden_states):
        assert_close(h_step, h_full[:, -1:], **TOL)


def test_multiple_choice_flattens_choices():
    """As transformers: one row per (example, choice), (B * C, ...)."""
    from factory.models.bert import BertForMultipleChoice

    model = BertForMultipleChoice(unusual_config("bert")).eval()
    batch = make_batch(model.config, "multiple_choice")
    with torch.no_grad():
        out = model(**batch, output_attentions=True, output_hidden_states=True)
    b, c, t = batch["input_ids"].shape
    assert out.hidden_states[0].shape == (b * c, t, model.config.hidden_size)
    assert out.attentions[0].shape == (b * c, model.config.num_attention_heads, t, t)


def test_transformers_still_has_the_fields():
    """The field names we fill are transformers' own (a rename there would silently skip comparisons)."""
    seq2seq = transformers.modeling_outputs.Seq2SeqModelOutput.__dataclass_fields__
    assert set(PROBE_FIELDS) - {"hidden_states", "attentions"} <= set(seq2seq)
