"""Text generation for every generative model of the factory: greedy, sampling and beam search, with the KV
cache.

`generate` (decoder-only models) and `generate_seq2seq` (encoder-decoders) follow transformers'
`generate()` step for step, so that greedy and beam-search output is the same token for token on the same
weights and arguments:

- one prefill over the prompt, then one token per step feeding only that token and the cache
  (`past_key_values`, `use_cache=True`); an encoder-decoder runs its encoder once;
- decoder-only: the attention mask grows by one column per step; models that take `position_ids` get them
  from the mask (`cumsum - 1`, 0 on padding), so left-padded rows count positions from their first real
  token;
- the scores of each step pass HF's logits processors in HF's order: no repeated n-grams
  (`no_repeat_ngram_size`, over the whole sequence, prompt included), no eos before `min_new_tokens`,
  the forced first token (`forced_bos_token_id`, when the sequence is one token long) and the forced last
  one (`forced_eos_token_id`, as token `max_new_tokens`); sampling then scales by temperature, keeps the
  top-k logits, then the top-p nucleus, and draws from a local `torch.Generator` (the global RNG is left
  alone);
- greedy and sampling: a row that emitted an eos token is finished and emits the pad token afterwards;
  generation stops when every row is finished or `max_new_tokens` were added;
- beam search (`num_beams > 1`) is HF's vectorised beam search: log-softmax scores plus each beam's
  running score, the best `2 * num_beams` candidates of a row (more with several eos ids), candidates
  ending in eos scored `sum of log-probs / generated_length ** length_penalty` into the row's
  `num_beams` finished hypotheses, the cache reordered to follow the surviving beams, and HF's stopping
  rule (`early_stopping=True` stops a row at `num_beams` finished hypotheses, `False` when no running
  beam can beat them by the current length, `"never"` by the longest length). The best hypothesis of each
  row is returned, padded to the longest of the batch.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

EARLY_STOPPING = (False, True, "never")
_NEG = -1.0e9  # HF's "impossible" score in beam search (finite, so sums stay ordered)

# One decoding step: the ids so far (N, L) and the cache -> the next-token logits (N, vocab) and the cache.
Step = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is not valid: expected a positive integer.")
    return value


def _natural_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}={value!r} is not valid: expected an integer >= 0.")
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


def check_beam_args(num_beams: int, length_penalty: float, early_stopping: bool | str) -> None:
    """Validate the beam-search knobs; errors name the argument, its value and what is valid."""
    _positive_int("num_beams", num_beams)
    if (
        isinstance(length_penalty, bool)
        or not isinstance(length_penalty, (int, float))
        or not math.isfinite(length_penalty)
    ):
        raise ValueError(f"length_penalty={length_penalty!r} is not valid: expected a finite number.")
    if not (isinstance(early_stopping, bool) or early_stopping == "never"):
        raise ValueError(
            f"early_stopping={early_stopping!r} is not valid: expected one of {list(EARLY_STOPPING)}."
        )


@dataclass(frozen=True)
class Search:
    """How tokens are chosen, with transformers' argument names and meanings (checked on creation)."""

    max_new_tokens: int = 20
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    num_beams: int = 1
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    early_stopping: bool | str = False
    seed: int | None = None

    def __post_init__(self) -> None:
        _positive_int("max_new_tokens", self.max_new_tokens)
        _natural_int("min_new_tokens", self.min_new_tokens)
        _natural_int("no_repeat_ngram_size", self.no_repeat_ngram_size)
        temperature, top_k, top_p = check_sampling_args(
            self.do_sample, self.temperature, self.top_k, self.top_p
        )
        object.__setattr__(self, "temperature", temperature)
        object.__setattr__(self, "top_k", top_k)
        object.__setattr__(self, "top_p", top_p)
        check_beam_args(self.num_beams, self.length_penalty, self.early_stopping)

    def generator(self, device: torch.device) -> torch.Generator | None:
        """A local generator for sampling, seeded (or fresh when `seed` is None); None for greedy/beam."""
        if not self.do_sample:
            return None
        generator = torch.Generator(device=device)
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return generator


