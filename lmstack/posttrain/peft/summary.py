"""What a PEFT method trains and what its weights weigh, for any method (LoRA, QLoRA, prompt
tuning, adapters) and for full fine-tuning alike.

- `trainable_summary(model)`: trainable vs total parameters. A quantized layer's weight is a
  buffer, not a parameter; it is counted as the in·out weights it stands for, so a QLoRA model
  reports the same total as its fp base.
- `weight_bytes(model)`: bytes the weights take in memory, frozen and trainable apart (shared
  tensors once). The benchmark's "QLoRA at under half LoRA's weight memory" compares these
  (activations, gradients and optimizer state are the benchmark's peak-memory column).

    >>> from torch import nn
    >>> m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    >>> _ = m[0].requires_grad_(False)
    >>> s = trainable_summary(m); (s.trainable, s.total)
    (10, 30)
    >>> weight_bytes(m)
    {'frozen': 80, 'trainable': 40, 'total': 120}
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lmstack.infer.quantize import QuantLinear


@dataclass
class TrainableSummary:
    """Trainable and total parameter counts of a model (quantized weights counted as weights)."""

    trainable: int
    total: int

    @property
    def fraction(self) -> float:
        """trainable / total."""
        return self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        return f"{self.trainable:,} trainable of {self.total:,} parameters ({100 * self.fraction:.3f}%)"


def trainable_summary(model: nn.Module) -> TrainableSummary:
    """Trainable and total parameters; shared weights once, a quantized layer as in·out weights."""
    params = list(model.parameters())  # deduplicated: a tied head counts once
    quantized = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, QuantLinear))
    return TrainableSummary(sum(p.numel() for p in params if p.requires_grad),
                            sum(p.numel() for p in params) + quantized)


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the model's parameters and saved buffers (a quantized layer's weight; not
    derived tables such as RoPE's inverse frequencies) in memory, {"frozen", "trainable",
    "total"}; a tensor shared by two modules counted once."""
    buffers = [b for m in model.modules() for name, b in m.named_buffers(recurse=False)
               if name not in m._non_persistent_buffers_set]
    seen: set[int] = set()
    frozen = trainable = 0
    for t in [*model.parameters(), *buffers]:
        if t.data_ptr() in seen and t.numel():
            continue
        seen.add(t.data_ptr())
        size = t.numel() * t.element_size()
        if t.requires_grad:
            trainable += size
        else:
            frozen += size
    return {"frozen": frozen, "trainable": trainable, "total": frozen + trainable}
