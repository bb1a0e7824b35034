"""BART: its config, its blocks, its heads and its checkpoint table, with Hugging Face's parameter names.

Modules nest exactly as in HF checkpoints (`model.decoder.layers.0.encoder_attn.q_proj.weight`), so
loading is copying by key. An encoder and a decoder, both post-LN, with learned positions offset by 2.
Shapes in comments: B batch, S source tokens, T target tokens, C width, nh heads, hs head size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

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
    eos_pooled,
    keep_last,
    split_heads,
)
from factory.models.modeling import (
    PreTrainedModel,
    causal_lm_output,
    init_normal,
    question_answering_output,
    seq2seq_lm_output,
    sequence_classification_output,
    wanted_outputs,
)
from factory.models.outputs import ModelOutput
from factory.registry import register_config, register_model

# BART's learned positions start at row 2 of `embed_positions` (a fairseq leftover), so the table holds
# max_position_embeddings + 2 rows.
POSITION_OFFSET = 2


# <mask> swallows the space before it, as in BART's vocabulary, where it is the last id.
_MASK_TOKEN = {"content": "<mask>", "lstrip": True, "rstrip": False, "normalized": False}


@register_config
@dataclass
class BartConfig(PretrainedConfig):
    """Defaults are those of HF's `BartConfig` (`facebook/bart-large`), with its 3 labels."""

    model_type: ClassVar[str] = "bart"
    aliases: ClassVar[dict[str, tuple[str, ...]]] = {
        "num_hidden_layers": ("encoder_layers", "decoder_layers"),
        "num_attention_heads": ("encoder_attention_heads", "decoder_attention_heads"),
        "hidden_size": ("d_model",),
        "intermediate_size": ("encoder_ffn_dim", "decoder_ffn_dim"),
    }
    # Options of old BART-family config.json files that select a variant we do not build.
    unsupported: ClassVar[dict[str, tuple[Any, str]]] = {
        "normalize_before": (False, "pre-LN layers (mBART) are not implemented; BART is post-LN"),
        "add_final_layer_norm": (False, "a final encoder/decoder LayerNorm (mBART) is not implemented"),
        "normalize_embedding": (True, "BART always applies layernorm_embedding"),
        "static_position_embeddings": (False, "sinusoidal positions (Marian) are not implemented"),
        "add_bias_logits": (False, "a logits bias is not implemented"),
        "extra_pos_embeddings": (POSITION_OFFSET, "BART's learned positions are offset by 2"),
    }
    depth_fields: ClassVar[tuple[str, ...]] = ("encoder_layers", "decoder_layers")
    # facebook/bart-*'s layout: byte-level BPE with <s>=0 <pad>=1 </s>=2 <unk>=3 and <mask> last, and
    # RoBERTa's template `<s> A </s></s> B </s>`, so that pad=1, bos=0, eos=2 (decoder_start=eos) hold.
    tokenizer_recipe: ClassVar[TokenizerRecipe] = TokenizerRecipe(
        kind="byte_level_bpe",
        tokenizer_class="BartTokenizer",
        special_tokens=("<s>", "<pad>", "</s>", "<unk>"),
        tokenizer_config={
            "add_prefix_space": False,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "sep_token": "</s>",
            "cls_token": "<s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "mask_token": _MASK_TOKEN,
        },
        post_processor="roberta",
        added_last=(_MASK_TOKEN,),
    )

    vocab_size: int = 50265
    max_position_embeddings: int = 1024
    encoder_layers: int = 12
    encoder_ffn_dim: int = 4096
    encoder_attention_heads: int = 16
    decoder_layers: int = 12
    decoder_ffn_dim: int = 4096
    decoder_attention_heads: int = 16
    encoder_layerdrop: float = 0.0
    decoder_layerdrop: float = 0.0
    activation_function: str = "gelu"
    d_model: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    init_std: float = 0.02
    classifier_dropout: float | None = 0.0
    scale_embedding: bool = False
    use_cache: bool = True
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2
    is_encoder_decoder: bool = True
    decoder_start_token_id: int | None = 2
    forced_eos_token_id: int | None = 2
    normalize_before: bool = False
    add_final_layer_norm: bool = False
    normalize_embedding: bool = True
    static_position_embeddings: bool = False
    add_bias_logits: bool = False
    extra_pos_embeddings: int = POSITION_OFFSET

    def __post_init__(self) -> None:
        if self.id2label is None and self.label2id is None:  # HF's BART default: 3 labels
            self.id2label = {i: f"LABEL_{i}" for i in range(3)}
        super().__post_init__()

    def validate(self) -> None:
        self._check_positive(
            "vocab_size",
            "max_position_embeddings",
            "d_model",
            "encoder_layers",
            "encoder_ffn_dim",
            "encoder_attention_heads",
            "decoder_layers",
            "decoder_ffn_dim",
            "decoder_attention_heads",
        )
        self._check_divides("encoder_attention_heads", "d_model")
        self._check_divides("decoder_attention_heads", "d_model")
        self._check_dropout(
            "dropout",
            "attention_dropout",
            "activation_dropout",
            "classifier_dropout",
            "encoder_layerdrop",
            "decoder_layerdrop",
        )
        self._check_choice("activation_function", ACTIVATIONS)


