"""Training a fresh tokenizer for `init=random`, in the layout each family's pretrained tokenizer has.

What differs between families is data: each architecture's config class carries a `TokenizerRecipe`
(`BertConfig.tokenizer_recipe`, ...) and `train_tokenizer` follows it. Two kinds are implemented:

- "wordpiece" (BERT): WordPiece with BertNormalizer, BertPreTokenizer and `##` continuation; the
  vocabulary is the special tokens, every character seen (alone and as `##c`), then whole words by
  frequency.
- "byte_level_bpe" (GPT-2, BART): byte-level BPE trained by `tokenizers`, the special tokens first;
  tokens the recipe adds last (BART's `<mask>`) take the last ids.
- "byte_fallback_bpe" (Llama): the layout of Llama's tokenizer.json, converted from sentencepiece. No
  normalizer; metaspace pre-tokenization (spaces become `▁`, one `▁` put in front of the text); the
  special tokens, then the 256 byte tokens `<0x00>`..`<0xFF>`, then BPE pieces learned over characters.
  A character the vocabulary lacks is spelled as the byte tokens of its UTF-8 encoding, so no text is
  unknown; the decoder turns `▁` back into spaces and byte tokens back into characters.
- "unigram" (T5): the layout of T5's tokenizer.json, converted from sentencepiece. No normalizer (the
  one transformers' T5Tokenizer builds for a tokenizer.json without sentencepiece's character map);
  whitespace split, then metaspace (`▁` in front of every word); a unigram model trained by
  `tokenizers`' UnigramTrainer (fed every distinct word once more, see `_with_words_doubled`) with the
  special tokens first and the tokens the recipe adds last (T5's
  sentinels) in its vocabulary with score 0, as T5's converter puts them.

The post-processor is "template" (a `TemplateProcessing` such as BERT's `[CLS] $A [SEP] $B:1 [SEP]:1`),
"byte_level" (none: a pair is the two texts back to back, as GPT-2's own tokenizer does) or "roberta"
(`<s> A </s></s> B </s>`, BART's).

The result is a `factory.tokenizers.tokenizer.Tokenizer`; its `save_pretrained` folder loads in
`transformers.AutoTokenizer` to the same ids (`tokenizer_class` is written into tokenizer_config.json).
"""

from __future__ import annotations

import copy
import json
import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as RustTokenizer

from factory import registry
from factory.contract.recipe import TokenizerRecipe, template_tokens
from factory.tokenizers.tokenizer import NO_MAX_LENGTH, Tokenizer

logger = logging.getLogger(__name__)


def trainable_model_types() -> list[str]:
    """The registered model types whose config class has a tokenizer recipe."""
    return [t for t in registry.model_types() if _recipe_or_none(t) is not None]


def _recipe_or_none(model_type: str) -> TokenizerRecipe | None:
    try:
        cls = registry.config_class(model_type)
    except registry.RegistryError:
        return None
    return getattr(cls, "tokenizer_recipe", None)


