"""Llama (Llama 2 and 3, TinyLlama, SmolLM) and Qwen2: config, blocks, heads and checkpoint tables, with
Hugging Face's parameter names.

A pre-norm decoder: RMSNorm, grouped-query attention with rotary position embeddings, and a SwiGLU MLP
(`down_proj(silu(gate_proj(x)) * up_proj(x))`). Qwen2 is the same network with biases on q, k and v and
none on o, so it is a config subclass here, not a second model. Shapes in comments: B batch, T tokens,
C width, nh query heads, nkv key/value heads, hd head size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from factory.checkpoints.weights import CheckpointTable
from factory.config import PretrainedConfig
from factory.contract.recipe import TokenizerRecipe
from factory.models.layers import (
    ACTIVATIONS,
    activation,
    attention_mask_for_sdpa,
    attention_with_probs,
    document_attention_mask,
    keep_last,
    last_token_states,
)
from factory.models.modeling import (
    PreTrainedModel,
    causal_lm_output,
    init_normal,
    question_answering_output,
    sequence_classification_output,
    token_classification_output,
    wanted_outputs,
)
from factory.models.outputs import ModelOutput
from factory.registry import register_config, register_model

# The rope_parameters keys each rope_type reads (transformers' modeling_rope_utils), besides rope_type and
# rope_theta. "dynamic", "yarn" and "longrope" are not implemented: they are refused by name.
ROPE_KEYS: dict[str, tuple[str, ...]] = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}
DEFAULT_ROPE_THETA = 10000.0


@register_config
@dataclass
class LlamaConfig(PretrainedConfig):
    """Defaults are those of transformers' `LlamaConfig` (Llama 2 7B).

    RoPE: transformers v5 writes `rope_parameters` (`{"rope_type": ..., "rope_theta": ..., ...}`); files
    of v4 carry `rope_theta` and `rope_scaling` (with `type` or `rope_type`) at the top level instead.
    Both are read and folded into `rope_parameters` at construction (a `rope_theta` or `rope_scaling` that
    is given wins, as it is the one a person typed or the old file holds); only `rope_parameters` is
    written back. `num_key_value_heads` and `head_dim` left at None mean "as many as the query heads" and
    `hidden_size // num_attention_heads`, as in HF.
    """

    model_type: ClassVar[str] = "llama"
    depth_fields: ClassVar[tuple[str, ...]] = ("num_hidden_layers",)
    # Llama 2's layout: byte-fallback BPE on metaspace pieces, <unk> <s> </s> then the 256 byte tokens,
    # BOS added in front of every text. No pad token: batches pad with eos, and the mask marks them.
    tokenizer_recipe: ClassVar[TokenizerRecipe] = TokenizerRecipe(
        kind="byte_fallback_bpe",
        tokenizer_class="LlamaTokenizer",
        special_tokens=("<unk>", "<s>", "</s>"),
        tokenizer_config={
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": None,
            "add_bos_token": True,
            "add_eos_token": False,
            "legacy": False,
            "add_prefix_space": True,
            "model_input_names": ["input_ids", "attention_mask"],
        },
        post_processor="template",
        template=("<s>:0 $A:0", "<s>:0 $A:0 <s>:1 $B:1"),
    )
    # The config field that switches the bias of q, k, v and of o (None: always on), so that variants
    # with fixed biases are data (Qwen2).
    qkv_bias_field: ClassVar[str | None] = "attention_bias"
    o_bias_field: ClassVar[str | None] = "attention_bias"

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    # Llama 2's tensor-parallel slicing of its own training; transformers v5 ignores it, as we do.
    pretraining_tp: int | None = 1
    tie_word_embeddings: bool = False
    rope_parameters: dict[str, Any] | None = None
    rope_theta: float | None = None  # v4 files; folded into rope_parameters
    rope_scaling: dict[str, Any] | None = None  # v4 files; folded into rope_parameters
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False

    def __post_init__(self) -> None:
        self._fold_rope()
        super().__post_init__()

    def _fold_rope(self) -> None:
        given = self.rope_scaling if self.rope_scaling is not None else self.rope_parameters
        name = "rope_scaling" if self.rope_scaling is not None else "rope_parameters"
        if given is not None and not isinstance(given, dict):
            self._fail(name, given, "a mapping such as {'rope_type': 'llama3', 'factor': 8.0, ...} or null")
        params = dict(given or {})
        if "type" in params:  # v4's spelling of rope_type
            params.setdefault("rope_type", params.pop("type"))
        params.setdefault("rope_type", "default")
        if self.rope_theta is not None:
            params["rope_theta"] = self.rope_theta
        params.setdefault("rope_theta", DEFAULT_ROPE_THETA)
        if params["rope_type"] == "llama3":
            params.setdefault("original_max_position_embeddings", self.max_position_embeddings)
        self.rope_parameters, self.rope_theta, self.rope_scaling = params, None, None
        object.__setattr__(self, "_rope_key", name)  # errors name the key that was given

    def validate(self) -> None:
        self._check_positive(
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
        )
        self._check_divides("num_attention_heads", "hidden_size")
        if self.num_key_value_heads is not None:
            self._check_positive("num_key_value_heads")
            if self.num_attention_heads % self.num_key_value_heads:
                n = self.num_attention_heads
                divisors = [d for d in range(1, n + 1) if n % d == 0]
                self._fail(
                    "num_key_value_heads",
                    self.num_key_value_heads,
                    f"a divisor of num_attention_heads={n} (grouped-query attention), such as {divisors}",
                )
        if self.head_dim is not None:
            self._check_positive("head_dim")
        if self.resolved_head_dim % 2:
            self._fail("head_dim", self.resolved_head_dim, "an even size (rotary embeddings rotate pairs)")
        self._check_choice("hidden_act", ACTIVATIONS)
        self._check_dropout("attention_dropout")
        if not self.rms_norm_eps > 0:
            self._fail("rms_norm_eps", self.rms_norm_eps, "a positive number")
        self._check_rope()

    def _check_rope(self) -> None:
        params, key = self.rope_parameters, getattr(self, "_rope_key", "rope_parameters")
        kind = params["rope_type"]
        if kind not in ROPE_KEYS:
            self._fail(key, params, f"rope_type one of {sorted(ROPE_KEYS)}")
        theta = params["rope_theta"]
        if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 1:
            self._fail(key, params, "rope_theta a number > 1")
        wanted = ROPE_KEYS[kind]
        missing = [k for k in wanted if k not in params]
        unknown = sorted(set(params) - {"rope_type", "rope_theta", *wanted})
        if missing or unknown:
            self._fail(
                key,
                params,
                f"for rope_type={kind!r} the keys {['rope_type', 'rope_theta', *wanted]}"
                + (f" (missing {missing})" if missing else "")
                + (f" (not read: {unknown})" if unknown else ""),
            )
        for name in wanted:
            value = params[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                self._fail(key, params, f"{name} a positive number")
        if kind == "llama3" and params["low_freq_factor"] >= params["high_freq_factor"]:
            self._fail(key, params, "low_freq_factor < high_freq_factor")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def resolved_kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        # rope_theta and rope_scaling are folded into rope_parameters (v5's layout only); an unset
        # head_dim is left out, as HF configs without that key read a null one as a size (Qwen2).
        for key in ("rope_theta", "rope_scaling", "head_dim"):
            if out.get(key) is None:
                out.pop(key, None)
        return out


@register_config
@dataclass
class Qwen2Config(LlamaConfig):
    """Qwen2: Llama with biases on q, k and v (none on o or the MLP). Defaults of transformers'
    `Qwen2Config` (Qwen2 7B). Sliding-window attention is off in every released Qwen2 and not
    implemented; `layer_types` may only say "full_attention"."""

    model_type: ClassVar[str] = "qwen2"
    unsupported: ClassVar[dict] = {
        "use_sliding_window": (False, "sliding-window attention is not implemented"),
        "attention_bias": (False, "Qwen2 has biases on q, k, v and none on o: no attention_bias switch"),
        "mlp_bias": (False, "Qwen2's MLP has no biases"),
    }
    # Qwen2's byte-level BPE with <|endoftext|> as eos, unk and pad, and no bos (as Qwen2's tokenizer).
    tokenizer_recipe: ClassVar[TokenizerRecipe] = TokenizerRecipe(
        kind="byte_level_bpe",
        tokenizer_class="Qwen2Tokenizer",
        special_tokens=("<|endoftext|>",),
        tokenizer_config={
            "add_prefix_space": False,
            "bos_token": None,
            "eos_token": "<|endoftext|>",
            "unk_token": None,
            "pad_token": "<|endoftext|>",
            "model_input_names": ["input_ids", "attention_mask"],
        },
        post_processor="byte_level",
    )
    qkv_bias_field: ClassVar[str | None] = None  # always
    o_bias_field: ClassVar[str | None] = "attention_bias"  # always False (unsupported above)

    vocab_size: int = 151936
    intermediate_size: int = 22016
    # HF's default is 32 (= its 32 heads); None keeps "as many as the heads" when only those are set.
    num_key_value_heads: int | None = None
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    use_sliding_window: bool = False
    sliding_window: int | None = 4096
    max_window_layers: int = 28
    layer_types: list[str] | None = None

    def validate(self) -> None:
        super().validate()
        if self.layer_types is not None and set(self.layer_types) - {"full_attention"}:
            self._fail("layer_types", self.layer_types, "only 'full_attention' (sliding windows are off)")


def _bias(config: LlamaConfig, field: str | None) -> bool:
    return True if field is None else bool(getattr(config, field))


class LlamaRMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 and cast back before the weight, as HF."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Written out rather than F.rms_norm: on the CPU that is a composite of the same steps, and
        # measured slower (bench/forward.py).
        h = x.float()
        scale = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)  # (B, T, 1)
        return self.weight * (h * scale).to(x.dtype)


def inverse_frequencies(config: LlamaConfig) -> torch.Tensor:
    """The (hd / 2,) rotary frequencies for `config.rope_parameters`, in float32, as transformers' RoPE
    init functions compute them (`default`, `linear`, `llama3`)."""
    params, dim = config.rope_parameters, config.resolved_head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    inv_freq = 1.0 / (params["rope_theta"] ** exponents)
    kind = params["rope_type"]
    if kind == "linear":
        return inv_freq / params["factor"]
    if kind == "llama3":
        # Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between blended.
        factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
        old_len = params["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


class LlamaRotaryEmbedding(nn.Module):
    """cos and sin of (B, T, hd) for the given positions. The frequencies are derived from the config on
    first use on each device rather than kept as a buffer: no checkpoint holds them, and a model loaded
    on the meta device would otherwise keep an empty one."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self._inv_freq: dict[torch.device, torch.Tensor] = {}

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self._inv_freq.get(x.device)
        if inv_freq is None:  # computed on the CPU, as HF does at init, then moved
            inv_freq = self._inv_freq[x.device] = inverse_frequencies(self.config).to(x.device)
        freqs = position_ids[..., None].float() * inv_freq  # (B, T, hd / 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of (B, n, T, hd) `x` by (B, 1, T, hd) cos and sin: HF's rotate-half layout."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class LlamaAttention(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        c, hd = config.hidden_size, config.resolved_head_dim
        self.n_head, self.n_kv, self.head_dim = config.num_attention_heads, config.resolved_kv_heads, hd
        qkv_bias, o_bias = _bias(config, config.qkv_bias_field), _bias(config, config.o_bias_field)
        self.q_proj = nn.Linear(c, self.n_head * hd, bias=qkv_bias)
        self.k_proj = nn.Linear(c, self.n_kv * hd, bias=qkv_bias)
        self.v_proj = nn.Linear(c, self.n_kv * hd, bias=qkv_bias)
        self.o_proj = nn.Linear(self.n_head * hd, c, bias=o_bias)
        self.dropout = config.attention_dropout

    def forward(self, x, rope, mask, is_causal: bool, past: tuple | None, output_attentions: bool = False):
        """Returns the projected output, (k, v), and the attention probabilities (None unless asked)."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        cos, sin = rope
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if past is not None:  # (B, nkv, past + T, hd)
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        p = self.dropout if self.training else 0.0
        if output_attentions:  # explicit scores; SDPA does not return its probabilities
            y, probs = attention_with_probs(q, k, v, mask, is_causal, p)
            return self.o_proj(y), (k, v), probs
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=p,
            is_causal=is_causal,
            enable_gqa=self.n_kv != self.n_head,  # each group of nh / nkv query heads reads one k, v
        )
        y = y.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim)
        return self.o_proj(y), (k, v), None


class LlamaMLP(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        c, inner, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(c, inner, bias=bias)
        self.up_proj = nn.Linear(c, inner, bias=bias)
        self.down_proj = nn.Linear(inner, c, bias=bias)
        self.act_fn = activation(config.hidden_act, inplace=True)  # on gate_proj's fresh output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.act_fn(self.gate_proj(x)), self.up_proj(x)  # (B, T, intermediate)
        if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
            return self.down_proj(gate * up)
        return self.down_proj(gate.mul_(up))  # inference: no third tensor of the MLP's width


class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, rope, mask, is_causal: bool, past: tuple | None, output_attentions: bool = False):
        a, kv, probs = self.self_attn(self.input_layernorm(x), rope, mask, is_causal, past, output_attentions)
        x = x + a
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, kv, probs


class LlamaPreTrainedModel(PreTrainedModel):
    config_class = LlamaConfig
    base_model_prefix = "model"
    # LlamaForQuestionAnswering keeps its backbone under `transformer.` (HF's old name); the other classes
    # under `model.`: a file of either kind loads into both.
    checkpoint_table = CheckpointTable(
        renames=((r"^transformer\.", "model."),),
        # Old files store the rotary frequencies, which are derived from the config here.
        ignore=(r"rotary_emb\.inv_freq$",),
        layer=r"\blayers\.(\d+)\.",
    )

    def _init_weights(self, module: nn.Module) -> None:
        init_normal(module, self.config.initializer_range)
        if isinstance(module, LlamaRMSNorm):
            module.weight.fill_(1.0)


@register_model("base")
class LlamaModel(LlamaPreTrainedModel):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        pad = config.pad_token_id
        # As HF: the pad token's embedding starts at zero and gets no gradient.
        padding_idx = pad if isinstance(pad, int) and 0 <= pad < config.vocab_size else None
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: tuple | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ModelOutput:
        """`attention_mask` is (B, past + T), 1 for tokens to attend to; `past_key_values` is a tuple over
        layers of (k, v), each (B, nkv, past, hd), as returned with `use_cache`. Without `position_ids`,
        positions continue after the cache whatever the padding (as HF); generation passes them.
        `output_hidden_states` adds the embeddings and each layer's output, the last one after the final
        norm (as transformers); `output_attentions` each layer's probabilities (B, nh, T, past + T).
        None: the config's value."""
        b, t = input_ids.shape
        past_len = past_key_values[0][0].size(2) if past_key_values is not None else 0
        if attention_mask is not None and tuple(attention_mask.shape) != (b, past_len + t):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; expected (batch, cached + new "
                f"tokens) = {(b, past_len + t)}: it covers the cached tokens too."
            )
        attention_mask = document_attention_mask(attention_mask, None if past_len else position_ids, True)
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + t, device=input_ids.device)[None]
        x = self.embed_tokens(input_ids)  # (B, T, C)
        cos, sin = self.rotary_emb(x, position_ids)  # (B or 1, T, hd)
        rope = (cos[:, None], sin[:, None])  # broadcast over heads
        mask, is_causal = attention_mask_for_sdpa(attention_mask, t, past_len + t, causal=True)
        use_cache = (self.config.use_cache and not self.training) if use_cache is None else use_cache
        want_attn, want_hidden = wanted_outputs(self.config, output_attentions, output_hidden_states)
        hidden, attns = ([x] if want_hidden else None), ([] if want_attn else None)
        presents = []
        for i, layer in enumerate(self.layers):
            past = past_key_values[i] if past_key_values is not None else None
            x, kv, probs = layer(x, rope, mask, is_causal, past, want_attn)
            presents.append(kv)
            if hidden is not None:
                hidden.append(x)
            if attns is not None:
                attns.append(probs)
        x = self.norm(x)
        if hidden is not None:
            hidden[-1] = x
        return ModelOutput(
            last_hidden_state=x,
            past_key_values=tuple(presents) if use_cache else None,
            hidden_states=tuple(hidden) if hidden is not None else None,
            attentions=tuple(attns) if attns is not None else None,
        )


