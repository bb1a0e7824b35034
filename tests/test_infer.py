# Run: python -m pytest tests/test_infer.py   (offline, CPU, under a minute)
"""factory.inference.predictor and infer.py on tiny random model folders of every arch and head."""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import factory.generation.decode
import factory.inference.predictor
import factory.models.bart  # noqa: F401  (explicit until every architecture is wired into factory.models)
import factory.models.gpt2  # noqa: F401
from factory.build import build_model
from factory.generation.options import sampling_mode
from factory.heads import heads
from factory.inference.predictor import (
    COMMON_OPTIONS,
    INFER_OPTIONS,
    InferenceError,
    load_predictor,
    parse_args,
    run,
)
from factory.tokenizers.training import special_token_ids, train_tokenizer

REPO = Path(__file__).resolve().parents[1]
ARCHS = ("bert", "gpt2", "bart")
HEADS = ("seqcls", "qa", "causal_lm", "base")
LABELS = {0: "negative", 1: "positive", 2: "neutral"}
TEXTS = [
    "a great movie with a good story",
    "the film was bad and boring",
    "once upon a time there was a king",
    "the king lived in a castle near the sea",
    "what a wonderful day it was for a walk",
] * 20
QUESTION, CONTEXT = "where did the king live?", "Once upon a time the king lived in a castle near the sea."


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """`{(arch, head): folder}`: random tiny models saved with their trained tokenizers (nothing trained)."""
    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for arch in ARCHS:
        tok = train_tokenizer(arch, TEXTS, vocab_size=120 if arch == "bert" else 300)
        for head in HEADS:
            extra = dict(vocab_size=len(tok), **special_token_ids(tok))
            if head == "seqcls":
                extra["id2label"] = LABELS
            if head == "causal_lm":
                extra["is_decoder"] = True  # as the training pipeline sets it (BERT needs it to be causal)
            arch_cfg = dict(
                model_type=arch,
                num_hidden_layers=2,
                hidden_size=32,
                num_attention_heads=2,
                max_position_embeddings=128,
            )
            _, model = build_model(arch_cfg, head, seed=0, **extra)
            folder = root / f"{arch}_{head}"
            model.save_pretrained(folder)
            tok.save_pretrained(folder)
            dirs[arch, head] = folder
    return dirs


@pytest.fixture(scope="module")
def predictors(model_dirs):
    return {key: load_predictor(folder) for key, folder in model_dirs.items()}


# ---- loading ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("head", HEADS)
def test_head_comes_from_config_architectures(predictors, model_dirs, arch, head):
    p = predictors[arch, head]
    assert p.head == head
    saved = json.loads((model_dirs[arch, head] / "config.json").read_text())
    assert type(p.model).__name__ == saved["architectures"][0]
    assert not p.model.training


def test_run_dir_uses_its_model_folder(model_dirs, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    model = run_dir / "model"
    model.mkdir()
    for f in model_dirs["bert", "seqcls"].iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    assert load_predictor(run_dir).path == str(model)


def test_missing_or_empty_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope"))):
        load_predictor(tmp_path / "nope")
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"neither model/config\.json .* it holds: \['checkpoints'\]"):
        load_predictor(tmp_path / "empty")


# ---- heads ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_classify_gives_labels_and_probabilities(predictors, arch):
    p = predictors[arch, "seqcls"]
    texts = ["a great movie", "the film was bad and boring, so boring", "king"]
    results = p.classify(texts)
    assert [set(r) for r in results] == [{"label", "score"}] * 3
    for text, r in zip(texts, results):
        # Each row alone gives the same answer as in a padded batch, and the score is the softmax maximum.
        enc = p.tokenizer([text], return_tensors="pt")
        inputs = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.no_grad():
            probs = p.model(**inputs).logits.softmax(-1)[0]
        assert r["label"] == LABELS[int(probs.argmax())]
        assert r["score"] == pytest.approx(float(probs.max()), abs=1e-5)
    pairs = p.classify(["a great movie"], ["the film was bad"])
    assert pairs[0]["label"] in LABELS.values()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("max_length", [None, 24], ids=["one_window", "many_windows"])
