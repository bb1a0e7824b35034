"""What an architecture says about the tokenizer to train for it at `init=random`: data, no code.

Each architecture's config class holds one `TokenizerRecipe` (`tokenizer_recipe`); `factory.tokenizers
.training` turns it into a trained tokenizer. This module imports nothing of factory, so the registry
can check a recipe at registration without importing the tokenizers library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KINDS = ("wordpiece", "byte_level_bpe", "byte_fallback_bpe", "unigram")
POST_PROCESSORS = ("template", "byte_level", "roberta")
# The smallest WordPiece vocabulary worth training: the specials and some characters.
_SMALLEST_WORDPIECE = 32
_BYTES = 256  # byte-level BPE holds every byte before any merge
# The fewest pieces a unigram model is trained to: a few characters beside the special tokens.
_SMALLEST_UNIGRAM_PIECES = 8


@dataclass(frozen=True)
class TokenizerRecipe:
    """How to train a fresh tokenizer laid out like an architecture's pretrained one.

    Attributes:
        kind: "wordpiece", "byte_level_bpe", "byte_fallback_bpe" (Llama's: BPE over characters on
            metaspace pieces, the 256 byte tokens `<0x00>`..`<0xFF>` for what the vocabulary lacks) or
            "unigram" (T5's: a SentencePiece unigram model over metaspace pieces).
        tokenizer_class: the transformers tokenizer class (`BertTokenizer`, ...), written into
            tokenizer_config.json; also the class assumed for a checkpoint folder that names none.
        special_tokens: the special tokens, given the first ids in this order.
        tokenizer_config: tokenizer_config.json entries: which token is unk/pad/eos/..., options that
            transformers' class reads (`add_prefix_space`, ...). WordPiece's unknown token is `unk_token`.
        post_processor: "template", "byte_level" or "roberta" (see the module docstring).
        template: `(single, pair)` templates for post_processor="template"; the special tokens they name
            must be in `special_tokens`.
        lowercase: WordPiece only: lowercase (and write `do_lower_case`), as uncased BERT does.
        added_last: tokens added after training so that they take the last ids (BART's `<mask>`, T5's
            sentinels `<extra_id_99>`..`<extra_id_0>`), as `AddedToken` keyword arguments (`content`,
            `lstrip`, ...).
    """

    kind: str
    tokenizer_class: str
    special_tokens: tuple[str, ...]
    tokenizer_config: Mapping[str, Any]
    post_processor: str
    template: tuple[str, str] | None = None
    lowercase: bool = False
    added_last: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"TokenizerRecipe.kind={self.kind!r} is not valid: expected one of {list(KINDS)}."
            )
        if self.post_processor not in POST_PROCESSORS:
            raise ValueError(
                f"TokenizerRecipe.post_processor={self.post_processor!r} is not valid: "
                f"expected one of {list(POST_PROCESSORS)}."
            )
        if (self.post_processor == "template") != (self.template is not None):
            raise ValueError(
                f"TokenizerRecipe: template={self.template!r} goes with post_processor='template' and only "
                f"with it (post_processor={self.post_processor!r})."
            )
        missing = sorted(set(template_tokens(self.template)) - set(self.special_tokens))
        if missing:
            raise ValueError(
                f"TokenizerRecipe: template {self.template!r} names {missing}, which are not among "
                f"special_tokens {list(self.special_tokens)}."
            )
        needs_unk = {"wordpiece": "WordPiece", "byte_fallback_bpe": "Byte-fallback BPE", "unigram": "Unigram"}
        if self.kind in needs_unk and self.tokenizer_config.get("unk_token") not in self.special_tokens:
            raise ValueError(
                f"TokenizerRecipe: {needs_unk[self.kind]} needs tokenizer_config['unk_token'] among "
                f"special_tokens {list(self.special_tokens)}."
            )
        if self.post_processor == "roberta":
            for role in ("cls_token", "sep_token"):
                if self.tokenizer_config.get(role) not in self.special_tokens:
                    raise ValueError(
                        f"TokenizerRecipe: post_processor='roberta' needs tokenizer_config[{role!r}] among "
                        f"special_tokens {list(self.special_tokens)}."
                    )

    @property
    def smallest_vocab(self) -> int:
        """The smallest `vocab_size` this recipe can train."""
        if self.kind == "wordpiece":
            return _SMALLEST_WORDPIECE
        if self.kind == "unigram":
            return len(self.special_tokens) + len(self.added_last) + _SMALLEST_UNIGRAM_PIECES
        # Byte fallback keeps the 256 byte tokens beside what it learns, and learns at least one piece.
        learned = 1 if self.kind == "byte_fallback_bpe" else 0
        return _BYTES + len(self.special_tokens) + len(self.added_last) + learned


def template_tokens(template: tuple[str, str] | None) -> list[str]:
    """The special tokens a `(single, pair)` template names: `[CLS] $A [SEP] $B:1 [SEP]:1` -> CLS, SEP."""
    pieces = " ".join(template or ()).split()
    return list(dict.fromkeys(p.split(":")[0] for p in pieces if not p.startswith("$")))
