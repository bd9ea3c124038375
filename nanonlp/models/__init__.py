"""Model families. Each file holds one family and its Config dataclass; `model.type` picks one."""

from nanonlp.models.char_rnn import CharRNN, CharRNNConfig
from nanonlp.models.gpt import GPT, GPTConfig

MODEL_CONFIGS = {"gpt": GPTConfig, "char_rnn": CharRNNConfig}
MODELS = {GPTConfig: GPT, CharRNNConfig: CharRNN}


def build_model(config):
    return MODELS[type(config)](config)
