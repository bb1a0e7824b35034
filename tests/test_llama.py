# python -m pytest tests/test_llama.py -m "not slow"
"""Llama (and its Qwen2 variant) against `transformers`: every head both ways on unusual configs (grouped
query attention, untied embeddings, odd widths, llama3 and linear RoPE scaling, biases, a head_dim of its
own), v4 and v5 RoPE keys, the KV cache, generation, config errors, and runs of train.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

import factory
from factory.config import ConfigError
from factory.generation.decode import generate
from factory.models.llama import LlamaConfig, inverse_frequencies
from factory.registry import model_class
from factory.training.run import train
from tests.helpers import TINY_RUN

transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parent.parent
PAD = 1
SPECIAL = dict(vocab_size=99, max_position_embeddings=64, bos_token_id=0, eos_token_id=2, pad_token_id=PAD)
LLAMA3 = dict(
    rope_type="llama3",
    rope_theta=500000.0,
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    # Small, so that the frequencies of small heads fall in the three bands (kept, blended, slowed).
    original_max_position_embeddings=32,
)
CONFIGS = {
    # 8 query heads reading 2 key/value heads, untied output layer, an odd MLP width.
    "gqa-untied": dict(
        hidden_size=64,
        num_attention_heads=8,
        num_key_value_heads=2,
        intermediate_size=45,
        tie_word_embeddings=False,
    ),
    "llama3-tied": dict(
        hidden_size=32,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=37,
        tie_word_embeddings=True,
        rope_parameters=LLAMA3,
    ),
    # head_dim 16 with 4 heads of a 48-wide model: the attention is 64 wide inside.
    "bias-head_dim-linear": dict(
        hidden_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=29,
        attention_bias=True,
        mlp_bias=True,
        rms_norm_eps=1e-5,
        rope_parameters=dict(rope_type="linear", rope_theta=1000.0, factor=2.0),
    ),
}
HF_CLASSES = {
    "base": "LlamaModel",
    "causal_lm": "LlamaForCausalLM",
    "seqcls": "LlamaForSequenceClassification",
    "qa": "LlamaForQuestionAnswering",
    "token_cls": "LlamaForTokenClassification",
}
LENGTHS = [9, 6, 4]


def randomize(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Move every weight off its init (RMSNorm at 1, zero biases, the zero pad row)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def hf_config(model_type: str = "llama", **values) -> transformers.PretrainedConfig:
    values = {**SPECIAL, "num_hidden_layers": 2, "initializer_range": 0.1, **values}
    cfg = transformers.AutoConfig.for_model(model_type, **values)
    cfg._attn_implementation = "eager"
    return cfg


def hf_model(head: str, folder=None, model_type: str = "llama", **values):
    torch.manual_seed(0)
    name = HF_CLASSES[head].replace("Llama", "Qwen2" if model_type == "qwen2" else "Llama")
    model = randomize(getattr(transformers, name)(hf_config(model_type, **values)))
    if folder is not None:
        model.save_pretrained(folder)
    return model


def batch(padding: str | None, seed: int = 2):
    """input_ids, attention_mask, causal LM labels (-100 at pads) and the 0/1 mask of real tokens."""
    g = torch.Generator().manual_seed(seed)
    b, t = len(LENGTHS), max(LENGTHS)
    ids = torch.randint(3, 99, (b, t), generator=g)
    keep = torch.ones(b, t, dtype=torch.long)
    for i, n in enumerate(LENGTHS):
        if padding == "right":
            keep[i, n:] = 0
        elif padding == "left":
            keep[i, : t - n] = 0
    ids = ids.masked_fill(keep == 0, PAD)
    after_pad = torch.cat([torch.ones(b, 1, dtype=torch.long), keep[:, :-1]], dim=1) == 0
    labels = ids.masked_fill((keep == 0) | after_pad, -100)
    return ids, (keep if padding else None), labels, keep


def outputs(head: str, model, ids, mask, labels) -> dict[str, torch.Tensor]:
    if head == "base":
        return {"last_hidden_state": model(ids, attention_mask=mask).last_hidden_state}
    if head in ("causal_lm", "token_cls"):
        labels = labels if head == "causal_lm" else labels.clamp(max=2)  # token labels below num_labels=3
        out = model(ids, attention_mask=mask, labels=labels)
        return {"logits": out.logits, "loss": out.loss}
    if head == "seqcls":
        out = model(ids, attention_mask=mask, labels=torch.tensor([0, 2, 1]))
        return {"logits": out.logits, "loss": out.loss}
    out = model(
        ids,
        attention_mask=mask,
        start_positions=torch.tensor([1, 0, 3]),
        end_positions=torch.tensor([4, 5, 3]),
    )
    return {"start_logits": out.start_logits, "end_logits": out.end_logits, "loss": out.loss}


def assert_same(head: str, ours, theirs) -> None:
    for padding in (None, "right", "left"):
        ids, mask, labels, keep = batch(padding)
        with torch.no_grad():
            got, want = outputs(head, ours, ids, mask, labels), outputs(head, theirs, ids, mask, labels)
        for name in got:
            g, w = got[name], want[name]
            if padding == "left" and name != "loss" and head != "seqcls":
                # Left-pad queries attend to nothing; HF and we fill them differently. Never read.
                g, w = g[keep.bool()], w[keep.bool()]
            if padding == "left" and name == "loss" and head in ("qa", "token_cls"):
                continue  # these losses read the pad positions too
            assert_close(g, w, atol=2e-5, rtol=1e-5, msg=lambda m, n=name, p=padding: f"{n} {p}: {m}")


# ---- parity, both ways ---------------------------------------------------------------------------------
@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("head", list(HF_CLASSES))
def test_transformers_checkpoint_gives_transformers_outputs(head, config_name, tmp_path):
    extra = {"num_labels": 3} if head in ("seqcls", "token_cls") else {}
    theirs = hf_model(head, tmp_path, **CONFIGS[config_name], **extra)
    ours, info = model_class("llama", head).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert_same(head, ours, theirs)


# transformers' from_pretrained takes seconds a call: the causal LM in the fast tier, the rest slow (the
# registry-driven tests/test_parity.py loads every head into transformers in the fast tier).
SAVED_CASES = [
    pytest.param(head, name, marks=() if head == "causal_lm" else pytest.mark.slow)
    for head in HF_CLASSES
    for name in CONFIGS
]


@pytest.mark.parametrize(("head", "config_name"), SAVED_CASES)
def test_what_we_save_loads_in_transformers(head, config_name, tmp_path):
    config = LlamaConfig.from_dict({**SPECIAL, "num_hidden_layers": 2, **CONFIGS[config_name]})
    if head in ("seqcls", "token_cls"):
        config.num_labels = 3
    torch.manual_seed(0)
    ours = randomize(model_class("llama", head)(config), seed=3)
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "rope_theta" not in saved and saved["rope_parameters"]["rope_type"] in (
        "default",
        "llama3",
        "linear",
    )
    theirs, info = getattr(transformers, HF_CLASSES[head]).from_pretrained(
        tmp_path, attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["mismatched_keys"] and not info["unexpected_keys"], info
    assert_same(head, ours, theirs.eval())


def test_qwen2_is_llama_with_qkv_biases(tmp_path):
    theirs = hf_model("causal_lm", tmp_path, model_type="qwen2", **CONFIGS["gqa-untied"], rope_theta=1e6)
    ours = factory.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(ours).__name__ == "Qwen2ForCausalLM" and ours.config.rope_parameters["rope_theta"] == 1e6
    attn = ours.model.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.v_proj.bias is not None and attn.o_proj.bias is None
    assert_same("causal_lm", ours, theirs)
    with pytest.raises(ConfigError, match=r"use_sliding_window=True is not valid.*not implemented"):
        factory.AutoConfig.for_model("qwen2", use_sliding_window=True)


def test_qwen2_tokenizer_for_init_random_reads_the_same_in_transformers(tmp_path):
    from factory.data.files import default_data_files
    from factory.tokenizers.training import train_tokenizer

    texts = open(default_data_files("causal_lm")[0], encoding="utf-8").read().splitlines()
    train_tokenizer("qwen2", texts, 600).save_pretrained(tmp_path)
    ours, theirs = (
        factory.AutoTokenizer.from_pretrained(tmp_path),
        transformers.AutoTokenizer.from_pretrained(tmp_path),
    )
    assert type(theirs).__name__ == "Qwen2Tokenizer" and ours.pad_token == ours.eos_token == "<|endoftext|>"
    for text in ("year 1990 and 123456", "naïve café 🤖", "Hello\n\nworld  !"):
        assert ours(text)["input_ids"] == theirs(text)["input_ids"], text


def test_a_causal_lm_checkpoint_loads_into_qa_and_back(tmp_path):
    """HF keeps LlamaForQuestionAnswering's backbone under `transformer.`, the others under `model.`."""
    hf_model("causal_lm", tmp_path / "lm", **CONFIGS["gqa-untied"])
    qa, info = model_class("llama", "qa").from_pretrained(tmp_path / "lm", output_loading_info=True)
    assert info["missing_keys"] == ["qa_outputs.weight", "qa_outputs.bias"]
    qa.save_pretrained(tmp_path / "qa")
    base = model_class("llama", "base").from_pretrained(tmp_path / "qa")
    assert_close(base.layers[1].mlp.up_proj.weight, qa.transformer.layers[1].mlp.up_proj.weight)


