"""Extractive question answering: contexts into strided windows, logits back to answer spans, SQuAD scores.

The conventions are those of Hugging Face's `run_qa.py`, so a model trained here scores like one trained
there: the question is the first text and the context the second (`truncation="only_second"`), a long
context becomes several windows sharing `stride` tokens, and a window that does not hold the whole answer
is labelled with start = end = the CLS position (the first token when the tokenizer has no CLS). Each
tokenizer's own pair template joins question and context (`[CLS] q [SEP] c [SEP]` for BERT,
`<s> q </s></s> c </s>` for BART, `q c` back to back for GPT-2).

Data: SQuAD-format JSON (`{"data": [{"paragraphs": [{"context", "qas": [{"id", "question", "answers":
[{"text", "answer_start"}]}]}]}]}`) or JSONL with question/context/answers per line, answers either in
SQuAD's list form or in the `datasets` form `{"text": [...], "answer_start": [...]}`. Examples are
`{"id", "question", "context", "answers": {"text": [...], "answer_start": [...]}}` (the `datasets` form,
as HF's run_qa reads it); every answer is checked to be the context span it claims. Metrics: SQuAD exact
match and F1 of the best span over each example's windows (run_qa's logit sums). Inference:
`{"question", "context"}` gives `{"answer", "score", "start", "end"}`, the span chosen and scored as
transformers' question-answering pipeline does, `score` a probability.

`encode_qa`, `best_spans` and `squad_em_f1` take logits as tensors, numpy arrays or lists.
"""

from __future__ import annotations

import collections
import logging
import math
import re
import string
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from factory.data import files
from factory.heads.head import DataSplits, Encoded, Head, Option, register_head

logger = logging.getLogger(__name__)

# Keys of an `encode_qa` result that are per-window model inputs (everything else is bookkeeping).
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


QA_MAX_LENGTH, QA_STRIDE = 384, 128  # run_qa's default window and stride


# ---- the loss its model classes compute (`model_loss`) -------------------------------------------------
def question_answering_loss(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    start_positions: torch.Tensor,
    end_positions: torch.Tensor,
) -> torch.Tensor:
    """Mean of start and end cross-entropies; positions outside the sequence are ignored."""
    if start_positions.dim() > 1:
        start_positions = start_positions.squeeze(-1)
    if end_positions.dim() > 1:
        end_positions = end_positions.squeeze(-1)
    ignored = start_logits.size(1)
    start_positions = start_positions.clamp(0, ignored)
    end_positions = end_positions.clamp(0, ignored)
    start = F.cross_entropy(start_logits.float(), start_positions, ignore_index=ignored)
    end = F.cross_entropy(end_logits.float(), end_positions, ignore_index=ignored)
    return (start + end) / 2