def test_answer_spans_index_the_context(predictors, arch, max_length):
    p = predictors[arch, "qa"]
    long_context = " ".join([CONTEXT] * 4)
    results = p.answer([QUESTION, QUESTION], [CONTEXT, long_context], max_length=max_length, stride=4)
    for context, r in zip([CONTEXT, long_context], results):
        assert set(r) == {"answer", "score", "start", "end"}
        assert 0 <= r["start"] <= r["end"] <= len(context)
        assert context[r["start"] : r["end"]] == r["answer"]
        assert r["answer"] and math.isfinite(r["score"])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_generate_continues_each_prompt(predictors, arch):
    p = predictors[arch, "causal_lm"]
    prompts = ["once upon a time", "the king", "what a wonderful day it was for"]
    batch = p.generate(prompts, max_new_tokens=6)
    assert all(text.startswith(prompt) for text, prompt in zip(batch, prompts))
    # Left padding in the batch changes nothing: each prompt alone gives the same greedy text.
    assert batch == [p.generate([prompt], max_new_tokens=6)[0] for prompt in prompts]
    sampled = p.generate(prompts, max_new_tokens=6, temperature=0.9, top_p=0.95, seed=0)
    assert sampled == p.generate(prompts, max_new_tokens=6, temperature=0.9, top_p=0.95, seed=0)
    assert p.generate(prompts, max_new_tokens=6, temperature=0.0) == batch
    assert p.generate(prompts, max_new_tokens=6, do_sample=True, top_k=1, seed=3) == batch
    assert isinstance(p.generate([""], max_new_tokens=2)[0], str)  # starts from the document separator


def test_generated_text_matches_transformers_pipeline_of_the_same_folder(model_dirs, predictors):
    transformers = pytest.importorskip("transformers")
    folder = model_dirs["gpt2", "causal_lm"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    prompt = "once upon a time"
    ids = tok(prompt, return_tensors="pt")
    out = hf.generate(**ids, max_new_tokens=12, do_sample=False)
    assert predictors["gpt2", "causal_lm"].generate([prompt], max_new_tokens=12) == [
        tok.decode(out[0], skip_special_tokens=True)
    ]
    beams = dict(num_beams=4, no_repeat_ngram_size=2, length_penalty=0.7, early_stopping="never")
    out = hf.generate(**ids, max_new_tokens=12, do_sample=False, **beams)
    assert predictors["gpt2", "causal_lm"].generate([prompt], max_new_tokens=12, **beams) == [
        tok.decode(out[0], skip_special_tokens=True)
    ]
    buf = io.StringIO()
    args = [
        f"model={folder}",
        f"prompt={prompt}",
        "max_new_tokens=12",
        "num_beams=4",
        "no_repeat_ngram_size=2",
    ]
    run(parse_args([*args, "length_penalty=0.7", "early_stopping=never"]), buf)
    assert json.loads(buf.getvalue())["generated_text"] == tok.decode(out[0], skip_special_tokens=True)


@pytest.mark.parametrize("arch, eos", [("gpt2", "<|endoftext|>"), ("bart", "</s>"), ("bert", "[SEP]")])
def test_generation_stops_at_the_document_separator_of_training(predictors, monkeypatch, arch, eos):
    # Training joins documents with eos, or [SEP] for BERT (no eos): that token ends a generation.
    p = predictors[arch, "causal_lm"]
    seen = {}
    real = factory.generation.decode.generate

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(factory.generation.decode, "generate", spy)
    p.generate(["the king"], max_new_tokens=2)
    assert seen["eos_token_id"] == p.tokenizer.convert_tokens_to_ids(eos)


def test_generation_past_the_position_limit_is_a_clear_error(predictors):
    with pytest.raises(ValueError, match=r"max_position_embeddings=128; use max_new_tokens <= \d+"):
        predictors["gpt2", "causal_lm"].generate(["the king"], max_new_tokens=200)


@pytest.mark.slow
def test_embed_matches_sentence_transformers_pooling(minilm_path):
    transformers = pytest.importorskip("transformers")
    p = load_predictor(minilm_path)
    assert p.head == "base"
    texts = ["a great movie", "the film was bad and boring"]
    got = torch.tensor(p.embed(texts))
    tok = transformers.AutoTokenizer.from_pretrained(minilm_path)
    hf = transformers.AutoModel.from_pretrained(minilm_path).eval()
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = hf(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(got, (hidden * mask).sum(1) / mask.sum(1), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_predict_dispatches_on_the_head(predictors):
    assert set(predictors["bert", "seqcls"].predict({"text": "a great movie"})) == {"label", "score"}
    qa = predictors["bart", "qa"].predict({"question": QUESTION, "context": CONTEXT, "id": "x"})
    assert set(qa) == {"answer", "score", "start", "end"}
    gen = predictors["gpt2", "causal_lm"].predict({"prompt": "the king"}, max_new_tokens=3)
    assert gen["generated_text"].startswith("the king")
    assert len(predictors["bert", "base"].predict({"text": "king"})["embedding"]) == 32


def test_wrong_record_or_method_names_what_the_head_reads(predictors):
    with pytest.raises(
        InferenceError, match=r"no string 'prompt'.*GPT2LMHeadModel \(causal_lm head\).*\['text'\]"
    ):
        predictors["gpt2", "causal_lm"].predict({"text": "the king"})
    with pytest.raises(InferenceError, match=r"classify\(\) needs a seqcls model.*use answer\(\)"):
        predictors["bert", "qa"].classify(["a great movie"])


# ---- the command line, in process -------------------------------------------------------------------


def test_parse_args_types_values_like_hydra():
    opts = parse_args(
        ["model=/m", "prompt=Once upon", "max_new_tokens=40", "temperature=0.8", "top_p=0.9", "+seed=3"]
        + ["do_sample=true", "top_k=null", "text='quoted 1'"]
    )
    assert opts == dict(
        model="/m",
        prompt="Once upon",
        max_new_tokens=40,
        temperature=0.8,
        top_p=0.9,
        seed=3,
        do_sample=True,
        top_k=None,
        text="quoted 1",
    )
    assert parse_args(["text=123"])["text"] == "123"  # text keys stay strings


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["max_new_token=5"],
            r"Unknown key 'max_new_token'. Did you mean 'max_new_tokens'.* Valid keys: \['model'",
        ),
        (["temprature=1"], r"Did you mean 'temperature'"),
        (["max_new_tokens=lots"], r"max_new_tokens='lots' is not valid: expected an integer"),
        (["top_p=nan"], r"top_p='nan' is not valid: expected a finite number"),
        (["do_sample=maybe"], r"do_sample='maybe' is not valid: expected true or false"),
        (["text"], r"Argument 'text' is not key=value"),
        (["seed=1", "seed=2"], r"Key 'seed' is given twice"),
    ],
)
def test_parse_args_errors(argv, message):
    with pytest.raises(InferenceError, match=message):
        parse_args(argv)


