"""Text generation for every causal-LM model of the factory: greedy or sampled, with the KV cache.

`generate` follows transformers' `generate()` for decoder-only models step for step, so that greedy
output is the same token for token on the same weights:

- one prefill over the prompt, then one token per step feeding only that token and the cache
  (`past_key_values`, `use_cache=True`);
- the attention mask grows by one column per step; models that take `position_ids` get them from the
  mask (`cumsum - 1`, 0 on padding), so left-padded rows count positions from their first real token;
- sampling scales by temperature, then keeps the top-k logits, then the top-p nucleus (HF's order and
  formulas), and draws with `torch.multinomial` from a local `torch.Generator` (the global RNG is left
  alone);
- a row that emitted an eos token is finished: it emits the pad token afterwards, and generation stops
  when every row is finished or `max_new_tokens` were added;
- a config with `forced_eos_token_id` (BART's) gets that token as the last of `max_new_tokens`, as HF's
  `ForcedEOSTokenLogitsProcessor` does.

`generate_seq2seq` is the same greedy loop for encoder-decoders (BartForConditionalGeneration): the
encoder runs once, the decoder starts from `decoder_start_token_id` and reads one token a step with its
cache, and HF's min-new-tokens, forced-bos and forced-eos processors apply in HF's order.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Sequence

import torch

logger = logging.getLogger(__name__)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not valid: expected a positive integer.")
    return value


def check_sampling_args(
    do_sample: bool, temperature: float, top_k: int | None, top_p: float | None
) -> tuple[float, int | None, float | None]:
    """Validate the sampling knobs; errors name the argument, its value and what is valid."""
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
    ):
        raise ValueError(f"temperature={temperature!r} is not valid: expected a finite number >= 0.")
    if temperature < 0:
        raise ValueError(
            f"temperature={temperature!r} is not valid: expected a number >= 0 (0 means greedy)."
        )
    if do_sample and temperature == 0:
        raise ValueError(
            "temperature=0 with do_sample=True is not valid: sampling divides the logits by the temperature. "
            "Use do_sample=False for greedy decoding, or a temperature > 0."
        )
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ValueError(f"top_k={top_k!r} is not valid: expected an integer >= 1 (0 or None: no top-k).")
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0
    ):
        raise ValueError(f"top_p={top_p!r} is not valid: expected a number in (0, 1] (1 or None: no top-p).")
    return float(temperature), (top_k or None), (float(top_p) if top_p is not None else None)


def _eos_ids(eos_token_id: int | Sequence[int] | None) -> list[int]:
    if eos_token_id is None:
        return []
    if isinstance(eos_token_id, int):
        return [eos_token_id]
    return [int(t) for t in eos_token_id]


def process_logits(
    scores: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Temperature, then top-k, then top-p over (B, vocab) logits, as transformers' logits warpers.

    Filtered tokens get -inf. Top-k keeps every token tied with the k-th best. Top-p keeps the smallest
    set of most probable tokens whose probability mass reaches `top_p`, and always at least one token.
    """
    if temperature != 1.0:
        scores = scores / temperature
    if top_k is not None and top_k < scores.size(-1):
        kth_best = torch.topk(scores, top_k, dim=-1).values[..., -1:]  # (B, 1)
        scores = scores.masked_fill(scores < kth_best, -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # A token goes when the tokens less probable than it, itself included, hold at most 1 - top_p of
        # the mass, i.e. when the more probable ones already hold top_p. The most probable always stays.
        remove_sorted = cumulative <= (1 - top_p)
        remove_sorted[..., -1:] = False
        remove = remove_sorted.scatter(-1, sorted_indices, remove_sorted)
        scores = scores.masked_fill(remove, -math.inf)
    return scores


def _max_positions(model: torch.nn.Module) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 20,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """Continue each row of `input_ids` by up to `max_new_tokens` tokens; returns prompt + new tokens.

    Args:
        model: a causal-LM model of the factory (GPT2LMHeadModel, BertLMHeadModel with is_decoder,
            BartForCausalLM); put it in eval mode first (`from_pretrained` does).
        input_ids: (B, T) prompt ids; batches of prompts of different lengths must be LEFT-padded.
        attention_mask: (B, T), 1 for real tokens and 0 for padding; None means no padding.
        max_new_tokens: how many tokens to add at most.
        do_sample: False for greedy decoding (temperature, top_k and top_p are then ignored, as in HF).
        temperature, top_k, top_p: sampling filters (HF's semantics; see `process_logits`).
        eos_token_id: token id(s) that end a row; None takes `model.config.eos_token_id` (as HF does);
            pass `[]` to never stop early.
        pad_token_id: what finished rows emit; None takes `model.config.pad_token_id`, then the eos id.
        seed: seeds a local generator for sampling; None draws a fresh seed (not reproducible).

    Returns:
        (B, T + n) token ids, n <= max_new_tokens (fewer when every row reached eos).

    Raises:
        ValueError: bad arguments, or prompt + max_new_tokens longer than the model's positions.
    """
    _positive_int("max_new_tokens", max_new_tokens)
    temperature, top_k, top_p = check_sampling_args(do_sample, temperature, top_k, top_p)
    if input_ids.dim() != 2 or input_ids.size(1) == 0:
        raise ValueError(
            f"input_ids must be (batch, length) with length >= 1, got shape {tuple(input_ids.shape)}."
        )
    b, t = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    elif tuple(attention_mask.shape) != (b, t):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; expected {(b, t)} like input_ids."
        )
    limit = _max_positions(model)
    if limit is not None and t + max_new_tokens > limit:
        raise ValueError(
            f"Prompt of {t} tokens + max_new_tokens={max_new_tokens} = {t + max_new_tokens} tokens is longer than "
            f"the model's max_position_embeddings={limit}; use max_new_tokens <= {max(limit - t, 0)} or a "
            "shorter prompt."
        )
    if t > 1 and bool((attention_mask[:, -1] == 0).any()):
        logger.warning("A prompt ends in padding: decoder-only models need LEFT padding for correct output.")

    config = model.config
    eos = _eos_ids(config.eos_token_id if eos_token_id is None else eos_token_id)
    if pad_token_id is None:
        pad_token_id = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else 0)
    forced_eos = getattr(config, "forced_eos_token_id", None)
    generator = None
    if do_sample:
        generator = torch.Generator(device=input_ids.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
    parameters = inspect.signature(model.forward).parameters
    takes_positions = "position_ids" in parameters

    with torch.inference_mode():
        ids, mask = input_ids, attention_mask.long()
        eos_tensor = torch.tensor(eos, device=ids.device, dtype=ids.dtype)
        unfinished = torch.ones(b, dtype=torch.bool, device=ids.device)
        past = None
        for step in range(max_new_tokens):
            # With a cache only the last token goes in. A model that returns no cache (a BERT without
            # is_decoder, whose attention is bidirectional) gets the whole sequence again each step.
            step_ids = ids if past is None else ids[:, -1:]
            kwargs = {"attention_mask": mask, "use_cache": True}
            if "logits_to_keep" in parameters:  # the prompt's other positions need no logits
                kwargs["logits_to_keep"] = 1
            if past is not None:
                kwargs["past_key_values"] = past
            if takes_positions:
                positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # (B, past + T)
                kwargs["position_ids"] = positions[:, -step_ids.size(1) :]
            out = model(step_ids, **kwargs)
            past = out.past_key_values
            scores = out.logits[:, -1, :].float()  # (B, vocab)
            if forced_eos is not None and step == max_new_tokens - 1:
                forced = torch.full_like(scores, -math.inf)
                forced[:, forced_eos] = 0.0
                scores = forced
            if do_sample:
                probs = process_logits(scores, temperature, top_k, top_p).softmax(dim=-1)
                next_tokens = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
            else:
                next_tokens = scores.argmax(dim=-1)
            next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, pad_token_id))
            ids = torch.cat([ids, next_tokens[:, None]], dim=-1)
            mask = torch.cat([mask, mask.new_ones(b, 1)], dim=-1)
            if eos:
                unfinished &= ~torch.isin(next_tokens, eos_tensor)
                if not bool(unfinished.any()):
                    break
    return ids


