"""What a task (a head) is to each layer, in three parts, and the values that travel between the layers.

A head is one registered object made of three parts (`factory.heads.head.Head` joins them):

- `TaskData`: its data: the files it reads and their `data.*` keys, the texts a fresh tokenizer learns
  from, how examples become rows and rows a batch, and what is drawn at random for each batch. The data
  layer (`factory.data`) asks only this part.
- `TaskTraining`: its training: what it sets on the model config, how a batch becomes the model's inputs,
  its loss, its validation metrics and the metric to monitor. The Lightning module asks only this part.
- `TaskPredictions`: its predictions: the record keys it reads, its `infer.py` options, and the
  functions a `Predictor` offers as methods (`classify`, `generate`, ...). Inference asks only this part.

A registered object lives as long as the process and serves every run in it, so no part holds state
of a run: what a batch needs travels in the encoded rows (which the data cache stores and loader
workers carry), in `Encoded.state`, or in the split's `draw_state`, which the data module keeps.

This module imports nothing of factory but the errors, so every layer can import it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar


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
    """A split as model rows, plus what the head needs to score it (QA's windows, say). `rows` is a
    list when a head encodes, and a sequence that builds each row when it is read from the cache."""

    rows: Sequence[dict[str, Any]]
    state: Any = None
    examples: list[dict[str, Any]] = field(default_factory=list)


class TaskData:
    """The task's data: what it reads, how it encodes and batches it, what it draws per batch."""

    name: ClassVar[str] = ""
    # File formats read, the `data.*` keys this head reads with their defaults, the shipped
    # `(train, validation)` files under factory/data/datasets (None: the head trains on no data).
    formats: ClassVar[tuple[str, ...]] = ()
    data_keys: ClassVar[dict[str, Any]] = {}
    shipped: ClassVar[tuple[str, str] | None] = None
    # Why a split can encode to no rows, for the error that names its file.
    empty_reason: ClassVar[str] = "it gave no rows"

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


class TaskTraining:
    """The task's training: model config values, batch preparation, loss, validation metrics."""

    name: ClassVar[str] = ""
    # The metrics validation logs; the head's YAML (`head.monitor`, `head.mode`) names the one that picks
    # the best checkpoint, and any of them may be monitored instead.
    metrics: ClassVar[tuple[str, ...]] = ()
    # Whether the model's output is a distribution over the vocabulary at every position (memory).
    vocab_logits: ClassVar[bool] = False
    # The name of the factory Auto class that builds this head's models, as transformers names it
    # (`AutoModelForMaskedLM`); factory exports it. None: models are built through the registry only.
    auto_class: ClassVar[str | None] = None

    # The loss its model classes compute in `forward` when given labels, as transformers' models of the
    # task compute theirs (their `loss_function`); it lives with the task, and models find it through the
    # registry. None: the head's models compute no loss of the head's.
    model_loss: ClassVar[Callable[..., Any] | None] = None

    def config_values(self, splits: DataSplits | None) -> dict[str, Any]:
        """Values this head sets on the model config (`is_decoder`, label maps from the data)."""
        return {}

    def prepare_batch(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch as `model` takes it (a label convention the model class differs in, say)."""
        return batch

    def loss(self, out: Any, batch: Mapping[str, Any]) -> Any:
        """The loss to train and validate on; by default the model's own, computed as HF computes it.

        A head whose batches carry what the HF model class does not take (multiple_choice's mask of
        padded choices) computes it here.
        """
        return out.loss

    def validation_step(self, model: Any, batch: Mapping[str, Any], out: Any) -> dict[str, Any]:
        """What to keep of one validation batch; by default its summed loss and row count."""
        size = batch["input_ids"].size(0)
        return {"loss_sum": float(out.loss) * size, "count": size}

    def validation_metrics(self, outputs: list[dict[str, Any]], data: Any) -> dict[str, float]:
        """The epoch's metrics from the kept outputs; `data` is the data module (for its `val_state`)."""
        count = sum(o["count"] for o in outputs)
        return {"val/loss": sum(o["loss_sum"] for o in outputs) / max(count, 1)}


class TaskPredictions:
    """The task's predictions: the records it reads, its `infer.py` options, its predictor methods."""

    name: ClassVar[str] = ""
    # The record keys a prediction needs, optional ones, and the `infer.py` options this head adds.
    inputs: ClassVar[tuple[str, ...]] = ()
    optional_inputs: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[dict[str, Option]] = {}
    # The functions (predictor first) a Predictor of this head offers as its methods, the first the one
    # to name in errors; added with `@HeadClass.prediction`.
    methods: ClassVar[tuple[Callable[..., Any], ...]] = ()

    @classmethod
    def prediction(cls, function: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: make `function(predictor, ...)` a method of this head's predictors."""
        cls.methods = (*cls.__dict__.get("methods", ()), function)
        return function

    def check_options(self, opts: Mapping[str, Any]) -> None:
        """Raise `ValueError` for `infer.py` options this head cannot use, before any model is loaded."""

    def predict(self, predictor: Any, records: Sequence[Mapping[str, Any]], opts: Mapping[str, Any]) -> list:
        """One prediction per record (`opts` are infer.py's options)."""
        raise NotImplementedError(f"head {self.name!r} makes no predictions")


PARTS = (TaskData, TaskTraining, TaskPredictions)
