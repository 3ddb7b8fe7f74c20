"""Decoding benchmark: batch-1 greedy decode tokens/s and prompt prefill time, lmstack's
`Engine` next to Hugging Face `transformers` `generate`, on the SAME GPT-2-layout weights.

    flock /tmp/lmstack-cpu.lock .venv/bin/python benchmarks/decode.py [--repeats 3] [--threads 2]
        [--new-tokens 128] [--prompt-len 16] [--prefill-len 512] [--shapes small,tiny]
    .venv/bin/python benchmarks/decode.py --save-random-llama runs/smollm-random     # then:
    flock /tmp/lmstack-cpu.lock .venv/bin/python benchmarks/decode.py --hf-dir runs/smollm-random

HF directory mode (--hf-dir): any local checkpoint lmstack imports (GPT-2, Llama, Mistral,
Qwen2): ours through `lmstack.interop.load_hf_model`, theirs through
`AutoModelForCausalLM.from_pretrained`, then the same checks and timings.

Two shapes: GPT-2 small (12 layers, 12 heads, width 768, vocab 50257, context 1024) and a tiny
GPT (4 layers, 4 heads, width 256, vocab 8192, context 1024). Our GPT is built with random
weights (GPT-2 init, with noise on the biases and norm gains so their mapping is checked too),
copied into `transformers.GPT2LMHeadModel` (Conv1D stores weights transposed; q, k and v are one
fused `c_attn`), and the two models' logits must agree to 1e-4 before anything is timed.

Measured, fp32, --threads threads, medians over --repeats runs after one warm-up, lmstack and
HF taking turns within each repeat (other processes share the cores; the share of CPU time they
used while a shape was timed is printed, and a figure taken under load is not worth keeping):
- decode: tokens/s of a whole greedy `generate` call for --new-tokens tokens after a
  --prompt-len-token prompt (ours: `Engine.generate(temperature=0, ignore_eos=True)`; HF:
  `generate(do_sample=False, min_new_tokens=N, use_cache=True)`), and whether both produced
  the same tokens;
- prefill: one forward over a --prefill-len-token prompt into a fresh cache, with logits for
  every position (each library's default forward) and for the last one only (what each
  library's `generate` does: our `last_only=True`, HF's `logits_to_keep=1`);
- the matmul floor: one step's weight matmuls (each library's own weight layout) run back to
  back with nothing in between, --new-tokens times: a decode step cannot cost less;
- the memory-bandwidth ceiling: a decode step must read every weight once (the tied
  wte/lm_head counted once; the embedding lookups read one row each), so tokens/s can be at
  most (read bandwidth) / (weight bytes). Read bandwidth is measured here, on a buffer the size
  of the weights (so it is L3 bandwidth when they fit the cache, DRAM bandwidth when not), as
  the faster of `x.sum()` and a `torch.mv` over a matrix of that size. DRAM bandwidth is
  shared with other virtual machines on the host, which the CPU-share line cannot see: the
  GPT-2-small figures drift by ~20% from run to run, the ratios much less.
Results go to docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from lmstack.infer import Engine
from lmstack.interop.weights import from_lmstack
from lmstack.models import GPT, GPTConfig

SHAPES = {  # name: (n_layer, n_head, n_embd, vocab_size); context 1024 for both
    "small": (12, 12, 768, 50257),
    "tiny": (4, 4, 256, 8192),
}
CONTEXT = 1024


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, object]:
    """Median wall seconds of `fn()` over `repeats` runs after `warmup` runs; and its last result."""
    return median_times({"fn": fn}, repeats, warmup)["fn"]


def median_times(fns: dict[str, Callable[[], object]], repeats: int,
                 warmup: int = 1) -> dict[str, tuple[float, object]]:
    """`median_time` of several functions, run in turn within each repeat, so that a slow
    spell of the machine (other processes share its cores) hits all of them alike."""
    results = {name: None for name in fns}
    for _ in range(warmup):
        results = {name: fn() for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(times[name]), results[name]) for name in fns}


class OtherLoad:
    """Share of the machine's CPU time used by other processes while the block runs (Linux)."""

    def __enter__(self) -> OtherLoad:
        self.start = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        (busy0, total0, ours0), (busy1, total1, ours1) = self.start, self._read()
        ticks = os.sysconf("SC_CLK_TCK")
        others = (busy1 - busy0) / ticks - (ours1 - ours0)
        self.share = max(others, 0.0) / max((total1 - total0) / ticks, 1e-9)

    @staticmethod
    def _read() -> tuple[int, int, float]:
        try:
            with open("/proc/stat") as f:
                ticks = [int(v) for v in f.readline().split()[1:]]
        except OSError:
            ticks = [0] * 5
        t = os.times()
        return sum(ticks) - ticks[3] - ticks[4], sum(ticks), t.user + t.system  # minus idle, iowait