@dataclass(frozen=True)
class _Tokens:
    """The special token ids of one call: the argument, else the model config's value (HF's rule)."""

    eos: tuple[int, ...]
    pad: int
    forced_bos: int | None
    forced_eos: int | None

    @classmethod
    def of(
        cls,
        config: Any,
        eos_token_id: int | Sequence[int] | None,
        pad_token_id: int | None,
        forced_bos_token_id: int | None,
        forced_eos_token_id: int | None,
    ) -> _Tokens:
        eos = _eos_ids(config.eos_token_id if eos_token_id is None else eos_token_id)
        if pad_token_id is None:
            pad_token_id = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else 0)
        forced_bos = (
            getattr(config, "forced_bos_token_id", None)
            if forced_bos_token_id is None
            else forced_bos_token_id
        )
        forced_eos = (
            getattr(config, "forced_eos_token_id", None)
            if forced_eos_token_id is None
            else forced_eos_token_id
        )
        return cls(tuple(eos), int(pad_token_id), forced_bos, forced_eos)


def _eos_ids(eos_token_id: int | Sequence[int] | None) -> list[int]:
    if eos_token_id is None:
        return []
    if isinstance(eos_token_id, int):
        return [eos_token_id]
    return [int(t) for t in eos_token_id]


def process_logits(
    scores: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_tokens_to_keep: int = 1,
) -> torch.Tensor:
    """Temperature, then top-k, then top-p over (B, vocab) logits, as transformers' logits warpers.

    Filtered tokens get -inf. Top-k keeps every token tied with the k-th best. Top-p keeps the smallest
    set of most probable tokens whose probability mass reaches `top_p`. Both keep at least
    `min_tokens_to_keep` tokens (beam sampling keeps one more than the eos ids, as HF).
    """
    if temperature != 1.0:
        scores = scores / temperature
    if top_k is not None:
        k = max(top_k, min_tokens_to_keep)
        if k < scores.size(-1):
            kth_best = torch.topk(scores, k, dim=-1).values[..., -1:]  # (B, 1)
            scores = scores.masked_fill(scores < kth_best, -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # A token goes when the tokens less probable than it, itself included, hold at most 1 - top_p of
        # the mass, i.e. when the more probable ones already hold top_p. The most probable always stay.
        remove_sorted = cumulative <= (1 - top_p)
        remove_sorted[..., -min_tokens_to_keep:] = False
        remove = remove_sorted.scatter(-1, sorted_indices, remove_sorted)
        scores = scores.masked_fill(remove, -math.inf)
    return scores


def ban_repeated_ngrams(ids: torch.Tensor, scores: torch.Tensor, size: int) -> torch.Tensor:
    """-inf for every token that would repeat an n-gram of `size` tokens already in `ids` (HF's rule).

    The next token completes an n-gram starting with the last `size - 1` ids; every earlier window that
    starts with those ids bans its own last token.
    """
    length = ids.size(1)
    if length < size:
        return scores
    prefix = ids[:, length + 1 - size :]  # (N, size - 1)
    windows = ids.unfold(1, size, 1)  # (N, length - size + 1, size)
    matches = (windows[..., :-1] == prefix[:, None, :]).all(dim=-1)
    vocab = scores.size(-1)
    # Windows that do not match write into a spare column past the vocabulary.
    banned = scores.new_zeros((scores.size(0), vocab + 1), dtype=torch.bool)
    banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=vocab), vocab), True)
    return scores.masked_fill(banned[:, :vocab], -math.inf)


def _force(scores: torch.Tensor, token: int) -> torch.Tensor:
    """Scores that allow only `token` (HF's forced-bos/eos processors)."""
    forced = torch.full_like(scores, -math.inf)
    forced[:, token] = 0.0
    return forced


