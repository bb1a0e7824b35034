"""RoBERTa: its config, embeddings, heads and checkpoint table, with Hugging Face's parameter names.

RoBERTa is BERT's encoder trained differently; HF's `RobertaLayer` is a copy of `BertLayer`, so the
layers here are BERT's (same parameter names, same kernels). What differs is data and small modules:
positions start at `pad_token_id + 1` and are counted from the input ids (padding keeps the padding
position), one token type in the released checkpoints, a dense+tanh classification head on `<s>`, and
the LM head's names (`lm_head.dense`, `lm_head.layer_norm`, `lm_head.decoder`).
Shapes in comments: B batch, T tokens, C width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from factory.checkpoints.weights import COMMON_RENAMES, CheckpointTable
from factory.config import PretrainedConfig
from factory.contract.recipe import TokenizerRecipe
from factory.models.bert import BertLayer, BertModel, _BertHead
from factory.models.layers import ACTIVATIONS, document_attention_mask, keep_last
from factory.models.modeling import (
    PreTrainedModel,
    causal_lm_output,
    choices_as_rows,
    init_normal,
    masked_lm_output,
    multiple_choice_output,
    question_answering_output,
    sequence_classification_output,
    token_classification_output,
)
from factory.models.outputs import ModelOutput
from factory.registry import register_config, register_model

# <mask> swallows the space before it and takes the last id, as in roberta-base's vocabulary.
_MASK_TOKEN = {"content": "<mask>", "lstrip": True, "rstrip": False, "normalized": False}


@register_config
@dataclass
class RobertaConfig(PretrainedConfig):
    """Defaults are those of HF's `RobertaConfig` class, so a config.json without a key reads as in HF;
    `conf/arch/roberta.yaml` holds roberta-base's values (514 positions, one token type, eps 1e-5)."""

    model_type: ClassVar[str] = "roberta"
    depth_fields: ClassVar[tuple[str, ...]] = ("num_hidden_layers",)
    # roberta-base's layout: byte-level BPE with <s>=0 <pad>=1 </s>=2 <unk>=3 and <mask> last, and
    # `<s> A </s></s> B </s>` for pairs, so that pad=1, bos=0, eos=2 hold.
    tokenizer_recipe: ClassVar[TokenizerRecipe] = TokenizerRecipe(
        kind="byte_level_bpe",
        tokenizer_class="RobertaTokenizer",
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
    unsupported: ClassVar[dict] = {
        "position_embedding_type": ("absolute", "relative position embeddings are not implemented"),
        "add_cross_attention": (False, "cross-attention in RoBERTa is not implemented"),
    }

    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2
    position_embedding_type: str = "absolute"
    use_cache: bool = True
    classifier_dropout: float | None = None
    add_cross_attention: bool = False

    def validate(self) -> None:
        self._check_positive(
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        )
        self._check_divides("num_attention_heads", "hidden_size")
        self._check_dropout("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")
        self._check_choice("hidden_act", ACTIVATIONS)
        # Positions are counted from pad_token_id + 1: the padding id is a row of the position table.
        pad = self.pad_token_id
        if pad is None or isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            self._fail("pad_token_id", pad, "a token id >= 0 (RoBERTa's positions start after it)")
        if pad + 1 >= self.max_position_embeddings:
            self._fail(
                "max_position_embeddings",
                self.max_position_embeddings,
                f"more than pad_token_id + 1 = {pad + 1} (positions start after the padding id)",
            )

    @property
    def max_tokens(self) -> int:
        """The longest sequence the position table holds: its rows after the padding position."""
        return self.max_position_embeddings - self.pad_token_id - 1


def position_ids_from_input_ids(input_ids: torch.Tensor, pad: int, past_len: int = 0) -> torch.Tensor:
    """fairseq's `make_positions`: real tokens count from pad + 1 (after `past_len` cached ones), padding
    tokens get position `pad`."""
    real = input_ids.ne(pad).int()
    return ((torch.cumsum(real, dim=1) + past_len) * real).long() + pad  # (B, T)


class RobertaPreTrainedModel(PreTrainedModel):
    config_class = RobertaConfig
    base_model_prefix = "roberta"
    checkpoint_table = CheckpointTable(
        renames=COMMON_RENAMES,
        # Old files store the position-id and token-type buffers; we compute them instead.
        ignore=(r"embeddings\.position_ids$", r"embeddings\.token_type_ids$"),
        layer=r"encoder\.layer\.(\d+)\.",
    )

    def _init_weights(self, module: nn.Module) -> None:
        init_normal(module, self.config.initializer_range)
        if isinstance(module, RobertaLMHead):
            module.bias.zero_()


# Heads that have no pooler: pretraining files (roberta-base's, saved from RobertaForMaskedLM) carry one.
_NO_POOLER_TABLE = CheckpointTable(
    renames=COMMON_RENAMES,
    ignore=(*RobertaPreTrainedModel.checkpoint_table.ignore, r"(^|\.)pooler\."),
    layer=RobertaPreTrainedModel.checkpoint_table.layer,
)


@register_model("base")
class RobertaModel(RobertaPreTrainedModel):
    def __init__(self, config: RobertaConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        c, pad = config.hidden_size, config.pad_token_id
        self.embeddings = nn.ModuleDict(
            dict(
                word_embeddings=nn.Embedding(
                    config.vocab_size, c, padding_idx=pad if pad < config.vocab_size else None
                ),
                # The padding position's row gets no gradient, as in HF (padding_idx).
                position_embeddings=nn.Embedding(config.max_position_embeddings, c, padding_idx=pad),
                token_type_embeddings=nn.Embedding(config.type_vocab_size, c),
                LayerNorm=nn.LayerNorm(c, eps=config.layer_norm_eps),
            )
        )
        self.emb_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.encoder = nn.ModuleDict(
            dict(layer=nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers)))
        )
        self.pooler = nn.ModuleDict(dict(dense=nn.Linear(c, c))) if add_pooling_layer else None
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
        """`position_ids`, when given, index the position table directly (real tokens from pad + 1).
        `output_hidden_states` and `output_attentions` (None: the config's) as in `BertModel`."""
        t = input_ids.size(1)
        past_len = past_key_values[0][0].size(2) if past_key_values is not None else 0
        if past_len + t > self.config.max_tokens:
            raise ValueError(
                f"Sequence of {past_len + t} tokens is longer than RoBERTa's {self.config.max_tokens} "
                f"positions (max_position_embeddings={self.config.max_position_embeddings} less the "
                f"{self.config.pad_token_id + 1} before the first token); truncate the input."
            )
        attention_mask = document_attention_mask(
            attention_mask, None if past_len else position_ids, self.config.is_decoder
        )
        if position_ids is None:
            position_ids = position_ids_from_input_ids(input_ids, self.config.pad_token_id, past_len)
        emb = self.embeddings
        x = emb["word_embeddings"](input_ids) + emb["position_embeddings"](position_ids)
        if token_type_ids is None:
            x = x + emb["token_type_embeddings"].weight[0]
        else:
            x = x + emb["token_type_embeddings"](token_type_ids)
        x = self.emb_dropout(emb["LayerNorm"](x))  # (B, T, C)

        return self._encode(
            x, attention_mask, past_key_values, use_cache, output_attentions, output_hidden_states
        )

    # HF's RobertaModel runs BertModel's layers and pooler.
    _encode = BertModel._encode


