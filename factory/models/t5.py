"""T5: its config, its blocks, its heads and its checkpoint table, with Hugging Face's parameter names.

Modules nest exactly as in HF checkpoints (`decoder.block.0.layer.1.EncDecAttention.q.weight`), so
loading is copying by key. An encoder and a decoder of pre-LN blocks with T5's RMS layer norm (no bias,
no mean), no biases anywhere, and no learned positions: the first block of each stack owns a table of
relative position buckets whose bias every block of that stack adds to its attention scores, which are
not scaled by head_size**-0.5. The same code serves T5 v1.0 (`feed_forward_proj="relu"`, the language
model head tied to the embeddings and its input scaled by d_model**-0.5) and T5 v1.1 / flan-t5
(`"gated-gelu"`, an untied head, no scaling). Shapes in comments: B batch, S source tokens, T target
tokens, C width (d_model), nh heads, hs head size (d_kv).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from factory.checkpoints.hub import HubOptions
from factory.checkpoints.weights import CheckpointTable, checkpoint_files
from factory.config import PretrainedConfig
from factory.contract.recipe import TokenizerRecipe
from factory.models.layers import ACTIVATIONS, activation, attention, eos_pooled, split_heads
from factory.models.modeling import (
    PreTrainedModel,
    init_normal,
    question_answering_output,
    seq2seq_lm_output,
    sequence_classification_output,
    token_classification_output,
    wanted_outputs,
)
from factory.models.outputs import ModelOutput
from factory.registry import register_config, register_model, register_public

logger = logging.getLogger(__name__)

# T5's sentinel tokens for span corruption: `<extra_id_0>` is the last id, `<extra_id_99>` the first of
# them, right after the learned pieces (the layout of t5-small's tokenizer.json).
EXTRA_IDS = 100
_SENTINELS = tuple(
    {"content": f"<extra_id_{i}>", "lstrip": False, "rstrip": False, "normalized": False}
    for i in reversed(range(EXTRA_IDS))
)


@register_config
@dataclass
class T5Config(PretrainedConfig):
    """Defaults are those of HF's `T5Config` (`google-t5/t5-small`).

    `scale_decoder_outputs` (transformers 5's name) multiplies the decoder's output by d_model**-0.5
    before the language-model head; unset, it follows `tie_word_embeddings`, which is what the field
    meant in T5 v1.0 (tied, scaled) and v1.1 (untied, unscaled) files written before it existed.
    `dense_act_fn` and `is_gated_act` are derived from `feed_forward_proj`, as HF derives them.
    """

    model_type: ClassVar[str] = "t5"
    aliases: ClassVar[dict[str, tuple[str, ...]]] = {
        "num_hidden_layers": ("num_layers", "num_decoder_layers"),
        "hidden_size": ("d_model",),
        "num_attention_heads": ("num_heads",),
        "intermediate_size": ("d_ff",),
        "max_position_embeddings": ("n_positions",),
        "head_dim": ("d_kv",),
    }
    depth_fields: ClassVar[tuple[str, ...]] = ("num_layers", "num_decoder_layers")
    # t5-small's layout: a SentencePiece unigram model with <pad>=0 </s>=1 <unk>=2, `</s>` appended to
    # every text, and the 100 sentinels last.
    tokenizer_recipe: ClassVar[TokenizerRecipe] = TokenizerRecipe(
        kind="unigram",
        tokenizer_class="T5Tokenizer",
        special_tokens=("<pad>", "</s>", "<unk>"),
        tokenizer_config={
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "extra_ids": EXTRA_IDS,
            "additional_special_tokens": [f"<extra_id_{i}>" for i in range(EXTRA_IDS)],
        },
        post_processor="template",
        template=("$A </s>", "$A </s> $B </s>"),
        added_last=_SENTINELS,
    )

    vocab_size: int = 32128
    d_model: int = 512
    # None: d_model // num_heads (HF's files always name it; a None lets `hidden_size` overrides alone
    # keep a consistent head size).
    d_kv: int | None = None
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None  # None: num_layers
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    # The length the model was trained on (t5-small's config.json); relative positions set no hard limit.
    n_positions: int = 512
    dropout_rate: float = 0.1
    classifier_dropout: float = 0.0
    layer_norm_epsilon: float = 1e-6
    initializer_factor: float = 1.0
    feed_forward_proj: str = "relu"
    dense_act_fn: str = "relu"
    is_gated_act: bool = False
    scale_decoder_outputs: bool | None = None
    is_encoder_decoder: bool = True
    use_cache: bool = True
    pad_token_id: int | None = 0
    eos_token_id: int | None = 1
    decoder_start_token_id: int | None = None  # None: pad_token_id, as T5 starts decoding from <pad>

    def __post_init__(self) -> None:
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        if self.scale_decoder_outputs is None:
            self.scale_decoder_outputs = bool(self.tie_word_embeddings)
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.pad_token_id
        if isinstance(self.feed_forward_proj, str):
            parts = self.feed_forward_proj.split("-")
            self.is_gated_act = len(parts) == 2 and parts[0] == "gated"
            # HF's "gated-gelu" (T5 v1.1) is the tanh approximation.
            self.dense_act_fn = "gelu_new" if self.feed_forward_proj == "gated-gelu" else parts[-1]
        if self.d_kv is None and isinstance(self.num_heads, int) and self.num_heads > 0:
            if isinstance(self.d_model, int) and self.d_model % self.num_heads == 0:
                self.d_kv = self.d_model // self.num_heads
        super().__post_init__()

    def validate(self) -> None:
        self._check_positive(
            "vocab_size",
            "d_model",
            "d_ff",
            "num_layers",
            "num_decoder_layers",
            "num_heads",
            "relative_attention_num_buckets",
            "relative_attention_max_distance",
            "n_positions",
        )
        if self.d_kv is None:  # not derived: the width does not split into the heads
            self._check_divides("num_heads", "d_model")
        self._check_positive("d_kv")
        parts = self.feed_forward_proj.split("-") if isinstance(self.feed_forward_proj, str) else []
        if (
            not parts
            or len(parts) > 2
            or (len(parts) == 2 and parts[0] != "gated")
            or parts[-1] not in ACTIVATIONS
        ):
            self._fail(
                "feed_forward_proj",
                self.feed_forward_proj,
                f"'<act>' or 'gated-<act>' with <act> one of {list(ACTIVATIONS)} (T5: 'relu', "
                f"T5 v1.1: 'gated-gelu')",
            )
        self._check_dropout("dropout_rate", "classifier_dropout")
        if self.layer_norm_epsilon <= 0:
            self._fail("layer_norm_epsilon", self.layer_norm_epsilon, "a positive number")


def shift_right(labels: torch.Tensor, config: T5Config) -> torch.Tensor:
    """Decoder inputs from targets, as HF's `_shift_right`: the start token first, the last dropped, -100 -> pad."""
    start, pad = config.decoder_start_token_id, config.pad_token_id
    if start is None or pad is None:
        raise ValueError(
            f"T5Config.decoder_start_token_id={start!r} and pad_token_id={pad!r} must both be set to build "
            f"decoder_input_ids; pass decoder_input_ids or set them."
        )
    shifted = labels.new_full(labels.shape, start)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill_(shifted == -100, pad)


def _linear(n_in: int, n_out: int, std: float, bias: bool = False) -> nn.Linear:
    """A Linear that remembers the std HF initialises it with (read by `_init_weights`)."""
    layer = nn.Linear(n_in, n_out, bias=bias)
    layer.init_std = std
    return layer


def _embedding(n: int, c: int, std: float) -> nn.Embedding:
    table = nn.Embedding(n, c)
    table.init_std = std
    return table


class T5LayerNorm(nn.Module):
    """RMS norm: no bias, no mean subtracted, the variance in float32; cast to a half weight's dtype, as HF."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)  # (B, T, 1)
        x = x * torch.rsqrt(variance + self.variance_epsilon)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x


class T5DenseActDense(nn.Module):
    """T5 v1.0's feed-forward: wo(act(wi(x)))."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        f = config.initializer_factor
        self.wi = _linear(config.d_model, config.d_ff, f * config.d_model**-0.5)
        self.wo = _linear(config.d_ff, config.d_model, f * config.d_ff**-0.5)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.act = activation(config.dense_act_fn, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.act(self.wi(x)))  # (B, T, d_ff)
        return self.wo(h.to(self.wo.weight.dtype))


class T5DenseGatedActDense(nn.Module):
    """T5 v1.1's gated feed-forward: wo(act(wi_0(x)) * wi_1(x))."""

    def __init__(self, config: T5Config) -> None:
        super().__init__()
        f = config.initializer_factor
        self.wi_0 = _linear(config.d_model, config.d_ff, f * config.d_model**-0.5)
        self.wi_1 = _linear(config.d_model, config.d_ff, f * config.d_model**-0.5)
        self.wo = _linear(config.d_ff, config.d_model, f * config.d_ff**-0.5)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.act = activation(config.dense_act_fn, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.act(self.wi_0(x)) * self.wi_1(x))  # (B, T, d_ff)
        # HF keeps `wo` in float32 for flan-t5-xxl in 8 bit; the input follows its dtype.
        return self.wo(h.to(self.wo.weight.dtype))


class T5LayerFF(nn.Module):
    def __init__(self, config: T5Config) -> None:
        super().__init__()
        dense = T5DenseGatedActDense if config.is_gated_act else T5DenseActDense
        self.DenseReluDense = dense(config)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.DenseReluDense(self.layer_norm(x)))


