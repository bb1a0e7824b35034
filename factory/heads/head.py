"""What a head is: one object per task that training, data and inference ask instead of naming tasks.

A head declares everything about its task in its own file (`factory/heads/<name>.py`, or any module of
the user's that registers one): the data it reads (formats, `data.*` keys, shipped dataset, how a file
becomes examples, which texts train a tokenizer, how examples become rows and rows a batch), what it
sets on the model config, its validation metrics and the monitored one, and at inference the record
keys it reads and how model outputs become predictions. The model classes that serve it register
themselves under its name (`@register_model(name)` in each architecture file).

This module imports no Lightning, Hydra or OmegaConf: inference loads heads on its cold-start path.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from factory.config import ConfigError, did_you_mean

DATASETS_DIR = Path(__file__).resolve().parents[1] / "data" / "datasets"


@dataclass(frozen=True)
class Option:
    """One `key=value` of `infer.py`: its type, default and meaning."""

    type: type
    default: Any
    help: str


@dataclass
class DataSplits:
    """The examples of both splits, plus what the head learned from the training split.

    Attributes:
        train: training examples (dicts whose keys the head defines).
        validation: validation examples, same keys.
        labels: label names indexed by id, for heads that classify; None otherwise.
        train_file: the file the training examples came from.
        validation_file: the file the validation examples came from.
    """

    train: list[dict[str, Any]]
    validation: list[dict[str, Any]]
    labels: list[str] | None = None
    train_file: str = ""
    validation_file: str = ""


@dataclass(frozen=True)
class BatchPosition:
    """Where a batch stands in a run: what per-batch random draws are keyed by.

    Attributes:
        epoch: the training epoch (Lightning's `current_epoch`; it survives a resume).
        index: the batch's index in its epoch, or in its validation pass.
        rank: the process's global rank (0 in a single-process run): its batches hold other rows.
    """

    epoch: int
    index: int
    rank: int = 0


@dataclass
class Encoded:
    """A split as model rows, plus what the head needs to score it (QA's windows, say)."""

    rows: list[dict[str, Any]]
    state: Any = None
    examples: list[dict[str, Any]] = field(default_factory=list)


class Head:
    """A task. Subclasses set the class attributes and override the hooks their task needs."""

    name: ClassVar[str] = ""
    # Training: the metrics validation logs (any of them may be `head.monitor`), the default monitor.
    metrics: ClassVar[tuple[str, ...]] = ()
    # Whether the model's output is a distribution over the vocabulary at every position (memory).
    vocab_logits: ClassVar[bool] = False
    # Data: file formats read, the `data.*` keys this head reads with their defaults, the shipped
    # `(train, validation)` files under factory/data/datasets (None: the head trains on no data).
    formats: ClassVar[tuple[str, ...]] = ()
    data_keys: ClassVar[dict[str, Any]] = {}
    shipped: ClassVar[tuple[str, str] | None] = None
    # Why a split can encode to no rows, for the error that names its file.
    empty_reason: ClassVar[str] = "it gave no rows"
    # Inference: the record keys a prediction needs, optional ones, the `infer.py` options it adds,
    # and the Predictor methods it serves (the first is the one to name in errors).
    inputs: ClassVar[tuple[str, ...]] = ()
    optional_inputs: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[dict[str, Option]] = {}
    methods: ClassVar[tuple[str, ...]] = ()

    # ---- model ------------------------------------------------------------------------------------
    def config_values(self, splits: DataSplits | None) -> dict[str, Any]:
        """Values this head sets on the model config (`is_decoder`, label maps from the data)."""
        return {}

    def prepare_batch(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch as `model` takes it (a label convention the model class differs in, say)."""
        return batch

    def draw_state(self, tokenizer: Any, settings: Mapping[str, Any], train: bool) -> Any:
        """What `draw_batch` needs for one split (masked_lm's masking), from the tokenizer and the data
        settings; None when the head draws nothing.

        The data module computes it once per split, in the training process, and hands it to every
        `draw_batch`. The head keeps none of it: one head object serves every run of the process, and a
        cache hit or a loader worker of a stream encodes in another process or not at all.
        """
        return None

    def draw_batch(self, batch: dict[str, Any], where: BatchPosition, state: Any) -> None:
        """Add what is drawn at random for each batch (masked_lm's masks), from where the batch stands
        and the split's `draw_state`.

        Runs in the training process, before `prepare_batch`: the collate runs in loader workers, which
        know neither the epoch nor the batch's index, and draws keyed by the order batches happen to be
        collated in would not repeat in a resumed run.
        """

    def loss(self, out: Any, batch: Mapping[str, Any]) -> Any:
        """The loss to train and validate on; by default the model's own, computed as HF computes it.

        A head whose batches carry what the HF model class does not take (multiple_choice's mask of
        padded choices) computes it here, with a loss of `factory.models.losses`.
        """
        return out.loss

    # ---- data -------------------------------------------------------------------------------------
    def read(self, train_file: str, validation_file: str, settings: Mapping[str, Any]) -> DataSplits:
        """Both splits' examples; errors name file and line."""
        raise NotImplementedError(f"head {self.name!r} reads no training data")

    def tokenizer_texts(self, splits: DataSplits) -> Iterator[str]:
        """The training texts a fresh tokenizer learns from."""
        raise NotImplementedError(f"head {self.name!r} has no texts to train a tokenizer on")

    def encode(
        self, tokenizer: Any, examples: Sequence[dict[str, Any]], settings: Mapping[str, Any], train: bool
    ) -> Encoded:
        """Examples as rows of token ids (and labels) of at most `settings["max_length"]` tokens."""
        raise NotImplementedError(f"head {self.name!r} encodes no data")

    def collate(self, rows: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any] | None:
        """A batch of `rows` for a head whose rows are not flat token lists (several choices per row,
        say); None lets the data module pad the usual 1-D rows."""
        return None

    def finish_batch(self, batch: dict[str, Any]) -> None:
        """Add what the head derives from the padded inputs (a causal LM's labels)."""

    # ---- validation -------------------------------------------------------------------------------
    def validation_step(self, model: Any, batch: Mapping[str, Any], out: Any) -> dict[str, Any]:
        """What to keep of one validation batch; by default its summed loss and row count."""
        size = batch["input_ids"].size(0)
        return {"loss_sum": float(out.loss) * size, "count": size}

    def validation_metrics(self, outputs: list[dict[str, Any]], data: Any) -> dict[str, float]:
        """The epoch's metrics from the kept outputs; `data` is the data module (for its `val_state`)."""
        count = sum(o["count"] for o in outputs)
        return {"val/loss": sum(o["loss_sum"] for o in outputs) / max(count, 1)}

    # ---- inference --------------------------------------------------------------------------------
    def check_options(self, opts: Mapping[str, Any]) -> None:
        """Raise `ValueError` for `infer.py` options this head cannot use, before any model is loaded."""

    def predict(self, predictor: Any, records: Sequence[Mapping[str, Any]], opts: Mapping[str, Any]) -> list:
        """One prediction per record (`opts` are infer.py's options)."""
        raise NotImplementedError(f"head {self.name!r} makes no predictions")


_HEADS: dict[str, Head] = {}


def register_head(cls: type[Head]) -> type[Head]:
    """Class decorator: make an instance of `cls` the head named `cls.name`."""
    if not cls.name:
        raise ConfigError(f"{cls.__name__} has no name to register under.")
    if cls.name in _HEADS:
        raise ConfigError(
            f"head {cls.name!r} is already registered to {type(_HEADS[cls.name]).__name__}; cannot register "
            f"{cls.__name__} under the same name."
        )
    for method in cls.methods:
        for other in _HEADS.values():
            if method in other.methods:
                raise ConfigError(f"{cls.__name__}.methods: {method!r} is already {other.name!r}'s.")
    _HEADS[cls.name] = cls()
    return cls


def unregister_head(name: str) -> None:
    """Remove a head (for tests and interactive redefinition)."""
    _HEADS.pop(name, None)


def _discover() -> None:
    """Import every module of this package once: each head file registers itself."""
    package = __name__.rpartition(".")[0]
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{package}.{module.name}")


def heads() -> dict[str, Head]:
    """Every registered head by name."""
    _discover()
    return dict(_HEADS)


def get_head(head: str | Head) -> Head:
    """The head named `head` (a Head is returned as is); an unknown name lists the valid ones."""
    if isinstance(head, Head):
        return head
    known = heads()
    if head not in known:
        valid = sorted(known)
        raise ConfigError(
            f"head={head!r} is not valid.{did_you_mean(str(head), valid)} Valid heads: {valid}.", key="head"
        )
    return known[head]


def trainable_heads() -> list[str]:
    """The heads that read training data."""
    return sorted(name for name, head in heads().items() if head.shipped is not None or _reads(head))


def _reads(head: Head) -> bool:
    return type(head).read is not Head.read