class _RobertaHead(RobertaPreTrainedModel):
    """A model with a head over `self.roberta`, which it calls as BERT's heads call theirs."""

    _backbone = _BertHead._backbone


def _classifier_dropout(config: RobertaConfig) -> float:
    return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob


class RobertaClassificationHead(nn.Module):
    """`classifier`: dense + tanh on the `<s>` state, then `out_proj` (no pooler, as in HF)."""

    def __init__(self, config: RobertaConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(_classifier_dropout(config))
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.dense(self.dropout(hidden[:, 0])))  # (B, C)
        return self.out_proj(self.dropout(x))  # (B, num_labels)


@register_model("seqcls")
class RobertaForSequenceClassification(_RobertaHead):
    checkpoint_table = _NO_POOLER_TABLE

    def __init__(self, config: RobertaConfig) -> None:
        super().__init__(config)
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.classifier = RobertaClassificationHead(config)
        self.post_init()

    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
    ):
        out = self._backbone(
            input_ids, attention_mask, token_type_ids, position_ids, output_attentions, output_hidden_states
        )
        logits = self.classifier(out.last_hidden_state)
        return sequence_classification_output(
            logits, labels, self.config, out, last_hidden_state=out.last_hidden_state
        )


@register_model("qa")
class RobertaForQuestionAnswering(_RobertaHead):
    checkpoint_table = _NO_POOLER_TABLE

    def __init__(self, config: RobertaConfig) -> None:
        super().__init__(config)
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
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
            input_ids, attention_mask, token_type_ids, position_ids, output_attentions, output_hidden_states
        )
        logits = self.qa_outputs(out.last_hidden_state)  # (B, T, 2)
        return question_answering_output(logits, start_positions, end_positions, out)