# ---- RoPE ------------------------------------------------------------------------------------------------
def test_rope_frequencies_equal_transformers():
    linear = dict(rope_type="linear", rope_theta=1000.0, factor=2.0)
    for rope in (None, LLAMA3, dict(LLAMA3, rope_theta=1e4), linear):
        values = dict(hidden_size=64, num_attention_heads=4, rope_parameters=rope)
        hf = hf_config(**values)
        kind = hf.rope_parameters["rope_type"]
        init = transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS.get(kind)
        if init is None:
            want = (
                transformers.models.llama.modeling_llama.LlamaRotaryEmbedding.compute_default_rope_parameters(
                    hf
                )
            )
        else:
            want = init(hf, None)
        ours = inverse_frequencies(LlamaConfig.from_dict({**SPECIAL, **values}))
        assert_close(ours, want[0], atol=0, rtol=0)
    # The three bands of llama3 scaling are all present in that config: kept, blended and slowed by 8.
    square = {**SPECIAL, "hidden_size": 64, "num_attention_heads": 4}
    default = inverse_frequencies(LlamaConfig.from_dict(square))
    scaled = inverse_frequencies(
        LlamaConfig.from_dict({**square, "rope_parameters": dict(LLAMA3, rope_theta=1e4)})
    )
    factors = (default / scaled).tolist()
    assert factors[0] == pytest.approx(1.0) and factors[-1] == pytest.approx(8.0)
    assert any(1.0 < f < 8.0 for f in factors)


