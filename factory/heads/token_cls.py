"""Token classification (NER, tagging): a tag per word, in the BIO (IOB2) scheme.

Data: CoNLL-style files (a word and its tag per line, whitespace-separated, the tag in the last column; a
blank line between sentences; `-DOCSTART-` lines skipped) or JSONL `{"tokens": [...], "tags": [...]}`
(`data.tokens_column`, `data.tags_column`). The tag set is the training split's, sorted with "O" first; a
tag `I-X` that follows neither `B-X` nor `I-X` is an error naming file and line, and so is a validation
tag training never saw. Examples are `{"tokens", "tags"}` with `tags` ids into `DataSplits.labels`.

Encoding: the words are the pre-split input of the tokenizer; a word's tag is the label of its first
sub-token, its other sub-tokens and the special tokens get -100 (ignored by the loss), as in HF's
token-classification examples.

Metrics: entity-level precision, recall and F1 equal to seqeval's default mode (non-strict IOB2, micro
average) on the first-sub-token tags, and token accuracy over the same positions.

Inference: `{"text"}` gives `[{"entity_group", "score", "word", "start", "end"}]`, grouped as HF's
token-classification pipeline does with `aggregation_strategy="simple"`, at the word level: the text is
split into words (runs of word characters, and each punctuation mark) as the training data is, each word
takes the tag of its first sub-token, and `start`/`end` are character offsets into the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from factory.data import files
from factory.heads.head import DataSplits, Encoded, Head, register_head
from factory.models.losses import IGNORE_INDEX

CONLL_SUFFIXES = (".conll", ".bio", ".iob")
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Words at inference: runs of word characters (with inner hyphens/apostrophes), or one other character.
WORD = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")


# ---- the loss its model classes compute (`model_loss`) -------------------------------------------------
def token_classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over (B, T, num_labels) logits against (B, T) labels; -100 labels are ignored."""
    flat = logits.reshape(-1, logits.size(-1)).float()
    return F.cross_entropy(flat, labels.reshape(-1).to(logits.device), ignore_index=IGNORE_INDEX)


@register_head
class TokenClassification(Head):
    name: ClassVar[str] = "token_cls"
    model_loss = staticmethod(token_classification_loss)
    auto_class = "AutoModelForTokenClassification"
    metrics = ("val/f1", "val/precision", "val/recall", "val/accuracy", "val/loss")
    formats = ("conll", "jsonl")
    data_keys: ClassVar[dict[str, Any]] = {"tokens_column": "tokens", "tags_column": "tags"}
    shipped = ("token_cls/train.conll", "token_cls/validation.conll")
    empty_reason = "it has no sentences"
    inputs = ("text",)

    def config_values(self, splits: DataSplits | None) -> dict[str, Any]:
        return {"id2label": dict(enumerate(splits.labels))} if splits is not None and splits.labels else {}

    # ---- data -------------------------------------------------------------------------------------
    def read(self, train_file: str, validation_file: str, settings: Mapping[str, Any]) -> DataSplits:
        train = read_sentences(train_file, settings, self)
        validation = read_sentences(validation_file, settings, self)
        labels = tag_names(train)
        ids = {tag: i for i, tag in enumerate(labels)}
        for sentence in validation:
            for tag, line in zip(sentence["tags"], sentence["lines"]):
                if tag not in ids:
                    raise files.DataError(
                        f"{files.where(validation_file, line)}: tag {tag!r} is not one of the training tags "
                        f"{labels}."
                    )
        return DataSplits([_example(s, ids) for s in train], [_example(s, ids) for s in validation], labels)

    def tokenizer_texts(self, splits: DataSplits) -> Iterator[str]:
        for example in splits.train:
            yield " ".join(example["tokens"])

    def encode(
        self, tokenizer: Any, examples: Sequence[dict[str, Any]], settings: Mapping[str, Any], train: bool
    ) -> Encoded:
        if not examples:
            return Encoded([])
        enc = tokenizer(
            [e["tokens"] for e in examples],
            is_split_into_words=True,
            truncation=True,
            max_length=settings["max_length"],
        )
        keys = [k for k in MODEL_INPUTS if k in enc]
        rows = []
        for i, example in enumerate(examples):
            labels = align_labels(enc.word_ids(i), example["tags"])
            rows.append({**{k: enc[k][i] for k in keys}, "labels": labels})
        return Encoded(rows)

    # ---- validation -------------------------------------------------------------------------------
    def validation_step(self, model: Any, batch: Mapping[str, Any], out: Any) -> dict[str, Any]:
        kept = super().validation_step(model, batch, out)
        labels = batch["labels"].cpu()
        preds = out.logits.argmax(-1).cpu()
        keep = labels != IGNORE_INDEX
        gold = [row[k].tolist() for row, k in zip(labels, keep)]
        pred = [row[k].tolist() for row, k in zip(preds, keep)]
        return {**kept, "gold": gold, "pred": pred, "id2label": model.config.id2label}

    def validation_metrics(self, outputs: list[dict[str, Any]], data: Any) -> dict[str, float]:
        metrics = super().validation_metrics(outputs, data)
        if not outputs:
            return metrics
        id2label = outputs[0]["id2label"]
        gold = [[id2label[i] for i in s] for o in outputs for s in o["gold"]]
        pred = [[id2label[i] for i in s] for o in outputs for s in o["pred"]]
        precision, recall, f1 = entity_scores(gold, pred)
        tokens = sum(len(s) for s in gold)
        correct = sum(g == p for gs, ps in zip(gold, pred) for g, p in zip(gs, ps))
        accuracy = correct / tokens if tokens else float("nan")
        return {
            **metrics,
            "val/precision": precision,
            "val/recall": recall,
            "val/f1": f1,
            "val/accuracy": accuracy,
        }

    # ---- inference --------------------------------------------------------------------------------
    def predict(self, predictor: Any, records: Sequence[Mapping[str, Any]], opts: Mapping[str, Any]) -> list:
        return tag_entities(
            predictor,
            [r["text"] for r in records],
            max_length=opts["max_length"],
            batch_size=opts["batch_size"],
        )


