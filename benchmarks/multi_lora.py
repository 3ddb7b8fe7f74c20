"""Multi-LoRA serving benchmark: decode tokens/s of one scheduler batch whose rows run different
LoRA adapters (lmstack/posttrain/peft/multi_lora.py), against the base alone and one merged adapter.

    flock /tmp/lmstack-cpu.lock .venv/bin/python benchmarks/multi_lora.py [--model smollm2]
        [--rows 4] [--tokens 64] [--rank 8] [--targets q_proj,v_proj] [--repeats 3] [--threads 1]

The model (default SmolLM2-135M-Instruct, its int4 GGUF dequantized to fp32: LoRA adapts float
layers) gets two adapters of rank --rank on --targets with random nonzero B, saved and loaded
as `lmstack serve --lora` does. Cases, each --rows rows in one batch of the serving scheduler:

- base: the model alone (fused q/k/v, as `lmstack serve` runs it without --lora);
- merged: one adapter merged into the weights (what generate/chat/eval --lora run);
- multi, rows base / one adapter / two adapters mixed: the model with both adapters attached,
  the rows' adapters as given (0 is the base).

Every request sets ignore_eos and max_new_tokens = --tokens; the first scheduler step (admission,
prefill of --prompt-len tokens, the first forward) is not timed; decode tokens/s = the tokens the
remaining steps generate / their wall time. Cases take turns within each repeat; medians.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch

from lmstack.infer import Engine
from lmstack.infer.fuse import prepare_decode
from lmstack.infer.quantize import dequantize_model
from lmstack.models.directory import load_model, load_tokenizer
from lmstack.models.installed import resolve_model
from lmstack.posttrain.peft import LoraConfig, apply_lora, load_adapter, lora_layers, save_adapter, unload_lora
from lmstack.posttrain.peft.multi_lora import attach_adapters
from lmstack.serve.scheduler import Scheduler


def make_adapters(base: torch.nn.Module, rank: int, targets: tuple[str, ...], root: str) -> dict[str, str]:
    """Two adapters with random nonzero B, saved as PEFT directories under `root`."""
    dirs = {}
    for i, name in enumerate(("one", "two")):
        model = apply_lora(copy.deepcopy(base), LoraConfig(r=rank, alpha=2 * rank, target_modules=targets))
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for layer in lora_layers(model).values():
                layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.02)
        dirs[name] = str(save_adapter(model, f"{root}/{name}"))
    return dirs


def decode_rate(engine: Engine, prompts: list[list[int]], variants: list[int], tokens: int) -> float:
    """Decode tokens/s of one batch of rows (the first step, with the prefill, untimed)."""
    scheduler = Scheduler(engine, max_batch=len(prompts))
    cfg = engine.config(temperature=0, max_new_tokens=tokens, ignore_eos=True)
    with torch.inference_mode():
        requests = [scheduler.submit(p, cfg, lambda e: None, variant=v) for p, v in zip(prompts, variants)]
        scheduler.step()
        before = sum(r.generated for r in requests)
        start = time.perf_counter()
        while not all(r.done.is_set() for r in requests):
            scheduler.step()
        elapsed = time.perf_counter() - start
    return (sum(r.generated for r in requests) - before) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--targets", default="q_proj,v_proj")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)  # `lmstack serve`'s decode default
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = resolve_model(args.model)
    base = dequantize_model(load_model(path))
    tok = load_tokenizer(path)
    with tempfile.TemporaryDirectory() as root:
        dirs = make_adapters(base, args.rank, tuple(args.targets.split(",")), root)
        engines = {
            "base": Engine(prepare_decode(copy.deepcopy(base)), tok),
            "merged": Engine(prepare_decode(unload_lora(load_adapter(copy.deepcopy(base), dirs["one"])))),
            "multi": Engine(prepare_decode(attach_adapters(copy.deepcopy(base), dirs))),
        }
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, base.config.vocab_size, (args.prompt_len,), generator=g).tolist()
               for _ in range(args.rows)]
    cases = {  # label: (engine, each row's adapter)
        "base alone": ("base", [0] * args.rows),
        "one adapter merged": ("merged", [0] * args.rows),
        "multi: rows all base": ("multi", [0] * args.rows),
        "multi: rows all adapter one": ("multi", [1] * args.rows),
        "multi: rows mixed, two adapters": ("multi", [1 + i % 2 for i in range(args.rows)]),
        "multi: rows mixed, base + two": ("multi", [i % 3 for i in range(args.rows)]),
    }
    rates: dict[str, list[float]] = {label: [] for label in cases}
    decode_rate(engines["multi"], prompts, cases["multi: rows mixed, two adapters"][1], 4)  # warm-up
    for _ in range(args.repeats):
        for label, (engine, variants) in cases.items():
            rates[label].append(decode_rate(engines[engine], prompts, variants, args.tokens))
    print(f"{args.model}: {args.rows} rows, {args.tokens} tokens, adapters r={args.rank} on "
          f"{args.targets}, {args.threads} threads, median of {args.repeats}")
    ref = statistics.median(rates["base alone"])
    for label, r in rates.items():
        m = statistics.median(r)
        print(f"  {label:34s} {m:7.1f} tokens/s  {m / ref:5.2f}x base")


if __name__ == "__main__":
    main()
