"""Parameter-free loss kernels the heads' losses are built from. Each task's loss lives with its head
(`model_loss` in `factory/heads/<name>.py`); the model classes compute it through the registry, as
transformers' models compute theirs through `loss_function`."""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (N, V) logits against (N,) labels, IGNORE_INDEX skipped: the memory-lean
    kernel below, for logits that span a vocabulary."""
    return _TokenCrossEntropy.apply(logits, labels.to(logits.device))


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
