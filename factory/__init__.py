"""factory: transformer models (BERT, RoBERTa, DistilBERT, GPT-2, BART, T5, Llama, Qwen2) in plain PyTorch,
with Hugging Face checkpoints both ways.

Each architecture's config and model classes (`BertConfig`, `GPT2LMHeadModel`, ...) are served from the
registry, and each head's Auto class (`AutoModelForSequenceClassification`, ...) from the head that names
it, so a new architecture or head file is exported without being named here.
"""

from factory import models, registry  # noqa: F401  (importing models registers the architectures)
from factory.auto import AutoConfig, auto_classes
from factory.checkpoints.weights import CheckpointError, CheckpointTable
from factory.config import ConfigError, PretrainedConfig
from factory.heads.head import Head, register_head
from factory.models.modeling import PreTrainedModel
from factory.models.outputs import ModelOutput
from factory.registry import (
    HEADS,
    RegistryError,
    model_class,
    model_matrix,
    register_config,
    register_model,
    registered_models,
)
from factory.tokenizers.tokenizer import AutoTokenizer, tokenizer_class


def _architecture_classes() -> dict[str, type]:
    """The registered classes that ship with factory (a user's own stay out of its namespace)."""
    return {
        name: cls
        for name, cls in registry.registered_classes().items()
        if cls.__module__.startswith("factory.models.")
    }


def _tokenizer_names() -> list[str]:
    families = {registry.config_class(t).tokenizer_recipe.tokenizer_class for t in registry.model_types()}
    return sorted({*families, *(f"{f}Fast" for f in families)})


def __getattr__(name: str) -> type:
    # transformers' tokenizer class names (BertTokenizer, GPT2TokenizerFast, ...) of every architecture.
    # The Auto classes the heads name (AutoModelForSequenceClassification, ...).
    cls = _architecture_classes().get(name) or auto_classes().get(name) or tokenizer_class(name)
    if cls is None:
        raise AttributeError(f"module 'factory' has no attribute {name!r}")
    return cls


def __dir__() -> list[str]:
    return sorted({*globals(), *_architecture_classes(), *auto_classes(), *_tokenizer_names()})


__all__ = [
    "HEADS",
    "AutoConfig",
    "AutoTokenizer",
    "CheckpointError",
    "CheckpointTable",
    "ConfigError",
    "Head",
    "ModelOutput",
    "PreTrainedModel",
    "PretrainedConfig",
    "RegistryError",
    "model_class",
    "model_matrix",
    "register_config",
    "register_head",
    "register_model",
    "registered_models",
    *sorted(auto_classes()),
    *sorted(_architecture_classes()),
]
