"""Reading and writing Hugging Face checkpoints: safetensors, shards, `.bin`, tied and legacy keys.

What differs between a checkpoint's keys and our parameter names is data in each architecture's
`CheckpointTable`; the one generic loader below applies it. Loading builds the model on the `meta`
device and assigns the file's tensors, so no time goes into an initialisation that would be thrown away.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from factory.checkpoints.atomic import atomic_files
from factory.checkpoints.files import read_json
from factory.checkpoints.hub import HubOptions, resolve_file
from factory.contract.errors import CheckpointError

logger = logging.getLogger(__name__)

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_WEIGHTS = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
_WEIGHT_FILE = re.compile(
    r"^(model(-\d+-of-\d+)?\.safetensors|pytorch_model(-\d+-of-\d+)?\.bin)(\.index\.json)?$"
)


@dataclass(frozen=True)
class CheckpointTable:
    """How one architecture's checkpoint keys differ from its parameter names.

    renames: (regex, replacement) applied to every file key, e.g. legacy `LayerNorm.gamma`.
    ignore: regexes of file keys that hold no weights of ours (old buffers such as `attn.bias`).
    transposed: regexes of 2-d weights stored as (in, out) in files, as GPT-2's Conv1D stores them.
    layer: regex whose group 1 is a layer index, to report and drop layers beyond the model's depth.
    """

    renames: tuple[tuple[str, str], ...] = ()
    ignore: tuple[str, ...] = ()
    transposed: tuple[str, ...] = ()
    layer: str | None = None

    def rename(self, key: str) -> str:
        for pattern, replacement in self.renames:
            key = re.sub(pattern, replacement, key)
        return key

    def is_ignored(self, key: str) -> bool:
        return any(re.search(p, key) for p in self.ignore)

    def is_transposed(self, key: str) -> bool:
        return any(re.search(p, key) for p in self.transposed)


# Legacy names every architecture may meet: TF-era BERT files store LayerNorm as gamma/beta.
COMMON_RENAMES: tuple[tuple[str, str], ...] = (
    (r"LayerNorm\.gamma$", "LayerNorm.weight"),
    (r"LayerNorm\.beta$", "LayerNorm.bias"),
)


@dataclass
class LoadingInfo:
    """What a load did; `output_loading_info=True` returns it as a dict with HF's key names."""

    missing_keys: list[str] = field(default_factory=list)  # newly initialised
    unexpected_keys: list[str] = field(default_factory=list)  # in the file, dropped
    mismatched_keys: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    dropped_layers: list[int] = field(default_factory=list)
    kept_layers: dict[str, list[int]] = field(default_factory=dict)  # stack -> file layers kept, in order
    files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "missing_keys": self.missing_keys,
            "unexpected_keys": self.unexpected_keys,
            "mismatched_keys": self.mismatched_keys,
            "dropped_layers": self.dropped_layers,
            "kept_layers": self.kept_layers,
            "files": self.files,
            "error_msgs": [],
        }


# ---- reading ----------------------------------------------------------------------------------------
class _Reader:
    """Lazy access to the tensors of one checkpoint, whatever its file layout."""

    def __init__(self, files: list[Path], safetensors: bool) -> None:
        self.files = files
        self._where: dict[str, Path] = {}
        self._handles: dict[Path, Any] = {}
        self._bin: dict[Path, dict[str, torch.Tensor]] = {}
        for path in files:
            if safetensors:
                from safetensors import SafetensorError, safe_open

                try:
                    handle = safe_open(str(path), framework="pt", device="cpu")
                except SafetensorError as e:
                    # safetensors' own message names neither the file nor what to do about it.
                    raise CheckpointError(
                        f"{path} is not a readable safetensors file ({_size(path)}): {e}. It is probably "
                        f"truncated or corrupt (an interrupted download or copy); fetch or write it again."
                    ) from None
                self._handles[path] = handle
                keys: Iterable[str] = handle.keys()
            else:
                # mmap needs the zip format (torch >= 1.6); older files are read whole, still weights_only.
                zipped = zipfile.is_zipfile(path)
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
                if not isinstance(state, dict):
                    raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict.")
                self._bin[path] = state
                keys = state.keys()
            for key in keys:
                self._where[key] = path

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, key: str) -> tuple[int, ...]:
        path = self._where[key]
        if path in self._handles:
            return tuple(self._handles[path].get_slice(key).get_shape())
        return tuple(self._bin[path][key].shape)

    def get(self, key: str) -> torch.Tensor:
        path = self._where[key]
        if path in self._handles:
            from safetensors import SafetensorError

            try:
                return self._handles[path].get_tensor(key)
            except SafetensorError as e:
                raise CheckpointError(f"{path}: tensor {key!r} cannot be read: {e}.") from None
        return self._bin[path][key]


