# python -m pytest tests/test_tokenizer_training.py
"""The byte-fallback BPE recipe kind (Llama's tokenizer.json layout), through a config registered here:
trained on the shipped texts, saved, and read back by transformers to the same ids and texts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from factory import registry
from factory.config import PretrainedConfig
from factory.contract.recipe import TokenizerRecipe
from factory.data.files import default_data_files
from factory.registry import register_config
from factory.tokenizers.tokenizer import AutoTokenizer
from factory.tokenizers.training import BYTE_TOKENS, train_tokenizer

RECIPE = TokenizerRecipe(
    kind="byte_fallback_bpe",
    tokenizer_class="LlamaTokenizer",
    special_tokens=("<unk>", "<s>", "</s>"),
    tokenizer_config={
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "model_input_names": ["input_ids", "attention_mask"],
    },
    post_processor="template",
    template=("<s>:0 $A:0", "<s>:0 $A:0 <s>:1 $B:1"),
)
# Characters the shipped English texts lack (accents, emoji, CJK) fall back to bytes.
TEXTS = ["Hello world", "  two  spaces", "naïve café 🤖 日本", "a\nb\tc", "", "The movie was great."]


@dataclass
class FallbackConfig(PretrainedConfig):
    model_type: ClassVar[str] = "fallback_toy"
    depth_fields: ClassVar[tuple[str, ...]] = ("num_hidden_layers",)
    tokenizer_recipe: ClassVar[TokenizerRecipe] = RECIPE
    vocab_size: int = 300
    hidden_size: int = 8
    num_hidden_layers: int = 1
    num_attention_heads: int = 1
    max_position_embeddings: int = 16
    intermediate_size: int = 16


@pytest.fixture(scope="module")
def trained():
    register_config(FallbackConfig)
    try:
        texts = open(default_data_files("causal_lm")[0], encoding="utf-8").read().splitlines()
        yield train_tokenizer("fallback_toy", texts, 600, model_max_length=64)
    finally:
        registry.unregister("fallback_toy")


def test_layout_is_llamas(trained):
    vocab = trained.get_vocab()
    assert [vocab[t] for t in ("<unk>", "<s>", "</s>")] == [0, 1, 2]
    assert [vocab[t] for t in BYTE_TOKENS] == list(range(3, 259))
    assert len(trained) <= 600 and len(trained) > 259  # pieces were learned, within the budget
    tokens = trained.convert_ids_to_tokens(trained("naïve 🤖")["input_ids"])
    assert tokens[0] == "<s>" and "<0xC3>" in tokens and "<0xF0>" in tokens and "<unk>" not in tokens
    assert all(t == "<s>" or t.startswith(("▁", "<0x")) or t.isalpha() for t in tokens)


def test_transformers_reads_the_same_ids_and_texts(trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    trained.save_pretrained(tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        ids = ours(text)["input_ids"]
        assert ids == theirs(text)["input_ids"] == trained(text)["input_ids"], text
        assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)
    assert (
        ours.decode(ours("naïve café 🤖 日本")["input_ids"], skip_special_tokens=True) == "naïve café 🤖 日本"
    )
    pair = ("What is it?", "It is here.")
    assert ours(*pair)["input_ids"] == theirs(*pair)["input_ids"]
    assert "token_type_ids" not in ours(*pair)


def test_no_pad_token_pads_with_eos(trained):
    batch = trained(["a", "a longer text"], padding=True)
    eos = trained.eos_token_id
    assert batch["input_ids"][0][-1] == eos and batch["attention_mask"][0][-1] == 0


def test_recipe_needs_an_unknown_token_and_a_vocabulary_above_the_bytes():
    with pytest.raises(ValueError, match=r"Byte-fallback BPE needs tokenizer_config\['unk_token'\]"):
        TokenizerRecipe(
            kind="byte_fallback_bpe",
            tokenizer_class="LlamaTokenizer",
            special_tokens=("<s>",),
            tokenizer_config={"unk_token": "<unk>"},
            post_processor="template",
            template=("<s> $A", "<s> $A $B"),
        )
    assert RECIPE.smallest_vocab == 3 + 256 + 1