def shift_tokens_right(
    input_ids: torch.Tensor, pad_token_id: int | None, decoder_start_token_id: int | None
) -> torch.Tensor:
    """Decoder inputs from targets, as HF does: prepend the start token, drop the last, -100 -> pad."""
    if pad_token_id is None or decoder_start_token_id is None:
        raise ValueError(
            f"BartConfig.pad_token_id={pad_token_id!r} and decoder_start_token_id={decoder_start_token_id!r}"
            f" must both be set to build decoder_input_ids; pass decoder_input_ids or set them."
        )
    shifted = input_ids.new_full(input_ids.shape, decoder_start_token_id)
    shifted[:, 1:] = input_ids[:, :-1]
    return shifted.masked_fill_(shifted == -100, pad_token_id)


class BartAttention(nn.Module):
    """Self-attention over `x`, or cross-attention from `x` to `source` (the encoder's states)."""

    def __init__(self, c: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.dropout = dropout
        self.k_proj, self.v_proj = nn.Linear(c, c), nn.Linear(c, c)
        self.q_proj, self.out_proj = nn.Linear(c, c), nn.Linear(c, c)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        source: torch.Tensor | None = None,
        past: tuple[torch.Tensor, ...] | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        """Returns the projected output, (k, v), and the attention probabilities (None unless asked)."""
        # SDPA's default scale is hs**-0.5, the scale BART applies to q.
        q = split_heads(self.q_proj(x), self.n_head)  # (B, nh, T, hs)
        if source is not None and past:  # cross-attention keys do not change while decoding: reuse
            k, v = past
        else:
            src = x if source is None else source
            k, v = split_heads(self.k_proj(src), self.n_head), split_heads(self.v_proj(src), self.n_head)
            if past:  # self-attention: extend the cache with this step's keys
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        p = self.dropout if self.training else 0.0
        y, probs = attention_with_probs(q, k, v, mask, is_causal, p, probs=output_attentions)
        return self.out_proj(y), (k, v), probs


class BartEncoderLayer(nn.Module):
    def __init__(self, config: BartConfig) -> None:
        super().__init__()
        c = config.d_model
        self.self_attn = BartAttention(c, config.encoder_attention_heads, config.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(c)
        self.fc1 = nn.Linear(c, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, c)
        self.final_layer_norm = nn.LayerNorm(c)
        self.act = activation(config.activation_function, inplace=True)
        self.dropout = nn.Dropout(config.dropout)
        self.activation_dropout = nn.Dropout(config.activation_dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns the layer's output and its attention probabilities (None unless asked)."""
        # Post-LN. Residuals are added into the fresh projection outputs (autograd does not keep them) and
        # the activation works in place in inference, so no further (B, S, C) or (B, S, ffn) tensors. A
        # forward hook that keeps a projection's output must clone it.
        y, _, probs = self.self_attn(x, mask, False, output_attentions=output_attentions)
        x = self.self_attn_layer_norm(self.dropout(y).add_(x))
        h = self.activation_dropout(self.act(self.fc1(x)))
        x = self.final_layer_norm(self.dropout(self.fc2(h)).add_(x))
        if x.dtype == torch.float16 and not torch.isfinite(x).all():  # HF clamps fp16 overflow here
            big = torch.finfo(x.dtype).max - 1000
            x = x.clamp(-big, big)
        return x, probs


class BartDecoderLayer(nn.Module):
    def __init__(self, config: BartConfig) -> None:
        super().__init__()
        c, nh = config.d_model, config.decoder_attention_heads
        self.self_attn = BartAttention(c, nh, config.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(c)
        self.encoder_attn = BartAttention(c, nh, config.attention_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(c)
        self.fc1 = nn.Linear(c, config.decoder_ffn_dim)
        self.fc2 = nn.Linear(config.decoder_ffn_dim, c)
        self.final_layer_norm = nn.LayerNorm(c)
        self.act = activation(config.activation_function, inplace=True)
        self.dropout = nn.Dropout(config.dropout)
        self.activation_dropout = nn.Dropout(config.activation_dropout)

    def forward(
        self,
        x: torch.Tensor,
        self_mask: torch.Tensor | None,
        is_causal: bool,
        encoder_states: torch.Tensor | None,
        cross_mask: torch.Tensor | None,
        past: tuple[torch.Tensor, ...] | None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], tuple[torch.Tensor | None, torch.Tensor | None]]:
        """`past` is (self_k, self_v) or (self_k, self_v, cross_k, cross_v); returns the same, updated,
        and the self- and cross-attention probabilities (None unless asked, or without encoder states)."""
        past = past or ()
        # As in the encoder layer: residuals added in place into fresh projection outputs.
        y, present, probs = self.self_attn(
            x, self_mask, is_causal, past=past[:2], output_attentions=output_attentions
        )
        x = self.self_attn_layer_norm(self.dropout(y).add_(x))
        cross_probs = None
        if encoder_states is not None:  # as HF: no cross-attention without encoder states
            y, cross, cross_probs = self.encoder_attn(
                x,
                cross_mask,
                False,
                source=encoder_states,
                past=past[2:],
                output_attentions=output_attentions,
            )
            x = self.encoder_attn_layer_norm(self.dropout(y).add_(x))
            present = present + cross
        h = self.activation_dropout(self.act(self.fc1(x)))
        x = self.final_layer_norm(self.dropout(self.fc2(h)).add_(x))
        return x, present, (probs, cross_probs)


def _word_embedding(config: BartConfig) -> nn.Embedding:
    pad = config.pad_token_id
    pad = pad if pad is not None and 0 <= pad < config.vocab_size else None
    return nn.Embedding(config.vocab_size, config.d_model, padding_idx=pad)


def _check_length(config: BartConfig, n: int, what: str) -> None:
    if n > config.max_position_embeddings:
        raise ValueError(
            f"{what} of {n} tokens is longer than max_position_embeddings="
            f"{config.max_position_embeddings}; truncate the input."
        )


def _layer_dropped(module: nn.Module, p: float) -> bool:
    """LayerDrop (arXiv:1909.11556): in training, skip a whole layer with probability `p`."""
    return module.training and p > 0.0 and bool(torch.rand([]) < p)


class BartEncoder(nn.Module):
    def __init__(self, config: BartConfig) -> None:
        super().__init__()
        self.config = config
        c = config.d_model
        self.embed_scale = math.sqrt(c) if config.scale_embedding else 1.0
        self.embed_tokens = _word_embedding(config)  # tied to the model's `shared`
        self.embed_positions = nn.Embedding(config.max_position_embeddings + POSITION_OFFSET, c)
        self.layers = nn.ModuleList(BartEncoderLayer(config) for _ in range(config.encoder_layers))
        self.layernorm_embedding = nn.LayerNorm(c)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ModelOutput:
        """`output_hidden_states` adds the embeddings' output and each layer's, `output_attentions` each
        layer's probabilities (B, nh, S, S); None: the config's value. A layer LayerDrop skips adds
        neither, as in HF."""
        s = input_ids.size(1)
        _check_length(self.config, s, "Encoder input")
        pos = torch.arange(POSITION_OFFSET, s + POSITION_OFFSET, device=input_ids.device)
        x = self.embed_tokens(input_ids) * self.embed_scale + self.embed_positions(pos)
        x = self.dropout(self.layernorm_embedding(x))  # (B, S, C)
        mask, _ = attention_mask_for_sdpa(attention_mask, s, s, causal=False)
        want_attn, want_hidden = wanted_outputs(self.config, output_attentions, output_hidden_states)
        hidden, attns = ([x] if want_hidden else None), ([] if want_attn else None)
        for layer in self.layers:
            if _layer_dropped(self, self.config.encoder_layerdrop):
                continue
            x, probs = layer(x, mask, want_attn)
            if hidden is not None:
                hidden.append(x)
            if attns is not None:
                attns.append(probs)
        return ModelOutput(
            last_hidden_state=x,
            hidden_states=tuple(hidden) if hidden is not None else None,
            attentions=tuple(attns) if attns is not None else None,
        )


class BartDecoder(nn.Module):
    def __init__(self, config: BartConfig) -> None:
        super().__init__()
        self.config = config
        c = config.d_model
        self.embed_scale = math.sqrt(c) if config.scale_embedding else 1.0
        self.embed_tokens = _word_embedding(config)
        self.embed_positions = nn.Embedding(config.max_position_embeddings + POSITION_OFFSET, c)
        self.layers = nn.ModuleList(BartDecoderLayer(config) for _ in range(config.decoder_layers))
        self.layernorm_embedding = nn.LayerNorm(c)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: tuple | None = None,
        use_cache: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ModelOutput:
        """`attention_mask` covers the cached and the new tokens, (B, past + T), as in HF.
        `output_attentions` also gives the cross-attentions, (B, nh, T, S) per layer: an empty tuple
        without encoder states, as transformers returns."""
        t = input_ids.size(1)
        past_len = past_key_values[0][0].size(2) if past_key_values is not None else 0
        _check_length(self.config, past_len + t, "Decoder sequence")
        if use_cache and self.training and self.config.decoder_layerdrop > 0:
            raise ValueError("use_cache=True cannot be combined with decoder_layerdrop > 0 in training.")
        # Positions count from the first cached token; padding does not shift them (as in HF).
        start = past_len + POSITION_OFFSET
        pos = torch.arange(start, start + t, device=input_ids.device)
        x = self.embed_tokens(input_ids) * self.embed_scale + self.embed_positions(pos)
        x = self.dropout(self.layernorm_embedding(x))  # (B, T, C)
        self_mask, is_causal = attention_mask_for_sdpa(attention_mask, t, past_len + t, causal=True)
        cross_mask = None
        if encoder_hidden_states is not None:
            s = encoder_hidden_states.size(1)
            cross_mask, _ = attention_mask_for_sdpa(encoder_attention_mask, t, s, causal=False)
        want_attn, want_hidden = wanted_outputs(self.config, output_attentions, output_hidden_states)
        hidden, attns = ([x] if want_hidden else None), ([] if want_attn else None)
        crosses = [] if want_attn else None
        presents = []
        for i, layer in enumerate(self.layers):
            if _layer_dropped(self, self.config.decoder_layerdrop):
                continue
            past = past_key_values[i] if past_key_values is not None else None
            x, kv, (probs, cross) = layer(
                x, self_mask, is_causal, encoder_hidden_states, cross_mask, past, want_attn
            )
            presents.append(kv)
            if hidden is not None:
                hidden.append(x)
            if attns is not None:
                attns.append(probs)
                if cross is not None:
                    crosses.append(cross)
        return ModelOutput(
            last_hidden_state=x,
            past_key_values=tuple(presents) if use_cache else None,
            hidden_states=tuple(hidden) if hidden is not None else None,
            attentions=tuple(attns) if attns is not None else None,
            cross_attentions=tuple(crosses) if crosses is not None else None,
        )


class BartPreTrainedModel(PreTrainedModel):
    config_class = BartConfig
    base_model_prefix = "model"
    checkpoint_table = CheckpointTable(
        # fairseq conversions carry version buffers; BartForConditionalGeneration files carry the
        # (usually zero) logits bias of a head we do not build.
        ignore=(r"(?:en|de)coder\.version$", r"(?:^|\.)final_logits_bias$"),
        layer=r"(?:en|de)coder\.layers\.(\d+)\.",
    )

    def _init_weights(self, module: nn.Module) -> None:
        init_normal(module, self.config.init_std)

    def num_layers_for(self, key: str) -> int:
        return self.config.encoder_layers if "encoder.layers." in key else self.config.decoder_layers

    def _embedding_groups(self, prefix: str) -> list[tuple[str, ...]]:
        """`shared` and both stacks' `embed_tokens` are one tensor when tie_word_embeddings (HF v5)."""
        if not self.config.tie_word_embeddings:
            return []
        return [
            (
                f"{prefix}shared.weight",
                f"{prefix}encoder.embed_tokens.weight",
                f"{prefix}decoder.embed_tokens.weight",
            )
        ]


def _encoder_states(encoder_outputs: Any) -> torch.Tensor:
    """The encoder's last hidden state from a ModelOutput, a tensor, or HF's tuple form."""
    if isinstance(encoder_outputs, ModelOutput):
        return encoder_outputs.last_hidden_state
    if isinstance(encoder_outputs, torch.Tensor):
        return encoder_outputs
    return encoder_outputs[0]


@register_model("base")
class BartModel(BartPreTrainedModel):
    """Encoder and decoder; returns the decoder's `last_hidden_state` and the encoder's."""

    def __init__(self, config: BartConfig) -> None:
        super().__init__(config)
        self.shared = _word_embedding(config)
        self.encoder = BartEncoder(config)
        self.decoder = BartDecoder(config)
        self.post_init()

    def tied_groups(self) -> list[tuple[str, ...]]:
        return self._embedding_groups("")

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
        """`decoder_input_ids` default to `input_ids` shifted right (BART's denoising setup, as HF).

        `past_key_values` is a tuple over decoder layers of (self_k, self_v, cross_k, cross_v), each
        (B, nh, len, hs); with it, pass only the new `decoder_input_ids` and the `encoder_outputs`.
        `output_hidden_states` / `output_attentions` (None: the config's) fill `encoder_hidden_states`,
        `encoder_attentions`, `decoder_hidden_states`, `decoder_attentions` and `cross_attentions`; the
        encoder's come from `encoder_outputs` when it is given (a ModelOutput that holds them).
        """
        if decoder_input_ids is None:
            if input_ids is None:
                raise ValueError("Pass input_ids or decoder_input_ids (neither was given).")
            decoder_input_ids = shift_tokens_right(
                input_ids, self.config.pad_token_id, self.config.decoder_start_token_id
            )
        flags = dict(output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        if isinstance(encoder_outputs, ModelOutput):
            encoded = encoder_outputs
        elif encoder_outputs is not None:
            encoded = ModelOutput(last_hidden_state=_encoder_states(encoder_outputs))
        elif input_ids is not None:
            encoded = self.encoder(input_ids, attention_mask, **flags)
        else:
            raise ValueError("Pass input_ids or encoder_outputs (neither was given).")
        encoder_states = encoded.last_hidden_state
        use_cache = (self.config.use_cache and not self.training) if use_cache is None else use_cache
        out = self.decoder(
            decoder_input_ids,
            decoder_attention_mask,
            encoder_states,
            attention_mask,
            past_key_values,
            use_cache,
            **flags,
        )
        return ModelOutput(
            last_hidden_state=out.last_hidden_state,
            encoder_last_hidden_state=encoder_states,
            past_key_values=out.past_key_values,
            decoder_hidden_states=out.hidden_states,
            decoder_attentions=out.attentions,
            cross_attentions=out.cross_attentions,
            encoder_hidden_states=encoded.hidden_states,
            encoder_attentions=encoded.attentions,
        )


class _BartHead(BartPreTrainedModel):
    """A model with a head over `self.model`, a BartModel: its heads call it through `_backbone`."""

    def tied_groups(self) -> list[tuple[str, ...]]:
        return self._embedding_groups("model.")

    def _backbone(
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
        return self.model(
            input_ids,
            attention_mask,
            decoder_input_ids,
            decoder_attention_mask,
            encoder_outputs,
            past_key_values,
            use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )


class BartClassificationHead(nn.Module):
    def __init__(self, config: BartConfig) -> None:
        super().__init__()
        c = config.d_model
        self.dense = nn.Linear(c, c)
        self.out_proj = nn.Linear(c, config.num_labels)
        self.dropout = nn.Dropout(config.classifier_dropout or 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.dense(self.dropout(x)))
        return self.out_proj(self.dropout(x))  # (B, num_labels)


@register_model("seqcls")
class BartForSequenceClassification(_BartHead):
    """Classifies from the decoder state at the last <eos> token."""

    def __init__(self, config: BartConfig) -> None:
        super().__init__(config)
        self.model = BartModel(config)
        self.classification_head = BartClassificationHead(config)
        self.post_init()

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
        out = self._backbone(
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
        pooled = eos_pooled(out.last_hidden_state, input_ids, self.config)
        logits = self.classification_head(pooled)
        return sequence_classification_output(
            logits,
            labels,
            self.config,
            out,
            last_hidden_state=out.last_hidden_state,
            encoder_last_hidden_state=out.encoder_last_hidden_state,
        )


@register_model("qa")
class BartForQuestionAnswering(_BartHead):
    """Span start and end logits from the decoder's states."""

    def __init__(self, config: BartConfig) -> None:
        super().__init__(config)
        self.model = BartModel(config)
        self.qa_outputs = nn.Linear(config.d_model, 2)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: Any = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ModelOutput:
        out = self._backbone(
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


@register_model("causal_lm")
class BartForCausalLM(BartPreTrainedModel):
    """BART's decoder alone with a language-model head tied to its embeddings (keys `model.decoder.*`).

    Labels are NOT shifted inside, as in HF: `labels[:, i]` is the target of `logits[:, i]`, so pass the
    next tokens (`labels_shifted_inside = False` tells training code). Cross-attention runs only when
    `encoder_hidden_states` are given; `past_key_values` then holds 4 tensors per layer, otherwise 2.
    The config is copied with `is_decoder=True, is_encoder_decoder=False`, as HF sets them.
    """

    labels_shifted_inside: ClassVar[bool] = False

    def __init__(self, config: BartConfig) -> None:
        super().__init__(config)
        if config.is_encoder_decoder or not config.is_decoder:
            self.config = config.replace(is_decoder=True, is_encoder_decoder=False)
        self.model = nn.ModuleDict(dict(decoder=BartDecoder(self.config)))  # HF's BartDecoderWrapper
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def tied_groups(self) -> list[tuple[str, ...]]:
        # `model.shared.weight` is how seq2seq files spell the decoder's embeddings when they are tied.
        if not self.config.tie_word_embeddings:
            return []
        return [("model.decoder.embed_tokens.weight", "lm_head.weight", "model.shared.weight")]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        past_key_values: tuple | None = None,
        use_cache: bool | None = None,
        labels: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ModelOutput:
        use_cache = (self.config.use_cache and not self.training) if use_cache is None else use_cache
        out = self.model["decoder"](
            input_ids,
            attention_mask,
            encoder_hidden_states,
            encoder_attention_mask,
            past_key_values,
            use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        logits = self.lm_head(keep_last(out.last_hidden_state, logits_to_keep, labels))  # (B, T, vocab)
        return causal_lm_output(logits, labels, out, shift=False)


@register_model("seq2seq_lm")
class BartForConditionalGeneration(_BartHead):
    """Encoder-decoder with a language-model head tied to the shared embeddings (summarisation, translation).

    `labels` (B, T) are the target ids, -100 ignored; without `decoder_input_ids` the decoder reads them
    shifted right from `decoder_start_token_id` (-100 -> pad), as HF does, so `logits[:, i]` predicts
    `labels[:, i]`. To decode with the cache, run `model.model.encoder` once, then pass its output as
    `encoder_outputs` with the new `decoder_input_ids` and the returned `past_key_values`.
    """

    # Unlike the other BART classes, this one owns `final_logits_bias`: load it rather than drop it.
    checkpoint_table = CheckpointTable(
        ignore=(r"(?:en|de)coder\.version$",),
        layer=BartPreTrainedModel.checkpoint_table.layer,
    )

    def __init__(self, config: BartConfig) -> None:
        super().__init__(config)
        self.model = BartModel(config)
        # A buffer, as in HF. Built for real even when the model is built on `meta` to be loaded: files of
        # other BART classes lack it and leave it at zero, as HF does.
        device = "cpu" if torch.get_default_device().type == "meta" else None
        self.register_buffer("final_logits_bias", torch.zeros(1, config.vocab_size, device=device))
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def tied_groups(self) -> list[tuple[str, ...]]:
        return [group + ("lm_head.weight",) for group in self._embedding_groups("model.")]

    def get_encoder(self) -> BartEncoder:
        """The encoder, which generation runs once per batch (HF's name)."""
        return self.model.encoder

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
                decoder_input_ids = shift_tokens_right(
                    labels, self.config.pad_token_id, self.config.decoder_start_token_id
                )
        out = self._backbone(
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
        logits = self.lm_head(out.last_hidden_state)  # (B, T, vocab)
        logits = logits + self.final_logits_bias.to(logits)
        return seq2seq_lm_output(logits, labels, out)
