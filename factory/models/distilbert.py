"""DistilBERT: its config, its blocks, its heads and its checkpoint table, with Hugging Face's names.

A post-LN BERT encoder without token types or pooler, under its own names (`n_layers`, `dim`,
`hidden_dim`, `n_heads`; `q_lin`, `sa_layer_norm`, `ffn.lin1`...), which the config maps to the common
names. Its checkpoint table also reads BERT files, which is how DistilBERT was made: its authors
initialised the student from every other layer of bert-base (`init.layers=even`, see the table).
Shapes in comments: B batch, T tokens, C width, nh heads.
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
    split_heads,
)
from factory.models.modeling import (
    PreTrainedModel,
    choices_as_rows,
    init_normal,
    masked_lm_output,
    multiple_choice_output,
    question_answering_output,
    sequence_classification_output,
    token_classification_output,
    wanted_outputs,
)
from factory.models.outputs import ModelOutput
from factory.registry import register_config, register_model

# DistilBERT's LayerNorms have a fixed eps (no config field), as in HF.
LAYER_NORM_EPS = 1e-12


@register_config
@dataclass
class DistilBertConfig(PretrainedConfig):
    """Defaults are those of `distilbert-base-uncased`'s config.json (and HF's `DistilBertConfig`)."""

    model_type: ClassVar[str] = "distilbert"
    aliases: ClassVar[dict[str, tuple[str, ...]]] = {
        "num_hidden_layers": ("n_layers",),
        "hidden_size": ("dim",),
        "num_attention_heads": ("n_heads",),
        "intermediate_size": ("hidden_dim",),
    }
    depth_fields: ClassVar[tuple[str, ...]] = ("n_layers",)
    # A BERT config.json gives the student's config (the common names need no entry); its token types,
    # pooler and layer_norm_eps have no field here (DistilBERT's eps is BERT's 1e-12).
    reads_model_types: ClassVar[dict[str, dict[str, str]]] = {
        "bert": {
            "hidden_act": "activation",
            "hidden_dropout_prob": "dropout",
            "attention_probs_dropout_prob": "attention_dropout",
        }
    }
    # distilbert-base-uncased's layout: BERT's lowercasing WordPiece and template; its tokenizer class
    # returns no token type ids, since the model has none.
    tokenizer_recipe: ClassVar[TokenizerRecipe] = TokenizerRecipe(
        kind="wordpiece",
        tokenizer_class="DistilBertTokenizer",
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

    vocab_size: int = 30522
    max_position_embeddings: int = 512
    sinusoidal_pos_embds: bool = False
    n_layers: int = 6
    n_heads: int = 12
    dim: int = 768
    hidden_dim: int = 3072
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation: str = "gelu"
    initializer_range: float = 0.02
    qa_dropout: float = 0.1
    seq_classif_dropout: float = 0.2
    pad_token_id: int | None = 0

    def validate(self) -> None:
        self._check_positive(
            "vocab_size", "max_position_embeddings", "n_layers", "n_heads", "dim", "hidden_dim"
        )
        self._check_divides("n_heads", "dim")
        self._check_dropout("dropout", "attention_dropout", "qa_dropout", "seq_classif_dropout")
        self._check_choice("activation", ACTIVATIONS)


def sinusoidal_positions(n_pos: int, dim: int) -> torch.Tensor:
    """(n_pos, dim): sin on even columns, cos on odd ones, of pos / 10000^(2 * (j // 2) / dim)."""
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    out = torch.empty(n_pos, dim, dtype=torch.float64)
    out[:, 0::2] = torch.sin(angle[:, 0::2])
    out[:, 1::2] = torch.cos(angle[:, 1::2])
    return out.float()


class Embeddings(nn.Module):
    """Word and position embeddings (no token types), LayerNorm, dropout."""

    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__()
        pad = config.pad_token_id
        pad = pad if pad is not None and 0 <= pad < config.vocab_size else None
        self.word_embeddings = nn.Embedding(config.vocab_size, config.dim, padding_idx=pad)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.dim)
        self.LayerNorm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(config.dropout)
        if config.sinusoidal_pos_embds:
            # Fixed positions, as the original DistilBERT and transformers v4 keep them (v5 trains them);
            # `_init_weights` fills the table.
            self.position_embeddings.sinusoidal = True
            self.position_embeddings.weight.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
        if position_ids is None:
            position_ids = torch.arange(input_ids.size(1), device=input_ids.device)[None]
        x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(x))  # (B, T, C)


