# Run: python -m pytest tests/test_generation.py   (offline, CPU, a few seconds)
"""factory.generation.decode against transformers' generate: greedy parity, KV cache, eos stop, sampling."""

from __future__ import annotations

import re

import pytest
import torch

import factory.models.bart  # noqa: F401  (explicit until every architecture is wired into factory.models)
import factory.models.gpt2  # noqa: F401
from factory.auto import AutoModelForCausalLM
from factory.generation.decode import generate, process_logits

transformers = pytest.importorskip("transformers")

# initializer_range well above HF's 0.02 so that a random tiny model's greedy output is not one token
# repeated, which would hide position and cache bugs.
_SPECIAL = dict(vocab_size=99, bos_token_id=0, eos_token_id=2, pad_token_id=1)


def _hf_configs():
    return {
        "gpt2": (
            transformers.GPT2LMHeadModel,
            transformers.GPT2Config(
                n_positions=64, n_embd=32, n_layer=2, n_head=2, n_inner=37, initializer_range=0.5, **_SPECIAL
            ),
        ),
        "bert": (
            transformers.BertLMHeadModel,
            transformers.BertConfig(
                max_position_embeddings=64,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=37,
                is_decoder=True,
                initializer_range=0.5,
                **_SPECIAL,
            ),
        ),
        "bart": (
            transformers.BartForCausalLM,
            transformers.BartConfig(
                max_position_embeddings=64,
                d_model=32,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=2,
                decoder_attention_heads=2,
                encoder_ffn_dim=37,
                decoder_ffn_dim=37,
                init_std=0.5,
                **_SPECIAL,
            ),
        ),
    }


def _llama_like(config_cls, model_cls):
    config = config_cls(
        max_position_embeddings=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=37,
        initializer_range=0.5,
        **_SPECIAL,
    )
    return model_cls, config


