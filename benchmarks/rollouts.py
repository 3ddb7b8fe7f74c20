"""What sharing a prompt's prefill saves when RL samples k rollouts of it (GRPO's groups).

    .venv/bin/python benchmarks/rollouts.py        # SmolLM2-135M shape, 8 prompts of 64 tokens x k=8, 16 new
    .venv/bin/python benchmarks/rollouts.py --n-layer 2 --n-embd 64 --n-head 4 --n-kv-head 2 --repeats 1   # quick

A rollout batch of P prompts of L tokens, k samples each, max_new_tokens M, sampled at
temperature 1 through lmstack.posttrain.rollout.sample_rollouts: with the shared prefill (each
prompt computed once, its KV-cache row copied to its k rows: sampling.prefill's share=True)
and without (k separate, identical prefills per prompt). Timed: the prefill alone
(sampling.prefill over the P·k rows) and the whole rollout batch (prefill + M decode steps).
Also checks that both give the same tokens. Random weights (speed does not depend on them),
fp32, threads pinned, eos ignored (every row decodes M tokens), medians of --repeats of wall
and of process CPU time (steadier on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from lmstack.infer.sampling import prefill
from lmstack.models import GPT, GPTConfig
from lmstack.posttrain.rollout import sample_rollouts


def build(args) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=args.vocab_size, block_size=args.prompt + args.max_new_tokens + 8,
                    n_layer=args.n_layer, n_head=args.n_head, n_kv_head=args.n_kv_head,
                    n_embd=args.n_embd, position="rope", norm="rmsnorm", mlp="swiglu", bias=False)
    return GPT(cfg).eval()


def timed(fn) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of fn(): on a shared machine the CPU time
    is the steadier of the two (other processes' load does not count in it)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    model = build(args)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, args.vocab_size, (args.prompt,), generator=g).tolist()
               for _ in range(args.prompts)]
    rows = [p for p in prompts for _ in range(args.k)]  # the k rows of each prompt, adjacent
    settings = {"temperature": 1.0, "max_new_tokens": args.max_new_tokens, "ignore_eos": True,
                "seed": 0}
    sample = {share: (lambda share=share: sample_rollouts(model, None, prompts, args.k, settings,
                                                          share_prefill=share))
              for share in (True, False)}
    fill = {share: (lambda share=share: prefill(model, rows, args.max_new_tokens, share=share))
            for share in (True, False)}
    fill[True]()  # warm-up: allocator, kernels
    times: dict[str, list[tuple[float, float]]] = {}
    for _ in range(args.repeats):  # interleaved, so a burst of other load hits both sides
        for share, name in ((True, "shared"), (False, "separate")):
            times.setdefault(f"prefill_{name}", []).append(timed(fill[share]))
            times.setdefault(f"rollout_{name}", []).append(timed(sample[share]))
    r: dict = {}
    for key, pairs in times.items():
        r[f"{key}_s"] = statistics.median(w for w, _ in pairs)
        r[f"{key}_cpu_s"] = statistics.median(c for _, c in pairs)
    for what in ("prefill", "rollout"):
        for unit in ("s", "cpu_s"):
            r[f"{what}_ratio_{unit}"] = r[f"{what}_separate_{unit}"] / r[f"{what}_shared_{unit}"]
    r["identical_tokens"] = sample[True]().tokens == sample[False]().tokens
    return r


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--prompt", type=int, default=64, help="tokens per prompt")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--n-layer", type=int, default=30)  # SmolLM2-135M's shape
    p.add_argument("--n-head", type=int, default=9)
    p.add_argument("--n-kv-head", type=int, default=3)
    p.add_argument("--n-embd", type=int, default=576)
    p.add_argument("--vocab-size", type=int, default=49152)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    r = run(args)
    if args.json:
        print(json.dumps(r))
        return r
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads")
    print(f"model: {args.n_layer} layers, {args.n_head}/{args.n_kv_head} heads, width {args.n_embd}, "
          f"vocab {args.vocab_size}")
    print(f"rollouts: {args.prompts} prompts of {args.prompt} tokens x k={args.k}, "
          f"{args.max_new_tokens} new tokens each; median of {args.repeats}")
    for what, name in (("prefill", "prefill "), ("rollout", "rollouts")):
        for unit, words in (("s", "wall"), ("cpu_s", "CPU ")):
            print(f"  {name} {words}  shared {r[f'{what}_shared_{unit}']:7.3f} s   separate "
                  f"{r[f'{what}_separate_{unit}']:7.3f} s   ({r[f'{what}_ratio_{unit}']:.2f}x "
                  "less shared)")
    print(f"  same tokens shared and separate: {r['identical_tokens']}")
    return r


if __name__ == "__main__":
    main()
