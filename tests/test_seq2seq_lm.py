# pytest tests/test_seq2seq_lm.py
"""The seq2seq_lm head on BART: the model's cache and checkpoints, greedy generation against transformers'
`generate`, the head's data and metrics, and a tiny train.py + infer.py run."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from torch.testing import assert_close

from factory.data.files import DataError
from factory.heads import get_head
from factory.models.bart import BartForConditionalGeneration, BartModel
from tests.helpers import TINY_RUN, make_batch, tiny_config
from tests.test_parity import off_init

TOL = dict(atol=1e-5, rtol=1e-5)
REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"source_column": "source", "target_column": "target", "max_target_length": 64, "format": None}


@pytest.fixture(scope="module")
def model() -> BartForConditionalGeneration:
    torch.manual_seed(0)
    return off_init(BartForConditionalGeneration(tiny_config("bart")), seed=3)


def test_decoding_with_the_cache_gives_the_logits_of_decoding_without(model):
    batch = make_batch(model.config, "seq2seq_lm")
    src, mask = batch["input_ids"], batch["attention_mask"]
    target = batch["labels"].clamp(min=3)  # (B, T') decoder inputs
    with torch.no_grad():
        full = model(src, mask, decoder_input_ids=target, use_cache=False).logits
        encoder_outputs = model.model.encoder(src, mask)  # run once
        past, steps = None, []
        for i in range(target.size(1)):
            out = model(
                attention_mask=mask,
                decoder_input_ids=target[:, i : i + 1],
                encoder_outputs=encoder_outputs,
                past_key_values=past,
                use_cache=True,
            )
            past = out.past_key_values
            steps.append(out.logits)
    assert len(past[0]) == 4  # self and cross keys/values
    assert_close(torch.cat(steps, dim=1), full, **TOL)


def test_labels_are_shifted_right_inside_with_the_decoder_start_token(model):
    batch = make_batch(model.config, "seq2seq_lm")
    labels = batch["labels"]
    start = model.config.decoder_start_token_id
    decoder_inputs = torch.cat([torch.full_like(labels[:, :1], start), labels[:, :-1]], dim=1)
    decoder_inputs = decoder_inputs.masked_fill(decoder_inputs == -100, model.config.pad_token_id)
    with torch.no_grad():
        a = model(batch["input_ids"], batch["attention_mask"], labels=labels)
        b = model(batch["input_ids"], batch["attention_mask"], decoder_input_ids=decoder_inputs)
    assert_close(a.logits, b.logits, **TOL)
    expected = torch.nn.functional.cross_entropy(a.logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert_close(a.loss, expected, **TOL)


def test_a_bart_model_checkpoint_loads_with_a_zero_logits_bias(tmp_path):
    config = tiny_config("bart")
    base = off_init(BartModel(config), seed=4)
    base.save_pretrained(tmp_path)
    ours, info = BartForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not ours.final_logits_bias.is_meta and not ours.final_logits_bias.any()
    assert ours.lm_head.weight is ours.model.shared.weight
    theirs = transformers.BartForConditionalGeneration.from_pretrained(tmp_path).eval()
    batch = make_batch(config, "seq2seq_lm")
    with torch.no_grad():
        assert_close(ours(**batch).logits, theirs(**batch).logits, **TOL)


def test_the_logits_bias_of_a_file_is_loaded_and_saved(tmp_path):
    config = tiny_config("bart")
    model = BartForConditionalGeneration(config)
    model.final_logits_bias.normal_()
    model.save_pretrained(tmp_path)
    again = BartForConditionalGeneration.from_pretrained(tmp_path)
    assert_close(again.final_logits_bias, model.final_logits_bias)


# ---- greedy generation ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def both(tmp_path_factory, model):
    folder = tmp_path_factory.mktemp("s2s")
    model.save_pretrained(folder)
    theirs = transformers.BartForConditionalGeneration.from_pretrained(folder, attn_implementation="eager")
    return model, theirs.eval()


@pytest.mark.parametrize(
    "settings",
    [
        dict(max_new_tokens=12),
        dict(max_new_tokens=9, min_new_tokens=6, forced_bos_token_id=0),
        dict(max_new_tokens=7, forced_eos_token_id=5, eos_token_id=[2, 7]),
        dict(max_new_tokens=10, eos_token_id=[]),
        # This random model's favourite tokens as eos, so rows stop at different steps and then pad.
        dict(max_new_tokens=12, eos_token_id=96),
        dict(max_new_tokens=12, eos_token_id=[96, 29], min_new_tokens=3),
    ],
    ids=["plain", "min_new_and_forced_bos", "forced_eos_and_two_eos", "no_eos", "eos_stops", "min_new_eos"],
)
def test_greedy_generation_is_transformers_token_for_token(both, settings):
    from factory.generation.decode import generate_seq2seq

    ours, theirs = both
    batch = make_batch(ours.config, "seq2seq_lm", batch=4, length=9)
    src, mask = batch["input_ids"], batch["attention_mask"]
    hf_settings = dict(settings)
    if hf_settings.get("eos_token_id") == []:  # HF's spelling of "no eos to stop at"
        hf_settings["eos_token_id"] = None
    expected = theirs.generate(
        src,
        attention_mask=mask,
        num_beams=1,
        do_sample=False,
        pad_token_id=1,
        decoder_start_token_id=2,
        **{"eos_token_id": 2, **hf_settings},
    )
    got = generate_seq2seq(ours, src, mask, **settings)
    assert got.tolist() == expected.tolist()
    if settings.get("eos_token_id") == 96:  # the case is what it says: rows end early, one keeps going
        assert (got == 1).any() and got.size(1) == 13


BEAMS = {
    "beams": dict(num_beams=3),
    "eos_early_stopping_ngrams": dict(
        num_beams=4, eos_token_id="early", early_stopping=True, no_repeat_ngram_size=3, length_penalty=2.0
    ),
    "never_min_new": dict(num_beams=4, eos_token_id="early", early_stopping="never", min_new_tokens=4),
    "forced_and_two_eos": dict(
        num_beams=2,
        eos_token_id=["early", 7],
        forced_bos_token_id=0,
        forced_eos_token_id=5,
        length_penalty=0.5,
    ),
}


def _early_eos(ours, src, mask, settings):
    """`settings` with "early" as the token row 0 emits third, so that beams end at different steps."""
    from factory.generation.decode import generate_seq2seq

    early = int(generate_seq2seq(ours, src, mask, max_new_tokens=12, eos_token_id=[])[0, 3])
    eos = settings.get("eos_token_id")
    if eos is not None:
        eos = early if eos == "early" else [early if e == "early" else e for e in eos]
        settings = {**settings, "eos_token_id": eos}
    return settings


@pytest.mark.parametrize("case", list(BEAMS))
def test_beam_search_is_transformers_token_for_token(both, case):
    from factory.generation.decode import generate_seq2seq

    ours, theirs = both
    batch = make_batch(ours.config, "seq2seq_lm", batch=4, length=9)
    src, mask = batch["input_ids"], batch["attention_mask"]
    settings = _early_eos(ours, src, mask, BEAMS[case])
    common = dict(max_new_tokens=12, pad_token_id=1, decoder_start_token_id=2)
    expected = theirs.generate(
        src, attention_mask=mask, do_sample=False, **{"eos_token_id": 2, **common, **settings}
    )
    got = generate_seq2seq(ours, src, mask, **common, **settings)
    assert got.tolist() == expected.tolist()


def test_beam_sampling_matches_transformers_under_the_same_seed(both):
    from factory.generation.decode import generate_seq2seq

    ours, theirs = both
    batch = make_batch(ours.config, "seq2seq_lm", batch=4, length=9)
    src, mask = batch["input_ids"], batch["attention_mask"]
    settings = _early_eos(ours, src, mask, dict(num_beams=3, eos_token_id="early", temperature=0.8, top_k=10))
    torch.manual_seed(4)
    expected = theirs.generate(
        src,
        attention_mask=mask,
        do_sample=True,
        max_new_tokens=12,
        pad_token_id=1,
        decoder_start_token_id=2,
        **settings,
    )
    got = generate_seq2seq(ours, src, mask, do_sample=True, seed=4, max_new_tokens=12, **settings)
    assert got.tolist() == expected.tolist()


def test_summarize_with_beams_is_transformers_text(tmp_path):
    from factory.build import build_model
    from factory.inference.predictor import load_predictor, parse_args, run
    from factory.tokenizers.training import special_token_ids, train_tokenizer

    texts = ["the farmer repaired the red tractor", "a cat sat on the warm mat near the door"] * 20
    tok = train_tokenizer("bart", texts, vocab_size=300)
    arch = dict(model_type="bart", num_hidden_layers=2, hidden_size=32, num_attention_heads=2)
    _, model = build_model(arch, "seq2seq_lm", seed=0, vocab_size=len(tok), **special_token_ids(tok))
    off_init(model, seed=6).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    sources = ["the old farmer quietly repaired the tractor", "a cat sat"]
    knobs = dict(num_beams=3, no_repeat_ngram_size=2, length_penalty=1.5, early_stopping=True)
    got = load_predictor(tmp_path).summarize(sources, max_new_tokens=8, **knobs)
    theirs = transformers.BartForConditionalGeneration.from_pretrained(tmp_path).eval()
    expected = []
    for text in sources:  # one at a time: the predictor batches, HF's answer must not depend on it
        enc = tok(text, return_tensors="pt")
        out = theirs.generate(**enc, max_new_tokens=8, pad_token_id=tok.pad_token_id, **knobs)
        expected.append(tok.decode(out[0, 1:], skip_special_tokens=True).strip())
    assert got == expected
    # The same through infer.py's options, which name a bad value before loading anything.
    out = io.StringIO()
    options = parse_args(
        [
            f"model={tmp_path}",
            f"text={sources[0]}",
            "max_target_tokens=8",
            "num_beams=3",
            "no_repeat_ngram_size=2",
            "length_penalty=1.5",
            "early_stopping=true",
        ]
    )
    run(options, out)
    assert json.loads(out.getvalue()) == {"generated_text": expected[0]}
    with pytest.raises(ValueError, match=r"early_stopping='sometimes' is not valid"):
        run({**options, "early_stopping": "sometimes", "model": str(tmp_path / "absent")}, io.StringIO())


# ---- the head -------------------------------------------------------------------------------------------
def test_pairs_are_read_from_csv_with_named_columns(tmp_path):
    head = get_head("seq2seq_lm")
    (tmp_path / "t.csv").write_text('doc,summary\n"A long text, with a comma.",short\nanother text,brief\n')
    settings = {**SETTINGS, "source_column": "doc", "target_column": "summary"}
    splits = head.read(str(tmp_path / "t.csv"), str(tmp_path / "t.csv"), settings)
    assert splits.train == [
        {"source": "A long text, with a comma.", "target": "short"},
        {"source": "another text", "target": "brief"},
    ]
    with pytest.raises(DataError, match=r"t\.csv, line 1: no column 'target' \(data.target_column\)"):
        head.read(str(tmp_path / "t.csv"), str(tmp_path / "t.csv"), SETTINGS | {"source_column": "doc"})


def test_an_empty_target_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"source": "a b", "target": "a"}\n{"source": "c d", "target": " "}\n')
    with pytest.raises(DataError, match=r"t\.jsonl, line 2.*'target' is empty"):
        get_head("seq2seq_lm").read(str(path), str(path), SETTINGS)


def test_collate_pads_sources_and_targets_each_to_their_longest():
    rows = [
        {"input_ids": [0, 5, 2], "labels": [0, 7, 8, 9, 2]},
        {"input_ids": [0, 5, 6, 6, 6, 2], "labels": [0, 2]},
    ]
    batch = get_head("seq2seq_lm").collate(rows, pad_id=1)
    assert batch["input_ids"].tolist() == [[0, 5, 2, 1, 1, 1], [0, 5, 6, 6, 6, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6]
    assert batch["labels"].tolist() == [[0, 7, 8, 9, 2], [0, 2, -100, -100, -100]]


def test_rouge_is_googles_f_measure():
    from factory.heads.seq2seq_lm import rouge

    scores = rouge(
        ["the farmer repaired the tractor", "a cat"], ["the farmer repaired the tractor", "the dog ran"]
    )
    assert scores["rouge1"] == pytest.approx(0.5) and scores["rougeL"] == pytest.approx(0.5)
    assert scores["rouge2"] == pytest.approx(0.5)


def test_the_shipped_dataset_is_what_its_generator_writes(tmp_path):
    from factory.data.datasets import generate_seq2seq_lm

    generate_seq2seq_lm.generate(tmp_path)
    for name in ("train.jsonl", "validation.jsonl"):
        shipped = generate_seq2seq_lm.HERE / "seq2seq_lm" / name
        assert (tmp_path / "seq2seq_lm" / name).read_text() == shipped.read_text()


@pytest.mark.slow
def test_train_then_infer_on_the_command_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    run_dir = tmp_path / "run"
    train = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            "arch=bart",
            "head=seq2seq_lm",
            f"hydra.run.dir={run_dir}",
            *TINY_RUN,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    metrics = results["final_metrics"]
    assert results["head"] == "seq2seq_lm" and 0 <= metrics["val/rougeL"] <= 1 and metrics["val/loss"] > 0
    infer = subprocess.run(
        [
            sys.executable,
            str(REPO / "infer.py"),
            f"model={run_dir}",
            "text=Yesterday, the old farmer quietly repaired the red tractor.",
            "max_target_tokens=4",
            "num_beams=3",
            "no_repeat_ngram_size=2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert infer.returncode == 0, infer.stderr[-3000:]
    assert set(json.loads(infer.stdout)) == {"generated_text"}
