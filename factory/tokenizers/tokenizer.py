"""Fast tokenizers loaded from a Hugging Face tokenizer folder, without importing `transformers`.

A folder saved by `transformers` holds `tokenizer.json` (the whole `tokenizers` pipeline: normalizer,
pre-tokenizer, model, post-processor, decoder, added tokens) and usually `tokenizer_config.json` and
`special_tokens_map.json` (which tokens are the pad/eos/... tokens, `model_max_length`, padding side).
`AutoTokenizer.from_pretrained(folder)` builds a `Tokenizer` straight from those files and behaves like
transformers' fast tokenizers (`BertTokenizerFast`, `GPT2TokenizerFast`, `BartTokenizerFast`) for what it
covers: the same ids, masks, type ids and offsets for the same call.

This module sits on the cold-start path of every entry point, so it imports only the standard library
and `tokenizers`; `torch` is imported when tensors are asked for.

Example:
    >>> tok = AutoTokenizer.from_pretrained("path/to/folder")
    >>> batch = tok(["a sentence", "another one"], padding=True, return_tensors="pt")
    >>> batch.input_ids.shape, batch.attention_mask.shape
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import tokenizers

from factory.checkpoints.hub import HubOptions, resolve_file

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE)
# Read only to pick the tokenizer class when tokenizer_config.json does not name one (the official gpt2
# repository names none): the class of its model_type's tokenizer recipe, see `_tokenizer_class_of`.
MODEL_CONFIG_FILE = "config.json"

# transformers' order: `all_special_tokens` lists the named tokens in this order.
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)

PADDING_STRATEGIES = ("longest", "max_length", "do_not_pad")
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second", "do_not_truncate")

# transformers writes model_max_length=int(1e30) for "no limit" and treats anything above 1e20 as
# unlimited, so truncation=True without max_length then truncates nothing.
NO_MAX_LENGTH = int(1e30)
_UNLIMITED_ABOVE = int(1e20)

# What transformers' tokenizer classes assume when a config leaves it out: which special tokens the class
# defaults to, and whether `token_type_ids` is a model input. Keyed by `tokenizer_class` without "Fast".
_BERT_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
_ROBERTA_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}
_GPT2_TOKENS = {"unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
_T5_TOKENS = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
_TOKENIZER_CLASSES: dict[str, tuple[dict[str, str], bool]] = {
    # class name: (default special tokens, returns token_type_ids)
    "BertTokenizer": (_BERT_TOKENS, True),
    "DistilBertTokenizer": (_BERT_TOKENS, False),
    "GPT2Tokenizer": (_GPT2_TOKENS, False),
    "RobertaTokenizer": (_ROBERTA_TOKENS, False),
    "BartTokenizer": (_ROBERTA_TOKENS, False),
    "T5Tokenizer": (_T5_TOKENS, False),
}

# Keyword arguments `from_pretrained` accepts on top of the files, as transformers does.
_LOAD_KWARGS = frozenset(
    {
        *SPECIAL_TOKEN_NAMES,
        "model_max_length",
        "padding_side",
        "truncation_side",
        "model_input_names",
        "clean_up_tokenization_spaces",
        "additional_special_tokens",
        "extra_special_tokens",
    }
)
# Accepted for drop-in compatibility and ignored: every tokenizer here is a fast one.
_IGNORED_LOAD_KWARGS = frozenset({"use_fast"})
# Config keys that point at the folder it was loaded from or at code we do not copy; not written back.
_UNSAVED_CONFIG_KEYS = (
    "name_or_path",
    "tokenizer_file",
    "special_tokens_map_file",
    "added_tokens_decoder",
    "auto_map",
)


def resolve_files(
    path: str | os.PathLike, filenames: Sequence[str], hub: HubOptions | None = None
) -> dict[str, str | None]:
    """`{filename: local path, or None when the checkpoint lacks it}`, through `factory.checkpoints.hub`."""
    found = {}
    for name in filenames:
        full = resolve_file(path, name, required=False, hub=hub)
        found[name] = os.fspath(full) if full is not None else None
    return found


def _read_json(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path} should hold a JSON object, found {type(data).__name__}.")
    return data


def _tokenizer_class_of(model_type: Any) -> str | None:
    """The tokenizer class of a registered architecture's recipe, for a folder whose config names none."""
    # Imported here: this module stays light for the cases (nearly all) where tokenizer_config.json names
    # its class. The architectures are registered by then: importing factory imports them all.
    from factory import registry

    if not isinstance(model_type, str) or model_type not in registry.model_types():
        return None
    recipe = getattr(registry.config_class(model_type), "tokenizer_recipe", None)
    return None if recipe is None else recipe.tokenizer_class


