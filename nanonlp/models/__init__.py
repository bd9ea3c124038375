"""Model families. Each file holds one family and its Config dataclass; a task maps `model.type` to them.

`build_model(config)` rebuilds the module of a model config: inference (nanonlp.predict) builds a run's
model through it without importing any task. The map from Config dataclass to module is filled by
`register_family`, which the task registry calls for each family a task declares (a run's task is
imported when its config is read, so its families are known before its model is built).
"""

from nanonlp.errors import ConfigError

from nanonlp.models.bag_of_ngrams import BagOfNgrams, BagOfNgramsConfig
from nanonlp.models.bert import BertClassifier, BertClassifierConfig
from nanonlp.models.bilstm import BiLSTMClassifier, BiLSTMConfig
from nanonlp.models.char_rnn import CharRNN, CharRNNConfig
from nanonlp.models.gpt import GPT, GPTClassifier, GPTClassifierConfig, GPTConfig
from nanonlp.models.seq2seq import Seq2Seq, Seq2SeqConfig
from nanonlp.models.text_cnn import TextCNN, TextCNNConfig
from nanonlp.models.transformer_classifier import TransformerClassifier, TransformerClassifierConfig
from nanonlp.models.transformer_nmt import Transformer, TransformerConfig

__all__ = ["BagOfNgrams", "BagOfNgramsConfig", "BertClassifier", "BertClassifierConfig", "BiLSTMClassifier", "BiLSTMConfig",
           "CharRNN", "CharRNNConfig", "GPT", "GPTClassifier", "GPTClassifierConfig", "GPTConfig", "Seq2Seq", "Seq2SeqConfig",
           "TextCNN", "TextCNNConfig", "TransformerClassifier", "TransformerClassifierConfig", "Transformer", "TransformerConfig"]


_FAMILIES: dict[type, type] = {}  # Config dataclass -> nn.Module class


def register_family(config_class: type, model_class: type) -> None:
    """`config_class` builds `model_class`; one Config dataclass builds one module, whichever task names it."""
    known = _FAMILIES.get(config_class)
    if known is not None and known is not model_class:
        raise ValueError(f"{config_class.__name__} already builds {known.__name__}; give {model_class.__name__} a Config of its own.")
    _FAMILIES[config_class] = model_class


def build_model(model_config):
    """The (untrained) module a model config describes."""
    model_class = _FAMILIES.get(type(model_config))
    if model_class is None:
        raise ConfigError(f"{type(model_config).__name__} is no registered model family; its task registers it (nanonlp.tasks).")
    return model_class(model_config)
