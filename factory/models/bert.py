"""BERT: its config, its blocks, its heads and its checkpoint table, with Hugging Face's parameter names.

Modules nest exactly as in HF checkpoints (`bert.encoder.layer.0.attention.self.query.weight`), so
loading is copying by key. Shapes in comments: B batch, T tokens, C width, nh heads, hs head size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from factory.checkpoints.weights import COMMON_RENAMES, CheckpointTable
from factory.config import PretrainedConfig
from factory.contract.recipe import TokenizerRecipe
from factory.models.layers import (
    ACTIVATIONS,
    activation,
    attention_mask_for_sdpa,
    attention_with_probs,
    document_attention_mask,
    keep_last,
    split_heads,
)
from factory.models.modeling import (
    PreTrainedModel,
    causal_lm_output,
    choices_as_rows,
    init_normal,
    masked_lm_output,
    multiple_choice_output,
    probes,
    question_answering_output,
    sequence_classification_output,
    task_loss,
    token_classification_output,
    wanted_outputs,
)
from factory.models.outputs import ModelOutput
from factory.registry import register_config, register_model


@register_config
@dataclass
class BertConfig(PretrainedConfig):
    """Defaults are those of `bert-base-uncased`'s config.json."""

    model_type: ClassVar[str] = "bert"
    depth_fields: ClassVar[tuple[str, ...]] = ("num_hidden_layers",)
    # bert-base-uncased's layout: lowercasing WordPiece, [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, and
    # `[CLS] A [SEP] B [SEP]` with token type 1 for the second text.
    tokenizer_recipe: ClassVar[TokenizerRecipe] = TokenizerRecipe(
        kind="wordpiece",
        tokenizer_class="BertTokenizer",
        special_tokens=("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
        tokenizer_config={
            "unk_token": "[UNK]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "cls_token": "[CLS]",
            "mask_token": "[MASK]",
            "clean_up_tokenization_spaces": True,
        },
        post_processor="template",
        template=("[CLS] $A [SEP]", "[CLS] $A [SEP] $B:1 [SEP]:1"),
        lowercase=True,
    )
    unsupported: ClassVar[dict] = {
        "position_embedding_type": ("absolute", "relative position embeddings are not implemented"),
        "add_cross_attention": (False, "cross-attention in BERT is not implemented"),
    }

    vocab_size: int = 30522
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
    pad_token_id: int | None = 0
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


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        c, eps = config.hidden_size, config.layer_norm_eps
        self.n_head = config.num_attention_heads
        self.causal = config.is_decoder
        self.attn_dropout = config.attention_probs_dropout_prob
        self.attention = nn.ModuleDict(
            dict(
                self=nn.ModuleDict(dict(query=nn.Linear(c, c), key=nn.Linear(c, c), value=nn.Linear(c, c))),
                output=nn.ModuleDict(dict(dense=nn.Linear(c, c), LayerNorm=nn.LayerNorm(c, eps=eps))),
            )
        )
        self.intermediate = nn.ModuleDict(dict(dense=nn.Linear(c, config.intermediate_size)))
        self.output = nn.ModuleDict(
            dict(dense=nn.Linear(config.intermediate_size, c), LayerNorm=nn.LayerNorm(c, eps=eps))
        )
        self.act = activation(config.hidden_act, inplace=True)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None,
        past: tuple | None,
        output_attentions: bool = False,
    ):
        """Returns the layer's output, its (k, v) and its attention probabilities (None unless asked)."""
        sa, ao = self.attention["self"], self.attention["output"]
        q, k, v = (split_heads(sa[n](x), self.n_head) for n in ("query", "key", "value"))  # (B, nh, T, hs)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        mask, is_causal = attention_mask_for_sdpa(attention_mask, q.size(2), k.size(2), self.causal)
        p = self.attn_dropout if self.training else 0.0
        y, probs = attention_with_probs(q, k, v, mask, is_causal, p, probs=output_attentions)
        # Post-LN, as in the original BERT. Residuals are added into the fresh projection outputs (which
        # autograd does not keep): fewer (B, T, C) allocations, half the page faults of `x + dense(y)`.
        # A forward hook that keeps a projection's output must clone it.
        r = self.dropout(ao["dense"](y))
        x = ao["LayerNorm"](r.add_(x))
        h = self.act(self.intermediate["dense"](x))  # (B, T, 4C), activated in place in inference
        r = self.dropout(self.output["dense"](h))
        x = self.output["LayerNorm"](r.add_(x))
        return x, (k, v), probs