@register_head
class QuestionAnswering(Head):
    name: ClassVar[str] = "qa"
    model_loss = staticmethod(question_answering_loss)
    auto_class = "AutoModelForQuestionAnswering"
    metrics = ("val/exact_match", "val/f1", "val/loss")
    formats = ("json", "jsonl")
    data_keys: ClassVar[dict[str, Any]] = {
        "question_column": "question",
        "context_column": "context",
        "answers_column": "answers",
        "id_column": "id",
        # Tokens shared by consecutive windows (None: max_length // 4).
        "stride": None,
    }
    shipped = ("qa/train.json", "qa/validation.json")
    empty_reason = "no question and context gave a window"
    inputs = ("question", "context")
    options: ClassVar[dict[str, Option]] = {
        "stride": Option(
            int, None, "qa: tokens shared by consecutive windows; default min(128, max_length // 2)"
        ),
        "max_answer_length": Option(int, 30, "qa: longest answer in tokens"),
    }

    # ---- data -------------------------------------------------------------------------------------
    def read(self, train_file: str, validation_file: str, settings: Mapping[str, Any]) -> DataSplits:
        return DataSplits(_qa_examples(train_file, settings), _qa_examples(validation_file, settings))

    def tokenizer_texts(self, splits: DataSplits) -> Iterator[str]:
        seen: set[str] = set()
        for example in splits.train:
            yield example["question"]
            if example["context"] not in seen:  # each context once
                seen.add(example["context"])
                yield example["context"]

    def encode(
        self, tokenizer: Any, examples: Sequence[dict[str, Any]], settings: Mapping[str, Any], train: bool
    ) -> Encoded:
        max_length = settings["max_length"]
        stride = settings.get("stride") or max(1, max_length // 4)
        try:
            windows = encode_qa(
                tokenizer,
                [e["question"] for e in examples],
                [e["context"] for e in examples],
                [e["answers"] for e in examples],
                max_length=max_length,
                stride=stride,
            )
        except ValueError as e:  # the settings do not fit the data: say which keys to change
            raise files.DataError(f"data.max_length={max_length}, data.stride={stride}: {e}") from None
        keys = [k for k in (*MODEL_INPUTS, "start_positions", "end_positions") if k in windows]
        rows = [{k: windows[k][i] for k in keys} for i in range(len(windows["input_ids"]))]
        if train:
            return Encoded(rows)
        for index, row in enumerate(rows):
            row["window_index"] = index  # the row of `windows` this is, for the metric
        return Encoded(rows, state=windows, examples=list(examples))

    # ---- validation -------------------------------------------------------------------------------
    def validation_step(self, model: Any, batch: Mapping[str, Any], out: Any) -> dict[str, Any]:
        # Rows as lists: batches are padded to different lengths (best_spans reads each window's length).
        return {
            **super().validation_step(model, batch, out),
            "start_logits": out.start_logits.float().cpu().tolist(),
            "end_logits": out.end_logits.float().cpu().tolist(),
            "window_index": batch["window_index"].tolist(),
        }

    def validation_metrics(self, outputs: list[dict[str, Any]], data: Any) -> dict[str, float]:
        em, f1 = self._scores(outputs, data)
        return {**super().validation_metrics(outputs, data), "val/exact_match": em, "val/f1": f1}

    def _scores(self, outputs: list[dict[str, Any]], data: Any) -> tuple[float, float]:
        """SQuAD exact match and F1 (fractions) of the best span over each example's windows.

        Only examples whose every window was seen are scored, so a sanity check or `limit_val_batches`
        gives the score of the examples it covered rather than zeros for the rest.
        """
        validation = getattr(data, "validation", None)
        windows = getattr(validation, "state", None)
        if windows is None:
            logger.warning(
                "No validation windows on the data module: QA exact match and F1 are not computed."
            )
            return float("nan"), float("nan")
        rows = [r for o in outputs for r in o["window_index"]]
        seen = {k: [windows[k][r] for r in rows] for k in ("offset_mapping", "context_mask", "example_index")}
        examples = validation.examples
        spans = best_spans(
            [row for o in outputs for row in o["start_logits"]],
            [row for o in outputs for row in o["end_logits"]],
            seen,
            [e["context"] for e in examples],
        )
        total, covered = Counter(windows["example_index"]), Counter(seen["example_index"])
        done = sorted(e for e, n in covered.items() if n == total[e])
        if not done:
            return float("nan"), float("nan")
        return squad_em_f1([spans[e]["text"] for e in done], [examples[e]["answers"]["text"] for e in done])

    # ---- inference --------------------------------------------------------------------------------
    def predict(self, predictor: Any, records: Sequence[Mapping[str, Any]], opts: Mapping[str, Any]) -> list:
        return answer(
            predictor,
            [r["question"] for r in records],
            [r["context"] for r in records],
            max_length=opts["max_length"],
            stride=opts["stride"],
            max_answer_length=opts["max_answer_length"],
            batch_size=opts["batch_size"],
        )


@QuestionAnswering.prediction
def answer(
    predictor: Any,
    questions: Sequence[str],
    contexts: Sequence[str],
    max_length: int | None = None,
    stride: int | None = None,
    max_answer_length: int = 30,
    batch_size: int = 16,
) -> list[dict[str, Any]]:
    """`[{"answer", "score", "start", "end"}]`: the most probable span over all windows of each context,
    as transformers' question-answering pipeline scores it (see `probable_spans`).

    `context[start:end] == answer`; `score` is the span's probability, start times end, each a softmax
    over its window's context tokens.
    """
    import torch

    limit = predictor.limit(max_length, QA_MAX_LENGTH)
    if stride is None:  # HF's question-answering pipeline default
        stride = min(QA_STRIDE, limit // 2)
    windows = encode_qa(predictor.tokenizer, list(questions), list(contexts), max_length=limit, stride=stride)
    n = len(windows["input_ids"])
    starts: list[list[float]] = [[]] * n
    ends: list[list[float]] = [[]] * n
    rows = {k: windows[k] for k in MODEL_INPUTS if k in windows}
    for index, batch in predictor.batches_by_length(rows, batch_size):
        with torch.inference_mode():
            out = predictor.model(**batch)
        width = [len(windows["input_ids"][i]) for i in index]
        for i, w, s, e in zip(
            index, width, out.start_logits.float().tolist(), out.end_logits.float().tolist()
        ):
            starts[i], ends[i] = s[:w], e[:w]  # without the batch's padding
    cls_id = predictor.tokenizer.cls_token_id
    spans = probable_spans(starts, ends, windows, list(contexts), max_answer_length, cls_id)
    return [
        {
            "answer": s["text"],
            "score": s["score"] if math.isfinite(s["score"]) else None,
            "start": s["start"],
            "end": s["end"],
        }
        for s in spans
    ]


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


def probable_spans(
    start_logits: Any,
    end_logits: Any,
    windows: Mapping[str, Sequence],
    contexts: Sequence[str],
    max_answer_length: int = 30,
    cls_token_id: int | None = None,
) -> list[dict[str, Any]]:
    """The most probable answer span of each example over its windows, as transformers'
    question-answering pipeline finds it: in each window a softmax over the context tokens (and the CLS
    token, whose own probability is then set to 0) for the start and for the end; a span's score is
    start probability times end probability (start <= end, at most `max_answer_length` tokens); the best
    score over the windows wins. Users read the score as a probability, which a logit sum is not.

    Arguments and result as `best_spans`', the score being that probability (0 with no valid span).
    """
    import torch

    start_rows, end_rows = _rows(start_logits), _rows(end_logits)
    best: list[dict[str, Any]] = [{"text": "", "score": 0.0, "start": 0, "end": 0} for _ in contexts]
    for row, example in enumerate(windows["example_index"]):
        offsets, mask = windows["offset_mapping"][row], windows["context_mask"][row]
        n = len(mask)
        desired = torch.tensor(mask, dtype=torch.bool)
        if cls_token_id is not None:
            desired |= torch.tensor(windows["input_ids"][row][:n]) == cls_token_id
        probs = []
        for logits in (start_rows[row][:n], end_rows[row][:n]):
            masked = torch.where(desired, torch.tensor(logits, dtype=torch.float64), -10000.0)
            p = masked.softmax(-1)
            p[0] = 0.0  # the pipeline's no-answer position never wins a span
            probs.append(p)
        scores = torch.outer(*probs).triu().tril(max_answer_length - 1)  # (start, end): start <= end
        empty = torch.tensor([offsets[i][0] == offsets[i][1] for i in range(n)])
        usable = desired & ~empty
        scores[~usable] = 0.0
        scores[:, ~usable] = 0.0
        score, flat = scores.flatten().max(0)
        if float(score) > best[example]["score"]:
            s, e = divmod(int(flat), n)
            char_start, char_end = offsets[s][0], offsets[e][1]
            best[example] = {
                "text": contexts[example][char_start:char_end],
                "score": float(score),
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


# ---- data files ---------------------------------------------------------------------------------------


def _qa_examples(path: str, settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    fmt = files.file_format(path, settings, QuestionAnswering)
    text = files.read_text(path)
    if fmt == "jsonl":
        records = [(line, record) for line, record in files.read_jsonl(path, text)]
        examples = [_qa_example(path, line, record, settings) for line, record in records]
    else:
        examples = _squad_examples(path, files.load_json(path, text), settings)
    if not examples:
        raise files.DataError(f"Data file {path} has no questions.")
    ids: dict[str, int] = {}
    for index, example in enumerate(examples):
        if example["id"] in ids:
            raise files.DataError(f"{path}: question id {example['id']!r} appears twice; ids must be unique.")
        ids[example["id"]] = index
    return examples


def _squad_examples(path: str, data: Any, settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    """SQuAD's nesting; a flat JSON list of question records is read like JSONL."""
    if isinstance(data, list):
        return [_qa_example(path, f"record {i + 1}", r, settings) for i, r in enumerate(data)]
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise files.DataError(
            f"{path}: expected SQuAD format {{'data': [{{'paragraphs': [{{'context': ..., 'qas': [...]}}]}}]}}"
            " or a list of question records."
        )
    examples = []
    for a, article in enumerate(data["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if paragraphs is None and isinstance(article, dict) and settings["question_column"] in article:
            examples.append(_qa_example(path, f"data[{a}]", article, settings))  # {"data": [records]}
            continue
        if not isinstance(paragraphs, list):
            raise files.DataError(f"{path}, data[{a}]: expected an object with a 'paragraphs' list.")
        for p, paragraph in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                raise files.DataError(f"{path}, {where}: expected an object with 'context' and a 'qas' list.")
            context = files.text_value(
                path, where, files.field_value(path, where, paragraph, "context", "context_column"), "context"
            )
            for q, qa in enumerate(paragraph["qas"]):
                if not isinstance(qa, dict):
                    raise files.DataError(f"{path}, {where}.qas[{q}]: expected an object.")
                record = {settings["id_column"]: f"{a}-{p}-{q}", **qa, settings["context_column"]: context}
                examples.append(_qa_example(path, f"{where}.qas[{q}]", record, settings))
    return examples


def _qa_example(path: str, line: int | str, record: Any, settings: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise files.DataError(
            f"{files.where(path, line)}: expected a JSON object, found {type(record).__name__}."
        )
    q_col, c_col, a_col = settings["question_column"], settings["context_column"], settings["answers_column"]
    question = files.text_value(
        path, line, files.field_value(path, line, record, q_col, "question_column"), q_col
    )
    context = files.text_value(
        path, line, files.field_value(path, line, record, c_col, "context_column"), c_col
    )
    answers = _answers(path, line, files.field_value(path, line, record, a_col, "answers_column"), a_col)
    for text, start in zip(answers["text"], answers["answer_start"]):
        if context[start : start + len(text)] != text:
            raise files.DataError(
                f"{files.where(path, line)}: answer {text!r} is not at answer_start={start} of the context "
                f"(found {context[start : start + len(text)]!r} there)."
            )
    default_id = str(line) if isinstance(line, int) else line
    return {
        "id": str(record.get(settings["id_column"], default_id)),
        "question": question,
        "context": context,
        "answers": answers,
    }


def _answers(path: str, line: int | str, value: Any, column: str) -> dict[str, list]:
    """SQuAD's `[{"text", "answer_start"}]` or datasets' `{"text": [...], "answer_start": [...]}`."""
    where = files.where(path, line)
    if isinstance(value, dict) and "text" in value and "answer_start" in value:
        texts, starts = value["text"], value["answer_start"]
        if isinstance(texts, str):
            texts, starts = [texts], [starts]
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise files.DataError(
                f"{where}: column {column!r} needs lists 'text' and 'answer_start' of the same length."
            )
    elif isinstance(value, list):
        texts, starts = [], []
        for item in value:
            if not isinstance(item, dict) or "text" not in item or "answer_start" not in item:
                raise files.DataError(
                    f"{where}: each answer in column {column!r} needs 'text' and 'answer_start'."
                )
            texts.append(item["text"])
            starts.append(item["answer_start"])
    else:
        raise files.DataError(
            f"{where}: column {column!r} should be a list of {{'text', 'answer_start'}} or "
            f"{{'text': [...], 'answer_start': [...]}}, found {value!r}."
        )
    for text, start in zip(texts, starts):
        if not isinstance(text, str) or not text:
            raise files.DataError(
                f"{where}: answer text {text!r} in column {column!r} must be a non-empty string."
            )
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise files.DataError(
                f"{where}: answer_start {start!r} in column {column!r} must be an integer >= 0."
            )
    return {"text": list(texts), "answer_start": list(starts)}
