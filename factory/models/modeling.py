"""The base class of every model: construction, initialisation, and HF checkpoints in and out."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from factory import registry
from factory.checkpoints.hub import HubOptions
from factory.checkpoints.weights import CheckpointTable, load_into, override_error, save_state
from factory.config import ConfigError, PretrainedConfig
from factory.contract.errors import CheckpointError
from factory.generation.model import GenerationMixin
from factory.models.outputs import ModelOutput

logger = logging.getLogger(__name__)


def estimate_num_parameters(model_cls: type[PreTrainedModel], config: PretrainedConfig) -> dict[str, int]:
    """Parameters `model_cls(config)` would have, without building it: `{"total": n, <depth field>: n}`.

    Builds the model on the meta device with one and with two layers per stack (no memory, a few ms)
    and extrapolates linearly in each of `config.depth_fields`, so a config asking for a billion layers
    is measured as fast as a tiny one. Each depth field's entry is what its layers contribute.
    """
    from factory.checkpoints.weights import SkipMetaInit

    depth = [f for f in type(config).depth_fields if isinstance(getattr(config, f), int)]

    def count(**layers: int) -> int:
        with torch.device("meta"), SkipMetaInit():
            model = model_cls(config.replace(**layers) if layers else config)
        # Tied parameters count once, as they are stored once.
        return sum(p.numel() for p in model.parameters())

    if not depth:
        return {"total": count()}
    one = dict.fromkeys(depth, 1)
    base = count(**one)
    out = {"total": base}
    for f in depth:
        per_layer = count(**{**one, f: 2}) - base
        out[f] = per_layer * getattr(config, f)
        out["total"] += per_layer * (getattr(config, f) - 1)
    return out


def memory_bytes() -> int | None:
    """This machine's total RAM in bytes (psutil if installed, else sysconf), or None if unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits_in_memory(
    model_cls: type[PreTrainedModel],
    config: PretrainedConfig,
    dtype: torch.dtype | None = None,
    source: str = "config",
) -> int:
    """Raise ConfigError if the parameters of `model_cls(config)` alone exceed this machine's RAM.

    Allocating them first would swap or hang for minutes before failing. Returns the estimated count.
    """
    sizes = estimate_num_parameters(model_cls, config)
    total = sizes.pop("total")
    itemsize = (dtype or torch.float32).itemsize
    ram = memory_bytes()
    if ram is None or total * itemsize <= ram:
        return total
    key = max(sizes, key=sizes.get) if sizes else None
    if key is not None and sizes[key] * 2 > total:
        cause, name = f"{key}={getattr(config, key)}", key
    else:
        dims = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "max_position_embeddings",
            "d_model",
            "n_embd",
        )
        cause = ", ".join(f"{d}={getattr(config, d)}" for d in dims if d in config.field_names())
        name = None
    raise ConfigError(
        f"{source}: {cause} gives about {total:.3g} parameters, {total * itemsize / 2**30:,.0f} GiB in "
        f"{str(dtype or torch.float32).removeprefix('torch.')}, more than this machine's "
        f"{ram / 2**30:,.0f} GiB of memory. Check the value; a model this size cannot be loaded here.",
        key=name,
    )


def wanted_outputs(
    config: PretrainedConfig, output_attentions: bool | None, output_hidden_states: bool | None
) -> tuple[bool, bool]:
    """`(output_attentions, output_hidden_states)` for one forward: the call's value, else the config's."""
    attentions = config.output_attentions if output_attentions is None else output_attentions
    hidden = config.output_hidden_states if output_hidden_states is None else output_hidden_states
    return bool(attentions), bool(hidden)


def init_normal(module: nn.Module, std: float) -> None:
    """HF's common init of one module (not its children): Linear and Embedding weights from
    normal(0, std) with zero biases and a zero padding row, LayerNorm weights 1 and biases 0; any other
    module is left alone, for the architecture's `_init_weights` to add what it does differently."""
    if isinstance(module, nn.Linear):
        module.weight.normal_(0.0, std)
        if module.bias is not None:
            module.bias.zero_()
    elif isinstance(module, nn.Embedding):
        module.weight.normal_(0.0, std)
        if module.padding_idx is not None:
            module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        module.weight.fill_(1.0)
        module.bias.zero_()


# The fields `output_attentions` / `output_hidden_states` fill; a head passes its backbone's on.
PROBE_FIELDS = (
    "hidden_states",
    "attentions",
    "cross_attentions",
    "encoder_hidden_states",
    "encoder_attentions",
    "decoder_hidden_states",
    "decoder_attentions",
)