class TransformerBlock(nn.Module):
    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__()
        c = config.dim
        self.n_head = config.n_heads
        self.attn_dropout = config.attention_dropout
        self.attention = nn.ModuleDict(
            dict(q_lin=nn.Linear(c, c), k_lin=nn.Linear(c, c), v_lin=nn.Linear(c, c), out_lin=nn.Linear(c, c))
        )
        self.sa_layer_norm = nn.LayerNorm(c, eps=LAYER_NORM_EPS)
        self.ffn = nn.ModuleDict(
            dict(lin1=nn.Linear(c, config.hidden_dim), lin2=nn.Linear(config.hidden_dim, c))
        )
        self.output_layer_norm = nn.LayerNorm(c, eps=LAYER_NORM_EPS)
        self.act = activation(config.activation, inplace=True)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns the block's output and its attention probabilities (None unless asked)."""
        a = self.attention
        q, k, v = (split_heads(a[n](x), self.n_head) for n in ("q_lin", "k_lin", "v_lin"))  # (B, nh, T, hs)
        p = self.attn_dropout if self.training else 0.0
        y, probs = attention_with_probs(q, k, v, mask, False, p, probs=output_attentions)
        # Post-LN; residuals added in place into fresh projection outputs, as in BERT's layer.
        x = self.sa_layer_norm(a["out_lin"](y).add_(x))
        h = self.act(self.ffn["lin1"](x))  # (B, T, hidden_dim)
        r = self.dropout(self.ffn["lin2"](h))
        return self.output_layer_norm(r.add_(x)), probs


# A BERT checkpoint's keys under DistilBERT's names: what DistilBERT's authors copied into the student
# (transformers' `examples/research_projects/distillation/scripts/extract_distilbert.py`). Token types,
# the pooler and the next-sentence head have no place in DistilBERT and are dropped, as they did.
_LAYER = r"encoder\.layer\.(\d+)\."
_FROM_BERT: tuple[tuple[str, str], ...] = (
    (r"^bert\.", "distilbert."),
    (_LAYER + r"attention\.self\.query\.", r"transformer.layer.\1.attention.q_lin."),
    (_LAYER + r"attention\.self\.key\.", r"transformer.layer.\1.attention.k_lin."),
    (_LAYER + r"attention\.self\.value\.", r"transformer.layer.\1.attention.v_lin."),
    (_LAYER + r"attention\.output\.dense\.", r"transformer.layer.\1.attention.out_lin."),
    (_LAYER + r"attention\.output\.LayerNorm\.", r"transformer.layer.\1.sa_layer_norm."),
    (_LAYER + r"intermediate\.dense\.", r"transformer.layer.\1.ffn.lin1."),
    (_LAYER + r"output\.dense\.", r"transformer.layer.\1.ffn.lin2."),
    (_LAYER + r"output\.LayerNorm\.", r"transformer.layer.\1.output_layer_norm."),
    (r"^cls\.predictions\.transform\.dense\.", "vocab_transform."),
    (r"^cls\.predictions\.transform\.LayerNorm\.", "vocab_layer_norm."),
    (r"^cls\.predictions\.decoder\.", "vocab_projector."),
    (r"^cls\.predictions\.bias$", "vocab_projector.bias"),
)
_BERT_ONLY = (r"embeddings\.token_type_embeddings\.", r"(^|\.)pooler\.", r"^cls\.seq_relationship\.")


class DistilBertPreTrainedModel(PreTrainedModel):
    config_class = DistilBertConfig
    base_model_prefix = "distilbert"
    checkpoint_table = CheckpointTable(
        renames=(*COMMON_RENAMES, *_FROM_BERT),
        # Old files store the position-id buffer; we compute it instead.
        ignore=(r"embeddings\.position_ids$", r"embeddings\.token_type_ids$", *_BERT_ONLY),
        layer=r"transformer\.layer\.(\d+)\.",
    )

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Embedding) and getattr(module, "sinusoidal", False):
            module.weight.copy_(sinusoidal_positions(*module.weight.shape))
        else:
            init_normal(module, self.config.initializer_range)


@register_model("base")
class DistilBertModel(DistilBertPreTrainedModel):
    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__(config)
        self.embeddings = Embeddings(config)
        self.transformer = nn.ModuleDict(
            dict(layer=nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers)))
        )
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> ModelOutput:
        """`token_type_ids` are accepted and ignored, as transformers does: DistilBERT has no token types,
        and callers that feed BERT's inputs (a BERT tokenizer, the multiple-choice batches) still work.
        `output_hidden_states` adds the embeddings' output and each layer's, `output_attentions` each
        layer's attention probabilities (B, nh, T, T); None: the config's value."""
        t = input_ids.size(1)
        if t > self.config.max_position_embeddings:
            raise ValueError(
                f"Sequence of {t} tokens is longer than max_position_embeddings="
                f"{self.config.max_position_embeddings}; truncate the input."
            )
        x = self.embeddings(input_ids, position_ids)
        attention_mask = document_attention_mask(attention_mask, position_ids, causal=False)
        mask, _ = attention_mask_for_sdpa(attention_mask, t, t, causal=False)
        want_attn, want_hidden = wanted_outputs(self.config, output_attentions, output_hidden_states)
        hidden, attns = ([x] if want_hidden else None), ([] if want_attn else None)
        for layer in self.transformer["layer"]:
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


