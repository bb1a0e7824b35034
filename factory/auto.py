"""`Auto*` classes: the checkpoint's `config.json` picks the architecture through the registry."""

from __future__ import annotations

import functools
import json
import os
from typing import Any, ClassVar

from factory import registry
from factory.checkpoints.hub import HubOptions, resolve_file
from factory.checkpoints.weights import override_error
from factory.config import CONFIG_NAME, ConfigError, PretrainedConfig
from factory.contract.errors import CheckpointError

_LOAD_ARGS = ("config", "output_loading_info", "ignore_mismatched_sizes", "allow_bin", "dtype", "layers")
_HUB_ARGS = ("revision", "cache_dir", "local_files_only")


class AutoConfig:
    """Reads `config.json` and returns the config class its `model_type` names."""

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        **overrides: Any,
    ) -> PretrainedConfig:
        path = resolve_file(name_or_path, CONFIG_NAME, hub=HubOptions(revision, cache_dir, local_files_only))
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from e
        if "model_type" not in values:
            raise ConfigError(f"{path} has no 'model_type'; valid model types: {registry.model_types()}.")
        config_cls = registry.config_class(values["model_type"])
        return config_cls.from_json_file(path, **overrides)

    @classmethod
    def for_model(cls, model_type: str, **values: Any) -> PretrainedConfig:
        """A config of `model_type` with `values` (common names allowed) over the defaults."""
        return registry.config_class(model_type).from_dict({}, **values)


class _AutoModel:
    head: ClassVar[str]

    @classmethod
    def model_class(cls, config: PretrainedConfig) -> type:
        return registry.model_class(config.model_type, cls.head)

    @classmethod
    def from_config(cls, config: PretrainedConfig):
        """A randomly initialised model (HF's scheme, seeded by torch's global generator)."""
        return cls.model_class(config)(config)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any):
        """Load a checkpoint; keyword arguments that are not loading options override `config.json`."""
        load = {k: kwargs.pop(k) for k in _LOAD_ARGS if k in kwargs}
        hub = {k: kwargs.pop(k) for k in _HUB_ARGS if k in kwargs}
        config = load.pop("config", None)
        given = config
        if config is None:
            config = AutoConfig.from_pretrained(name_or_path, **hub, **kwargs)
        elif kwargs:
            config = config.replace(**kwargs)
        try:
            return cls.model_class(config).from_pretrained(name_or_path, config=config, **hub, **load)
        except CheckpointError as e:
            if not (kwargs and e.mismatched):
                raise
            saved = given if given is not None else AutoConfig.from_pretrained(name_or_path, **hub)
            raise override_error(saved, name_or_path, kwargs, e) from None


def auto_classes() -> dict[str, type]:
    """The `AutoModelFor...` class of every registered head that names one (`auto_class`), by name:
    made here from the head's name, so a head file declares its Auto class without touching this one."""
    return {
        h.auto_class: _auto_class(h.auto_class, h.name) for h in registry.heads().values() if h.auto_class
    }


@functools.cache
def _auto_class(name: str, head: str) -> type:
    doc = f"Builds or loads the model class that serves head {head!r} for a config's `model_type`."
    return type(name, (_AutoModel,), {"head": head, "__module__": __name__, "__doc__": doc})


def __getattr__(name: str) -> type:
    cls = auto_classes().get(name)
    if cls is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return cls
