"""Which config class serves a `model_type`, and which model class serves a `(model_type, head)`.

Architecture files fill the tables with the decorators below, next to their definitions; this module
imports no architecture. A name that is not registered raises an error listing the valid ones.
"""

from __future__ import annotations

from typing import Any

from factory.config import ConfigError, did_you_mean

_CONFIGS: dict[str, type] = {}
_MODELS: dict[tuple[str, str], type] = {}
HEADS: list[str] = ["base", "seqcls", "qa", "causal_lm"]


class RegistryError(ConfigError, KeyError):
    """An unknown or duplicate architecture or head name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def register_config(cls: type) -> type:
    """Class decorator: make `cls` the config class of `cls.model_type`."""
    model_type = cls.model_type
    if not model_type:
        raise RegistryError(f"{cls.__name__} has no model_type to register under.")
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
        model_type = cls.config_class.model_type
        if model_type not in _CONFIGS:
            raise RegistryError(f"Register the config class of {model_type!r} before {cls.__name__}.")
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
        raise RegistryError(
            f"Unknown head {head!r} for model_type {model_type!r}.{did_you_mean(str(head), heads)} "
            f"Valid heads for {model_type!r}: {heads}."
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


def unregister(model_type: str) -> None:
    """Remove an architecture and its heads (for tests and interactive redefinition)."""
    _CONFIGS.pop(model_type, None)
    for key in [k for k in _MODELS if k[0] == model_type]:
        del _MODELS[key]