def _constrain(
    scores: torch.Tensor, ids: torch.Tensor, new_tokens: int, search: Search, tokens: _Tokens
) -> torch.Tensor:
    """HF's logits processors, in HF's order, for the token after `ids` (of which `new_tokens` are new)."""
    if search.no_repeat_ngram_size:
        scores = ban_repeated_ngrams(ids, scores, search.no_repeat_ngram_size)
    if new_tokens < search.min_new_tokens and tokens.eos:
        scores[:, list(tokens.eos)] = -math.inf
    if tokens.forced_bos is not None and ids.size(1) == 1:
        scores = _force(scores, tokens.forced_bos)
    if tokens.forced_eos is not None and new_tokens == search.max_new_tokens - 1:
        scores = _force(scores, tokens.forced_eos)
    return scores


def _reorder(past: Any, index: torch.Tensor) -> Any:
    """The cache of the beams `index` picks: every cached tensor is (beams, ...), so it is one index_select."""
    if past is None:
        return None
    return tuple(tuple(t.index_select(0, index) for t in layer) for layer in past)


def _greedy_or_sample(
    step: Step, ids: torch.Tensor, search: Search, tokens: _Tokens, generator: torch.Generator | None
) -> torch.Tensor:
    b, prompt = ids.shape
    eos = torch.tensor(tokens.eos, device=ids.device, dtype=ids.dtype)
    unfinished = torch.ones(b, dtype=torch.bool, device=ids.device)
    past = None
    for new in range(search.max_new_tokens):
        logits, past = step(ids, past)
        scores = _constrain(logits, ids, new, search, tokens)
        if search.do_sample:
            probs = process_logits(scores, search.temperature, search.top_k, search.top_p).softmax(dim=-1)
            next_tokens = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
        else:
            next_tokens = scores.argmax(dim=-1)
        next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, tokens.pad))
        ids = torch.cat([ids, next_tokens[:, None]], dim=-1)
        if tokens.eos:
            unfinished &= ~torch.isin(next_tokens, eos)
            if not bool(unfinished.any()):
                break
    return ids


