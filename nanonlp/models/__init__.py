"""Model families. Each file holds one family and its Config dataclass; `model.type` picks one."""

from nanonlp.models.bag_of_ngrams import BagOfNgrams, BagOfNgramsConfig
from nanonlp.models.bert import BertClassifier, BertClassifierConfig
from nanonlp.models.bilstm import BiLSTMClassifier, BiLSTMConfig
from nanonlp.models.char_rnn import CharRNN, CharRNNConfig
from nanonlp.models.gpt import GPT, GPTClassifier, GPTClassifierConfig, GPTConfig
from nanonlp.models.text_cnn import TextCNN, TextCNNConfig
from nanonlp.models.transformer_classifier import TransformerClassifier, TransformerClassifierConfig

MODEL_CONFIGS = {
    # language models
    "gpt": GPTConfig,
    "char_rnn": CharRNNConfig,
    # text classifiers
    "bag_of_ngrams": BagOfNgramsConfig,
    "text_cnn": TextCNNConfig,
    "bilstm": BiLSTMConfig,
    "transformer": TransformerClassifierConfig,
    "bert": BertClassifierConfig,
    "gpt_classifier": GPTClassifierConfig,
}
MODELS = {
    GPTConfig: GPT,
    CharRNNConfig: CharRNN,
    BagOfNgramsConfig: BagOfNgrams,
    TextCNNConfig: TextCNN,
    BiLSTMConfig: BiLSTMClassifier,
    TransformerClassifierConfig: TransformerClassifier,
    BertClassifierConfig: BertClassifier,
    GPTClassifierConfig: GPTClassifier,
}


def build_model(config):
    return MODELS[type(config)](config)
