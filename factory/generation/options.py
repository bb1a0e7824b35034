"""What the heads that generate text (causal_lm, seq2seq_lm) share: their `infer.py` options for choosing
tokens, and the rule that turns those options into `factory.decode.decode` arguments.

The rule (Python API and command line alike): `do_sample=False` is greedy decoding, or beam search with
`num_beams > 1`; `do_sample=True` samples (beam sampling with `num_beams > 1`). Left unset (None),
generation samples when any of temperature > 0, top_k or top_p is given, and does not otherwise, so
`temperature=0` always means greedy and a bare input gives the same tokens as transformers' `generate`
with the same `num_beams`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from factory.contract.task import Option
from factory.generation import decode

OPTIONS: dict[str, Option] = {
    "do_sample": Option(bool, None, "generation: true samples, false is greedy/beam; unset: see temperature"),
    "temperature": Option(float, None, "generation: > 0 samples (unless do_sample=false), 0 is greedy"),
    "top_k": Option(int, None, "generation: sample among the k most likely tokens"),
    "top_p": Option(float, None, "generation: sample from the smallest set holding this probability"),
    "seed": Option(int, None, "generation: seed for sampling; unset draws a fresh one"),
    "num_beams": Option(int, 1, "generation: beams of beam search (1: greedy or sampling)"),
    "length_penalty": Option(float, 1.0, "generation: beam scores are divided by length ** this"),
    "no_repeat_ngram_size": Option(int, 0, "generation: no n-gram of this size occurs twice (0: off)"),
    "early_stopping": Option(str, "false", "generation: beam search stops: true, false or never"),
}
_EARLY_STOPPING = {"true": True, "false": False, "never": "never"}


def sampling_mode(
    do_sample: bool | None, temperature: float | None, top_k: int | None, top_p: float | None
) -> tuple[bool, float]:
    """`(do_sample, temperature)` after the module's rule, validated.

    Raises:
        ValueError: a negative or non-finite temperature, do_sample=True with temperature 0, or a bad
            top_k / top_p (named with its value).
    """
    decode.check_sampling_args(False, 1.0 if temperature is None else temperature, top_k, top_p)
    if do_sample is None:
        do_sample = (temperature is not None and temperature > 0) or (
            temperature is None and (top_k is not None or top_p is not None)
        )
    if temperature is None or not do_sample:
        temperature = 1.0  # greedy and beam search ignore it, as in transformers
    decode.check_sampling_args(do_sample, temperature, top_k, top_p)
    return do_sample, temperature


def parse_early_stopping(value: bool | str) -> bool | str:
    """True, False or "never", from the command line's text or the Python API's value."""
    if isinstance(value, str) and value.lower() in _EARLY_STOPPING:
        return _EARLY_STOPPING[value.lower()]
    if isinstance(value, bool):
        return value
    raise ValueError(f"early_stopping={value!r} is not valid: expected one of {list(_EARLY_STOPPING)}.")


def search_kwargs(
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    early_stopping: bool | str = False,
) -> dict[str, Any]:
    """The `decode.generate`/`generate_seq2seq` keyword arguments of these settings, validated.

    Raises:
        ValueError: a bad value, named with the argument.
    """
    do_sample, temperature = sampling_mode(do_sample, temperature, top_k, top_p)
    kwargs = {
        "do_sample": do_sample,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "seed": seed,
        "num_beams": num_beams,
        "length_penalty": length_penalty,
        "no_repeat_ngram_size": no_repeat_ngram_size,
        "early_stopping": parse_early_stopping(early_stopping),
    }
    decode.Search(**kwargs)  # every check, before any model runs
    return kwargs


def from_options(opts: Mapping[str, Any]) -> dict[str, Any]:
    """`search_kwargs` of `infer.py` options."""
    return search_kwargs(**{key: opts[key] for key in OPTIONS})