def _force(scores: torch.Tensor, token: int) -> torch.Tensor:
    """Scores that allow only `token` (HF's forced-bos/eos processors)."""
    forced = torch.full_like(scores, -math.inf)
    forced[:, token] = 0.0
    return forced


def generate_seq2seq(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 20,
    min_new_tokens: int = 0,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    decoder_start_token_id: int | None = None,
    forced_bos_token_id: int | None = None,
    forced_eos_token_id: int | None = None,
) -> torch.Tensor:
    """Greedy decoding of an encoder-decoder; returns the decoder ids, start token first, as HF's generate.

    Args:
        model: an encoder-decoder of the factory with `get_encoder()` (BartForConditionalGeneration), in
            eval mode.
        input_ids: (B, S) source ids, right-padded; attention_mask (B, S) marks the real tokens.
        max_new_tokens: tokens to add at most after the start token.
        min_new_tokens: eos is not allowed before this many tokens were added (HF's MinNewTokens).
        eos_token_id, pad_token_id, decoder_start_token_id, forced_bos_token_id, forced_eos_token_id: None
            takes the model config's value, as HF's generation config does. `forced_bos_token_id` is the
            first token added, `forced_eos_token_id` the last of `max_new_tokens`; pass `[]` as
            `eos_token_id` never to stop early.

    Returns:
        (B, 1 + n) token ids, n <= max_new_tokens (fewer when every row reached eos); finished rows pad.
    """
    _positive_int("max_new_tokens", max_new_tokens)
    if isinstance(min_new_tokens, bool) or not isinstance(min_new_tokens, int) or min_new_tokens < 0:
        raise ValueError(f"min_new_tokens={min_new_tokens!r} is not valid: expected an integer >= 0.")
    if input_ids.dim() != 2 or input_ids.size(1) == 0:
        raise ValueError(
            f"input_ids must be (batch, length) with length >= 1, got shape {tuple(input_ids.shape)}."
        )
    config = model.config
    limit = _max_positions(model)
    if limit is not None and 1 + max_new_tokens > limit:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} plus the start token is longer than the decoder's "
            f"max_position_embeddings={limit}; use max_new_tokens <= {limit - 1}."
        )
    eos = _eos_ids(config.eos_token_id if eos_token_id is None else eos_token_id)
    start = config.decoder_start_token_id if decoder_start_token_id is None else decoder_start_token_id
    if start is None:
        raise ValueError("decoder_start_token_id is not set, in the call nor in the model's config.")
    if pad_token_id is None:
        pad_token_id = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else 0)
    forced_bos = (
        getattr(config, "forced_bos_token_id", None) if forced_bos_token_id is None else forced_bos_token_id
    )
    forced_eos = (
        getattr(config, "forced_eos_token_id", None) if forced_eos_token_id is None else forced_eos_token_id
    )
    b = input_ids.size(0)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)

    with torch.inference_mode():
        encoder_outputs = model.get_encoder()(input_ids, attention_mask)  # once for every step
        ids = torch.full((b, 1), start, dtype=input_ids.dtype, device=input_ids.device)
        eos_tensor = torch.tensor(eos, device=ids.device, dtype=ids.dtype)
        unfinished = torch.ones(b, dtype=torch.bool, device=ids.device)
        past = None
        for step in range(max_new_tokens):
            out = model(
                attention_mask=attention_mask,
                decoder_input_ids=ids[:, -1:],
                encoder_outputs=encoder_outputs,
                past_key_values=past,
                use_cache=True,
            )
            past = out.past_key_values
            scores = out.logits[:, -1, :].float()  # (B, vocab)
            if step < min_new_tokens and eos:
                scores[:, eos] = -math.inf
            if forced_bos is not None and step == 0:
                scores = _force(scores, forced_bos)
            if forced_eos is not None and step == max_new_tokens - 1:
                scores = _force(scores, forced_eos)
            next_tokens = scores.argmax(dim=-1)
            next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, pad_token_id))
            ids = torch.cat([ids, next_tokens[:, None]], dim=-1)
            if eos:
                unfinished &= ~torch.isin(next_tokens, eos_tensor)
                if not bool(unfinished.any()):
                    break
    return ids
