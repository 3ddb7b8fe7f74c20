"""Where bf16 autocast pays in a fine-tuning step: forward, backward and optimizer step timed
apart, fp32 vs bf16 autocast, full fine-tuning vs LoRA vs QLoRA, on SmolLM2-135M (issue 17).

    flock /tmp/lmstack-cpu.lock .venv/bin/python benchmarks/finetune_step.py [--steps 5] [--rows 4]

One step = `sft_loss` on a packed batch (rows x 128 tokens) under the precision's autocast,
backward, AdamW step. Median ms of each part over --steps steps after one warm-up; the last
line per setting is the whole step. The dense-matmul rates (fp32 and bf16, measured here with
lmstack.models.metrics.measure_peak_flops) bound what autocast can gain: on an Intel host with
AMX a bf16 matmul runs ~7x fp32, on AVX-512-BF16 (Zen 4) ~2x, on AVX2 it is emulated.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time

import torch

from lmstack.infer.quantize import dequantize_model
from lmstack.models.directory import load_model
from lmstack.models.metrics import measure_peak_flops
from lmstack.posttrain.peft import LoraConfig, QuantConfig, apply_peft
from lmstack.posttrain.sft import sft_loss

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def build(method: str):
    """SmolLM2 in fp32 with `method` applied; the parameters to optimize."""
    model = dequantize_model(load_model("smollm2"))
    if method == "full":
        model.requires_grad_(True)
    else:
        quant = QuantConfig(method="nf4") if method == "qlora" else None
        model = apply_peft(model, LoraConfig(r=8, alpha=16, target_modules=ALL), quant)
    model.train()
    return model, [p for p in model.parameters() if p.requires_grad]


def batch(vocab: int, rows: int, length: int = 128) -> tuple[torch.Tensor, ...]:
    """A packed batch of 4 examples a row, every target trained."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (rows, length), generator=g)
    seg = (torch.arange(length) // (length // 4) + 1).expand(rows, length)
    pos = (torch.arange(length) % (length // 4)).expand(rows, length)
    return ids, ids.roll(-1, 1), pos, seg


def time_step(model, params, data, precision: str, steps: int) -> dict[str, float]:
    """Median ms of forward, backward, optimizer step and the whole."""
    opt = torch.optim.AdamW(params, lr=1e-5)
    cast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
            else contextlib.nullcontext())
    parts: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": [], "step": []}
    for i in range(steps + 1):
        t0 = time.perf_counter()
        with cast:
            loss, count = sft_loss(model, data)
            loss = loss / count
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if i:  # the first is warm-up
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                parts[k].append(v * 1e3)
    return {k: statistics.median(v) for k, v in parts.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=["full", "lora", "qlora"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    fp32 = measure_peak_flops(torch.device("cpu"), torch.float32)
    bf16 = measure_peak_flops(torch.device("cpu"), torch.bfloat16)
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads, torch "
          f"{torch.__version__}; dense matmul fp32 {fp32 / 1e9:.0f} GFLOP/s, bf16 {bf16 / 1e9:.0f} "
          f"GFLOP/s ({bf16 / fp32:.1f}x); batch {args.rows} x 128 tokens")
    print("| method | part | fp32 ms | bf16 autocast ms | bf16 gain |")
    print("|---|---|---|---|---|")
    for method in args.methods:
        model, params = build(method)
        data = batch(model.config.vocab_size, args.rows)
        a = time_step(model, params, data, "fp32", args.steps)
        b = time_step(model, params, data, "bf16", args.steps)
        for part in a:
            print(f"| {method} | {part} | {a[part]:.0f} | {b[part]:.0f} | {a[part] / b[part]:.2f}x |")


if __name__ == "__main__":
    main()
