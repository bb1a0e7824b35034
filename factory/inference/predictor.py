"""Predictions from a trained model folder: classification, extractive QA, generation, embeddings.

`load_predictor(path)` takes a run dir (it uses `<run>/model/`) or a model dir (config.json, weights,
tokenizer files). The head comes from `architectures` in config.json through the registry, never from
YAML, so a folder written by transformers works as well as one written by `train.py`.

This module is the library side of `infer.py`. It must stay quick to import: no Lightning, no Hydra, no
OmegaConf (a test checks `sys.modules`). The command line's keys and defaults live in `INFER_OPTIONS`
below, the one source of truth; `conf/infer.yaml` documents the same keys and a test checks they agree.

Generation rule (Python API and command line alike): `do_sample=False` is greedy and `do_sample=True`
samples; left unset (None), generation samples when any of temperature > 0, top_k or top_p is given, and
is greedy otherwise, so `temperature=0` always means greedy and a bare prompt gives the same tokens as
transformers' greedy `generate`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

import factory.models  # noqa: F401  (registers the architectures)
from factory import registry
from factory.auto import AutoConfig
from factory.config import CONFIG_NAME, ConfigError, did_you_mean
from factory.heads.qa import MODEL_INPUTS, best_spans, encode_qa
from factory.inference.generation import check_sampling_args, generate
from factory.tokenizers.tokenizer import AutoTokenizer, Tokenizer

logger = logging.getLogger(__name__)

MODEL_SUBDIR = "model"  # where a run dir keeps its exported model


@dataclass(frozen=True)
class Option:
    """One `key=value` of `infer.py`: its type, default and meaning."""

    type: type
    default: Any
    help: str


# The keys of `infer.py`, in the order `--help` lists them. conf/infer.yaml mirrors them (tested).
INFER_OPTIONS: dict[str, Option] = {
    "model": Option(str, None, "run dir (uses <run>/model), model dir or hub id; required"),
    "revision": Option(str, None, "hub ids: branch, tag or commit (default main)"),
    "text": Option(str, None, "seqcls: text to classify (base models: text to embed)"),
    "text_pair": Option(str, None, "seqcls: optional second text of a pair"),
    "question": Option(str, None, "qa: the question (with context=)"),
    "context": Option(str, None, "qa: the context holding the answer"),
    "prompt": Option(str, None, "causal_lm: text to continue"),
    "input": Option(str, None, "JSONL file, one record per line with the keys above"),
    "output": Option(str, None, "JSONL file for the predictions; default stdout"),
    "max_new_tokens": Option(int, 20, "causal_lm: tokens to generate at most"),
    "do_sample": Option(bool, None, "causal_lm: true samples, false is greedy; unset: see temperature"),
    "temperature": Option(float, None, "causal_lm: > 0 samples (unless do_sample=false), 0 is greedy"),
    "top_k": Option(int, None, "causal_lm: sample among the k most likely tokens"),
    "top_p": Option(float, None, "causal_lm: sample from the smallest set holding this probability"),
    "seed": Option(int, None, "causal_lm: seed for sampling; unset draws a fresh one"),
    "max_length": Option(int, None, "tokens per input (qa: per window); default: the model's limit"),
    "stride": Option(
        int, None, "qa: tokens shared by consecutive windows; default min(128, max_length // 2)"
    ),
    "max_answer_length": Option(int, 30, "qa: longest answer in tokens"),
    "batch_size": Option(int, 16, "records per forward pass"),
    "device": Option(str, "cpu", "torch device, e.g. cpu or cuda"),
    "num_threads": Option(
        int, None, "CPU threads; unset: 1 for one command-line input, else torch's default"
    ),
}
INFER_DEFAULTS: dict[str, Any] = {k: o.default for k, o in INFER_OPTIONS.items()}
QA_MAX_LENGTH, QA_STRIDE = 384, 128  # run_qa's default window and stride

# Which record keys each head reads, for dispatch and for error messages.
HEAD_INPUTS: dict[str, tuple[str, ...]] = {
    "seqcls": ("text",),
    "qa": ("question", "context"),
    "causal_lm": ("prompt",),
    "base": ("text",),
}


class InferenceError(ConfigError):
    """A bad command-line key or value, a bad input record, or a model folder that cannot serve it."""


# ---- loading ----------------------------------------------------------------------------------------


def resolve_model_dir(model: str | os.PathLike, revision: str | None = None) -> Path:
    """The model folder of a run dir, a model dir, or a hub id (its snapshot in the hub cache).

    This is the one place a user-given model location becomes a folder.
    """
    path = Path(model)
    if not path.is_dir():
        from factory.checkpoints.hub import HubOptions, resolve_file
        from factory.checkpoints.weights import checkpoint_files
        from factory.tokenizers.tokenizer import TOKENIZER_FILES

        hub = HubOptions(revision=revision)
        try:
            config = resolve_file(model, CONFIG_NAME, hub=hub)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"model={str(model)!r}: {e} Give a run dir (holding {MODEL_SUBDIR}/), a model dir (holding "
                f"{CONFIG_NAME}, weights and tokenizer files) or a hub id."
            ) from None
        # Only the files a prediction needs; they land in one snapshot folder of the hub cache.
        checkpoint_files(model, hub=hub)
        for name in TOKENIZER_FILES:
            resolve_file(model, name, required=False, hub=hub)
        return config.parent
    for folder in (path / MODEL_SUBDIR, path):
        if (folder / CONFIG_NAME).is_file():
            return folder
    present = sorted(p.name for p in path.iterdir())[:20]
    raise FileNotFoundError(
        f"model={str(model)!r} holds neither {MODEL_SUBDIR}/{CONFIG_NAME} (a run dir) nor {CONFIG_NAME} "
        f"(a model dir); it holds: {present}."
    )


def load_predictor(
    model: str | os.PathLike, device: str | torch.device = "cpu", revision: str | None = None
) -> Predictor:
    """A `Predictor` for the model in a run dir, model dir or hub id; the head comes from config.json."""
    folder = resolve_model_dir(model, revision)
    config = AutoConfig.from_pretrained(folder)
    if not config.architectures:
        raise InferenceError(
            f"{folder / CONFIG_NAME} has no 'architectures' entry, so the head is unknown; valid classes: "
            f"{sorted(c.__name__ for _, _, c in registry.registered_models())}.",
            key="architectures",
        )
    cls = registry.model_class_by_name(config.architectures[0])
    if cls.config_class is not type(config):
        raise InferenceError(
            f"{folder / CONFIG_NAME}: architectures={config.architectures} does not match "
            f"model_type={config.model_type!r}.",
            key="architectures",
        )
    net = cls.from_pretrained(folder, config=config).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    logger.info("Loaded %s (%s head) from %s", cls.__name__, cls.head, folder)
    return Predictor(net, tokenizer, folder)


# ---- predicting -------------------------------------------------------------------------------------


def _batched(items: Sequence[Any] | Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def sampling_mode(
    do_sample: bool | None, temperature: float | None, top_k: int | None, top_p: float | None
) -> tuple[bool, float]:
    """`(do_sample, temperature)` after the module's generation rule, validated.

    Raises:
        ValueError: a negative or non-finite temperature, do_sample=True with temperature 0, or a bad
            top_k / top_p (named with its value).
    """
    check_sampling_args(False, 1.0 if temperature is None else temperature, top_k, top_p)
    if do_sample is None:
        do_sample = (temperature is not None and temperature > 0) or (
            temperature is None and (top_k is not None or top_p is not None)
        )
    if temperature is None or not do_sample:
        temperature = 1.0  # greedy ignores it, as in transformers
    check_sampling_args(do_sample, temperature, top_k, top_p)
    return do_sample, temperature


class Predictor:
    """A loaded model, its tokenizer and its head, with one method per head.

    Attributes:
        model: the factory model, in eval mode.
        tokenizer: its tokenizer.
        head: "seqcls", "qa", "causal_lm" or "base".
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, path: str | os.PathLike = "") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.path = str(path)
        self.head: str = type(model).head
        self._inputs = set(inspect.signature(model.forward).parameters)

    # -- helpers ------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def max_positions(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def _pad_id(self) -> int:
        for candidate in (
            self.tokenizer.pad_token_id,
            self.model.config.pad_token_id,
            self.tokenizer.eos_token_id,
        ):
            if candidate is not None:
                return candidate
        return 0  # padded positions have attention mask 0, so any id will do

    def _limit(self, max_length: int | None, default: int | None = None) -> int | None:
        """Tokens per input: `max_length` (else `default`), capped by the model's and tokenizer's limits."""
        asked = max_length if max_length is not None else default
        limits = [n for n in (asked, self.max_positions) if n is not None]
        if self.tokenizer.model_max_length < 10**20:
            limits.append(self.tokenizer.model_max_length)
        return min(limits) if limits else None

    def _collate(
        self, rows: Mapping[str, Sequence[Sequence[int]]], left: bool = False
    ) -> dict[str, torch.Tensor]:
        """Pad lists of ids (and type ids) into tensors with an attention mask, for the model's inputs."""
        ids = rows["input_ids"]
        width = max(len(r) for r in ids)
        fills = {"input_ids": self._pad_id(), "token_type_ids": 0, "attention_mask": 0}
        out: dict[str, torch.Tensor] = {}
        for key, fill in fills.items():
            if key == "attention_mask":
                values = rows.get(key) or [[1] * len(r) for r in ids]
            elif key in rows and key in self._inputs:
                values = rows[key]
            else:
                continue
            padded = [
                [fill] * (width - len(r)) + list(r) if left else list(r) + [fill] * (width - len(r))
                for r in values
            ]
            out[key] = torch.tensor(padded, dtype=torch.long, device=self.device)
        return out

    def _check_head(self, *heads: str, method: str) -> None:
        if self.head not in heads:
            right = {"seqcls": "classify", "qa": "answer", "causal_lm": "generate", "base": "embed"}[
                self.head
            ]
            raise InferenceError(
                f"{method}() needs a {' or '.join(heads)} model, but {self.path or 'this model'} is a "
                f"{type(self.model).__name__} ({self.head} head); use {right}().",
                key="model",
            )

    def check_record(self, record: Any) -> None:
        """Raise InferenceError unless `record` holds the string inputs this model's head reads."""
        if not isinstance(record, Mapping):
            raise InferenceError(f"expected a JSON object, got {type(record).__name__}.")
        needed = HEAD_INPUTS[self.head]
        missing = [k for k in needed if not isinstance(record.get(k), str)]
        if missing:
            raise InferenceError(
                f"no string {' / '.join(repr(k) for k in missing)}: {self.path or 'the model'} is a "
                f"{type(self.model).__name__} ({self.head} head), which reads {list(needed)}; "
                f"got keys {sorted(record)}.",
                key=missing[0],
            )

    # -- heads --------------------------------------------------------------------------------------

    def classify(
        self,
        texts: Sequence[str],
        text_pairs: Sequence[str] | None = None,
        max_length: int | None = None,
        batch_size: int = INFER_DEFAULTS["batch_size"],
    ) -> list[dict[str, Any]]:
        """`[{"label", "score"}]`: the most probable label (from id2label) and its softmax probability."""
        self._check_head("seqcls", method="classify")
        id2label = self.model.config.id2label or {}
        results = []
        pairs = list(text_pairs) if text_pairs is not None else None
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            chunk_pairs = pairs[start : start + batch_size] if pairs is not None else None
            enc = self.tokenizer(chunk, chunk_pairs, truncation=True, max_length=self._limit(max_length))
            with torch.inference_mode():
                logits = self.model(**self._collate(enc)).logits.float()  # (B, num_labels)
            probs = logits.softmax(-1)
            score, index = probs.max(-1)
            results += [
                {"label": id2label.get(i, f"LABEL_{i}"), "score": s}
                for i, s in zip(index.tolist(), score.tolist())
            ]
        return results

    def answer(
        self,
        questions: Sequence[str],
        contexts: Sequence[str],
        max_length: int | None = None,
        stride: int | None = None,
        max_answer_length: int = INFER_DEFAULTS["max_answer_length"],
        batch_size: int = INFER_DEFAULTS["batch_size"],
    ) -> list[dict[str, Any]]:
        """`[{"answer", "score", "start", "end"}]`: the best span over all windows of each context.

        `context[start:end] == answer`; `score` is start logit + end logit (run_qa's ranking score).
        """
        self._check_head("qa", method="answer")
        limit = self._limit(max_length, QA_MAX_LENGTH)
        if stride is None:  # HF's question-answering pipeline default
            stride = min(QA_STRIDE, limit // 2)
        windows = encode_qa(self.tokenizer, list(questions), list(contexts), max_length=limit, stride=stride)
        n = len(windows["input_ids"])
        starts: list[list[float]] = []
        ends: list[list[float]] = []
        for begin in range(0, n, batch_size):
            rows = {k: windows[k][begin : begin + batch_size] for k in MODEL_INPUTS if k in windows}
            with torch.inference_mode():
                out = self.model(**self._collate(rows))
            starts += out.start_logits.float().tolist()
            ends += out.end_logits.float().tolist()
        spans = best_spans(starts, ends, windows, list(contexts), max_answer_length=max_answer_length)
        return [
            {
                "answer": s["text"],
                "score": s["score"] if math.isfinite(s["score"]) else None,
                "start": s["start"],
                "end": s["end"],
            }
            for s in spans
        ]

    def _prompt_ids(self, prompt: str) -> list[int]:
        """The prompt's ids without template tokens, as training encodes causal-LM text.

        No [CLS]/<s> in front and, above all, no [SEP]/</s> at the end, which would say the text is over.
        An empty prompt starts from the token that separates documents in training (eos, [SEP] for BERT).
        """
        ids = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if not ids:
            tok = self.tokenizer
            candidates = (tok.eos_token_id, tok.sep_token_id, tok.bos_token_id, tok.cls_token_id)
            start = next((t for t in candidates if t is not None), None)
            if start is None:
                raise InferenceError(
                    "An empty prompt needs an eos or bos token to start from; this model has none."
                )
            ids = [start]
        return ids

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = INFER_DEFAULTS["max_new_tokens"],
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        do_sample: bool | None = None,
        seed: int | None = None,
        batch_size: int = INFER_DEFAULTS["batch_size"],
    ) -> list[str]:
        """Each prompt followed by its continuation (KV cache; greedy or sampled, see the module rule)."""
        self._check_head("causal_lm", method="generate")
        do_sample, temperature = sampling_mode(do_sample, temperature, top_k, top_p)
        # Stop at the token that ends a document in training: eos, or [SEP] for BERT, which has no eos.
        tok = self.tokenizer
        eos = next(
            (
                t
                for t in (self.model.config.eos_token_id, tok.eos_token_id, tok.sep_token_id)
                if t is not None
            ),
            None,
        )
        rows = [self._prompt_ids(p) for p in prompts]
        texts: list[str] = [""] * len(rows)
        for group in self._generation_batches(rows, batch_size):
            batch = self._collate({"input_ids": [rows[i] for i in group]}, left=True)
            out = generate(
                self.model,
                batch["input_ids"],
                batch["attention_mask"],
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                eos_token_id=[] if eos is None else eos,
                pad_token_id=self._pad_id(),
                seed=seed,
            )
            width = batch["input_ids"].size(1)
            for i, new_ids in zip(group, out[:, width:].tolist()):
                # Decode prompt + continuation together and cut the decoded prompt off, as HF's pipeline
                # does: a continuation decoded alone can lose the space that joins it to the prompt.
                full = self.tokenizer.decode(rows[i] + new_ids, skip_special_tokens=True)
                head = self.tokenizer.decode(rows[i], skip_special_tokens=True)
                texts[i] = prompts[i] + full[len(head) :]
        return texts

    def _generation_batches(self, rows: list[list[int]], batch_size: int) -> list[list[int]]:
        """Indices of `rows` to generate together.

        A model that takes `position_ids` gets left-padded batches (positions count from each row's first
        real token). One that does not (BART's decoder, as in HF) would see padding shift its positions,
        so only prompts of one length share a batch there: each continuation is then the one its prompt
        gets alone.
        """
        order = list(range(len(rows)))
        if "position_ids" in self._inputs:
            return list(_batched(order, batch_size))
        by_length: dict[int, list[int]] = {}
        for i in order:
            by_length.setdefault(len(rows[i]), []).append(i)
        return [chunk for same in by_length.values() for chunk in _batched(same, batch_size)]

    def embed(
        self,
        texts: Sequence[str],
        max_length: int | None = None,
        batch_size: int = INFER_DEFAULTS["batch_size"],
    ) -> list[list[float]]:
        """Mean of the last hidden states over each text's tokens (a sentence embedding, as
        sentence-transformers pools all-MiniLM-L6-v2), for models saved without a task head."""
        self._check_head("base", method="embed")
        vectors: list[list[float]] = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                list(texts[start : start + batch_size]), truncation=True, max_length=self._limit(max_length)
            )
            batch = self._collate(enc)
            with torch.inference_mode():
                out = self.model(**batch)
            # Encoder-decoders (BART) embed with their encoder, whose positions are the input tokens.
            hidden = (
                out.encoder_last_hidden_state
                if out.encoder_last_hidden_state is not None
                else out.last_hidden_state
            )
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            vectors += ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float().tolist()
        return vectors

    # -- records ------------------------------------------------------------------------------------

    def predict_batch(self, records: Sequence[Mapping[str, Any]], **options: Any) -> list[dict[str, Any]]:
        """Predictions for records holding the keys of this model's head (see `HEAD_INPUTS`).

        `options` are `INFER_OPTIONS` values (max_new_tokens, temperature, ...); others are ignored.
        """
        opts = {**INFER_DEFAULTS, **options}
        for i, record in enumerate(records):
            try:
                self.check_record(record)
            except InferenceError as e:
                raise InferenceError(f"Record {i}: {e}", key=e.key) from None
        size = opts["batch_size"]
        if self.head == "seqcls":
            pairs = [r.get("text_pair") for r in records]
            if any(p is not None for p in pairs) and not all(isinstance(p, str) for p in pairs):
                raise InferenceError(
                    "Give text_pair for every record of a batch or for none.", key="text_pair"
                )
            return self.classify(
                [r["text"] for r in records],
                pairs if pairs and pairs[0] is not None else None,
                max_length=opts["max_length"],
                batch_size=size,
            )
        if self.head == "qa":
            return self.answer(
                [r["question"] for r in records],
                [r["context"] for r in records],
                max_length=opts["max_length"],
                stride=opts["stride"],
                max_answer_length=opts["max_answer_length"],
                batch_size=size,
            )
        if self.head == "causal_lm":
            texts = self.generate(
                [r["prompt"] for r in records],
                max_new_tokens=opts["max_new_tokens"],
                temperature=opts["temperature"],
                top_k=opts["top_k"],
                top_p=opts["top_p"],
                do_sample=opts["do_sample"],
                seed=opts["seed"],
                batch_size=size,
            )
            return [{"generated_text": t} for t in texts]
        return [{"embedding": v} for v in self.embed([r["text"] for r in records], opts["max_length"], size)]

    def predict(self, record: Mapping[str, Any], **options: Any) -> dict[str, Any]:
        """The prediction for one record: `{"text"}`, `{"question", "context"}` or `{"prompt"}`."""
        return self.predict_batch([record], **options)[0]