@register_model("token_cls")
class RobertaForTokenClassification(_RobertaHead):
    checkpoint_table = _NO_POOLER_TABLE

    def __init__(self, config: RobertaConfig) -> None:
        super().__init__(config)
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(_classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
    ):
        out = self._backbone(
            input_ids, attention_mask, token_type_ids, position_ids, output_attentions, output_hidden_states
        )
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (B, T, num_labels)
        return token_classification_output(logits, labels, out)


class RobertaLMHead(nn.Module):
    """`lm_head`: dense, gelu (whatever `hidden_act` says, as in HF), layer_norm, then the (tied) decoder."""

    def __init__(self, config: RobertaConfig) -> None:
        super().__init__()
        c = config.hidden_size
        self.dense = nn.Linear(c, c)
        self.layer_norm = nn.LayerNorm(c, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(c, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(F.gelu(self.dense(x))))  # (B, T, vocab)


class _RobertaLM(_RobertaHead):
    """The backbone and `lm_head` that the masked and the causal LM share."""

    checkpoint_table = _NO_POOLER_TABLE

    def __init__(self, config: RobertaConfig) -> None:
        super().__init__(config)
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.lm_head = RobertaLMHead(config)
        self.post_init()

    def tied_groups(self) -> list[tuple[str, ...]]:
        groups = [("lm_head.bias", "lm_head.decoder.bias")]
        if self.config.tie_word_embeddings:
            groups.append(("roberta.embeddings.word_embeddings.weight", "lm_head.decoder.weight"))
        return groups


@register_model("masked_lm")
class RobertaForMaskedLM(_RobertaLM):
    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
    ):
        out = self._backbone(
            input_ids, attention_mask, token_type_ids, position_ids, output_attentions, output_hidden_states
        )
        logits = self.lm_head(out.last_hidden_state)  # (B, T, vocab)
        return masked_lm_output(logits, labels, out)


@register_model("causal_lm")
class RobertaForCausalLM(_RobertaLM):
    """RoBERTa as a decoder (`is_decoder=True` gives causal attention and a KV cache, as in HF)."""

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
            output_attentions,
            output_hidden_states,
            past_key_values,
            use_cache,
        )
        logits = self.lm_head(keep_last(out.last_hidden_state, logits_to_keep, labels))
        return causal_lm_output(logits, labels, out, shift=True)


@register_model("multiple_choice")
class RobertaForMultipleChoice(_RobertaHead):
    """One score per (context, choice) pair from the pooled output; softmax over a row's choices."""

    def __init__(self, config: RobertaConfig) -> None:
        super().__init__(config)
        self.roberta = RobertaModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
    ):
        rows = choices_as_rows(input_ids, attention_mask, token_type_ids, position_ids)
        out = self._backbone(*rows, output_attentions, output_hidden_states)
        scores = self.classifier(self.dropout(out.pooler_output))  # (B * num_choices, 1)
        return multiple_choice_output(scores, input_ids, labels, out)