# ---- reading --------------------------------------------------------------------------------------------
def read_sentences(path: str, settings: Mapping[str, Any], head: Head) -> list[dict[str, Any]]:
    """`[{"tokens", "tags", "lines"}]` of a CoNLL or JSONL file, BIO-checked; `lines` locate each tag."""
    fmt = settings["format"]
    if fmt is None and Path(path).suffix.lower() in CONLL_SUFFIXES:
        fmt = "conll"
    else:
        fmt = files.file_format(path, settings, head)
    text = files.read_text(path)
    sentences = _read_conll(path, text) if fmt == "conll" else _read_jsonl(path, text, settings)
    if not sentences:
        raise files.DataError(f"Data file {path} has no sentences (only blank or -DOCSTART- lines).")
    for sentence in sentences:
        check_bio(path, sentence["tags"], sentence["lines"])
    return sentences


def _read_conll(path: str, text: str) -> list[dict[str, Any]]:
    sentences: list[dict[str, Any]] = []
    current: dict[str, list] = {"tokens": [], "tags": [], "lines": []}
    for number, line in enumerate(text.split("\n"), start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if current["tokens"]:
                sentences.append(current)
                current = {"tokens": [], "tags": [], "lines": []}
            continue
        if len(fields) < 2:
            raise files.DataError(
                f"{path}, line {number}: {line.strip()!r} has no tag; a CoNLL line is a word and its tag "
                "(the last whitespace-separated column), and a blank line ends a sentence."
            )
        current["tokens"].append(fields[0])
        current["tags"].append(fields[-1])
        current["lines"].append(number)
    if current["tokens"]:
        sentences.append(current)
    return sentences


def _read_jsonl(path: str, text: str, settings: Mapping[str, Any]) -> list[dict[str, Any]]:
    sentences = []
    tokens_col, tags_col = settings["tokens_column"], settings["tags_column"]
    for line, record in files.read_jsonl(path, text):
        tokens = files.field_value(path, line, record, tokens_col, "tokens_column")
        tags = files.field_value(path, line, record, tags_col, "tags_column")
        for column, values in ((tokens_col, tokens), (tags_col, tags)):
            if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
                raise files.DataError(
                    f"{files.where(path, line)}: column {column!r} should be a list of non-empty strings, "
                    f"found {values!r}."
                )
        if len(tokens) != len(tags):
            raise files.DataError(
                f"{files.where(path, line)}: {len(tokens)} tokens but {len(tags)} tags; give one tag per token."
            )
        if tokens:
            sentences.append({"tokens": list(tokens), "tags": list(tags), "lines": [line] * len(tags)})
    return sentences


def check_bio(path: str, tags: Sequence[str], lines: Sequence[int]) -> None:
    """Raise DataError unless `tags` are IOB2: O, B-X, or I-X right after B-X or I-X."""
    previous = "O"
    for tag, line in zip(tags, lines):
        if tag != "O" and not re.fullmatch(r"[BI]-\S+", tag):
            raise files.DataError(
                f"{files.where(path, line)}: tag {tag!r} is not BIO: use O, B-<type> or I-<type>."
            )
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            raise files.DataError(
                f"{files.where(path, line)}: tag {tag!r} follows {previous!r}; an I-{tag[2:]} must follow "
                f"B-{tag[2:]} or I-{tag[2:]} (IOB2)."
            )
        previous = tag


def tag_names(sentences: Sequence[dict[str, Any]]) -> list[str]:
    """The training tags, sorted, with "O" first."""
    tags = {tag for s in sentences for tag in s["tags"]} - {"O"}
    return ["O", *sorted(tags)]


def _example(sentence: dict[str, Any], ids: Mapping[str, int]) -> dict[str, Any]:
    return {"tokens": sentence["tokens"], "tags": [ids[t] for t in sentence["tags"]]}


def align_labels(word_ids: Sequence[int | None], tags: Sequence[int]) -> list[int]:
    """A label per token: the word's tag on its first sub-token, -100 on the others and on special tokens."""
    labels, previous = [], None
    for word in word_ids:
        labels.append(tags[word] if word is not None and word != previous else IGNORE_INDEX)
        previous = word
    return labels


# ---- metrics ----------------------------------------------------------------------------------------------
def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """`(type, first, last)` chunks of one tag sequence, as seqeval's `get_entities` (prefix tags) finds them."""
    chunks = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, chunk in enumerate([*tags, "O"]):
        tag, kind = chunk[0], chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _end_of_chunk(prev_tag, tag, prev_type, kind):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, kind):
            begin = i
        prev_tag, prev_type = tag, kind
    return chunks


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    return (
        prev_tag in ("E", "S")
        or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
        or (prev_tag not in ("O", ".") and prev_type != kind)
    )


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    return (
        tag in ("B", "S")
        or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
        or (tag not in ("O", ".") and prev_type != kind)
    )


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> tuple[float, float, float]:
    """Micro precision, recall and F1 over entities (seqeval's default mode; 0 where undefined)."""
    true_set = {(i, *e) for i, s in enumerate(gold) for e in get_entities(s)}
    pred_set = {(i, *e) for i, s in enumerate(pred) for e in get_entities(s)}
    hits = len(true_set & pred_set)
    precision = hits / len(pred_set) if pred_set else 0.0
    recall = hits / len(true_set) if true_set else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


