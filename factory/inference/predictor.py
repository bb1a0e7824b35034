"""Predictions from a trained model folder: classification, extractive QA, generation, embeddings.

`load_predictor(path)` takes a run dir (it uses `<run>/model/`) or a model dir (config.json, weights,
tokenizer files). The head comes from `architectures` in config.json through the registry, never from
YAML, so a folder written by transformers works as well as one written by `train.py`.

This module is the library side of `infer.py`. It must stay quick to import: no Lightning, no Hydra, no
OmegaConf (a test checks `sys.modules`). The command line's keys and defaults live in `INFER_OPTIONS`
below, the one source of truth; `conf/infer.yaml` documents the same keys and a test checks they agree.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

import factory.models  # noqa: F401  (registers the architectures)
from factory import registry
from factory.auto import AutoConfig
from factory.checkpoints.atomic import atomic_files
from factory.config import CONFIG_NAME, did_you_mean
from factory.contract.errors import InferenceError, RegistryError
from factory.heads.head import Head, Option, get_head, heads
from factory.plugins import import_plugins
from factory.tokenizers.tokenizer import AutoTokenizer, Tokenizer

logger = logging.getLogger(__name__)

MODEL_SUBDIR = "model"  # where a run dir keeps its exported model
ID_KEY = "id"  # a record's key that its output line repeats, to join results back to their inputs


# The keys of `infer.py` every head shares, in the order `--help` lists them; each head adds its own
# (`Head.options`) after these. conf/infer.yaml mirrors them all (tested).
COMMON_OPTIONS: dict[str, Option] = {
    "model": Option(str, None, "run dir (uses <run>/model), model dir or hub id; required"),
    "plugins": Option(
        str, None, "modules (pkg.mod or pkg.mod:function) that register the model's architecture or head"
    ),
    "revision": Option(str, None, "hub ids: branch, tag or commit (default main)"),
    "input": Option(str, None, "JSONL file, one record per line with the keys its head reads"),
    "output": Option(str, None, "JSONL file for the predictions; default stdout"),
    "echo": Option(bool, False, "true: each output line also holds its input record (under 'input')"),
    "max_length": Option(
        int, None, "tokens per input (per window where a head cuts windows); default: the model's limit"
    ),
    "batch_size": Option(int, 16, "records per forward pass"),
    "device": Option(str, "cpu", "torch device, e.g. cpu or cuda"),
    "num_threads": Option(
        int, None, "CPU threads; unset: 1 for one command-line input, else torch's default"
    ),
}


def _input_help(key: str) -> str:
    readers = [h.name for h in heads().values() if key in (*h.inputs, *h.optional_inputs)]
    return f"record key read by {' and '.join(readers)} models"


def _options() -> dict[str, Option]:
    """Every key of `infer.py`: the common ones, each head's record keys, then each head's options."""
    out = dict(COMMON_OPTIONS)
    for head in heads().values():
        for key in (*head.inputs, *head.optional_inputs):
            out.setdefault(key, Option(str, None, _input_help(key)))
    for head in heads().values():
        for key, option in head.options.items():
            # Heads may share one definition (the generating heads' decoding options), not redefine one.
            if key in out and out[key] is not option:
                raise ValueError(f"infer.py option {key!r} of head {head.name!r} is already defined.")
            out[key] = option
    return out


INFER_OPTIONS: dict[str, Option] = _options()
# How many batches of an input file are read, sorted by length and predicted at once.
SORT_WINDOW_BATCHES = 64
INFER_DEFAULTS: dict[str, Any] = {k: o.default for k, o in INFER_OPTIONS.items()}


def refresh_options() -> None:
    """Recompute the keys after plugins registered heads of their own (their record keys and options)."""
    INFER_OPTIONS.clear()
    INFER_OPTIONS.update(_options())
    INFER_DEFAULTS.clear()
    INFER_DEFAULTS.update({k: o.default for k, o in INFER_OPTIONS.items()})


def use_plugins(names: str | Sequence[str] | None) -> list[str]:
    """Import the plugins the user named (`plugins=[a,b]`, `plugins=a` or a list), then refresh the keys."""
    if isinstance(names, str):
        names = [n.strip() for n in names.strip().removeprefix("[").removesuffix("]").split(",") if n.strip()]
    imported = import_plugins(names)
    if imported:
        refresh_options()
    return imported


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
    model: str | os.PathLike,
    device: str | torch.device = "cpu",
    revision: str | None = None,
    plugins: str | Sequence[str] | None = None,
) -> Predictor:
    """A `Predictor` for the model in a run dir, model dir or hub id; the head comes from config.json.

    `plugins` are imported first, as training imports them: the modules that register the model's
    architecture or head when factory does not have them. A run dir's own plugins are never imported
    on its word; when the model needs them, the error names them.
    """
    use_plugins(plugins)
    folder = resolve_model_dir(model, revision)
    try:
        config = AutoConfig.from_pretrained(folder)
        if not config.architectures:
            raise InferenceError(
                f"{folder / CONFIG_NAME} has no 'architectures' entry, so the head is unknown; valid "
                f"classes: {sorted(c.__name__ for _, _, c in registry.registered_models())}.",
                key="architectures",
            )
        cls = registry.model_class_by_name(config.architectures[0])
    except RegistryError as e:  # an architecture or head factory does not have: a plugin's?
        named = _run_dir_plugins(folder)
        if not named:
            raise
        raise InferenceError(
            f"{e} The run that wrote {folder} imported plugins {named}: if you trust that code, give "
            f"plugins=[{','.join(named)}] to import it.",
            key="plugins",
        ) from None
    if cls.config_class is not type(config):
        raise InferenceError(
            f"{folder / CONFIG_NAME}: architectures={config.architectures} does not match "
            f"model_type={config.model_type!r}.",
            key="architectures",
        )
    net, info = cls.from_pretrained(folder, config=config, output_loading_info=True)
    _check_all_loaded(folder, cls.__name__, info)
    net = net.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    logger.info("Loaded %s (%s head) from %s", cls.__name__, cls.head, folder)
    return Predictor(net, tokenizer, folder)


def _run_dir_plugins(folder: Path) -> list[str]:
    """The plugins named in the config of the run that exported `folder` (`<run>/model`), if any."""
    config = folder.parent / ".hydra" / "config.yaml"
    if folder.name != MODEL_SUBDIR or not config.is_file():
        return []
    import yaml  # only on this error path: a cold start never pays for it

    try:
        values = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return []
    named = values.get("plugins") if isinstance(values, dict) else None
    named = [named] if isinstance(named, str) else named
    return [str(n) for n in named] if isinstance(named, list) else []


def _check_all_loaded(folder: Path, class_name: str, info: Mapping[str, Any]) -> None:
    """Refuse a model some of whose parameters the weight files did not supply.

    The generic loader initialises those afresh and only warns, which training wants (a new head on a
    pretrained backbone). A prediction from them is noise: a random classifier, or a backbone with
    random layers from a truncated or partial file. So serving a model requires every tensor.
    """
    missing = list(info["missing_keys"])
    if not missing:
        return
    files = [str(folder / name) for name in info["files"]]
    shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
    raise InferenceError(
        f"{', '.join(files)} lacks {len(missing)} tensor(s) of {class_name}: {shown}. Loading would "
        f"initialise them at random, so the predictions would be noise. A base checkpoint needs training "
        f"for a head first (train.py init=pretrained); otherwise the weight file is incomplete.",
        key="model",
    )


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


class Predictor:
    """A loaded model, its tokenizer and its head; the head's inference functions (`classify`,
    `answer`, `generate`, `embed`, ...) are this object's methods.

    Attributes:
        model: the factory model, in eval mode.
        tokenizer: its tokenizer.
        head: the model class's head name; `task` is that head (a `factory.heads.Head`).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, path: str | os.PathLike = "") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.path = str(path)
        self.head: str = type(model).head
        self.task: Head = get_head(self.head)
        self.model_inputs = set(inspect.signature(model.forward).parameters)
        # The head's inference functions take the predictor first: `p.classify(texts)` is
        # `factory.heads.seqcls.classify(p, texts)`, bound here so that help() and dir() show them.
        for function in self.task.methods:
            setattr(self, function.__name__, types.MethodType(function, self))

    def __getattr__(self, name: str) -> Any:
        # Only names this predictor's head does not serve get here: another head's method names the
        # right one.
        if name.startswith("_") or "task" not in self.__dict__:
            raise AttributeError(name)
        owner = next((h for h in heads().values() if name in {m.__name__ for m in h.methods}), None)
        if owner is None:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        methods = self.task.methods
        right = f"use {methods[0].__name__}()" if methods else "it has no prediction method"
        raise InferenceError(
            f"{name}() needs a {owner.name} model, but {self.path or 'this model'} is a "
            f"{type(self.model).__name__} ({self.head} head); {right}.",
            key="model",
        )

    # -- what every head's inference uses -------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def max_positions(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def pad_id(self) -> int:
        for candidate in (
            self.tokenizer.pad_token_id,
            self.model.config.pad_token_id,
            self.tokenizer.eos_token_id,
        ):
            if candidate is not None:
                return candidate
        return 0  # padded positions have attention mask 0, so any id will do

    def limit(self, max_length: int | None, default: int | None = None) -> int | None:
        """Tokens per input: `max_length` (else `default`), capped by the model's and tokenizer's limits."""
        asked = max_length if max_length is not None else default
        limits = [n for n in (asked, self.max_positions) if n is not None]
        if self.tokenizer.model_max_length < 10**20:
            limits.append(self.tokenizer.model_max_length)
        return min(limits) if limits else None

    def collate(
        self, rows: Mapping[str, Sequence[Sequence[int]]], left: bool = False
    ) -> dict[str, torch.Tensor]:
        """Pad lists of ids (and type ids) into tensors with an attention mask, for the model's inputs."""
        ids = rows["input_ids"]
        width = max(len(r) for r in ids)
        fills = {"input_ids": self.pad_id(), "token_type_ids": 0, "attention_mask": 0}
        out: dict[str, torch.Tensor] = {}
        for key, fill in fills.items():
            if key == "attention_mask":
                values = rows.get(key) or [[1] * len(r) for r in ids]
            elif key in rows and key in self.model_inputs:
                values = rows[key]
            else:
                continue
            padded = [
                [fill] * (width - len(r)) + list(r) if left else list(r) + [fill] * (width - len(r))
                for r in values
            ]
            out[key] = torch.tensor(padded, dtype=torch.long, device=self.device)
        return out

    def batches_by_length(
        self, rows: Mapping[str, Sequence[Sequence[int]]], batch_size: int
    ) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
        """`(indices, batch)` over `rows` (input_ids, and token_type_ids / attention_mask if present),
        longest rows first, `batch_size` at a time.

        Each batch is padded to its own longest row, so rows of similar length share a batch and little
        of the compute goes to padding; the longest batch comes first, so a batch too large for memory
        fails at once. Callers put each result back at its index: output order is input order.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InferenceError(f"batch_size={batch_size!r} is not valid: expected a positive integer.")
        ids = rows["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # stable: ties keep input order
        keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in rows]
        for begin in range(0, len(order), batch_size):
            index = order[begin : begin + batch_size]
            yield index, self.collate({k: [rows[k][i] for i in index] for k in keys})

    def check_record(self, record: Any) -> None:
        """Raise InferenceError unless `record` holds the string inputs this model's head reads."""
        if not isinstance(record, Mapping):
            raise InferenceError(f"expected a JSON object, got {type(record).__name__}.")
        needed = self.task.inputs
        missing = [k for k in needed if not isinstance(record.get(k), str)]
        if missing:
            raise InferenceError(
                f"no string {' / '.join(repr(k) for k in missing)}: {self.path or 'the model'} is a "
                f"{type(self.model).__name__} ({self.head} head), which reads {list(needed)}; "
                f"got keys {sorted(record)}.",
                key=missing[0],
            )

    # -- records ------------------------------------------------------------------------------------

    def predict_batch(self, records: Sequence[Mapping[str, Any]], **options: Any) -> list[dict[str, Any]]:
        """Predictions for records holding the keys this model's head reads (`head.inputs`).

        `options` are `INFER_OPTIONS` values (max_new_tokens, temperature, ...); others are ignored.
        """
        opts = {**INFER_DEFAULTS, **options}
        for i, record in enumerate(records):
            try:
                self.check_record(record)
            except InferenceError as e:
                raise InferenceError(f"Record {i}: {e}", key=e.key) from None
        return self.task.predict(self, records, opts)

    def predict(self, record: Mapping[str, Any], **options: Any) -> dict[str, Any]:
        """The prediction for one record (its keys: what the head reads, e.g. `{"text"}`)."""
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
    # Plugins first: a plugin's head adds the record keys and options the other arguments may use.
    for arg in argv:
        key, sep, raw = arg.partition("=")
        if sep and key.lstrip("+") == "plugins":
            use_plugins(raw)
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
    readers = {
        k: [h for h in heads().values() if k in (*h.inputs, *h.optional_inputs)] for k in INFER_OPTIONS
    }
    given = [k for k, r in readers.items() if r and opts.get(k) is not None]
    if opts.get("input") is not None:
        if given:
            raise InferenceError(
                f"input= reads records from a file; drop {', '.join(f'{k}=' for k in given)} or drop input=.",
                key="input",
            )
        return None
    if not given:
        kinds = sorted({" ".join(f"{k}=..." for k in h.inputs) for h in heads().values() if h.inputs})
        raise InferenceError(
            f"Nothing to predict: give {', '.join(kinds)}, or input=<file.jsonl>.", key="input"
        )
    fits = [h for h in heads().values() if h.inputs and set(given) <= {*h.inputs, *h.optional_inputs}]
    if not fits:
        raise InferenceError(f"Give one kind of input, not {', '.join(f'{k}=' for k in given)} together.")
    if not any(set(h.inputs) <= set(given) for h in fits):
        needed = [k for k in fits[0].inputs]
        missing = [k for k in needed if k not in given]
        raise InferenceError(
            f"A {fits[0].name} model needs both {' and '.join(f'{k}=' for k in needed)}; "
            f"{', '.join(f'{k}=' for k in missing)} is missing.",
            key=missing[0],
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
    for head in heads().values():  # each head checks its own options (sampling settings, ...)
        head.check_options(opts)
    record = _single_record(opts)
    _check_device(opts["device"])
    if opts["input"] is not None and not Path(opts["input"]).is_file():
        raise InferenceError(f"input={opts['input']!r} is not a file.", key="input")
    if opts["input"] is not None and opts["output"] is not None:
        _check_distinct(opts["input"], opts["output"])
    threads = opts["num_threads"]
    if threads is None and record is not None:
        # One input is a few milliseconds of compute: a thread pool costs more than it saves there, and
        # on a busy machine its threads wait on each other at every op (10-100x slower, measured).
        threads = 1
    with _torch_threads(threads):
        predictor = load_predictor(
            opts["model"], device=opts["device"], revision=opts["revision"], plugins=opts["plugins"]
        )
        if record is not None:
            given = " ".join(f"{k}=" for k in record)
            try:
                predictor.check_record(record)
            except InferenceError as e:
                raise InferenceError(f"Cannot predict from {given}: {e}", key=e.key) from None
            records: Iterable[tuple[str, dict[str, Any]]] = [(given, record)]
        else:
            records = _checked_records(opts["input"], predictor)
        if opts["output"] is None:
            return _write_predictions(predictor, records, opts, stdout)
        # Predictions go to a temporary file beside the target, renamed into place only once every
        # record succeeded: a bad line or an interrupt leaves the previous output as it was.
        target = Path(opts["output"])
        with atomic_files(target.parent) as temp, open(temp(target.name), "w", encoding="utf-8") as out:
            return _write_predictions(predictor, records, opts, out)


def available_devices() -> list[str]:
    """The torch devices this process can use: cpu, then each CUDA device, then mps."""
    out = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def _check_device(device: str) -> None:
    """Refuse a device this torch build or machine lacks, before the model loads (torch would raise an
    AssertionError deep inside `.to()`)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        parsed = None
    available = available_devices()
    if parsed is not None:
        if parsed.type == "cpu":
            return
        if parsed.type == "cuda" and torch.cuda.is_available():
            if parsed.index is None or parsed.index < torch.cuda.device_count():
                return
        elif parsed.type in available:
            return
    if parsed is None:
        problem = "not a torch device"
    elif parsed.type == "cuda" and torch.version.cuda is None:
        problem = "not available: this torch build has no CUDA"
    else:
        problem = "not available on this machine"
    raise InferenceError(f"device={device!r} is {problem}; available: {available}.", key="device")


def _check_distinct(source: str, target: str) -> None:
    """Refuse an output that is the input file itself, whatever the spelling (links, `..`, hard links):
    writing it would replace the records before, or instead of, reading them."""
    same = os.path.realpath(source) == os.path.realpath(target)
    with contextlib.suppress(OSError):  # an output that does not exist yet is not the input
        same = same or os.path.samefile(source, target)
    if same:
        raise InferenceError(
            f"input={source!r} and output={target!r} are the same file; writing the predictions would "
            f"overwrite the records. Give output= another file.",
            key="output",
        )


def _checked_records(path: str, predictor: Predictor) -> Iterator[tuple[str, dict[str, Any]]]:
    """`("<file>:<line>", record)` for each record of the input file, checked against the head."""
    for number, record in read_jsonl(path):
        try:
            predictor.check_record(record)
        except InferenceError as e:
            raise InferenceError(f"{path}:{number}: {e}", key=e.key) from None
        yield f"{path}:{number}", record


def _joinable(result: Any, record: Mapping[str, Any], echo: bool) -> Any:
    """`result` with what joins it back to its record: the record's `id` (passed through whenever it has
    one) and, with `echo`, the record itself; a result that is not an object goes under "prediction"."""
    extra: dict[str, Any] = {}
    if ID_KEY in record:
        extra[ID_KEY] = record[ID_KEY]
    if echo:
        extra["input"] = {k: v for k, v in record.items() if k != ID_KEY}
    if not extra:
        return result
    return {**extra, **result} if isinstance(result, dict) else {**extra, "prediction": result}


def _is_finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, Mapping):
        return all(_is_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_is_finite(v) for v in value)
    return True


def _nonfinite_weights(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.is_floating_point() and not torch.isfinite(p).all()]


def _write_predictions(
    predictor: Predictor, records: Iterable[tuple[str, dict[str, Any]]], opts: Mapping[str, Any], out: TextIO
) -> int:
    """Write one JSON line per `(where, record)`; `where` names the record in errors."""
    count = 0
    # Records are predicted in windows of many batches, which the heads sort by length into batches:
    # long and short lines of a file then pad to their neighbours' lengths, not to each other's.
    for batch in _batched(records, opts["batch_size"] * SORT_WINDOW_BATCHES):
        results = predictor.predict_batch([record for _, record in batch], **opts)
        for (where, record), result in zip(batch, results):
            if not _is_finite(result):
                # json.dumps would write NaN, which is not JSON and no prediction; find out why.
                bad = _nonfinite_weights(predictor.model)
                cause = (
                    f"the model's weights hold non-finite values (NaN or inf) in {len(bad)} tensor(s): "
                    f"{', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}; the checkpoint is broken"
                    if bad
                    else "the model's outputs overflowed (its weights are finite)"
                )
                raise InferenceError(
                    f"{where}: the prediction is not finite ({result}): {cause}.", key="model"
                )
            out.write(json.dumps(_joinable(result, record, opts["echo"]), ensure_ascii=False) + "\n")
        count += len(batch)
        out.flush()  # a long file shows progress line by line
    return count
