"""SmolLM2-135M-Instruct at batch 1: lmstack (fp32, bf16, int8, int4 from Q4_1) next to
transformers (fp32, bf16, same dequantized weights) and llama.cpp (the Q4_1 file, and a Q8_0
file we export), same thread count, taking turns (issue 14, "the peer is llama.cpp").

    flock /tmp/lmstack-cpu.lock .venv/bin/python benchmarks/real_model.py [--model smollm2]
        [--threads 2] [--repeats 3] [--new-tokens 128] [--prefill-len 512] [--rows all]
        [--plain | --no-fuse | --no-onednn]

Per row: decode tokens/s of a whole greedy generate call (--new-tokens new tokens after a
ChatML chat prompt; every row is fed the same prompt ids), prefill seconds of one
--prefill-len-token forward into a fresh cache with the last position's logits only (what a
decoder needs), the memory-bandwidth bound (weight bytes a decode step reads / read bandwidth
measured here with `torch.mv` and `x.sum()` on a buffer of the fp32 weights' size) and the
share of it reached, and how many of the first 32 greedy tokens equal lmstack fp32's.
Medians of --repeats, all rows taking turns within each repeat (benchmarks/decode.py's
`median_times`); the share of CPU time other processes used is printed. llama.cpp
(llama-cpp-python) is a benchmark peer, not a dependency: its rows are left out when it is
not installed. Results go to docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from lmstack.infer import Engine
from lmstack.infer.fuse import prepare_decode
from lmstack.infer.quantize import quantize_model
from lmstack.interop.gguf_file import read_gguf
from lmstack.interop.gguf_model import load_gguf_model
from lmstack.models.installed import resolve_model

_spec = importlib.util.spec_from_file_location("bench_decode", Path(__file__).with_name("decode.py"))
decode = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = decode
_spec.loader.exec_module(decode)

AGREE = 32  # greedy tokens compared with lmstack fp32
CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
QUESTION = "Explain in a few sentences why the sky is blue."
ROWS = ["lmstack fp32", "lmstack bf16", "lmstack int8", "lmstack int4 (Q4_1)", "transformers fp32",
        "transformers bf16", "llama.cpp Q4_1", "llama.cpp Q8_0 (our export)"]
BASE_HF, BASE_LLAMA = "transformers fp32", "llama.cpp Q4_1"


# ---- the models -----------------------------------------------------------------------------

def lmstack_models(path: Path, names: list[str], form: dict | None = None) -> dict[str, torch.nn.Module]:
    """lmstack's rows: fp32 and bf16 dequantized from the file, int8 quantized from fp32,
    int4 with the file's Q4_1 matrices kept as Int4Linear (and its Q8_0 head as a group-wise
    Int8Linear); each in the decode-time form `Engine.load` gives the models it loads
    (fuse.prepare_decode with the `form` keywords), unless `form` is None."""
    fp32 = load_gguf_model(path, keep_quantized=False)
    out = {"lmstack fp32": fp32}
    if "lmstack bf16" in names:
        out["lmstack bf16"] = copy.deepcopy(fp32).to(torch.bfloat16)
    if "lmstack int8" in names:
        out["lmstack int8"] = quantize_model(copy.deepcopy(fp32), 8)
    if "lmstack int4 (Q4_1)" in names:
        out["lmstack int4 (Q4_1)"] = load_gguf_model(path, keep_quantized=True)
    for model in out.values() if form is not None else ():
        prepare_decode(model, **form)
    return out


def hf_models(path: Path, names: list[str]) -> dict[str, torch.nn.Module]:
    """transformers' own GGUF loader (dequantized fp32), and its bf16 copy."""
    import transformers

    out = {}
    if any(n.startswith("transformers") for n in names):
        fp32 = transformers.AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
        out["transformers fp32"] = fp32
        if "transformers bf16" in names:
            out["transformers bf16"] = copy.deepcopy(fp32).to(torch.bfloat16)
    return out


