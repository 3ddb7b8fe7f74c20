"""Inference: the generation engine, its settings, logits processors, search and scoring.

    from lmstack.infer import Engine
    engine = Engine.load("runs/quickstart")
    engine.generate("def main(", temperature=0.7, top_p=0.9).text
"""

from __future__ import annotations

from lmstack import lazy_exports

# Module -> the public names it defines, each imported on first use.
__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "config": ["GenerationConfig"],
    "engine": ["Engine", "sample_text"],
    "step": ["Completion"],
    "scoring": ["Score"],
})