class _DistilBertHead(DistilBertPreTrainedModel):
    def _backbone(
        self, input_ids, attention_mask, position_ids, output_attentions, output_hidden_states
    ) -> ModelOutput:
        return self.distilbert(
            input_ids,
            attention_mask,
            position_ids=position_ids,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )

    def _pooled(self, hidden: torch.Tensor) -> torch.Tensor:
        """The (B, C) input of `classifier` in the sequence and multiple-choice heads: `pre_classifier` and
        ReLU on the [CLS] state, then dropout."""
        return self.dropout(torch.relu(self.pre_classifier(hidden[:, 0])))


@register_model("seqcls")
class DistilBertForSequenceClassification(_DistilBertHead):
    """`pre_classifier` + ReLU on the [CLS] state, then `classifier`."""

    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__(config)
        self.distilbert = DistilBertModel(config)
        self.pre_classifier = nn.Linear(config.dim, config.dim)
        self.classifier = nn.Linear(config.dim, config.num_labels)
        self.dropout = nn.Dropout(config.seq_classif_dropout)
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
        out = self._backbone(input_ids, attention_mask, position_ids, output_attentions, output_hidden_states)
        hidden = out.last_hidden_state
        logits = self.classifier(self._pooled(hidden))  # (B, num_labels)
        return sequence_classification_output(logits, labels, self.config, out, last_hidden_state=hidden)


@register_model("qa")
class DistilBertForQuestionAnswering(_DistilBertHead):
    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__(config)
        self.distilbert = DistilBertModel(config)
        self.qa_outputs = nn.Linear(config.dim, 2)
        self.dropout = nn.Dropout(config.qa_dropout)
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
        out = self._backbone(input_ids, attention_mask, position_ids, output_attentions, output_hidden_states)
        logits = self.qa_outputs(self.dropout(out.last_hidden_state))  # (B, T, 2)
        return question_answering_output(logits, start_positions, end_positions, out)


@register_model("token_cls")
class DistilBertForTokenClassification(_DistilBertHead):
    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__(config)
        self.distilbert = DistilBertModel(config)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.dim, config.num_labels)
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
        out = self._backbone(input_ids, attention_mask, position_ids, output_attentions, output_hidden_states)
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (B, T, num_labels)
        return token_classification_output(logits, labels, out)


@register_model("masked_lm")
class DistilBertForMaskedLM(_DistilBertHead):
    """`vocab_transform`, the activation, `vocab_layer_norm`, then `vocab_projector` (tied to the words)."""

    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__(config)
        self.distilbert = DistilBertModel(config)
        self.act = activation(config.activation)
        self.vocab_transform = nn.Linear(config.dim, config.dim)
        self.vocab_layer_norm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)
        self.vocab_projector = nn.Linear(config.dim, config.vocab_size)
        self.post_init()

    def tied_groups(self) -> list[tuple[str, ...]]:
        if not self.config.tie_word_embeddings:
            return []
        return [("distilbert.embeddings.word_embeddings.weight", "vocab_projector.weight")]

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
        out = self._backbone(input_ids, attention_mask, position_ids, output_attentions, output_hidden_states)
        hidden = out.last_hidden_state
        x = self.vocab_layer_norm(self.act(self.vocab_transform(hidden)))
        logits = self.vocab_projector(x)  # (B, T, vocab)
        return masked_lm_output(logits, labels, out)


@register_model("multiple_choice")
class DistilBertForMultipleChoice(_DistilBertHead):
    """One score per (context, choice) pair from `pre_classifier` + ReLU on [CLS]."""

    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__(config)
        self.distilbert = DistilBertModel(config)
        self.pre_classifier = nn.Linear(config.dim, config.dim)
        self.classifier = nn.Linear(config.dim, 1)
        self.dropout = nn.Dropout(config.seq_classif_dropout)
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
        rows = choices_as_rows(input_ids, attention_mask, position_ids)
        out = self._backbone(*rows, output_attentions, output_hidden_states)
        scores = self.classifier(self._pooled(out.last_hidden_state))  # (B * num_choices, 1)
        return multiple_choice_output(scores, input_ids, labels, out)
