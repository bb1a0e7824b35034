"""The loss of every head, in one place, computed as Hugging Face computes it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def sequence_classification_loss(logits: torch.Tensor, labels: torch.Tensor, config) -> torch.Tensor:
    """Regression for one label, cross-entropy for integer labels, BCE for multi-hot float labels."""
    problem = config.problem_type
    if problem is None:
        if config.num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        if config.num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
        return F.mse_loss(logits, labels.to(logits.dtype))
    if problem == "single_label_classification":
        return F.cross_entropy(logits.view(-1, config.num_labels).float(), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits.float(), labels.to(torch.float32))


def question_answering_loss(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    start_positions: torch.Tensor,
    end_positions: torch.Tensor,
) -> torch.Tensor:
    """Mean of start and end cross-entropies; positions outside the sequence are ignored."""
    if start_positions.dim() > 1:
        start_positions = start_positions.squeeze(-1)
    if end_positions.dim() > 1:
        end_positions = end_positions.squeeze(-1)
    ignored = start_logits.size(1)
    start_positions = start_positions.clamp(0, ignored)
    end_positions = end_positions.clamp(0, ignored)
    start = F.cross_entropy(start_logits.float(), start_positions, ignore_index=ignored)
    end = F.cross_entropy(end_logits.float(), end_positions, ignore_index=ignored)
    return (start + end) / 2


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, shift: bool = True) -> torch.Tensor:
    """Next-token cross-entropy; `labels` equal to -100 are ignored.

    With `shift` (HF's GPT-2 and BERT convention) `labels[i]` is the token at position i and the model
    predicts it from position i - 1; without it (HF's `BartForCausalLM`) labels are already shifted.
    """
    if shift:
        labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    flat = logits.reshape(-1, logits.size(-1))
    return _TokenCrossEntropy.apply(flat, labels.reshape(-1).to(logits.device))


class _TokenCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of (N, V) logits against (N,) labels (IGNORE_INDEX skipped), equal to
    `F.cross_entropy(logits.float(), labels, ignore_index=-100)` and its gradient.

    Over a vocabulary, `F.cross_entropy` allocates three more (N, V) tensors (log-softmax, the zeroed
    gradient of the NLL, the log-softmax gradient) and, for half-precision logits, an fp32 copy: with
    GPT-2 at 8x128 that is 620 MB a step. Here the forward keeps one log-sum-exp per row, computed over
    row chunks whose temporaries are small, and the backward writes softmax minus one-hot straight into
    the one gradient tensor it returns.
    """

    CHUNK_ELEMENTS = 1 << 22  # 16 MB of fp32 temporaries per chunk of rows

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n, v = logits.shape
        rows = max(1, _TokenCrossEntropy.CHUNK_ELEMENTS // max(v, 1))
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        for start in range(0, n, rows):
            lse[start : start + rows] = torch.logsumexp(logits[start : start + rows].float(), dim=-1)
        valid = labels != IGNORE_INDEX
        safe = labels.masked_fill(~valid, 0)
        target = logits.gather(1, safe[:, None]).squeeze(1).float()
        count = valid.sum()
        ctx.save_for_backward(logits, lse, safe, valid, count)
        ctx.rows = rows
        return ((lse - target) * valid).sum() / count  # 0 / 0 = nan when every label is ignored, as torch

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        logits, lse, safe, valid, count = ctx.saved_tensors
        scale = (grad_output / count) * valid  # (N,) fp32
        grad = torch.empty_like(logits)
        for start in range(0, logits.size(0), ctx.rows):
            rows = slice(start, start + ctx.rows)
            if logits.dtype == torch.float32:  # softmax, scaled, written in place into the gradient
                torch.sub(logits[rows], lse[rows, None], out=grad[rows]).exp_().mul_(scale[rows, None])
            else:  # in fp32, then rounded once, as F.cross_entropy on the upcast logits
                grad[rows] = logits[rows].float().sub_(lse[rows, None]).exp_().mul_(scale[rows, None])
        grad.scatter_add_(1, safe[:, None], -scale[:, None].to(grad.dtype))
        return grad, None


def token_classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over (B, T, num_labels) logits against (B, T) labels; -100 labels are ignored."""
    flat = logits.reshape(-1, logits.size(-1)).float()
    return F.cross_entropy(flat, labels.reshape(-1).to(logits.device), ignore_index=IGNORE_INDEX)


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy at the masked positions: `labels[i]` is the token at position i, -100 elsewhere.

    Unshifted (each position predicts itself), as HF's `BertForMaskedLM`; the same memory-lean kernel
    as the causal loss, since the logits span the vocabulary at every position.
    """
    return causal_lm_loss(logits, labels, shift=False)


def next_sentence_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BERT's next-sentence prediction: (B, 2) logits, labels 0 (B follows A) or 1 (B is random)."""
    return F.cross_entropy(logits.float(), labels.view(-1))


def pretraining_loss(
    prediction_logits: torch.Tensor,
    seq_relationship_logits: torch.Tensor,
    labels: torch.Tensor,
    next_sentence_label: torch.Tensor,
) -> torch.Tensor:
    """BERT's pretraining loss, as HF sums it: the masked-token loss (mean over targets) plus the
    next-sentence loss (mean over pairs)."""
    return masked_lm_loss(prediction_logits, labels) + next_sentence_loss(
        seq_relationship_logits, next_sentence_label
    )


def multiple_choice_loss(
    logits: torch.Tensor, labels: torch.Tensor, choice_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy of (B, num_choices) logits against the (B,) index of the right choice.

    `choice_mask` (B, num_choices), true where a choice is real, takes padded choices (a batch of
    examples with fewer choices than its widest) out of the softmax: each example's loss and gradient are
    those it has scored on its own choices. None, as HF, scores every choice.
    """
    logits = logits.float()
    if choice_mask is not None:
        logits = mask_choices(logits, choice_mask)
    return F.cross_entropy(logits, labels.view(-1).to(logits.device))


def mask_choices(logits: torch.Tensor, choice_mask: torch.Tensor) -> torch.Tensor:
    """(B, num_choices) logits with -inf at padded choices: probability 0, gradient 0, never the argmax."""
    return logits.masked_fill(~choice_mask.to(device=logits.device, dtype=torch.bool), float("-inf"))


def seq2seq_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, T, vocab) decoder logits against (B, T) target ids; -100 labels are ignored.

    Unshifted, as HF's `BartForConditionalGeneration`: the decoder inputs are the labels shifted right, so
    `logits[:, i]` already predicts `labels[:, i]`.
    """
    return causal_lm_loss(logits, labels, shift=False)