def _size(path: Path) -> str:
    try:
        return f"{path.stat().st_size} bytes"
    except OSError as e:
        return f"cannot stat: {e.strerror}"


def _checked_shard_names(
    name_or_path: str | os.PathLike, index_file: Path, hub: HubOptions | None
) -> list[Path]:
    index = read_json(index_file, CheckpointError)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(
            f"{index_file} is not a valid shard index: 'weight_map' is {type(weight_map).__name__}, "
            f"expected an object mapping tensor names to shard files."
        )
    names = list(dict.fromkeys(weight_map.values()))
    for name in names:
        # A shard name is a file name inside the checkpoint folder; anything else could read any file.
        # Checked on the name, before anything is opened (hub-cache files are links to blobs elsewhere).
        if not isinstance(name, str) or os.path.isabs(name) or ".." in Path(name).parts or "\\" in name:
            raise CheckpointError(f"{index_file} names shard {name!r}, which leaves the checkpoint folder.")
    shards = []
    for name in names:
        try:
            shards.append(resolve_file(name_or_path, name, hub=hub))
        except FileNotFoundError as e:
            raise CheckpointError(f"{index_file} names shard {name!r}, which cannot be found: {e}") from None
    return shards


def checkpoint_files(
    name_or_path: str | os.PathLike, allow_bin: bool = True, hub: HubOptions | None = None
) -> tuple[list[Path], bool]:
    """The weight files of a checkpoint and whether they are safetensors; safetensors win over `.bin`."""
    for name, index in ((SAFE_WEIGHTS, SAFE_INDEX), (BIN_WEIGHTS, BIN_INDEX)):
        safe = name == SAFE_WEIGHTS
        if not safe and not allow_bin:
            break
        path = resolve_file(name_or_path, name, required=False, hub=hub)
        if path is not None:
            return [path], safe
        path = resolve_file(name_or_path, index, required=False, hub=hub)
        if path is not None:
            return _checked_shard_names(name_or_path, path, hub), safe
    looked = [SAFE_WEIGHTS, SAFE_INDEX] + ([BIN_WEIGHTS, BIN_INDEX] if allow_bin else [])
    extra = "" if allow_bin else f" ({BIN_WEIGHTS} was not considered: allow_bin=False)"
    raise FileNotFoundError(f"No weights in {name_or_path}: looked for {looked}{extra}.")


# ---- matching file keys to parameters -------------------------------------------------------------
def _align_prefix(keys: list[str], expected: set[str], prefix: str) -> dict[str, str]:
    """Map file keys to model keys by adding or stripping the base-model prefix, whichever fits best.

    A headless file (`embeddings.*`) loads into a head model (`bert.embeddings.*`) and a head file
    (`bert.*`, `classifier.*`) into the headless model; keys that match nothing stay as they are.
    """
    p = prefix + "."
    candidates = [
        {k: k for k in keys},
        {k: p + k for k in keys},
        {k: k[len(p) :] if k.startswith(p) else k for k in keys},
    ]
    scores = [sum(v in expected for v in c.values()) for c in candidates]
    best = candidates[scores.index(max(scores))]
    # A key the best alignment misses (a head's `lm_head.weight` beside an unprefixed backbone) keeps
    # whichever spelling the model has.
    return {
        k: v if v in expected else next((c[k] for c in candidates if c[k] in expected), v)
        for k, v in best.items()
    }


LAYER_CHOICES = ("first", "last", "even")


def select_layers(
    n_file: int, n_model: int, choice: str | list[int] | tuple[int, ...] = "first"
) -> list[int]:
    """Which of a checkpoint's `n_file` layers fill a model of `n_model` layers, in order.

    `first` (HF's behaviour), `last`, `even` (spread evenly, first and last included), or explicit indices.
    """
    if isinstance(choice, str):
        if choice == "first":
            return list(range(n_model))
        if choice == "last":
            return list(range(n_file - n_model, n_file))
        if choice == "even":
            if n_model == 1:
                return [0]
            return [round(i * (n_file - 1) / (n_model - 1)) for i in range(n_model)]
        raise ValueError(
            f"layers={choice!r} is not valid: expected one of {list(LAYER_CHOICES)} or a list of indices."
        )
    chosen = [int(i) for i in choice]
    if len(chosen) != n_model or len(set(chosen)) != n_model or not all(0 <= i < n_file for i in chosen):
        raise ValueError(
            f"layers={chosen} is not valid: expected {n_model} distinct indices in [0, {n_file}) "
            f"(the model has {n_model} layers, the checkpoint {n_file})."
        )
    return chosen


