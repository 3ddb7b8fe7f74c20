"""Layer 3: the models — decoder-only transformer, LSTM/GRU and n-gram LMs, the KV cache, and
the bidirectional encoder (BERT).

Every language model follows one protocol (protocol.py): token ids (batch, time) -> next-token
logits (batch, time, vocab), and `model(idx, cache=model.new_cache(batch, max_len))` for
incremental decoding; the encoder maps ids (and a padding mask) to hidden states and its head's
output (encoder.py). Models know nothing of training or serving; see docs/models.md.
"""

from lmstack.models.config import ModelConfig
from lmstack.models.counting import flops_per_token, num_params
from lmstack.models.encoder import Encoder, EncoderConfig, EncoderOutput
from lmstack.models.gpt import GPT, GPTConfig
from lmstack.models.kv_cache import KVCache
from lmstack.models.ngram import NGramConfig, NGramLM, NGramState
from lmstack.models.protocol import Cache, LanguageModel
from lmstack.models.registry import ENCODERS, MODELS, build_model, config_from_dict
from lmstack.models.rnn import RNNLM, RNNConfig, RNNState

__all__ = [
    "ENCODERS",
    "GPT",
    "MODELS",
    "RNNLM",
    "Cache",
    "Encoder",
    "EncoderConfig",
    "EncoderOutput",
    "GPTConfig",
    "KVCache",
    "LanguageModel",
    "ModelConfig",
    "NGramConfig",
    "NGramLM",
    "NGramState",
    "RNNConfig",
    "RNNState",
    "build_model",
    "config_from_dict",
    "flops_per_token",
    "num_params",
]
