"""Inference: logits processors, sampling and the generation engine."""
