"""factory: BERT, GPT-2 and BART in plain PyTorch, with Hugging Face checkpoints both ways."""

from factory.auto import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
)
from factory.checkpoints.weights import CheckpointError, CheckpointTable
from factory.config import ConfigError, PretrainedConfig
from factory.models.bart import (
    BartConfig,
    BartForCausalLM,
    BartForQuestionAnswering,
    BartForSequenceClassification,
    BartModel,
)
from factory.models.bert import (
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertLMHeadModel,
    BertModel,
)
from factory.models.gpt2 import (
    GPT2Config,
    GPT2ForQuestionAnswering,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    GPT2Model,
)
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
from factory.tokenizers.tokenizer import AutoTokenizer

__all__ = [
    "HEADS",
    "GPT2Config",
    "GPT2ForQuestionAnswering",
    "GPT2ForSequenceClassification",
    "GPT2LMHeadModel",
    "GPT2Model",
    "AutoConfig",
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForQuestionAnswering",
    "AutoModelForSequenceClassification",
    "AutoTokenizer",
    "BartConfig",
    "BartForCausalLM",
    "BartForQuestionAnswering",
    "BartForSequenceClassification",
    "BartModel",
    "BertConfig",
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "BertLMHeadModel",
    "BertModel",
    "CheckpointError",
    "CheckpointTable",
    "ConfigError",
    "ModelOutput",
    "PreTrainedModel",
    "PretrainedConfig",
    "RegistryError",
    "model_class",
    "model_matrix",
    "register_config",
    "register_model",
    "registered_models",
]
