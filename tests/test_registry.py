# pytest tests/test_registry.py
"""The registry: every arch x head builds and trains a step; names are checked loudly; users can add theirs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from factory import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
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
from tests.helpers import make_batch, tiny_config


def test_matrix_lists_every_arch_and_head():
    matrix = model_matrix()
    assert matrix["bert"] == {
        "base": "BertModel",
        "causal_lm": "BertLMHeadModel",
        "qa": "BertForQuestionAnswering",
        "seqcls": "BertForSequenceClassification",
    }
    for heads in matrix.values():
        assert set(heads) >= {"base", "seqcls", "qa", "causal_lm"}


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


# A user's own architecture, registered from outside the package.
@dataclass
class ToyConfig(PretrainedConfig):
    model_type: ClassVar[str] = "toy"
    aliases: ClassVar[dict] = {"hidden_size": ("width",)}
    vocab_size: int = 50
    width: int = 8


class ToyModel(PreTrainedModel):
    config_class = ToyConfig
    base_model_prefix = "toy"

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