def llama_models(path: Path, names: list[str], threads: int, work: Path) -> dict[str, object]:
    """llama.cpp on the file itself, and on a Q8_0 file lmstack exports from it."""
    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python is not installed: no llama.cpp rows", flush=True)
        return {}

    def open_(file: Path):
        return llama_cpp.Llama(model_path=str(file), n_threads=threads, n_threads_batch=threads,
                               n_ctx=2048, n_batch=512, verbose=False)

    out = {}
    if BASE_LLAMA in names:
        out[BASE_LLAMA] = open_(path)
    if "llama.cpp Q8_0 (our export)" in names:
        from lmstack.interop.gguf_export import export_gguf

        q8 = work / "q8_0.gguf"
        export_gguf(path, q8, "q8_0")
        out["llama.cpp Q8_0 (our export)"] = open_(q8)
    return out


# ---- one generate call and one prefill per kind of row --------------------------------------

def generate_fn(name: str, model, prompt: list[int], n_new: int) -> Callable[[], list[int]]:
    """A function running one greedy generate call of `n_new` tokens; its new token ids."""
    if name.startswith("lmstack"):
        engine = Engine(model)
        return lambda: engine.generate(prompt, temperature=0, max_new_tokens=n_new, ignore_eos=True).tokens
    if name.startswith("transformers"):
        ids = torch.tensor([prompt])

        def run_hf() -> list[int]:
            with torch.inference_mode():
                out = model.generate(ids, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                                     use_cache=True, pad_token_id=0)
            return out[0, len(prompt):].tolist()
        return run_hf

    def run_llama() -> list[int]:
        new = []
        for tok in model.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            new.append(int(tok))
            if len(new) == n_new:
                break
        return new
    return run_llama


def prefill_fn(name: str, model, ids: list[int]) -> Callable[[], object]:
    """A function running one forward over `ids` into a fresh cache, last logits only."""
    x = torch.tensor([ids])
    if name.startswith("lmstack"):
        def run_ours():
            with torch.inference_mode():
                return model(x, cache=model.new_cache(1, len(ids)), last_only=True)
        return run_ours
    if name.startswith("transformers"):
        from transformers import DynamicCache

        def run_hf():
            with torch.inference_mode():
                return model(x, past_key_values=DynamicCache(config=model.config), use_cache=True,
                             logits_to_keep=1)
        return run_hf

    def run_llama():
        model.reset()
        model.eval(ids)
    return run_llama


# ---- bytes a decode step reads --------------------------------------------------------------

def torch_bytes(model: torch.nn.Module) -> int:
    """Bytes of every weight a decode step reads: each parameter and weight buffer once (a tied
    table once), minus the token table when the head does not share it (one row is read)."""
    seen, total = set(), 0
    # The quantized layers' buffers (qweight, scales, zeros), not RoPE's inverse frequencies.
    buffers = [b for name, b in model.named_buffers() if "inv_freq" not in name]
    for t in [*model.parameters(), *buffers]:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else model.wte
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else model.lm_head
    if getattr(head, "weight", None) is not emb.weight:
        total -= emb.weight.numel() * emb.weight.element_size()
    return total


def gguf_bytes(path: Path) -> int:
    """Bytes of a GGUF file's tensors: llama.cpp reads each once per token (a tied head reads
    the whole token table)."""
    f = read_gguf(path)
    infos = f.tensors.values() if isinstance(f.tensors, dict) else f.tensors
    total = sum(t.nbytes for t in infos)
    if not any(t.name == "output.weight" for t in infos):
        return total
    return total - next(t.nbytes for t in infos if t.name == "token_embd.weight")


def chat_prompt(path: Path, llamas: dict) -> list[int]:
    """The ChatML prompt's ids: by llama.cpp's tokenizer where there is one, else ours."""
    text = CHAT.format(QUESTION)
    if llamas:
        return next(iter(llamas.values())).tokenize(text.encode(), add_bos=False, special=True)
    from lmstack.interop.gguf_model import gguf_tokenizer

    tok = gguf_tokenizer(path)
    if tok is None:
        return [1, 2, 3, 4, 5, 6, 7, 8]
    return tok.encode(text, allowed_special="all")  # <|im_start|> as its special token


# ---- the run ---------------------------------------------------------------------------------