def probes(out: ModelOutput) -> dict[str, tuple[torch.Tensor, ...]]:
    """The hidden-state and attention tuples that `out` holds, to pass on as `ModelOutput(**probes(out))`."""
    return {k: getattr(out, k) for k in PROBE_FIELDS if getattr(out, k) is not None}


def task_loss(head: str) -> Any:
    """The loss the model classes of `head` compute when given labels: the head's `model_loss`, which
    lives with the task (`factory/heads/<name>.py`), as transformers' `loss_function` of its models."""
    loss = getattr(registry.get_head(head), "model_loss", None)
    if loss is None:
        raise ConfigError(
            f"head {head!r} declares no model_loss for its model classes to compute.", key="head"
        )
    return loss


# What the heads of every architecture compute alike from their logits; the modules that make the logits
# (and own parameters) stay in each architecture's file, under its names.
def sequence_classification_output(
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    config: PretrainedConfig,
    out: ModelOutput,
    **fields: Any,
) -> ModelOutput:
    """A sequence-classification head's output from its (B, num_labels) logits, with `fields` (what HF's
    class of that architecture also returns) and `out`'s probes."""
    loss = task_loss("seqcls")(logits, labels, config) if labels is not None else None
    return ModelOutput(loss=loss, logits=logits, **fields, **probes(out))


def causal_lm_output(
    logits: torch.Tensor, labels: torch.Tensor | None, out: ModelOutput, shift: bool
) -> ModelOutput:
    """A causal LM's output from its (B, T, vocab) logits; `shift`: whether `labels` are the input tokens."""
    loss = task_loss("causal_lm")(logits, labels, shift=shift) if labels is not None else None
    return ModelOutput(loss=loss, logits=logits, past_key_values=out.past_key_values, **probes(out))


def masked_lm_output(logits: torch.Tensor, labels: torch.Tensor | None, out: ModelOutput) -> ModelOutput:
    """A masked LM's output from its (B, T, vocab) logits."""
    loss = task_loss("masked_lm")(logits, labels) if labels is not None else None
    return ModelOutput(loss=loss, logits=logits, **probes(out))


def seq2seq_lm_output(logits: torch.Tensor, labels: torch.Tensor | None, out: ModelOutput) -> ModelOutput:
    """An encoder-decoder LM's output from its (B, T, vocab) logits, with the cache and the encoder's state."""
    loss = task_loss("seq2seq_lm")(logits, labels) if labels is not None else None
    return ModelOutput(
        loss=loss,
        logits=logits,
        past_key_values=out.past_key_values,
        encoder_last_hidden_state=out.encoder_last_hidden_state,
        **probes(out),
    )


def token_classification_output(
    logits: torch.Tensor, labels: torch.Tensor | None, out: ModelOutput
) -> ModelOutput:
    """A token-classification head's output from its (B, T, num_labels) logits and its backbone's `out`."""
    loss = task_loss("token_cls")(logits, labels) if labels is not None else None
    return ModelOutput(loss=loss, logits=logits, past_key_values=out.past_key_values, **probes(out))


def question_answering_output(
    logits: torch.Tensor,
    start_positions: torch.Tensor | None,
    end_positions: torch.Tensor | None,
    out: ModelOutput,
    **fields: Any,
) -> ModelOutput:
    """A span head's output from its (B, T, 2) logits: start and end logits, the loss when both positions
    are given, `fields` (an encoder-decoder's `encoder_last_hidden_state`) and `out`'s probes."""
    start, end = logits.unbind(-1)  # (B, T) each
    loss = None
    if start_positions is not None and end_positions is not None:
        loss = task_loss("qa")(start, end, start_positions, end_positions)
    return ModelOutput(
        loss=loss, start_logits=start.contiguous(), end_logits=end.contiguous(), **fields, **probes(out)
    )


def choices_as_rows(*inputs: torch.Tensor | None) -> list[torch.Tensor | None]:
    """(B, num_choices, T) inputs as (B * num_choices, T): each (context, choice) pair is a row of its own
    through the backbone. None stays None."""
    return [x.reshape(-1, x.size(-1)) if x is not None else None for x in inputs]


def multiple_choice_output(
    scores: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor | None, out: ModelOutput
) -> ModelOutput:
    """A multiple-choice head's output from its (B * num_choices, 1) scores, one per row that
    `choices_as_rows` made of the (B, num_choices, T) `input_ids`; softmax over a row's choices."""
    logits = scores.view(input_ids.shape[:2])  # (B, num_choices)
    loss = task_loss("multiple_choice")(logits, labels) if labels is not None else None
    return ModelOutput(loss=loss, logits=logits, **probes(out))