def test_infer_yaml_documents_exactly_the_options():
    yaml = pytest.importorskip("yaml")
    documented = yaml.safe_load((REPO / "conf" / "infer.yaml").read_text())
    assert documented == {k: o.default for k, o in COMMON_OPTIONS.items()}
    assert list(documented) == list(COMMON_OPTIONS)
    # Every other key is a head's (its record keys and options), declared in the head's own file.
    for key in set(INFER_OPTIONS) - set(COMMON_OPTIONS):
        assert any(key in (*h.inputs, *h.optional_inputs, *h.options) for h in heads().values()), key


@pytest.mark.parametrize(
    "do_sample, temperature, top_k, top_p, expected",
    [
        (None, None, None, None, (False, 1.0)),  # a bare prompt is greedy
        (None, 0.0, None, None, (False, 1.0)),
        (None, 0.0, 5, 0.9, (False, 1.0)),  # temperature 0 wins: greedy
        (None, 0.8, None, None, (True, 0.8)),
        (None, None, None, 0.9, (True, 1.0)),
        (None, None, 10, None, (True, 1.0)),
        (False, 0.8, None, 0.9, (False, 1.0)),
        (True, None, None, None, (True, 1.0)),
    ],
)
def test_sampling_rule(do_sample, temperature, top_k, top_p, expected):
    assert sampling_mode(do_sample, temperature, top_k, top_p) == expected


def test_run_reads_and_writes_jsonl(model_dirs, tmp_path):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [{"question": QUESTION, "context": CONTEXT}, {"question": "who?", "context": "the king was old"}]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    n = run(
        dict(model=str(model_dirs["bert", "qa"]), input=str(src), output=str(dst), batch_size=1),
        io.StringIO(),
    )
    out = [json.loads(line) for line in dst.read_text().splitlines()]
    assert n == 2 and len(out) == 2
    assert all(r["context"][o["start"] : o["end"]] == o["answer"] for r, o in zip(rows, out))