def test_v4_rope_keys_read_as_transformers_reads_them(tmp_path):
    """Files of transformers v4 carry rope_theta and rope_scaling (with `type`) at the top level."""
    theirs = hf_model("causal_lm", tmp_path, **CONFIGS["llama3-tied"])
    values = json.loads((tmp_path / "config.json").read_text())
    params = values.pop("rope_parameters")
    values["rope_theta"] = params.pop("rope_theta")
    params["type"] = params.pop("rope_type")
    values["rope_scaling"] = params
    (tmp_path / "config.json").write_text(json.dumps(values))
    ours = factory.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert ours.config.rope_parameters == {**LLAMA3}
    assert_same("causal_lm", ours, theirs)
    # A rope_theta typed over a v5 file wins over the file's.
    assert (
        LlamaConfig.from_dict({"rope_parameters": LLAMA3}, rope_theta=1e4).rope_parameters["rope_theta"]
        == 1e4
    )


@pytest.mark.parametrize(
    ("values", "pattern"),
    [
        (dict(num_attention_heads=8, num_key_value_heads=3), r"num_key_value_heads=3 .*divisor of num_attention_heads=8"),
        (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0}), r"rope_type one of \['default', 'linear', 'llama3'\]"),
        (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), r"rope_scaling=.*missing \['low_freq_factor', 'high_freq_factor'\]"),
        (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "beta": 1}), r"rope_parameters=.*not read: \['beta'\]"),
        (dict(hidden_size=36, num_attention_heads=4), r"head_dim=9 .*even"),
        (dict(hidden_act="swiglu"), r"hidden_act='swiglu' .*one of"),
        (dict(num_key_value_heads=0), r"num_key_value_heads=0 .*positive integer"),
    ],
)  # fmt: skip
def test_bad_configs_name_key_value_and_choices(values, pattern):
    with pytest.raises(ConfigError, match=pattern):
        LlamaConfig.from_dict({**SPECIAL, "hidden_size": 64, "num_attention_heads": 8, **values})


# ---- cache and generation ------------------------------------------------------------------------------------
PROMPT = torch.tensor([[5, 6, 7, 8, 9, 10], [1, 1, 1, 20, 21, 22], [1, 30, 31, 32, 33, 34]])  # left-padded
PROMPT_MASK = (PROMPT != PAD).long()