class PreTrainedModel(GenerationMixin, nn.Module):
    """A model whose parameter names are those of the HF checkpoints of its architecture; the models of
    the heads that generate text have transformers' `generate` (`factory.generation.model`).

    Subclasses set `config_class`, `base_model_prefix` (the attribute holding the backbone in head
    models, as in HF), `checkpoint_table`, and implement `_init_weights(module)` (HF's scheme, applied to
    one module, not recursively) and, if they tie weights, `tied_groups()`.
    """

    # No defaults: `register_model` refuses a class that does not set them.
    config_class: ClassVar[type[PretrainedConfig]]
    base_model_prefix: ClassVar[str]
    checkpoint_table: ClassVar[CheckpointTable]
    head: ClassVar[str] = "base"
    # Causal LM heads: whether `labels` are the input tokens (shifted inside, HF's GPT-2 and BERT) or
    # already the next tokens (HF's BartForCausalLM). Training code reads this.
    labels_shifted_inside: ClassVar[bool] = True

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ConfigError(
                f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}."
            )
        self.config = config

    # ---- weights ------------------------------------------------------------------------------------
    def post_init(self) -> None:
        """Initialise every parameter with the architecture's scheme, then tie; call at the end of __init__."""
        # Children before parents, as `nn.Module.apply` does (a parent's scheme may override its
        # children's, as GPT-2's scaled residual projections do). Modules a nested model already
        # initialised are skipped, so the backbone of a head model is initialised once.
        with torch.no_grad():
            for module in reversed(list(self.modules())):
                if not getattr(module, "_factory_initialised", False):
                    self._init_weights(module)
                    module._factory_initialised = True
        self.tie_weights()

    def _init_weights(self, module: nn.Module) -> None:
        raise NotImplementedError

    def tied_groups(self) -> list[tuple[str, ...]]:
        """Groups of parameter names that share one tensor; the first name is the one saved to disk.

        Names the model does not have may appear: they are other spellings of the tensor in files.
        """
        return []

    def tie_weights(self) -> None:
        params = dict(self.named_parameters(remove_duplicate=False))
        for group in self.tied_groups():
            present = [k for k in group if k in params]
            if len(present) < 2:
                continue
            source = params[present[0]]
            for name in present[1:]:
                module_name, _, attr = name.rpartition(".")
                setattr(self.get_submodule(module_name), attr, source)

    def num_layers_for(self, key: str) -> int:
        """How many layers the model has in the stack that `key` belongs to."""
        return self.config.num_hidden_layers

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    # ---- checkpoints --------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        config: PretrainedConfig | None = None,
        output_loading_info: bool = False,
        ignore_mismatched_sizes: bool = False,
        allow_bin: bool = True,
        dtype: torch.dtype | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        layers: str | list[int] = "first",
        **config_overrides: Any,
    ):
        """Load a Hugging Face checkpoint (a folder, or a hub id with `revision`/`cache_dir`) into this class.

        Keyword arguments that are config keys override `config.json` (`num_labels=3`,
        `num_hidden_layers=10`: the layers `layers` picks, first 10 by default, load and the rest are
        reported as dropped). Weights are
        loaded in float32 unless `dtype` says otherwise. `allow_bin=False` refuses `pytorch_model.bin`.
        """
        hub = HubOptions(revision, cache_dir, local_files_only)
        if config is None:
            config = cls.config_class.from_pretrained(
                name_or_path,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                **config_overrides,
            )
        elif config_overrides:
            config = config.replace(**config_overrides)
        check_fits_in_memory(cls, config, dtype, source=f"{name_or_path}/config.json")
        try:
            model, info = load_into(
                cls,
                config,
                name_or_path,
                dtype=dtype,
                ignore_mismatched_sizes=ignore_mismatched_sizes,
                allow_bin=allow_bin,
                hub=hub,
                layers=layers,
            )
        except CheckpointError as e:
            if not (config_overrides and e.mismatched):
                raise
            saved = cls.config_class.from_pretrained(
                name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
            )
            raise override_error(saved, name_or_path, config_overrides, e) from None
        model.eval()
        return (model, info.as_dict()) if output_loading_info else model

    def save_pretrained(self, save_directory: str | os.PathLike, max_shard_size: int | str = "5GB") -> None:
        """Write `config.json` and `model.safetensors` (or shards and an index) as `transformers` does."""
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        self.config.architectures = [type(self).__name__]
        save_state(self, save_directory, max_shard_size=max_shard_size)
        self.config.save_pretrained(save_directory)
