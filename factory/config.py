"""Typed model configs with Hugging Face `config.json` field names.

Each architecture subclasses `PretrainedConfig` as a dataclass whose fields are exactly the keys of its
HF `config.json`, so reading a checkpoint's config is a field filter and writing one is `asdict`. Keys
a checkpoint carries that do not change the model (`transformers_version`, `_name_or_path`, ...) are
kept in `extra` and written back unchanged. Validation runs at construction and names the field, the
value and what is valid.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from factory.checkpoints.files import read_json
from factory.contract.errors import ConfigError

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def plain_data(value: Any, path: str = "", *, fallback_unresolved: bool = False) -> Any:
    """`value` as plain containers (dict, list, str, int, float, bool, None): what `weights_only` loads.

    A Hydra/OmegaConf node becomes containers with its interpolations resolved; a missing value (`???`)
    stays the string "???". With `fallback_unresolved`, a node whose interpolations do not all resolve
    (a resolver that needs a running Hydra) is kept as written instead of raising. Any other value
    raises `ConfigError` naming its key path (`path` is where `value` itself sits, e.g. "arch").
    """
    omegaconf = sys.modules.get("omegaconf")  # never imported here: a node means it is loaded already
    if omegaconf is not None and isinstance(value, omegaconf.Container):
        try:
            value = omegaconf.OmegaConf.to_container(value, resolve=True)
        except Exception as e:  # noqa: BLE001  (an interpolation that needs Hydra: keep it as written)
            if not fallback_unresolved:
                raise
            logger.debug("%s kept unresolved: %s", path or "config", e)
            value = omegaconf.OmegaConf.to_container(value, resolve=False)
    if isinstance(value, Mapping):
        return {
            k: plain_data(v, f"{path}.{k}", fallback_unresolved=fallback_unresolved) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [
            plain_data(v, f"{path}[{i}]", fallback_unresolved=fallback_unresolved)
            for i, v in enumerate(value)
        ]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise ConfigError(f"{path.lstrip('.')}={value!r} is not plain config data (a {type(value).__name__}).")


@dataclass
class PretrainedConfig:
    """Fields shared by every architecture, with HF's names and defaults."""

    model_type: ClassVar[str] = ""
    # Names that work on every architecture (and in Hydra overrides), mapped to this architecture's own
    # fields. One common name may set several fields (BART: both encoder and decoder depth).
    aliases: ClassVar[dict[str, tuple[str, ...]]] = {}
    # Fields a checkpoint may carry whose only valid value is the one we implement: value -> reason.
    unsupported: ClassVar[dict[str, tuple[Any, str]]] = {}
    # Other architectures whose config.json this one can be built from (DistilBERT from BERT, as its
    # authors built it): model_type -> renames of that config's keys to this class's fields. Common names
    # need no entry; keys that are neither are the other architecture's and are dropped.
    reads_model_types: ClassVar[dict[str, dict[str, str]]] = {}

    architectures: list[str] | None = None
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    problem_type: str | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    tie_word_embeddings: bool = True
    is_decoder: bool = False
    # What a forward returns besides its outputs, when its call does not say (HF's names and defaults):
    # every layer's hidden states, every layer's attention probabilities.
    output_attentions: bool = False
    output_hidden_states: bool = False
    # Keys of config.json that do not change the model, kept so that a round trip loses nothing.
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    PROBLEM_TYPES: ClassVar[tuple[str, ...]] = (
        "regression",
        "single_label_classification",
        "multi_label_classification",
    )

    # ---- construction -------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self._check_numbers()
        if self.id2label is not None:
            if not isinstance(self.id2label, Mapping):
                self._fail("id2label", self.id2label, "a mapping of label index to name, e.g. {'0': 'neg'}")
            try:
                self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
            except (TypeError, ValueError):
                self._fail("id2label", self.id2label, "integer keys (label indices)")
            if not self.id2label:
                raise ConfigError(f"{type(self).__name__}.id2label is empty: give at least one label.")
        if self.id2label is not None and self.label2id is None:
            self.label2id = {v: k for k, v in self.id2label.items()}
        if self.label2id is not None:
            if not isinstance(self.label2id, Mapping):
                self._fail("label2id", self.label2id, "a mapping of label name to index, e.g. {'neg': 0}")
            try:
                self.label2id = {str(k): int(v) for k, v in self.label2id.items()}
            except (TypeError, ValueError):
                self._fail("label2id", self.label2id, "integer values (label indices)")
        if self.problem_type is not None and self.problem_type not in self.PROBLEM_TYPES:
            self._fail("problem_type", self.problem_type, f"one of {list(self.PROBLEM_TYPES)}")
        for name, (value, reason) in self.unsupported.items():
            got = getattr(self, name)
            if got != value:
                self._fail(name, got, f"{value!r} ({reason})")
        self.validate()

    def _check_numbers(self) -> None:
        """Float fields hold finite numbers: a string passes the dataclass, then fails deep in a layer."""
        for f in dataclasses.fields(self):
            kind = (f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")).replace(" ", "")
            if kind not in ("float", "float|None"):
                continue
            value = getattr(self, f.name)
            if value is None and kind == "float|None":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                self._fail(f.name, value, "a finite number" + (" or null" if "None" in kind else ""))

    def validate(self) -> None:
        """Cross-field checks of one architecture; raise `ConfigError` through `_fail`."""

    def _fail(self, name: str, value: Any, valid: str) -> None:
        raise ConfigError(f"{type(self).__name__}.{name}={value!r} is not valid: expected {valid}.", key=name)

    def _check_positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                self._fail(name, value, "a positive integer")

    def _check_dropout(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                self._fail(name, value, "a probability in [0, 1)")

    def _check_divides(self, heads: str, width: str) -> None:
        h, w = getattr(self, heads), getattr(self, width)
        if w % h:
            divisors = [d for d in range(1, min(w, 64) + 1) if w % d == 0]
            self._fail(heads, h, f"a divisor of {width}={w}, such as {divisors}")

    def _check_choice(self, name: str, choices: tuple[str, ...] | list[str]) -> None:
        value = getattr(self, name)
        if value not in choices:
            self._fail(name, value, f"one of {sorted(choices)}")

    # ---- common names ---------------------------------------------------------------------------------
    # `config.num_hidden_layers` reads the first field the common name stands for and sets all of them,
    # as HF's `attribute_map` does.
    def __getattr__(self, name: str) -> Any:
        targets = type(self).aliases.get(name)
        if targets is None:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return getattr(self, targets[0])

    def __setattr__(self, name: str, value: Any) -> None:
        for target in type(self).aliases.get(name, (name,)):
            object.__setattr__(self, target, value)

    # ---- labels ---------------------------------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        """Number of classification labels; HF's default is 2 (`LABEL_0`, `LABEL_1`)."""
        return len(self.id2label) if self.id2label is not None else 2

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            self._fail("num_labels", n, "a positive integer")
        if self.id2label is None or len(self.id2label) != n:
            self.id2label = {i: f"LABEL_{i}" for i in range(n)}
            self.label2id = {v: k for k, v in self.id2label.items()}

    # ---- dict and json --------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "extra"]

    @classmethod
    def valid_keys(cls) -> list[str]:
        return sorted({*cls.field_names(), *cls.aliases, "num_labels"})

    @classmethod
    def expand_aliases(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Rewrite common names (`num_hidden_layers`, ...) to this architecture's fields.

        A field given by its own name wins over a common name in the same dict, whatever the key order:
        old BART files hold `"num_hidden_layers": 12` next to `"decoder_layers": 6` (distilbart).
        """
        out: dict[str, Any] = {}
        for key, value in values.items():
            for target in cls.aliases.get(key, ()):
                out[target] = value
        out.update({k: v for k, v in values.items() if k not in cls.aliases})
        return out

    @classmethod
    def check_override_keys(cls, overrides: Mapping[str, Any]) -> None:
        """Raise `ConfigError` naming the first keyword argument that is not a key of this config."""
        known = sorted(cls.valid_keys())
        for key in overrides:
            if key not in known:
                raise ConfigError(
                    f"Unknown {cls.__name__} keyword argument {key!r}.{did_you_mean(key, known)} "
                    f"Valid keys: {known}.",
                    key=key,
                )

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, strict: bool = False, **overrides: Any) -> PretrainedConfig:
        """Build a config from a `config.json` dict plus keyword overrides.

        Unknown keys in `values` are kept in `extra` (checkpoints carry many harmless ones) unless
        `strict`; unknown override keys are always an error, since they are typed by a person.
        """
        values = dict(values)
        model_type = values.pop("model_type", cls.model_type)
        if model_type in cls.reads_model_types:
            values = cls._translate(model_type, values)
        elif model_type != cls.model_type:
            raise ConfigError(
                f"model_type={model_type!r} cannot be read by {cls.__name__}, "
                f"which reads model_type={[cls.model_type, *cls.reads_model_types]!r}."
            )
        cls.check_override_keys(overrides)
        known = set(cls.valid_keys())
        if strict:
            for key in values:
                if key not in known:
                    raise ConfigError(
                        f"Unknown {cls.__name__} key {key!r}.{did_you_mean(key, sorted(known))} "
                        f"Valid keys: {sorted(known)}.",
                        key=key,
                    )
        values = cls.expand_aliases(values)
        overrides = cls.expand_aliases(overrides)
        num_labels = overrides.pop("num_labels", values.pop("num_labels", None))
        if "id2label" in overrides:
            overrides.setdefault("label2id", None)
        merged = {**values, **overrides}
        names = set(cls.field_names())
        kwargs = {k: v for k, v in merged.items() if k in names}
        extra = {k: v for k, v in merged.items() if k not in names and k != "extra"}
        config = cls(**kwargs)
        config.extra = extra
        if num_labels is not None:
            config.num_labels = num_labels
        return config

    @classmethod
    def _translate(cls, model_type: str, values: dict[str, Any]) -> dict[str, Any]:
        """Another architecture's config values under this class's names (see `reads_model_types`)."""
        renames = cls.reads_model_types[model_type]
        known = set(cls.valid_keys()) - {"architectures"}  # its classes are not ours
        out = {}
        for key, value in values.items():
            key = renames.get(key, key)
            if key in known:
                out[key] = value
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        for name in self.field_names():
            out[name] = getattr(self, name)
        out["id2label"] = {str(k): v for k, v in self._labels().items()}
        out["label2id"] = {v: k for k, v in self._labels().items()}
        out["model_type"] = self.model_type
        return out

    def _labels(self) -> dict[int, str]:
        return self.id2label if self.id2label is not None else {0: "LABEL_0", 1: "LABEL_1"}

    def to_diff_dict(self) -> dict[str, Any]:
        """`to_dict()` without the task and output fields (`architectures`, labels, `problem_type`,
        `output_attentions`, `output_hidden_states`) left at their defaults, as transformers 5's `to_diff_dict`: the model's own fields always stay."""
        shared = {
            "architectures",
            "id2label",
            "label2id",
            "problem_type",
            "output_attentions",
            "output_hidden_states",
        }
        try:
            default = type(self)().to_dict()
        except (TypeError, ConfigError):  # a user's config class whose fields need values: keep all
            default = {}
        return {
            k: v
            for k, v in self.to_dict().items()
            if k == "model_type" or k not in shared or k not in default or v != default[k]
        }

    def to_json_string(self, use_diff: bool = False) -> str:
        """The config as `config.json` holds it (sorted keys); `use_diff` drops shared defaults."""
        values = self.to_diff_dict() if use_diff else self.to_dict()
        return json.dumps(values, indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike, use_diff: bool = False) -> None:
        """Write `to_json_string(use_diff)` to `path` (atomically)."""
        from factory.checkpoints.atomic import atomic_write_text

        atomic_write_text(Path(path), self.to_json_string(use_diff))

    def __repr__(self) -> str:
        # transformers prints `BertConfig { ...JSON... }`, and the tutorials show that output.
        return f"{type(self).__name__} {self.to_json_string(use_diff=True)}"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # @dataclass on a subclass would write its own field-by-field repr over the one above; it keeps
        # a `__repr__` the class already defines.
        if "__repr__" not in vars(cls):
            cls.__repr__ = PretrainedConfig.__repr__

    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides: Any) -> PretrainedConfig:
        path = Path(path)
        cls.check_override_keys(overrides)  # a typo in an argument is the caller's, not the file's
        values = read_json(path, ConfigError)
        if not isinstance(values, dict):
            raise ConfigError(f"{path} holds a JSON {type(values).__name__}, not an object of config keys.")
        try:
            return cls.from_dict(values, **overrides)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}", key=e.key) from None

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
        """Read `config.json` of a checkpoint folder or hub id, with keyword overrides as in HF."""
        from factory.checkpoints.hub import HubOptions, resolve_file

        hub = HubOptions(revision, cache_dir, local_files_only)
        return cls.from_json_file(resolve_file(name_or_path, CONFIG_NAME, hub=hub), **overrides)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        from factory.checkpoints.atomic import atomic_write_text

        atomic_write_text(Path(save_directory) / CONFIG_NAME, self.to_json_string())

    def replace(self, **changes: Any) -> PretrainedConfig:
        """A copy with `changes` applied (common names allowed), validated again."""
        return type(self).from_dict(self.to_dict(), **changes)
