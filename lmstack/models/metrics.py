"""Metrics that need a definition: bits per byte and model FLOPs utilization.

Here, below train (MFU, bpb in its validation) and eval (bpb of a text), so both share one
definition without importing each other.

Bits per byte (bpb) divides the total cross-entropy, converted to bits, by the UTF-8 bytes of
the text predicted. Unlike per-token loss it does not depend on the tokenizer, so models with
different vocabularies can be compared (Gao et al. 2020, The Pile).

    >>> round(bits_per_byte(total_nats=math.log(2) * 100, total_bytes=50), 6)
    2.0

MFU (Chowdhery et al. 2022, PaLM appendix B) is achieved model FLOPs per second over the
device's peak. A CPU has no datasheet peak that it reaches, so the peak here is measured: the
best rate of a large fp32 matmul on this device, timed once per process.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache

import torch


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    """Cross-entropy summed over a text (nats) -> bits per UTF-8 byte of that text."""
    return total_nats / math.log(2) / max(total_bytes, 1)


@lru_cache(maxsize=4)
def measure_peak_flops(device: torch.device, n: int = 1024, repeats: int = 5) -> float:
    """Best observed fp32 matmul FLOP/s on `device` (used as the MFU denominator)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(repeats + 1):  # the first run warms up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best
