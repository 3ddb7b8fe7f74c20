"""lmstack: the whole language-model stack in readable, tested PyTorch.

Layers (each imports only those below it): tokenizer, data, models, train/eval, infer,
posttrain/interop, serve/apps, cli. See ARCHITECTURE in the docs.
"""

__version__ = "0.1.0"