# ---- inference --------------------------------------------------------------------------------------------
@TokenClassification.prediction
def tag_entities(
    predictor: Any, texts: Sequence[str], max_length: int | None = None, batch_size: int = 16
) -> list[list[dict[str, Any]]]:
    """Per text, `[{"entity_group", "score", "word", "start", "end"}]` (HF's pipeline, aggregation "simple").

    Each word takes the tag and softmax probability of its first sub-token; consecutive words whose tag
    is `I-X` (or `X`) after a word of type X join its group, a `B-X` starts a new one; a group's score is
    the mean of its words' and its `word` is the text it spans. Groups tagged O are dropped.
    """
    id2label = predictor.model.config.id2label or {}
    spans = [[(m.start(), m.end()) for m in WORD.finditer(text)] for text in texts]
    nonempty = [i for i, s in enumerate(spans) if s]
    words = [[texts[i][a:b] for a, b in spans[i]] for i in nonempty]
    tagged: dict[int, list[tuple[str, float]]] = {}
    if words:
        enc = predictor.tokenizer(
            words, is_split_into_words=True, truncation=True, max_length=predictor.limit(max_length)
        )
        for index, batch in predictor.batches_by_length(enc, batch_size):
            with torch.inference_mode():
                logits = predictor.model(**batch).logits.float()  # (B, T, num_labels)
            score, label = logits.softmax(-1).max(-1)
            for b, row in enumerate(index):
                firsts = align_labels(enc.word_ids(row), range(len(words[row])))
                tagged[nonempty[row]] = [
                    (id2label.get(int(label[b, t]), f"LABEL_{int(label[b, t])}"), float(score[b, t]))
                    for t, w in enumerate(firsts)
                    if w != IGNORE_INDEX
                ]
    results = [_group(text, spans[i], tagged.get(i, [])) for i, text in enumerate(texts)]
    return results


def _split_tag(tag: str) -> tuple[str, str]:
    """HF's `get_tag`: ("B", X) for B-X, ("I", X) for I-X, ("I", tag) for anything else (O included)."""
    if tag.startswith(("B-", "I-")):
        return tag[0], tag[2:]
    return "I", tag


def _group(
    text: str, spans: Sequence[tuple[int, int]], tags: Sequence[tuple[str, float]]
) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for (begin, end), (tag, score) in zip(spans, tags):  # words cut by truncation get no tag
        bi, kind = _split_tag(tag)
        if groups and groups[-1]["entity_group"] == kind and bi != "B":
            groups[-1]["scores"].append(score)
            groups[-1]["end"] = end
        else:
            groups.append({"entity_group": kind, "scores": [score], "start": begin, "end": end})
    return [
        {
            "entity_group": g["entity_group"],
            "score": sum(g["scores"]) / len(g["scores"]),
            "word": text[g["start"] : g["end"]],
            "start": g["start"],
            "end": g["end"],
        }
        for g in groups
        if g["entity_group"] != "O"
    ]
