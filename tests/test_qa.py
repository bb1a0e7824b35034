# pytest tests/test_qa.py
"""QA windows, span decoding and the SQuAD metric, offline.

`encode_qa` is checked against a transcription of Hugging Face run_qa's `prepare_train_features` and by
decoding the labelled tokens back to the answer; `best_spans` on hand-made logits; `squad_em_f1` on
cases worked out by hand from SQuAD's definition.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from factory.data.files import texts_for_tokenizer
from factory.data.sources import load_examples
from factory.heads.qa import best_spans, encode_qa, normalize_answer, squad_em_f1
from factory.tokenizers.training import train_tokenizer

FAMILIES = ["bert", "gpt2", "bart"]

FILLER = "The weather was mild and the streets were quiet that year. "
ANSWER = "Maria Lopez"
LONG_CONTEXT = FILLER * 6 + f"The bakery on the corner was opened by {ANSWER} in Lisbon. " + FILLER * 6
QUESTION = "Who opened the bakery?"


@pytest.fixture(scope="module")
def tokenizers():
    splits = load_examples("qa", {})
    texts = [*texts_for_tokenizer("qa", splits), LONG_CONTEXT, QUESTION]
    return {family: train_tokenizer(family, texts, 1000, model_max_length=512) for family in FAMILIES}


def long_example():
    start = LONG_CONTEXT.index(ANSWER)
    return {"text": [ANSWER], "answer_start": [start]}


def run_qa_labels(tokenizer, questions, contexts, answers, max_length, stride):
    """HF transformers' examples/pytorch/question-answering/run_qa.py, prepare_train_features (one fix)."""
    tokenized = tokenizer(
        questions,
        contexts,
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )
    starts, ends = [], []
    for i, offsets in enumerate(tokenized["offset_mapping"]):
        input_ids = tokenized["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
        sequence_ids = tokenized.sequence_ids(i)
        sample = tokenized["overflow_to_sample_mapping"][i]
        answer = answers[sample]
        start_char = answer["answer_start"][0]
        end_char = start_char + len(answer["text"][0])
        token_start = 0
        while sequence_ids[token_start] != 1:
            token_start += 1
        token_end = len(input_ids) - 1
        while sequence_ids[token_end] != 1:
            token_end -= 1
        last_context = token_end
        if not (offsets[token_start][0] <= start_char and offsets[token_end][1] >= end_char):
            starts.append(cls_index)
            ends.append(cls_index)
        else:
            # run_qa tests `token_start < len(offsets)`, which walks on into [SEP] (offset (0, 0)) when the
            # answer is the window's last context token and labels the start after the end; we stop at
            # the last context token.
            while token_start <= last_context and offsets[token_start][0] <= start_char:
                token_start += 1
            starts.append(token_start - 1)
            while offsets[token_end][1] >= end_char:
                token_end -= 1
            ends.append(token_end + 1)
    return tokenized["overflow_to_sample_mapping"], starts, ends


@pytest.mark.parametrize("family", FAMILIES)
def test_long_context_windows_hold_the_answer(tokenizers, family):
    tok = tokenizers[family]
    windows = encode_qa(tok, [QUESTION], [LONG_CONTEXT], [long_example()], max_length=48, stride=16)
    rows = len(windows["input_ids"])
    assert rows >= 5 and windows["example_index"] == [0] * rows
    assert all(len(ids) <= 48 for ids in windows["input_ids"])
    assert ("token_type_ids" in windows) == (family == "bert")
    labelled = [r for r in range(rows) if windows["start_positions"][r] != 0]
    assert labelled, "no window holds the answer"
    for row in range(rows):
        start, end = windows["start_positions"][row], windows["end_positions"][row]
        assert start <= end
        if row in labelled:
            decoded = tok.decode(windows["input_ids"][row][start : end + 1]).strip()
            assert decoded.lower() == ANSWER.lower() if family == "bert" else decoded == ANSWER
            span = windows["offset_mapping"][row]
            assert LONG_CONTEXT[span[start][0] : span[end][1]] == ANSWER
            assert windows["context_mask"][row][start] == windows["context_mask"][row][end] == 1
        else:
            # Windows without the whole answer point at CLS (BERT, BART's <s>) or the first token (GPT-2).
            assert start == end == 0
    # Consecutive windows overlap by `stride` tokens of context.
    first = [o for o, m in zip(windows["offset_mapping"][0], windows["context_mask"][0]) if m]
    second = [o for o, m in zip(windows["offset_mapping"][1], windows["context_mask"][1]) if m]
    assert first[-16:] == second[:16]


@pytest.mark.parametrize("family", FAMILIES)
def test_labels_match_run_qa_on_shipped_data(tokenizers, family):
    tok = tokenizers[family]
    examples = load_examples("qa", {}).validation[:60]
    questions = [e["question"] for e in examples] + [QUESTION]
    contexts = [e["context"] for e in examples] + [LONG_CONTEXT]
    answers = [e["answers"] for e in examples] + [long_example()]
    windows = encode_qa(tok, questions, contexts, answers, max_length=64, stride=20)
    mapping, starts, ends = run_qa_labels(tok, questions, contexts, answers, max_length=64, stride=20)
    assert windows["example_index"] == mapping
    assert windows["start_positions"] == starts
    assert windows["end_positions"] == ends
    assert len(mapping) > len(questions)  # stride windows were exercised


def test_same_windows_as_transformers_tokenizer(tmp_path, tokenizers):
    transformers = pytest.importorskip("transformers")
    tok = tokenizers["bart"]
    tok.save_pretrained(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    args = ([QUESTION], [LONG_CONTEXT], [long_example()])
    ours = encode_qa(tok, *args, max_length=40, stride=10)
    reference = encode_qa(theirs, *args, max_length=40, stride=10)
    assert ours.keys() == reference.keys()
    for key in ours:
        assert [list(map(tuple, r)) if key == "offset_mapping" else r for r in ours[key]] == [
            list(map(tuple, r)) if key == "offset_mapping" else r for r in reference[key]
        ], key


def test_unanswerable_and_no_answers(tokenizers):
    tok = tokenizers["bert"]
    windows = encode_qa(tok, ["Who?"], ["Nobody knows."], [{"text": [], "answer_start": []}], 32, 8)
    assert windows["start_positions"] == windows["end_positions"] == [0]
    windows = encode_qa(tok, ["Who?", "Where?"], ["Nobody knows.", "Here."], max_length=32, stride=8)
    assert "start_positions" not in windows and windows["example_index"] == [0, 1]
    assert windows["offset_mapping"][0][0] == (0, 0)  # question and special tokens carry no context span
    assert encode_qa(tok, [], [], max_length=32, stride=8)["input_ids"] == []


def test_encode_qa_errors(tokenizers):
    tok = tokenizers["gpt2"]
    with pytest.raises(ValueError, match="one context per question; got 2 questions, 1 contexts"):
        encode_qa(tok, ["a", "b"], ["c"])
    with pytest.raises(ValueError, match=r"leaves no room for context in max_length=16"):
        encode_qa(tok, [QUESTION * 3], ["c"], max_length=16, stride=4)


# -- best_spans -------------------------------------------------------------------------------------


def logits_for(windows, spans: dict[int, list[tuple[int, int, float]]], length: int | None = None):
    """Start/end logits that are -10 everywhere except `spans`: row -> [(start, end, value)]."""
    rows = len(windows["input_ids"])
    length = length or max(len(ids) for ids in windows["input_ids"])
    start, end = torch.full((rows, length), -10.0), torch.full((rows, length), -10.0)
    for row, items in spans.items():
        for s, e, value in items:
            start[row, s] = max(start[row, s].item(), value)
            end[row, e] = max(end[row, e].item(), value)
    return start, end


def context_token(windows, row: int, text: str, context: str) -> int:
    """The token of window `row` whose span starts where `text` does in `context`."""
    char = re.search(rf"\b{re.escape(text)}\b", context).start()
    for i, (span, m) in enumerate(zip(windows["offset_mapping"][row], windows["context_mask"][row])):
        if m and span[0] == char:
            return i
    raise AssertionError(f"{text!r} does not start a token of window {row}")


@pytest.mark.parametrize("family", FAMILIES)
def test_best_span_over_windows(tokenizers, family):
    tok = tokenizers[family]
    contexts = [LONG_CONTEXT, "Anna was born in Paris in 1999."]
    windows = encode_qa(tok, [QUESTION, "Where was Anna born?"], contexts, max_length=48, stride=16)
    rows = {e: [r for r, x in enumerate(windows["example_index"]) if x == e] for e in (0, 1)}
    answer_row = next(r for r in rows[0] if ANSWER in _window_text(windows, r, LONG_CONTEXT))
    s = context_token(windows, answer_row, "Maria", LONG_CONTEXT)
    e = context_token(windows, answer_row, "Lisbon", LONG_CONTEXT) - 2  # "... Lopez in Lisbon"
    paris = context_token(windows, rows[1][0], "Paris", contexts[1])
    other = rows[0][0] if rows[0][0] != answer_row else rows[0][1]
    spans = {
        answer_row: [(s, e, 5.0)],
        other: [(context_token(windows, other, "weather", LONG_CONTEXT),) * 2 + (3.0,)],  # lower score
        rows[1][0]: [(paris, paris, 4.0), (0, 0, 50.0)],  # CLS / question tokens never win
    }
    start_logits, end_logits = logits_for(windows, spans, length=60)  # padded wider than any window
    best = best_spans(start_logits, end_logits, windows, contexts)
    assert [b["text"] for b in best][1] == "Paris"
    assert best[0]["text"] == ANSWER
    assert contexts[0][best[0]["start"] : best[0]["end"]] == best[0]["text"]
    assert best[0]["score"] == pytest.approx(10.0) and best[1]["score"] == pytest.approx(8.0)


def pipeline_scores(starts, ends, windows, row, cls_id, max_answer_length=30):
    """transformers' question-answering pipeline's postprocess (v4.x `QuestionAnsweringPipeline` and
    `decode_spans`), written out with numpy: the probability of every (start, end) span of one window."""
    import numpy as np

    n = len(windows["context_mask"][row])
    p_mask = np.array([0 if m else 1 for m in windows["context_mask"][row]])
    p_mask[np.array(windows["input_ids"][row][:n]) == cls_id] = 0  # the CLS token stays unmasked
    undesired = np.abs(p_mask - 1)
    probs = []
    for logits in (np.array(starts[row][:n]), np.array(ends[row][:n])):
        logits = np.where(undesired == 0, -10000.0, logits)
        p = np.exp(logits - logits.max())
        p = p / p.sum()
        p[0] = 0.0
        probs.append(p)
    outer = np.tril(np.triu(np.outer(*probs)), max_answer_length - 1)
    keep = undesired.astype(bool)
    outer[~keep] = 0.0
    outer[:, ~keep] = 0.0
    return outer


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_answer_scores_are_the_pipelines_probabilities(tokenizers, family):
    from factory.heads.qa import probable_spans

    tok = tokenizers[family]
    contexts = [LONG_CONTEXT, "Anna was born in Paris in 1999."]
    windows = encode_qa(tok, [QUESTION, "Where was Anna born?"], contexts, max_length=48, stride=16)
    g = torch.Generator().manual_seed(0)
    starts = torch.randn(len(windows["input_ids"]), 60, generator=g) * 3
    ends = torch.randn(len(windows["input_ids"]), 60, generator=g) * 3
    spans = probable_spans(starts, ends, windows, contexts, 30, tok.cls_token_id)
    for example, span in enumerate(spans):
        rows = [r for r, x in enumerate(windows["example_index"]) if x == example]
        best = max(
            pipeline_scores(starts.tolist(), ends.tolist(), windows, r, tok.cls_token_id).max() for r in rows
        )
        assert 0 < span["score"] <= 1 and span["score"] == pytest.approx(best, rel=1e-9)
        assert contexts[example][span["start"] : span["end"]] == span["text"] and span["text"]


def _window_text(windows, row, context):
    spans = [o for o, m in zip(windows["offset_mapping"][row], windows["context_mask"][row]) if m]
    return context[spans[0][0] : spans[-1][1]]


def test_best_spans_constraints(tokenizers):
    tok = tokenizers["bert"]
    context = "anna was born in paris and works as"
    windows = encode_qa(tok, ["which?"], [context], max_length=64, stride=8)
    token = {w: context_token(windows, 0, w, context) for w in context.split()}
    assert sum(windows["context_mask"][0]) == 8, "each word should be one token"

    def best(start_items, end_items, **kwargs):
        rows, length = 1, len(windows["input_ids"][0])
        start, end = torch.full((rows, length), -10.0), torch.full((rows, length), -10.0)
        for i, v in start_items:
            start[0, i] = v
        for i, v in end_items:
            end[0, i] = v
        return best_spans(start.numpy(), end.tolist(), windows, [context], **kwargs)[0]

    # end before start is never a span: the next best pair wins.
    got = best([(token["paris"], 9.0), (token["was"], 1.0)], [(token["born"], 9.0)])
    assert got["text"] == "was born"
    # too long: "anna" .. "as" is 8 tokens.
    got = best([(token["anna"], 9.0), (token["works"], 1.0)], [(token["as"], 9.0)], max_answer_length=3)
    assert got["text"] == "works as"
    # only question / special tokens scored high: the best context pair is taken.
    got = best([(0, 99.0), (1, 99.0), (token["in"], 0.0)], [(0, 99.0), (token["in"], 0.0)])
    assert got == {
        "text": "in",
        "score": 0.0,
        "start": context.index(" in ") + 1,
        "end": context.index(" in ") + 3,
    }
    # no valid span at all (n_best=1 keeps only a start after the end).
    got = best([(token["and"], 9.0)], [(token["was"], 9.0)], n_best=1)
    assert got == {"text": "", "score": -math.inf, "start": 0, "end": 0}


def test_best_spans_checks_row_count(tokenizers):
    windows = encode_qa(tokenizers["bert"], ["q?"], ["some context"], max_length=32, stride=4)
    with pytest.raises(ValueError, match="2 start and 2 end logit rows for 1 windows"):
        best_spans(torch.zeros(2, 8), torch.zeros(2, 8), windows, ["some context"])


# -- the SQuAD metric -------------------------------------------------------------------------------


def test_normalize_answer():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("Theater") == "theater"  # articles only as whole words


@pytest.mark.parametrize(
    "prediction, references, em, f1",
    [
        ("Paris", ["Paris"], 1.0, 1.0),
        ("the Paris.", ["paris"], 1.0, 1.0),
        ("Paris France", ["Paris"], 0.0, 2 * 0.5 * 1.0 / 1.5),
        ("in Paris", ["Lisbon", "Paris"], 0.0, 2 * 0.5 * 1.0 / 1.5),
        ("Lisbon", ["Paris"], 0.0, 0.0),
        ("", ["Paris"], 0.0, 0.0),
        ("", [], 1.0, 1.0),
        ("Paris", [], 0.0, 0.0),
        ("w b c d", "b c x", 0.0, 2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3)),
        # "a" is an article, dropped before counting: precision 1, recall 2/3.
        ("a b c", "b c x", 0.0, 2 * 1.0 * (2 / 3) / (1 + 2 / 3)),
    ],
)
def test_squad_em_f1_cases(prediction, references, em, f1):
    got_em, got_f1 = squad_em_f1([prediction], [references])
    assert got_em == pytest.approx(em) and got_f1 == pytest.approx(f1)


def test_squad_em_f1_averages():
    em, f1 = squad_em_f1(["Paris", "Lisbon", "Oslo city"], [["Paris"], ["Rome"], ["Oslo"]])
    assert em == pytest.approx(1 / 3) and f1 == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert squad_em_f1([], []) == (0.0, 0.0)
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        squad_em_f1(["a", "b"], [["a"]])