def build_ours(shape: str) -> GPT:
    """Our GPT in GPT-2 layout with random weights; biases and gains perturbed off 0 and 1."""
    n_layer, n_head, n_embd, vocab = SHAPES[shape]
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=CONTEXT, n_layer=n_layer, n_head=n_head,
                          n_embd=n_embd, position="learned", norm="layernorm", mlp="gelu",
                          bias=True, tie_embeddings=True))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:  # zero biases and unit gains would hide a mis-mapped vector
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def build_hf(model: GPT):
    """transformers' GPT2LMHeadModel of the same shape, holding a copy of `model`'s weights."""
    import transformers

    c = model.config
    eos = c.vocab_size - 1  # any id: HF's generate needs one; min_new_tokens keeps it from stopping
    config = transformers.GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
        n_head=c.n_head, activation_function="gelu_new", layer_norm_epsilon=c.norm_eps,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=eos, eos_token_id=eos,
        tie_word_embeddings=True)
    hf = transformers.GPT2LMHeadModel(config)
    # interop's name and layout map; the tied lm_head is not written, it loads through wte.
    state = from_lmstack(model.state_dict(), "gpt2", c)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        sys.exit(f"weight copy incomplete: missing {missing}, unexpected {unexpected}")
    return hf.eval()


def check_logits(ours: GPT, hf, seq_len: int = 64) -> float:
    """Max |logit difference| on random ids; abort the benchmark above 1e-4."""
    idx = torch.randint(0, ours.config.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        diff = (ours(idx) - hf(idx).logits).abs().max().item()
    if not diff < 1e-4:
        sys.exit(f"logits differ by {diff:.2e} (> 1e-4): the weight copy is wrong; not timing")
    return diff


def read_bandwidth(nbytes: int, repeats: int = 7) -> tuple[float, float]:
    """Read bandwidth in GB/s over a buffer of `nbytes` fp32: (by x.sum(), by torch.mv)."""
    cols = 1024
    rows = max(nbytes // (4 * cols), 1)
    w = torch.ones(rows, cols)
    v = torch.ones(cols)
    # Enough calls per timing that a buffer small enough to sit in cache still takes ~50 ms.
    inner = max(1, int(50e6 / max(w.numel(), 1) / 4))
    out = []
    for fn in (w.sum, lambda: torch.mv(w, v)):
        t, _ = median_time(lambda: [fn() for _ in range(inner)], repeats)
        out.append(w.numel() * 4 * inner / t / 1e9)
    return out[0], out[1]


def weight_bytes(model: GPT) -> int:
    """fp32 bytes a decode step reads: every parameter once (the tied wte/lm_head once, as
    parameters() yields it once), minus the embedding tables of which one row is read (the
    position table; the token table when the head does not share it)."""
    params = sum(p.numel() for p in model.parameters())
    if hasattr(model.position, "wpe"):
        params -= model.position.wpe.weight.numel()
    if model.lm_head.weight is not model.wte.weight:
        params -= model.wte.weight.numel()
    return 4 * params


def matmul_floor(model: torch.nn.Module, n_steps: int) -> Callable[[], None]:
    """A function running one decode step's weight matmuls `n_steps` times back to back with
    nothing in between: what the steps cost with zero overhead, in the library's own weight
    layout (ours nn.Linear (out, in); HF's Conv1D (in, out), its lm_head nn.Linear)."""
    layers = [m for m in model.modules() if m.__class__.__name__ in ("Linear", "Conv1D")]
    inputs = [torch.randn(1, 1, getattr(m, "in_features", None) or m.nx) for m in layers]

    @torch.inference_mode()
    def run() -> None:
        for _ in range(n_steps):
            for layer, x in zip(layers, inputs):
                layer(x)

    return run


def time_decode(ours: GPT, hf, prompt: list[int], n_new: int, repeats: int):
    """Median seconds of a greedy generate call for each, and of `n_new` steps' matmuls alone
    (timed in the same turns: the machine's memory bandwidth drifts); the generated ids."""
    engine = Engine(ours)
    eos = hf.config.eos_token_id
    ids = torch.tensor([prompt])

    def run_ours() -> list[int]:
        return engine.generate(prompt, temperature=0, max_new_tokens=n_new, ignore_eos=True).tokens

    def run_hf() -> list[int]:
        out = hf.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                          use_cache=True, pad_token_id=eos)
        return out[0, len(prompt):].tolist()

    timed = median_times({"ours": run_ours, "hf": run_hf, "floor_ours": matmul_floor(ours, n_new),
                          "floor_hf": matmul_floor(hf, n_new)}, repeats)
    floors = timed["floor_ours"][0], timed["floor_hf"][0]
    return timed["ours"][0], timed["hf"][0], timed["ours"][1], timed["hf"][1], floors


def time_prefill(ours: GPT, hf, n: int, repeats: int) -> dict[str, float]:
    """Median seconds of one n-token forward into a fresh cache: all logits / last only."""
    from transformers import DynamicCache

    ids = torch.randint(0, ours.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(2))
    runs = {
        "ours_all": lambda: ours(ids, cache=ours.new_cache(1, n)),
        "ours_last": lambda: ours(ids, cache=ours.new_cache(1, n), last_only=True),
        "hf_all": lambda: hf(ids, past_key_values=DynamicCache(config=hf.config), use_cache=True),
        "hf_last": lambda: hf(ids, past_key_values=DynamicCache(config=hf.config), use_cache=True,
                              logits_to_keep=1),
    }
    with torch.inference_mode():
        return {name: t for name, (t, _) in median_times(runs, repeats).items()}


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_info(threads: int) -> str:
    """One line: cores, CPU model, library versions, threads, date."""
    import transformers

    cpu = cpu_model()
    return (f"{os.cpu_count()} cores, {cpu}, python {platform.python_version()}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}, {threads} threads, {datetime.date.today()}")


def bench_shape(shape: str, args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """Build, check and time one shape; its table rows (measure, lmstack, HF, ratio)."""
    ours = build_ours(shape)
    return bench_models(shape, ours, build_hf(ours), args)


def bench_hf_dir(directory: str, args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """An HF checkpoint directory: ours imported by lmstack.interop, theirs by transformers."""
    import transformers

    from lmstack.interop import load_hf_model

    ours = load_hf_model(directory)
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    if hf.generation_config.eos_token_id is None:
        hf.generation_config.eos_token_id = hf.generation_config.pad_token_id = 0
    hf.config.eos_token_id = hf.generation_config.eos_token_id
    return bench_models(Path(directory).name, ours, hf, args)


def save_random_llama(directory: str) -> None:
    """A random-weight checkpoint of SmolLM-135M's shape (Llama: 30 layers, width 576, 9 heads,
    3 key/value heads, SwiGLU 1536, vocab 49152, tied), saved by transformers."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                   num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                   max_position_embeddings=2048, rope_theta=1e5, tie_word_embeddings=True,
                                   bos_token_id=0, eos_token_id=0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(directory)
    print(f"wrote {directory}")


def bench_models(shape: str, ours: GPT, hf, args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """Check and time one pair of models holding the same weights."""
    diff = check_logits(ours, hf)
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"\n{shape}: {n_params / 1e6:.1f}M params, max |logit diff| {diff:.1e}, "
          f"HF attention {hf.config._attn_implementation}", flush=True)

    prompt = torch.randint(0, ours.config.vocab_size, (args.prompt_len,),
                           generator=torch.Generator().manual_seed(3)).tolist()
    n = args.new_tokens
    with OtherLoad() as load:
        t_ours, t_hf, tok_ours, tok_hf, floors = time_decode(ours, hf, prompt, n, args.repeats)
        pre = time_prefill(ours, hf, args.prefill_len, args.repeats)
    same = tok_ours == tok_hf
    first_diff = next((i for i, (a, b) in enumerate(zip(tok_ours, tok_hf)) if a != b), None)
    print(f"  other processes used {100 * load.share:.0f}% of the CPUs while {shape} was timed", flush=True)

    floor_ours, floor_hf = floors[0] / n, floors[1] / n
    nbytes = weight_bytes(ours)
    bw_sum, bw_mv = read_bandwidth(nbytes)
    bandwidth = max(bw_sum, bw_mv)
    ceiling = bandwidth * 1e9 / nbytes
    print(f"  weights read per token {nbytes / 1e6:.1f} MB; read bandwidth on that size: "
          f"x.sum() {bw_sum:.1f} GB/s, torch.mv {bw_mv:.1f} GB/s -> ceiling {ceiling:.1f} tokens/s",
          flush=True)

    s = shape
    return [
        (f"{s}: decode tokens/s ({n} new, {args.prompt_len}-token prompt)", f"{n / t_ours:.1f}",
         f"{n / t_hf:.1f}", f"{t_hf / t_ours:.2f}x HF"),
        (f"{s}: decode ms/token", f"{1000 * t_ours / n:.2f}", f"{1000 * t_hf / n:.2f}", ""),
        (f"{s}: same greedy tokens", str(same), str(same),
         "identical" if same else f"first differ at token {first_diff}"),
        (f"{s}: prefill {args.prefill_len} tokens, all logits (s)", f"{pre['ours_all']:.3f}",
         f"{pre['hf_all']:.3f}", f"{pre['hf_all'] / pre['ours_all']:.2f}x HF"),
        (f"{s}: prefill {args.prefill_len} tokens, last logits (s)", f"{pre['ours_last']:.3f}",
         f"{pre['hf_last']:.3f}", f"{pre['hf_last'] / pre['ours_last']:.2f}x HF"),
        (f"{s}: matmuls alone, back to back (ms/token)", f"{1000 * floor_ours:.2f}",
         f"{1000 * floor_hf:.2f}", f"{100 * floor_ours * n / t_ours:.0f}% of our decode time, "
                                   f"{100 * floor_hf * n / t_hf:.0f}% of HF's"),
        (f"{s}: bandwidth ceiling tokens/s ({nbytes / 1e6:.0f} MB @ {bandwidth:.1f} GB/s)",
         f"{ceiling:.1f}", f"{ceiling:.1f}",
         f"ours {100 * n / t_ours / ceiling:.0f}%, HF {100 * n / t_hf / ceiling:.0f}% of it"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--shapes", default="small,tiny", help="comma-separated: " + ", ".join(SHAPES))
    ap.add_argument("--hf-dir", help="benchmark this Hugging Face checkpoint directory instead "
                                     "(imported by lmstack.interop, loaded by transformers)")
    ap.add_argument("--save-random-llama", metavar="DIR", help="write a random SmolLM-135M-shaped "
                                                               "Llama checkpoint to DIR and exit")
    args = ap.parse_args()
    if args.save_random_llama:
        save_random_llama(args.save_random_llama)
        return
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()  # generate's notes about unused settings
    print(machine_info(args.threads))

    rows = []
    if args.hf_dir:
        rows += bench_hf_dir(args.hf_dir, args)
    else:
        for shape in args.shapes.split(","):
            rows += bench_shape(shape.strip(), args)
    width = max(len(r[0]) for r in rows)
    print(f"\n| {'measure':<{width}} | {'lmstack':>8} | {'HF':>8} | ratio |")
    print(f"|{'-' * (width + 2)}|{'-' * 10}|{'-' * 10}|-------|")
    for name, a, b, ratio in rows:
        print(f"| {name:<{width}} | {a:>8} | {b:>8} | {ratio} |")


if __name__ == "__main__":
    main()