def relative_position_bucket(
    relative_position: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """Mesh TensorFlow's buckets, as HF computes them: exact for small distances, log-spaced up to
    `max_distance`, one bucket beyond; a bidirectional stack gives keys after the query their own half."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).to(torch.long) * num_buckets
        relative_position = torch.abs(relative_position)
    else:
        relative_position = -torch.min(relative_position, torch.zeros_like(relative_position))
    max_exact = num_buckets // 2
    is_small = relative_position < max_exact
    large = max_exact + (
        torch.log(relative_position.float() / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    return buckets + torch.where(is_small, relative_position, large)


class T5Attention(nn.Module):
    """Self-attention over `x`, or cross-attention from `x` to `source`; the bias (position buckets and
    masking) comes in as one additive float mask, and q.k is not scaled."""

    def __init__(self, config: T5Config, has_relative_attention_bias: bool, is_decoder: bool) -> None:
        super().__init__()
        c, hs, nh, f = config.d_model, config.d_kv, config.num_heads, config.initializer_factor
        self.n_heads = nh
        self.is_decoder = is_decoder
        self.dropout = config.dropout_rate
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        self.has_relative_attention_bias = has_relative_attention_bias
        self.q = _linear(c, nh * hs, f * (c * hs) ** -0.5)
        self.k = _linear(c, nh * hs, f * c**-0.5)
        self.v = _linear(c, nh * hs, f * c**-0.5)
        self.o = _linear(nh * hs, c, f * (nh * hs) ** -0.5)
        if has_relative_attention_bias:
            self.relative_attention_bias = _embedding(self.num_buckets, nh, f * c**-0.5)

    def compute_bias(self, q_len: int, k_len: int, past_len: int = 0) -> torch.Tensor:
        """The (1, nh, q_len, k_len) position bias; queries are the last `q_len` of `past_len + q_len`."""
        device = self.relative_attention_bias.weight.device
        context = torch.arange(q_len, dtype=torch.long, device=device)[:, None] + past_len
        memory = torch.arange(k_len, dtype=torch.long, device=device)[None, :]
        bucket = relative_position_bucket(
            memory - context, not self.is_decoder, self.num_buckets, self.max_distance
        )
        return self.relative_attention_bias(bucket).permute(2, 0, 1).unsqueeze(0)

    def forward(
        self,
        x: torch.Tensor,
        bias: torch.Tensor | None,
        source: torch.Tensor | None = None,
        past: tuple[torch.Tensor, ...] | None = None,
        want_probs: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        """Returns the output (B, T, C), this layer's keys and values (for the cache) and, with
        `want_probs`, the attention probabilities (B, nh, T, keys)."""
        q = split_heads(self.q(x), self.n_heads)  # (B, nh, T, hs)
        if source is not None and past:  # cross-attention keys do not change while decoding: reuse
            k, v = past
        else:
            src = x if source is None else source
            k, v = split_heads(self.k(src), self.n_heads), split_heads(self.v(src), self.n_heads)
            if past:  # self-attention: extend the cache with this step's keys
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        p = self.dropout if self.training else 0.0
        if not want_probs:
            y = attention(q, k, v, None if bias is None else bias.to(q.dtype), False, p, scale=1.0)
            return self.o(y), (k, v), None
        # Written out, as HF's eager attention, to return the probabilities.
        scores = q @ k.transpose(-1, -2)  # (B, nh, T, keys)
        if bias is not None:
            scores = scores + bias
        probs = F.dropout(scores.softmax(dim=-1), p=p, training=self.training)
        y = (probs @ v).transpose(1, 2).reshape(x.size(0), x.size(1), -1)
        return self.o(y), (k, v), probs


class T5LayerSelfAttention(nn.Module):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool, is_decoder: bool) -> None:
        super().__init__()
        self.SelfAttention = T5Attention(config, has_relative_attention_bias, is_decoder)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)


class T5LayerCrossAttention(nn.Module):
    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.EncDecAttention = T5Attention(config, False, True)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)


def _clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    """HF's guard for float16 training: an inf anywhere pulls every value inside the finite range."""
    if x.dtype != torch.float16:
        return x
    big = torch.finfo(x.dtype).max
    limit = torch.where(torch.isinf(x).any(), big - 1000, big)
    return torch.clamp(x, min=-limit, max=limit)


class T5Block(nn.Module):
    """Pre-LN self-attention, cross-attention (decoder only), feed-forward; `layer.0/1/2` as HF names them."""

    def __init__(self, config: T5Config, has_relative_attention_bias: bool, is_decoder: bool) -> None:
        super().__init__()
        self.is_decoder = is_decoder
        parts = [T5LayerSelfAttention(config, has_relative_attention_bias, is_decoder)]
        if is_decoder:
            parts.append(T5LayerCrossAttention(config))
        parts.append(T5LayerFF(config))
        # A Sequential (never called as one), not a ModuleList: the factory takes the modules held in
        # ModuleLists as its transformer blocks (FSDP units, activation checkpointing), and here those are
        # the `block` entries, not their sublayers. The parameter names are the same.
        self.layer = nn.Sequential(*parts)

    def forward(
        self,
        x: torch.Tensor,
        self_bias: torch.Tensor | None,
        encoder_states: torch.Tensor | None,
        cross_bias: torch.Tensor | None,
        past: tuple[torch.Tensor, ...] | None,
        want_probs: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor | None, torch.Tensor | None]:
        """`past` is (self_k, self_v) or (self_k, self_v, cross_k, cross_v); returns the new hidden
        states, the same tuple updated, and the self- and cross-attention probabilities if asked."""
        past = past or ()
        sa = self.layer[0]
        y, present, self_probs = sa.SelfAttention(
            sa.layer_norm(x), self_bias, past=past[:2], want_probs=want_probs
        )
        x = _clamp_fp16(x + sa.dropout(y))
        cross_probs = None
        if self.is_decoder and encoder_states is not None:  # as HF: no cross-attention without encoder states
            ca = self.layer[1]
            y, cross, cross_probs = ca.EncDecAttention(
                ca.layer_norm(x), cross_bias, source=encoder_states, past=past[2:], want_probs=want_probs
            )
            x = _clamp_fp16(x + ca.dropout(y))
            present = present + cross
        x = _clamp_fp16(self.layer[-1](x))
        return x, present, self_probs, cross_probs


def _additive_mask(
    allowed: torch.Tensor | None, bias: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor | None:
    """`bias` where attention is `allowed`, the dtype's lowest value elsewhere (as HF builds SDPA's mask)."""
    if allowed is None:
        return bias
    low = torch.finfo(dtype).min
    if bias is None:
        bias = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, bias.to(dtype), torch.tensor(low, dtype=dtype, device=allowed.device))


class T5Stack(nn.Module):
    """The encoder (bidirectional buckets) or the decoder (causal, one-sided buckets, cross-attention)."""

    def __init__(self, config: T5Config, is_decoder: bool) -> None:
        super().__init__()
        self.config = config
        self.is_decoder = is_decoder
        n = config.num_decoder_layers if is_decoder else config.num_layers
        self.embed_tokens = _embedding(config.vocab_size, config.d_model, config.initializer_factor)
        # Only the first block owns the relative position table; the others reuse its bias.
        self.block = nn.ModuleList(T5Block(config, i == 0, is_decoder) for i in range(n))
        self.final_layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: tuple | None = None,
        use_cache: bool = False,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        """`attention_mask` covers the cached and the new tokens, (B, past + T), as in HF."""
        if use_cache and not self.is_decoder:
            raise ValueError("use_cache=True is only valid for T5's decoder stack, not its encoder.")
        t = input_ids.size(1)
        past_len = past_key_values[0][0].size(2) if past_key_values else 0
        x = self.embed_tokens(input_ids)
        dtype, device = x.dtype, x.device
        kv = past_len + t
        first = self.block[0].layer[0].SelfAttention
        bias = first.compute_bias(t, kv, past_len).to(dtype)  # (1, nh, T, past + T)
        allowed = None
        if attention_mask is not None and not bool(attention_mask.all()):
            allowed = attention_mask[:, None, None, :].bool()  # (B, 1, 1, past + T)
        if self.is_decoder and t > 1:
            q_pos = torch.arange(past_len, kv, device=device)[:, None]
            causal = (torch.arange(kv, device=device)[None, :] <= q_pos)[None, None]  # (1, 1, T, past + T)
            allowed = causal if allowed is None else allowed & causal
        self_bias = _additive_mask(allowed, bias, dtype)
        cross_bias = None
        if self.is_decoder and encoder_hidden_states is not None and encoder_attention_mask is not None:
            if not bool(encoder_attention_mask.all()):
                cross_bias = _additive_mask(encoder_attention_mask[:, None, None, :].bool(), None, dtype)
        x = self.dropout(x)  # (B, T, C)
        hidden, self_probs, cross_probs, presents = [], [], [], []
        for i, block in enumerate(self.block):
            if output_hidden_states:
                hidden.append(x)
            past = past_key_values[i] if past_key_values else None
            x, kv_i, sp, cp = block(x, self_bias, encoder_hidden_states, cross_bias, past, output_attentions)
            presents.append(kv_i)
            if output_attentions:
                self_probs.append(sp)
                if cp is not None:
                    cross_probs.append(cp)
        x = self.dropout(self.final_layer_norm(x))
        if output_hidden_states:  # the last entry is the normalised output, as in HF
            hidden.append(x)
        return ModelOutput(
            last_hidden_state=x,
            past_key_values=tuple(presents) if use_cache else None,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(self_probs) if output_attentions else None,
            cross_attentions=tuple(cross_probs) if output_attentions and cross_probs else None,
        )


def _as_encoder_output(encoder_outputs: Any) -> ModelOutput:
    """The encoder's output from a ModelOutput, a tensor, or HF's tuple form."""
    if isinstance(encoder_outputs, ModelOutput):
        return encoder_outputs
    if isinstance(encoder_outputs, torch.Tensor):
        return ModelOutput(last_hidden_state=encoder_outputs)
    items = list(encoder_outputs) + [None, None]
    return ModelOutput(last_hidden_state=items[0], hidden_states=items[1], attentions=items[2])


class T5PreTrainedModel(PreTrainedModel):
    config_class = T5Config
    base_model_prefix = "transformer"
    checkpoint_table = CheckpointTable(
        # Files of early conversions carry a position table for the first cross-attention, which T5
        # never uses (HF ignores it too).
        ignore=(r"(?:^|\.)decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$",),
        layer=r"(?:en|de)coder\.block\.(\d+)\.",
    )

    def _init_weights(self, module: nn.Module) -> None:
        # HF's scheme: each Linear and Embedding gets the std its builder gave it (`_linear`,
        # `_embedding`: factor * fan_in**-0.5 for most, factor for the token embeddings), at this module,
        # so that a weight the file lacks is initialised alone without touching its neighbours.
        std = getattr(module, "init_std", None)
        if isinstance(module, (nn.Linear, nn.Embedding)) and std is not None:
            init_normal(module, std)
        elif isinstance(module, T5LayerNorm):
            module.weight.fill_(self.config.initializer_factor)

    def num_layers_for(self, key: str) -> int:
        return self.config.num_layers if "encoder.block." in key else self.config.num_decoder_layers

    @staticmethod
    def _embedding_group(prefix: str, decoder: bool = True) -> tuple[str, ...]:
        """`shared` and the stacks' `embed_tokens` are always one tensor in T5."""
        names = (f"{prefix}shared.weight", f"{prefix}encoder.embed_tokens.weight")
        return names + ((f"{prefix}decoder.embed_tokens.weight",) if decoder else ())

    # Whether the class has a language-model head that `tie_word_embeddings` ties to `shared`.
    has_lm_head: ClassVar[bool] = False

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any):
        """As `PreTrainedModel.from_pretrained`; a file whose `lm_head.weight` differs from `shared.weight`
        loads untied whatever its config says (transformers 5 writes `tie_word_embeddings: true` for
        untied T5 v1.1 models and unties them on load the same way)."""
        hub = HubOptions(
            kwargs.get("revision"), kwargs.get("cache_dir"), kwargs.get("local_files_only", False)
        )
        config = kwargs.pop("config", None)
        if config is None:  # the keyword overrides are applied to it by the base class
            config = cls.config_class.from_pretrained(
                name_or_path,
                revision=hub.revision,
                cache_dir=hub.cache_dir,
                local_files_only=hub.local_files_only,
            )
        if cls.has_lm_head and config.tie_word_embeddings:
            if _file_unties_head(name_or_path, hub, kwargs.get("allow_bin", True)):
                # In place: a caller that passed its config (a training plan's) keeps describing the
                # model it gets, and rebuilds an untied one from it (resume, export).
                config.tie_word_embeddings = False
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(name_or_path, config=config, output_loading_info=True, **kwargs)
        if kwargs.get("layers", "first") != "first":
            _take_position_tables(model, info, name_or_path, hub, kwargs.get("allow_bin", True))
        return (model, info) if want_info else model