@pytest.fixture(scope="module", params=["gpt2", "bert", "bart", "llama", "qwen2"])
def pair(request, tmp_path_factory):
    """(transformers model, our model loaded from what transformers saved), same weights."""
    configs = {
        **_hf_configs(),
        "llama": _llama_like(transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": _llama_like(transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }
    cls, config = configs[request.param]
    torch.manual_seed(0)
    hf = cls(config).eval()
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    ours = AutoModelForCausalLM.from_pretrained(folder)
    assert type(ours).__name__ == cls.__name__
    return hf, ours


PROMPT = torch.tensor([[5, 6, 7, 8, 9, 10]])
# Left-padded batch: rows of 6, 3 and 5 real tokens.
BATCH = torch.tensor([[5, 6, 7, 8, 9, 10], [1, 1, 1, 20, 21, 22], [1, 30, 31, 32, 33, 34]])
BATCH_MASK = (BATCH != 1).long()


def _hf_generate(hf, ids, mask=None, **kwargs):
    kwargs.setdefault("pad_token_id", 1)
    with torch.no_grad():
        return hf.generate(
            input_ids=ids, attention_mask=mask if mask is not None else torch.ones_like(ids), **kwargs
        )


@pytest.mark.slow
@pytest.mark.parametrize("batched", [False, True], ids=["single", "left_padded_batch"])
def test_greedy_matches_transformers(pair, batched):
    hf, ours = pair
    ids, mask = (BATCH, BATCH_MASK) if batched else (PROMPT, None)
    expected = _hf_generate(hf, ids, mask, max_new_tokens=16, do_sample=False, eos_token_id=[])
    got = generate(ours, ids, mask, max_new_tokens=16, eos_token_id=[], pad_token_id=1)
    assert len(set(got[0, ids.size(1) :].tolist())) > 1, "degenerate output would hide bugs"
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.slow
def test_eos_stops_each_row_like_transformers(pair):
    hf, ours = pair
    free = generate(ours, BATCH, BATCH_MASK, max_new_tokens=12, eos_token_id=[], pad_token_id=1)
    # An eos that row 0 produces early: that row stops, the others go on until they produce it too.
    eos = int(free[0, BATCH.size(1) + 2])
    expected = _hf_generate(hf, BATCH, BATCH_MASK, max_new_tokens=12, do_sample=False, eos_token_id=eos)
    got = generate(ours, BATCH, BATCH_MASK, max_new_tokens=12, eos_token_id=eos, pad_token_id=1)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    row = got[0, BATCH.size(1) :].tolist()
    stop = row.index(eos)
    assert stop <= 2
    assert all(t == 1 for t in row[stop + 1 :]), "a finished row emits the pad token"


def test_stops_early_when_every_row_is_done(pair):
    _, ours = pair
    free = generate(ours, PROMPT, max_new_tokens=8, eos_token_id=[])
    eos = int(free[0, PROMPT.size(1)])  # the first new token
    got = generate(ours, PROMPT, max_new_tokens=8, eos_token_id=eos)
    assert got.shape == (1, PROMPT.size(1) + 1)


def test_kv_cache_feeds_one_token_per_step(pair):
    _, ours = pair
    calls = []

    def record(module, args, kwargs):
        ids = args[0] if args else kwargs["input_ids"]
        calls.append((ids.size(1), kwargs.get("past_key_values") is not None, kwargs.get("use_cache")))

    handle = ours.register_forward_pre_hook(record, with_kwargs=True)
    try:
        generate(ours, BATCH, BATCH_MASK, max_new_tokens=5, eos_token_id=[])
    finally:
        handle.remove()
    assert calls[0] == (BATCH.size(1), False, True), "one prefill over the whole prompt"
    assert calls[1:] == [(1, True, True)] * 4, "then one token per step with the cache"


def test_logits_to_keep_gives_the_last_positions_as_transformers(pair):
    hf, ours = pair
    with torch.no_grad():
        full = ours(BATCH, attention_mask=BATCH_MASK).logits
        last = ours(BATCH, attention_mask=BATCH_MASK, logits_to_keep=2).logits
        theirs = hf(BATCH, attention_mask=BATCH_MASK, logits_to_keep=2).logits
    assert last.shape == (BATCH.size(0), 2, full.size(-1))
    torch.testing.assert_close(last, full[:, -2:])
    torch.testing.assert_close(last, theirs, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"logits_to_keep=1 with labels: .*pass logits_to_keep=0"):
        ours(BATCH, attention_mask=BATCH_MASK, labels=BATCH, logits_to_keep=1)


@pytest.mark.slow
def test_sampling_matches_transformers_under_the_same_seed(pair):
    # transformers draws with torch.multinomial from the global generator; ours from a local one seeded
    # the same way, so the same filters give the same tokens.
    hf, ours = pair
    knobs = dict(temperature=0.7, top_k=20, top_p=0.9)
    torch.manual_seed(3)
    expected = _hf_generate(
        hf, BATCH, BATCH_MASK, max_new_tokens=10, do_sample=True, eos_token_id=[], **knobs
    )
    got = generate(
        ours, BATCH, BATCH_MASK, max_new_tokens=10, do_sample=True, eos_token_id=[], seed=3, **knobs
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(pair):
    _, ours = pair
    state = torch.get_rng_state()

    def run(seed):
        return generate(
            ours, BATCH, BATCH_MASK, max_new_tokens=10, do_sample=True, seed=seed, eos_token_id=[]
        )

    first = run(1)
    assert torch.equal(first, run(1))
    assert not torch.equal(first, run(2))
    assert torch.equal(state, torch.get_rng_state())


def test_top_k_1_is_greedy(pair):
    _, ours = pair
    greedy = generate(ours, BATCH, BATCH_MASK, max_new_tokens=10, eos_token_id=[])
    sampled = generate(
        ours, BATCH, BATCH_MASK, max_new_tokens=10, do_sample=True, top_k=1, seed=5, eos_token_id=[]
    )
    assert torch.equal(greedy, sampled)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    cls, config = _hf_configs()["gpt2"]
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gpt2_alone")
    cls(config).save_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder)


def test_forced_eos_is_the_last_token_when_the_config_asks(gpt2):
    # BART's config carries forced_eos_token_id=2, which HF's generate applies (the parity tests above
    # cover it); here the rule itself, on GPT-2, whose config has no such field by default.
    gpt2.config.forced_eos_token_id = 7
    try:
        got = generate(gpt2, PROMPT, max_new_tokens=4, eos_token_id=[])
    finally:
        del gpt2.config.forced_eos_token_id
    assert got[0, -1].item() == 7 and got.size(1) == PROMPT.size(1) + 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(do_sample=True, temperature=0.0), "temperature=0 with do_sample=True"),
        (dict(do_sample=True, temperature=-1.0), "temperature=-1.0"),
        (dict(do_sample=True, temperature=float("nan")), "temperature=nan"),
        (dict(do_sample=True, top_p=0.0), "top_p=0.0"),
        (dict(do_sample=True, top_p=1.5), "top_p=1.5"),
        (dict(do_sample=True, top_k=-2), "top_k=-2"),
        (dict(max_new_tokens=0), "max_new_tokens=0"),
        (dict(max_new_tokens=60), "max_position_embeddings=64"),
        (dict(num_beams=0), "num_beams=0"),
        (dict(num_beams=2, length_penalty=float("inf")), "length_penalty=inf"),
        (dict(num_beams=2, early_stopping="sometimes"), "early_stopping='sometimes'"),
        (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size=-1"),
        (dict(min_new_tokens=-2), "min_new_tokens=-2"),
    ],
)
def test_bad_arguments_are_named(gpt2, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        generate(gpt2, PROMPT, **kwargs)


def test_process_logits_follows_transformers_warpers():
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    scores = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 3
    for temperature, top_k, top_p in [(0.7, None, None), (1.0, 5, None), (1.0, None, 0.8), (1.3, 10, 0.5)]:
        expected = TemperatureLogitsWarper(temperature)(None, scores.clone())
        if top_k:
            expected = TopKLogitsWarper(top_k)(None, expected)
        if top_p:
            expected = TopPLogitsWarper(top_p)(None, expected)
        torch.testing.assert_close(process_logits(scores, temperature, top_k, top_p), expected)


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = lambda p: torch.isfinite(process_logits(logits, top_p=p))[0].tolist()  # noqa: E731
    assert kept(0.75) == [True, True, False, False]  # 0.5 alone is not enough; 0.5 + 0.3 is
    assert kept(0.4) == [True, False, False, False]
    assert kept(1e-6) == [True, False, False, False]  # always at least one token
    assert kept(1.0) == [True, True, True, True]


# ---- beam search and n-gram blocking ---------------------------------------------------------------------
BEAM_CASES = {
    "plain": dict(num_beams=3, eos_token_id=[]),
    "eos": dict(num_beams=4, eos_token_id="early"),
    "early_stopping": dict(num_beams=4, eos_token_id="early", early_stopping=True),
    "never_long": dict(num_beams=4, eos_token_id="early", early_stopping="never", length_penalty=2.0),
    "two_eos_short_ngrams": dict(
        num_beams=5, eos_token_id=["early", "late"], length_penalty=-0.5, no_repeat_ngram_size=2
    ),
    "min_new_unigrams": dict(num_beams=3, eos_token_id="early", min_new_tokens=5, no_repeat_ngram_size=1),
    "greedy_ngrams": dict(num_beams=1, no_repeat_ngram_size=2, eos_token_id=[]),
}


def _with_eos(ours, settings):
    """`settings` with "early"/"late" replaced by tokens this model emits early in rows 0 and 1, so that
    beams end at different steps (the case under test) rather than all at max_new_tokens."""
    free = generate(ours, BATCH, BATCH_MASK, max_new_tokens=12, eos_token_id=[], pad_token_id=1)
    token = {"early": int(free[0, BATCH.size(1) + 2]), "late": int(free[1, BATCH.size(1) + 3])}
    eos = settings["eos_token_id"]
    eos = token.get(eos, eos) if isinstance(eos, str) else [token[e] for e in eos]
    return {**settings, "eos_token_id": eos}


@pytest.mark.parametrize("case", list(BEAM_CASES))
def test_beam_search_is_transformers_token_for_token(pair, case):
    hf, ours = pair
    settings = _with_eos(ours, BEAM_CASES[case])
    hf_settings = {**settings, "eos_token_id": settings["eos_token_id"] or None}
    expected = _hf_generate(hf, BATCH, BATCH_MASK, max_new_tokens=12, do_sample=False, **hf_settings)
    got = generate(ours, BATCH, BATCH_MASK, max_new_tokens=12, pad_token_id=1, **settings)
    assert got.tolist() == expected.tolist()


@pytest.mark.slow
def test_beam_sampling_matches_transformers_under_the_same_seed(pair):
    hf, ours = pair
    settings = _with_eos(ours, dict(num_beams=3, eos_token_id="early", temperature=0.8, top_k=10, top_p=0.9))
    torch.manual_seed(4)
    expected = _hf_generate(hf, BATCH, BATCH_MASK, max_new_tokens=12, do_sample=True, **settings)
    got = generate(
        ours, BATCH, BATCH_MASK, max_new_tokens=12, do_sample=True, seed=4, pad_token_id=1, **settings
    )
    assert got.tolist() == expected.tolist()


def test_beams_find_a_sequence_at_least_as_likely_as_greedy(gpt2):
    # Beam search with length_penalty=0 and early_stopping="never" is exhaustive enough to never lose to
    # greedy: the best beam's total log-probability is at least greedy's.
    def log_prob(ids):
        with torch.no_grad():
            logits = gpt2(ids).logits[:, PROMPT.size(1) - 1 : -1].log_softmax(-1)
        return logits.gather(-1, ids[:, PROMPT.size(1) :, None]).sum().item()

    greedy = generate(gpt2, PROMPT, max_new_tokens=8, eos_token_id=[])
    beam = generate(
        gpt2,
        PROMPT,
        max_new_tokens=8,
        eos_token_id=[],
        num_beams=6,
        length_penalty=0.0,
        early_stopping="never",
    )
    assert log_prob(beam) >= log_prob(greedy) - 1e-4
    assert beam.shape == greedy.shape


def test_ngram_blocking_is_transformers_processor():
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

    from factory.generation.decode import ban_repeated_ngrams

    torch.manual_seed(0)
    ids = torch.randint(0, 5, (6, 15))  # a small vocabulary, so n-grams repeat
    scores = torch.randn(6, 7)
    for size in (1, 2, 3, 16):
        expected = NoRepeatNGramLogitsProcessor(size)(ids, scores.clone())
        got = ban_repeated_ngrams(ids, scores.clone(), size)
        assert torch.equal(torch.isinf(got), torch.isinf(expected)), size
        assert torch.isinf(got).any() or size == 16, "the case must ban something"


def test_vocabulary_rows_project_as_the_model_and_follow_its_weight():
    """Decoding on a CPU reads the vocabulary projection from an (in, out) copy: the same logits, the
    class's own forward again afterwards, and a new copy once the weight changes."""
    from factory.generation.decode import vocabulary_rows

    lm_head = torch.nn.Linear(16, 200)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), lm_head)  # only the projection is swapped
    x = torch.randn(2, 3, 16)
    want = model(x)
    with torch.no_grad(), vocabulary_rows(model):
        assert "forward" in vars(lm_head) and "forward" not in vars(model[0])
        torch.testing.assert_close(model(x), want)
    assert "forward" not in vars(lm_head)
    with torch.no_grad():
        lm_head.weight.mul_(2.0)  # in place: the kept copy is stale
        want = model(x)
        with vocabulary_rows(model):
            torch.testing.assert_close(model(x), want)


