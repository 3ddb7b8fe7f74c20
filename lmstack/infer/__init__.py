"""Inference: the generation engine, its settings, logits processors, search and scoring.

    from lmstack.infer import Engine
    engine = Engine.load("runs/quickstart")
    engine.generate("def main(", temperature=0.7, top_p=0.9).text
"""

from lmstack.infer.config import GenerationConfig
from lmstack.infer.engine import Engine, sample_text
from lmstack.infer.step import Completion
from lmstack.infer.scoring import Score

__all__ = ["Completion", "Engine", "GenerationConfig", "Score", "sample_text"]