class SkipMetaInit(TorchFunctionMode):
    """Skip weight initialisation on meta tensors while a model is built to be loaded.

    Meta tensors hold no data, so `reset_parameters` and `_init_weights` achieve nothing there, yet torch
    runs `normal_` on meta through its Python decompositions, whose first call imports `torch._dynamo`
    (0.8 s of a cold start here). What the file does not supply is initialised for real by `_materialize`.
    """

    _TENSOR_INITS = frozenset(
        {torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.fill_, torch.Tensor.zero_}
    )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._TENSOR_INITS or (
            getattr(func, "__module__", None) == "torch.nn.init" and func.__name__.endswith("_")
        ):
            target = args[0] if args else kwargs.get("tensor")
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


def load_into(
    model_cls: type,
    config: Any,
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    ignore_mismatched_sizes: bool = False,
    allow_bin: bool = True,
    hub: HubOptions | None = None,
    layers: str | list[int] = "first",
) -> tuple[nn.Module, LoadingInfo]:
    """Build `model_cls(config)` on the meta device and fill it from the checkpoint's files.

    A model shallower than the checkpoint takes the layers `layers` chooses (see `select_layers`) and
    reports the others as dropped; a deeper one is an error unless `ignore_mismatched_sizes`.
    """
    dtype = dtype or torch.float32
    table: CheckpointTable = model_cls.checkpoint_table
    files, safe = checkpoint_files(name_or_path, allow_bin=allow_bin, hub=hub)
    reader = _Reader(files, safe)
    info = LoadingInfo(files=[f.name for f in files])

    with torch.device("meta"), SkipMetaInit():
        model = model_cls(config)
    expected = model.state_dict()  # names -> meta tensors (tied names appear once each)
    groups = [tuple(g) for g in model.tied_groups()]
    known = set(expected) | {k for g in groups for k in g}

    # File key -> model key, after legacy renames and prefix alignment.
    renamed: dict[str, str] = {}
    for key in reader.keys():
        if table.is_ignored(key):
            continue
        renamed[key] = table.rename(key)
    aligned = _align_prefix(list(renamed.values()), known, model.base_model_prefix)
    renumber = _layer_plan(
        table, model, aligned.values(), layers, ignore_mismatched_sizes, name_or_path, info
    )
    source: dict[str, str] = {}  # model key -> file key
    for file_key, name in renamed.items():
        target = renumber(aligned[name])
        if target in known:
            source[target] = file_key
        else:
            info.unexpected_keys.append(file_key)

    def read(model_key: str) -> torch.Tensor:
        t = reader.get(source[model_key])
        if table.is_transposed(model_key) and t.dim() == 2:
            t = t.t()
        return t

    state: dict[str, torch.Tensor] = {}
    # Tied weights: any copy in the file supplies every member the model has; copies must agree.
    for group in groups:
        present = [k for k in group if k in source]
        if not present:
            continue
        first = read(present[0])
        for other in present[1:]:
            t = read(other)
            if t.shape != first.shape or not torch.equal(t, first):
                raise CheckpointError(
                    f"Tied weights differ in {name_or_path}: {source[present[0]]!r} and {source[other]!r} "
                    f"should be equal copies (a model that ties them cannot hold both)."
                )
        for k in group:
            if k in expected:
                state[k] = first
    for k in source:
        if k in expected and k not in state:
            state[k] = read(k)

    for k in list(state):
        want, got = tuple(expected[k].shape), tuple(state[k].shape)
        if want != got:
            info.mismatched_keys.append((k, got, want))
            del state[k]
    if info.mismatched_keys and not ignore_mismatched_sizes:
        mismatched = info.mismatched_keys
        lines = "\n".join(f"  {k}: checkpoint {list(g)} vs model {list(w)}" for k, g, w in mismatched[:10])
        more = f"\n  ... and {len(mismatched) - 10} more" if len(mismatched) > 10 else ""
        raise CheckpointError(
            f"Shapes in {name_or_path} do not fit {model_cls.__name__}:\n{lines}{more}\n"
            f"Fix the config, or pass ignore_mismatched_sizes=True to initialise these afresh.",
            mismatched=mismatched,
        )

    prefix = model.base_model_prefix + "."
    # A head model holds its backbone under the prefix (`bert.`); a backbone is all backbone.
    headless = not hasattr(model, model.base_model_prefix)
    backbone = [k for k in expected if headless or k.startswith(prefix)]
    matched = [k for k in backbone if k in state or any(k == m[0] for m in info.mismatched_keys)]
    if backbone and len(matched) < len(backbone) / 2:
        sample = sorted(renamed)[:5]
        raise CheckpointError(
            f"{name_or_path} does not look like a {model_cls.__name__} checkpoint: only {len(matched)} of "
            f"{len(backbone)} backbone tensors found (file keys start like {sample}; expected keys like "
            f"{backbone[:3]}). Loading it would leave most of the model random."
        )

    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    # After the cast: a float32 value beyond float16's range becomes inf there. A model with NaN or inf
    # weights gives NaN outputs without any error, so say which tensors at load time.
    nonfinite = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nonfinite:
        logger.warning(
            "%s holds non-finite values (NaN or inf) in %d tensor(s): %s; the model's outputs will be NaN.",
            name_or_path,
            len(nonfinite),
            _summarise(nonfinite, limit=4),
        )
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    info.missing_keys = _materialize(model, dtype)
    info.unexpected_keys.sort()
    if info.missing_keys or info.unexpected_keys or info.mismatched_keys:
        # Random weights in a loaded model deserve the user's attention; dropped ones are routine.
        level = logging.WARNING if info.missing_keys else logging.INFO
        logger.log(
            level,
            "Loaded %s from %s: newly initialised %s; dropped from file %s%s",
            model_cls.__name__,
            name_or_path,
            _summarise(info.missing_keys) or "nothing",
            _summarise(info.unexpected_keys) or "nothing",
            f"; shape-mismatched (re-initialised) {[m[0] for m in info.mismatched_keys]}"
            if info.mismatched_keys
            else "",
        )
    return model, info