class BertPreTrainedModel(PreTrainedModel):
    config_class = BertConfig
    base_model_prefix = "bert"
    checkpoint_table = CheckpointTable(
        renames=COMMON_RENAMES,
        # Old files store the position-id and token-type buffers; we compute them instead.
        ignore=(r"embeddings\.position_ids$", r"embeddings\.token_type_ids$"),
        layer=r"encoder\.layer\.(\d+)\.",
    )

    def _init_weights(self, module: nn.Module) -> None:
        init_normal(module, self.config.initializer_range)
        if isinstance(module, BertLMPredictionHead):
            module.bias.zero_()


@register_model("base")
class BertModel(BertPreTrainedModel):
    def __init__(self, config: BertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        c = config.hidden_size
        pad = (
            config.pad_token_id
            if config.pad_token_id is not None and config.pad_token_id < config.vocab_size
            else None
        )
        self.embeddings = nn.ModuleDict(
            dict(
                word_embeddings=nn.Embedding(config.vocab_size, c, padding_idx=pad),
                position_embeddings=nn.Embedding(config.max_position_embeddings, c),
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
        """`output_hidden_states` adds the embeddings' output and each layer's; `output_attentions`
        each layer's attention probabilities (B, nh, T, past + T). None: the config's value."""
        b, t = input_ids.shape
        past_len = past_key_values[0][0].size(2) if past_key_values is not None else 0
        if past_len + t > self.config.max_position_embeddings:
            raise ValueError(
                f"Sequence of {past_len + t} tokens is longer than max_position_embeddings="
                f"{self.config.max_position_embeddings}; truncate the input."
            )
        attention_mask = document_attention_mask(
            attention_mask, None if past_len else position_ids, self.config.is_decoder
        )
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + t, device=input_ids.device)[None]
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

    def _encode(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None,
        past_key_values: tuple | None,
        use_cache: bool | None,
        output_attentions: bool | None,
        output_hidden_states: bool | None,
    ) -> ModelOutput:
        """The layers and the pooler over the embeddings' (B, T, C) output `x` (RoBERTa's too)."""
        use_cache = (self.config.use_cache and not self.training) if use_cache is None else use_cache
        use_cache = use_cache and self.config.is_decoder
        want_attn, want_hidden = wanted_outputs(self.config, output_attentions, output_hidden_states)
        hidden, attns = ([x] if want_hidden else None), ([] if want_attn else None)
        presents = []
        for i, layer in enumerate(self.encoder["layer"]):
            past = past_key_values[i] if past_key_values is not None else None
            x, kv, probs = layer(x, attention_mask, past, want_attn)
            presents.append(kv)
            if hidden is not None:
                hidden.append(x)
            if attns is not None:
                attns.append(probs)
        pooled = torch.tanh(self.pooler["dense"](x[:, 0])) if self.pooler is not None else None
        return ModelOutput(
            last_hidden_state=x,
            pooler_output=pooled,
            past_key_values=tuple(presents) if use_cache else None,
            hidden_states=tuple(hidden) if hidden is not None else None,
            attentions=tuple(attns) if attns is not None else None,
        )


class _BertHead(BertPreTrainedModel):
    """A model with a head over `self.bert`: its heads call the backbone through `_backbone`, which
    RoBERTa's heads share (the backbone is found by `base_model_prefix`)."""

    def _backbone(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        output_attentions: bool | None,
        output_hidden_states: bool | None,
        past_key_values: tuple | None = None,
        use_cache: bool | None = False,
    ) -> ModelOutput:
        return getattr(self, self.base_model_prefix)(
            input_ids,
            attention_mask,
            token_type_ids,
            position_ids,
            past_key_values,
            use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )


@register_model("seqcls")
class BertForSequenceClassification(_BertHead):
    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
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
        logits = self.classifier(self.dropout(out.pooler_output))  # (B, num_labels)
        return sequence_classification_output(
            logits, labels, self.config, out, last_hidden_state=out.last_hidden_state
        )


@register_model("qa")
class BertForQuestionAnswering(_BertHead):
    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
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


class BertLMPredictionHead(nn.Module):
    """`cls.predictions`: a transform, then the (tied) decoder with a bias of its own."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        c = config.hidden_size
        self.transform = nn.ModuleDict(
            dict(dense=nn.Linear(c, c), LayerNorm=nn.LayerNorm(c, eps=config.layer_norm_eps))
        )
        self.act = activation(config.hidden_act)
        self.decoder = nn.Linear(c, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transform["LayerNorm"](self.act(self.transform["dense"](x)))
        return self.decoder(x)  # (B, T, vocab)


def _mlm_head_ties(self: BertPreTrainedModel) -> list[tuple[str, ...]]:
    """`tied_groups` of every model with `cls.predictions`: the decoder's bias is the head's, and its
    weight the word embeddings' unless the config unties them."""
    groups = [("cls.predictions.bias", "cls.predictions.decoder.bias")]
    if self.config.tie_word_embeddings:
        groups.append(("bert.embeddings.word_embeddings.weight", "cls.predictions.decoder.weight"))
    return groups


@register_model("causal_lm")
class BertLMHeadModel(_BertHead):
    """BERT as a decoder (`is_decoder=True` gives causal attention and a KV cache, as in HF)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = nn.ModuleDict(dict(predictions=BertLMPredictionHead(config)))
        self.post_init()

    tied_groups = _mlm_head_ties

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
        logits = self.cls["predictions"](keep_last(out.last_hidden_state, logits_to_keep, labels))
        return causal_lm_output(logits, labels, out, shift=True)


@register_model("token_cls")
class BertForTokenClassification(_BertHead):
    """A label per token: the classifier over every hidden state (no pooler, as HF)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
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


@register_model("masked_lm")
class BertForMaskedLM(_BertHead):
    """BERT's masked-language-model head (`cls.predictions`), decoder tied to the word embeddings."""

    # Pretraining checkpoints (`bert-base-uncased`'s, saved from BertForPreTraining) also hold the pooler
    # and the next-sentence head, which a masked LM has no use for (HF drops them quietly too). Their MLM
    # head is ours: old files spell its LayerNorm gamma/beta and may lack the decoder's weight or bias,
    # both of which the tied groups below supply.
    checkpoint_table = CheckpointTable(
        renames=COMMON_RENAMES,
        ignore=(
            *BertPreTrainedModel.checkpoint_table.ignore,
            r"(^|\.)pooler\.",
            r"^cls\.seq_relationship\.",
        ),
        layer=BertPreTrainedModel.checkpoint_table.layer,
    )

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = nn.ModuleDict(dict(predictions=BertLMPredictionHead(config)))
        self.post_init()

    tied_groups = _mlm_head_ties

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
        logits = self.cls["predictions"](out.last_hidden_state)  # (B, T, vocab)
        return masked_lm_output(logits, labels, out)


@register_model("multiple_choice")
class BertForMultipleChoice(_BertHead):
    """One score per (context, choice) pair from the pooled output; softmax over a row's choices."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
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


# Pretraining checkpoints hold both pretraining heads; next-sentence prediction leaves the MLM head's keys
# (BertForMaskedLM leaves the other's, above).
_MLM_KEYS = r"^cls\.predictions\."


@register_model("next_sentence")
class BertForNextSentencePrediction(_BertHead):
    """Does sentence B follow sentence A? Logits (B, 2) from the pooled output through
    `cls.seq_relationship`; label 0: B is the next sentence, 1: B is a random one (HF's convention)."""

    checkpoint_table = CheckpointTable(
        renames=COMMON_RENAMES,
        ignore=(*BertPreTrainedModel.checkpoint_table.ignore, _MLM_KEYS),
        layer=BertPreTrainedModel.checkpoint_table.layer,
    )

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config)
        self.cls = nn.ModuleDict(dict(seq_relationship=nn.Linear(config.hidden_size, 2)))
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
        logits = self.cls["seq_relationship"](out.pooler_output)  # (B, 2)
        loss = task_loss("next_sentence")(logits, labels) if labels is not None else None
        return ModelOutput(loss=loss, logits=logits, **probes(out))


@dataclass
class BertForPreTrainingOutput(ModelOutput):
    """`ModelOutput` plus the two pretraining heads' logits, as transformers names them: masked-token
    logits (B, T, vocab) and next-sentence logits (B, 2)."""

    prediction_logits: torch.Tensor | None = None
    seq_relationship_logits: torch.Tensor | None = None


@register_model("pretraining")
class BertForPreTraining(_BertHead):
    """BERT's pretraining model: the masked-LM head (`cls.predictions`, decoder tied to the word
    embeddings) and the next-sentence head (`cls.seq_relationship`) over one encoder pass."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config)
        self.cls = nn.ModuleDict(
            dict(
                predictions=BertLMPredictionHead(config),
                seq_relationship=nn.Linear(config.hidden_size, 2),
            )
        )
        self.post_init()

    tied_groups = _mlm_head_ties

    def forward(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        labels=None,
        next_sentence_label=None,
        output_attentions=None,
        output_hidden_states=None,
    ):
        out = self._backbone(
            input_ids, attention_mask, token_type_ids, position_ids, output_attentions, output_hidden_states
        )
        prediction = self.cls["predictions"](out.last_hidden_state)  # (B, T, vocab)
        relationship = self.cls["seq_relationship"](out.pooler_output)  # (B, 2)
        loss = None
        if labels is not None and next_sentence_label is not None:
            loss = task_loss("pretraining")(prediction, relationship, labels, next_sentence_label)
        return BertForPreTrainingOutput(
            loss=loss, prediction_logits=prediction, seq_relationship_logits=relationship, **probes(out)
        )
