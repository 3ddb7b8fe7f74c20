"""Quantization benchmark: perplexity, size, decode speed and greedy agreement of fp32 / bf16 /
int8 / int4 (g32, g64, g128) on a model we trained, side by side with Hugging Face
`transformers` fp32 `generate` on the same weights; quantization-aware training against
post-training int4 on quickstart-size models, several seeds; then the GPT-2-small shape (random
weights) decode speed, fp32 vs bf16 vs int8 vs int4 vs HF fp32.

    flock /tmp/lmstack-cpu.lock .venv/bin/python benchmarks/quantize.py          # ~20 min
        [--out runs/quant-bench] [--data DIR] [--model DIR] [--steps 400] [--repeats 3]
        [--threads 2] [--new-tokens 64] [--prompts 16] [--skip-small]
        [--qat-seeds 3] [--qat-steps 100] [--qat-group 128] [--qat-only]

1. Data: the default corpus (the Python standard library) -> a 4096-token BPE tokenizer and
   train/val shards in OUT/data (or --data DIR, shards from `lmstack data prepare`).
2. Models: a GPT-2-layout GPT (learned positions, LayerNorm, GELU, biases, tied head; 4 layers
   x 128 wide, context 128, so HF's GPT2LMHeadModel can hold the same weights) trained
   --steps steps on the train split -> OUT/fp32 (or --model DIR). Runs already there are reused.
3. Variants: each quantized model is written with `save_model` and read back with
   `load_model` (OUT/int8, ...), so the save/load path is what is measured.
4. Measured per variant: perplexity on the first --eval-batches batches of the val split
   (held out, never trained on) and its change from fp32; bytes of the tensors the model
   directory stores; decode tokens/s (batch 1, greedy, --new-tokens after a 16-token prompt,
   `Engine.generate`), all variants and HF taking turns within each of --repeats, medians;
   greedy agreement: --prompts prompts from the val split, 32 greedy tokens each, the share
   of positions where the variant's token equals fp32's.
5. QAT (train/qat.py): per seed, a quickstart-size GPT (configs/quickstart.toml's model and
   optimizer) trains --steps steps of one cosine schedule; at step --steps - --qat-steps the run
   forks (resumed copies of one checkpoint: same batches, optimizer state and schedule), one
   copy going on in fp32, the other through int4 rounding (`qat_bits=4`). Both are rounded to
   int4 at --qat-group and scored on the held-out batches through the reference path (exact
   fp32 arithmetic: the same figures on every CPU, whatever its int4 kernel).

Results go to docs/quantization.md and docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

from lmstack.infer import Engine
from lmstack.infer.quantize import model_bytes, quantize_model
from lmstack.models.directory import load_model, save_model
from lmstack.models.protocol import next_token_loss

_spec = importlib.util.spec_from_file_location("bench_decode", Path(__file__).with_name("decode.py"))
decode = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = decode
_spec.loader.exec_module(decode)

PROMPT_LEN, AGREE_TOKENS = 16, 32


def gpt2_layout(n_layer: int, n_head: int, n_embd: int, block: int) -> dict:
    return {"model_type": "gpt", "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd,
            "block_size": block, "position": "learned", "norm": "layernorm", "mlp": "gelu",
            "bias": True, "tie_embeddings": True}


def prepare_data(out: Path, sources: list[str], vocab_size: int, workers: int | None = None) -> Path:
    """Tokenizer + shards of `sources` in out (reused when out/report.json exists)."""
    from lmstack.data.prepare import REPORT, PrepareConfig, prepare
    from lmstack.data.tokenizer_train import TokenizerTrainConfig, train_tokenizer

    if (out / REPORT).exists():
        return out
    tok = out.parent / "tokenizer.json"
    if not tok.exists():
        train_tokenizer(TokenizerTrainConfig(sources=sources, vocab_size=vocab_size, out=str(tok), workers=workers,
                                             progress=False))
    prepare(PrepareConfig(sources=sources, out_dir=str(out), tokenizer=str(tok), workers=workers,
                          progress=False))
    return out


def find_tokenizer(data: Path) -> Path:
    """The tokenizer the shards were made with: DATA/tokenizer.json or DATA/../tokenizer.json."""
    for path in (data / "tokenizer.json", data.parent / "tokenizer.json"):
        if path.exists():
            return path
    raise SystemExit(f"no tokenizer.json in {data} or its parent")


def quickstart_layout(args: argparse.Namespace) -> dict:
    """configs/quickstart.toml's model (RoPE, RMSNorm, SwiGLU, no biases, tied head) at the
    --n-layer/--n-head/--n-embd/--block size (the defaults are the quickstart's own)."""
    from lmstack.train import load_config

    return {**load_config("quickstart").model, "n_layer": args.n_layer, "n_head": args.n_head,
            "n_embd": args.n_embd, "block_size": args.block}


def train_model(out: Path, data: Path, args: argparse.Namespace, layout: dict | None = None,
                steps: int | None = None, seed: int = 1337, qat_bits: int | None = None,
                qat_group: int = 64, resume: bool = False) -> Path:
    """Train (or reuse) a model (default: the GPT-2 layout) on data's train split to `steps`
    (default --steps) of a cosine schedule that always spans --steps, so a run stopped early is
    a fork that `resume=True` continues on the same schedule; `qat_bits` trains through rounding."""
    from lmstack.train import TrainConfig, train
    from lmstack.train import checkpoint as ckpt

    steps = steps or args.steps
    if (out / ckpt.STATE).exists() and ckpt.load_train_state(out)["step"] >= steps:
        print(f"reusing {out}", flush=True)
        return out
    cfg = TrainConfig(data=str(data), tokenizer=str(find_tokenizer(data)), out_dir=str(out), steps=steps, batch_size=16,
                      block_size=args.block, eval_every=0, save_every=steps, log_every=50, seed=seed,
                      threads=args.threads, progress=False, qat_bits=qat_bits, qat_group_size=qat_group,
                      resume=resume, model=layout or gpt2_layout(args.n_layer, args.n_head, args.n_embd, args.block))
    cfg.optim.weight_decay, cfg.optim.beta2, cfg.optim.grad_clip = 0.1, 0.95, 1.0
    cfg.schedule.lr, cfg.schedule.min_lr = 3e-3, 3e-4
    cfg.schedule.warmup_steps, cfg.schedule.total_steps = max(1, args.steps // 12), args.steps
    t0 = time.perf_counter()
    train(cfg.check())
    print(f"trained {out} (to step {steps}{f', QAT int4-g{qat_group}' if qat_bits else ''}) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return out


def fork_pair(root: Path, data: Path, args: argparse.Namespace, seed: int) -> tuple[Path, Path]:
    """One seed's two runs, equal but for their last --qat-steps: trained in fp32 to the fork
    (root/fork), then continued from copies of its checkpoint in fp32 (root/fp32) or through
    int4 rounding at --qat-group (root/qat)."""
    from lmstack.train import checkpoint as ckpt

    layout = quickstart_layout(args)
    fork = train_model(root / "fork", data, args, layout, steps=args.steps - args.qat_steps, seed=seed)
    for name, bits in (("fp32", None), ("qat", 4)):
        if not (root / name / ckpt.STATE).exists():
            shutil.copytree(fork, root / name)
        train_model(root / name, data, args, layout, seed=seed, qat_bits=bits, qat_group=args.qat_group,
                    resume=True)
    return root / "fp32", root / "qat"


@torch.inference_mode()
def heldout_ppl(model, batches: list[tuple[torch.Tensor, torch.Tensor]], hf: bool = False) -> float:
    """exp(mean next-token cross-entropy) over the batches."""
    nll, n = 0.0, 0
    for x, y in batches:
        logits = model(x).logits if hf else model(x)
        nll += float(next_token_loss(logits, y, reduction="sum"))
        n += y.numel()
    return math.exp(nll / n)


def greedy(engine_or_hf, prompts: list[list[int]], n: int, hf: bool = False) -> list[list[int]]:
    if not hf:
        return [c.tokens for c in engine_or_hf.generate(prompts, temperature=0, max_new_tokens=n,
                                                        ignore_eos=True)]
    eos = engine_or_hf.config.eos_token_id
    out = []
    for p in prompts:
        ids = engine_or_hf.generate(torch.tensor([p]), max_new_tokens=n, min_new_tokens=n,
                                    do_sample=False, pad_token_id=eos)
        out.append(ids[0, len(p):].tolist())
    return out


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Share of positions where two sets of greedy continuations hold the same token."""
    pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    return sum(x == y for x, y in pairs) / max(len(pairs), 1)


def decode_timers(models: dict, hf, prompt: list[int], n: int) -> dict:
    """One function per variant (and HF): a batch-1 greedy generate of n tokens."""
    fns = {}
    for name, model in models.items():
        engine = Engine(model)
        fns[name] = (lambda e=engine: e.generate(prompt, temperature=0, max_new_tokens=n, ignore_eos=True))
    if hf is not None:
        ids, eos = torch.tensor([prompt]), hf.config.eos_token_id
        fns["HF fp32"] = lambda: hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                             use_cache=True, pad_token_id=eos)
    return fns


def variants_of(fp32_dir: Path, out: Path, with_head_variant: bool = True) -> dict:
    """name -> model: fp32, bf16, int8, int4 g32/g64/g128 (+ head kept fp32), the quantized
    ones saved to out/NAME and loaded back."""
    models = {"fp32": load_model(fp32_dir), "bf16": load_model(fp32_dir).to(torch.bfloat16)}
    plan = [("int8", fp32_dir, 8, 64, ()), ("int4-g32", fp32_dir, 4, 32, ()),
            ("int4-g64", fp32_dir, 4, 64, ()), ("int4-g128", fp32_dir, 4, 128, ())]
    if with_head_variant:
        plan.append(("int4-g64, head fp32", fp32_dir, 4, 64, ("lm_head",)))
    for name, src, bits, g, skip in plan:
        d = out / name.replace(" ", "").replace(",", "-").replace("+", "-")
        save_model(d, quantize_model(load_model(src), bits, g, skip=skip))
        models[name] = load_model(d)
    return models


def data_dir(args: argparse.Namespace) -> Path:
    """--data, or the stdlib corpus prepared (once) in OUT/data."""
    if args.data:
        return Path(args.data)
    if args.model:
        raise SystemExit("--model needs --data (the shards with the held-out val split)")
    return prepare_data(Path(args.out) / "data", ["stdlib"], args.vocab)


def heldout_batches(data: Path, block: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first n (8, block) batches of the val split, in order."""
    from lmstack.data.loader import TokenLoader
    from lmstack.tokenizer import Tokenizer

    loader = TokenLoader(data, "val", 8, block, shuffle=False, tokenizer=Tokenizer.load(find_tokenizer(data)))
    batches = []
    for i, (x, y) in enumerate(loader.epoch_batches()):
        if i == n:
            break
        batches.append((torch.from_numpy(x).long(), torch.from_numpy(y).long()))
    return batches


def trained_table(args: argparse.Namespace, data: Path) -> str:
    out = Path(args.out)
    fp32_dir = Path(args.model) if args.model else train_model(out / "fp32", data, args)
    block = load_model(fp32_dir).config.block_size
    batches = heldout_batches(data, block, args.eval_batches)
    flat = torch.cat([x.reshape(-1) for x, _ in batches])
    step = max(1, (len(flat) - PROMPT_LEN) // args.prompts)
    prompts = [flat[i * step:i * step + PROMPT_LEN].tolist() for i in range(args.prompts)]

    models = variants_of(fp32_dir, out)
    hf = decode.build_hf(models["fp32"])
    diff = decode.check_logits(models["fp32"], hf, seq_len=min(64, block))
    print(f"HF copy of fp32 weights: max |logit diff| {diff:.1e}", flush=True)

    ppl = {name: heldout_ppl(m, batches) for name, m in models.items()}
    ppl["HF fp32"] = heldout_ppl(hf, batches, hf=True)
    ref = greedy(Engine(models["fp32"]), prompts, AGREE_TOKENS)
    agree = {name: agreement(greedy(Engine(m), prompts, AGREE_TOKENS), ref) for name, m in models.items()}
    agree["HF fp32"] = agreement(greedy(hf, prompts, AGREE_TOKENS, hf=True), ref)
    size = {name: model_bytes(m) for name, m in models.items()}
    size["HF fp32"] = size["fp32"]

    with decode.OtherLoad() as load:
        timed = decode.median_times(decode_timers(models, hf, prompts[0], args.new_tokens), args.repeats)
    tok_s = {name: args.new_tokens / t for name, (t, _) in timed.items()}
    n_tokens = sum(y.numel() for _, y in batches)
    c = models["fp32"].config
    print(f"\nTrained model: {c.n_layer} layers x {c.n_embd}, vocab {c.vocab_size}, context {c.block_size}; "
          f"{n_tokens:,} held-out tokens; {args.prompts} prompts x {AGREE_TOKENS} greedy tokens; "
          f"decode {args.new_tokens} tokens, medians of {args.repeats}; other processes used "
          f"{100 * load.share:.0f}% of the CPUs while timing", flush=True)
    rows = [("variant", "ppl", "Δ ppl", "size MB", "decode tok/s", "vs HF fp32", "greedy = fp32")]
    for name in list(models) + ["HF fp32"]:
        rows.append((name, f"{ppl[name]:.3f}", f"{100 * (ppl[name] / ppl['fp32'] - 1):+.2f}%",
                     f"{size[name] / 1e6:.2f}", f"{tok_s[name]:.1f}",
                     f"{tok_s[name] / tok_s['HF fp32']:.2f}x", f"{100 * agree[name]:.1f}%"))
    results = {"ppl": ppl, "size": size, "tok_s": tok_s, "agree": agree, "other_load": load.share}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return markdown(rows)


def qat_table(args: argparse.Namespace, data: Path) -> str:
    """Per seed: held-out perplexity of the fp32 run, of it rounded to int4 (post-training), and
    of its QAT twin rounded the same way; "gap closed" = the share of post-training int4's
    extra loss (nats) that QAT removes."""
    g = args.qat_group
    batches = heldout_batches(data, args.block, args.eval_batches)
    rows = [("seed", "fp32", f"int4-g{g} post-training", "QAT run in fp32", f"int4-g{g} after QAT", "gap closed")]
    results = []
    for seed in range(args.qat_seeds):
        fp32_dir, qat_dir = fork_pair(Path(args.out) / f"qat-seed{seed}", data, args, seed)
        ppl = {"fp32": heldout_ppl(load_model(fp32_dir), batches),
               "ptq": heldout_ppl(quantize_model(load_model(fp32_dir), 4, g, reference=True), batches),
               "qat_fp32": heldout_ppl(load_model(qat_dir), batches),
               "qat": heldout_ppl(quantize_model(load_model(qat_dir), 4, g, reference=True), batches)}
        closed = 1 - math.log(ppl["qat"] / ppl["fp32"]) / math.log(ppl["ptq"] / ppl["fp32"])
        results.append({"seed": seed, **ppl, "gap_closed": closed})
        delta = {k: f"{ppl[k]:.3f} ({100 * (ppl[k] / ppl['fp32'] - 1):+.2f}%)" for k in ppl}
        rows.append((str(seed), f"{ppl['fp32']:.3f}", delta["ptq"], delta["qat_fp32"], delta["qat"],
                     f"{100 * closed:.0f}%"))
        print(f"seed {seed}: {rows[-1]}", flush=True)
    (Path(args.out) / "qat_results.json").write_text(json.dumps(results, indent=2))
    c = load_model(fp32_dir).config
    print(f"\nQAT vs post-training int4-g{g}: quickstart-size GPT ({c.n_layer} layers x {c.n_embd}, "
          f"{c.position}/{c.norm}/{c.mlp}, tied), {args.steps} steps, the last {args.qat_steps} with or "
          f"without QAT; perplexity on {sum(y.numel() for _, y in batches):,} held-out tokens, "
          "quantized layers on the reference path", flush=True)
    return markdown(rows)


def small_table(args: argparse.Namespace) -> str:
    """GPT-2 small shape, random weights: decode tokens/s per variant vs HF fp32."""
    ours = decode.build_ours("small")
    hf = decode.build_hf(ours)
    decode.check_logits(ours, hf)
    models = {"fp32": ours}
    models["bf16"] = decode.build_ours("small").to(torch.bfloat16)
    models["int8"] = quantize_model(decode.build_ours("small"), 8)
    models["int8, head fp32"] = quantize_model(decode.build_ours("small"), 8, skip=("lm_head",))
    models["int4-g64"] = quantize_model(decode.build_ours("small"), 4, 64)
    models["int4-g128"] = quantize_model(decode.build_ours("small"), 4, 128)
    prompt = torch.randint(0, ours.config.vocab_size, (PROMPT_LEN,), generator=torch.Generator().manual_seed(3)).tolist()
    n = args.small_new_tokens
    with decode.OtherLoad() as load:
        timed = decode.median_times(decode_timers(models, hf, prompt, n), args.repeats)
    ref = timed["fp32"][1].tokens
    tok_s = {name: n / t for name, (t, _) in timed.items()}
    print(f"\nGPT-2 small shape (random weights): {n} new tokens after a {PROMPT_LEN}-token prompt, "
          f"medians of {args.repeats}; other processes used {100 * load.share:.0f}% of the CPUs", flush=True)
    rows = [("variant", "size MB", "decode tok/s", "vs HF fp32", "greedy = fp32")]
    for name in list(models) + ["HF fp32"]:
        out = timed[name][1]
        toks = out.tokens if hasattr(out, "tokens") else out[0, PROMPT_LEN:].tolist()
        size = model_bytes(models[name]) if name in models else model_bytes(ours)
        rows.append((name, f"{size / 1e6:.0f}", f"{tok_s[name]:.1f}",
                     f"{tok_s[name] / tok_s['HF fp32']:.2f}x", f"{100 * agreement([toks], [ref]):.0f}%"))
    return markdown(rows)


def markdown(rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(str(v).ljust(w) for v, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/quant-bench")
    ap.add_argument("--data", help="shard directory (default: prepare the stdlib corpus in OUT/data)")
    ap.add_argument("--model", help="an fp32 GPT-2-layout model directory to use instead of training")
    ap.add_argument("--qat-seeds", type=int, default=3, help="seeds of the QAT comparison (0: skip it)")
    ap.add_argument("--qat-steps", type=int, default=100, help="the last steps, trained with or without QAT")
    ap.add_argument("--qat-group", type=int, default=128, help="int4 group size of the QAT comparison")
    ap.add_argument("--qat-only", action="store_true", help="only the QAT comparison")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--eval-batches", type=int, default=40, help="val batches of 8 x block tokens")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--small-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-small", action="store_true", help="skip the GPT-2-small-shape timing")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    print(decode.machine_info(args.threads), f"cpu capability {torch.backends.cpu.get_cpu_capability()}",
          flush=True)
    if args.qat_seeds and not 0 < args.qat_steps < args.steps:
        raise SystemExit(f"--qat-steps {args.qat_steps} must be between 0 and --steps {args.steps}")
    data = data_dir(args)
    if not args.qat_only:
        print(trained_table(args, data), flush=True)
    if args.qat_seeds:
        print(qat_table(args, data), flush=True)
    if not args.skip_small and not args.qat_only:
        print(small_table(args), flush=True)


if __name__ == "__main__":
    main()