def _layer_plan(table, model, targets, layers, ignore_mismatched_sizes, name_or_path, info: LoadingInfo):
    """Plan which file layer fills which model layer; returns a function renaming a key accordingly."""
    if table.layer is None:
        return lambda key: key
    stacks: dict[str, int] = {}  # key prefix up to the layer index -> layers in the file
    for key in targets:
        m = re.search(table.layer, key)
        if m:
            prefix = key[: m.start(1)]
            stacks[prefix] = max(stacks.get(prefix, 0), int(m.group(1)) + 1)
    plan: dict[str, dict[int, int]] = {}
    dropped: set[int] = set()
    for prefix, n_file in stacks.items():
        n_model = model.num_layers_for(prefix)
        if n_model > n_file and not ignore_mismatched_sizes:
            raise CheckpointError(
                f"{name_or_path} has {n_file} layers in {prefix}* but the model asks for {n_model} "
                f"(num_hidden_layers): a deeper model than its checkpoint would start with random layers. "
                f"Ask for at most {n_file}, or pass ignore_mismatched_sizes=True to initialise the rest afresh."
            )
        kept = select_layers(n_file, min(n_model, n_file), layers)
        plan[prefix] = {old: new for new, old in enumerate(kept)}
        if n_model < n_file:
            info.kept_layers[prefix.rstrip(".")] = kept
            dropped.update(i for i in range(n_file) if i not in kept)
    info.dropped_layers = sorted(dropped)

    def renumber(key: str) -> str:
        m = re.search(table.layer, key)
        if not m:
            return key
        prefix = key[: m.start(1)]
        new = plan[prefix].get(int(m.group(1)))
        if new is None:
            return key + "#dropped"  # matches no parameter: reported as unexpected
        return f"{prefix}{new}{key[m.end(1) :]}"

    return renumber


def _summarise(keys: list[str], limit: int = 6) -> str:
    if len(keys) <= limit:
        return ", ".join(keys)
    return ", ".join(keys[:limit]) + f" and {len(keys) - limit} more"