# Only the first block of each stack owns the relative position table.
_TABLE = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"


def _take_position_tables(
    model: T5PreTrainedModel,
    info: dict[str, Any],
    name_or_path: str | os.PathLike,
    hub: HubOptions,
    allow_bin: bool,
) -> None:
    """Fill the position tables that `layers` (last, even, [i, ...]) left out from the file's first blocks.

    The model's first block is then another block of the file, which has no table of its own; the table
    belongs to the stack, so it is taken from the file's first block rather than initialised afresh.
    """
    missing = [k for k in info["missing_keys"] if k.endswith(_TABLE)]
    if not missing:
        return
    prefix = model.base_model_prefix + "."
    spellings = {k: (k, k.removeprefix(prefix), prefix + k) for k in missing}
    tensors = _file_tensors(name_or_path, hub, allow_bin, {s for names in spellings.values() for s in names})
    params = dict(model.named_parameters())
    for key, names in spellings.items():
        found = next((tensors[n] for n in names if n in tensors), None)
        if found is not None and found.shape == params[key].shape:
            with torch.no_grad():
                params[key].copy_(found.to(params[key].dtype))
            info["missing_keys"].remove(key)
            logger.info(
                "%s: took %s from the file's first block (it holds the stack's table)", name_or_path, key
            )


