"""Parameter-free helpers shared by the architectures: activations, masks, the attention call."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    # GPT-2's "gelu_new" is the tanh approximation; torch's fused kernel computes the same formula.
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}
ACTIVATIONS = tuple(sorted(_ACTIVATIONS))
# The same functions overwriting their argument: no second tensor of the (B, T, 4C) MLP width.
_INPLACE = {
    "gelu": lambda x: torch.ops.aten.gelu_(x),
    "gelu_new": lambda x: torch.ops.aten.gelu_(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: torch.ops.aten.gelu_(x, approximate="tanh"),
    "gelu_fast": lambda x: torch.ops.aten.gelu_(x, approximate="tanh"),
    "relu": torch.relu_,
    "silu": lambda x: F.silu(x, inplace=True),
    "swish": lambda x: F.silu(x, inplace=True),
    "tanh": torch.tanh_,
}


def activation(name: str, inplace: bool = False):
    """The activation function named as in HF configs (`hidden_act`, `activation_function`).

    With `inplace=True` the function overwrites its argument whenever autograd is not recording it
    (inference), which saves allocating and filling a second tensor of its size; give it only a fresh
    tensor that nothing else reads.
    """
    try:
        fn = _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"Unknown activation {name!r}; valid: {list(ACTIVATIONS)}") from None
    if not inplace:
        return fn
    fn_ = _INPLACE[name]

    def maybe_inplace(x: torch.Tensor) -> torch.Tensor:
        return fn(x) if torch.is_grad_enabled() and x.requires_grad else fn_(x)

    return maybe_inplace


def attention_mask_for_sdpa(
    attention_mask: torch.Tensor | None,
    q_len: int,
    kv_len: int,
    causal: bool,
) -> tuple[torch.Tensor | None, bool]:
    """Turn a (B, kv_len) 1/0 padding mask into what `scaled_dot_product_attention` takes.

    Returns `(mask, is_causal)`; `mask` is boolean (B, 1, q_len, kv_len) with True where a query may
    attend, or None when no masking (or only a square causal mask) is needed, so that SDPA can pick its
    fused kernels. The last `q_len` of `kv_len` keys are the current tokens (a cache holds the rest).
    """
    if attention_mask is not None and attention_mask.dim() == 4:  # already built (packed documents)
        return attention_mask, False
    padded = attention_mask is not None and not bool(attention_mask.all())
    if not padded:
        if not causal or q_len == 1:
            return None, False
        if q_len == kv_len:
            return None, True
    device = attention_mask.device if attention_mask is not None else None
    mask = None
    if padded:
        mask = attention_mask[:, None, None, :].bool()  # (B, 1, 1, kv)
    if causal:
        q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
        k_pos = torch.arange(kv_len, device=device)[None, :]
        causal_mask = (k_pos <= q_pos)[None, None]  # (1, 1, q, kv)
        mask = causal_mask if mask is None else mask & causal_mask
    # A query that may attend to nothing (a left-pad position under a causal mask) would give NaN;
    # let it attend everywhere instead: its output is padding and is never read.
    mask = mask | ~mask.any(dim=-1, keepdim=True)
    return mask, False


def document_ids(position_ids: torch.Tensor) -> torch.Tensor | None:
    """Which packed document each token of (B, T) `position_ids` belongs to, as (B, T) ids counting from
    0 in each row; None when no row's positions restart (one document per row).

    A document starts wherever the positions do not go up by one, as transformers'
    `find_packed_sequence_indices` decides, so the same inputs give the same attention in both.
    """
    first = position_ids[:, :1] - 1  # the first token continues "its" document
    docs = (torch.diff(position_ids, prepend=first, dim=-1) != 1).cumsum(-1)
    return None if not bool(docs[:, -1].any()) else docs


def document_attention_mask(
    attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None, causal: bool
) -> torch.Tensor | None:
    """The (B, 1, T, T) boolean mask that keeps attention inside each packed document, when positions
    restart within a row and no `attention_mask` is given (transformers' rule for packed sequences, with
    no cache: pass `position_ids=None` when there is one); else `attention_mask` unchanged.

    `attention_mask_for_sdpa` passes a 4-D mask through, so a model computes this once, before its
    layers, from the `position_ids` the caller gave (not the ones it defaults to: those never restart).
    """
    if attention_mask is not None or position_ids is None or position_ids.size(-1) < 2:
        return attention_mask
    docs = document_ids(position_ids)
    if docs is None:
        return None
    mask = docs[:, None, :, None] == docs[:, None, None, :]  # (B, 1, T, T): same document
    if causal:
        t = position_ids.size(-1)
        mask = mask & torch.ones(t, t, dtype=torch.bool, device=mask.device).tril()
    return mask


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    dropout_p: float,
    scale: float | None = None,
) -> torch.Tensor:
    """SDPA over (B, nh, T, hs) tensors; returns (B, T, nh * hs)."""
    y = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
    )
    b, nh, t, hs = y.shape
    return y.transpose(1, 2).reshape(b, t, nh * hs)


def attention_with_probs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    dropout_p: float,
    scale: float | None = None,
    *,
    probs: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`attention`, plus its (B, nh, q, kv) probabilities when `probs` (HF's `output_attentions`).

    SDPA does not return its probabilities, so with `probs` the scores are computed explicitly, as
    HF's eager path does (float32 softmax, dropout after it); without, this is `attention` and the
    probabilities are None, so a layer calls one function either way. `k` and `v` may have fewer heads
    than `q` (grouped-query attention). Returns `(y, probs)`, `y` being (B, T, nh * hs).
    """
    if not probs:
        return attention(q, k, v, mask, is_causal, dropout_p, scale), None
    if k.size(1) != q.size(1):  # each k, v head serves nh / nkv query heads, as SDPA's enable_gqa
        k, v = (t.repeat_interleave(q.size(1) // k.size(1), dim=1) for t in (k, v))
    scale = default_scale(q.size(-1)) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, nh, q, kv)
    if is_causal:  # the last q of kv positions are the queries (a cache holds the rest)
        q_len, kv_len = scores.shape[-2:]
        mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=q.device).tril(kv_len - q_len)
    if mask is not None:
        # The dtype's minimum rather than -inf, as HF: a fully masked row would be NaN with -inf.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    p = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
    if dropout_p:
        p = F.dropout(p, dropout_p)
    y = p @ v  # (B, nh, q, hs)
    b, nh, t, hs = y.shape
    return y.transpose(1, 2).reshape(b, t, nh * hs), p


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, C) -> (B, nh, T, hs)."""
    b, t, c = x.shape
    return x.view(b, t, n_head, c // n_head).transpose(1, 2)


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


def keep_last(hidden: torch.Tensor, logits_to_keep: int, labels: torch.Tensor | None) -> torch.Tensor:
    """The last `logits_to_keep` positions of (B, T, C) `hidden` (0: all), as HF's `logits_to_keep`:
    generation needs the next-token logits only, and projecting all T prompt positions onto the
    vocabulary costs T times that."""
    if not logits_to_keep:
        return hidden
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
        raise ValueError(
            f"logits_to_keep={logits_to_keep!r} is not valid: expected an integer >= 0 (0: all)."
        )
    if labels is not None:
        raise ValueError(
            f"logits_to_keep={logits_to_keep} with labels: the loss needs the logits of every position; "
            "pass logits_to_keep=0."
        )
    return hidden[:, -logits_to_keep:]


def last_token_states(
    hidden: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    pad_token_id: int | None,
) -> torch.Tensor:
    """The (B, C) states of each row's last token that is not padding, which decoder-only classifiers read.

    As HF: with `pad_token_id` set, the last token is the rightmost one that is not `pad_token_id` (left
    or right padding alike; `attention_mask` is not consulted). Without it, HF takes the last position and
    refuses batches of more than one; so do we unless `attention_mask` is given, whose rightmost 1 then
    marks the last token (so a batch works without a pad token).
    """
    b, t = input_ids.shape
    if pad_token_id is not None:
        keep = input_ids != pad_token_id
    elif attention_mask is not None:
        keep = attention_mask[:, -t:].bool()
    elif b == 1:
        keep = torch.ones_like(input_ids, dtype=torch.bool)
    else:
        raise ValueError(
            f"Cannot find the last token of {b} sequences: config.pad_token_id is None and no "
            "attention_mask was given. Set pad_token_id or pass attention_mask."
        )
    # Rightmost kept position (0 when none is kept, as HF's argmax gives).
    last = (torch.arange(t, device=hidden.device) * keep.to(hidden.device, torch.int32)).argmax(-1)
    return hidden[torch.arange(b, device=hidden.device), last]


def eos_pooled(hidden: torch.Tensor, input_ids: torch.Tensor, config) -> torch.Tensor:
    """The decoder state at each row's last <eos> (`config.eos_token_id`) of `input_ids`, (B, C), as HF
    pools it for encoder-decoder classifiers.

    As in HF, every row must hold the same number (at least one) of <eos> tokens.
    """
    eos_token_id = config.eos_token_id
    if not isinstance(eos_token_id, int):
        raise ValueError(
            f"{type(config).__name__}.eos_token_id={eos_token_id!r}: eos pooling needs one integer token id."
        )
    eos = input_ids.eq(eos_token_id)
    counts = eos.sum(1)
    if bool((counts != counts[0]).any()):
        raise ValueError(
            f"All examples must have the same number of <eos> tokens (eos_token_id={eos_token_id}); "
            f"counts per row: {counts.tolist()}."
        )
    if int(counts[0]) == 0:
        raise ValueError(f"Each example must contain at least one <eos> token (eos_token_id={eos_token_id}).")
    b, _, c = hidden.shape
    return hidden[eos].view(b, -1, c)[:, -1]
