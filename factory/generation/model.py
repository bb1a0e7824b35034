"""`model.generate(...)` as transformers users write it, on every model class that generates text.

`PreTrainedModel` takes this mixin, so a causal LM (`GPT2LMHeadModel`, `LlamaForCausalLM`,
`BertLMHeadModel` with `is_decoder`, ...) and an encoder-decoder LM (`BartForConditionalGeneration`,
`T5ForConditionalGeneration`) answer `generate` with the same arguments and the same tokens as
transformers' `GenerationMixin.generate` for greedy decoding and beam search; other models refuse it.
The decoding itself is `factory.generation.decode`'s.
"""

from __future__ import annotations

from typing import Any

import torch

from factory.generation import decode

# The heads whose models generate, and how: data, so a head of another name decodes as one of these by
# being registered under it. Decoder-only models continue the prompt; encoder-decoders decode a target.
GENERATES = {"causal_lm": "prompt", "seq2seq_lm": "target"}
# transformers 5's default when neither max_length nor max_new_tokens is given: 20 tokens after the
# prompt (its "model-agnostic default max_length" is 20 plus the prompt's length).
DEFAULT_NEW_TOKENS = 20


class GenerationMixin:
    """Adds `generate` to the model classes whose head generates text."""

    head: str

    @classmethod
    def can_generate(cls) -> bool:
        """Whether `generate` works on this class (transformers' name for the check)."""
        return GENERATES.get(getattr(cls, "head", ""), None) is not None

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        max_new_tokens: int | None = None,
        max_length: int | None = None,
        min_new_tokens: int = 0,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = 50,
        top_p: float | None = 1.0,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        early_stopping: bool | str = False,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        decoder_start_token_id: int | None = None,
        forced_bos_token_id: int | None = None,
        forced_eos_token_id: int | None = None,
        seed: int | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs: torch.Tensor | None = None,
    ) -> torch.LongTensor:
        """Token ids as transformers' `generate` gives them: the prompt and its continuation for a
        decoder-only model, the decoder's ids (start token first) for an encoder-decoder.

        Arguments are transformers' (`model.generate(**tokenizer(text, return_tensors="pt"),
        max_new_tokens=20, num_beams=4)`); `max_length` counts the prompt for a decoder-only model and the
        start token for an encoder-decoder, as there; with neither it nor `max_new_tokens`, 20 tokens are
        added, as transformers 5 adds. `top_k` and `top_p` filter only when sampling. `seed` seeds a local
        generator for sampling (None: a fresh draw). `token_type_ids` of one segment (what a BERT
        tokenizer returns for a single text) are accepted and have no effect.

        Raises:
            AttributeError: the model's head does not generate text.
            ValueError: bad arguments (both `input_ids` and `inputs`, several segments, lengths).
        """
        how = GENERATES.get(getattr(type(self), "head", ""))
        if how is None:
            generating = sorted(GENERATES)
            raise AttributeError(
                f"{type(self).__name__} does not generate text: generate() is for the models of heads "
                f"{generating} (...LMHeadModel, ...ForCausalLM, ...ForConditionalGeneration)."
            )
        if inputs is not None:
            if input_ids is not None:
                raise ValueError("Give the prompt as input_ids or as inputs, not both.")
            input_ids = inputs
        if input_ids is None:
            raise ValueError("generate() needs input_ids (B, T).")
        if token_type_ids is not None and bool(token_type_ids.any()):
            raise ValueError("generate() continues one segment: token_type_ids must be all 0.")
        if max_new_tokens is None and max_length is None:
            max_new_tokens = DEFAULT_NEW_TOKENS
        elif max_new_tokens is None:
            max_new_tokens = max(max_length - (input_ids.size(1) if how == "prompt" else 1), 0)
        search: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k if do_sample else None,
            top_p=top_p if do_sample and top_p != 1.0 else None,
            num_beams=num_beams,
            length_penalty=length_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size,
            early_stopping=early_stopping,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            forced_bos_token_id=forced_bos_token_id,
            forced_eos_token_id=forced_eos_token_id,
            seed=seed,
        )
        if how == "prompt":
            return decode.generate(self, input_ids, attention_mask, **search)
        return decode.generate_seq2seq(
            self, input_ids, attention_mask, decoder_start_token_id=decoder_start_token_id, **search
        )