# ---- the command line -------------------------------------------------------------------------------

_TRUE, _FALSE, _NULL = ("true", "yes", "on", "1"), ("false", "no", "off", "0"), ("null", "none", "~")


def _convert(key: str, raw: str) -> Any:
    option = INFER_OPTIONS[key]
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":  # Hydra-style quoting: key='a b'
        return raw[1:-1]
    if option.type is str:
        return raw
    low = raw.strip().lower()
    if low in _NULL:
        return None
    try:
        if option.type is bool:
            if low in _TRUE or low in _FALSE:
                return low in _TRUE
            raise ValueError
        value = option.type(low)
        if option.type is float and not math.isfinite(value):
            raise ValueError
        return value
    except ValueError:
        kind = {bool: "true or false", int: "an integer", float: "a finite number"}[option.type]
        raise InferenceError(f"{key}={raw!r} is not valid: expected {kind} (or null).", key=key) from None


def parse_args(argv: Sequence[str]) -> dict[str, Any]:
    """`key=value` arguments (Hydra's override syntax, `+key=` and `++key=` accepted) to typed options.

    Raises:
        InferenceError: not `key=value`, an unknown key (with a did-you-mean and the valid keys), a key
            given twice, or a value of the wrong type.
    """
    valid = list(INFER_OPTIONS)
    options: dict[str, Any] = {}
    for arg in argv:
        key, sep, raw = arg.partition("=")
        key = key.lstrip("+")
        if not sep or not key:
            raise InferenceError(
                f'Argument {arg!r} is not key=value. Example: infer.py model=<dir> text="a great movie". '
                f"Valid keys: {valid}."
            )
        if key not in INFER_OPTIONS:
            raise InferenceError(
                f"Unknown key {key!r}.{did_you_mean(key, valid)} Valid keys: {valid}.", key=key
            )
        if key in options:
            raise InferenceError(f"Key {key!r} is given twice; give it once.", key=key)
        options[key] = _convert(key, raw)
    return options


