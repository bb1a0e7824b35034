"""What a head is: one object per task, in three parts, that data, training and inference ask instead of
naming tasks.

A head declares everything about its task in its own file (`factory/heads/<name>.py`, or any module of
the user's that registers one), as one class made of the three parts of `factory.contract.task`:

- its data (`TaskData`): formats, `data.*` keys, shipped dataset, how a file becomes examples, which
  texts train a tokenizer, how examples become rows and rows a batch, and what is drawn per batch;
- its training (`TaskTraining`): what it sets on the model config, batch preparation, its loss, its
  validation metrics (its YAML, `conf/head/<name>.yaml`, names the monitored one);
- its predictions (`TaskPredictions`): the record keys it reads, its `infer.py` options, and the
  functions a `Predictor` offers as methods (`@HeadClass.prediction`).

The model classes that serve it register themselves under its name (`@register_model(name)` in each
architecture file). docs/head-contract.md lists every member; tests/test_head_contract.py keeps the two
equal.

This module imports no Lightning, Hydra or OmegaConf: inference loads heads on its cold-start path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from factory.contract.errors import RegistryError
from factory.contract.task import (
    BatchPosition,
    DataSplits,
    Encoded,
    Option,
    TaskData,
    TaskPredictions,
    TaskTraining,
)
from factory.registry import get_head, heads, register_head, trainable_heads, unregister_head

__all__ = [
    "BatchPosition",
    "DataSplits",
    "Encoded",
    "Head",
    "Option",
    "get_head",
    "heads",
    "register_head",
    "trainable_heads",
    "unregister_head",
]


class Head(TaskData, TaskTraining, TaskPredictions):
    """A task: its data, its training and its predictions under one registered name. Subclasses set
    the class attributes and override the hooks their task needs."""

    @classmethod
    def prediction(cls, function: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: make `function(predictor, ...)` a method of this head's predictors; its name must
        be no other head's method."""
        for other in heads().values():
            if type(other) is not cls and function.__name__ in {m.__name__ for m in other.methods}:
                raise RegistryError(
                    f"{cls.__name__}: method {function.__name__!r} is already {other.name!r}'s."
                )
        return super().prediction(function)
