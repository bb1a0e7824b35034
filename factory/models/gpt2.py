"""GPT-2: its config, its blocks, its heads and its checkpoint table, with Hugging Face's parameter names.

Modules nest exactly as in HF checkpoints (`transformer.h.0.attn.c_attn.weight`), so loading is copying
by key. HF stores the projections as `Conv1D` weights of shape (in, out); we use `nn.Linear` (out, in),
and the checkpoint table's `transposed` entries turn them on the way in and out. Shapes in comments:
B batch, T tokens, C width, nh heads, hs head size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
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
    split_heads,
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


@register_config
@dataclass
class GPT2Config(PretrainedConfig):
    """Defaults are those of `gpt2`'s config.json.

    The `summary_*` keys of HF's config only serve `GPT2DoubleHeadsModel`; they are kept in `extra`.
    The common names (`num_hidden_layers`, `hidden_size`, ...) are accepted as keys and readable and
    writable as properties, as HF's `attribute_map` makes them.
    """

    model_type: ClassVar[str] = "gpt2"
    aliases: ClassVar[dict[str, tuple[str, ...]]] = {
        "num_hidden_layers": ("n_layer",),
        "hidden_size": ("n_embd",),
        "num_attention_heads": ("n_head",),
        "max_position_embeddings": ("n_positions",),
        "intermediate_size": ("n_inner",),
    }
    unsupported: ClassVar[dict] = {
        "add_cross_attention": (False, "cross-attention in GPT-2 is not implemented"),
    }
    depth_fields: ClassVar[tuple[str, ...]] = ("n_layer",)
    # gpt2's layout: byte-level BPE with <|endoftext|> (id 0) as bos, eos and unk, no pad token (our
    # Tokenizer pads with eos), no template: a pair is the two texts back to back.
    tokenizer_recipe: ClassVar[TokenizerRecipe] = TokenizerRecipe(
        kind="byte_level_bpe",
        tokenizer_class="GPT2Tokenizer",
        special_tokens=("<|endoftext|>",),
        tokenizer_config={
            "add_prefix_space": False,
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "pad_token": None,
        },
        post_processor="byte_level",
    )

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # None: 4 * n_embd
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True
    use_cache: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    pad_token_id: int | None = None
    scale_attn_by_inverse_layer_idx: bool = False
    # HF upcasts attention to float32 in its eager path only; we do it whenever the inputs are narrower.
    reorder_and_upcast_attn: bool = False
    add_cross_attention: bool = False

    def validate(self) -> None:
        self._check_positive("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
        if self.n_inner is not None:
            self._check_positive("n_inner")
        self._check_divides("n_head", "n_embd")
        self._check_dropout("resid_pdrop", "embd_pdrop", "attn_pdrop")
        self._check_choice("activation_function", ACTIVATIONS)
        if not isinstance(self.layer_norm_epsilon, (int, float)) or not self.layer_norm_epsilon > 0:
            self._fail("layer_norm_epsilon", self.layer_norm_epsilon, "a positive number")


class GPT2Attention(nn.Module):
    """Causal self-attention: `c_attn` gives q, k, v in one matmul; `c_proj` is the output projection."""

    def __init__(self, config: GPT2Config, layer_idx: int) -> None:
        super().__init__()
        c = config.n_embd
        self.n_head = config.n_head
        self.c_attn = nn.Linear(c, 3 * c)
        self.c_proj = nn.Linear(c, c)
        self.attn_dropout = config.attn_pdrop
        self.resid_dropout = nn.Dropout(config.resid_pdrop)
        self.scale = (c // config.n_head) ** -0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= float(layer_idx + 1)
        self.upcast = config.reorder_and_upcast_attn

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        past: tuple | None,
        output_attentions: bool = False,
    ):
        """Returns the projected output, (k, v), and the attention probabilities (None unless asked)."""
        q, k, v = (split_heads(t, self.n_head) for t in self.c_attn(x).split(x.size(-1), dim=2))
        if past is not None:  # (B, nh, past + T, hs)
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        p = self.attn_dropout if self.training else 0.0
        if self.upcast and q.dtype != torch.float32:
            qkv = q.float(), k.float(), v.float()
            y, probs = attention_with_probs(*qkv, mask, is_causal, p, self.scale, probs=output_attentions)
            y, probs = y.to(q.dtype), probs.to(q.dtype) if probs is not None else None
        else:  # (B, T, C)
            y, probs = attention_with_probs(q, k, v, mask, is_causal, p, self.scale, probs=output_attentions)
        return self.resid_dropout(self.c_proj(y)), (k, v), probs


class GPT2MLP(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        inner = config.n_inner if config.n_inner is not None else 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, inner)
        self.c_proj = nn.Linear(inner, config.n_embd)
        self.act = activation(config.activation_function, inplace=True)  # on c_fc's fresh output
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class GPT2Block(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPT2Config, layer_idx: int) -> None:
        super().__init__()
        c, eps = config.n_embd, config.layer_norm_epsilon
        self.ln_1 = nn.LayerNorm(c, eps=eps)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(c, eps=eps)
        self.mlp = GPT2MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        past: tuple | None,
        output_attentions: bool = False,
    ):
        a, kv, probs = self.attn(self.ln_1(x), mask, is_causal, past, output_attentions)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, kv, probs


class GPT2PreTrainedModel(PreTrainedModel):
    config_class = GPT2Config
    base_model_prefix = "transformer"
    checkpoint_table = CheckpointTable(
        # Old files store the causal-mask buffers `h.{i}.attn.bias` and `h.{i}.attn.masked_bias`; SDPA
        # builds the mask instead. Anchored on `.attn.` so that `c_attn.bias` is kept.
        ignore=(r"(^|\.)attn\.(bias|masked_bias)$",),
        # Conv1D weights are (in, out) in files; nn.Linear holds (out, in).
        transposed=(r"\.(c_attn|c_proj|c_fc)\.weight$",),
        layer=r"\bh\.(\d+)\.",
    )

    def _init_weights(self, module: nn.Module) -> None:
        # GPT-2's embeddings have no padding row, so the common scheme is HF's GPT-2 scheme.
        std = self.config.initializer_range
        init_normal(module, std)
        if isinstance(module, (GPT2Attention, GPT2MLP)):
            # GPT-2 paper: scale the residual projections by 1/sqrt(number of residual paths), two per
            # block. post_init visits children first, so this overrides c_proj's plain init.
            module.c_proj.weight.normal_(0.0, std / math.sqrt(2 * self.config.n_layer))


@register_model("base")
class GPT2Model(GPT2PreTrainedModel):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        c = config.n_embd
        self.wte = nn.Embedding(config.vocab_size, c)
        self.wpe = nn.Embedding(config.n_positions, c)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(GPT2Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(c, eps=config.layer_norm_epsilon)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: tuple | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ModelOutput:
        """`attention_mask` is (B, past + T), 1 for tokens to attend to; `past_key_values` is a tuple
        over layers of (k, v), each (B, nh, past, hs), as returned with `use_cache`.
        `output_hidden_states` adds the embeddings' output and each block's, the last one after `ln_f`
        (as transformers); `output_attentions` each block's probabilities (B, nh, T, past + T). None:
        the config's value."""
        b, t = input_ids.shape
        past_len = past_key_values[0][0].size(2) if past_key_values is not None else 0
        if past_len + t > self.config.n_positions:
            raise ValueError(
                f"Sequence of {past_len + t} tokens ({past_len} cached + {t} new) is longer than "
                f"n_positions={self.config.n_positions}; truncate the input."
            )
        if attention_mask is not None and tuple(attention_mask.shape) != (b, past_len + t):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; expected (batch, cached + new "
                f"tokens) = {(b, past_len + t)}: it covers the cached tokens too."
            )
        attention_mask = document_attention_mask(attention_mask, None if past_len else position_ids, True)
        if position_ids is None:  # as HF: positions continue after the cache, padding or not
            position_ids = torch.arange(past_len, past_len + t, device=input_ids.device)[None]
        x = self.wte(input_ids) + self.wpe(position_ids)
        if token_type_ids is not None:  # GPT-2 has no type table: HF embeds type ids with wte
            x = x + self.wte(token_type_ids)
        x = self.drop(x)  # (B, T, C)

        mask, is_causal = attention_mask_for_sdpa(attention_mask, t, past_len + t, causal=True)
        use_cache = (self.config.use_cache and not self.training) if use_cache is None else use_cache
        want_attn, want_hidden = wanted_outputs(self.config, output_attentions, output_hidden_states)
        hidden, attns = ([x] if want_hidden else None), ([] if want_attn else None)
        presents = []
        for i, block in enumerate(self.h):
            past = past_key_values[i] if past_key_values is not None else None
            x, kv, probs = block(x, mask, is_causal, past, want_attn)
            presents.append(kv)
            if hidden is not None:
                hidden.append(x)
            if attns is not None:
                attns.append(probs)
        x = self.ln_f(x)
        if hidden is not None:
            hidden[-1] = x
        return ModelOutput(
            last_hidden_state=x,
            past_key_values=tuple(presents) if use_cache else None,
            hidden_states=tuple(hidden) if hidden is not None else None,
            attentions=tuple(attns) if attns is not None else None,
        )