def train_tokenizer(
    model_type: str,
    texts: Iterable[str],
    vocab_size: int,
    *,
    model_max_length: int | None = None,
    min_frequency: int = 2,
) -> Tokenizer:
    """Train a tokenizer of `model_type`'s family on `texts`, following its config's `tokenizer_recipe`.

    Args:
        model_type: a registered model type ("bert", "gpt2", "bart", ...).
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
    recipe = _recipe_or_none(model_type)
    if recipe is None:
        raise ValueError(
            f"Cannot train a tokenizer for model_type={model_type!r}; valid: {trainable_model_types()}."
        )
    smallest = recipe.smallest_vocab
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

    train = {
        "wordpiece": _train_wordpiece,
        "byte_level_bpe": _train_byte_level_bpe,
        "byte_fallback_bpe": _train_byte_fallback_bpe,
        "unigram": _train_unigram,
    }[recipe.kind]
    backend = train(recipe, counted(), vocab_size, min_frequency)
    if count == 0:
        raise ValueError(f"No texts to train the {model_type} tokenizer on.")
    backend.post_processor = _post_processor(recipe, backend)
    config: dict[str, Any] = {"tokenizer_class": recipe.tokenizer_class}
    if recipe.kind == "wordpiece":
        config["do_lower_case"] = recipe.lowercase
    config.update(copy.deepcopy(dict(recipe.tokenizer_config)))
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
    recipe: TokenizerRecipe, texts: Iterable[str], vocab_size: int, min_frequency: int
) -> RustTokenizer:
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=recipe.lowercase
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # The vocabulary is chosen here rather than by `tokenizers`' WordPieceTrainer, whose ties between
    # equally frequent pieces fall differently in every process: a seeded run must get the same ids.
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in counts for c in word})
    pieces = [*recipe.special_tokens, *chars, *(f"##{c}" for c in chars)]
    # Then whole words by frequency (ties by spelling); a word outside the vocabulary splits into characters.
    words = sorted(
        (w for w, n in counts.items() if n >= min_frequency and len(w) > 1), key=lambda w: (-counts[w], w)
    )
    pieces.extend(words[: max(0, vocab_size - len(pieces))])
    vocab = {piece: i for i, piece in enumerate(dict.fromkeys(pieces))}
    unk = recipe.tokenizer_config["unk_token"]
    backend = RustTokenizer(models.WordPiece(vocab, unk_token=unk, continuing_subword_prefix="##"))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend


def _train_byte_level_bpe(
    recipe: TokenizerRecipe, texts: Iterable[str], vocab_size: int, min_frequency: int
) -> RustTokenizer:
    backend = RustTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        # Slots are kept for the tokens added after training.
        vocab_size=vocab_size - len(recipe.added_last),
        min_frequency=min_frequency,
        special_tokens=list(recipe.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    if recipe.added_last:
        backend.add_special_tokens([AddedToken(**{**token, "special": True}) for token in recipe.added_last])
    return backend


METASPACE = "\u2581"  # ▁, sentencepiece's visible space
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))


def _train_byte_fallback_bpe(
    recipe: TokenizerRecipe, texts: Iterable[str], vocab_size: int, min_frequency: int
) -> RustTokenizer:
    # Pieces are learned within words (`split=True`), as sentencepiece does; the finished tokenizer runs
    # over the whole text (`split=False`), as transformers' LlamaTokenizer builds it: with no merge
    # across a `▁`, both give the same pieces.
    fixed = len(recipe.special_tokens) + len(BYTE_TOKENS) + len(recipe.added_last)
    learned = vocab_size - fixed
    learner = RustTokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=METASPACE, prepend_scheme="first", split=True
    )
    trainer = trainers.BpeTrainer(
        vocab_size=learned,
        min_frequency=min_frequency,
        # The rarest characters beyond the budget are left to the byte tokens.
        limit_alphabet=learned,
        show_progress=False,
    )
    learner.train_from_iterator(texts, trainer=trainer)
    trained = json.loads(learner.to_str())["model"]
    vocab = {token: i for i, token in enumerate((*recipe.special_tokens, *BYTE_TOKENS))}
    for token, _ in sorted(trained["vocab"].items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    backend = RustTokenizer(
        models.BPE(
            vocab,
            merges,
            unk_token=recipe.tokenizer_config["unk_token"],
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=METASPACE, prepend_scheme="first", split=False
    )
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace(METASPACE, " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),  # the `▁` put in front of the text
        ]
    )
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in recipe.special_tokens])
    if recipe.added_last:
        backend.add_special_tokens([AddedToken(**{**token, "special": True}) for token in recipe.added_last])
    return backend


def _train_unigram(
    recipe: TokenizerRecipe, texts: Iterable[str], vocab_size: int, min_frequency: int
) -> RustTokenizer:
    # min_frequency has no unigram counterpart: the trainer prunes pieces by likelihood instead.
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True),
        ]
    )
    learner = RustTokenizer(models.Unigram())
    learner.pre_tokenizer = pre_tokenizer
    unk = recipe.tokenizer_config["unk_token"]
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size - len(recipe.added_last),  # slots kept for the tokens added last
        special_tokens=list(recipe.special_tokens),
        unk_token=unk,
        show_progress=False,
    )
    learner.train_from_iterator(_with_words_doubled(texts, pre_tokenizer), trainer=trainer)
    trained = json.loads(learner.to_str())["model"]["vocab"]  # [[piece, score], ...], specials first
    pieces = [(piece, float(score)) for piece, score in trained]
    pieces += [(token["content"], 0.0) for token in recipe.added_last]
    ids = {piece: i for i, (piece, _) in enumerate(pieces)}
    backend = RustTokenizer(models.Unigram(pieces, unk_id=ids[unk], byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always", split=True)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in recipe.special_tokens])
    if recipe.added_last:
        backend.add_special_tokens([AddedToken(**{**token, "special": True}) for token in recipe.added_last])
    return backend


def _with_words_doubled(texts: Iterable[str], pre_tokenizer: Any) -> Iterable[str]:
    """`texts`, then every distinct word once more written twice (`thethe`).

    The unigram trainer seeds its candidate pieces with the substrings that occur at least twice among
    the *distinct* words, so a frequent word that is part of no other word (`the` in a small corpus) would
    never be a piece and would be spelled in fragments. Doubled, each word is a substring of one more
    word; the doubled forms count once each, too rare for the pruning to keep pieces of their own.
    """
    words: set[str] = set()
    for text in texts:
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(text))
        yield text
    for word in sorted(words):
        yield word.lstrip(METASPACE) * 2


def _post_processor(recipe: TokenizerRecipe, backend: RustTokenizer) -> Any:
    if recipe.post_processor == "template":
        single, pair = recipe.template
        specials = [(token, backend.token_to_id(token)) for token in template_tokens(recipe.template)]
        return processors.TemplateProcessing(single=single, pair=pair, special_tokens=specials)
    if recipe.post_processor == "byte_level":
        # trim_offsets: a token's character span leaves out the space it carries, so QA answer spans cut
        # from the context by offsets have no leading space. Ids are the same either way.
        return processors.ByteLevel(trim_offsets=True)
    sep, cls = recipe.tokenizer_config["sep_token"], recipe.tokenizer_config["cls_token"]
    return processors.RobertaProcessing(
        (sep, backend.token_to_id(sep)),
        (cls, backend.token_to_id(cls)),
        trim_offsets=True,
        add_prefix_space=False,
    )


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