def _file_tensors(
    name_or_path: str | os.PathLike, hub: HubOptions, allow_bin: bool, wanted: set[str] | tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """The tensors named `wanted` that the checkpoint holds (read one by one from safetensors)."""
    try:
        files, safe = checkpoint_files(name_or_path, allow_bin=allow_bin, hub=hub)
    except FileNotFoundError:
        return {}  # the loader says what is missing
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        if safe:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt", device="cpu") as handle:
                tensors.update({k: handle.get_tensor(k) for k in wanted if k in handle.keys()})
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            tensors.update({k: state[k] for k in wanted if k in state})
    return tensors


def _file_unties_head(name_or_path: str | os.PathLike, hub: HubOptions, allow_bin: bool) -> bool:
    """Whether the checkpoint holds an `lm_head.weight` that is not a copy of `shared.weight`."""
    tensors = _file_tensors(name_or_path, hub, allow_bin, ("lm_head.weight", "shared.weight"))
    if len(tensors) < 2:
        return False
    head, shared = tensors["lm_head.weight"], tensors["shared.weight"]
    return head.shape != shared.shape or not torch.equal(head, shared)


class _EncoderDecoder(T5PreTrainedModel):
    """The backbone every encoder-decoder class holds at its top level: `shared`, `encoder`, `decoder`."""

    def _build_backbone(self, config: T5Config) -> None:
        self.shared = _embedding(config.vocab_size, config.d_model, config.initializer_factor)
        self.encoder = T5Stack(config, is_decoder=False)
        self.decoder = T5Stack(config, is_decoder=True)

    def get_encoder(self) -> T5Stack:
        """The encoder, which generation runs once per batch (HF's name)."""
        return self.encoder

    def _run(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        decoder_input_ids: torch.Tensor | None,
        decoder_attention_mask: torch.Tensor | None,
        encoder_outputs: Any,
        past_key_values: tuple | None,
        use_cache: bool | None,
        output_attentions: bool | None,
        output_hidden_states: bool | None,
    ) -> ModelOutput:
        """Encoder (unless `encoder_outputs` are given), then decoder; HF's Seq2SeqModelOutput fields."""
        attn, hidden = wanted_outputs(self.config, output_attentions, output_hidden_states)
        if decoder_input_ids is None:
            raise ValueError(
                "Pass decoder_input_ids (T5 starts them with decoder_start_token_id, the pad token), or "
                "labels to a class that shifts them."
            )
        if encoder_outputs is not None:
            enc = _as_encoder_output(encoder_outputs)
        elif input_ids is not None:
            enc = self.encoder(input_ids, attention_mask, output_attentions=attn, output_hidden_states=hidden)
        else:
            raise ValueError("Pass input_ids or encoder_outputs (neither was given).")
        use_cache = (self.config.use_cache and not self.training) if use_cache is None else use_cache
        dec = self.decoder(
            decoder_input_ids,
            decoder_attention_mask,
            enc.last_hidden_state,
            attention_mask,
            past_key_values,
            use_cache,
            output_attentions=attn,
            output_hidden_states=hidden,
        )
        return ModelOutput(
            last_hidden_state=dec.last_hidden_state,
            past_key_values=dec.past_key_values,
            encoder_last_hidden_state=enc.last_hidden_state,
            encoder_hidden_states=enc.hidden_states,
            encoder_attentions=enc.attentions,
            decoder_hidden_states=dec.hidden_states,
            decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions,
        )


@register_model("base")
class T5Model(_EncoderDecoder):
    """Encoder and decoder; returns the decoder's `last_hidden_state` and the encoder's.

    As in HF, `decoder_input_ids` are required (start them with `decoder_start_token_id`).
    `past_key_values` is a tuple over decoder layers of (self_k, self_v, cross_k, cross_v), each
    (B, nh, len, hs); with it, pass only the new `decoder_input_ids` and the `encoder_outputs`.
    """

    def __init__(self, config: T5Config) -> None:
        super().__init__(config)
        self._build_backbone(config)
        self.post_init()

    def tied_groups(self) -> list[tuple[str, ...]]:
        return [self._embedding_group("")]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: Any = None,
        past_key_values: tuple | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ModelOutput:
        return self._run(
            input_ids,
            attention_mask,
            decoder_input_ids,
            decoder_attention_mask,
            encoder_outputs,
            past_key_values,
            use_cache,
            output_attentions,
            output_hidden_states,
        )


@register_model("seq2seq_lm")
class T5ForConditionalGeneration(_EncoderDecoder):
    """Encoder-decoder with a language-model head (summarisation, translation, span corruption).

    `labels` (B, T) are the target ids, -100 ignored; without `decoder_input_ids` the decoder reads them
    shifted right from `decoder_start_token_id` (the pad token; -100 -> pad), as HF does, so
    `logits[:, i]` predicts `labels[:, i]`. With `scale_decoder_outputs` (T5 v1.0) the decoder's output
    is multiplied by d_model**-0.5 before the head. To decode with the cache, run `get_encoder()` once,
    then pass its output as `encoder_outputs` with the new `decoder_input_ids` and `past_key_values`.
    """

    has_lm_head: ClassVar[bool] = True

    def __init__(self, config: T5Config) -> None:
        super().__init__(config)
        self._build_backbone(config)
        self.lm_head = _linear(config.d_model, config.vocab_size, config.initializer_factor)
        self.post_init()

    def tied_groups(self) -> list[tuple[str, ...]]:
        group = self._embedding_group("")
        return [group + ("lm_head.weight",) if self.config.tie_word_embeddings else group]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: Any = None,
        past_key_values: tuple | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ModelOutput:
        if labels is not None:
            use_cache = False  # as HF: training computes every position at once
            if decoder_input_ids is None:
                decoder_input_ids = shift_right(labels, self.config)
        out = self._run(
            input_ids,
            attention_mask,
            decoder_input_ids,
            decoder_attention_mask,
            encoder_outputs,
            past_key_values,
            use_cache,
            output_attentions,
            output_hidden_states,
        )
        h = out.last_hidden_state  # (B, T, C)
        if self.config.scale_decoder_outputs:
            h = h * self.config.d_model**-0.5
        logits = self.lm_head(h)  # (B, T, vocab)
        return seq2seq_lm_output(logits, labels, out)


@register_public
class T5EncoderModel(T5PreTrainedModel):
    """The encoder alone (sentence embeddings, flan-t5 as a text encoder); a decoder in the file is dropped.

    Not a registered head (no task of the factory reads bare encoder states); import it from here.
    """

    def __init__(self, config: T5Config) -> None:
        super().__init__(config)
        self.shared = _embedding(config.vocab_size, config.d_model, config.initializer_factor)
        self.encoder = T5Stack(config, is_decoder=False)
        self.post_init()

    def tied_groups(self) -> list[tuple[str, ...]]:
        return [self._embedding_group("", decoder=False)]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ModelOutput:
        attn, hidden = wanted_outputs(self.config, output_attentions, output_hidden_states)
        return self.encoder(input_ids, attention_mask, output_attentions=attn, output_hidden_states=hidden)


class T5ClassificationHead(nn.Module):
    def __init__(self, config: T5Config) -> None:
        super().__init__()
        c, std = config.d_model, config.initializer_factor * config.d_model**-0.5
        self.dense = _linear(c, c, std, bias=True)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.out_proj = _linear(c, config.num_labels, std, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.dense(self.dropout(x)))
        return self.out_proj(self.dropout(x))  # (B, num_labels)


@register_model("seqcls")
class T5ForSequenceClassification(T5PreTrainedModel):
    """Classifies from the decoder state at the last <eos> token; the decoder reads `input_ids` shifted right."""

    def __init__(self, config: T5Config) -> None:
        super().__init__(config)
        self.transformer = T5Model(config)
        self.classification_head = T5ClassificationHead(config)
        self.post_init()

    def tied_groups(self) -> list[tuple[str, ...]]:
        return [self._embedding_group("transformer.")]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: Any = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ModelOutput:
        if decoder_input_ids is None:
            decoder_input_ids = shift_right(input_ids, self.config)
        out = self.transformer(
            input_ids,
            attention_mask,
            decoder_input_ids,
            decoder_attention_mask,
            encoder_outputs,
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        pooled = eos_pooled(out.last_hidden_state, input_ids, self.config)
        logits = self.classification_head(pooled)
        return sequence_classification_output(
            logits, labels, self.config, out, encoder_last_hidden_state=out.encoder_last_hidden_state
        )


@register_model("qa")
class T5ForQuestionAnswering(_EncoderDecoder):
    """Span start and end logits from the decoder's states; the decoder reads `input_ids` shifted right."""

    def __init__(self, config: T5Config) -> None:
        super().__init__(config)
        self._build_backbone(config)
        # HF sizes it by num_labels (2 for a start and an end logit).
        std = config.initializer_factor * config.d_model**-0.5
        self.qa_outputs = _linear(config.d_model, config.num_labels, std, bias=True)
        self.post_init()

    def tied_groups(self) -> list[tuple[str, ...]]:
        return [self._embedding_group("")]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: Any = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ModelOutput:
        if decoder_input_ids is None:
            if input_ids is None:
                raise ValueError("Pass input_ids or decoder_input_ids (neither was given).")
            decoder_input_ids = shift_right(input_ids, self.config)
        out = self._run(
            input_ids,
            attention_mask,
            decoder_input_ids,
            decoder_attention_mask,
            encoder_outputs,
            None,
            False,
            output_attentions,
            output_hidden_states,
        )
        logits = self.qa_outputs(out.last_hidden_state)  # (B, T, 2)
        return question_answering_output(
            logits,
            start_positions,
            end_positions,
            out,
            encoder_last_hidden_state=out.encoder_last_hidden_state,
        )


@register_model("token_cls")
class T5ForTokenClassification(T5PreTrainedModel):
    """A label per token from the encoder's states (HF's `T5ForTokenClassification`)."""

    def __init__(self, config: T5Config) -> None:
        super().__init__(config)
        self.transformer = T5EncoderModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = _linear(config.d_model, config.num_labels, config.initializer_factor, bias=True)
        self.post_init()

    def tied_groups(self) -> list[tuple[str, ...]]:
        return [self._embedding_group("transformer.", decoder=False)]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ModelOutput:
        out = self.transformer(input_ids, attention_mask, output_attentions, output_hidden_states)
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (B, T, num_labels)
        return token_classification_output(logits, labels, out)
