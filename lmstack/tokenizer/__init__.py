"""Layer 1: byte-level BPE tokenizer — patterns, trainer, encoders, decoders, file formats.

No torch here: a learner can read and run this layer with plain Python.
"""

from lmstack.tokenizer.decoder import IncrementalDecoder
from lmstack.tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN, PATTERNS, split
from lmstack.tokenizer.special import DEFAULT_SPECIAL_TOKENS, ENDOFTEXT, IM_END, IM_START
from lmstack.tokenizer.tokenizer import Tokenizer
from lmstack.tokenizer.trainer import train_bpe

__all__ = [
    "DEFAULT_SPECIAL_TOKENS", "ENDOFTEXT", "GPT2_PATTERN", "GPT4_PATTERN", "IM_END", "IM_START",
    "IncrementalDecoder", "PATTERNS", "Tokenizer", "split", "train_bpe",
]