@pytest.fixture(scope="module")
def lm_pair(tmp_path_factory):
    """(transformers, ours) with the same weights: GQA and llama3 RoPE, a wide init so that greedy output is
    not one token repeated."""
    folder = tmp_path_factory.mktemp("llama_lm")
    values = dict(CONFIGS["gqa-untied"], rope_parameters=LLAMA3, initializer_range=0.5)
    theirs = hf_model("causal_lm", folder, **values)
    return theirs, factory.AutoModelForCausalLM.from_pretrained(folder)


def test_kv_cache_equals_no_cache(lm_pair):
    theirs, ours = lm_pair
    ids = torch.cat([PROMPT, torch.tensor([[40, 41, 42]] * 3)], dim=1)
    mask = torch.cat([PROMPT_MASK, torch.ones(3, 3, dtype=torch.long)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = ours(ids, attention_mask=mask, position_ids=positions).logits
        out = ours(PROMPT, attention_mask=PROMPT_MASK, position_ids=positions[:, :6], use_cache=True)
        past, steps = out.past_key_values, []
        assert len(past) == 2 and past[0][0].shape == (3, 2, 6, 8)  # (B, nkv, T, hd): batch first
        for i in range(6, 9):
            step = ours(ids[:, i : i + 1], attention_mask=mask[:, : i + 1], position_ids=positions[:, i : i + 1],
                        past_key_values=past, use_cache=True)  # fmt: skip
            past = step.past_key_values
            steps.append(step.logits[:, -1])
        want = theirs(ids, attention_mask=mask, position_ids=positions).logits
    keep = mask.bool()
    assert_close(full[keep], want[keep], atol=2e-5, rtol=1e-5)
    # Logits of this wide init reach ~13; one cached step differs from the full pass by ~2e-5, as
    # transformers' own cache does from its full pass, and three steps add up.
    assert_close(torch.stack(steps, 1), full[:, 6:], atol=2e-4, rtol=1e-5)


def test_greedy_generation_equals_transformers_on_a_left_padded_batch(lm_pair):
    theirs, ours = lm_pair
    with torch.no_grad():
        want = theirs.generate(
            input_ids=PROMPT, attention_mask=PROMPT_MASK, max_new_tokens=12, do_sample=False, pad_token_id=PAD,
            eos_token_id=[],
        )  # fmt: skip
    got = generate(ours, PROMPT, PROMPT_MASK, max_new_tokens=12, eos_token_id=[], pad_token_id=PAD)
    assert len(set(got[0, 6:].tolist())) > 2, "degenerate output would hide position and cache bugs"
    assert torch.equal(got, want)


def test_sampling_equals_transformers_under_a_seed_and_repeats(lm_pair):
    theirs, ours = lm_pair
    knobs = dict(temperature=0.8, top_k=30, top_p=0.9)
    torch.manual_seed(7)
    with torch.no_grad():
        want = theirs.generate(
            input_ids=PROMPT, attention_mask=PROMPT_MASK, max_new_tokens=10, do_sample=True, pad_token_id=PAD,
            eos_token_id=[], **knobs,
        )  # fmt: skip
    run = lambda seed: generate(  # noqa: E731
        ours, PROMPT, PROMPT_MASK, max_new_tokens=10, do_sample=True, seed=seed, eos_token_id=[], **knobs
    )
    got = run(7)
    assert torch.equal(got, want) and torch.equal(got, run(7)) and not torch.equal(got, run(8))


@pytest.mark.parametrize(
    "beams",
    [
        dict(num_beams=3),
        dict(num_beams=4, early_stopping=True, no_repeat_ngram_size=2, length_penalty=0.6),
        dict(num_beams=2, early_stopping="never", length_penalty=1.5, min_new_tokens=4),
    ],
    ids=["plain", "early_ngrams", "never_min_new"],
)
def test_beam_search_equals_transformers_on_a_left_padded_batch(lm_pair, beams):
    theirs, ours = lm_pair
    # A token the first row emits early ends its beams, so hypotheses finish at different steps.
    free = generate(ours, PROMPT, PROMPT_MASK, max_new_tokens=12, eos_token_id=[], pad_token_id=PAD)
    eos = int(free[0, PROMPT.size(1) + 2])
    with torch.no_grad():
        want = theirs.generate(
            input_ids=PROMPT, attention_mask=PROMPT_MASK, max_new_tokens=12, do_sample=False, pad_token_id=PAD,
            eos_token_id=eos, **beams,
        )  # fmt: skip
    got = generate(ours, PROMPT, PROMPT_MASK, max_new_tokens=12, eos_token_id=eos, pad_token_id=PAD, **beams)
    assert got.tolist() == want.tolist()


# ---- train.py ----------------------------------------------------------------------------------------------
def tiny_overrides(head: str, *more: str) -> list[str]:
    lengths = {"qa": ["data.max_length=128", "data.stride=32"]}.get(head, ["data.max_length=32"])
    return [
        "arch=llama",
        f"head={head}",
        *TINY_RUN,
        "arch.num_attention_heads=4",
        "arch.num_key_value_heads=2",
        *lengths,
        *more,
    ]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def test_train_causal_lm_smoke(tmp_path):
    """init=random: a byte-fallback tokenizer trained on the shipped text, padding with eos."""
    value = train(
        compose(tiny_overrides("causal_lm", "trainer.max_steps=2", "trainer.val_check_interval=2")),
        run_dir=tmp_path,
    )
    assert value == value  # a number, not NaN  # noqa: PLR0124
    model_dir = tmp_path / "model"
    config = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert config["model_type"] == "llama" and config["num_key_value_heads"] == 2
    assert tok["tokenizer_class"] == "LlamaTokenizer" and tok["pad_token"] is None
    assert config["pad_token_id"] == config["eos_token_id"] == 2 and config["bos_token_id"] == 1
    theirs = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ours = factory.AutoModelForCausalLM.from_pretrained(model_dir)
    hf_tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    hf_tok.pad_token = hf_tok.eos_token  # transformers refuses to pad without one; we fall back to eos
    enc = factory.AutoTokenizer.from_pretrained(model_dir)(
        ["the movie was", "a"], padding=True, return_tensors="pt"
    )
    assert enc["input_ids"].tolist() == hf_tok(["the movie was", "a"], padding=True)["input_ids"]
    with torch.no_grad():
        keep = enc["attention_mask"].bool()
        assert_close(ours(**enc).logits[keep], theirs(**enc).logits[keep], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["seqcls", "token_cls", "qa", "causal_lm"])
def test_train_py_runs_every_head(head, tmp_path):
    cmd = [sys.executable, "train.py", *tiny_overrides(head), f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["global_step"] == 3 and results["best_value"] == results["best_value"]  # noqa: PLR0124
    hf_name = HF_CLASSES[head]
    theirs = getattr(transformers, hf_name).from_pretrained(tmp_path / "model")
    assert type(theirs).__name__ == hf_name


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    """A tiny Llama saved by transformers, with a tokenizer transformers saved: a user's local checkpoint."""
    from factory.data.files import default_data_files
    from factory.tokenizers.training import train_tokenizer

    folder = tmp_path_factory.mktemp("hf_llama")
    texts = open(default_data_files("causal_lm")[0], encoding="utf-8").read().splitlines()
    train_tokenizer("llama", texts, 400).save_pretrained(folder / "tok")
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder / "tok")
    values = dict(CONFIGS["gqa-untied"], num_hidden_layers=4, vocab_size=len(hf_tok), pad_token_id=None)
    hf_model("causal_lm", folder, **values)
    hf_tok.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_init_pretrained_from_a_transformers_folder_picks_layers(hf_folder, tmp_path):
    overrides = [
        "arch=llama",  # the checkpoint's own family: llama's keys (rms_norm_eps) can be set
        "head=seqcls",
        *[o for o in TINY_RUN if not o.startswith("arch.")],
        "data.max_length=32",
        "init=pretrained",
        f"init.name_or_path={hf_folder}",
        "init.layers=even",
        "arch.num_hidden_layers=2",
        "arch.rms_norm_eps=1e-5",
        "optim.lr=1e-12",
    ]
    train(compose(overrides), run_dir=tmp_path, overrides=overrides)
    report = json.loads((tmp_path / "load_report.json").read_text())
    kept = report["kept_layers"]["model.layers"]
    assert len(kept) == 2 and report["newly_initialised"] == ["score.weight"]
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["rms_norm_eps"] == 1e-5
    start = factory.AutoModelForCausalLM.from_pretrained(hf_folder)
    trained = factory.AutoModelForSequenceClassification.from_pretrained(tmp_path / "model")
    for new, old in enumerate(kept):
        assert_close(trained.model.layers[new].self_attn.k_proj.weight, start.model.layers[old].self_attn.k_proj.weight,
                     atol=1e-6, rtol=0)  # fmt: skip
    assert (tmp_path / "model" / "tokenizer.json").is_file()
