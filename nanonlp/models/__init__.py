"""Model families. Each file holds one family and its Config dataclass; `model.type` picks one."""

from nanonlp.models.bag_of_ngrams import BagOfNgrams, BagOfNgramsConfig
from nanonlp.models.bert import BertClassifier, BertClassifierConfig
from nanonlp.models.bilstm import BiLSTMClassifier, BiLSTMConfig
from nanonlp.models.char_rnn import CharRNN, CharRNNConfig
from nanonlp.models.gpt import GPT, GPTClassifier, GPTClassifierConfig, GPTConfig
from nanonlp.models.seq2seq import Seq2Seq, Seq2SeqConfig
from nanonlp.models.text_cnn import TextCNN, TextCNNConfig
from nanonlp.models.transformer_classifier import TransformerClassifier, TransformerClassifierConfig
from nanonlp.models.transformer_nmt import Transformer, TransformerConfig

# model.type, per task: the same name (transformer) may name different families in different tasks.
TASK_MODELS = {
    "lm": {"gpt": GPTConfig, "char_rnn": CharRNNConfig},
    "classify": {
        "bag_of_ngrams": BagOfNgramsConfig,
        "text_cnn": TextCNNConfig,
        "bilstm": BiLSTMConfig,
        "transformer": TransformerClassifierConfig,
        "bert": BertClassifierConfig,
        "gpt_classifier": GPTClassifierConfig,
    },
    "translate": {"seq2seq": Seq2SeqConfig, "transformer": TransformerConfig},
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
    Seq2SeqConfig: Seq2Seq,
    TransformerConfig: Transformer,
}


def build_model(config):
    return MODELS[type(config)](config)
