"""Speculative decoding through the server: tokens/s of one client's greedy request against
`lmstack serve` without and with a drafter (default `--prompt-lookup 3`), on a code prompt.

    flock /tmp/lmstack-cpu.lock .venv/bin/python benchmarks/serve_speculative.py
        [--model DIR] [--out runs/spec-bench] [--target-minutes 3] [--max-tokens 200]
        [--repeats 3] [--threads 1] [--spec "--prompt-lookup 3"]

Without --model it trains (or reuses) the target of benchmarks/speculative.py in --out: a GPT of
4 layers x 256 on the standard library's text, its own 4096-token BPE, for --target-minutes.
Trained weights matter here (random ones never repeat the prompt, so prompt lookup would find
nothing to copy).

Two servers run as subprocesses (`lmstack serve --threads T`, one with the --spec flags), both
idle but for the request being measured: each repeat sends the same non-streaming completion
(the code prompt of benchmarks/speculative.py, as many whole lines as leave room for N tokens
in the context; temperature 0, `ignore_eos`, `max_tokens` N) to
one, then the other. tokens/s = completion tokens (from `usage`) / the request's wall time;
medians over --repeats after one warm-up round. It checks both servers return the same text,
and reads the drafts proposed and accepted from the speculating server's /metrics.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent


def sibling(name: str):
    """Another benchmark script of this folder, as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def prepare_target(out: Path, minutes: float, threads: int) -> Path:
    """benchmarks/speculative.py's tokenizer, shards and target model (no draft, no heads)."""
    spec = sibling("speculative")
    lm = [sys.executable, "-m", "lmstack.cli"]
    if not (out / "tokenizer.json").exists():
        spec.sh(*lm, "tokenizer", "train", "--source", "stdlib", "--vocab-size", "4096",
                "--out", str(out / "tokenizer.json"))
    if not (out / "data" / "report.json").exists():
        spec.sh(*lm, "data", "prepare", "--source", "stdlib", "--tokenizer", str(out / "tokenizer.json"),
                "--out", str(out / "data"), "--quiet")
    if not (out / "target" / "model.safetensors").exists():
        spec.sh(*lm, "train", "--config", "quickstart", "--set",
                *spec.model_overrides(out, "target", 4, 256, minutes), f"threads={threads}")
    return out / "target"


@contextlib.contextmanager
def server(model: Path, threads: int, extra: list[str]):
    """`lmstack serve` (serve's default batch and queue) on a free loopback port; yields its URL."""
    with sibling("serve").run_server(model, threads, max_batch=8, extra=extra) as running:
        yield running.url


def fitting_prompt(model: Path, text: str, max_tokens: int) -> str:
    """The longest run of whole lines of `text` that leaves `max_tokens` of the model's context."""
    import json

    from lmstack.models.directory import load_tokenizer

    tok = load_tokenizer(model)
    room = json.loads((model / "config.json").read_text())["block_size"] - max_tokens
    lines = text.splitlines(keepends=True)
    while lines and len(tok.encode("".join(lines))) > room:
        lines.pop()
    if not lines:
        raise SystemExit(f"no line of the prompt fits beside {max_tokens} new tokens in {model}'s context")
    return "".join(lines)


def one_request(url: str, prompt: str, max_tokens: int) -> tuple[float, int, str]:
    """(seconds, completion tokens, text) of one greedy completion."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    start = time.perf_counter()
    r = httpx.post(url + "/v1/completions", json=body, timeout=600)
    seconds = time.perf_counter() - start
    r.raise_for_status()
    reply = r.json()
    return seconds, reply["usage"]["completion_tokens"], reply["choices"][0]["text"]


def drafts(url: str) -> dict[str, float]:
    """Draft tokens proposed and accepted so far, from /metrics."""
    text = httpx.get(url + "/metrics").text
    return {k: float(v) for k, v in re.findall(r"^lmstack_speculative_(\w+)_tokens_total (\S+)$", text, re.M)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model to serve (default: train the spec-bench target)")
    p.add_argument("--out", default="runs/spec-bench")
    p.add_argument("--target-minutes", type=float, default=3.0)
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="the servers' --threads (serve's default)")
    p.add_argument("--spec", default="--prompt-lookup 3", help="the speculating server's flags")
    args = p.parse_args(argv)
    model = Path(args.model) if args.model else prepare_target(Path(args.out), args.target_minutes, 2)
    prompt = fitting_prompt(model, sibling("speculative").CODE_PROMPT, args.max_tokens)
    times: dict[str, list[float]] = {"plain": [], "spec": []}
    texts: dict[str, str] = {}
    with server(model, args.threads, []) as plain, \
            server(model, args.threads, shlex.split(args.spec)) as spec:
        for rep in range(args.repeats + 1):  # the first round is a warm-up
            for name, url in (("plain", plain), ("spec", spec)):
                seconds, tokens, texts[name] = one_request(url, prompt, args.max_tokens)
                assert tokens == args.max_tokens, tokens
                if rep:
                    times[name].append(seconds)
        counts = drafts(spec)
    tps = {name: args.max_tokens / statistics.median(t) for name, t in times.items()}
    result = {"plain_tok_s": tps["plain"], "spec_tok_s": tps["spec"], "speedup": tps["spec"] / tps["plain"],
              "identical": texts["plain"] == texts["spec"], "runs_s": times,
              "acceptance": counts["accepted"] / counts["proposed"] if counts.get("proposed") else 0.0}
    print(f"model {model}, prompt {len(prompt)} chars, {args.max_tokens} greedy tokens, --threads "
          f"{args.threads}, median of {args.repeats}")
    print(f"plain:  {tps['plain']:.1f} tok/s  (runs {', '.join(f'{s:.3f}' for s in times['plain'])} s)")
    print(f"{args.spec}:  {tps['spec']:.1f} tok/s  (runs {', '.join(f'{s:.3f}' for s in times['spec'])} s)")
    print(f"speedup {result['speedup']:.2f}x, acceptance {result['acceptance']:.0%} "
          f"({counts.get('accepted', 0):.0f}/{counts.get('proposed', 0):.0f} over all rounds), "
          f"same text: {result['identical']}")
    return result


if __name__ == "__main__":
    main()
