"""Layer 1: byte-level BPE tokenizer — patterns, trainer, encoders, decoders, file formats —
and BERT's WordPiece (`WordPieceTokenizer`, wordpiece.py).

`Tokenizer.save` / `Tokenizer.load` are our JSON format (`load` also reads a Hugging Face
`tokenizer.json`); `save_hf` / `load_hf` write and read Hugging Face's explicitly.

No torch here: a learner can read and run this layer with plain Python.
"""

from lmstack.tokenizer.decoder import IncrementalDecoder
from lmstack.tokenizer.patterns import GPT2_PATTERN, GPT4_PATTERN, PATTERNS, split
from lmstack.tokenizer.special import DEFAULT_SPECIAL_TOKENS, ENDOFTEXT, IM_END, IM_START
from lmstack.tokenizer.tokenizer import Tokenizer, load_hf, save_hf
from lmstack.tokenizer.trainer import train_bpe
from lmstack.tokenizer.wordpiece import WordPieceConfig, WordPieceTokenizer

__all__ = [
    "DEFAULT_SPECIAL_TOKENS", "ENDOFTEXT", "GPT2_PATTERN", "GPT4_PATTERN", "IM_END", "IM_START",
    "IncrementalDecoder", "PATTERNS", "Tokenizer", "load_hf", "save_hf", "split", "train_bpe",
    "WordPieceConfig", "WordPieceTokenizer",
]
