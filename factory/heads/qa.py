"""Extractive question answering: contexts into strided windows, logits back to answer spans, SQuAD scores.

The conventions are those of Hugging Face's `run_qa.py`, so a model trained here scores like one trained
there: the question is the first text and the context the second (`truncation="only_second"`), a long
context becomes several windows sharing `stride` tokens, and a window that does not hold the whole answer
is labelled with start = end = the CLS position (the first token when the tokenizer has no CLS). Each
tokenizer's own pair template joins question and context (`[CLS] q [SEP] c [SEP]` for BERT,
`<s> q </s></s> c </s>` for BART, `q c` back to back for GPT-2).

This module imports no torch at import time; logits may be tensors, numpy arrays or lists.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

# Keys of an `encode_qa` result that are per-window model inputs (everything else is bookkeeping).
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def encode_qa(
    tokenizer: Any,
    questions: Sequence[str],
    contexts: Sequence[str],
    answers: Sequence[Mapping[str, Sequence]] | None = None,
    max_length: int = 384,
    stride: int = 128,
) -> dict[str, list]:
    """Tokenize question/context pairs into windows of at most `max_length` tokens.

    Args:
        tokenizer: a `factory.tokenizers.tokenizer.Tokenizer` (or a transformers fast tokenizer).
        questions: one question per example.
        contexts: one context per example.
        answers: per example `{"text": [...], "answer_start": [...]}`; the first answer is the label
            (no answer at all labels every window with the CLS position, SQuAD v2 style).
        max_length: tokens per window, special tokens included.
        stride: tokens shared by consecutive windows of one context.

    Returns:
        Lists with one item per window: `input_ids`, `attention_mask`, `token_type_ids` (only when the
        tokenizer returns them), `offset_mapping` (character spans into the context; (0, 0) outside it),
        `context_mask` (1 on context tokens), `example_index` (which example the window came from), and
        with `answers` also `start_positions` / `end_positions`.

    Raises:
        ValueError: the lists differ in length, or the question leaves no room for the context.
    """
    if len(questions) != len(contexts) or (answers is not None and len(answers) != len(questions)):
        raise ValueError(
            f"encode_qa needs one context{' and answers' if answers is not None else ''} per question; "
            f"got {len(questions)} questions, {len(contexts)} contexts"
            + (f", {len(answers)} answers." if answers is not None else ".")
        )
    if not questions:
        return {
            key: []
            for key in ("input_ids", "attention_mask", "offset_mapping", "context_mask", "example_index")
        }
    # run_qa strips leading whitespace of questions: it would only waste tokens of the window.
    questions = [q.lstrip() for q in questions]
    # Long questions would leave no room for the context; they are not truncated here, so fail loudly.
    question_lengths = tokenizer(questions, add_special_tokens=True)["input_ids"]
    longest = max(len(ids) for ids in question_lengths)
    if longest + stride >= max_length:
        raise ValueError(
            f"A question of {longest} tokens plus stride={stride} leaves no room for context in "
            f"max_length={max_length}; raise max_length or lower stride."
        )
    encoded = tokenizer(
        list(questions),
        list(contexts),
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    windows: dict[str, list] = {key: encoded[key] for key in MODEL_INPUTS if key in encoded}
    windows["example_index"] = list(encoded["overflow_to_sample_mapping"])
    windows["offset_mapping"], windows["context_mask"] = [], []
    for row, offsets in enumerate(encoded["offset_mapping"]):
        in_context = [1 if s == 1 else 0 for s in encoded.sequence_ids(row)]
        context = contexts[windows["example_index"][row]]
        windows["context_mask"].append(in_context)
        windows["offset_mapping"].append(
            [_trim(context, *span) if m else (0, 0) for span, m in zip(offsets, in_context)]
        )
    if answers is not None:
        starts, ends = [], []
        for row, example in enumerate(windows["example_index"]):
            start, end = _label_window(
                windows["input_ids"][row],
                windows["offset_mapping"][row],
                windows["context_mask"][row],
                answers[example],
                tokenizer.cls_token_id,
            )
            starts.append(start)
            ends.append(end)
        windows["start_positions"], windows["end_positions"] = starts, ends
    return windows


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    """A token's span without surrounding whitespace.

    Byte-level BPE tokens carry their leading space ("Ġparis"), and `tokenizers` trims it from the
    offsets of the first window but not always of overflow windows; trimming here makes every window
    agree, and answer texts cut from the context never start or end with a space.
    """
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _label_window(
    input_ids: Sequence[int],
    offsets: Sequence[tuple[int, int]],
    context_mask: Sequence[int],
    answers: Mapping[str, Sequence],
    cls_token_id: int | None,
) -> tuple[int, int]:
    """Token positions of the first answer in one window, or the CLS position twice when it is not there."""
    cls_index = input_ids.index(cls_token_id) if cls_token_id is not None and cls_token_id in input_ids else 0
    if not answers["text"]:
        return cls_index, cls_index
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    context = [i for i, m in enumerate(context_mask) if m]
    if not context:
        return cls_index, cls_index
    first, last = context[0], context[-1]
    if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
        return cls_index, cls_index
    # The first token ending after the answer start, and the last token starting before its end: a token
    # that straddles a boundary is included, as in run_qa. Tokens with empty spans (a bare byte-level
    # space) never start or end an answer.
    start = next(i for i in context if offsets[i][1] > start_char and offsets[i][0] < offsets[i][1])
    end = next(i for i in reversed(context) if offsets[i][0] < end_char and offsets[i][0] < offsets[i][1])
    return start, end


def best_spans(
    start_logits: Any,
    end_logits: Any,
    windows: Mapping[str, Sequence],
    contexts: Sequence[str],
    max_answer_length: int = 30,
    n_best: int = 20,
) -> list[dict[str, Any]]:
    """The best answer span of each example over all its windows.

    A span is a pair of context tokens (start <= end, at most `max_answer_length` tokens) scored by
    start logit + end logit; only the `n_best` highest start and end logits of each window are paired,
    as in run_qa.

    Args:
        start_logits: (windows, length) start logits, one row per window of `windows` (rows may be padded
            longer than their window; the padding is never a context token).
        end_logits: (windows, length) end logits.
        windows: the `encode_qa` result the logits were computed for (uses `offset_mapping`,
            `context_mask`, `example_index`).
        contexts: the context of each example (index = `example_index`).
        max_answer_length: the longest answer in tokens.
        n_best: how many top start/end positions per window to pair.

    Returns:
        For each example, `{"text", "score", "start", "end"}`: the answer text, its score and its
        character span in the context (`context[start:end] == text`). An example with no valid span gets
        text "", score -inf and start = end = 0.
    """
    start_rows, end_rows = _rows(start_logits), _rows(end_logits)
    if len(start_rows) != len(windows["example_index"]) or len(end_rows) != len(start_rows):
        raise ValueError(
            f"{len(start_rows)} start and {len(end_rows)} end logit rows for "
            f"{len(windows['example_index'])} windows; pass one row per window."
        )
    best: list[dict[str, Any]] = [
        {"text": "", "score": float("-inf"), "start": 0, "end": 0} for _ in range(len(contexts))
    ]
    for row, example in enumerate(windows["example_index"]):
        offsets, mask = windows["offset_mapping"][row], windows["context_mask"][row]
        starts, ends = start_rows[row][: len(mask)], end_rows[row][: len(mask)]
        top_starts = sorted(range(len(starts)), key=lambda i: -starts[i])[:n_best]
        top_ends = sorted(range(len(ends)), key=lambda i: -ends[i])[:n_best]
        for s in top_starts:
            if not mask[s] or offsets[s][0] == offsets[s][1]:
                continue
            for e in top_ends:
                if not mask[e] or e < s or e - s + 1 > max_answer_length or offsets[e][0] == offsets[e][1]:
                    continue
                score = starts[s] + ends[e]
                if score > best[example]["score"]:
                    char_start, char_end = offsets[s][0], offsets[e][1]
                    best[example] = {
                        "text": contexts[example][char_start:char_end],
                        "score": score,
                        "start": char_start,
                        "end": char_end,
                    }
    return best


def _rows(logits: Any) -> list[list[float]]:
    if hasattr(logits, "detach"):
        logits = logits.detach().float().cpu()
    if hasattr(logits, "tolist"):
        logits = logits.tolist()
    return [list(map(float, row)) for row in logits]


# -- SQuAD metric -----------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


_PUNCTUATION = set(string.punctuation)


def _f1(prediction: str, truth: str) -> float:
    pred_tokens, truth_tokens = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = collections.Counter(pred_tokens) & collections.Counter(truth_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_em_f1(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> tuple[float, float]:
    """Exact match and token F1 of SQuAD v1.1, each the best over an example's reference answers.

    Args:
        predictions: one answer text per example.
        references: per example, the reference answer text or a list of them.

    Returns:
        `(exact_match, f1)` averaged over examples, as fractions in [0, 1] (SQuAD's script reports the
        same numbers times 100). An example without references scores 1 for an empty prediction, else 0.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references; they must match.")
    if not predictions:
        return 0.0, 0.0
    em_total = f1_total = 0.0
    for prediction, refs in zip(predictions, references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs:  # unanswerable (SQuAD v2 style): only the empty answer is right
            score = float(not normalize_answer(prediction))
            em_total, f1_total = em_total + score, f1_total + score
            continue
        em_total += max(float(normalize_answer(prediction) == normalize_answer(r)) for r in refs)
        f1_total += max(_f1(prediction, r) for r in refs)
    return em_total / len(predictions), f1_total / len(predictions)