def usage() -> str:
    lines = ["usage: python infer.py model=<run or model dir> [key=value ...]", "", "keys (default):"]
    for key, option in INFER_OPTIONS.items():
        default = "null" if option.default is None else str(option.default)
        lines.append(f"  {key:<18} {option.help} ({default})")
    return "\n".join(lines)


def _single_record(opts: Mapping[str, Any]) -> dict[str, str] | None:
    given = [k for k in ("text", "text_pair", "question", "context", "prompt") if opts.get(k) is not None]
    if opts.get("input") is not None:
        if given:
            raise InferenceError(
                f"input= reads records from a file; drop {', '.join(f'{k}=' for k in given)} or drop input=.",
                key="input",
            )
        return None
    if not given:
        raise InferenceError(
            "Nothing to predict: give text=..., question=... context=..., prompt=..., or input=<file.jsonl>.",
            key="input",
        )
    kinds = {"text": "text", "text_pair": "text", "question": "qa", "context": "qa", "prompt": "prompt"}
    if len({kinds[k] for k in given}) > 1:
        raise InferenceError(f"Give one kind of input, not {', '.join(f'{k}=' for k in given)} together.")
    if ("question" in given) != ("context" in given):
        missing = "context" if "question" in given else "question"
        raise InferenceError(
            f"Question answering needs both question= and context=; {missing}= is missing.", key=missing
        )
    return {k: opts[k] for k in given}


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """`(line number, record)` for each non-blank line of a JSONL file; bad JSON names file and line."""
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115  (closed by the with below)
    except OSError as e:
        raise InferenceError(f"input={str(path)!r} cannot be read: {e.strerror}.", key="input") from None
    with f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise InferenceError(f"{path}:{number}: not valid JSON ({e.msg}).", key="input") from None


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run with `n` intra-op CPU threads (None: leave torch's setting), restoring the setting after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run(options: Mapping[str, Any], stdout: TextIO) -> int:
    """Predict for the inputs `options` name and write one JSON line per input; returns the count.

    Errors the options alone show (missing or conflicting inputs, bad values) are raised before the
    model is loaded; a bad record names the file and line.
    """
    opts = {**INFER_DEFAULTS, **options}
    if opts["model"] is None:
        raise InferenceError("model= is required: a run dir (holding model/) or a model dir.", key="model")
    for key in ("max_new_tokens", "batch_size", "stride", "max_answer_length", "max_length", "num_threads"):
        if opts[key] is not None and opts[key] < 1:
            raise InferenceError(f"{key}={opts[key]!r} is not valid: expected a positive integer.", key=key)
    sampling_mode(opts["do_sample"], opts["temperature"], opts["top_k"], opts["top_p"])  # validates
    record = _single_record(opts)
    if opts["input"] is not None and not Path(opts["input"]).is_file():
        raise InferenceError(f"input={opts['input']!r} is not a file.", key="input")
    threads = opts["num_threads"]
    if threads is None and record is not None:
        # One input is a few milliseconds of compute: a thread pool costs more than it saves there, and
        # on a busy machine its threads wait on each other at every op (10-100x slower, measured).
        threads = 1
    with _torch_threads(threads):
        predictor = load_predictor(opts["model"], device=opts["device"], revision=opts["revision"])
        if record is not None:
            try:
                predictor.check_record(record)
            except InferenceError as e:
                given = " ".join(f"{k}=" for k in record)
                raise InferenceError(f"Cannot predict from {given}: {e}", key=e.key) from None
            records: Iterable[dict[str, Any]] = [record]
        else:
            records = _checked_records(opts["input"], predictor)
        out = stdout if opts["output"] is None else open(opts["output"], "w", encoding="utf-8")  # noqa: SIM115
        try:
            return _write_predictions(predictor, records, opts, out)
        finally:
            if out is not stdout:
                out.close()


def _checked_records(path: str, predictor: Predictor) -> Iterator[dict[str, Any]]:
    for number, record in read_jsonl(path):
        try:
            predictor.check_record(record)
        except InferenceError as e:
            raise InferenceError(f"{path}:{number}: {e}", key=e.key) from None
        yield record


def _write_predictions(
    predictor: Predictor, records: Iterable[dict[str, Any]], opts: Mapping[str, Any], out: TextIO
) -> int:
    count = 0
    for batch in _batched(records, opts["batch_size"]):
        for result in predictor.predict_batch(batch, **opts):
            out.write(json.dumps(result, ensure_ascii=False) + "\n")
        count += len(batch)
        out.flush()  # a long file shows progress line by line
    return count
