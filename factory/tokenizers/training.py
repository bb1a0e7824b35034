"""Training a fresh tokenizer for `init=random`, in the layout each family's pretrained tokenizer has.

- bert: lowercasing WordPiece (BertNormalizer, BertPreTokenizer, `##` continuation), special tokens
  [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, and BERT's template `[CLS] A [SEP] B [SEP]` with type ids.
- gpt2: byte-level BPE with `<|endoftext|>` (id 0) as bos, eos and unk, no pad token (our Tokenizer pads
  with eos), no template: a pair is the two texts back to back, as GPT-2's own tokenizer does.
- bart: byte-level BPE with <s>=0 <pad>=1 </s>=2 <unk>=3 and <mask> last, and RoBERTa's template
  `<s> A </s></s> B </s>`, so BART's pad=1, bos=0, eos=2 (and decoder_start=eos) hold.

The result is a `factory.tokenizers.tokenizer.Tokenizer`; its `save_pretrained` folder loads in
`transformers.AutoTokenizer` to the same ids (`tokenizer_class` is written into tokenizer_config.json).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as RustTokenizer

from factory.tokenizers.tokenizer import NO_MAX_LENGTH, Tokenizer

logger = logging.getLogger(__name__)

TRAINABLE = ("bert", "gpt2", "bart")

_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_GPT2_EOS = "<|endoftext|>"
_BART_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # <mask> is added last, as in BART's vocabulary


def train_tokenizer(
    model_type: str,
    texts: Iterable[str],
    vocab_size: int,
    *,
    model_max_length: int | None = None,
    min_frequency: int = 2,
) -> Tokenizer:
    """Train a tokenizer of `model_type`'s family on `texts`.

    Args:
        model_type: "bert", "gpt2" or "bart".
        texts: the training texts (an iterator is fine; it is read once).
        vocab_size: the vocabulary size to learn, special tokens included. The result is smaller when
            the texts hold fewer distinct pieces (and WordPiece keeps every character it saw even beyond
            it), so size the model with `len(tokenizer)`.
        model_max_length: written into tokenizer_config.json (the model's position limit); None for
            "unknown".
        min_frequency: pieces seen fewer times are not merged into the vocabulary.

    Returns:
        A `Tokenizer` with the family's special tokens, template and decoder.

    Raises:
        ValueError: an unknown `model_type`, a vocabulary too small for the special tokens and the
            alphabet, or no texts.
    """
    if model_type not in TRAINABLE:
        raise ValueError(f"Cannot train a tokenizer for model_type={model_type!r}; valid: {list(TRAINABLE)}.")
    # Byte-level BPE needs all 256 bytes before any merge; WordPiece only its specials and some characters.
    smallest = 32 if model_type == "bert" else 256 + len(_BART_SPECIALS) + 1
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < smallest:
        raise ValueError(
            f"vocab_size={vocab_size!r} is too small to train a {model_type} tokenizer; use at least {smallest}."
        )
    count = 0

    def counted() -> Iterable[str]:
        nonlocal count
        for text in texts:
            count += 1
            yield text

    build = {"bert": _train_wordpiece, "gpt2": _train_gpt2, "bart": _train_bart}[model_type]
    backend, config = build(counted(), vocab_size, min_frequency)
    if count == 0:
        raise ValueError(f"No texts to train the {model_type} tokenizer on.")
    config["model_max_length"] = NO_MAX_LENGTH if model_max_length is None else int(model_max_length)
    tokenizer = Tokenizer(backend, config, name_or_path=f"<trained {model_type} tokenizer>")
    logger.info(
        "Trained a %s tokenizer on %d texts: %d tokens (asked for %d)",
        model_type,
        count,
        len(tokenizer),
        vocab_size,
    )
    return tokenizer


def _train_wordpiece(
    texts: Iterable[str], vocab_size: int, min_frequency: int
) -> tuple[RustTokenizer, dict[str, Any]]:
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # The vocabulary is chosen here rather than by `tokenizers`' WordPieceTrainer, whose ties between
    # equally frequent pieces fall differently in every process: a seeded run must get the same ids.
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in counts for c in word})
    pieces = [*_BERT_SPECIALS, *chars, *(f"##{c}" for c in chars)]
    # Then whole words by frequency (ties by spelling); a word outside the vocabulary splits into characters.
    words = sorted(
        (w for w, n in counts.items() if n >= min_frequency and len(w) > 1), key=lambda w: (-counts[w], w)
    )
    pieces.extend(words[: max(0, vocab_size - len(pieces))])
    vocab = {piece: i for i, piece in enumerate(dict.fromkeys(pieces))}
    backend = RustTokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": True,
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "clean_up_tokenization_spaces": True,
    }
    return backend, config


def _byte_level_bpe(
    texts: Iterable[str], vocab_size: int, min_frequency: int, special_tokens: list[str]
) -> RustTokenizer:
    backend = RustTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return backend


def _train_gpt2(
    texts: Iterable[str], vocab_size: int, min_frequency: int
) -> tuple[RustTokenizer, dict[str, Any]]:
    backend = _byte_level_bpe(texts, vocab_size, min_frequency, [_GPT2_EOS])
    # trim_offsets: a token's character span leaves out the space it carries, so QA answer spans cut from
    # the context by offsets have no leading space. Ids are the same either way.
    backend.post_processor = processors.ByteLevel(trim_offsets=True)
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "add_prefix_space": False,
        "bos_token": _GPT2_EOS,
        "eos_token": _GPT2_EOS,
        "unk_token": _GPT2_EOS,
        "pad_token": None,
    }
    return backend, config


def _train_bart(
    texts: Iterable[str], vocab_size: int, min_frequency: int
) -> tuple[RustTokenizer, dict[str, Any]]:
    # One slot is kept for <mask>, added after training so that it is the last id, as in BART.
    backend = _byte_level_bpe(texts, vocab_size - 1, min_frequency, _BART_SPECIALS)
    backend.add_special_tokens(
        [AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)]
    )
    backend.post_processor = processors.RobertaProcessing(
        ("</s>", backend.token_to_id("</s>")),
        ("<s>", backend.token_to_id("<s>")),
        trim_offsets=True,
        add_prefix_space=False,
    )
    config = {
        "tokenizer_class": "BartTokenizer",
        "add_prefix_space": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "cls_token": "<s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "mask_token": {"content": "<mask>", "lstrip": True, "rstrip": False, "normalized": False},
    }
    return backend, config


def special_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """The special-token ids an architecture config takes, from `tokenizer`.

    Returns those of `pad_token_id`, `bos_token_id`, `eos_token_id` that the tokenizer defines (BERT's
    has no bos/eos, so the config keeps its defaults). `pad_token_id` is the id batches are padded with:
    the eos id for a tokenizer without a pad token (GPT-2), as HF's fine-tuning scripts set it, so
    sequence classification finds the last real token.
    """
    pad = tokenizer.pad_token_id
    if tokenizer.pad_token is None or getattr(tokenizer, "_pad_is_eos_fallback", False):
        pad = tokenizer.eos_token_id
    ids = {
        "pad_token_id": pad,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    return {key: value for key, value in ids.items() if value is not None}


def pad_token_id(tokenizer: Tokenizer) -> int:
    """The id to pad batches with: the pad token's, else eos's (GPT-2 has no pad token)."""
    pad = special_token_ids(tokenizer).get("pad_token_id")
    if pad is None:
        raise ValueError(
            f"Tokenizer {tokenizer.name_or_path!r} has neither a pad nor an eos token to pad with."
        )
    return pad
