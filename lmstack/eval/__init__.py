"""Layer 4: evaluation — perplexity and bits per byte on held-out text (sliding window).

Written against the model protocol only, so it scores every model (GPT, LSTM/GRU, n-gram);
loads models from model directories (lmstack.models.directory). See perplexity.py.
"""

from __future__ import annotations

from lmstack import lazy_exports

# Module -> the public names it defines, each imported on first use.
__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "perplexity": ["evaluate_model_dir", "evaluate_text", "sliding_windows"],
})