def test_output_lines_carry_the_record_id_and_echo_the_input(model_dirs, tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [{"id": 7, "text": "a great movie"}, {"text": "bad"}, {"id": "x-3", "text": "the king"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for echo in (False, True):
        out = io.StringIO()
        run(dict(model=str(model_dirs["bert", "seqcls"]), input=str(src), echo=echo), out)
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [line.get("id") for line in lines] == [7, None, "x-3"]
        assert all({"label", "score"} <= set(line) for line in lines)
        if echo:
            assert [line["input"] for line in lines] == [{"text": r["text"]} for r in rows]
        else:
            assert all("input" not in line for line in lines)


@pytest.mark.parametrize(
    "lines, message",
    [
        (['{"question": "q", "context": "c"}', "{not json"], r"in\.jsonl:2: not valid JSON"),
        (
            ['{"question": "q", "context": "c"}', '{"text": "t"}'],
            r"in\.jsonl:2: no string 'question' / 'context'",
        ),
        (["[1, 2]"], r"in\.jsonl:1: expected a JSON object, got list"),
    ],
)
def test_bad_records_name_file_and_line(model_dirs, tmp_path, lines, message):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(InferenceError, match=message):
        run(dict(model=str(model_dirs["bert", "qa"]), input=str(src)), io.StringIO())


def test_bad_record_leaves_the_previous_output_intact(model_dirs, tmp_path):
    # The output is written beside the target and renamed at the end: a failure half-way changes nothing.
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps({"text": "a great movie"}) + "\n{not json\n")
    dst.write_text("previous predictions\n")
    with pytest.raises(InferenceError, match=r"in\.jsonl:2: not valid JSON"):
        run(dict(model=str(model_dirs["bert", "seqcls"]), input=str(src), output=str(dst)), io.StringIO())
    assert dst.read_text() == "previous predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]  # no temporary left


@pytest.mark.parametrize("spelling", ["same", "symlink", "dotdot"])
def test_output_that_is_the_input_is_refused(model_dirs, tmp_path, spelling):
    src = tmp_path / "in.jsonl"
    text = json.dumps({"text": "a great movie"}) + "\n"
    src.write_text(text)
    (tmp_path / "sub").mkdir()
    dst = {"same": src, "symlink": tmp_path / "link.jsonl", "dotdot": tmp_path / "sub" / ".." / "in.jsonl"}
    if spelling == "symlink":
        dst["symlink"].symlink_to(src)
    options = dict(model=str(model_dirs["bert", "seqcls"]), input=str(src), output=str(dst[spelling]))
    with pytest.raises(InferenceError, match=r"input=.* and output=.* are the same file"):
        run(options, io.StringIO())
    assert src.read_text() == text


def _copy_with_weights(source, target, change):
    """A copy of the model folder `source` whose weights `change(state)` edited."""
    import safetensors.torch

    target.mkdir()
    for f in source.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    state = safetensors.torch.load_file(source / "model.safetensors")
    change(state)
    safetensors.torch.save_file(state, target / "model.safetensors", metadata={"format": "pt"})
    return target


def test_non_finite_predictions_are_refused(model_dirs, tmp_path):
    def poison(state):
        state["classifier.weight"][0, 0] = float("nan")

    folder = _copy_with_weights(model_dirs["bert", "seqcls"], tmp_path / "nan", poison)
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(json.dumps({"text": "a great movie"}) + "\n")
    with pytest.raises(
        InferenceError, match=r"in\.jsonl:1: .*not finite.*weights hold non-finite.*classifier"
    ):
        run(dict(model=str(folder), input=str(src), output=str(dst)), io.StringIO())
    assert not dst.exists()
    with pytest.raises(InferenceError, match=r"^text=: .*not finite"):
        run(dict(model=str(folder), text="a great movie"), io.StringIO())


def test_partial_weights_are_refused_for_prediction(model_dirs, tmp_path):
    import safetensors.torch

    source = model_dirs["bert", "seqcls"]
    state = safetensors.torch.load_file(source / "model.safetensors")
    backbone = sorted(k for k in state if k.startswith("bert."))
    dropped = backbone[: len(backbone) // 2]

    def halve(state):
        for k in dropped:
            del state[k]

    folder = _copy_with_weights(source, tmp_path / "half", halve)
    # The weights reached through a link, as in a hub cache.
    (folder / "model.safetensors").rename(tmp_path / "blob")
    (folder / "model.safetensors").symlink_to(tmp_path / "blob")
    with pytest.raises(InferenceError, match=rf"half/model\.safetensors lacks {len(dropped)} tensor"):
        load_predictor(folder)
    # A base checkpoint under a head model's name: the classifier would be random.
    base = _copy_with_weights(source, tmp_path / "base", lambda s: s.pop("classifier.weight"))
    with pytest.raises(InferenceError, match=r"lacks 1 tensor.*classifier\.weight.*noise"):
        run(dict(model=str(base), text="a great movie"), io.StringIO())
    # Training keeps loading such files: it initialises the missing tensors and warns.
    factory.models.bert.BertForSequenceClassification.from_pretrained(base)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(text="a"), r"model= is required"),
        (dict(model="m"), r"Nothing to predict"),
        (dict(model="m", question="q"), r"needs both question= and context=; context= is missing"),
        (dict(model="m", text="a", prompt="b"), r"Give one kind of input"),
        (dict(model="m", text="a", input="x.jsonl"), r"drop text="),
        (dict(model="m", prompt="a", temperature=-1.0), r"temperature=-1.0 is not valid"),
        (dict(model="m", prompt="a", do_sample=True, temperature=0.0), r"temperature=0 with do_sample=True"),
        (dict(model="m", prompt="a", max_new_tokens=0), r"max_new_tokens=0 is not valid"),
    ],
)
def test_option_errors_come_before_loading(options, message):
    with pytest.raises(ValueError, match=message):
        run(options, io.StringIO())


