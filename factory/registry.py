"""Which config class serves a `model_type`, which model class serves a `(model_type, head)`, and which
task object a head name stands for.

Architecture files and head files fill the tables with the decorators below, next to their definitions
(`factory.models` and `factory.heads` import every file of theirs); this module imports no architecture
and no head. A name that is not registered raises an error listing the valid ones.

Registration checks the contract an architecture keeps with the rest of the factory, so that a missing
piece fails at import, naming the class and the piece:

- a config class (a dataclass with HF's field names) has a `model_type`; maps every name of
  `COMMON_NAMES` to its fields, as a field of that name or through `aliases` (whose targets are
  fields); names the fields that set its depth in `depth_fields`; and has a `tokenizer_recipe` (a
  `factory.contract.recipe.TokenizerRecipe`) for `init=random`.
- a model class has a registered `config_class`, a `base_model_prefix` (the attribute holding the
  backbone in head models) and a `checkpoint_table` (a `factory.checkpoints.weights.CheckpointTable`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from factory.config import did_you_mean
from factory.contract.errors import RegistryError
from factory.contract.recipe import TokenizerRecipe
from factory.contract.task import PARTS, TaskData

_CONFIGS: dict[str, type] = {}
_MODELS: dict[tuple[str, str], type] = {}
# Model classes that serve no head of the factory but are part of an architecture's public API, as in
# transformers (T5EncoderModel): exported by name, never chosen by a head.
_EXTRA: dict[str, type] = {}
HEADS: list[str] = []  # every head a model class is registered for, in registration order
# Names every architecture answers to (configs, Hydra overrides, `config.num_hidden_layers`).
COMMON_NAMES = (
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "max_position_embeddings",
    "intermediate_size",
    "vocab_size",
)


def _config_problems(cls: type) -> list[str]:
    """What `cls` lacks to be an architecture's config class (empty when nothing)."""
    # `__dataclass_fields__` of its own: a plain subclass of a dataclass inherits the parent's fields and
    # would turn its own annotations into class attributes.
    if "__dataclass_fields__" not in vars(cls):
        return ["it is not a dataclass (decorate it with @register_config above @dataclass)"]
    fields = {f.name for f in dataclasses.fields(cls)}
    problems = []
    model_type = getattr(cls, "model_type", None)
    if not model_type or not isinstance(model_type, str):
        problems.append("no model_type to register under")
    aliases = getattr(cls, "aliases", {})
    for name, targets in aliases.items():
        bad = [t for t in targets if t not in fields]
        if not targets or bad:
            problems.append(f"aliases[{name!r}] = {targets!r} should name fields; not fields: {bad}")
    for name in COMMON_NAMES:
        if name not in fields and name not in aliases:
            problems.append(f"common name {name!r} is neither a field nor in aliases")
    depth = getattr(cls, "depth_fields", None)
    if not depth or isinstance(depth, str):
        problems.append("no depth_fields (a tuple of the fields that set its number of layers)")
    else:
        bad = [f for f in depth if f not in fields]
        if bad:
            problems.append(f"depth_fields {tuple(depth)!r} names non-fields {bad}")
    if not isinstance(getattr(cls, "tokenizer_recipe", None), TokenizerRecipe):
        problems.append("no tokenizer_recipe (a TokenizerRecipe, for training a tokenizer at init=random)")
    return problems


def _model_problems(cls: type) -> list[str]:
    """What `cls` lacks to be a registered model class (empty when nothing)."""
    problems = []
    config_cls = getattr(cls, "config_class", None)
    if config_cls is None:
        problems.append("no config_class")
    elif _CONFIGS.get(getattr(config_cls, "model_type", None)) is not config_cls:
        problems.append(f"its config_class {config_cls.__name__} is not registered (register it first)")
    prefix = getattr(cls, "base_model_prefix", None)
    if not prefix or not isinstance(prefix, str):
        problems.append("no base_model_prefix (the attribute that holds the backbone in head models)")
    # Imported here: it pulls in torch, which the architecture file has imported already.
    from factory.checkpoints.weights import CheckpointTable

    if not isinstance(getattr(cls, "checkpoint_table", None), CheckpointTable):
        problems.append("no checkpoint_table (a CheckpointTable; CheckpointTable() when keys match names)")
    return problems


def _refuse(cls: type, problems: list[str]) -> None:
    if problems:
        raise RegistryError(f"Cannot register {cls.__name__}: " + "; ".join(problems) + ".")


def register_config(cls: type) -> type:
    """Class decorator: make `cls` the config class of `cls.model_type`, after checking the contract."""
    _refuse(cls, _config_problems(cls))
    model_type = cls.model_type
    if model_type in _CONFIGS:
        raise RegistryError(
            f"model_type {model_type!r} is already registered to {_CONFIGS[model_type].__name__}; "
            f"cannot register {cls.__name__} under the same name."
        )
    _CONFIGS[model_type] = cls
    return cls