class _GPT2Head(GPT2PreTrainedModel):
    """A model with a head over `self.transformer`: its heads call the backbone through `_backbone`."""

    def _backbone(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        past_key_values: tuple | None,
        use_cache: bool | None,
        output_attentions: bool | None,
        output_hidden_states: bool | None,
    ) -> ModelOutput:
        return self.transformer(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            past_key_values,
            use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )


@register_model("causal_lm")
class GPT2LMHeadModel(_GPT2Head):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def tied_groups(self) -> list[tuple[str, ...]]:
        return [("transformer.wte.weight", "lm_head.weight")] if self.config.tie_word_embeddings else []

    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
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
            token_type_ids,
            position_ids,
            past_key_values,
            use_cache,
            output_attentions,
            output_hidden_states,
        )
        logits = self.lm_head(keep_last(out.last_hidden_state, logits_to_keep, labels))  # (B, T, vocab)
        return causal_lm_output(logits, labels, out, shift=True)


@register_model("seqcls")
class GPT2ForSequenceClassification(_GPT2Head):
    """Classifies each sequence from the hidden state of its last token that is not padding (which
    `last_token_states` finds as HF does)."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
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
            token_type_ids,
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
class GPT2ForQuestionAnswering(_GPT2Head):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.qa_outputs = nn.Linear(config.n_embd, 2)
        self.post_init()

    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        start_positions=None,
        end_positions=None,
        output_attentions=None,
        output_hidden_states=None,
    ):
        out = self._backbone(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            None,
            False,
            output_attentions,
            output_hidden_states,
        )
        logits = self.qa_outputs(out.last_hidden_state)  # (B, T, 2)
        return question_answering_output(logits, start_positions, end_positions, out)


@register_model("token_cls")
class GPT2ForTokenClassification(_GPT2Head):
    """A label per token from the causal hidden states (each token sees only its left context, as HF).

    The dropout before the classifier is HF's: `classifier_dropout`, else `hidden_dropout`, else 0.1 (GPT-2's
    config has neither field; a config.json that carries one keeps it in `extra`).
    """

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        dropouts = (config.extra.get("classifier_dropout"), config.extra.get("hidden_dropout"), 0.1)
        p = next(v for v in dropouts if v is not None)
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.n_embd, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
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
            token_type_ids,
            position_ids,
            past_key_values,
            use_cache,
            output_attentions,
            output_hidden_states,
        )
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (B, T, num_labels)
        return token_classification_output(logits, labels, out)
