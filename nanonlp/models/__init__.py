"""Model families. Each file holds one family and its Config dataclass; a task maps `model.type` to them."""

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