def test_unavailable_device_is_refused_before_loading(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(InferenceError, match=r"device='cuda' is not available.*available: \['cpu'"):
        run(dict(model="never-loaded", text="a", device="cuda"), io.StringIO())
    with pytest.raises(InferenceError, match=r"device='gpu' is not a torch device; available: \['cpu'"):
        run(dict(model="never-loaded", text="a", device="gpu"), io.StringIO())


# ---- infer.py in a subprocess -----------------------------------------------------------------------


def _infer(*args: str, importtime: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run(
        [sys.executable, *flags, str(REPO / "infer.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_cli_classifies_without_importing_lightning_or_hydra(model_dirs):
    proc = _infer(f"model={model_dirs['bert', 'seqcls']}", "text=a great movie", importtime=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = proc.stdout.splitlines()
    assert json.loads(line)["label"] in LABELS.values()
    imported = {row.split("|")[-1].strip().split(".")[0] for row in proc.stderr.splitlines() if "|" in row}
    assert "torch" in imported  # the import log was read
    assert not imported & {"pytorch_lightning", "lightning", "hydra", "omegaconf", "transformers"}


@pytest.mark.slow
def test_cli_answers_and_generates(model_dirs):
    proc = _infer(f"model={model_dirs['bart', 'qa']}", f"question={QUESTION}", f"context={CONTEXT}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    answer = json.loads(proc.stdout)
    assert CONTEXT[answer["start"] : answer["end"]] == answer["answer"]
    argv = ["prompt=Once upon", "max_new_tokens=5", "temperature=0.8", "top_p=0.9", "seed=1"]
    runs = [_infer(f"model={model_dirs['gpt2', 'causal_lm']}", *argv) for _ in range(2)]
    assert runs[0].returncode == 0, runs[0].stderr[-2000:]
    assert json.loads(runs[0].stdout)["generated_text"].startswith("Once upon")
    assert runs[0].stdout == runs[1].stdout  # seeded


@pytest.mark.slow
def test_cli_jsonl_in_and_out(model_dirs, tmp_path):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["a great movie", "bad", "the king"]))
    proc = _infer(f"model={model_dirs['gpt2', 'seqcls']}", f"input={src}", f"output={dst}", "batch_size=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == ""
    assert [set(json.loads(line)) for line in dst.read_text().splitlines()] == [{"label", "score"}] * 3
    # An id is passed through, echo=true repeats the record: a file of results joins back to its inputs.
    src.write_text(json.dumps({"id": "r1", "text": "bad"}) + "\n")
    proc = _infer(f"model={model_dirs['gpt2', 'seqcls']}", f"input={src}", "echo=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = json.loads(proc.stdout)
    assert line["id"] == "r1" and line["input"] == {"text": "bad"} and {"label", "score"} <= set(line)


@pytest.mark.slow
def test_cli_errors_exit_1_with_a_message(model_dirs, tmp_path):
    proc = _infer(f"model={model_dirs['bert', 'seqcls']}", "txt=a great movie")
    assert proc.returncode == 1
    assert "Unknown key 'txt'. Did you mean 'text'" in proc.stderr and "Traceback" not in proc.stderr
    proc = _infer(f"model={tmp_path / 'missing'}", "text=a")
    assert (
        proc.returncode == 1
        and "is neither a local folder nor a hub id" in proc.stderr
        and "Traceback" not in proc.stderr
    )


@pytest.mark.slow
def test_cli_corrupt_weights_exit_1_naming_the_file(model_dirs, tmp_path):
    folder = _copy_with_weights(model_dirs["bert", "seqcls"], tmp_path / "bad", lambda state: None)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 3])
    proc = _infer(f"model={folder}", "text=a great movie")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"{folder / 'model.safetensors'} is not a readable safetensors file" in proc.stderr


@pytest.mark.slow
def test_hub_id_from_the_cache(tmp_path, model_dirs):
    """`model=org/name` finds the snapshot in the hub cache (HF_HUB_OFFLINE=1), including by revision."""
    from tests.helpers import SHA_MAIN, add_snapshot

    add_snapshot(tmp_path / "hub", "org/clf", model_dirs["bert", "seqcls"], SHA_MAIN, branch="v1")
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    proc = _infer("model=org/clf", "revision=v1", "text=a great movie", env=env)
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)) >= {"label", "score"}
    proc = _infer("model=org/clf", "text=a great movie", env=env)  # no 'main' branch in this cache
    assert proc.returncode == 1 and "org/clf at revision 'main' is not in the hub cache" in proc.stderr


# ---- batches sorted by length ---------------------------------------------------------------------------
MIXED = [
    "a",
    "the king lived in a castle near the sea and ruled it well for years",
    "a great movie",
    "bad",
] * 3


def test_batches_go_longest_first_and_results_come_back_in_input_order(predictors):
    p = predictors["bert", "seqcls"]
    enc = p.tokenizer(MIXED)
    batches = list(p.batches_by_length(enc, 5))
    widths = [batch["input_ids"].size(1) for _, batch in batches]
    assert widths == sorted(widths, reverse=True) and sorted(
        i for index, _ in batches for i in index
    ) == list(range(len(MIXED)))
    padded = sum(b["input_ids"].numel() for _, b in batches)
    unsorted = sum(
        p.collate({"input_ids": enc["input_ids"][i : i + 5]})["input_ids"].numel() for i in range(0, 12, 5)
    )
    assert padded < unsorted
    with pytest.raises(InferenceError, match="batch_size=0 is not valid"):
        list(p.batches_by_length(enc, 0))


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_predictions_equal_one_at_a_time(predictors, arch):
    alone = [predictors[arch, "seqcls"].classify([t])[0] for t in MIXED]
    batched = predictors[arch, "seqcls"].classify(MIXED, batch_size=5)
    assert [r["label"] for r in batched] == [r["label"] for r in alone]
    assert [r["score"] for r in batched] == pytest.approx([r["score"] for r in alone], abs=1e-5)
    vectors = predictors[arch, "base"].embed(MIXED, batch_size=5)
    alone_vectors = [predictors[arch, "base"].embed([t])[0] for t in MIXED]
    torch.testing.assert_close(torch.tensor(vectors), torch.tensor(alone_vectors), atol=1e-5, rtol=1e-5)
    contexts = [CONTEXT, "a", CONTEXT + " " + CONTEXT]
    answers = predictors[arch, "qa"].answer([QUESTION] * 3, contexts, batch_size=2)
    one_by_one = [predictors[arch, "qa"].answer([QUESTION], [c])[0] for c in contexts]
    assert [(a["start"], a["end"]) for a in answers] == [(a["start"], a["end"]) for a in one_by_one]
    assert [a["score"] for a in answers] == pytest.approx([a["score"] for a in one_by_one], abs=1e-4)
