"""Layer 4: evaluation — perplexity and bits per byte on held-out text (sliding window).

Written against the model protocol only, so it scores every model (GPT, LSTM/GRU, n-gram);
loads models from model directories (lmstack.models.directory). See perplexity.py.
"""

from lmstack.eval.perplexity import evaluate_model_dir, evaluate_text, sliding_windows

__all__ = ["evaluate_model_dir", "evaluate_text", "sliding_windows"]