def _token_content(value: Any) -> str | None:
    """A special token as configs store it: a string, or an AddedToken dict with "content"."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"A special token must be a string or a dict with a 'content' string, got {value!r}.")


def _added_token(value: Any) -> tokenizers.AddedToken:
    """An AddedToken for a special token config value, keeping lstrip/rstrip/... when the config has them."""
    if isinstance(value, dict):
        flags = ("single_word", "lstrip", "rstrip", "normalized")
        return tokenizers.AddedToken(
            value["content"], special=True, **{k: value[k] for k in flags if k in value}
        )
    return tokenizers.AddedToken(value, special=True, normalized=False)


def _post_processor_has_type_ids(backend: tokenizers.Tokenizer) -> bool:
    """Whether the post-processor gives a second sequence type id 1, as BERT's template does."""
    processor = backend.post_processor
    if processor is None:
        return False
    return _has_type_ids(json.loads(processor.__getstate__()))


def _has_type_ids(spec: dict[str, Any]) -> bool:
    kind = spec.get("type")
    if kind == "BertProcessing":
        return True
    if kind == "Sequence":
        return any(_has_type_ids(p) for p in spec.get("processors", []))
    if kind == "TemplateProcessing":
        pieces = spec.get("pair", [])
        return any(piece[key]["type_id"] != 0 for piece in pieces for key in piece)
    return False


def _parse_padding(padding: bool | str | None) -> str:
    if padding is True:
        return "longest"
    if padding is False or padding is None:
        return "do_not_pad"
    # str-valued enums such as transformers' PaddingStrategy compare equal to their value.
    if isinstance(padding, str) and padding in PADDING_STRATEGIES:
        return str(getattr(padding, "value", padding))
    raise ValueError(
        f"padding={padding!r} is not a padding strategy; valid: True, False, "
        + ", ".join(repr(s) for s in PADDING_STRATEGIES)
    )


def _parse_truncation(truncation: bool | str | None) -> str:
    if truncation is True:
        return "longest_first"
    if truncation is False or truncation is None:
        return "do_not_truncate"
    if isinstance(truncation, str) and truncation in TRUNCATION_STRATEGIES:
        return str(getattr(truncation, "value", truncation))
    raise ValueError(
        f"truncation={truncation!r} is not a truncation strategy; valid: True, False, "
        + ", ".join(repr(s) for s in TRUNCATION_STRATEGIES)
    )


def _check_side(name: str, value: Any, source: str) -> str:
    if value not in ("right", "left"):
        raise ValueError(f"{name}={value!r} (from {source}) is not valid; choose 'right' or 'left'.")
    return value


class BatchEncoding(dict):
    """The output of a `Tokenizer` call: a dict of model inputs that also reads as attributes.

    Keys are transformers' names (`input_ids`, `attention_mask`, `token_type_ids`, `offset_mapping`,
    `overflow_to_sample_mapping`, ...). Values are lists, or tensors with `return_tensors="pt"`.
    `encodings` keeps the `tokenizers.Encoding` of each row for `tokens`, `word_ids` and `sequence_ids`.
    """

    def __init__(
        self, data: dict[str, Any] | None = None, encodings: list[tokenizers.Encoding] | None = None
    ):
        super().__init__(data or {})
        self.encodings = encodings

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not real attributes; dunder lookups (pickle, copy) must fail fast.
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no field {name!r}; it has {sorted(self)}") from None

    def to(self, device: str | int | torch.device, *, non_blocking: bool = False) -> BatchEncoding:
        """Move every tensor to `device` in place and return `self` (lists are left as they are)."""
        for key, value in self.items():
            if hasattr(value, "to"):
                self[key] = value.to(device=device, non_blocking=non_blocking)
        return self

    def _encoding(self, index: int) -> tokenizers.Encoding:
        if not self.encodings:
            raise ValueError("This BatchEncoding has no tokenizers.Encoding to read tokens/word ids from.")
        return self.encodings[index]

    def tokens(self, index: int = 0) -> list[str]:
        """The token strings of row `index`."""
        return self._encoding(index).tokens

    def word_ids(self, index: int = 0) -> list[int | None]:
        """For each token of row `index`, the word it came from (None for special and pad tokens)."""
        return self._encoding(index).word_ids

    def sequence_ids(self, index: int = 0) -> list[int | None]:
        """For each token of row `index`, 0 for the first text, 1 for `text_pair`, None for special tokens."""
        return self._encoding(index).sequence_ids


def _to_tensors(data: dict[str, Any]) -> dict[str, Any]:
    import torch  # lazily: see the module docstring

    tensors = {}
    for key, value in data.items():
        try:
            # Every field is integral; naming the dtype also keeps empty rows int64 (torch would pick float).
            tensors[key] = torch.tensor(value, dtype=torch.int64)
        except ValueError as e:
            raise ValueError(
                f"Cannot make a tensor of {key!r}: its rows have different lengths. "
                "Pass padding=True (and truncation=True) to get rectangular batches."
            ) from e
    return tensors