# ---- model.generate(...) as transformers users write it ---------------------------------------------------
def _seq2seq_pair(name: str, tmp_path_factory):
    from factory.auto import AutoModelForSeq2SeqLM

    dims = dict(vocab_size=99, pad_token_id=1, eos_token_id=2, decoder_start_token_id=0)
    if name == "bart":
        config = transformers.BartConfig(
            max_position_embeddings=64,
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=37,
            decoder_ffn_dim=37,
            init_std=0.5,
            bos_token_id=0,
            forced_eos_token_id=2,
            **dims,
        )
        cls = transformers.BartForConditionalGeneration
    else:
        config = transformers.T5Config(
            d_model=32, d_kv=16, d_ff=37, num_layers=2, num_heads=2, initializer_factor=5.0, **dims
        )
        cls = transformers.T5ForConditionalGeneration
    torch.manual_seed(0)
    hf = cls(config).eval()
    folder = tmp_path_factory.mktemp(name)
    hf.save_pretrained(folder)
    return hf, AutoModelForSeq2SeqLM.from_pretrained(folder)


GENERATE_ARGS = [
    {"max_new_tokens": 8},
    {"max_new_tokens": 8, "num_beams": 3},
    {"max_new_tokens": 6, "num_beams": 2, "length_penalty": 0.5, "no_repeat_ngram_size": 2},
    {"max_length": 12},
    {},  # transformers' default length
]