def _materialize(model: nn.Module, dtype: torch.dtype) -> list[str]:
    """Give the parameters no file supplied real storage and the architecture's initialisation."""
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if not missing:
        return []
    modules = dict(model.named_modules())
    for mod_name, module in list(modules.items()):
        meta = [n for n, p in module.named_parameters(recurse=False) if p.is_meta]
        if not meta:
            continue
        # Initialise the module and its parent (some schemes, like GPT-2's scaled residual projections,
        # are set by the parent), then restore what the file supplied.
        parent = modules[mod_name.rpartition(".")[0]] if mod_name else None
        scope = [module] + ([parent] if parent is not None else [])
        keep = {(id(m), n): p for m in scope for n, p in m.named_parameters(recurse=False) if not p.is_meta}
        for n in meta:
            p = getattr(module, n)
            setattr(module, n, nn.Parameter(torch.empty(p.shape, dtype=dtype), requires_grad=p.requires_grad))
        with torch.no_grad():
            for m in scope:
                model._init_weights(m)
        for m in scope:
            for n, _ in list(m.named_parameters(recurse=False)):
                if (id(m), n) in keep:
                    setattr(m, n, keep[(id(m), n)])
    model.tie_weights()
    return missing


# ---- writing ----------------------------------------------------------------------------------------
def parse_size(size: int | str) -> int:
    """Bytes in `size`: an int, or a string like "5GB", "500MB", "2GiB" (HF's units)."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)\s*", str(size), flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"max_shard_size={size!r} is not a size: use an int or e.g. '5GB', '500MB', '2GiB'.")
    number, unit = float(m.group(1)), m.group(2).upper()
    power = "BKMGT".index(unit[0]) if unit != "B" else 0
    base = 1024 if "I" in unit else 1000
    return int(number * base**power)


def save_state(
    model: nn.Module, save_directory: str | os.PathLike, max_shard_size: int | str = "5GB"
) -> list[str]:
    """Write the model's weights as HF does: tied copies left out, GPT-2 Conv1D layout restored.

    All files are written under temporary names first, so a failure (a full disk) leaves the previous
    checkpoint as it was; old weight files that the new layout does not use are removed last.
    """
    from safetensors.torch import save_file

    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    table: CheckpointTable = model.checkpoint_table
    state = model.state_dict()
    for group in model.tied_groups():
        kept = [k for k in group if k in state]
        for k in kept[1:]:
            del state[k]
    tensors = {}
    for k, t in state.items():
        t = t.detach()
        if table.is_transposed(k) and t.dim() == 2:
            t = t.t()
        tensors[k] = t.contiguous()

    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += nbytes

    if len(shards) == 1:
        names = [SAFE_WEIGHTS]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    with atomic_files(folder) as temp:
        for name, shard in zip(names, shards):
            path = temp(name)
            # safetensors writes a file of its own, mode 0600: keep the one the umask gave the temporary,
            # as every other file of the folder has.
            mode = os.stat(path).st_mode & 0o777
            save_file(shard, path, metadata={"format": "pt"})
            os.chmod(path, mode)
        if len(shards) > 1:
            index = {
                "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                "weight_map": {k: name for name, shard in zip(names, shards) for k in shard},
            }
            text = json.dumps(index, indent=2, sort_keys=True) + "\n"
            temp(SAFE_INDEX).write_text(text, encoding="utf-8")
    written = [*names, SAFE_INDEX] if len(shards) > 1 else names
    for old in folder.iterdir():
        if _WEIGHT_FILE.match(old.name) and old.name not in written:
            old.unlink()
    return sorted(written)


def override_error(
    saved: Any, name_or_path: Any, overrides: dict[str, Any], error: CheckpointError
) -> CheckpointError:
    """The shape error of a load whose keyword overrides (`hidden_size=64`) changed weight shapes, naming
    the overrides and `saved`'s values (the checkpoint's config) first: the weights follow from them."""
    changed = [
        f"{k}={v!r} (the checkpoint's: {getattr(saved, k, None)!r})"
        for k, v in overrides.items()
        if getattr(saved, k, None) != v
    ]
    shown = ", ".join(f"{k} {list(g)} -> {list(w)}" for k, g, w in error.mismatched[:3])
    more = f" and {len(error.mismatched) - 3} more" if len(error.mismatched) > 3 else ""
    n = len(error.mismatched)
    return CheckpointError(
        f"{', '.join(changed) or ', '.join(overrides)} change the shapes of {n} weight{'s' * (n != 1)} "
        f"of {name_or_path} ({shown}{more}). Drop the override to load the checkpoint as it is, or pass "
        "ignore_mismatched_sizes=True to initialise those weights afresh.",
        mismatched=error.mismatched,
    )