class _SpecialToken:
    """`tok.pad_token` and friends: the token string, or None when the tokenizer has no such token."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, tok: Tokenizer | None, owner: type) -> Any:
        if tok is None:
            return self
        return tok._special_tokens.get(self.name)

    def __set__(self, tok: Tokenizer, value: str | None) -> None:
        tok._set_special_token(self.name, value)


class _SpecialTokenId:
    """`tok.pad_token_id` and friends: the id of the token above, settable by id."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.token_name = name.removesuffix("_id")

    def __get__(self, tok: Tokenizer | None, owner: type) -> Any:
        if tok is None:
            return self
        token = tok._special_tokens.get(self.token_name)
        return None if token is None else tok.convert_tokens_to_ids(token)

    def __set__(self, tok: Tokenizer, value: int | None) -> None:
        token = None if value is None else tok.convert_ids_to_tokens(int(value))
        if value is not None and token is None:
            raise ValueError(
                f"{self.token_name}_id={value!r} is not an id of this vocabulary (size {len(tok)})."
            )
        tok._set_special_token(self.token_name, token)


class Tokenizer:
    """A `tokenizers.Tokenizer` with transformers' calling conventions and special-token bookkeeping.

    Build one with `AutoTokenizer.from_pretrained(folder)`. Calling it works like transformers' fast
    tokenizers: a string gives unbatched lists, a list of strings gives a batch. Padding and truncation
    are chosen per call; whatever `tokenizer.json` had baked in is cleared at load, as transformers does.

    Padding without a pad token (GPT-2 has none): instead of raising as transformers does, the first call
    that pads sets `pad_token` to the eos token and logs a warning once. The padded positions get
    attention mask 0, so the model never attends to them; labels for causal LM should mask them with
    -100 using the attention mask, not the pad id, because the same id is a real eos elsewhere. This
    fallback is not written by `save_pretrained`, so a saved folder still says "no pad token"; set
    `tok.pad_token = tok.eos_token` yourself to make it permanent. With neither a pad nor an eos token,
    padding raises ValueError.

    Attributes:
        padding_side: "right" or "left" (default from tokenizer_config.json, else "right").
        truncation_side: "right" or "left".
        model_max_length: the longest input the model takes; `NO_MAX_LENGTH` when unknown.
        model_input_names: the inputs a call returns by default (token_type_ids only for BERT-style).
    """

    # The class family a named subclass reads (`BertTokenizer` -> "Bert"); None for the generic class.
    family: str | None = None

    bos_token = _SpecialToken()
    eos_token = _SpecialToken()
    unk_token = _SpecialToken()
    sep_token = _SpecialToken()
    pad_token = _SpecialToken()
    cls_token = _SpecialToken()
    mask_token = _SpecialToken()
    bos_token_id = _SpecialTokenId()
    eos_token_id = _SpecialTokenId()
    unk_token_id = _SpecialTokenId()
    sep_token_id = _SpecialTokenId()
    pad_token_id = _SpecialTokenId()
    cls_token_id = _SpecialTokenId()
    mask_token_id = _SpecialTokenId()

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        config: dict[str, Any] | None = None,
        name_or_path: str = "",
    ):
        """Wrap a `tokenizers.Tokenizer`.

        Args:
            backend: the tokenizer; its padding and truncation settings are cleared.
            config: tokenizer_config.json's content merged with special_tokens_map.json (see
                `from_pretrained`): special tokens, `model_max_length`, `padding_side`, ...
            name_or_path: where it came from, for messages.
        """
        config = dict(config or {})
        self.name_or_path = name_or_path
        self._backend = backend
        self._config = config
        source = f"{TOKENIZER_CONFIG_FILE} of {name_or_path!r}" if name_or_path else "the tokenizer config"

        # transformers takes these defaults from tokenizer.json's own padding/truncation, then clears them.
        baked_padding, baked_truncation = backend.padding, backend.truncation
        backend.no_padding()
        backend.no_truncation()
        default_padding_side = baked_padding["direction"] if baked_padding else "right"
        default_truncation_side = baked_truncation["direction"] if baked_truncation else "right"
        self._padding_side = _check_side(
            "padding_side", config.get("padding_side", default_padding_side), source
        )
        self._truncation_side = _check_side(
            "truncation_side", config.get("truncation_side", default_truncation_side), source
        )
        if baked_padding and "pad_token" not in config:
            config["pad_token"] = baked_padding["pad_token"]

        max_length = config.get("model_max_length")
        self.model_max_length: int = NO_MAX_LENGTH if max_length is None else int(max_length)
        self.clean_up_tokenization_spaces: bool = bool(config.get("clean_up_tokenization_spaces", False))

        tokenizer_class = str(config.get("tokenizer_class") or "").removesuffix("Fast")
        class_tokens, class_type_ids = _TOKENIZER_CLASSES.get(tokenizer_class, ({}, None))
        if "model_input_names" in config:
            self.model_input_names = list(config["model_input_names"])
        else:
            if class_type_ids is None:
                class_type_ids = tokenizer_class.startswith("Bert") or _post_processor_has_type_ids(backend)
            type_ids = ["token_type_ids"] if class_type_ids else []
            self.model_input_names = ["input_ids", *type_ids, "attention_mask"]

        # A name the config leaves out gets the class default; an explicit null stays None (gpt2's pad).
        raw_tokens = {
            name: config[name] if name in config else class_tokens.get(name) for name in SPECIAL_TOKEN_NAMES
        }
        self._special_tokens: dict[str, str | None] = {n: _token_content(v) for n, v in raw_tokens.items()}
        extras = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
        if isinstance(extras, dict):  # transformers v5 also allows named extra tokens
            extras = list(extras.values())
        self._extra_special_tokens = [_token_content(v) for v in extras]
        self._register_special_tokens([*raw_tokens.values(), *extras])

        self._pad_is_eos_fallback = False
        self._warned_too_long = False

    def _register_special_tokens(self, values: list[Any]) -> None:
        # transformers adds any special token that is not yet an added token of the backend, so that it is
        # never split and `skip_special_tokens` drops it; do the same to get the same ids.
        known = {t.content for t in self._backend.get_added_tokens_decoder().values()}
        missing = [v for v in values if v is not None and _token_content(v) not in known]
        if missing:
            self._backend.add_special_tokens([_added_token(v) for v in missing])

    def _set_special_token(self, name: str, value: str | None) -> None:
        if value is not None:
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string or None, got {value!r}.")
            if self._backend.token_to_id(value) is None:
                raise ValueError(
                    f"{name}={value!r} is not in the vocabulary of {self.name_or_path!r}; "
                    "use one of its tokens (for example tok.eos_token)."
                )
        self._special_tokens[name] = value
        if name == "pad_token":
            self._pad_is_eos_fallback = False

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> Tokenizer:
        """Load the tokenizer saved in the folder `path`.

        Reads tokenizer.json (required), tokenizer_config.json and special_tokens_map.json (when present),
        with transformers' precedence: special_tokens_map.json overrides tokenizer_config.json unless the
        latter has `added_tokens_decoder`, and `kwargs` override both.

        Args:
            path: a local folder (hub ids are not supported yet).
            **kwargs: `padding_side`, `truncation_side`, `model_max_length`, `model_input_names`,
                `clean_up_tokenization_spaces`, special tokens (`pad_token="..."`, ...). `use_fast` is
                accepted and ignored.

        Raises:
            FileNotFoundError: the folder or its tokenizer.json is missing.
            ValueError: an unknown keyword argument or an invalid config value.
        """
        hub = HubOptions(
            **{k: kwargs.pop(k) for k in ("revision", "cache_dir", "local_files_only") if k in kwargs}
        )
        unknown = set(kwargs) - _LOAD_KWARGS - _IGNORED_LOAD_KWARGS
        if unknown:
            raise ValueError(
                f"Unknown from_pretrained argument(s) {sorted(unknown)}; valid: {sorted(_LOAD_KWARGS)}."
            )
        names = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE, MODEL_CONFIG_FILE)
        files = resolve_files(path, names, hub)
        if files[TOKENIZER_FILE] is None:
            raise FileNotFoundError(
                f"No {TOKENIZER_FILE} in {os.fspath(path)!r} (looked for {', '.join(names[:3])}). "
                f"Only fast-tokenizer folders are supported: vocab.txt or vocab.json/merges.txt alone are "
                f"not. Convert once with transformers: AutoTokenizer.from_pretrained(folder).save_pretrained(folder)."
            )

        config = _read_json(files[TOKENIZER_CONFIG_FILE])
        if "added_tokens_decoder" not in config:
            config.update(_read_json(files[SPECIAL_TOKENS_MAP_FILE]))
        if not config.get("tokenizer_class"):
            tokenizer_class = _tokenizer_class_of(_read_json(files[MODEL_CONFIG_FILE]).get("model_type"))
            if tokenizer_class is not None:
                config["tokenizer_class"] = tokenizer_class
        config.update({k: v for k, v in kwargs.items() if k in _LOAD_KWARGS})
        saved_family = str(config.get("tokenizer_class") or "").removesuffix("Fast")
        if cls.family is not None and saved_family and saved_family != cls.family:
            # transformers warns and loads the folder anyway; tokenizer.json decides the pipeline.
            logger.warning(
                "%s holds a %s (tokenizer_config.json), loaded with %s; AutoTokenizer picks the class "
                "from the folder.",
                os.fspath(path),
                saved_family,
                cls.__name__,
            )

        backend = tokenizers.Tokenizer.from_file(files[TOKENIZER_FILE])
        return cls(backend, config, name_or_path=os.fspath(path))

    @property
    def padding_side(self) -> str:
        """Which end padding goes to by default: "right" or "left" (decoder-only generation wants left)."""
        return self._padding_side

    @padding_side.setter
    def padding_side(self, value: str) -> None:
        self._padding_side = _check_side("padding_side", value, "the attribute")

    @property
    def truncation_side(self) -> str:
        """Which end truncation cuts tokens from: "right" or "left"."""
        return self._truncation_side

    @truncation_side.setter
    def truncation_side(self, value: str) -> None:
        self._truncation_side = _check_side("truncation_side", value, "the attribute")

    # -- vocabulary -------------------------------------------------------------------------------

    @property
    def backend_tokenizer(self) -> tokenizers.Tokenizer:
        """The underlying `tokenizers.Tokenizer` (padding/truncation are set on it per call)."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary, without added tokens (as in transformers)."""
        return self._backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        """Size of the full vocabulary, added tokens included: the embedding rows a model needs."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        """Token -> id for the whole vocabulary, added tokens included."""
        return self._backend.get_vocab(with_added_tokens=True)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """The named special tokens that are set, e.g. `{"pad_token": "[PAD]", ...}`."""
        return {name: tok for name, tok in self._special_tokens.items() if tok is not None}

    @property
    def all_special_tokens(self) -> list[str]:
        """Named then extra special tokens, without duplicates, in transformers' order."""
        seen: dict[str, None] = {}
        for token in [*self._special_tokens.values(), *self._extra_special_tokens]:
            if token is not None:
                seen.setdefault(token)
        return list(seen)

    @property
    def all_special_ids(self) -> list[int]:
        """The ids of `all_special_tokens`."""
        return self.convert_tokens_to_ids(self.all_special_tokens)

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | None | list[int | None]:
        """Token(s) to id(s); a token outside the vocabulary maps to the unk id (None without one)."""
        if isinstance(tokens, str):
            index = self._backend.token_to_id(tokens)
            return self.unk_token_id if index is None else index
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(
        self, ids: int | list[int], skip_special_tokens: bool = False
    ) -> str | None | list[str | None]:
        """Id(s) to token string(s); None for an id outside the vocabulary."""
        if hasattr(ids, "tolist"):  # tensors and numpy values
            ids = ids.tolist()
        if isinstance(ids, int):
            return self._backend.id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._backend.id_to_token(int(i)) for i in ids if int(i) not in skip]

    def __repr__(self) -> str:
        return (
            f"Tokenizer(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, len={len(self)}, "
            f"model_max_length={self.model_max_length}, padding_side={self.padding_side!r}, "
            f"special_tokens={self.special_tokens_map})"
        )

    # -- encoding ---------------------------------------------------------------------------------

    def __call__(
        self,
        text: str | list[str] | list[list[str]],
        text_pair: str | list[str] | list[list[str]] | None = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
    ) -> BatchEncoding:
        """Tokenize a text, a pair, or a batch of them, exactly as transformers' fast tokenizers do.

        Args:
            text: a string (unbatched output) or a list of strings (batched); with
                `is_split_into_words`, a list of words or a list of such lists.
            text_pair: the second sequence(s), same shape as `text`.
            add_special_tokens: add [CLS]/[SEP], <s>/</s>, ... as the post-processor says.
            padding: True or "longest" (to the longest row), "max_length", False or "do_not_pad".
            truncation: True or "longest_first", "only_first", "only_second", False or
                "do_not_truncate". None means False, unless `max_length` is given without padding, which
                truncates (transformers' rule). Without `max_length`, truncation uses `model_max_length`
                and is a no-op when that is unknown.
            max_length: length to truncate and/or pad ("max_length") to. padding="max_length" without
                it pads to `model_max_length`, and raises ValueError when that is unknown.
            stride: with truncation and `return_overflowing_tokens`, tokens shared by consecutive windows.
            is_split_into_words: the input is already split into words.
            pad_to_multiple_of: round padded lengths up to a multiple of this.
            padding_side: "right" or "left" for this call; default `self.padding_side`.
            return_tensors: None for lists, "pt" for torch tensors.
            return_token_type_ids: default: whether "token_type_ids" is in `model_input_names`.
            return_attention_mask: default: whether "attention_mask" is in `model_input_names`.
            return_overflowing_tokens: return the truncated-away windows as extra rows, plus
                `overflow_to_sample_mapping` (row -> input index); the output is then always batched.
            return_special_tokens_mask: 1 where a token was added by the post-processor.
            return_offsets_mapping: (start, end) character span of each token in its text.
            return_length: the number of tokens of each row.

        Returns:
            A `BatchEncoding` with `input_ids` and the other requested fields.

        Raises:
            ValueError: an unknown padding/truncation strategy, padding="max_length" with no length to
                pad to, padding without pad or eos token, or a bad `padding_side`.
        """
        padding_strategy, truncation_strategy, max_length = self._resolve_lengths(
            padding, truncation, max_length, pad_to_multiple_of
        )
        if padding_side is not None:
            _check_side("padding_side", padding_side, "the call")
        batched, inputs = self._batch_inputs(text, text_pair, is_split_into_words)
        self._configure_backend(
            padding_strategy,
            truncation_strategy,
            max_length,
            stride,
            pad_to_multiple_of,
            padding_side or self.padding_side,
        )
        encodings = self._backend.encode_batch(
            inputs, add_special_tokens=add_special_tokens, is_pretokenized=is_split_into_words
        )

        if return_token_type_ids is None:
            return_token_type_ids = "token_type_ids" in self.model_input_names
        if return_attention_mask is None:
            return_attention_mask = "attention_mask" in self.model_input_names
        fields = {
            "input_ids": lambda e: e.ids,
            "token_type_ids": lambda e: e.type_ids,
            "attention_mask": lambda e: e.attention_mask,
            "special_tokens_mask": lambda e: e.special_tokens_mask,
            "offset_mapping": lambda e: e.offsets,
            "length": lambda e: len(e.ids),
        }
        wanted = {
            "input_ids": True,
            "token_type_ids": return_token_type_ids,
            "attention_mask": return_attention_mask,
            "special_tokens_mask": return_special_tokens_mask,
            "offset_mapping": return_offsets_mapping,
            "length": return_length,
        }
        rows, sample_of_row = [], []
        for sample, encoding in enumerate(encodings):
            windows = [encoding, *encoding.overflowing] if return_overflowing_tokens else [encoding]
            rows.extend(windows)
            sample_of_row.extend([sample] * len(windows))
        data: dict[str, Any] = {key: [get(e) for e in rows] for key, get in fields.items() if wanted[key]}
        if return_overflowing_tokens:
            data["overflow_to_sample_mapping"] = sample_of_row
        if max_length is None:
            self._warn_if_too_long(data["input_ids"])

        if return_tensors is not None:
            if return_tensors != "pt":
                raise ValueError(f"return_tensors={return_tensors!r} is not supported; valid: None, 'pt'.")
            data = _to_tensors(data)
        elif not batched and not return_overflowing_tokens:
            # A single text gives unbatched lists, as in transformers ("length" stays a 1-item list).
            data = {k: v[0] if v and isinstance(v[0], list) else v for k, v in data.items()}
        return BatchEncoding(data, rows)

    def _resolve_lengths(
        self,
        padding: bool | str | None,
        truncation: bool | str | None,
        max_length: int | None,
        pad_to_multiple_of: int | None,
    ) -> tuple[str, str, int | None]:
        """transformers' `_get_padding_truncation_strategies`, with our pad-token and max_length rules."""
        if max_length is not None and padding is False and truncation is None:
            truncation = "longest_first"  # transformers: a bare max_length means "truncate to it"
        padding_strategy = _parse_padding(padding)
        truncation_strategy = _parse_truncation(truncation)

        if max_length is None:
            known_limit = self.model_max_length <= _UNLIMITED_ABOVE
            if padding_strategy == "max_length":
                if not known_limit:
                    # transformers silently skips padding here; a batch of ragged rows is a worse surprise.
                    raise ValueError(
                        "padding='max_length' needs max_length=<int>: this tokenizer has no model_max_length "
                        f"in its {TOKENIZER_CONFIG_FILE} to pad to."
                    )
                max_length = self.model_max_length
            if truncation_strategy != "do_not_truncate":
                if known_limit:
                    max_length = self.model_max_length
                else:
                    truncation_strategy = "do_not_truncate"

        if padding_strategy != "do_not_pad" and self.pad_token is None:
            self._fall_back_to_eos_padding()

        if (
            truncation_strategy != "do_not_truncate"
            and padding_strategy != "do_not_pad"
            and pad_to_multiple_of is not None
            and max_length is not None
            and max_length % pad_to_multiple_of != 0
        ):
            raise ValueError(
                f"max_length={max_length} is not a multiple of pad_to_multiple_of={pad_to_multiple_of}, "
                "so truncated rows could not be padded to a multiple of it."
            )
        return padding_strategy, truncation_strategy, max_length

    def _fall_back_to_eos_padding(self) -> None:
        if self.eos_token is None:
            raise ValueError(
                f"Asked to pad but tokenizer {self.name_or_path!r} has neither pad_token nor eos_token; "
                "set tok.pad_token to one of its tokens."
            )
        logger.warning(
            "Tokenizer %r has no pad token; padding with the eos token %r (attention_mask is 0 there).",
            self.name_or_path,
            self.eos_token,
        )
        self._special_tokens["pad_token"] = self.eos_token
        self._pad_is_eos_fallback = True

    def _batch_inputs(self, text: Any, text_pair: Any, is_split_into_words: bool) -> tuple[bool, list[Any]]:
        """Whether the call is batched, and the inputs as `encode_batch` takes them."""
        if is_split_into_words:
            batched = isinstance(text, (list, tuple)) and bool(text) and isinstance(text[0], (list, tuple))
        else:
            batched = isinstance(text, (list, tuple))
            items = list(text) if batched else [text]
            pairs = list(text_pair) if batched and text_pair is not None else [text_pair]
            for item in [*items, *pairs]:
                if item is not None and not isinstance(item, str):
                    raise TypeError(
                        f"Expected a string or a list of strings to tokenize, got an item of type "
                        f"{type(item).__name__}: {item!r} (pass is_split_into_words=True for lists of words)."
                    )
        if not batched:
            # transformers tests `if text_pair`, so an empty second text encodes as no pair at all.
            return False, [(text, text_pair)] if text_pair else [text]
        if text_pair is None:
            return True, list(text)
        if isinstance(text_pair, str):
            raise TypeError(
                "text is a batch (list) but text_pair is a single string; pass a list of the same length."
            )
        if len(text) != len(text_pair):
            raise ValueError(
                f"text has {len(text)} items but text_pair has {len(text_pair)}; they must match."
            )
        return True, list(zip(text, text_pair))

    def _configure_backend(
        self,
        padding_strategy: str,
        truncation_strategy: str,
        max_length: int | None,
        stride: int,
        pad_to_multiple_of: int | None,
        padding_side: str,
    ) -> None:
        if truncation_strategy == "do_not_truncate":
            self._backend.no_truncation()
        else:
            self._backend.enable_truncation(
                max_length, stride=stride, strategy=truncation_strategy, direction=self.truncation_side
            )
        if padding_strategy == "do_not_pad":
            self._backend.no_padding()
        else:
            self._backend.enable_padding(
                direction=padding_side,
                pad_id=self.pad_token_id,
                pad_type_id=0,
                pad_token=self.pad_token,
                length=max_length if padding_strategy == "max_length" else None,
                pad_to_multiple_of=pad_to_multiple_of,
            )

    def _warn_if_too_long(self, rows: list[list[int]]) -> None:
        if self._warned_too_long or not rows:
            return
        longest = max(len(r) for r in rows)
        if longest > self.model_max_length:
            logger.warning(
                "Token sequence of length %d is longer than model_max_length=%d of %r; the model will fail "
                "on it. Pass truncation=True.",
                longest,
                self.model_max_length,
                self.name_or_path,
            )
            self._warned_too_long = True

    def encode(
        self,
        text: str,
        text_pair: str | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        padding_side: str | None = None,
        return_tensors: str | None = None,
    ) -> list[int] | torch.Tensor:
        """The `input_ids` of `self(text, text_pair, ...)`."""
        return self(
            text,
            text_pair,
            add_special_tokens=add_special_tokens,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            stride=stride,
            padding_side=padding_side,
            return_tensors=return_tensors,
        )["input_ids"]

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False) -> list[str]:
        """The token strings of `text` (without special tokens unless asked)."""
        return self(text, pair, add_special_tokens=add_special_tokens).tokens()

    # -- decoding ---------------------------------------------------------------------------------

    def decode(
        self,
        token_ids: int | Sequence[int] | Sequence[Sequence[int]] | torch.Tensor,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str | list[str]:
        """Ids back to text; a batch (list of lists, 2-D tensor) gives a list of strings.

        Args:
            token_ids: one sequence of ids, or a batch of them.
            skip_special_tokens: drop special tokens ([CLS], <pad>, ...) from the text.
            clean_up_tokenization_spaces: remove spaces before punctuation; default from
                tokenizer_config.json (off). Ignored for BPE models, as in transformers, where it would
                delete real spaces.
        """
        if hasattr(token_ids, "tolist"):
            token_ids = token_ids.tolist()
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        if token_ids and isinstance(token_ids[0], (list, tuple)):
            return [self.decode(ids, skip_special_tokens, clean_up_tokenization_spaces) for ids in token_ids]
        text = self._backend.decode(list(token_ids), skip_special_tokens=skip_special_tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        if clean_up_tokenization_spaces and type(self._backend.model).__name__ != "BPE":
            text = _clean_up_tokenization(text)
        return text

    def batch_decode(
        self,
        sequences: Sequence[Sequence[int]] | torch.Tensor,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> list[str]:
        """`decode` for a batch; always returns a list."""
        result = self.decode(sequences, skip_special_tokens, clean_up_tokenization_spaces)
        return [result] if isinstance(result, str) else result

    # -- saving -----------------------------------------------------------------------------------

    def saved_config(self) -> dict[str, Any]:
        """The tokenizer_config.json `save_pretrained` writes: the settings as they are now, so a tokenizer
        and the same one saved and loaded again give equal configs (the encoded-data cache keys on it)."""
        tokens = dict(self._special_tokens)
        if self._pad_is_eos_fallback:
            tokens["pad_token"] = None  # a call-time fallback, not part of the saved tokenizer
        config = {k: v for k, v in self._config.items() if k not in _UNSAVED_CONFIG_KEYS}
        config.update(tokens)
        config.update(
            model_max_length=self.model_max_length,
            padding_side=self.padding_side,
            truncation_side=self.truncation_side,
            model_input_names=list(self.model_input_names),
            clean_up_tokenization_spaces=self.clean_up_tokenization_spaces,
        )
        return config

    def save_pretrained(self, save_directory: str | os.PathLike) -> tuple[str, ...]:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `save_directory`.

        transformers' `AutoTokenizer.from_pretrained` loads the folder back to the same tokenizer: keys of
        the original tokenizer_config.json that transformers' classes read (`do_lower_case`, ...) are
        kept, and padding side, lengths, input names and special tokens are written as they are now.

        Returns:
            The paths written.
        """
        folder = os.fspath(save_directory)
        if os.path.isfile(folder):
            raise NotADirectoryError(f"save_pretrained needs a directory, but {folder!r} is a file.")
        os.makedirs(folder, exist_ok=True)

        config = self.saved_config()
        special_map: dict[str, Any] = {k: config[k] for k in SPECIAL_TOKEN_NAMES if config[k] is not None}
        if self._extra_special_tokens:
            special_map["additional_special_tokens"] = list(self._extra_special_tokens)

        paths = tuple(
            os.path.join(folder, n) for n in (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE)
        )
        # Per-call padding/truncation must not end up baked into the saved file.
        self._backend.no_padding()
        self._backend.no_truncation()
        from factory.checkpoints.atomic import atomic_files

        with atomic_files(folder) as temp:  # the three files replace a previous tokenizer together
            self._backend.save(str(temp(TOKENIZER_FILE)))
            for name, content in ((TOKENIZER_CONFIG_FILE, config), (SPECIAL_TOKENS_MAP_FILE, special_map)):
                text = json.dumps(content, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
                temp(name).write_text(text, encoding="utf-8")
        logger.info("Saved tokenizer to %s", folder)
        return paths


def _clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization`: drop the space a WordPiece decode leaves before punctuation."""
    for before, after in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(before, after)
    return text


_NAMED_CLASSES: dict[str, type[Tokenizer]] = {}


def tokenizer_class(name: str) -> type[Tokenizer] | None:
    """The tokenizer class transformers names `name` (`BertTokenizer`, `GPT2TokenizerFast`, ...), when a
    registered architecture's tokenizer recipe names that family; None otherwise.

    As in transformers 5, the `...Fast` name is the same class. Each loads any tokenizer.json folder
    exactly as `AutoTokenizer` does (same ids), warning when the folder names another family.
    """
    from factory import registry

    family = name.removesuffix("Fast")
    families = {
        registry.config_class(t).tokenizer_recipe.tokenizer_class.removesuffix("Fast")
        for t in registry.model_types()
    }
    if family not in families or not name.endswith(("Tokenizer", "TokenizerFast")):
        return None
    if family not in _NAMED_CLASSES:
        _NAMED_CLASSES[family] = type(
            family,
            (Tokenizer,),
            {
                "family": family,
                "__module__": __name__,
                "__doc__": f"transformers' `{family}`: {Tokenizer.__doc__}",
            },
        )
    return _NAMED_CLASSES[family]


class AutoTokenizer:
    """Entry point mirroring `transformers.AutoTokenizer`: `AutoTokenizer.from_pretrained(folder)`.

    There is one tokenizer class here: the `tokenizer.json` file decides the pipeline, so no per-model
    class is needed.
    """

    def __init__(self) -> None:
        raise TypeError("AutoTokenizer is not instantiated; use AutoTokenizer.from_pretrained(path).")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> Tokenizer:
        """Load a `Tokenizer` from a folder; see `Tokenizer.from_pretrained`."""
        return Tokenizer.from_pretrained(path, **kwargs)