def measure(path: Path, args: argparse.Namespace, work: Path) -> dict[str, dict]:
    """Load every row, check it, time it; per row its figures."""
    names = ROWS if args.rows == "all" else [n.strip() for n in args.rows.split(";")]
    names = ["lmstack fp32", *[n for n in names if n != "lmstack fp32"]]
    form = None if args.plain else {"fuse": not args.no_fuse, "onednn": not args.no_onednn}
    models = {**lmstack_models(path, names, form), **hf_models(path, names),
              **llama_models(path, names, args.threads, work)}
    names = [n for n in names if n in models]
    prompt = chat_prompt(path, {n: m for n, m in models.items() if n.startswith("llama")})
    vocab = models["lmstack fp32"].config.vocab_size
    pre_ids = torch.randint(0, vocab, (args.prefill_len,), generator=torch.Generator().manual_seed(2)).tolist()
    n = args.new_tokens
    with decode.OtherLoad() as load:
        gen = decode.median_times({k: generate_fn(k, models[k], prompt, n) for k in names}, args.repeats)
        pre = decode.median_times({k: prefill_fn(k, models[k], pre_ids) for k in names}, args.repeats)
    print(f"prompt {len(prompt)} tokens; other processes used {100 * load.share:.0f}% of the CPUs "
          "while timing", flush=True)
    nbytes = {k: (gguf_bytes(path) if k == BASE_LLAMA else gguf_bytes(work / "q8_0.gguf")
                  if k.startswith("llama") else torch_bytes(models[k])) for k in names}
    bw = max(decode.read_bandwidth(torch_bytes(models["lmstack fp32"])))
    ref = gen["lmstack fp32"][1][:AGREE]
    out = {}
    for k in names:
        seconds, tokens = gen[k]
        same = next((i for i, (a, b) in enumerate(zip(tokens[:AGREE], ref)) if a != b), min(len(ref), AGREE))
        out[k] = {"tok_s": n / seconds, "prefill_s": pre[k][0], "bytes": nbytes[k],
                  "bound": bw * 1e9 / nbytes[k], "agree": same, "tokens": tokens}
    out["_meta"] = {"bandwidth": bw, "prompt_len": len(prompt), "load": load.share}
    return out


def table(results: dict[str, dict], args: argparse.Namespace) -> str:
    """The markdown table: one row per model, ratios vs transformers fp32 and llama.cpp Q4_1."""
    meta = results["_meta"]
    rows = {k: v for k, v in results.items() if k != "_meta"}
    base_hf, base_ll = rows.get(BASE_HF), rows.get(BASE_LLAMA)
    lines = [f"| row | decode tok/s | vs transformers fp32 | vs llama.cpp Q4_1 | prefill {args.prefill_len} (s) "
             f"| MB read/token | bound tok/s @ {meta['bandwidth']:.1f} GB/s | % of bound "
             f"| greedy = fp32 (of {AGREE}) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k, r in rows.items():
        vs_hf = f"{r['tok_s'] / base_hf['tok_s']:.2f}x" if base_hf else "-"
        vs_ll = f"{r['tok_s'] / base_ll['tok_s']:.2f}x" if base_ll else "-"
        lines.append(f"| {k} | {r['tok_s']:.1f} | {vs_hf} | {vs_ll} | {r['prefill_s']:.3f} | "
                     f"{r['bytes'] / 1e6:.0f} | {r['bound']:.1f} | {100 * r['tok_s'] / r['bound']:.0f}% | "
                     f"{r['agree']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", help="a GGUF file or an installed short name")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--rows", default="all", help="'all' or names separated by ';': " + "; ".join(ROWS))
    ap.add_argument("--plain", action="store_true", help="lmstack rows as loaded, without "
                    "fuse.prepare_decode (the figures before it)")
    ap.add_argument("--no-fuse", action="store_true", help="prepare_decode without fused projections")
    ap.add_argument("--no-onednn", action="store_true", help="prepare_decode without oneDNN "
                    "fp32 linears (MKL on weights laid out (in, out): engine.decode_layout)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    path = resolve_model(args.model)
    print(decode.machine_info(args.threads), flush=True)
    with tempfile.TemporaryDirectory() as work:
        results = measure(path, args, Path(work))
    print(table(results, args))
    return results


if __name__ == "__main__":
    main()