class _LlamaHead(LlamaPreTrainedModel):
    """A model with a head over its backbone (`self.model`, or `self.transformer` where
    `base_model_prefix` says so): its heads call it through `_backbone`."""

    def _backbone(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        past_key_values: tuple | None,
        use_cache: bool | None,
        output_attentions: bool | None,
        output_hidden_states: bool | None,
    ) -> ModelOutput:
        return getattr(self, self.base_model_prefix)(
            input_ids,
            attention_mask,
            position_ids,
            past_key_values,
            use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )


@register_model("causal_lm")
class LlamaForCausalLM(_LlamaHead):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def tied_groups(self) -> list[tuple[str, ...]]:
        return [("model.embed_tokens.weight", "lm_head.weight")] if self.config.tie_word_embeddings else []

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        use_cache=None,
        labels=None,
        logits_to_keep: int = 0,
        output_attentions=None,
        output_hidden_states=None,
    ):
        out = self._backbone(
            input_ids,
            attention_mask,
            position_ids,
            past_key_values,
            use_cache,
            output_attentions,
            output_hidden_states,
        )
        logits = self.lm_head(keep_last(out.last_hidden_state, logits_to_keep, labels))  # (B, T, vocab)
        return causal_lm_output(logits, labels, out, shift=True)


@register_model("seqcls")
class LlamaForSequenceClassification(_LlamaHead):
    """Classifies each sequence from the hidden state of its last token that is not padding (which
    `last_token_states` finds as HF does)."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        self.model = LlamaModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        use_cache=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
    ):
        out = self._backbone(
            input_ids,
            attention_mask,
            position_ids,
            past_key_values,
            use_cache,
            output_attentions,
            output_hidden_states,
        )
        h = last_token_states(out.last_hidden_state, input_ids, attention_mask, self.config.pad_token_id)
        logits = self.score(h)  # (B, num_labels)
        return sequence_classification_output(
            logits, labels, self.config, out, past_key_values=out.past_key_values
        )


@register_model("qa")
class LlamaForQuestionAnswering(_LlamaHead):
    base_model_prefix = "transformer"  # HF's name for this class's backbone
    checkpoint_table = CheckpointTable(
        renames=((r"^model\.", "transformer."),),
        ignore=LlamaPreTrainedModel.checkpoint_table.ignore,
        layer=LlamaPreTrainedModel.checkpoint_table.layer,
    )

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        self.transformer = LlamaModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        start_positions=None,
        end_positions=None,
        output_attentions=None,
        output_hidden_states=None,
    ):
        out = self._backbone(
            input_ids, attention_mask, position_ids, None, False, output_attentions, output_hidden_states
        )
        logits = self.qa_outputs(out.last_hidden_state)  # (B, T, 2)
        return question_answering_output(logits, start_positions, end_positions, out)


@register_model("token_cls")
class LlamaForTokenClassification(_LlamaHead):
    """A label per token from the causal hidden states. The dropout before `score` is HF's:
    `classifier_dropout`, else `hidden_dropout` (neither is a Llama field; a config.json carrying one
    keeps it in `extra`), else 0.1."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__(config)
        self.model = LlamaModel(config)
        dropouts = (config.extra.get("classifier_dropout"), config.extra.get("hidden_dropout"), 0.1)
        self.dropout = nn.Dropout(next(p for p in dropouts if p is not None))
        self.score = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        use_cache=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
    ):
        out = self._backbone(
            input_ids,
            attention_mask,
            position_ids,
            past_key_values,
            use_cache,
            output_attentions,
            output_hidden_states,
        )
        logits = self.score(self.dropout(out.last_hidden_state))  # (B, T, num_labels)
        return token_classification_output(logits, labels, out)


# Qwen2: the same modules under Qwen2's class names (HF's `architectures` and the arch x head matrix).
def _qwen2(cls: type, head: str) -> type:
    name = cls.__name__.replace("Llama", "Qwen2")
    variant = type(name, (cls,), {"config_class": Qwen2Config, "__doc__": f"{cls.__name__} for Qwen2."})
    return register_model(head)(variant)


Qwen2Model = _qwen2(LlamaModel, "base")
Qwen2ForCausalLM = _qwen2(LlamaForCausalLM, "causal_lm")
Qwen2ForSequenceClassification = _qwen2(LlamaForSequenceClassification, "seqcls")
Qwen2ForQuestionAnswering = _qwen2(LlamaForQuestionAnswering, "qa")
Qwen2ForTokenClassification = _qwen2(LlamaForTokenClassification, "token_cls")
