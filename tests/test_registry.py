# pytest tests/test_registry.py
"""The registry: every arch x head builds and trains a step; names are checked loudly; registration checks
the architecture contract; users can add theirs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

import factory
from factory import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    CheckpointTable,
    PretrainedConfig,
    PreTrainedModel,
    RegistryError,
    model_class,
    model_matrix,
    register_config,
    register_model,
    registered_models,
    registry,
)
from factory.models.outputs import ModelOutput
from factory.tokenizers.training import TokenizerRecipe, train_tokenizer
from tests.helpers import make_batch, tiny_config


def test_matrix_lists_every_arch_and_head():
    matrix = model_matrix()
    assert matrix["bert"] == {
        "base": "BertModel",
        "causal_lm": "BertLMHeadModel",
        "masked_lm": "BertForMaskedLM",
        "multiple_choice": "BertForMultipleChoice",
        "next_sentence": "BertForNextSentencePrediction",
        "pretraining": "BertForPreTraining",
        "qa": "BertForQuestionAnswering",
        "seqcls": "BertForSequenceClassification",
        "token_cls": "BertForTokenClassification",
    }
    # Every architecture classifies and answers; a causal LM only where HF has one (not DistilBERT).
    for heads in matrix.values():
        assert set(heads) >= {"base", "seqcls", "qa"}


@pytest.mark.parametrize(
    "model_type, head, cls", registered_models(), ids=lambda v: getattr(v, "__name__", v)
)
def test_every_registered_model_runs_forward_and_backward(model_type, head, cls):
    torch.manual_seed(0)
    config = tiny_config(model_type)
    model = cls(config).train()
    batch = make_batch(config, head)
    out = model(**batch)
    loss = out.loss if out.loss is not None else out.last_hidden_state.pow(2).mean()
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > len(grads) // 2


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(
        RegistryError, match=r"Unknown model_type 'brt'.*Did you mean 'bert'.*Valid model types: \[.*'bert'"
    ):
        registry.config_class("brt")
    with pytest.raises(
        RegistryError, match=r"Unknown head 'seqclass' for model_type 'bert'.*Did you mean 'seqcls'"
    ):
        model_class("bert", "seqclass")


def test_duplicate_registration_raises():
    with pytest.raises(RegistryError, match="already registered"):
        register_config(type(AutoConfig.for_model("bert")))
    with pytest.raises(RegistryError, match=r"\('bert', 'base'\) is already registered to BertModel"):
        register_model("base")(model_class("bert", "base"))


def test_public_names_come_from_the_registry():
    shipped = [cls for _, _, cls in registered_models()]
    shipped += [registry.config_class(t) for t in registry.model_types()]
    assert {"BertModel", "GPT2Config", "BartForCausalLM"} <= {c.__name__ for c in shipped}
    for cls in shipped:
        assert getattr(factory, cls.__name__) is cls
        assert cls.__name__ in factory.__all__ and cls.__name__ in dir(factory)
    with pytest.raises(AttributeError, match="no attribute 'BertModle'"):
        factory.BertModle  # noqa: B018


# A user's own architecture, registered from outside the package: the whole contract in a few lines.
@dataclass
class ToyConfig(PretrainedConfig):
    model_type: ClassVar[str] = "toy"
    aliases: ClassVar[dict] = {
        "hidden_size": ("width",),
        "num_hidden_layers": ("depth",),
        "num_attention_heads": ("heads",),
        "max_position_embeddings": ("positions",),
        "intermediate_size": ("ffn",),
    }
    depth_fields: ClassVar[tuple[str, ...]] = ("depth",)
    tokenizer_recipe: ClassVar[TokenizerRecipe] = TokenizerRecipe(
        kind="wordpiece",
        tokenizer_class="PreTrainedTokenizerFast",
        special_tokens=("<pad>", "<unk>", "<cls>"),
        tokenizer_config={"pad_token": "<pad>", "unk_token": "<unk>", "cls_token": "<cls>"},
        post_processor="template",
        template=("<cls> $A", "<cls> $A $B:1"),
    )
    vocab_size: int = 50
    width: int = 8
    depth: int = 1
    heads: int = 1
    positions: int = 16
    ffn: int = 16


class ToyModel(PreTrainedModel):
    config_class = ToyConfig
    base_model_prefix = "toy"
    checkpoint_table = CheckpointTable()

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.width)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Embedding):
            module.weight.normal_(0, 0.02)
        elif isinstance(module, nn.Linear):
            module.weight.normal_(0, 0.02)
            module.bias.zero_()

    def forward(self, input_ids, attention_mask=None):
        return ModelOutput(last_hidden_state=self.embed(input_ids))


class ToyForSequenceClassification(ToyModel):
    def __init__(self, config):
        PreTrainedModel.__init__(self, config)
        self.toy = ToyModel(config)
        self.score = nn.Linear(config.width, config.num_labels)
        self.post_init()

    def forward(self, input_ids, attention_mask=None):
        return ModelOutput(logits=self.score(self.toy(input_ids).last_hidden_state[:, 0]))


@pytest.fixture
def toy_registered():
    register_config(ToyConfig)
    register_model("base")(ToyModel)
    register_model("seqcls")(ToyForSequenceClassification)
    yield
    registry.unregister("toy")


def test_a_users_architecture_joins_the_registry(tmp_path, toy_registered):
    assert model_matrix()["toy"] == {"base": "ToyModel", "seqcls": "ToyForSequenceClassification"}
    config = AutoConfig.for_model("toy", hidden_size=6)
    assert config.width == 6
    base = AutoModel.from_config(config)
    base.save_pretrained(tmp_path)
    # A headless toy checkpoint into the toy classifier: backbone loaded, head newly initialised.
    clf, info = AutoModelForSequenceClassification.from_pretrained(
        tmp_path, output_loading_info=True, num_labels=4
    )
    assert info["missing_keys"] == ["score.weight", "score.bias"]
    assert torch.equal(clf.toy.embed.weight, base.embed.weight)
    assert clf(torch.tensor([[1, 2]])).logits.shape == (1, 4)


def test_a_users_architecture_is_found_by_name_and_trains_its_tokenizer(toy_registered):
    assert "toy" in registry.model_types()
    config = AutoConfig.for_model("toy", num_hidden_layers=3)
    assert isinstance(config, ToyConfig) and config.depth == 3
    texts = ["the cat sat", "the cat ran", "a dog sat"] * 2
    tokenizer = train_tokenizer("toy", texts, 40)
    cls_id = tokenizer.convert_tokens_to_ids("<cls>")
    assert cls_id == 2
    # Words seen twice or more are whole pieces; the template puts <cls> first.
    ids = tokenizer("the cat")["input_ids"]
    assert ids == [2, *tokenizer.convert_tokens_to_ids(["the", "cat"])] and 1 not in ids
    # The recipe decides what transformers will load it as; a user's class stays out of `factory`.
    assert tokenizer._config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "ToyConfig" not in factory.__all__


def test_an_unregistered_architecture_is_gone(toy_registered):
    registry.unregister("toy")
    with pytest.raises(RegistryError, match="Unknown model_type 'toy'"):
        AutoConfig.for_model("toy")
    with pytest.raises(ValueError, match=r"model_type='toy'.*valid: \['bart', 'bert', .*'gpt2'"):
        train_tokenizer("toy", ["a b"], 40)


def _without(mapping: dict, key: str) -> dict:
    return {k: v for k, v in mapping.items() if k != key}


@dataclass
class NoPositions(ToyConfig):
    model_type: ClassVar[str] = "no_positions"
    aliases: ClassVar[dict] = _without(ToyConfig.aliases, "max_position_embeddings")


@dataclass
class AliasToNothing(ToyConfig):
    model_type: ClassVar[str] = "alias_to_nothing"
    aliases: ClassVar[dict] = {**ToyConfig.aliases, "intermediate_size": ("ffn_dim",)}


@dataclass
class BadDepth(ToyConfig):
    model_type: ClassVar[str] = "bad_depth"
    depth_fields: ClassVar[tuple[str, ...]] = ("depth", "n_layer")


@dataclass
class NoRecipe(ToyConfig):
    model_type: ClassVar[str] = "no_recipe"
    tokenizer_recipe: ClassVar[None] = None


@dataclass
class NoModelType(ToyConfig):
    model_type: ClassVar[str] = ""


class NotADataclass(PretrainedConfig):
    model_type: ClassVar[str] = "not_a_dataclass"


@pytest.mark.parametrize(
    "cls, message",
    [
        (NoPositions, r"common name 'max_position_embeddings' is neither a field nor in aliases"),
        (AliasToNothing, r"aliases\['intermediate_size'\] = \('ffn_dim',\) should name fields"),
        (BadDepth, r"depth_fields \('depth', 'n_layer'\) names non-fields \['n_layer'\]"),
        (NoRecipe, r"no tokenizer_recipe"),
        (NoModelType, r"no model_type"),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_a_config_that_breaks_the_contract_fails_at_registration(cls, message):
    with pytest.raises(RegistryError, match=rf"Cannot register {cls.__name__}: .*{message}"):
        register_config(cls)
    assert cls.model_type not in registry.model_types()


def test_every_broken_piece_is_named_at_once():
    @dataclass
    class Bare(PretrainedConfig):
        model_type: ClassVar[str] = "bare"
        vocab_size: int = 10

    with pytest.raises(RegistryError) as caught:
        register_config(Bare)
    for missing in (
        "num_hidden_layers",
        "hidden_size",
        "intermediate_size",
        "depth_fields",
        "tokenizer_recipe",
    ):
        assert missing in str(caught.value)
    assert "vocab_size" not in str(caught.value)


def test_a_model_that_breaks_the_contract_fails_at_registration(toy_registered):
    class NoTable(PreTrainedModel):
        config_class = ToyConfig
        base_model_prefix = "toy"

    class NoPrefix(PreTrainedModel):
        config_class = ToyConfig
        checkpoint_table = CheckpointTable()

    class NoConfig(PreTrainedModel):
        base_model_prefix = "toy"
        checkpoint_table = CheckpointTable()

    class UnregisteredConfig(ToyModel):
        config_class = NoPositions

    with pytest.raises(RegistryError, match=r"Cannot register NoTable: no checkpoint_table"):
        register_model("qa")(NoTable)
    with pytest.raises(RegistryError, match=r"Cannot register NoPrefix: no base_model_prefix"):
        register_model("qa")(NoPrefix)
    with pytest.raises(RegistryError, match=r"Cannot register NoConfig: no config_class"):
        register_model("qa")(NoConfig)
    with pytest.raises(RegistryError, match=r"config_class NoPositions is not registered"):
        register_model("qa")(UnregisteredConfig)
    assert "qa" not in model_matrix()["toy"]


def test_not_a_dataclass_is_refused():
    with pytest.raises(RegistryError, match=r"Cannot register NotADataclass: it is not a dataclass"):
        register_config(NotADataclass)