def _beam_search(
    step: Step, ids: torch.Tensor, search: Search, tokens: _Tokens, generator: torch.Generator | None
) -> torch.Tensor:
    """HF's beam search over `ids` (B * num_beams, prompt), each prompt repeated num_beams times in a row.

    Shapes below: B rows, K = num_beams, C = candidates kept per row, L = prompt + max_new_tokens.
    """
    k = search.num_beams
    n, prompt = ids.shape
    b = n // k
    length = prompt + search.max_new_tokens
    device = ids.device
    eos = torch.tensor(tokens.eos, device=device, dtype=torch.long)
    # Enough candidates that K survive even when the best K all end in eos.
    c = max(2, 1 + len(tokens.eos)) * k
    in_top_k = torch.arange(c, device=device) < k  # (C,)
    fill = (tokens.pad or tokens.eos[0]) if tokens.eos else -1  # HF's filler of unwritten positions
    running = torch.full((b, k, length), fill, dtype=torch.long, device=device)
    running[:, :, :prompt] = ids.view(b, k, prompt)
    finished = running.clone()  # the best K finished hypotheses of each row
    # Only the first beam starts live, so the K beams do not all pick the same first tokens.
    running_scores = torch.zeros((b, k), device=device)
    running_scores[:, 1:] = _NEG
    finished_scores = torch.full((b, k), _NEG, device=device)
    finished_lengths = torch.zeros((b, k), dtype=torch.long, device=device)
    is_finished = torch.zeros((b, k), dtype=torch.bool, device=device)
    may_improve = torch.ones((b, 1), dtype=torch.bool, device=device)
    offsets = torch.arange(b, device=device)[:, None] * k  # (B, 1): row b's beams start at b * K
    past = None
    for new in range(search.max_new_tokens):
        cur = prompt + new
        flat = running[:, :, :cur].reshape(n, cur)
        logits, past = step(flat, past)
        log_probs = _constrain(logits.log_softmax(dim=-1), flat, new, search, tokens)
        if search.do_sample:
            log_probs = process_logits(
                log_probs, search.temperature, search.top_k, search.top_p, len(tokens.eos) + 1
            )
        vocab = log_probs.size(-1)
        totals = (log_probs.view(b, k, vocab) + running_scores[:, :, None]).view(b, k * vocab)
        if search.do_sample:
            picked = torch.multinomial(totals.softmax(dim=-1), num_samples=c, generator=generator)
            top_scores, order = totals.gather(1, picked).sort(dim=-1, descending=True)
            picked = picked.gather(1, order)
        else:
            top_scores, picked = torch.topk(totals, c)  # (B, C)
        source = picked // vocab  # the beam each candidate extends
        candidates = running.gather(1, source[:, :, None].expand(b, c, length)).clone()  # (B, C, L)
        candidates[:, :, cur] = picked % vocab
        ended = (
            torch.isin(candidates[:, :, cur], eos)
            if tokens.eos
            else torch.zeros_like(in_top_k)[None].expand(b, c)
        )
        if new == search.max_new_tokens - 1:
            ended = torch.ones_like(ended)
        # The K best candidates that go on (ended ones are pushed out of reach).
        live_scores = top_scores + ended.float() * _NEG
        keep = torch.topk(live_scores, k).indices  # (B, K)
        running = candidates.gather(1, keep[:, :, None].expand(b, k, length))
        running_scores = live_scores.gather(1, keep)
        beam_source = (source.gather(1, keep) + offsets).view(n)
        # Candidates among the best K that ended join the finished hypotheses if they beat them.
        just_ended = ended & in_top_k[None, :]
        scores = top_scores / ((cur + 1 - prompt) ** search.length_penalty)
        full = is_finished.all(dim=-1, keepdim=True) & (search.early_stopping is True)
        scores = scores + full.float() * _NEG + (~may_improve).float() * _NEG + (~just_ended).float() * _NEG
        merged = torch.cat([finished, candidates], dim=1)
        merged_scores = torch.cat([finished_scores, scores], dim=1)
        merged_lengths = torch.cat([finished_lengths, finished_lengths.new_full((b, c), new + 1)], dim=1)
        merged_finished = torch.cat([is_finished, just_ended], dim=1)
        best = torch.topk(merged_scores, k).indices
        finished = merged.gather(1, best[:, :, None].expand(b, k, length))
        finished_scores = merged_scores.gather(1, best)
        finished_lengths = merged_lengths.gather(1, best)
        is_finished = merged_finished.gather(1, best)
        past = _reorder(past, beam_source)
        # Can a running beam still beat the worst finished hypothesis? (HF's heuristic.)
        if search.early_stopping == "never" and search.length_penalty > 0.0:
            best_length = search.max_new_tokens
        else:
            best_length = cur + 1 - prompt
        best_running = running_scores[:, :1] / (best_length**search.length_penalty)
        worst_finished = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True).values, _NEG)
        may_improve = may_improve & (best_running > worst_finished).any(dim=-1, keepdim=True)
        all_full = bool(is_finished.all()) and search.early_stopping is True
        if not bool(may_improve.any()) or all_full or bool(ended.all()):
            break
    best = finished[:, 0]  # (B, L): hypotheses are kept best first
    return best[:, : prompt + int(finished_lengths[:, 0].max())]


def _expand(tensor: torch.Tensor, times: int) -> torch.Tensor:
    return tensor.repeat_interleave(times, dim=0) if times > 1 else tensor


def _decode(step: Step, ids: torch.Tensor, search: Search, tokens: _Tokens) -> torch.Tensor:
    generator = search.generator(ids.device)
    with torch.inference_mode():
        if search.num_beams > 1:
            return _beam_search(step, _expand(ids, search.num_beams), search, tokens, generator)
        return _greedy_or_sample(step, ids, search, tokens, generator)


# Each output projection's weight in (in, out) layout, kept between calls: remade only when the weight
# changes (another tensor, or written in place), gone with the module.
_ROWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _rows_of(module: torch.nn.Linear) -> torch.Tensor:
    weight = module.weight
    key = (weight.data_ptr(), weight._version, weight.shape)
    kept = _ROWS.get(module)
    if kept is None or kept[0] != key:
        kept = (key, weight.detach().t().contiguous())  # (C, vocab)
        _ROWS[module] = kept
    return kept[1]


