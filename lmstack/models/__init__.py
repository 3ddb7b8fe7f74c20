"""Layer 3: the models — decoder-only transformer, LSTM/GRU and n-gram LMs, the KV cache.

Every model follows one protocol (protocol.py): token ids (batch, time) -> next-token logits
(batch, time, vocab), and `model(idx, cache=model.new_cache(batch, max_len))` for incremental
decoding. Models know nothing of training or serving; see docs/models.md.
"""

from lmstack.models.config import ModelConfig
from lmstack.models.counting import flops_per_token, num_params
from lmstack.models.gpt import GPT, GPTConfig
from lmstack.models.kv_cache import KVCache
from lmstack.models.ngram import NGramConfig, NGramLM, NGramState
from lmstack.models.protocol import Cache, LanguageModel
from lmstack.models.registry import MODELS, build_model, config_from_dict
from lmstack.models.rnn import RNNLM, RNNConfig, RNNState

__all__ = [
    "GPT", "GPTConfig", "KVCache", "MODELS", "Cache", "LanguageModel", "ModelConfig", "NGramConfig",
    "NGramLM", "NGramState", "RNNConfig", "RNNLM", "RNNState", "build_model", "config_from_dict",
    "flops_per_token", "num_params",
]
