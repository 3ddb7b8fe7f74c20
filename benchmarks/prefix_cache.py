"""Time to first token with and without the prefix cache, for a prompt that shares a long prefix
(a system prompt, or the earlier turns of a chat) with an earlier request.

    .venv/bin/python benchmarks/prefix_cache.py                    # GPT-2-small shape, 1024-token prefix
    .venv/bin/python benchmarks/prefix_cache.py --prefix 256 --n-layer 2 --n-embd 64 --repeats 2   # quick

For each repeat: a cold request (empty cache) of prefix + question A, then a request of
prefix + question B (the prefix comes from the cache). TTFT is the wall time of
`Engine.generate(..., max_new_tokens=1)`: tokenized prompt in, first token out. Also checks that
32 greedy tokens are identical with and without the cache. Random weights (speed does not
depend on them), fp32, threads pinned, medians. Goal (issue 7): cached TTFT 10x lower.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from lmstack.infer import Engine
from lmstack.infer.prefix_cache import PrefixCache
from lmstack.models import GPT, GPTConfig


def build(args) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=args.vocab_size, block_size=args.prefix + 256, n_layer=args.n_layer,
                    n_head=args.n_head, n_embd=args.n_embd, position="rope")
    return GPT(cfg).eval()


def ttft(engine: Engine, prompt: list[int]) -> float:
    start = time.perf_counter()
    engine.generate(prompt, temperature=0, max_new_tokens=1)
    return time.perf_counter() - start


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    model = build(args)
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(0, args.vocab_size, (args.prefix,), generator=g).tolist()
    questions = [torch.randint(0, args.vocab_size, (args.question,), generator=g).tolist() for _ in range(2)]
    store = PrefixCache(max_bytes=2 << 30)
    cached, plain = Engine(model, None, prefix_cache=store), Engine(model, None)
    ttft(plain, prefix + questions[0])  # warm-up: allocator, kernels
    cold, warm = [], []
    for _ in range(args.repeats):
        store.clear()
        cold.append(ttft(cached, prefix + questions[0]))   # computes and stores the prefix
        warm.append(ttft(cached, prefix + questions[1]))   # reuses it
    same = [cached.generate(prefix + q, temperature=0, max_new_tokens=32, ignore_eos=True).tokens ==
            plain.generate(prefix + q, temperature=0, max_new_tokens=32, ignore_eos=True).tokens
            for q in questions]
    result = {"prefix_tokens": args.prefix, "question_tokens": args.question,
              "cold_ttft_s": statistics.median(cold), "cached_ttft_s": statistics.median(warm),
              "identical_greedy": all(same), "stats": store.stats()}
    result["speedup"] = result["cold_ttft_s"] / result["cached_ttft_s"]
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prefix", type=int, default=1024)
    p.add_argument("--question", type=int, default=24)
    p.add_argument("--n-layer", type=int, default=12)
    p.add_argument("--n-head", type=int, default=12)
    p.add_argument("--n-embd", type=int, default=768)
    p.add_argument("--vocab-size", type=int, default=50257)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    r = run(args)
    if args.json:
        print(json.dumps(r))
        return r
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads")
    print(f"model: {args.n_layer} layers, {args.n_head} heads, width {args.n_embd}, vocab {args.vocab_size}")
    print(f"prompt: {args.prefix}-token shared prefix + {args.question}-token question; median of {args.repeats}")
    print(f"  cold TTFT    {r['cold_ttft_s'] * 1000:8.1f} ms")
    print(f"  cached TTFT  {r['cached_ttft_s'] * 1000:8.1f} ms   ({r['speedup']:.1f}x lower; goal 10x)")
    print(f"  greedy 32 tokens identical with and without the cache: {r['identical_greedy']}")
    return r


if __name__ == "__main__":
    main()