@contextlib.contextmanager
def vocabulary_rows(model: torch.nn.Module) -> Iterator[None]:
    """While decoding on a CPU, project onto the vocabulary with the weight in (in, out) layout.

    Each step multiplies one hidden state per row by the whole (vocab, C) output weight, by far the largest
    matrix (GPT-2's: 50,257 x 768, 154 MB in fp32). Read as `nn.Linear` keeps it, that product streams
    the weight transposed and measured a third slower on this kind of CPU than over a contiguous (C,
    vocab) copy, which is what HF's GPT-2 Conv1D layout gives its blocks. The copy costs about what three
    steps save, so it is kept for the next call (made again only when the weight changes): one more
    vocabulary matrix of memory on CPUs. The model's own parameters, and what it saves, keep HF's layout.
    GPUs read both layouts at the same speed, so nothing changes there.
    """
    swapped = []
    for module in model.modules():
        # A projection onto a vocabulary: many more outputs than inputs (the blocks' MLPs have 4x).
        if (
            isinstance(module, torch.nn.Linear)
            and module.weight.device.type == "cpu"
            and module.out_features >= 8 * module.in_features
        ):
            rows, bias = _rows_of(module), module.bias

            def forward(x: torch.Tensor, rows: torch.Tensor = rows, bias: Any = bias) -> torch.Tensor:
                y = x @ rows
                return y if bias is None else y + bias

            module.forward = forward
            swapped.append(module)
    try:
        yield
    finally:
        for module in swapped:
            del module.forward  # the class's forward again


def _check_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if input_ids.dim() != 2 or input_ids.size(1) == 0:
        raise ValueError(
            f"input_ids must be (batch, length) with length >= 1, got shape {tuple(input_ids.shape)}."
        )
    if attention_mask is None:
        return torch.ones_like(input_ids)
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}; expected {tuple(input_ids.shape)} like "
            "input_ids."
        )
    return attention_mask.long()


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
    *,
    min_new_tokens: int = 0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    early_stopping: bool | str = False,
    forced_bos_token_id: int | None = None,
    forced_eos_token_id: int | None = None,
) -> torch.Tensor:
    """Continue each row of `input_ids` by up to `max_new_tokens` tokens; returns prompt + new tokens.

    Args:
        model: a causal-LM model of the factory (GPT2LMHeadModel, BertLMHeadModel with is_decoder,
            BartForCausalLM, ...); put it in eval mode first (`from_pretrained` does).
        input_ids: (B, T) prompt ids; batches of prompts of different lengths must be LEFT-padded.
        attention_mask: (B, T), 1 for real tokens and 0 for padding; None means no padding.
        max_new_tokens, min_new_tokens: how many tokens to add at most, and at least before an eos.
        do_sample: False for greedy decoding or beam search (temperature, top_k and top_p are then
            ignored, as in HF); True samples (beam sampling with num_beams > 1).
        temperature, top_k, top_p: sampling filters (HF's semantics; see `process_logits`).
        num_beams, length_penalty, early_stopping: beam search (see the module docstring); 1 beam is
            greedy decoding or sampling.
        no_repeat_ngram_size: no n-gram of this many tokens occurs twice (0: no constraint).
        eos_token_id: token id(s) that end a row; None takes `model.config.eos_token_id` (as HF does);
            pass `[]` to never stop early.
        pad_token_id: what finished rows emit; None takes `model.config.pad_token_id`, then the eos id.
        forced_bos_token_id, forced_eos_token_id: None takes the model config's value, if any.
        seed: seeds a local generator for sampling; None draws a fresh seed (not reproducible).

    Returns:
        (B, T + n) token ids, n <= max_new_tokens (fewer when every row reached eos).

    Raises:
        ValueError: bad arguments, or prompt + max_new_tokens longer than the model's positions.
    """
    search = Search(
        max_new_tokens,
        min_new_tokens,
        do_sample,
        temperature,
        top_k,
        top_p,
        num_beams,
        length_penalty,
        no_repeat_ngram_size,
        early_stopping,
        seed,
    )
    attention_mask = _check_ids(input_ids, attention_mask)
    t = input_ids.size(1)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and t + max_new_tokens > limit:
        raise ValueError(
            f"Prompt of {t} tokens + max_new_tokens={max_new_tokens} = {t + max_new_tokens} tokens is longer than "
            f"the model's max_position_embeddings={limit}; use max_new_tokens <= {max(limit - t, 0)} or a "
            "shorter prompt."
        )
    if t > 1 and bool((attention_mask[:, -1] == 0).any()):
        logger.warning("A prompt ends in padding: decoder-only models need LEFT padding for correct output.")
    tokens = _Tokens.of(model.config, eos_token_id, pad_token_id, forced_bos_token_id, forced_eos_token_id)
    step = _causal_step(model, _expand(attention_mask, num_beams))
    with vocabulary_rows(model):
        return _decode(step, input_ids, search, tokens)


