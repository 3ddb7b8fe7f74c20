"""Prompt programs (issue 16): tokens computed and wall time of each example in
examples/programs/, run on one growing KV cache (lmstack/infer/program/local.py) vs the naive
way, as a client of a plain completion API must (each hole re-sends the whole text so far:
remote.py's `CompletionBackend.local`, each hole a full `Engine.generate`, each select option a
full `Engine.score`); and `select` over k options in one batched pass vs k full-prompt scoring
passes vs k generations (each option forced by a regex, decoded token by token).

    flock /tmp/lmstack-cpu.lock .venv/bin/python benchmarks/programs.py            # SmolLM2
    .venv/bin/python benchmarks/programs.py --model runs/quickstart --repeat 1

Greedy throughout; each wall time is the best of --repeat runs. "tokens" counts every token
position the model computed (prefill + decode + scored options). Holes can differ between the
two ways where the text is tokenized differently at a hole's boundary (and by token healing,
on in ours): the "same" column says whether every hole came out equal.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import re
import time
from pathlib import Path

import torch

from lmstack.infer import Engine
from lmstack.infer.program.remote import CompletionBackend
from lmstack.program import LocalBackend, new_state, run, select

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "programs"
NAMES = ["es_query", "chain_of_thought", "classify", "calculator"]


def example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(fn, repeat: int):
    """(best wall seconds, the last result)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_examples(engine: Engine, repeat: int) -> None:
    print("| program | holes | ours: tokens | naive: tokens | fewer | ours: s | naive: s | "
          "speed-up | same |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in NAMES:
        m = example(name)
        t_ours, ours = timed(lambda m=m: run(m.PROGRAM, LocalBackend(engine), **m.INPUTS), repeat)
        t_naive, naive = timed(lambda m=m: run(m.PROGRAM, CompletionBackend.local(engine),
                                               **m.INPUTS), repeat)
        a, b = ours.stats.computed, naive.stats.computed
        print(f"| {name} | {len(ours.values)} | {a} | {b} | {1 - a / b:.0%} | {t_ours:.2f} | "
              f"{t_naive:.2f} | {t_naive / t_ours:.1f}x | {ours.values == naive.values} |")


def bench_select(engine: Engine, repeat: int) -> None:
    m = example("classify")
    prompt = m.INSTRUCTION + "Review: Stopped working after two days.\nSentiment:"
    pool = [" positive", " negative", " neutral", " mixed", " angry", " delighted",
            " disappointed", " indifferent"]
    print("\n| k | batched: tokens | s | k scorings: tokens | s | k generations: tokens | s |")
    print("|---|---|---|---|---|---|---|")
    for k in (2, 4, 8):
        options = pool[:k]

        def batched(options=options):
            s = new_state(LocalBackend(engine))
            s += prompt
            s.branch._flush()          # the prompt is in the cache already (as in a program)
            before = s.stats.computed
            t = time.perf_counter()
            s += select("x", options)
            return time.perf_counter() - t, s.stats.computed - before

        def scorings(options=options):
            return sum(len(engine.score(prompt, o).tokens) + len(engine.encode(prompt)) - 1
                       for o in options)

        def generations(options=options):
            return sum(engine.generate(prompt, regex=re.escape(o), temperature=0,
                                       max_new_tokens=16).prompt_tokens + len(engine.encode(o))
                       for o in options)

        t_b = min(batched()[0] for _ in range(repeat))
        n_b = batched()[1]
        t_s, n_s = timed(scorings, repeat)
        t_g, n_g = timed(generations, repeat)
        print(f"| {k} | {n_b} | {t_b:.3f} | {n_s} | {t_s:.3f} | {n_g} | {t_g:.3f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from lmstack.models.installed import resolve_model

    engine = Engine.load(str(resolve_model(args.model)))
    print(f"{args.model}, {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"load {os.getloadavg()[0]:.2f}, {datetime.date.today()}\n")
    bench_examples(engine, args.repeat)
    bench_select(engine, args.repeat)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