def register_model(head: str):
    """Class decorator: make the decorated model class serve `(its config's model_type, head)`."""

    def wrap(cls: type) -> type:
        _refuse(cls, _model_problems(cls))
        model_type = cls.config_class.model_type
        key = (model_type, head)
        if key in _MODELS:
            raise RegistryError(
                f"({model_type!r}, {head!r}) is already registered to {_MODELS[key].__name__}; "
                f"cannot register {cls.__name__} there too."
            )
        if head not in HEADS:
            HEADS.append(head)
        cls.head = head
        _MODELS[key] = cls
        return cls

    return wrap


def model_types() -> list[str]:
    return sorted(_CONFIGS)


def config_class(model_type: str) -> type:
    try:
        return _CONFIGS[model_type]
    except KeyError:
        raise RegistryError(
            f"Unknown model_type {model_type!r}.{did_you_mean(str(model_type), model_types())} "
            f"Valid model types: {model_types()}."
        ) from None


def model_class(model_type: str, head: str = "base") -> type:
    config_class(model_type)
    try:
        return _MODELS[(model_type, head)]
    except KeyError:
        heads = sorted(h for (t, h) in _MODELS if t == model_type)
        having = sorted(t for (t, h) in _MODELS if h == head)
        # A head other architectures have is a hole in the matrix (no such class in HF either), not a typo.
        others = f" Architectures that have head {head!r}: {having}." if having else ""
        raise RegistryError(
            f"Unknown head {head!r} for model_type {model_type!r}.{did_you_mean(str(head), heads)} "
            f"Valid heads for {model_type!r}: {heads}.{others}"
        ) from None


def model_class_by_name(name: str) -> type:
    """The registered class named `name` (as in `architectures` of config.json)."""
    for cls in _MODELS.values():
        if cls.__name__ == name:
            return cls
    names = sorted(c.__name__ for c in _MODELS.values())
    raise RegistryError(f"Unknown model class {name!r}.{did_you_mean(name, names)} Valid classes: {names}.")


def model_matrix() -> dict[str, dict[str, str]]:
    """The arch x head matrix: `{model_type: {head: class name}}`."""
    out: dict[str, dict[str, str]] = {t: {} for t in model_types()}
    for (model_type, head), cls in sorted(_MODELS.items()):
        out[model_type][head] = cls.__name__
    return out


def registered_models() -> list[tuple[str, str, Any]]:
    """Every `(model_type, head, class)`, sorted; drives the parametrised tests."""
    return [(t, h, c) for (t, h), c in sorted(_MODELS.items())]


def register_public(cls: type) -> type:
    """Class decorator: export a model class that serves no head (`T5EncoderModel`) by its name, after
    checking the model contract."""
    _refuse(cls, _model_problems(cls))
    if cls.__name__ in _EXTRA or cls.__name__ in {c.__name__ for c in _MODELS.values()}:
        raise RegistryError(f"A model class named {cls.__name__} is already registered.")
    _EXTRA[cls.__name__] = cls
    return cls


def registered_classes() -> dict[str, type]:
    """Every registered config and model class, by class name (those of `register_public` too)."""
    classes = [*_CONFIGS.values(), *_MODELS.values(), *_EXTRA.values()]
    return {c.__name__: c for c in classes}


def unregister(model_type: str) -> None:
    """Remove an architecture and its heads (for tests and interactive redefinition)."""
    _CONFIGS.pop(model_type, None)
    for key in [k for k in _MODELS if k[0] == model_type]:
        del _MODELS[key]
    for name in [n for n, c in _EXTRA.items() if c.config_class.model_type == model_type]:
        del _EXTRA[name]


# ---- heads ----------------------------------------------------------------------------------------------
_HEADS: dict[str, Any] = {}


def register_head(cls: type) -> type:
    """Class decorator: make an instance of `cls` (a head: the three parts of `factory.contract.task`)
    the head named `cls.name`."""
    missing = [part.__name__ for part in PARTS if not issubclass(cls, part)]
    if missing:
        raise RegistryError(f"Cannot register {cls.__name__} as a head: it is not a {' or '.join(missing)}.")
    if not cls.name:
        raise RegistryError(f"Cannot register {cls.__name__} as a head: it has no name to register under.")
    if cls.name in _HEADS:
        raise RegistryError(
            f"head {cls.name!r} is already registered to {type(_HEADS[cls.name]).__name__}; cannot register "
            f"{cls.__name__} under the same name."
        )
    _HEADS[cls.name] = cls()
    return cls


def unregister_head(name: str) -> None:
    """Remove a head (for tests and interactive redefinition)."""
    _HEADS.pop(name, None)


def heads() -> dict[str, Any]:
    """Every registered head by name."""
    return dict(_HEADS)


def get_head(head: Any) -> Any:
    """The head named `head` (a head object is returned as is); an unknown name lists the valid ones."""
    if not isinstance(head, str):
        return head
    if head not in _HEADS:
        valid = sorted(_HEADS)
        raise RegistryError(
            f"head={head!r} is not valid.{did_you_mean(str(head), valid)} Valid heads: {valid}.", key="head"
        )
    return _HEADS[head]


def trainable_heads() -> list[str]:
    """The heads that read training data."""
    return sorted(
        name for name, h in _HEADS.items() if h.shipped is not None or type(h).read is not TaskData.read
    )