def _causal_step(model: torch.nn.Module, prompt_mask: torch.Tensor) -> Step:
    parameters = inspect.signature(model.forward).parameters
    takes_positions = "position_ids" in parameters

    def step(ids: torch.Tensor, past: Any) -> tuple[torch.Tensor, Any]:
        # The mask grows by a column of ones per new token.
        mask = torch.cat(
            [prompt_mask, prompt_mask.new_ones(ids.size(0), ids.size(1) - prompt_mask.size(1))], 1
        )
        # With a cache only the last token goes in. A model that returns no cache (a BERT without
        # is_decoder, whose attention is bidirectional) gets the whole sequence again each step.
        step_ids = ids if past is None else ids[:, -1:]
        kwargs: dict[str, Any] = {"attention_mask": mask, "use_cache": True}
        if "logits_to_keep" in parameters:  # the prompt's other positions need no logits
            kwargs["logits_to_keep"] = 1
        if past is not None:
            kwargs["past_key_values"] = past
        if takes_positions:
            positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # (N, past + T)
            kwargs["position_ids"] = positions[:, -step_ids.size(1) :]
        out = model(step_ids, **kwargs)
        return out.logits[:, -1, :].float(), out.past_key_values

    return step


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
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    early_stopping: bool | str = False,
    seed: int | None = None,
) -> torch.Tensor:
    """Decode the target of each source row of an encoder-decoder; returns the decoder ids, start token
    first, as HF's generate.

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
        do_sample, temperature, top_k, top_p, num_beams, length_penalty, no_repeat_ngram_size,
            early_stopping, seed: as for `generate`.

    Returns:
        (B, 1 + n) token ids, n <= max_new_tokens (fewer when every row reached eos); finished rows pad.
    """
    search = Search(
        max_new_tokens,
        min_new_tokens,
        do_sample,
        temperature,
        top_k,
        top_p,
        num_beams,
        length_penalty,
        no_repeat_ngram_size,
        early_stopping,
        seed,
    )
    attention_mask = _check_ids(input_ids, attention_mask)
    config = model.config
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and 1 + max_new_tokens > limit:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} plus the start token is longer than the decoder's "
            f"max_position_embeddings={limit}; use max_new_tokens <= {limit - 1}."
        )
    start = config.decoder_start_token_id if decoder_start_token_id is None else decoder_start_token_id
    if start is None:
        raise ValueError("decoder_start_token_id is not set, in the call nor in the model's config.")
    tokens = _Tokens.of(config, eos_token_id, pad_token_id, forced_bos_token_id, forced_eos_token_id)
    with torch.inference_mode():
        encoded = model.get_encoder()(input_ids, attention_mask).last_hidden_state  # once for every step
    step = _seq2seq_step(model, _expand(encoded, num_beams), _expand(attention_mask, num_beams))
    ids = torch.full((input_ids.size(0), 1), start, dtype=input_ids.dtype, device=input_ids.device)
    with vocabulary_rows(model):
        return _decode(step, ids, search, tokens)


def _seq2seq_step(model: torch.nn.Module, encoded: torch.Tensor, source_mask: torch.Tensor) -> Step:
    def step(ids: torch.Tensor, past: Any) -> tuple[torch.Tensor, Any]:
        out = model(
            attention_mask=source_mask,
            decoder_input_ids=ids if past is None else ids[:, -1:],
            encoder_outputs=encoded,
            past_key_values=past,
            use_cache=True,
        )
        return out.logits[:, -1, :].float(), out.past_key_values

    return step
