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
best rate of a large matmul in the training dtype, at the current torch thread count, over at
least half a second of repeats (one slow moment cannot set it), once per process. See
docs/training.md ("MFU").
"""

from __future__ import annotations

import math
import time
from functools import lru_cache

import torch


def bits_per_byte(total_nats: float, total_bytes: int) -> float:
    """Cross-entropy summed over a text (nats) -> bits per UTF-8 byte of that text."""
    return total_nats / math.log(2) / max(total_bytes, 1)


def measure_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024,
                       min_repeats: int = 10, min_seconds: float = 0.5) -> float:
    """Best observed `dtype` matmul FLOP/s on `device` at torch's current thread count: the MFU
    denominator. Measured once per (device, dtype, threads) in a process, then cached."""
    return _peak_flops(torch.device(device), dtype, torch.get_num_threads(), n, min_repeats,
                       min_seconds)


@lru_cache(maxsize=8)
def _peak_flops(device: torch.device, dtype: torch.dtype, threads: int, n: int, min_repeats: int,
                min_seconds: float) -> float:
    g = torch.Generator(device).manual_seed(0)  # its own stream: the caller's seeds are untouched
    a = torch.randn(n, n, device=device, generator=g).to(dtype)  # (n, n)
    b = torch.randn(n, n, device=device, generator=g).to(dtype)  # (n, n)
    best, spent, repeats = float("inf"), 0.0, 0
    a @ b  # warm-up: kernels chosen, pages touched
    # The best of many, not their mean: a timing can only be slowed (another process, an
    # interrupt), never sped up, so the fastest is the closest to what the device can do.
    while repeats < min_repeats or spent < min_seconds:
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        dt = time.perf_counter() - t0
        best, spent, repeats = min(best, dt), spent + dt, repeats + 1
    return 2 * n**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