@pytest.mark.parametrize(
    "kwargs", GENERATE_ARGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "default"
)
def test_model_generate_gives_transformers_tokens_for_causal_lms(pair, kwargs):
    hf, ours = pair
    assert type(ours).can_generate()
    for ids, mask in ((PROMPT, None), (BATCH, BATCH_MASK)):
        want = hf.generate(ids, attention_mask=mask, **kwargs)
        assert torch.equal(ours.generate(ids, attention_mask=mask, **kwargs), want), kwargs
        assert torch.equal(ours.generate(inputs=ids, attention_mask=mask, **kwargs), want)


@pytest.mark.parametrize("name", ["bart", "t5"])
def test_model_generate_gives_transformers_tokens_for_encoder_decoders(name, tmp_path_factory):
    hf, ours = _seq2seq_pair(name, tmp_path_factory)
    source = torch.tensor([[5, 6, 7, 8, 9, 2], [20, 21, 22, 2, 1, 1]])
    mask = (source != 1).long()
    for kwargs in GENERATE_ARGS:
        want = hf.generate(source, attention_mask=mask, **kwargs)
        assert torch.equal(ours.generate(source, attention_mask=mask, **kwargs), want), kwargs


def test_generate_is_refused_by_models_that_do_not_generate():
    from factory.auto import AutoConfig, AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_config(AutoConfig.for_model("bert", **_TINY_BERT))
    assert not type(model).can_generate()
    with pytest.raises(AttributeError, match=r"BertForSequenceClassification does not generate text"):
        model.generate(PROMPT)


_TINY_BERT = dict(
    num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=37, vocab_size=99
)
